"""Scale-out runs of the real dataflow on one recorded input (issue #16, "Scale-out"): the
recording, the flow entry point `python -m bytewax.run tests.helpers.scaleout:flow` starts (as
waxctl or a StatefulSet would start flows.surface:flow, -w/-i/-a unchanged), and reading the
persisted rows back from PostgreSQL for comparison.

The determinism rule these runs rely on (and the test states): bytewax fires a chain step's
epoch tick when the SYSTEM clock reaches it, so which epochs run before the input ends — and
so which intermediate fits exist, which vols were Taylor-stepped rather than solved, and which
fit warm-started from which — depends on thread and process scheduling, i.e. on the worker
layout. What does not depend on it is the books each expiry holds once its input is read: each
chain key's events come from one source partition, in order, and bytewax keeps the order of
items between two workers. So these runs freeze the flow clock (FROZEN_RATE: an epoch of flow
time lasts years of wall time): no epoch closes before the end of input, and at EOF every chain
step solves every strike exactly and fits its smile cold from those final books
(operators/state/chain.py on_epoch(flush=True)). Those fits, and the patches and rows made from
them, must be identical for any layout, and are compared exactly.

Test support only: never imported by volgraph itself (bench/ uses tests/helpers/netns.py, not this).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Optional, Sequence

# JSON: {"files": [...], "dsn": ..., "clock_ms": ..., "spill_dir": ..., "speed": ..., "market": ...}
ENV = "VOLGRAPH_SCALEOUT"
FROZEN_RATE = 1e-4  # flow ms per wall ms: a 50 ms epoch closes 500 s of wall time after it opens, far
# beyond any run here; expiries (≤ 60 days of flow time) then fall ~1,600 years ahead, inside datetime's range
HEARTBEAT = '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}'

# the expiries per currency of the recorded market: 4 chain keys per currency, 8 in all, so two
# workers each own several (operators/events.chain_key; placement: SipHash of the key mod W)
PLAN = {"daily": 1, "weekly": 2, "monthly": 1, "quarterly": 0}
N_STRIKES = 12


def record_deribit(out_dir: Path, start_ms: int, *, currencies: Sequence[str] = ("BTC", "ETH"), seed: int = 11,
                   ticks: int = 20, per_tick: int = 200) -> list[Path]:
    """One Deribit recording per currency (connectors/capture/replay.py format), made from the
    real simulator's offline frames: discovery, first frames, then `ticks` × `per_tick` live
    frames (90 % book changes). One file per currency makes one source partition each."""
    from connectors.capture.replay import write_frames
    from connectors.sim.deribit import Simulator
    from tests.helpers.config import sim_kwargs

    sim = Simulator(**sim_kwargs(seed=seed, now_ms=start_ms, currencies=tuple(currencies), plan=PLAN,
                                 n_strikes=N_STRIKES))
    rng = random.Random(seed)
    frames: dict[str, list] = {c: [] for c in currencies}
    channels: dict[str, tuple[list, list]] = {}
    for req, c in enumerate(currencies):
        out = frames[c]
        out.append((start_ms, sim.offline_instruments_frame(c, "option", req_id=2 * req + 1, ts_ms=start_ms)))
        out.append((start_ms, sim.offline_instruments_frame(c, "future", req_id=2 * req + 2, ts_ms=start_ms)))
        # dated futures only: a perpetual's events are keyed to expiry 0 (connectors/venues/deribit/names.py), a
        # chain key already expired on any flow clock, whose wake-up a frozen clock puts before year 1
        options = sim.instrument_names(c, "option")
        futures = [n for n in sim.instrument_names(c, "future") if not n.endswith("-PERPETUAL")]
        channels[c] = (options, futures)
        for name in options:
            out.append((start_ms, sim.offline_initial_frame(f"book.{name}.100ms", start_ms)))
            out.append((start_ms, sim.offline_initial_frame(f"ticker.{name}.100ms", start_ms)))
        for name in futures:
            out.append((start_ms, sim.offline_initial_frame(f"ticker.{name}.100ms", start_ms)))
        out.append((start_ms, sim.offline_initial_frame(f"deribit_price_index.{c.lower()}_usd", start_ms)))
        out.append((start_ms, HEARTBEAT))  # a session frame: replay drops it
    for _ in range(ticks):
        sim.advance(1)
        ts = sim.now_ms()
        for c in currencies:
            options, futures = channels[c]
            for j in range(per_tick):
                r = rng.random()
                name = options[int(rng.random() * len(options))] if r < 0.97 else futures[int(rng.random() * len(futures))]
                ch = f"book.{name}.100ms" if r < 0.9 else f"ticker.{name}.100ms"
                t = ts + j * 100 // per_tick
                frame = sim.offline_frame(ch, t)
                if frame is not None:
                    frames[c].append((t, frame))
            frames[c].append((ts, sim.offline_frame(f"deribit_price_index.{c.lower()}_usd", ts)))
    paths = []
    for c in currencies:
        path = Path(out_dir) / f"deribit-{c.lower()}.jsonl.gz"
        write_frames(path, frames[c])
        paths.append(path)
    return paths


RUN_ID = "scaleout-test"  # every execution of these flows writes under one run: rows are compared across them


def build(files: Sequence[str], dsn: str, clock_ms: int, spill_dir: str, config_path: Optional[str] = None,
          speed="max", market: bool = False):
    """The flow over the recordings with a PostgreSQL sink and the frozen flow clock (see the
    module docstring). Everything else is graph.toml's, like flows.surface.default_flow.
    speed: the replay's pace ("max", or a factor of the recording's real time: a paced run
    lasts long enough to be killed at chosen points). market: also store every market event
    (graph.toml [sinks.postgres] market_events = true, no retention)."""
    from connectors.capture.replay import ReplaySource
    from flows.config import load_config
    from flows.runs import run_info
    from flows.surface import build_flow, market_event_sink, postgres_sink

    overrides = {"sinks": {"postgres": {"market_events": True, "market_retention_days": 0}}} if market else None
    config = load_config(config_path, overrides=overrides)
    run = run_info(config, source="file", detail=",".join(files), run_id=RUN_ID)
    sinks = [postgres_sink(config, dsn, run, spill_dir)]
    if market:
        sinks.append(market_event_sink(config, dsn, run, spill_dir))
    return build_flow(config, ReplaySource(list(files), speed=speed), sinks, now_ms=lambda: clock_ms,
                      clock_rate=FROZEN_RATE, flow_id="volgraph_scaleout")


def __getattr__(name: str):
    # `flow` for python -m bytewax.run, built on first access from the environment (ENV)
    if name == "flow":
        import orjson

        raw = os.environ.get(ENV)
        if not raw:
            raise RuntimeError(f"{ENV} is not set: give it as JSON "
                               '{"files": [...], "dsn": "...", "clock_ms": <int>, "spill_dir": "...", "speed": "max"}')
        job = orjson.loads(raw)
        return build(job["files"], job["dsn"], int(job["clock_ms"]), job["spill_dir"], job.get("config"),
                     job.get("speed", "max"), bool(job.get("market", False)))
    raise AttributeError(name)


# ---------------------------------------------------------------- the persisted rows

# every column but the wall-clock fit time (the one field a rerun may change)
FIT_COLUMNS = ("venue, underlying, expiry_ms, epoch, ts_exchange_ms, ts_emit_ms, t_years, forward, a, b, rho, m, "
               "sigma, rmse_vol_pts, n_quotes, butterfly_ok, min_g, inside_band_frac, warm")


def persisted(dsn: str) -> dict[str, list[tuple]]:
    """What a run left in PostgreSQL, as sorted row lists per table, wall-clock fit_ms removed:
    smile_fits, expiry_views (the view JSON without its fit's fit_ms), expiry_nodes, surface_state.

    Two surface_state columns are left out because they follow how the EOF fits were grouped
    into patches, which is scheduling: every patch of the frozen clock has the same epoch, so
    they meet in one row, whose ts_exchange_ms is the LAST patch's (operators/merge.py: the
    head is the later patch's) — the newest fit of that patch, not of the surface — and whose
    n_changed / n_removed count that patch only. `surface_heads_are_fits` checks what holds."""
    from connectors.postgres import connect

    queries = {
        "smile_fits": f"SELECT {FIT_COLUMNS} FROM smile_fits ORDER BY venue, underlying, expiry_ms, epoch",
        "expiry_views": "SELECT venue, underlying, expiry_ms, epoch, ts_emit_ms, removed, calendar_ok, "
                        "(view #- '{fit,fit_ms}')::text FROM expiry_views "
                        "ORDER BY venue, underlying, expiry_ms, epoch",
        "expiry_nodes": "SELECT venue, underlying, expiry_ms, epoch, node, value FROM expiry_nodes "
                        "ORDER BY venue, underlying, expiry_ms, epoch, node",
        "surface_state": "SELECT venue, underlying, epoch, ts_emit_ms, is_snapshot, index_px, "
                         "tenors::text, calendar::text FROM surface_state ORDER BY venue, underlying, epoch",
    }
    with connect(dsn) as conn:
        return {table: [tuple(r) for r in conn.execute(q).fetchall()] for table, q in queries.items()}


def surface_heads_are_fits(dsn: str) -> list[tuple]:
    """surface_state rows whose ts_exchange_ms is not the exchange time of one of their
    underlying's persisted fits (what must hold whatever the patch grouping): [] when all are."""
    from connectors.postgres import connect

    with connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT venue, underlying, epoch, ts_exchange_ms FROM surface_state s WHERE NOT EXISTS "
            "(SELECT 1 FROM smile_fits f WHERE f.venue = s.venue AND f.underlying = s.underlying "
            "AND f.ts_exchange_ms = s.ts_exchange_ms)").fetchall()]


def fit_mismatches(dsn_ref: str, dsn: str) -> str:
    """Why two runs' smile_fits differ, per key: each run's stored (a, b, ρ, m, σ) and its
    expiry view's fit, so a reader sees at once whether one run stored the chain step's fit and
    the other the surface step's refit under the same (venue, underlying, expiry_ms, epoch)."""
    from connectors.postgres import connect

    q = ("SELECT f.venue, f.underlying, f.expiry_ms, f.epoch, ARRAY[f.a, f.b, f.rho, f.m, f.sigma], "
         "ARRAY[(v.view->'fit'->>'a')::float8, (v.view->'fit'->>'b')::float8, (v.view->'fit'->>'rho')::float8, "
         "(v.view->'fit'->>'m')::float8, (v.view->'fit'->>'sigma')::float8] FROM smile_fits f LEFT JOIN expiry_views v "
         "USING (venue, underlying, expiry_ms, epoch)")
    runs = []
    for d in (dsn_ref, dsn):
        with connect(d) as conn:
            runs.append({tuple(r[:4]): (tuple(r[4]), tuple(r[5]) if r[5] and None not in r[5] else None)
                         for r in conn.execute(q).fetchall()})
    ref, other = runs
    lines = []
    for key in sorted(set(ref) | set(other)):
        a, b = ref.get(key), other.get(key)
        if a is None or b is None or a[0] != b[0]:
            race = (a is not None and b is not None and a[1] is not None
                    and (b[0] == a[1] or a[0] == b[1]))
            lines.append(f"{key}: reference stored {a and a[0]} (its view's fit {a and a[1]}); this run stored "
                         f"{b and b[0]} (its view's fit {b and b[1]})"
                         + (" — one run kept the chain step's fit, the other the surface step's refit of the same "
                            "key: both are written to smile_fits under one (venue, underlying, expiry_ms, epoch) and "
                            "the first to reach PostgreSQL stands (connectors/postgres/rows.py), a race between "
                            "the workers' sink partitions" if race else ""))
    return "\n".join(lines)
