"""A Deribit recording as a live BTC session would have made it, made offline by the real
simulator's frame code (connectors/sim/deribit.py offline_* methods): discovery, first frames,
then live frames — on 2026-01-05, so every expiry in it lies in the past of the wall clock.
Test support only."""

from __future__ import annotations

import calendar
import random

from connectors.sim.deribit import Simulator
from tests.helpers.config import sim_kwargs

START_MS = calendar.timegm((2026, 1, 5, 9, 0, 0)) * 1000
HEARTBEAT = '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"heartbeat"}}'


def record(n_ticks: int = 12, per_tick: int = 150, seed: int = 7) -> list[tuple[int, str]]:
    """A recording as a live BTC session would have made it: discovery, first frames, live frames."""
    sim = Simulator(**sim_kwargs(scale="small", seed=seed, now_ms=START_MS, currencies=("BTC",)))
    rng = random.Random(seed)
    out = [(START_MS, sim.offline_instruments_frame("BTC", "option", req_id=1, ts_ms=START_MS)),
           (START_MS, sim.offline_instruments_frame("BTC", "future", req_id=2, ts_ms=START_MS))]
    options = sim.instrument_names("BTC", "option")
    futures = sim.instrument_names("BTC", "future")
    for name in options:
        out.append((START_MS, sim.offline_initial_frame(f"book.{name}.100ms", START_MS)))
        out.append((START_MS, sim.offline_initial_frame(f"ticker.{name}.100ms", START_MS)))
    for name in futures:
        out.append((START_MS, sim.offline_initial_frame(f"ticker.{name}.100ms", START_MS)))
    out.append((START_MS, sim.offline_initial_frame("deribit_price_index.btc_usd", START_MS)))
    out.append((START_MS, HEARTBEAT))  # session frames are recorded too; replay must skip them
    for _ in range(n_ticks):
        sim.advance(1)
        ts = sim.now_ms()
        for j in range(per_tick):
            r = rng.random()
            if r < 0.9:
                ch = f"book.{options[int(rng.random() * len(options))]}.100ms"
            elif r < 0.97:
                ch = f"ticker.{options[int(rng.random() * len(options))]}.100ms"
            else:
                ch = f"ticker.{futures[int(rng.random() * len(futures))]}.100ms"
            frame = sim.offline_frame(ch, ts + j * 100 // per_tick)
            if frame is not None:
                out.append((ts + j * 100 // per_tick, frame))
        out.append((ts, sim.offline_frame("deribit_price_index.btc_usd", ts)))
    return [(ts, f.decode() if isinstance(f, bytes) else f) for ts, f in out]
