"""Constructor arguments from the project's graph.toml, for tests that build connectors directly.

Below the config layer every setting graph.toml configures is a required keyword argument (its
default lives in graph.toml only); a test takes them from here and overrides what it needs.
Test support only: reads graph.toml, never does other I/O.
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import lru_cache
from typing import Any, Callable, Optional

from flows.config import Config, load_config

# graph.toml key -> the constructor parameter that takes it, where the names differ
RENAMED = {"book_interval": "interval"}

# the values the tests' simulators run at unless a test says otherwise: the small scale (2 expiries ×
# 12 strikes) and a modest rate keep them quick; host, port (0: any free one) and seed are graph.toml's
TEST_SIMULATOR = {"scale": "small", "rate": 2000.0}


# One analytic added by editing graph.toml only: the tests that show such a node reaching the
# patches, PostgreSQL and the dashboard write this into their graph.toml.
RR15_NODE_TOML = """
[nodes.rr15]
fn = "operators.kernels.analytics:risk_reversal"
inputs = ["fit"]
level = "expiry"
unit = "vol pts"
delta = 0.15
"""


@lru_cache(maxsize=1)
def project_config() -> Config:
    return load_config()


def section(name: str) -> Any:
    """The section "sources.deribit", "sinks.gateway", "simulator", … of the project's graph.toml."""
    obj: Any = project_config()
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def config_kwargs(name: str, target: Optional[Callable] = None, **over: Any) -> dict[str, Any]:
    """[name]'s keys (but `enabled`) as keyword arguments, renamed by RENAMED, then `over`. With
    `target` (a class or function), only the keys it has a named parameter for."""
    values = {RENAMED.get(f.name, f.name): getattr(section(name), f.name)
              for f in dataclasses.fields(section(name)) if f.name != "enabled"}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if target is not None:
        params = inspect.signature(target).parameters
        values = {k: v for k, v in values.items() if k in params
                  and params[k].kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}
    values.update(over)
    return values


def sim_kwargs(**over: Any) -> dict[str, Any]:
    """A test simulator's host, port, seed (graph.toml), scale and rate (TEST_SIMULATOR), then `over`."""
    return config_kwargs("simulator", **{**TEST_SIMULATOR, **over})


def deribit_kwargs(target: Optional[Callable] = None, **over: Any) -> dict[str, Any]:
    """A DeribitClient's (or, with target=DeribitSource, a source's) graph.toml arguments, then `over`."""
    if target is None:
        from connectors.venues.deribit.client import DeribitClient as target
    return config_kwargs("sources.deribit", target, **over)


def okx_kwargs(target: Optional[Callable] = None, **over: Any) -> dict[str, Any]:
    """An OkxClient's (or, with target=OkxSource, a source's) graph.toml arguments, then `over`."""
    if target is None:
        from connectors.venues.okx.client import OkxClient as target
    return config_kwargs("sources.okx", target, **over)


def gateway_kwargs(**over: Any) -> dict[str, Any]:
    """A Gateway's host, port and publish_token from graph.toml ("" → None: no check), then `over`."""
    values = config_kwargs("sinks.gateway", publish_token=section("sinks.gateway").publish_token or None)
    values.update(over)
    return values


def sim_cli_defaults(venue: str, **over: Any) -> dict[str, Any]:
    """What `volgraph sim` / `sim-okx` hands the simulator's main() (flows/cli.py), at the tests'
    scale and rate (TEST_SIMULATOR), then `over`."""
    from flows.cli import simulator_defaults

    return {**simulator_defaults(project_config(), venue), **TEST_SIMULATOR, **over}


def run_for_tests(run_id: str = "test-run"):
    """The RunInfo the tests' PostgreSQL sinks write under (connectors/postgres/runs.py)."""
    from connectors.postgres.runs import RunInfo

    return RunInfo(run_id=run_id, config_hash="test", code_version="test", methods={"iv": "test", "forward": "test",
                   "svi": "test"}, started_ms=1, source="file", detail="tests")


def postgres_sink(dsn: str, spill_dir, *, config: Optional[Config] = None, run_id: str = "test-run", **options):
    """A PostgresSink as graph.toml (or `config`) configures it, under run_for_tests(run_id); options
    override the sink's keywords (flush_ms=…, connect_timeout_s=…)."""
    from connectors.postgres import PostgresSink

    config = config or load_config()
    pg = config.sinks.postgres
    kwargs = dict(run=run_for_tests(run_id), partitions=config.runtime.processes * config.runtime.workers,
                  batch_rows=pg.batch_rows, flush_ms=pg.flush_ms, handoff_timeout_s=pg.handoff_timeout_s, depth_vols=pg.depth_vols,
                  spill_dir=spill_dir)
    kwargs.update(options)
    return PostgresSink(dsn, **kwargs)
