"""graph.toml: the defaults load; every kind of bad file fails naming the key/node and the fix."""

import textwrap

import pytest

from flows.config import DEFAULT_PATH, ConfigError, load_config
from operators.state.nodes import evaluate_nodes


def write(tmp_path, text):
    path = tmp_path / "graph.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_load_with_nodes_in_topological_order():
    config = load_config()
    assert config.path == str(DEFAULT_PATH)
    assert config.runtime.epoch_ms == 50
    assert config.sources.deribit.url == "wss://www.deribit.com/ws/api/v2"
    assert config.sources.venues() == ["deribit", "okx"] and config.consolidation.enabled
    assert {n.name for n in config.nodes} >= {"atm_vol", "rr25", "bf25", "rr10", "bf10"}
    assert dict(next(n for n in config.nodes if n.name == "rr10").params) == {"delta": 0.10}


def test_user_file_overrides_key_by_key_and_adds_nodes(tmp_path):
    path = write(tmp_path, """
        [chain]
        fit_interval_ms = 1000
        [nodes.skew_ratio]
        fn = "operator:truediv"
        inputs = ["rr25", "atm_vol"]
        level = "expiry"
    """)
    config = load_config(path)
    assert config.chain.fit_interval_ms == 1000 and config.chain.min_quotes == 6  # others kept
    names = [n.name for n in config.nodes]
    assert names.index("skew_ratio") > names.index("rr25") and names.index("skew_ratio") > names.index("atm_vol")


@pytest.mark.parametrize("text, message", [
    ("[chain]\nfit_intervl_ms = 5\n", r"unknown key \[chain.fit_intervl_ms\] — did you mean 'fit_interval_ms'"),
    ("[chian]\n", r"unknown key \[chian\] — did you mean 'chain'"),
    ("[runtime]\nepoch_ms = 0\n", r"runtime.epoch_ms = 0 is out of range; it must be an integer from 1 to 60000"),
    ("[runtime]\nepoch_ms = \"fast\"\n", r"runtime.epoch_ms = 'fast' must be an int"),
    ("[sources.deribit]\nurl = \"http://x\"\n",
     r"sources.deribit.url = 'http://x' is out of range; it must be a ws:// or wss:// URL"),
    ("[sources.deribit]\nheartbeat_s = 5\n", r"sources.deribit.heartbeat_s = 5 .*Deribit's minimum"),
    ("[sources.okx]\nfamilies = [\"BTC\"]\n", r"sources.okx.families = \['BTC'\] .*instrument families"),
    ("[sources.deribit]\nbook = \"full\"\n", r"sources.deribit.book = 'full' .*one of \"grouped\", \"incremental\""),
    ("[sources.deribit]\nbook = \"grouped\"\ndepth = 25\n", r"sources.deribit.depth = 25 with sources.deribit.book = \"grouped\": .*at most 20"
     r" levels per side; lower depth or set book = \"incremental\""),
    ("[sources.deribit]\nbook = \"grouped\"\nbook_interval = \"raw\"\n", r"book_interval = \"raw\" with sources.deribit.book = \"grouped\""),
    ("[nodes.x]\nfn = \"operators.kernels.analytics:atm_vol\"\ninputs = [\"fitt\"]\nlevel = \"expiry\"\n",
     r"\[nodes.x\] has unknown input 'fitt' — did you mean 'fit'"),
    ("[nodes.x]\nfn = \"no_such_module:f\"\ninputs = [\"fit\"]\nlevel = \"expiry\"\n",
     r"\[nodes.x\] fn = 'no_such_module:f': cannot import module 'no_such_module'"),
    ("[nodes.x]\nfn = \"operators.kernels.analytics\"\ninputs = [\"fit\"]\nlevel = \"expiry\"\n",
     r"must be \"module:function\""),
    ("[nodes.x]\nfn = \"math:nope\"\ninputs = [\"fit\"]\nlevel = \"expiry\"\n", r"'math' has no function 'nope'"),
    ("[nodes.x]\nfn = \"math:sqrt\"\ninputs = [\"fit\"]\nlevel = \"strike\"\n", r"level = 'strike'; use one of"),
    ("[nodes.x]\nfn = \"math:sqrt\"\nlevel = \"expiry\"\n", r"\[nodes.x\] is missing 'inputs'"),
    ("[nodes.a]\nfn = \"math:sqrt\"\ninputs = [\"b\"]\nlevel = \"expiry\"\n"
     "[nodes.b]\nfn = \"math:sqrt\"\ninputs = [\"a\"]\nlevel = \"expiry\"\n", r"cycle: a → b → a"),
    ("nope = [\n", r"not valid TOML"),
])
def test_bad_files_fail_with_a_message_naming_the_place_and_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="no such file; pass --config"):
        load_config(tmp_path / "absent.toml")


def test_evaluate_nodes_in_order_and_failures_become_none(tmp_path):
    path = write(tmp_path, """
        [nodes.double_atm]
        fn = "operator:mul"
        inputs = ["atm_vol"]
        level = "expiry"
        [nodes.broken]
        fn = "math:log"
        inputs = ["fit"]
        level = "expiry"
        [nodes.after_broken]
        fn = "math:sqrt"
        inputs = ["broken"]
        level = "expiry"
    """)
    config = load_config(path)
    params = (0.04, 0.1, -0.3, 0.0, 0.2)  # raw SVI
    values = evaluate_nodes(config.nodes, params, 0.5)
    # operator.mul(atm, t_years) → atm × 0.5
    assert values["double_atm"] == pytest.approx(values["atm_vol"] * 0.5)
    assert values["broken"] is None and values["after_broken"] is None


# ---- every default exactly once: below the config layer, no graph.toml key has a code default

def _constructors():
    from connectors.gateway.server import Gateway
    from connectors.postgres import PostgresSink, PostgresWriter
    from connectors.sim.deribit import Simulator
    from connectors.sim.okx import OkxSimulator
    from connectors.venues.deribit import DeribitClient, DeribitSource
    from connectors.venues.okx import OkxClient, OkxSource
    from operators.state.chain import ChainLogic
    from operators.state.surface import SurfaceLogic

    return [(DeribitSource, ("sources.deribit",)), (DeribitClient, ("sources.deribit",)),
            (OkxSource, ("sources.okx",)), (OkxClient, ("sources.okx",)),
            (Gateway, ("sinks.gateway",)), (Simulator, ("simulator",)), (OkxSimulator, ("simulator",)),
            (PostgresSink, ("sinks.postgres",)), (PostgresWriter, ("sinks.postgres",)),
            (ChainLogic, ("runtime", "chain", "consolidation")), (SurfaceLogic, ("runtime", "surface"))]


@pytest.mark.parametrize("cls, sections", _constructors(), ids=lambda x: getattr(x, "__name__", None))
def test_no_constructor_repeats_a_graph_toml_default(cls, sections):
    """A parameter named like a key of its graph.toml section (book_interval: `interval`) has no
    default: graph.toml holds it once, and flows/ (or a venue's from_config) passes it."""
    import dataclasses
    import inspect

    from tests.helpers.config import RENAMED, section

    keys = {RENAMED.get(f.name, f.name) for name in sections for f in dataclasses.fields(section(name))}
    params = inspect.signature(cls).parameters
    defaulted = sorted(name for name, p in params.items()
                       if name in keys and p.default is not inspect.Parameter.empty)
    assert not defaulted, f"{cls.__name__}: {defaulted} repeat graph.toml defaults; make them required"
    assert keys & set(params), f"{cls.__name__} takes none of {sorted(keys)}: the table above is stale"


def test_venue_from_config_passes_every_section_key():
    """from_config / client_options (connectors/venues/*/source.py) carry each [sources.<venue>] key."""
    from connectors.venues import VENUES

    config = load_config(overrides={"sources": {"deribit": {"queue_max": 1234, "heartbeat_s": 30, "refresh_s": 60,
                                                            "book_interval": "agg2", "depth": 10},
                                                "okx": {"queue_max": 4321, "max_frame_bytes": 99_999,
                                                        "refresh_s": 30}}})
    deribit = VENUES["deribit"].source_from_config()(config.sources.deribit)
    assert (deribit.queue_max, deribit.heartbeat_s, deribit.interval, deribit.depth) == (1234, 30, "agg2", 10)
    assert deribit.url == config.sources.deribit.url and deribit.currencies == ("BTC", "ETH")
    assert deribit.client_options(0)["refresh_s"] == 60
    okx = VENUES["okx"].source_from_config()(config.sources.okx, url="ws://127.0.0.1:1/ws/v5/public")
    assert (okx.queue_max, okx.max_frame_bytes, okx.url) == (4321, 99_999, "ws://127.0.0.1:1/ws/v5/public")
    assert okx.client_options(0)["refresh_s"] == 30
    options = VENUES["okx"].client_options()(config.sources.okx)
    assert options == dict(url=config.sources.okx.url, families=("BTC-USD", "ETH-USD"), refresh_s=30,
                           queue_max=4321, max_frame_bytes=99_999)
