"""graph.toml: the runtime settings and the analytics DAG, loaded and validated once at start.

Defaults live in the project's own graph.toml and nowhere else; a user's file overrides
them key by key and may add nodes. Every error names the file, the section or node, the
key and the fix. Pure configuration: no I/O beyond reading the TOML file.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from operators.state.nodes import BUILTINS, LEVELS, READS, Node

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "graph.toml"
BUILTIN_INPUTS = tuple(sorted({b for names in BUILTINS.values() for b in names}))  # reserved node names


class ConfigError(ValueError):
    """A graph.toml that cannot run; the message says where and how to fix it."""


@dataclass(frozen=True, slots=True)
class Runtime:
    epoch_ms: int
    workers: int
    processes: int
    status_interval_ms: int
    metrics_port: int
    metrics_host: str
    log_format: str
    stop_timeout_s: float
    data_dir: str
    recovery: bool
    snapshot_interval_s: float
    backup_interval_s: float
    replay_speed: float


@dataclass(frozen=True, slots=True)
class DeribitSourceConfig:
    enabled: bool
    url: str
    currencies: list[str]
    book: str
    book_interval: str
    depth: int  # levels per side asked of the venue where it can limit them (grouped channel)
    heartbeat_s: int
    refresh_s: float
    queue_max: int
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class OkxSourceConfig:
    enabled: bool
    url: str
    families: list[str]
    refresh_s: float
    queue_max: int
    max_frame_bytes: int


@dataclass(frozen=True, slots=True)
class Sources:
    deribit: DeribitSourceConfig
    okx: OkxSourceConfig

    def venues(self) -> list[str]:
        """The enabled venues, in the registry's order (connectors/venues/registry.py)."""
        from connectors.venues import VENUES

        return [name for name in VENUES if getattr(self, name).enabled]


@dataclass(frozen=True, slots=True)
class Consolidation:
    enabled: bool
    venue_stale_ms: int
    index_venue: str


@dataclass(frozen=True, slots=True)
class Simulator:
    host: str
    port: int
    seed: int
    rate: int
    scale: str


@dataclass(frozen=True, slots=True)
class Chain:
    fit_interval_ms: int
    min_quotes: int
    fits_per_epoch: int
    max_rel_spread: float
    fit_change_bp: float
    refit_forward_bp: float
    skip_bp: float
    approx_bp: float
    taylor2_bp: float
    change_bp: float
    audit_every: int
    level_depth: int  # vol at size: levels per side solved per book (0 = none)
    sizes_contracts: list[float]  # and the sizes each side is walked to (execution vols)


@dataclass(frozen=True, slots=True)
class Surface:
    tenors_days: list[int]
    drop_calendar_violators: bool
    repair_calendar: bool
    weekend_weight: float


@dataclass(frozen=True, slots=True)
class GatewaySinkConfig:
    enabled: bool
    host: str
    port: int
    publish_token: str
    publish_token_file: str
    stale_after_ms: int
    allowed_origins: list[str]
    max_clients: int
    max_clients_per_addr: int
    client_queue_max: int
    coalesce_after: int
    client_max_message_bytes: int
    publish_max_message_bytes: int
    max_surfaces: int
    max_expiries_per_surface: int
    ping_interval_s: float


@dataclass(frozen=True, slots=True)
class PostgresSinkConfig:
    enabled: bool
    dsn: str
    batch_rows: int
    flush_ms: int
    handoff_timeout_s: float
    depth_vols: bool
    market_events: bool
    market_batch_items: int
    market_retention_days: int


@dataclass(frozen=True, slots=True)
class Sinks:
    gateway: GatewaySinkConfig
    postgres: PostgresSinkConfig


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    runtime: Runtime
    sources: Sources
    consolidation: Consolidation
    simulator: Simulator
    chain: Chain
    surface: Surface
    sinks: Sinks
    nodes: tuple[Node, ...]  # topologically ordered

    def replace(self, **sections: Any) -> "Config":
        return dataclasses.replace(self, **sections)


# Extra constraints beyond the type, with the wording of the fix.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "runtime.epoch_ms": (lambda v: 1 <= v <= 60_000, "an integer from 1 to 60000"),
    "runtime.workers": (lambda v: v >= 1, "an integer ≥ 1"),
    "runtime.processes": (lambda v: v >= 1, "an integer ≥ 1"),
    "runtime.status_interval_ms": (lambda v: v >= 50, "an integer ≥ 50"),
    "runtime.metrics_port": (lambda v: 0 <= v <= 65535, "a port from 1 to 65535, or 0 for no /metrics"),
    "runtime.log_format": (lambda v: v in ("plain", "json"), 'one of "plain", "json"'),
    "runtime.stop_timeout_s": (lambda v: 0.5 <= v <= 60, "a number of seconds from 0.5 to 60"),
    "runtime.snapshot_interval_s": (lambda v: 0.05 <= v <= 3600, "a number of seconds from 0.05 to 3600"),
    "runtime.backup_interval_s": (lambda v: v >= 0, "a number of seconds ≥ 0"),
    "runtime.replay_speed": (lambda v: v >= 0, "a number ≥ 0 (0 = as fast as the flow reads)"),
    "sources.deribit.url": (lambda v: v.startswith(("ws://", "wss://")), "a ws:// or wss:// URL"),
    "sources.deribit.currencies": (lambda v: len(v) > 0 and all(isinstance(c, str) and c.isupper() for c in v),
                                   'a non-empty list of upper-case currencies, e.g. ["BTC", "ETH"]'),
    "sources.deribit.book": (lambda v: v in ("grouped", "incremental"), 'one of "grouped", "incremental"'),
    "sources.deribit.book_interval": (lambda v: v in ("100ms", "agg2", "raw"), 'one of "100ms", "agg2", "raw"'),
    "sources.deribit.depth": (lambda v: 1 <= v <= 50, "an integer from 1 to 50"),
    "sources.deribit.heartbeat_s": (lambda v: v >= 10, "an integer ≥ 10 (Deribit's minimum)"),
    "sources.deribit.refresh_s": (lambda v: v >= 10, "a number of seconds ≥ 10 (Deribit allows one listing call a 10 s)"),
    "sources.deribit.queue_max": (lambda v: v >= 100, "an integer ≥ 100"),
    "sources.deribit.max_frame_bytes": (lambda v: v >= 1024, "an integer ≥ 1024"),
    "sources.okx.url": (lambda v: v.startswith(("ws://", "wss://")), "a ws:// or wss:// URL"),
    "sources.okx.families": (lambda v: len(v) > 0 and all(isinstance(c, str) and c.endswith("-USD") for c in v),
                             'a non-empty list of OKX instrument families, e.g. ["BTC-USD", "ETH-USD"]'),
    "sources.okx.refresh_s": (lambda v: v >= 1, "a number of seconds ≥ 1 (OKX allows 20 listing calls a 2 s)"),
    "sources.okx.queue_max": (lambda v: v >= 100, "an integer ≥ 100"),
    "sources.okx.max_frame_bytes": (lambda v: v >= 1024, "an integer ≥ 1024"),
    "consolidation.venue_stale_ms": (lambda v: v >= 100, "an integer ≥ 100"),
    "simulator.port": (lambda v: 0 <= v <= 65535, "a port from 0 to 65535 (0 = any free port)"),
    "simulator.rate": (lambda v: v >= 1, "an integer ≥ 1 (messages per second)"),
    "simulator.scale": (lambda v: v in ("small", "medium", "seed"), 'one of "small", "medium", "seed"'),
    "chain.fit_interval_ms": (lambda v: v >= 0, "an integer ≥ 0"),
    "chain.min_quotes": (lambda v: v >= 5, "an integer ≥ 5 (SVI has 5 parameters)"),
    "chain.fits_per_epoch": (lambda v: v >= 1, "an integer ≥ 1"),
    "chain.max_rel_spread": (lambda v: v > 0, "a number > 0"),
    "chain.fit_change_bp": (lambda v: v >= 0, "a number ≥ 0"),
    "chain.refit_forward_bp": (lambda v: v > 0, "a number > 0 (bp of forward move)"),
    "chain.skip_bp": (lambda v: 0 <= v <= 0.5, "a number from 0 to 0.5 (the skipped drift counts twice toward the 1 bp bound)"),
    "chain.approx_bp": (lambda v: v >= 0, "a number ≥ 0"),
    "chain.taylor2_bp": (lambda v: 0 <= v <= 5, "a number from 0 to 5 (larger second-order terms leave third-order errors near 1 bp)"),
    "chain.change_bp": (lambda v: 0 <= v <= 1, "a number from 0 to 1"),
    "chain.audit_every": (lambda v: v >= 0, "an integer ≥ 0 (0 = off)"),
    "chain.level_depth": (lambda v: 0 <= v <= 400, "an integer from 0 to 400 (0 = touch only; OKX sends up to 400)"),
    "chain.sizes_contracts": (lambda v: all(isinstance(q, (int, float)) and not isinstance(q, bool) and q > 0 for q in v),
                              "a list of sizes > 0 in contracts, e.g. [1.0, 10.0] ([] = no execution vols)"),
    "surface.weekend_weight": (lambda v: 0 < v <= 1, "a number from 0 (exclusive) to 1 (1 = calendar time, ACT/365)"),
    "surface.tenors_days": (lambda v: all(isinstance(d, int) and d > 0 for d in v), "a list of positive integers"),
    "sinks.gateway.port": (lambda v: 0 <= v <= 65535, "a port from 0 to 65535"),
    "sinks.gateway.stale_after_ms": (lambda v: v >= 100, "an integer ≥ 100"),
    "sinks.gateway.allowed_origins": (lambda v: all(o.startswith(("http://", "https://")) and o.count("/") == 2 for o in v),
                                      'a list of origins "scheme://host[:port]", e.g. ["https://vol.example.com"]'),
    "sinks.gateway.max_clients": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.gateway.max_clients_per_addr": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.gateway.client_queue_max": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.gateway.coalesce_after": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.gateway.client_max_message_bytes": (lambda v: 256 <= v <= 1_048_576, "an integer from 256 to 1048576"),
    "sinks.gateway.publish_max_message_bytes": (lambda v: 65_536 <= v <= 268_435_456, "an integer from 65536 to 268435456"),
    "sinks.gateway.max_surfaces": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.gateway.max_expiries_per_surface": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.gateway.ping_interval_s": (lambda v: 0 < v <= 300, "a number of seconds from 0 (exclusive) to 300"),
    "sinks.postgres.batch_rows": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.postgres.flush_ms": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.postgres.handoff_timeout_s": (lambda v: v > 0, "a number of seconds > 0"),
    "sinks.postgres.market_batch_items": (lambda v: v >= 1, "an integer ≥ 1"),
    "sinks.postgres.market_retention_days": (lambda v: v >= 0, "an integer ≥ 0 (0 = keep every day)"),
}


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Load the defaults, then `path` over them, then `overrides` (nested dict) over that."""
    merged = _read(DEFAULT_PATH)
    where = str(DEFAULT_PATH)
    if path is not None and Path(path).resolve() != DEFAULT_PATH:
        user = _read(Path(path))
        where = str(path)
        _check_keys(user, merged, where)
        merged = _merge(merged, user)
    if overrides:
        merged = _merge(merged, overrides)
    nodes_raw = merged.pop("nodes", {})
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name in ("path", "nodes"):
            continue
        sections[f.name] = _section(typing.get_type_hints(Config)[f.name], merged.get(f.name, {}), f.name, where)
    config = Config(path=where, nodes=_nodes(nodes_raw, where), **sections)
    _check_combinations(config, where)
    return config


def _check_combinations(config: Config, where: str) -> None:
    """Keys valid alone but not together."""
    venues = config.sources.venues()
    c = config.consolidation
    if c.enabled and len(venues) > 1 and c.index_venue not in venues:
        raise ConfigError(f"{where}: consolidation.index_venue = {c.index_venue!r} is not an enabled venue "
                          f"({', '.join(venues)}); name one of them (the combined surface takes its index)")
    d = config.sources.deribit
    if d.book == "grouped" and d.depth > 20:
        raise ConfigError(f'{where}: sources.deribit.depth = {d.depth} with sources.deribit.book = "grouped": '
                          'a grouped book carries at most 20 levels per side; lower depth or set book = "incremental"')
    if d.book == "grouped" and d.book_interval == "raw":
        raise ConfigError(f'{where}: sources.deribit.book_interval = "raw" with sources.deribit.book = "grouped": '
                          'grouped books come at "100ms" or "agg2"; change one of the two')


def _read(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; pass --config with the path of a graph.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_keys(user: dict, defaults: dict, where: str, prefix: str = "") -> None:
    """Unknown sections and keys fail loudly (a typo must not silently keep a default)."""
    for key, value in user.items():
        name = f"{prefix}{key}"
        if prefix == "" and key == "nodes":
            continue
        if key not in defaults:
            hint = difflib.get_close_matches(key, list(defaults), n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"known keys here: {', '.join(sorted(defaults))}"
            raise ConfigError(f"{where}: unknown key [{name}] — {fix}")
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            _check_keys(value, defaults[key], where, f"{name}.")


def _section(cls: type, raw: dict, name: str, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"{where}: unknown key '{key}' in [{name}] — {fix}")
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{name}.{f.name}"
        if f.name not in raw:
            raise ConfigError(f"{where}: [{name}] is missing '{f.name}'; add it (see the project's graph.toml)")
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            values[f.name] = _section(tp, raw[f.name], key, where)
            continue
        values[f.name] = _typed(tp, raw[f.name], key, where)
        check = _CHECKS.get(key)
        if check and not check[0](values[f.name]):
            raise ConfigError(f"{where}: {key} = {raw[f.name]!r} is out of range; it must be {check[1]}")
    return cls(**values)


def _typed(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(ok[item](v) for v in value):
            raise ConfigError(f"{where}: {key} = {value!r} must be a list of {item.__name__}")
        return list(value)
    if not ok[tp](value):
        raise ConfigError(f"{where}: {key} = {value!r} must be {'an' if tp is int else 'a'} {tp.__name__}")
    return float(value) if tp is float else value


def _nodes(raw: dict, where: str) -> tuple[Node, ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [nodes] must be a table of [nodes.NAME] tables")
    nodes: dict[str, Node] = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: [nodes.{name}] must be a table with fn, inputs and level")
        if name in BUILTIN_INPUTS:
            raise ConfigError(f"{where}: node name '{name}' is reserved for a built-in input; rename the node")
        for key in ("fn", "inputs", "level"):
            if key not in spec:
                raise ConfigError(f"{where}: [nodes.{name}] is missing '{key}'")
        fn_path, inputs, level = spec["fn"], spec["inputs"], spec["level"]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            raise ConfigError(f"{where}: [nodes.{name}] inputs = {inputs!r} must be a non-empty list of names")
        if level not in LEVELS:
            raise ConfigError(f"{where}: [nodes.{name}] level = {level!r}; use one of "
                              f"{', '.join(repr(lv) for lv in LEVELS)}")
        unit = spec.get("unit", "")
        if not isinstance(unit, str):
            raise ConfigError(f'{where}: [nodes.{name}] unit = {unit!r} must be a string, e.g. unit = "vol pts"')
        params = {k: v for k, v in spec.items() if k not in ("fn", "inputs", "level", "unit")}
        nodes[name] = Node(name, fn_path, _import_fn(fn_path, name, where), tuple(inputs), level, params, unit)
    for node in nodes.values():
        builtins = BUILTINS[node.level]
        readable = sorted({n.name for n in nodes.values() if n.level in READS[node.level]} - {node.name})
        for dep in node.inputs:
            if dep in builtins:
                continue
            if dep in BUILTIN_INPUTS:
                users = [lv for lv, names in BUILTINS.items() if dep in names]
                raise ConfigError(
                    f"{where}: [nodes.{node.name}] (level = {node.level!r}) reads '{dep}', a built-in of level "
                    f"{' / '.join(map(repr, users))} only; a {node.level} node's built-ins are "
                    f"{', '.join(builtins)}: use one of them, or set level = {users[0]!r}")
            if dep not in nodes:
                known = sorted(set(readable) | set(builtins))
                hint = difflib.get_close_matches(dep, known, n=1)
                fix = f"did you mean '{hint[0]}'?" if hint else f"inputs can be: {', '.join(known)}"
                raise ConfigError(f"{where}: [nodes.{node.name}] has unknown input '{dep}' — {fix}")
            other = nodes[dep].level
            if other not in READS[node.level]:
                raise ConfigError(
                    f"{where}: [nodes.{node.name}] (level = {node.level!r}) reads [nodes.{dep}] (level = {other!r}); "
                    f"a {node.level} node reads only {' and '.join(map(repr, READS[node.level]))} nodes "
                    f"(one value of each where it runs): remove '{dep}' from its inputs, or change one of the levels")
    return tuple(nodes[n] for n in _topological(nodes, where))


def _import_fn(fn_path: Any, name: str, where: str) -> Callable[..., Any]:
    if not isinstance(fn_path, str) or fn_path.count(":") != 1:
        raise ConfigError(f"{where}: [nodes.{name}] fn = {fn_path!r} must be \"module:function\"")
    module_name, attr = fn_path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{where}: [nodes.{name}] fn = {fn_path!r}: cannot import module "
                          f"'{module_name}' ({exc}); check the module path") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: [nodes.{name}] fn = {fn_path!r}: '{module_name}' has no function '{attr}'")
    return fn


def _topological(nodes: dict[str, Node], where: str) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " → ".join(path[path.index(name):] + [name])
            raise ConfigError(f"{where}: the nodes form a cycle: {cycle}; remove one of these inputs")
        state[name] = 1
        for dep in nodes[name].inputs:
            if dep in nodes:
                visit(dep, path + [name])
        state[name] = 2
        order.append(name)

    for name in nodes:
        visit(name, [])
    return order
