"""The parent's plan: build (or find in the cache) the workloads and their per-partition splits
(bench/workload.py), lay out every job — volgraph 1 process and 2, naive, the paced runs, the
shock rows — and run each in its own child process, collecting their results.

Starts processes and reads their results; never measures anything in its own process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from bench.engine.cluster import run_cluster
from bench.engine.common import (CLUSTER_PROCESSES, CLUSTER_ROW, NETNS_DELAY_MS, NETNS_LINK_MBIT, NETNS_ROW,
                                 PACED_RATE_MSG_S, REPO, SHOCK_ENTRY_LATE, WORKERS_ROW, child_command, child_result)


def run_child(job: dict) -> dict:
    """Run one job in a fresh interpreter (its own RSS, counters and numba state)."""
    proc = subprocess.run(child_command(job), capture_output=True, text=True, cwd=str(REPO))
    result = child_result(proc.stdout)
    if result is not None:
        return result
    raise RuntimeError(f"bench child {job['name']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def clock_offset(shock_ts_ms: int, phase_ms: float, epoch_ms: int) -> int:
    """Flow-clock offset (ms) that puts a frame stamped shock_ts_ms `phase_ms` into its epoch."""
    return int((phase_ms - shock_ts_ms % epoch_ms) % epoch_ms)


def _parts(split: dict) -> list[dict]:
    """A cluster job's partitions from split_recording's {name: (path, meta)}."""
    return [{"path": str(p), "currency": m["currency"], "meta": m} for p, m in split.values()]


def run_all(args) -> dict:
    from bench.engine.common import LEVELS_ON
    from bench.workload import CACHE_DIR, ensure_workload, shock_spec, split_recording, workload_for
    from flows.config import load_config

    spec = workload_for(args.scenario, args.seconds, args.messages)
    cache = Path(args.cache_dir) if args.cache_dir else CACHE_DIR
    path, meta = ensure_workload(spec, "workload", cache)
    shock_path, shock_meta = ensure_workload(shock_spec(args.scenario), "shock", cache)
    # the same shock on Deribit's grouped book channel (graph.toml sources.deribit.book = "grouped")
    grouped_path, grouped_meta = ensure_workload(dataclasses.replace(shock_spec(args.scenario), book="grouped"),
                                                 "shock", cache)
    # one partition per (currency, worker slot): each process reads the expiries it computes
    split = split_recording(path, meta, CLUSTER_PROCESSES)
    shock_split = split_recording(shock_path, shock_meta, CLUSTER_PROCESSES)
    grouped_split = split_recording(grouped_path, grouped_meta, CLUSTER_PROCESSES)
    paced_speed = PACED_RATE_MSG_S / meta["avg_rate_msg_s"]
    prefetch = not args.no_prefetch
    # --levels-on: every row, volgraph's and naive's, with the same level vols ([chain] overrides)
    chain = dict(LEVELS_ON) if getattr(args, "levels_on", False) else {}
    base = {"meta": meta, "path": str(path), "seconds": args.seconds, "prefetch": prefetch, "chain": chain}
    cluster = dict(name=CLUSTER_ROW, kind="cluster", processes=CLUSTER_PROCESSES, workers=1, seconds=args.seconds,
                   prefetch=prefetch, base_ts_ms=meta["first_live_ts_ms"],
                   parts=_parts(split), chain=chain)
    # The shock rows: the shock enters late in its epoch, so its tick is due before it is read
    # and applied and runs as soon as it is — end to end is then the engine's own work for it.
    # The "early" row enters at the start of an epoch: its tick waits for the epoch's end.
    # Their recordings are decompressed before the run (preload): decompression is the file's,
    # not the exchange's, and a reader thread doing it mid-shock took a core from the other process.
    shock_run = dict(seconds=None, speed=1.0, shock=True, preload=True, chain=chain)
    shock_parts = _parts(shock_split)
    epoch_ms = load_config().runtime.epoch_ms
    late = clock_offset(shock_meta["shocks"][0]["ts_ms"], SHOCK_ENTRY_LATE * epoch_ms, epoch_ms)
    jobs = [
        dict(base, name="volgraph", kind="volgraph", speed="max"),
        cluster,
        dict(cluster, name=WORKERS_ROW, processes=1, workers=CLUSTER_PROCESSES),
        dict(cluster, name=NETNS_ROW, netns_mbit=NETNS_LINK_MBIT, netns_delay_ms=NETNS_DELAY_MS),
        dict(base, name="naive", kind="naive"),
        dict(base, name="volgraph_paced", kind="volgraph", speed=paced_speed),
        dict(cluster, name=CLUSTER_ROW + "_paced", speed=paced_speed),
        dict(cluster, name=NETNS_ROW + "_paced", speed=paced_speed, netns_mbit=NETNS_LINK_MBIT,
             netns_delay_ms=NETNS_DELAY_MS),
        dict(meta=shock_meta, path=str(shock_path), name="volgraph_shock", kind="volgraph", **shock_run,
             clock_offset_ms=late),
        dict(cluster, name=CLUSTER_ROW + "_shock", **shock_run, shock_meta=shock_meta, parts=shock_parts,
             clock_offset_ms=late),
        dict(cluster, name=CLUSTER_ROW + "_shock_early", **shock_run, shock_meta=shock_meta, parts=shock_parts,
             clock_offset_ms=0),
        dict(cluster, name=CLUSTER_ROW + "_shock_grouped", **shock_run, shock_meta=grouped_meta,
             parts=_parts(grouped_split),
             clock_offset_ms=late),
        dict(meta=shock_meta, path=str(shock_path), name="naive_shock", kind="naive", **shock_run),
    ]
    if args.profile:
        jobs.append(dict(base, name="volgraph_profile", kind="volgraph", speed="max", profile=True))
        jobs.append(dict(cluster, name=CLUSTER_ROW + "_profile", profile=True))
    results = {}
    load_before = os.getloadavg()
    for job in jobs:
        print(f"# running {job['name']} …", file=sys.stderr, flush=True)
        if job.get("netns_mbit"):
            from tests.helpers.netns import NetnsUnavailable

            try:
                results[job["name"]] = run_cluster(job)
            except NetnsUnavailable as exc:  # not root here: the row says why instead of a figure
                results[job["name"]] = {"unavailable": str(exc)}
            continue
        results[job["name"]] = run_cluster(job) if job["kind"] == "cluster" else run_child(job)
    return {"path": str(path), "meta": meta, "shock_meta": shock_meta, "epoch_ms": epoch_ms, "paced_speed": paced_speed,
            "fit_interval_ms": load_config().chain.fit_interval_ms, "chain": chain,
            "split": {c: {"path": str(p), "frames": m["frames"], "preamble_frames": m["preamble_frames"]}
                      for c, (p, m) in split.items()},
            "results": results, "loadavg": [round(x, 2) for x in load_before + os.getloadavg()]}
