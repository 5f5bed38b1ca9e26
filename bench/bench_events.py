"""Benchmark: market events stored for replay (issue #15 part 4; connectors/postgres/market_events.py).

In one run, side by side, on the seed-scale workload (bench/workload.py: BTC ~4,000 and ETH
~2,000 options, recorded Deribit frames through the real parser):

  1. the sustained insert rate of market_events (events/s and rows/s via COPY into the
     day-partitioned table, the writer's own code path: rows built, COPY, commit), with rows as
     the flow makes them (a source batch of a surface, cut at ROW_EVENTS = 500 events: at full
     speed nearly all rows are full) and, for comparison, rows of ~10 events (one expiry's part
     of a source batch, the design until 2026-12-05), beside COPY of the same frames raw, a row
     each, into a plain (ts, ord, frame) table: the "store raw frames instead?" question, with
     the bytes per event each costs on the wire (the stored body: msgpack since 2026-12-06,
     007_market_events_storage.sql; the frame's text for raw frames) and on disk;
  2. the dataflow's throughput (msg/s, one process at max speed, the recorded frames replayed)
     with event storage off and on (graph.toml [sinks.postgres] market_events), interleaved
     off, on, off, on … (--repeat rounds), each in a fresh interpreter; with it on, the writer's
     backlog (rows accepted, not yet in PostgreSQL), sampled every 50 ms, the rows and events
     stored by the end (the run ends after the sinks' close, so the on-rows include the last
     rows' drain). The cost is the median of the rounds' paired costs (1 - on / off of one
     round: the machine drifts by up to a third in an hour, a round's two runs are a minute
     apart) beside the cost of the medians;
  3. the fit/view writer (connectors/postgres/writer.py PostgresWriter, the one each partition of
     the flow's PostgresSink owns, with graph.toml's [sinks.postgres] batch_rows / flush_ms): the
     SmileFit and SurfacePatch items one flow run over the workload hands the sink (captured in a
     fresh interpreter with a sink of the same `consumes`), pushed through a new writer twice, each
     under its own run: all at once (burst: as fast as submit() takes them, so the rows/s the
     writer sustains and the time until all are durable) and at the pace the flow emitted them
     (paced: the backlog the writer keeps behind a flow at max speed; here the flow is not running,
     so the writer has the cores to itself). Rows/s per table (smile_fits, expiry_views,
     expiry_nodes, instrument_nodes, underlying_nodes, surface_state, …: every batch writes all of
     them in one transaction, so a table's rate is its share of one stream) and in total; the
     backlog in items (writer.pending(), sampled every 5 ms);
  4. vol at size stored (graph.toml [sinks.postgres] depth_vols, issue #13; --depth-frames): the items
     of one flow run with level vols on ([chain] as bench/engine/common.py LEVELS_ON), their ladders
     alone written batch by batch as the writer does (batch_rows items a transaction) in the layout
     until 2026-12-06 (008: depth_vols, a row per book, text COPY; kept here as the baseline) and the
     writer's (009: depth_views, a row per view, binary COPY), alternating (--depth-rounds), each
     round under its own run: rows, books, rows/s, books/s, bytes on disk (table, index and TOAST);
     then all the items through one PostgresWriter with depth_vols on, burst and paced as in 3.

PostgreSQL is a real server (pgserver) in a temporary folder. Prints a table with what each row
does, the machine, the date and the command; asserts nothing (the goal, storage costing at most
15 % of the flow's throughput with a bounded backlog, is read off the table).

    .venv/bin/python bench/bench_events.py [--frames 400000] [--repeat 5] [--fitview-frames 400000]
        [--depth-frames 400000] [--depth-rounds 2] [--only-depth]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402

RUN = dict(run_id="bench-events", config_hash="bench", code_version="bench", methods={"svi": "bench"},
           started_ms=1, source="file", detail="bench/bench_events.py")
GOAL = "storing every market event costs ≤ 15 % of the flow's throughput; the backlog stays bounded"


def _events(path: Path, limit: int):
    """(events, frame bytes, frames) of the recording's first frames, through the real parser."""
    from connectors.capture.replay import DEFAULT_MAX_FRAME_BYTES, read_frames
    from connectors.postgres.market_events import MARKET_EVENTS
    from connectors.venues.deribit import parse_frame

    events, frame_bytes, frames = [], 0, []
    for ts, frame in read_frames(path):
        evs = [e for e in parse_frame(frame, ts, DEFAULT_MAX_FRAME_BYTES) if type(e) in MARKET_EVENTS]
        if not evs or len(frame) > 1 << 20:  # discovery responses: not the steady state
            continue
        events.extend(evs)
        frame_bytes += len(frame.encode())
        frames.append((ts, frame))
        if len(events) >= limit:
            break
    return events, frame_bytes, frames


def insert_rates(dsn: str, path: Path, n_events: int) -> list[dict]:
    from connectors.postgres import connect, migrate, register_run
    from connectors.postgres.market_events import MarketBatch, MarketPlan, write_market_plan
    from connectors.postgres.market_sink import ROW_EVENTS
    from connectors.postgres.runs import RunInfo
    from connectors.postgres.market_events import encode_row

    events, frame_bytes, frames = _events(path, n_events)
    rows = []
    with connect(dsn) as conn:
        migrate(conn)
        register_run(conn, RunInfo(**RUN))
        conn.commit()
        # (events a row, rows a COPY): rows as the flow makes them now, ~25,000 events a COPY (what the writer
        # finds after its 200 ms flush_ms at full speed), and rows of ~10 events as until 2026-12-05
        for size, batch, what in ((ROW_EVENTS, 50, f"rows of {ROW_EVENTS} events (the flow's), 50 a COPY"),
                                  (10, 500, "rows of 10 events (until 2026-12-05), 500 a COPY")):
            items = [MarketBatch("deribit", "BTC", 1, i, events[i:i + size]) for i in range(0, len(events), size)]
            conn.execute("TRUNCATE market_events")
            conn.commit()
            known: set[int] = set()
            t0 = time.perf_counter()
            for i in range(0, len(items), batch):
                plan = MarketPlan(RUN["run_id"])
                for item in items[i:i + batch]:
                    plan.add(item)
                write_market_plan(conn, plan, known)
            secs = time.perf_counter() - t0
            size_b = conn.execute("SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                                  " WHERE inhparent = 'market_events'::regclass").fetchone()[0]
            rows.append(dict(what=f"market_events: {what}", events=len(events), rows=len(items), secs=secs,
                             rate=len(events) / secs,
                             wire_b=sum(len(encode_row("deribit", "BTC", 1, 0, it.events).body) for it in items) / len(events),
                             disk_b=size_b / len(events)))
        conn.execute("CREATE TABLE raw_frames (ts_ms bigint NOT NULL, ord bigint NOT NULL, frame text NOT NULL,"
                     " PRIMARY KEY (ts_ms, ord))")
        conn.commit()
        t0 = time.perf_counter()
        for i in range(0, len(frames), 5000):
            with conn.transaction(), conn.cursor() as cur, cur.copy("COPY raw_frames FROM STDIN") as copy:
                for j, (ts, frame) in enumerate(frames[i:i + 5000]):
                    copy.write_row((ts, i + j, frame))
        secs = time.perf_counter() - t0
        size = conn.execute("SELECT pg_total_relation_size('raw_frames')").fetchone()[0]
        rows.append(dict(what="raw frames instead: COPY of 5,000 rows (1 frame each) a batch", rows=len(frames),
                         events=len(events), secs=secs, rate=len(events) / secs, wire_b=frame_bytes / len(events),
                         disk_b=size / len(events)))
    return rows


def child(job: dict) -> dict:
    """One flow run over the recording at max speed, storage on or off (a fresh interpreter)."""
    from bytewax.testing import run_main

    from bench.engine.common import warm_kernels
    from connectors.capture.replay import ReplaySource
    from connectors.postgres.market_sink import MarketEventSink
    from connectors.postgres.runs import RunInfo
    from flows.config import load_config
    from flows.metrics import COUNTERS
    from flows.surface import build_flow, tune_gc
    from tests.helpers.sinks import CallbackSink

    config = load_config()
    pg = config.sinks.postgres
    warm_kernels()
    meta = job["meta"]
    sinks = [CallbackSink(lambda item: None)]
    store = None
    if job["store"]:
        store = MarketEventSink(job["dsn"], run=RunInfo(**{**RUN, "run_id": job["run_id"]}), partitions=1,
                                spill_dir=job["spill"], flush_ms=pg.flush_ms, batch_rows=pg.market_batch_items,
                                handoff_timeout_s=pg.handoff_timeout_s, retention_days=0)
        sinks.append(store)
    base_ts, base_wall = meta["first_live_ts_ms"], time.time() * 1000
    flow = build_flow(config, ReplaySource(job["path"], speed="max", stamp_recv="recorded"), sinks,
                      now_ms=lambda: int(base_ts + time.time() * 1000 - base_wall), flow_id="bench_events")
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            if store is not None:
                peak[0] = max(peak[0], sum(w.pending() for w in store.writers))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tune_gc()
    t0, c0 = time.perf_counter(), time.process_time()
    run_main(flow)  # ends after the sinks' close(): the writers' last rows are in (or spilled)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    done.set()
    sampler.join()
    msgs = int(COUNTERS.snapshot().get("messages_in", 0))
    out = dict(store=job["store"], msgs=msgs, secs=secs, rate=msgs / secs, cpu=cpu, peak_backlog=peak[0])
    if store is not None:
        stats = [w.stats() for w in store.writers]
        out.update(stored=sum(s["rows_written"].get("market_events", 0) for s in stats),
                   rows=sum(s["written_events"] for s in stats),  # the writer's items: a row each
                   pending=sum(s["pending"] for s in stats), spilled=sum(s["spilled"] for s in stats),
                   rejected=sum(s["rejected"] for s in stats))
    return out


def _capture(job: dict, config) -> tuple[list, list[float], float]:
    """The SmileFit and SurfacePatch items one flow run over the workload hands the PostgreSQL sink
    (a sink of the same `consumes`), their emission offsets (s) and the run's time (s)."""
    from bytewax.testing import run_main

    from bench.engine.common import warm_kernels
    from connectors.capture.replay import ReplaySource
    from connectors.postgres.sink import PostgresSink
    from flows.surface import build_flow
    from tests.helpers.sinks import CallbackSink

    warm_kernels()
    meta, items, stamps = job["meta"], [], []

    def take(item):
        items.append(item)
        stamps.append(time.perf_counter())

    base_ts, base_wall = meta["first_live_ts_ms"], time.time() * 1000
    flow = build_flow(config, ReplaySource(job["path"], speed="max", stamp_recv="recorded",
                                           max_frames=job["frames"] or None),
                      [CallbackSink(take, consumes=PostgresSink.consumes)],
                      now_ms=lambda: int(base_ts + time.time() * 1000 - base_wall), flow_id="bench_fitview")
    t0 = time.perf_counter()
    run_main(flow)
    flow_s = time.perf_counter() - t0
    if len(items) < 2:
        raise RuntimeError(f"the flow emitted {len(items)} fit/view items: give more frames")
    return items, [t - t0 for t in stamps], flow_s


def _through_writer(job: dict, pg, items: list, offsets: list[float], mode: str, run_id: str) -> dict:
    """`items` through a new PostgresWriter under run `run_id` with graph.toml's batch_rows / flush_ms:
    burst (all submitted at once) or paced (at their emission offsets); the rows it wrote per table."""
    from connectors.postgres.runs import RunInfo
    from connectors.postgres.writer import PostgresWriter

    writer = PostgresWriter(job["dsn"], name=run_id, run=RunInfo(**{**RUN, "run_id": run_id}),
                            flush_ms=pg.flush_ms, batch_rows=pg.batch_rows, spill_dir=job["spill"])
    # the first item alone: the writer's connect (migrate check, run registered, stage tables) is not timed
    writer.submit(items[0])
    if not writer.durable(30):
        raise RuntimeError(f"writer {writer.name}: first item not stored in 30 s: {writer.stats()}")
    before = writer.stats()
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], writer.pending())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    if mode == "burst":
        for item in items[1:]:
            writer.submit(item)
    else:
        for item, off in zip(items[1:], offsets[1:]):
            wait = t0 + off - offsets[1] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            writer.submit(item)
            peak[0] = max(peak[0], writer.pending())
    submitted_s = time.perf_counter() - t0
    durable = writer.durable(60)
    secs = time.perf_counter() - t0
    done.set()
    sampler.join()
    after = writer.stats()
    writer.close(10)
    rows = {t: n - before["rows_written"].get(t, 0) for t, n in after["rows_written"].items()}
    return dict(mode=mode, items=len(items) - 1, submitted_s=submitted_s, secs=secs, durable=durable, rows=rows,
                peak=peak[0], batches=after["batches"] - before["batches"], left=after["pending"],
                spilled=after["spilled"], rejected=after["rejected"])


def fitview(job: dict) -> dict:
    """Fit/view rows through the real PostgresWriter (a fresh interpreter): capture the SmileFit and
    SurfacePatch items of one flow run over the workload, then write them burst and paced."""
    from flows.config import load_config
    from operators.events import SmileFit

    config = load_config()
    pg = config.sinks.postgres
    items, offsets, flow_s = _capture(job, config)
    out = dict(flow_s=flow_s, fits=sum(isinstance(i, SmileFit) for i in items), patches=0,
               views=sum(len(getattr(i, "expiries", ())) for i in items), batch_rows=pg.batch_rows,
               flush_ms=pg.flush_ms, modes=[])
    out["patches"] = len(items) - out["fits"]
    for mode in ("burst", "paced"):
        out["modes"].append(_through_writer(job, pg, items, offsets, mode, f"bench-fitview-{mode}"))
    return out


def print_fitview(r: dict) -> None:
    burst, paced = r["modes"]
    print(f"\n# fit/view writer: the {r['fits']:,} SmileFit + {r['patches']:,} SurfacePatch items ({r['views']:,} expiry "
          f"views) one flow run over the workload hands the PostgreSQL sink (emitted in {r['flow_s']:.2f} s at max "
          f"speed), through one PostgresWriter (graph.toml batch_rows={r['batch_rows']}, flush_ms={r['flush_ms']:g}), "
          f"each mode under its own run; every batch writes all tables in one transaction (a table's rows/s is its "
          f"share of the stream)")
    print(f"{'fit/view writer (what the row does)':<84} {'items':>6} {'rows':>8} {'s':>6} {'rows/s':>9} "
          f"{'peak backlog items':>18} {'batches':>7} {'left':>4}")
    for m in (burst, paced):
        what = ("burst: all items submitted at once; s = until all are durable" if m["mode"] == "burst" else
                f"paced: submitted as the flow emitted them ({m['submitted_s']:.2f} s); s = until all are durable")
        total = sum(m["rows"].values())
        print(f"{what:<84} {m['items']:>6,} {total:>8,} {m['secs']:>6.2f} {total / m['secs']:>9,.0f} "
              f"{m['peak']:>18,} {m['batches']:>7,} {m['left']:>4}", flush=True)
        for table, n in m["rows"].items():
            print(f"{'  ' + m['mode'] + ': ' + table + ' rows (inserted or updated)':<84} {'':>6} {n:>8,} {'':>6} "
                  f"{n / m['secs']:>9,.0f}")
        if m["spilled"] or m["rejected"] or not m["durable"]:
            print(f"  {m['mode']}: spilled {m['spilled']:,}, rejected {m['rejected']:,}, durable {m['durable']}")
    print(f"fit/view rows: the writer sustains {sum(burst['rows'].values()) / burst['secs']:,.0f} rows/s "
          f"({burst['items'] / burst['secs']:,.0f} items/s; all {burst['items']:,} durable {burst['secs']:.2f} s after "
          f"the first submit); behind the flow at max speed its backlog peaks at {paced['peak']:,} items and all are "
          f"durable {paced['secs'] - paced['submitted_s']:.2f} s after the last submit", flush=True)


# Vol at size as 008_depth_vols.sql stored it, a row per book (the baseline; rows.py writes depth_views
# since 009): the rows of one view's ladders and that table's ON CONFLICT, as rows.py had them.
DEPTH_VOLS_008 = dict(key=6, conflict="DO UPDATE SET " + ", ".join(
    f"{c} = EXCLUDED.{c}" for c in ("epoch", "book_venue", "strike", "option_type", "contract_size", "stale",
                                    "level_depth", "sizes_contracts", "bid_px", "bid_size_contracts", "bid_iv",
                                    "ask_px", "ask_size_contracts", "ask_iv", "bid_exec_px", "bid_exec_iv",
                                    "ask_exec_px", "ask_exec_iv")))


def _depth_vols_rows_008(run: str, batch: list) -> list[tuple]:
    """A batch's depth_vols rows as 008's writer made them: one per book per fit time (the last write
    of a key in the batch stands)."""
    from connectors.postgres.rows import DEPTH_ARRAYS
    from operators.events import SurfacePatch

    rows: dict[tuple, tuple] = {}
    for ev in batch:
        if type(ev) is not SurfacePatch:
            continue
        for view in ev.expiries:
            lad = view.ladders
            if lad is None:
                continue
            ts, sizes, arrays = view.fit.ts_exchange_ms, list(lad.sizes_contracts), [getattr(lad, a) for a in DEPTH_ARRAYS]
            for i, name in enumerate(lad.instrument):
                row = (run, ev.venue, ev.underlying, view.expiry_ms, name, ts, ev.epoch, lad.venue[i], lad.strike[i],
                       lad.option_type[i], lad.contract_size[i], lad.stale[i], lad.level_depth, sizes,
                       *([None if v != v else v for v in a[i].tolist()] for a in arrays))  # NaN: NULL, as 008 stored it
                rows[row[:6]] = row
    return list(rows.values())


def _depth_views_rows(run: str, batch: list) -> list[tuple]:
    """A batch's depth_views rows: what connectors/postgres/rows.py BatchPlan plans for them (a view's
    ladders merged by instrument if sent twice in the batch), without the other tables' rows."""
    from connectors.postgres.rows import depth_view_row
    from operators.events import SurfacePatch
    from operators.merge import merge_ladders

    views: dict[tuple, object] = {}
    for ev in batch:
        if type(ev) is not SurfacePatch:
            continue
        for v in ev.expiries:
            if v.ladders is not None and v.ladders.instrument:
                key = (ev.venue, ev.underlying, v.expiry_ms, v.fit.ts_exchange_ms, ev.epoch)
                views[key] = merge_ladders(views.get(key), v.ladders)
    return [(run, *key, *depth_view_row(lad)) for key, lad in views.items()]


def depth(job: dict) -> dict:
    """Vol at size (graph.toml [sinks.postgres] depth_vols) through PostgreSQL, in a fresh interpreter:
    the items of one flow run with level vols on (bench/engine/common.py LEVELS_ON), their ladders
    written batch by batch (graph.toml batch_rows items a transaction: staged COPY, INSERT ... ON
    CONFLICT, as rows.write_plan) in 008's layout (depth_vols, a row per book) and 009's (depth_views,
    a row per view), alternating, each round under its own run; then all items through the real
    PostgresWriter with depth_vols on (009), burst and paced."""
    from bench.engine.common import LEVELS_ON
    from connectors.postgres import connect, migrate, register_run
    from connectors.postgres.rows import DEPTH_COLS, TABLES, prepare_stage, stage_rows
    from connectors.postgres.runs import RunInfo
    from flows.config import load_config
    from operators.events import SmileFit, SurfacePatch

    config = load_config(overrides={"chain": dict(LEVELS_ON), "sinks": {"postgres": {"depth_vols": True}}})
    pg = config.sinks.postgres
    items, offsets, flow_s = _capture(job, config)
    carrying = [v.ladders for p in items if type(p) is SurfacePatch for v in p.expiries
                if v.ladders is not None and v.ladders.instrument]
    out = dict(flow_s=flow_s, fits=sum(isinstance(i, SmileFit) for i in items), patches=0, views=len(carrying),
               books=sum(len(lad.instrument) for lad in carrying), chain=dict(LEVELS_ON), batch_rows=pg.batch_rows,
               flush_ms=pg.flush_ms, layouts=[], modes=[])
    out["patches"] = len(items) - out["fits"]
    batches = [items[i:i + pg.batch_rows] for i in range(0, len(items), pg.batch_rows)]
    new = TABLES["depth_views"]
    layouts = (("008", "depth_vols", DEPTH_COLS, DEPTH_VOLS_008, _depth_vols_rows_008),
               ("009", "depth_views", new["cols"], new, _depth_views_rows))
    with connect(job["dsn"]) as conn:
        migrate(conn)
        prepare_stage(conn)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS stage_depth_vols (LIKE depth_vols) ON COMMIT DELETE ROWS")
        conn.commit()
        for r in range(job.get("rounds", 2)):
            for layout, table, cols, spec, build in layouts:
                run = f"bench-depth-{layout}-r{r + 1}"
                register_run(conn, RunInfo(**{**RUN, "run_id": run}))
                conn.commit()
                size0 = conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
                conn.commit()  # each batch's transaction below a real one: the stage table empties at its commit
                names, key = ", ".join(cols), ", ".join(cols[:spec["key"]])
                n = 0
                t0 = time.perf_counter()
                for batch in batches:
                    rows = build(run, batch)
                    if not rows:
                        continue
                    with conn.transaction(), conn.cursor() as cur:
                        if layout == "009":
                            stage_rows(conn, table, rows)  # the writer's COPY (binary)
                        else:  # 008's: text
                            with cur.copy(f"COPY stage_{table} ({names}) FROM STDIN") as copy:
                                for row in rows:
                                    copy.write_row(row)
                        cur.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM stage_{table}"
                                    f" ON CONFLICT ({key}) {spec['conflict']}")
                    n += len(rows)
                secs = time.perf_counter() - t0
                size = conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0] - size0
                books = conn.execute("SELECT count(*) FROM depth_vol_books WHERE run_id = %s", (run,)).fetchone()[0]
                conn.commit()
                out["layouts"].append(dict(layout=layout, table=table, round=r + 1, rows=n, secs=secs,
                                           disk_b=size, books=books))
    for mode in ("burst", "paced"):
        out["modes"].append(_through_writer(job, pg, items, offsets, mode, f"bench-depth-writer-{mode}"))
    return out


def print_depth(r: dict) -> None:
    print(f"\n# vol at size ([sinks.postgres] depth_vols = true, [chain] {r['chain']}): the {r['fits']:,} SmileFit + "
          f"{r['patches']:,} SurfacePatch items one flow run hands the sink (emitted in {r['flow_s']:.2f} s at max "
          f"speed), {r['views']:,} views carrying ladders of {r['books']:,} books in all; their ladders alone written "
          f"in batches of batch_rows={r['batch_rows']} items (a transaction each: staged COPY, INSERT ... ON CONFLICT), "
          f"old layout and new alternating, each round under its own run; books = depth_vol_books rows of the run")
    print(f"{'vol at size, ladders only (what the row does)':<84} {'rows':>8} {'books':>8} {'s':>6} {'rows/s':>9} "
          f"{'books/s':>9} {'MB disk':>8} {'B/book':>7}")
    for x in r["layouts"]:
        what = (f"round {x['round']}, 008: depth_vols, a row per book per fit" if x["layout"] == "008" else
                f"round {x['round']}, 009: depth_views, a row per view, books as arrays")
        print(f"{what:<84} {x['rows']:>8,} {x['books']:>8,} {x['secs']:>6.2f} {x['rows'] / x['secs']:>9,.0f} "
              f"{x['books'] / x['secs']:>9,.0f} {x['disk_b'] / 1e6:>8.1f} {x['disk_b'] / max(x['books'], 1):>7.0f}",
              flush=True)
    print(f"{'all items through one PostgresWriter with depth_vols on (009)':<84} {'items':>8} {'rows':>8} {'s':>6} "
          f"{'rows/s':>9} {'peak backlog items':>18} {'batches':>7} {'left':>4}")
    for m in r["modes"]:
        what = ("burst: all items submitted at once; s = until all are durable" if m["mode"] == "burst" else
                f"paced: submitted as the flow emitted them ({m['submitted_s']:.2f} s); s = until all are durable")
        total = sum(m["rows"].values())
        print(f"{what:<84} {m['items']:>8,} {total:>8,} {m['secs']:>6.2f} {total / m['secs']:>9,.0f} "
              f"{m['peak']:>18,} {m['batches']:>7,} {m['left']:>4}", flush=True)
        print(f"{'  ' + m['mode'] + ': depth_views rows':<84} {'':>8} {m['rows'].get('depth_views', 0):>8,} {'':>6} "
              f"{m['rows'].get('depth_views', 0) / m['secs']:>9,.0f}")
        if m["spilled"] or m["rejected"] or not m["durable"]:
            print(f"  {m['mode']}: spilled {m['spilled']:,}, rejected {m['rejected']:,}, durable {m['durable']}")


def run_child(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], cwd=ROOT, capture_output=True,
                          text=True)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"flow run failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=400_000, help="live frames of the seed-scale workload (default: %(default)s)")
    p.add_argument("--insert-events", type=int, default=300_000, help="events COPYed per insert row (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="rounds of off-then-on flow runs (default: %(default)s)")
    p.add_argument("--fitview-frames", type=int, default=400_000,
                   help="live frames whose fit/view items go through the PostgresWriter, 0 = none (default: %(default)s)")
    p.add_argument("--depth-frames", type=int, default=400_000,
                   help="live frames whose items, with level vols on, measure vol at size stored (depth_vols), "
                        "0 = none (default: %(default)s)")
    p.add_argument("--depth-rounds", type=int, default=2, help="rounds of old-then-new layout (default: %(default)s)")
    p.add_argument("--only-depth", action="store_true", help="only the vol-at-size section")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(fitview(job) if job.get("fitview") else depth(job) if job.get("depth") else child(job)),
              flush=True)
        return 0

    from bench.workload import ensure_workload, workload_for
    from connectors.postgres import embedded_server

    path, meta = ensure_workload(workload_for("seed", None, n_messages=args.frames))
    print(f"# machine: {describe_machine()}")
    print(f"# date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"# workload: {path.name}: {meta['frames']:,} frames ({meta['preamble_frames']:,} preamble), "
          f"{sum(meta['n_options'].values()):,} options")
    print(f"# goal: {GOAL}")
    with tempfile.TemporaryDirectory(prefix="bench_events_") as tmp:
        server = embedded_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            dsn = server.get_uri()
            if not args.only_depth:
                print(f"\n{'insert (binary COPY, msgpack bodies), one connection (what the row does)':<66} {'events':>8} "
                      f"{'rows':>8} {'s':>6} "
                      f"{'events/s':>9} {'rows/s':>8} {'B/event sent':>12} {'B/event disk':>12}")
                for r in insert_rates(dsn, path, args.insert_events):
                    print(f"{r['what']:<66} {r['events']:>8,} {r['rows']:>8,} {r['secs']:>6.2f} {r['rate']:>9,.0f} "
                          f"{r['rows'] / r['secs']:>8,.0f} {r['wire_b']:>12.0f} {float(r['disk_b']):>12.0f}", flush=True)
                print(f"\n{'flow over the workload, max speed, 1 process':<52} {'msgs':>9} {'s':>6} {'msg/s':>9} "
                      f"{'cpu s':>6} {'peak backlog rows':>17} {'stored rows':>11} {'stored events':>13} {'left':>5}")
                results = {False: [], True: []}
                for i in range(args.repeat):
                    for store in (False, True):
                        r = run_child(dict(store=store, dsn=dsn, path=str(path), meta=meta, spill=str(Path(tmp) / "spill"),
                                           run_id=f"bench-events-{i}"))
                        results[store].append(r)
                        what = (f"round {i + 1}, storage on: + MarketEventSink (1 writer)" if store
                                else f"round {i + 1}, storage off: the flow as graph.toml ships it")
                        print(f"{what:<52} {r['msgs']:>9,} {r['secs']:>6.2f} {r['rate']:>9,.0f} {r['cpu']:>6.1f} "
                              f"{r.get('peak_backlog', 0) if store else '-':>17} {r.get('rows', '-'):>11} "
                              f"{r.get('stored', '-'):>13} {r.get('pending', '-'):>5}", flush=True)
                off = statistics.median(r["rate"] for r in results[False])
                on = statistics.median(r["rate"] for r in results[True])
                paired = [1 - b["rate"] / a["rate"] for a, b in zip(results[False], results[True])]
                print(f"\ncost of storage: {100 * statistics.median(paired):.1f} % of the flow's throughput (median of "
                      f"{args.repeat} rounds' paired costs: {', '.join(f'{100 * c:.1f}' for c in paired)} %); "
                      f"cost of the medians {100 * (1 - on / off):.1f} % ({off:,.0f} → {on:,.0f} msg/s); peak backlog "
                      f"{max(r['peak_backlog'] for r in results[True]):,} rows; {GOAL}")
                if args.fitview_frames:
                    print_fitview(run_child(dict(fitview=True, dsn=dsn, path=str(path), meta=meta, frames=args.fitview_frames,
                                                 spill=str(Path(tmp) / "spill"))))
            if args.depth_frames:
                print_depth(run_child(dict(depth=True, dsn=dsn, path=str(path), meta=meta, frames=args.depth_frames,
                                           rounds=args.depth_rounds, spill=str(Path(tmp) / "spill"))))
        finally:
            server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
