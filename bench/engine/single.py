"""The one-process child runs (each in a fresh interpreter, started by bench/engine/plan.py):
run_volgraph — the dataflow over one recording at max speed, paced, or through the shock, with
its probes, sink and optional pyinstrument profile — and run_naive — the naive baseline
(bench/naive.py) over the same frames.

Runs inside a child process only (it wraps step classes and tunes the GC of the interpreter it
runs in); the engine's imports stay inside the functions.
"""

from __future__ import annotations

import time

from bench.engine.common import AUDIT_EVERY, now_wall_ms, peak_rss_mb, warm_kernels, warmup_ms
from bench.engine.figures import (flow_figures, kept_levels, newest_fit_ms, patch_rows, pct, shock_figures, shock_vols, solve_counts,
                                  view_latencies)
from bench.engine.probes import Probe, StageTimer, probe_source


def run_volgraph(job: dict) -> dict:
    """One volgraph run over a recording; returns the figures (child process)."""
    from bytewax.testing import run_main

    from connectors.capture.replay import ReplaySource
    from flows.metrics import COUNTERS
    from flows.surface import build_flow, tune_gc
    from tests.helpers.sinks import CallbackSink
    from operators.events import SmileFit, SurfacePatch
    from flows.config import ConfigError, load_config

    meta = job["meta"]
    shock = meta["shocks"][0] if job.get("shock") and meta["shocks"] else None
    audit = "n/a"
    try:
        config = load_config(overrides={"chain": {"audit_every": AUDIT_EVERY, **job.get("chain", {})}})
        audit = AUDIT_EVERY
    except ConfigError:  # an engine without audit mode: the error column says n/a
        config = load_config()
    warm_kernels()
    speed = job["speed"]
    probe = Probe(meta["preamble_frames"], shock)
    probe.speed = 1.0 if speed == "max" else float(speed)
    timer = StageTimer(lambda: (probe,)).install() if shock is not None else None
    # The flow's clock: the workload's exchange clock advancing with the wall clock (scaled
    # by the pacing), so epochs are real 50 ms epochs and nothing looks expired.
    base_wall = now_wall_ms()
    base_ts = meta["first_live_ts_ms"]

    offset = job.get("clock_offset_ms", 0)

    def now_ms() -> int:
        if probe.started and speed != "max":
            return int(probe.first_ts + offset + (now_wall_ms() - probe.start_wall) * probe.speed)
        return int(base_ts + offset + (now_wall_ms() - base_wall) * probe.speed)

    patches: list[tuple[float, object]] = []
    fits = [0]
    # shock runs: the solve counters as each patch arrives, and as the shock entered (the shock
    # row counts the vols solved, stepped and skipped between the two)
    counts_at_patch: list[tuple[float, dict]] = []
    if shock is not None:
        probe.read_counts = lambda: solve_counts(COUNTERS.snapshot())

    def sink(item) -> None:
        if isinstance(item, SurfacePatch):
            patches.append((now_wall_ms(), item))
            if shock is not None and probe.shock_first_wall is not None:
                counts_at_patch.append((patches[-1][0], solve_counts(COUNTERS.snapshot())))
        elif isinstance(item, SmileFit):
            fits[0] += 1

    source = ReplaySource(job["path"], speed=speed,
                          run_seconds=job.get("seconds"), stamp_recv="wall", prefetch=job.get("prefetch", True),
                          preload=job.get("preload", False))
    flow = build_flow(config, probe_source(source, probe), [CallbackSink(sink)], now_ms=now_ms,
                      clock_rate=probe.speed, flow_id="bench_volgraph")
    profiler = None
    if job.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    tune_gc()  # as `volgraph run` does
    run_main(flow)
    end_wall, end_cpu = now_wall_ms(), time.process_time()
    profile_text = None
    if profiler is not None:
        profiler.stop()
        profile_text = profiler.output_text(unicode=True, color=False, show_all=False)
    counters = COUNTERS.snapshot()

    live_frames = probe.offset - probe.live_offset if probe.live_wall is not None else 0
    elapsed_s = (end_wall - probe.live_wall) / 1000.0 if probe.live_wall is not None else float("nan")
    cpu_s = end_cpu - probe.live_cpu if probe.live_cpu is not None else float("nan")

    # processing latency: wall time from the oldest event a patch newly reflects entering the
    # source to the patch reaching the sink (per expiry view; the first view of each expiry
    # is skipped: it reflects the preamble)
    lat_exchange = []
    warm_until = (probe.live_wall or 0.0) + (warmup_ms(meta) if speed != "max" else 0.0)
    lat_oldest, lat_newest = view_latencies(patch_rows(patches), lambda _u, _x: probe, warm_until)
    fit_seen: dict = {}
    for wall_out, patch in patches:
        # emit time − the newest exchange time among the patch's new fits, back in wall ms (a patch
        # without new fits reflects no new book data; its own ts_exchange_ms is the surface's last)
        newest = newest_fit_ms(patch, fit_seen)
        if speed != "max" and patch.ts_emit_ms and newest is not None and (probe.live_wall and wall_out >= warm_until):
            lat_exchange.append((patch.ts_emit_ms - newest) / probe.speed)

    shock_row = None
    if shock is not None and probe.started:
        # the flow clock in wall terms: now_ms() = first_ts + (wall − start_wall) × speed
        shock_row = shock_figures(shock, [probe], patch_rows(patches), kept_levels(shock, config),
                               lambda wall: probe.first_ts + offset + (wall - probe.start_wall) * probe.speed,
                               config.runtime.epoch_ms,
                               {0: timer.spans + [(a, b, "read") for a, b in probe.read_spans]})
        if shock_row is not None:
            shock_row["vols"] = shock_vols(shock_row, probe, counts_at_patch)

    return {
        "system": job["name"],
        **flow_figures(live_frames, elapsed_s, cpu_s, lat_oldest, lat_newest, lat_exchange, counters),
        "fits": int(counters.get("fits", fits[0])), "patches": len(patches),
        "max_err_bp": (counters.get("audit_max_err_bp") if audit != "n/a" else "n/a"),
        "level_max_err_bp": (counters.get("audit_level_max_err_bp", 0.0) if audit != "n/a" else "n/a"),
        "level_depth": config.chain.level_depth, "sizes_contracts": list(config.chain.sizes_contracts),
        "audit_every": audit,
        "peak_rss_mb": peak_rss_mb(),
        "speed": speed,
        "shock": shock_row,
        "profile": profile_text,
        "reached_eof": live_frames + meta["preamble_frames"] >= meta["frames"],
    }


def run_naive(job: dict) -> dict:
    from bench.naive import NaiveEngine
    from connectors.capture.replay import ReplaySource
    from connectors.venues.deribit.parse import parse_frames
    from flows.surface import tune_gc
    from flows.config import load_config

    meta = job["meta"]
    shock = meta["shocks"][0] if job.get("shock") and meta["shocks"] else None
    warm_kernels()
    latencies: list[float] = []
    enter = [0.0]
    patch_walls: list[float] = []

    def on_patch(patch, cause) -> None:
        if cause is not None:
            t = time.perf_counter()
            latencies.append((t - enter[0]) * 1000.0)
            patch_walls.append(t)

    engine_config = load_config(overrides={"chain": job.get("chain", {})})  # level vols: the same as volgraph's
    engine = NaiveEngine(engine_config, on_patch=on_patch)
    # one frame at a time, as BookUpdates: the naive design applies each message as it comes
    src = ReplaySource(job["path"], batch_max=1, stamp_recv="wall", preload=job.get("preload", False),
                       parse=parse_frames)
    part = src.build_part("naive", src.list_parts()[0], None)
    # untimed: reach the starting state (the preamble; for the shock file everything before it)
    start_at = shock["first_frame"] if shock is not None else meta["preamble_frames"]
    while part.offset < start_at:
        for ev in part.next_batch():
            engine.load(ev)
    engine.recompute_all()
    tune_gc()  # the same runtime as volgraph's
    latencies.clear()
    for key in engine.counters:
        engine.counters[key] = 0
    stop_at = (shock["first_frame"] + shock["n_frames"]) if shock is not None else meta["frames"]
    deadline = time.perf_counter() + job["seconds"] if job.get("seconds") and shock is None else float("inf")
    t0, cpu0 = time.perf_counter(), time.process_time()
    n = 0
    while part.offset < stop_at and time.perf_counter() < deadline:
        enter[0] = time.perf_counter()
        try:
            batch = part.next_batch()
        except StopIteration:
            break
        for ev in batch:
            engine.handle(ev)
        n += 1
    t1, cpu1 = time.perf_counter(), time.process_time()
    part.close()
    shock_row = None
    if shock is not None:
        shock_row = {"shock_levels": shock["levels"], "shock_books": shock["n_books"],
                     "shock_levels_kept": kept_levels(shock, engine_config),
                     "expiries_absorbed": len(engine.by_underlying.get(shock["underlying"], ())),
                     "expiries": len(engine.by_underlying.get(shock["underlying"], ())),
                     "absorb_ms": (t1 - t0) * 1000.0, "first_expiry_ms": None, "ingest_ms": (t1 - t0) * 1000.0}
    c = engine.counters
    return {
        "system": job["name"], "messages": n, "events_in": c["messages_in"], "seconds": t1 - t0,
        "msgs_per_s": n / (t1 - t0) if t1 > t0 else None,
        "cpu_s_per_M_msgs": (cpu1 - cpu0) / n * 1e6 if n else None,
        "msgs_per_cpu_s": n / (cpu1 - cpu0) if n and cpu1 > cpu0 else None,
        "latency_p50_ms": pct(latencies, 50), "latency_p99_ms": pct(latencies, 99),
        "latency_max_ms": pct(latencies, 100),
        "newest_latency_p50_ms": pct(latencies, 50), "newest_latency_p99_ms": pct(latencies, 99),
        "exchange_latency_p50_ms": None, "exchange_latency_p99_ms": None, "exchange_latency_max_ms": None,
        "iv_solves": c["iv_solves"], "iv_full": c["iv_solves"], "iv_taylor": 0, "iv_skipped": 0,
        "fits": c["fits"], "patches": c["patches"], "max_err_bp": 0.0, "audit_every": "exact",
        "peak_rss_mb": peak_rss_mb(), "speed": "max", "shock": shock_row, "profile": None,
        "reached_eof": part.offset >= meta["frames"],
    }
