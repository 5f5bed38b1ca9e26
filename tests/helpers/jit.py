"""Does a kernel module's warm_up() compile what the hot path runs? Checked in a fresh Python
process (in this one, earlier tests have compiled everything already): warm the module up,
note each numba dispatcher's compiled signatures, run one real chain epoch (books → IVs →
small moves → SVI fit, tests/helpers/chain.py), and report which dispatchers the epoch still
had to compile. Test support only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, sys
sys.path.insert(0, {root!r})
import importlib
from numba.core.registry import CPUDispatcher
module = importlib.import_module({module!r})
module.warm_up()
def sigs():
    return {{n: len(v.signatures) for n, v in vars(module).items() if isinstance(v, CPUDispatcher)}}
before = sigs()
from tests.helpers.chain import Clock, T0, logic, quotes, ticker
clock = Clock(T0)
chain = logic(clock, **{chain_kw!r})
chain.on_items(quotes() + [ticker()])
fits = chain.on_epoch()
clock.ms += 300
chain.on_items(quotes(forward=60_100.0, half_spread_vol=0.005) + [ticker(60_100.0)])
fits += chain.on_epoch()
print(json.dumps({{"before": before, "after": sigs(), "fits": len(fits)}}))
"""


def warm_up_coverage(module: str, **chain_kw) -> dict:
    """{"before": {dispatcher: n signatures after warm_up}, "after": {... after two epochs},
    "fits": fits the epochs produced}. chain_kw: ChainLogic settings for the epochs (e.g. level vols on)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT), module=module, chain_kw=chain_kw)],
                          cwd=str(ROOT),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
