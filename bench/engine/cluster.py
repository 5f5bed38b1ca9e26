"""volgraph on a cluster: run_cluster (parent side) starts `processes` bytewax processes on
loopback, as a StatefulSet would, each a child running run_cluster_proc over its share of the
per-(currency, worker slot) recordings; combine_cluster makes their raw observations one row.

The only part that starts cluster processes; the figures themselves are bench/engine/figures.py.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.engine.common import (AUDIT_EVERY, REPO, START_AFTER_READY_MS, WARMUP_S, child_command, child_result,
                                 now_wall_ms, peak_rss_mb, warm_kernels)
from bench.engine.figures import flow_figures, kept_levels, newest_fit_ms, shock_figures, view_latencies
from bench.engine.probes import Probe, StageTimer, probe_source
from bench.engine.samplers import CpuSampler, SampledSink, StackSampler, cpu_at


def flow_rate(job: dict) -> float:
    """Flow-clock ms per wall ms of a cluster job (paced: its speed; max speed: the wall rate)."""
    speed = job.get("speed", "max")
    return 1.0 if speed == "max" else float(speed)


def run_cluster_proc(job: dict) -> dict:
    """One process of a bytewax cluster (`bytewax.testing.cluster_main`, 1 worker) running the
    flow over the per-currency recordings; returns its raw observations — per-partition probes,
    CPU samples, patches — for the parent to combine with the other processes' (child process)."""
    from bytewax.testing import cluster_main

    from connectors.capture.replay import ReplaySource
    from flows.metrics import COUNTERS
    from flows.surface import build_flow, tune_gc
    from tests.helpers.sinks import CallbackSink
    from operators.events import SmileFit, SurfacePatch
    from flows.config import load_config

    config = load_config(overrides={"chain": {"audit_every": AUDIT_EVERY, **job.get("chain", {})}})
    warm_kernels()
    parts = job["parts"]  # [{"path", "currency", "meta"}]
    probes: dict[str, Probe] = {}
    timer = StageTimer(probes.values).install() if job.get("shock") else None

    def probe_for(name: str) -> Probe:
        if name not in probes:
            meta = next(p["meta"] for p in parts if Path(p["path"]).name == name)
            shock = meta["shocks"][0] if job.get("shock") and meta["shocks"] else None
            probes[name] = Probe(meta["preamble_frames"], shock)
        return probes[name]

    # one flow clock for the whole cluster: the workload's exchange clock from one wall time, so
    # both processes agree on epochs and expiries (max speed: the parent's launch; paced: the
    # replay's clock, every partition pacing from the start the processes agree on, all_ready)
    speed = job.get("speed", "max")
    rate = flow_rate(job)
    base_wall, base_ts = job["base_wall_ms"], job["base_ts_ms"]

    def now_ms() -> int:
        return int(base_ts + (now_wall_ms() - base_wall) * rate)

    patches: list = []
    exchange_lat: list = []  # paced: (wall out, newest exchange ts → patch emit, wall ms)
    fit_seen: dict = {}  # newest_fit_ms's memory
    fits = [0]

    def sink(item) -> None:
        if isinstance(item, SurfacePatch):
            wall = now_wall_ms()
            patches.append((wall, item.underlying, [(v.expiry_ms, v.fit.ts_exchange_ms) for v in item.expiries]))
            newest = newest_fit_ms(item, fit_seen)
            if speed != "max" and item.ts_emit_ms and newest is not None:
                exchange_lat.append((wall, (item.ts_emit_ms - newest) / rate))
        elif isinstance(item, SmileFit):
            fits[0] += 1

    if job.get("ready_dir"):  # paced: pacing starts once every process is ready
        base_wall = all_ready(Path(job["ready_dir"]), job["proc_id"], job["processes"])
    source = ReplaySource([p["path"] for p in parts], speed=speed,
                          run_seconds=job.get("seconds"), stamp_recv="wall", prefetch=job.get("prefetch", True),
                          preload=job.get("preload", False), start_wall_ms=base_wall if speed != "max" else None)
    # cluster_main runs the worker on a thread of its own: the sampler finds it from the sink
    stacks = StackSampler() if job.get("profile") else None
    sinks = [SampledSink(sink, stacks) if stacks is not None else CallbackSink(sink)]
    flow = build_flow(config, probe_source(source, probe_for), sinks, now_ms=now_ms, clock_rate=rate,
                      flow_id="bench_volgraph_cluster")
    sampler = CpuSampler()
    tune_gc()
    cluster_main(flow, job["addresses"], job["proc_id"], worker_count_per_proc=job.get("workers", 1))
    end_wall = now_wall_ms()
    samples = sampler.stop()
    profile_text = stacks.report() if stacks is not None else None
    return {"proc_id": job["proc_id"], "base_wall_ms": base_wall, "end_wall": end_wall, "cpu_samples": samples,
            "epoch_ms": config.runtime.epoch_ms,
            "kept_levels": kept_levels(job["shock_meta"]["shocks"][0], config) if job.get("shock") else None,
            "probes": {name: pr.to_json() for name, pr in probes.items()}, "patches": patches,
            "step_spans": timer.spans if timer is not None else None,
            "exchange_latency": exchange_lat,
            "fits_seen": fits[0], "counters": COUNTERS.snapshot(), "peak_rss_mb": peak_rss_mb(),
            "profile": profile_text}


def all_ready(ready_dir: Path, proc_id: int, processes: int, timeout_s: float = 300.0) -> float:
    """A barrier for a paced cluster: this process says it is ready (imports done, kernels
    compiled) and waits for the others; returns the wall ms they all start pacing from, the
    same in each (the last one ready, plus START_AFTER_READY_MS). Before this, pacing started a
    fixed 8 s after launch: idle time on a quick box, too little on a slow one."""
    mine = ready_dir / f"{proc_id}.ready"
    tmp = mine.with_suffix(".tmp")
    tmp.write_text(repr(now_wall_ms()))
    tmp.replace(mine)  # whole or absent for the others
    deadline = time.monotonic() + timeout_s
    while True:
        found = sorted(ready_dir.glob("*.ready"))
        if len(found) >= processes:
            return max(float(f.read_text()) for f in found) + START_AFTER_READY_MS
        if time.monotonic() > deadline:
            raise RuntimeError(f"cluster process {proc_id}: {len(found)} of {processes} processes ready after "
                               f"{timeout_s:g} s in {ready_dir}; a peer failed to start (its stderr says why)")
        time.sleep(0.005)  # a few polls: a peer's imports take seconds


def free_ports(n: int) -> list[int]:
    """n ephemeral loopback ports, free when asked (bound together so they differ)."""
    import socket

    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run_cluster(job: dict) -> dict:
    """Runs `job["processes"]` cluster processes on loopback, as a StatefulSet would (one pod
    per process id, all given every address), and combines what they saw into one row:
    frames over BOTH processes in the window where every partition is live, CPU of all
    processes over that window, latency per expiry view against the source partition of its
    underlying, peak RSS per process (parent side).

    With job["netns_mbit"] the (2) processes run in two network namespaces joined by a veth
    pair shaped to that rate (tests/helpers/netns.py, needs root), with job["netns_delay_ms"]
    more each way through a relay in each namespace, and the row gets the link's egress
    counters per side ("link")."""
    n = job["processes"]
    if not job.get("netns_mbit"):
        addresses = [f"127.0.0.1:{p}" for p in free_ports(n)]
        return _run_cluster(job, [addresses] * n, [[]] * n)
    from tests.helpers.netns import delayed_addresses, link

    if n != 2:
        raise ValueError(f"bench cluster {job['name']}: a netns link joins exactly 2 processes, not {n}")
    delay_ms = job.get("netns_delay_ms") or 0.0
    with link(job["netns_mbit"], tag="b") as ln:
        prefixes = [ln.prefix(0), ln.prefix(1)]
        if delay_ms:
            with delayed_addresses(ln, 2101, delay_ms) as per_proc:
                row = _run_cluster(job, per_proc, prefixes)
        else:
            row = _run_cluster(job, [[f"{a}:2101" for a in ln.addr]] * 2, prefixes)
        row["link"] = {"rate_mbit": ln.rate_mbit, "delay_ms": delay_ms, "sent": [ln.sent(0), ln.sent(1)]}
    return row


def _run_cluster(job: dict, addresses: list[list[str]], prefixes: list[list[str]]) -> dict:
    """The cluster's processes, process i given addresses[i] (-a) and started behind prefixes[i]."""
    n = job["processes"]
    base = dict(job, base_wall_ms=now_wall_ms() + 0.0)
    ready = None
    if job.get("speed", "max") != "max":
        # paced: the processes pace from one start once all are ready (imports, kernel warm-up:
        # all_ready), the flow clock being the recording's from its first frame
        from connectors.capture.replay import read_frames

        first_ts = min(next(iter(read_frames(p["path"])))[0] for p in job["parts"])
        ready = tempfile.TemporaryDirectory(prefix="bench-ready-")
        base.update(base_ts_ms=first_ts + job.get("clock_offset_ms", 0), ready_dir=ready.name)
    try:
        outs = _start_and_collect(job, base, n, addresses, prefixes)
    finally:
        if ready is not None:
            ready.cleanup()
    base["base_wall_ms"] = min(o["base_wall_ms"] for o in outs)  # paced: the start they agreed on
    return combine_cluster(base, outs)  # with the flow clock the processes shared


def _start_and_collect(job: dict, base: dict, n: int, addresses: list[list[str]], prefixes: list[list[str]]
                       ) -> list[dict]:
    procs = []
    for i in range(n):
        child = dict(base, proc_id=i, kind="cluster_proc", addresses=addresses[i])
        procs.append(subprocess.Popen(prefixes[i] + child_command(child), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=str(REPO)))
    outs, failed = [], []
    for i, proc in enumerate(procs):
        try:
            stdout, stderr = proc.communicate(timeout=(job.get("seconds") or 60) * 4 + 300)
        except subprocess.TimeoutExpired:
            for other in procs:  # a peer died and this one waits for it forever: end them all
                if other.poll() is None:
                    other.kill()
            stdout, stderr = proc.communicate()
        res = child_result(stdout)
        if res is None:
            failed.append(f"--- process {i} (exit {proc.returncode}):\n{stderr[-2500:]}")
        else:
            outs.append(res)
    if failed:
        raise RuntimeError(f"bench cluster {job['name']}: {len(failed)} of {n} processes failed\n" + "\n".join(failed))
    return outs


def combine_cluster(job: dict, outs: list[dict]) -> dict:
    probes = {name: Probe.from_json(d) for o in outs for name, d in o["probes"].items()}
    placement = {o["proc_id"]: sorted(o["probes"]) for o in outs}
    probe_for = expiry_probes(job["parts"], probes)
    live = [pr.live_wall for pr in probes.values()]
    end_wall = max(o["end_wall"] for o in outs)
    messages, elapsed_s, cpu_s, per_proc_cpu = 0, float("nan"), float("nan"), []
    if probes and all(w is not None for w in live):
        # the window: from the moment every partition is in its live stream (BTC's preamble is
        # twice ETH's) to the end of the last process
        w0 = max(live)
        messages = sum(pr.offset - max(pr.offset_at(w0), pr.preamble_frames) for pr in probes.values())
        elapsed_s = (end_wall - w0) / 1000.0
        per_proc_cpu = [cpu_at(o["cpu_samples"], end_wall) - cpu_at(o["cpu_samples"], w0) for o in outs]
        cpu_s = sum(per_proc_cpu)
    rows = [r for o in outs for r in o["patches"]]
    paced = job.get("speed", "max") != "max"
    warm_until = max(live) if probes and None not in live else 0.0
    if paced and elapsed_s == elapsed_s:  # leave the first seconds out (the preamble's backlog)
        warm_until += min(WARMUP_S * 1000.0, 0.2 * elapsed_s * 1000.0)
    lat_oldest, lat_newest = view_latencies(rows, probe_for, warm_until)
    lat_exchange = [lat for o in outs for wall, lat in o.get("exchange_latency", ()) if wall >= warm_until]
    counters: dict[str, float] = {}
    for o in outs:
        for k, v in o["counters"].items():
            counters[k] = max(counters.get(k, v), v) if k == "audit_max_err_bp" else counters.get(k, 0) + v
    metas = {Path(p["path"]).name: p["meta"] for p in job["parts"]}
    return {
        "system": job["name"], "processes": len(outs), "workers_per_process": job.get("workers", 1),
        "placement": placement,
        **flow_figures(messages, elapsed_s, cpu_s, lat_oldest, lat_newest, lat_exchange, counters),
        "cpu_s_per_proc": per_proc_cpu,
        "fits": int(counters.get("fits", sum(o["fits_seen"] for o in outs))), "patches": len(rows),
        "max_err_bp": counters.get("audit_max_err_bp", "n/a"), "audit_every": AUDIT_EVERY,
        "peak_rss_mb": max(o["peak_rss_mb"] for o in outs),
        "peak_rss_mb_per_proc": [o["peak_rss_mb"] for o in sorted(outs, key=lambda o: o["proc_id"])],
        "speed": job.get("speed", "max"),
        "shock": (shock_figures(job["shock_meta"]["shocks"][0], list(probes.values()), rows, outs[0]["kept_levels"],
                             lambda wall: job["base_ts_ms"] + (wall - job["base_wall_ms"]) * flow_rate(job),
                             outs[0]["epoch_ms"],
                             {o["proc_id"]: [tuple(x) for x in o["step_spans"] or ()]
                              + [(a, b, "read") for pr in o["probes"].values() for a, b in pr.get("read_spans", ())]
                              for o in outs})
                  if job.get("shock") else None),
        "profile": {o["proc_id"]: o["profile"] for o in outs if o.get("profile")} or None,
        "reached_eof": bool(probes) and all(pr.offset >= metas[name]["frames"] for name, pr in probes.items()),
    }


def expiry_probes(parts: list[dict], probes: dict):
    """probe_for(underlying, expiry_ms): the probe of the partition that carries that expiry's
    events — its currency's, or with a split per worker slot, the slot the split placed it on
    (bench/workload.py split_recording writes each file's placement in its meta)."""
    by_slot = {(p["meta"].get("currency", p["currency"]), p["meta"].get("slot")): Path(p["path"]).name for p in parts}
    placed = {(p["meta"].get("currency", p["currency"]), int(e)): k
              for p in parts for e, k in (p["meta"].get("placement") or {}).items()}

    def probe_for(underlying: str, expiry_ms: int):
        return probes.get(by_slot.get((underlying, placed.get((underlying, expiry_ms))), ""))

    return probe_for
