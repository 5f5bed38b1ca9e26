"""Where a shock's chain ticks go, per function: the seed shock recording (bench/workload.py,
cached) parsed by the real parser and routed into one ChainLogic per BTC expiry as the flow
does, with level vols on (bench/engine/common.py LEVELS_ON), settled epoch by epoch, then the
+1 % shock applied and one epoch run for all expiries under cProfile; prints the time and the
top of the profile. One process, no bytewax: the chain step's own work, for comparing trees
side by side (docs/benchmarks.md, "Vol at size").

    .venv/bin/python bench/shock_ticks.py [--top 28]

Benchmark tooling only: never part of the engine.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.engine.common import LEVELS_ON  # noqa: E402
from bench.workload import add_cache_dir, seed_shock  # noqa: E402
from connectors.venues.deribit.parse import parse_frame  # noqa: E402
from flows.config import load_config  # noqa: E402
from flows.steps import chain_settings  # noqa: E402
from operators.events import BookUpdate, FuturePrice, IndexPrice, Instrument, Ticker  # noqa: E402
from operators.state import chain as chain_state  # noqa: E402

SETTLE_FRAMES = 500  # frames per settling epoch before the shock
EPOCH_STEP_MS = 60  # flow time between settling epochs (> runtime.epoch_ms)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Profile one seed shock's chain ticks (level vols on).")
    p.add_argument("--top", type=int, default=28, help="profile lines to print (default: 28)")
    add_cache_dir(p)
    args = p.parse_args(argv)
    _path, meta, frames = seed_shock(Path(args.cache_dir))
    shock = meta["shocks"][0]
    underlying = shock["underlying"]
    settings = chain_settings(load_config(overrides={"chain": dict(LEVELS_ON)}))
    clock = [0]
    budget = chain_state.FitBudget(1_000_000)  # every owed fit runs: the shock's whole work
    chains: dict[int, chain_state.ChainLogic] = {}
    route: dict[str, int] = {}
    chain_state.warm_up()

    def feed(lo: int, hi: int) -> None:
        per: dict[int, list] = {}
        index = None
        for ts, frame in frames[lo:hi]:
            clock[0] = max(clock[0], ts)
            for e in parse_frame(frame, ts, max_bytes=1 << 26):  # instrument lists are large
                kind = type(e)
                if kind is Instrument and e.kind == "option" and e.underlying == underlying:
                    route[e.instrument] = e.expiry_ms
                    if e.expiry_ms not in chains:
                        chains[e.expiry_ms] = chain_state.ChainLogic(
                            chain_state.ChainState("deribit", underlying, e.expiry_ms), budget=budget,
                            now_ms=lambda: clock[0], **settings)
                    per.setdefault(e.expiry_ms, []).append(e)
                elif kind is BookUpdate or kind is Ticker:
                    expiry = route.get(e.instrument)
                    if expiry is not None:
                        per.setdefault(expiry, []).append(e)
                elif kind is IndexPrice and e.underlying == underlying:
                    index = e
                elif kind is FuturePrice and e.underlying == underlying and e.expiry_ms in chains:
                    per.setdefault(e.expiry_ms, []).append(e)
        for expiry, events in per.items():
            chains[expiry].on_items(events + ([index] if index is not None else []))

    def epoch_all() -> int:
        fits = 0
        for c in chains.values():
            fits += len(c.on_epoch())
            c.take_between()
        return fits

    first = shock["first_frame"]
    for lo in range(0, first, SETTLE_FRAMES):
        feed(lo, min(lo + SETTLE_FRAMES, first))
        clock[0] += EPOCH_STEP_MS
        epoch_all()
    clock[0] += 1_000
    epoch_all()
    gc.freeze()
    gc.set_threshold(300_000, 20, 20)  # as flows/surface.py tune_gc
    started = time.perf_counter()
    feed(first, first + shock["n_frames"])
    applied_ms = (time.perf_counter() - started) * 1e3
    clock[0] += 300
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    fits = epoch_all()
    prof.disable()
    ticks_ms = (time.perf_counter() - started) * 1e3
    print(f"# {len(chains)} {underlying} expiries, {shock['n_frames']:,} shock frames: parse + route + apply "
          f"{applied_ms:.1f} ms; ticks {ticks_ms:.1f} ms under cProfile, {fits} fits")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
