"""Level vols on against off, side by side (bench_engine.py --levels): the one-process volgraph row at
max speed and its shock row, run with [chain] level_depth / sizes_contracts set to ON ("on") and
emptied ("off": the touch only), interleaved round by round in fresh child processes so load on the
box falls on both alike; the table prints each figure's median over the rounds.

Starts child processes (bench/engine/plan.py run_child) and prints; never measures in its own process.
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import sys
from pathlib import Path
from typing import Optional

from bench.engine.common import LEVELS_ON, SHOCK_ENTRY_LATE
from bench.engine.plan import clock_offset, run_child

OFF = {"level_depth": 0, "sizes_contracts": []}
ON = LEVELS_ON


def variants(extra_depths: tuple[int, ...] = ()) -> dict[str, dict]:
    """name → [chain] overrides: off, ON, and ON at other depths."""
    out = {"off": OFF, "on": ON}
    for d in extra_depths:
        out[f"on, depth {d}"] = {**ON, "level_depth": d}
    return out


def run_levels(args) -> dict:
    from bench.machine import describe_machine
    from bench.workload import CACHE_DIR, ensure_workload, shock_spec, workload_for
    from flows.config import load_config

    spec = workload_for(args.scenario, args.seconds, args.messages)
    cache = Path(args.cache_dir) if args.cache_dir else CACHE_DIR
    path, meta = ensure_workload(spec, "workload", cache)
    shock_path, shock_meta = ensure_workload(shock_spec(args.scenario), "shock", cache)
    epoch_ms = load_config().runtime.epoch_ms
    late = clock_offset(shock_meta["shocks"][0]["ts_ms"], SHOCK_ENTRY_LATE * epoch_ms, epoch_ms)
    runs: dict[str, list] = {}
    load_before = os.getloadavg()
    kinds = variants(tuple(args.levels_depths or ()))
    for r in range(args.rounds):
        for name, chain in kinds.items():
            for job in (dict(meta=meta, path=str(path), seconds=args.seconds, prefetch=not args.no_prefetch,
                             name=f"levels {name} r{r}", kind="volgraph", speed="max", chain=chain),
                        dict(meta=shock_meta, path=str(shock_path), name=f"levels {name} shock r{r}", kind="volgraph",
                             seconds=None, speed=1.0, shock=True, preload=True, clock_offset_ms=late, chain=chain)):
                print(f"# running {job['name']} …", file=sys.stderr, flush=True)
                runs.setdefault(name, []).append(run_child(job))
    return {"machine": describe_machine(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "rounds": args.rounds, "seconds": args.seconds, "workload": {"frames": meta["frames"],
                                                                       "options": meta["n_options"],
                                                                       "depth": meta["depth"]},
            "loadavg": [round(x, 2) for x in load_before + os.getloadavg()], "runs": runs,
            "rows": {name: _row(results) for name, results in runs.items()}}


def _median(values) -> Optional[float]:
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def _row(results: list[dict]) -> dict:
    flows = [x for x in results if x.get("shock") is None and x["speed"] == "max"]
    shocks = [x["shock"] for x in results if x.get("shock")]
    vols = [s["vols"] for s in shocks if s.get("vols")]
    return {
        "level_depth": results[0]["level_depth"], "sizes_contracts": results[0]["sizes_contracts"],
        "msgs_per_s": _median(x["msgs_per_s"] for x in flows),
        "msgs_per_s_each": [round(x["msgs_per_s"] or 0) for x in flows],
        "cpu_s_per_M_msgs": _median(x["cpu_s_per_M_msgs"] for x in flows),
        "epoch_cpu_s": _median(x.get("epoch_cpu_s") for x in flows),
        "seconds": _median(x["seconds"] for x in flows),
        "iv_full": _median(x["iv_full"] for x in flows), "lv_full": _median(x.get("lv_full") for x in flows),
        "lv_taylor": _median(x.get("lv_taylor") for x in flows), "lv_skipped": _median(x.get("lv_skipped") for x in flows),
        "lv_books": _median(x.get("lv_books") for x in flows),
        "max_err_bp": max((x["max_err_bp"] for x in results if isinstance(x["max_err_bp"], float)), default=None),
        "level_max_err_bp": max((x["level_max_err_bp"] for x in results if isinstance(x.get("level_max_err_bp"), float)),
                                default=None),
        "audit_every": results[0]["audit_every"],
        "shock_ms": _median(s["absorb_ms"] for s in shocks),
        "shock_ms_each": [None if s["absorb_ms"] is None else round(s["absorb_ms"], 1) for s in shocks],
        "shock_absorbed": [f"{s['expiries_absorbed']}/{s['expiries']}" for s in shocks],
        "shock_tick_ms": _median(sum(st["tick_ms"] for st in s.get("stages") or ()) for s in shocks),
        "shock_books": shocks[0]["shock_books"] if shocks else None,
        **{f"shock_{k}": _median(v[k] for v in vols) for k in ("vols_solved", "vols_stepped", "vols_skipped",
                                                                 "iv_full", "lv_full", "lv_books")},
    }


def print_levels(s: dict) -> None:
    def f(v, fmt="{:,.0f}"):
        return "n/a" if v is None else fmt.format(v)

    w = s["workload"]
    print(f"# volgraph level vols on vs off — {s['date']}")
    print(f"# machine: {s['machine']}")
    print(f"# command: {s['command']}")
    la = s["loadavg"]
    print(f"# load average before {la[0]}/{la[1]}/{la[2]}, after {la[3]}/{la[4]}/{la[5]}")
    print(f"# workload: {w['options']} options, {w['depth']} levels a side, {w['frames']:,} frames; "
          f"{s['rounds']} rounds, each variant in its own process, interleaved; medians (each round in brackets)")
    print()
    for name, x in s["rows"].items():
        print(f"{name}: level_depth {x['level_depth']}, sizes_contracts {x['sizes_contracts']}")
        print(f"  max speed: {f(x['msgs_per_s'])} msg/s {x['msgs_per_s_each']}, {f(x['cpu_s_per_M_msgs'], '{:,.1f}')} "
              f"CPU s/M msgs, chain ticks {f(x['epoch_cpu_s'], '{:.2f}')} CPU s of {f(x['seconds'], '{:.1f}')} s; "
              f"touch vols solved {f(x['iv_full'])}; level vols solved/Taylor/skipped "
              f"{f(x['lv_full'])}/{f(x['lv_taylor'])}/{f(x['lv_skipped'])} ({f(x['lv_books'])} books read)")
        print(f"  audit (every {x['audit_every']} epochs, every published vol against an exact solve): max "
              f"{f(x['max_err_bp'], '{:.3f}')} bp, levels {f(x['level_max_err_bp'], '{:.3f}')} bp")
        print(f"  shock ({f(x['shock_books'])} books): last expiry out {f(x['shock_ms'], '{:,.1f}')} ms "
              f"{x['shock_ms_each']} (absorbed {x['shock_absorbed']}), ticks {f(x['shock_tick_ms'], '{:,.1f}')} ms; "
              f"vols solved {f(x['shock_vols_solved'])} (touch {f(x['shock_iv_full'])}, levels "
              f"{f(x['shock_lv_full'])} of {f(x['shock_lv_books'])} books), stepped {f(x['shock_vols_stepped'])}, "
              f"skipped {f(x['shock_vols_skipped'])}")
    print("\nnotes: msg/s and the shock as bench_engine.py's volgraph 1 proc and volgraph 1 proc shock rows; "
          "vols counted from the chain's counters between the first shock frame entering and the patch "
          "absorbing the last expiry.")
