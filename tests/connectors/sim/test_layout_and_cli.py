"""connectors/sim as a set of one-job modules: none imports a venue parser or flows (the tests
compare the simulators with those parsers), the OKX simulator shares the market, calendar and
books modules rather than the Deribit simulator's insides, the shared books keep their promises
for both venues' ticks, and both command lines name themselves and state every default."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.sim import deribit
from connectors.sim.books import book_levels, future_levels
from connectors.sim.deribit_names import OPTION_TICKS as DERIBIT_TICKS
from connectors.sim.okx import OPTION_TICKS as OKX_TICKS
from flows.cli import main as volgraph_main
from flows.cli import simulator_defaults
from flows.config import load_config

SIM_DIR = Path(deribit.__file__).resolve().parent
REPO = SIM_DIR.parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_simulator_module_imports_a_venue_parser_or_flows():
    modules = sorted(SIM_DIR.glob("*.py"))
    assert len(modules) >= 9
    for path in modules:
        bad = [m for m in _imports(path) if m.startswith(("connectors.venues", "flows"))]
        assert not bad, f"{path.name} imports {bad}"
        text = path.read_text()
        assert text.startswith('"""') or path.name == "__init__.py", f"{path.name}: no header docstring"


def test_okx_simulator_uses_the_shared_modules_not_the_deribit_one():
    imported = _imports(SIM_DIR / "okx.py")
    assert not [m for m in imported if m.startswith("connectors.sim.deribit")]
    assert {"connectors.sim.market", "connectors.sim.books", "connectors.sim.server"} <= imported


@pytest.mark.parametrize("command, options", [
    ("sim", ["--host", "--port", "--seed", "--rate", "--currencies", "--scale",
             "--n-expiries", "--n-strikes", "--min-heartbeat", "--seconds", "--faults"]),
    ("sim-okx", ["--host", "--port", "--seed", "--rate", "--families", "--scale",
                 "--n-expiries", "--n-strikes", "--idle-drop", "--seconds"]),
])
def test_help_names_the_command_and_every_default(command, options, capsys):
    prog = f"volgraph {command}"
    with pytest.raises(SystemExit) as exit_:
        volgraph_main([command, "--help"])  # as `volgraph sim --help` runs: defaults from graph.toml
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ")
    blocks = out.split("options:")[1]
    for opt in options:
        text = blocks.split(f"  {opt}", 1)[1]
        nxt = text.find("\n  --")
        assert "(default:" in " ".join((text if nxt < 0 else text[:nxt]).split()), f"{prog} {opt}: no default"
    sim = load_config().simulator
    for opt, value in (("--rate", sim.rate), ("--scale", sim.scale), ("--seed", sim.seed)):
        text = " ".join(blocks.split(f"  {opt}", 1)[1].split())
        assert f"default from graph.toml (default: {value})" in text, (opt, text[:200])


@pytest.mark.parametrize("module", ["connectors.sim.deribit", "connectors.sim.okx"])
def test_python_m_help_names_the_module(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=str(REPO),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: python -m {module} ")


def test_faults_file_that_cannot_be_read_is_named(capsys, tmp_path):
    missing = tmp_path / "no-such-schedule.json"
    with pytest.raises(SystemExit) as exit_:
        deribit.main(["--seconds", "0.1", "--faults", f"@{missing}"],
                     defaults=simulator_defaults(load_config(), "deribit"))
    assert exit_.value.code == 2
    assert str(missing) in capsys.readouterr().err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1e-5, 2.0), min_size=1, max_size=20), st.floats(0.0, 0.3), st.integers(1, 8),
       st.sampled_from([DERIBIT_TICKS, OKX_TICKS]))
def test_book_levels_bracket_the_quote_on_ticks(bids, spread, depth, ticks):
    bid = np.array(bids)
    ask = bid * (1.0 + spread) + 1e-5
    bid_levels, ask_levels = book_levels(bid, ask, depth, ticks)
    for b, a, bl, al in zip(bid.tolist(), ask.tolist(), bid_levels, ask_levels):
        assert len(al) == depth and al == sorted(set(al)) and al[0] >= a - 1e-12
        assert bl == sorted(set(bl), reverse=True) and all(p > 0 for p in bl) and len(bl) <= depth
        if bl:
            assert bl[0] <= b + 1e-12 and bl[0] < al[0]
        for px in bl + al:
            tick = ticks.large if px >= ticks.above else ticks.small
            assert abs(px / tick - round(px / tick)) < 1e-6


@settings(max_examples=200)
@given(st.floats(10.0, 500_000.0), st.sampled_from([0.01, 0.1, 2.5]), st.integers(1, 8))
def test_future_levels_straddle_the_forward(fwd, tick, depth):
    bids, asks = future_levels(fwd, tick, depth)
    assert len(bids) == len(asks) == depth
    assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
    assert bids[0] <= fwd <= asks[0] and asks[0] - bids[0] == pytest.approx(2 * tick)
