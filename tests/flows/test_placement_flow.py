"""The even split end to end: a 2-worker cluster on the live Deribit simulator over loopback,
sources built as `volgraph run` builds them (runtime.workers = 2: a connection per worker
slot). Both slots place the listing alike, each reads half the expiries, and every expiry's
chain runs on the worker that reads its books (its fits are written there) — through the
salted chain keys of connectors/venues/placement.py — fitted once, by one worker."""

from __future__ import annotations

import threading
from collections import Counter

from bytewax.testing import cluster_main

from connectors.sim.deribit import Simulator
from connectors.venues.deribit.names import parse_instrument_name
from flows.config import load_config
from flows.metrics import COUNTERS
from flows.surface import build_flow, venue_sources
from operators.events import SmileFit
from operators.state import chain
from tests.helpers.config import sim_kwargs
from tests.helpers.flowrun import StoppableSource, run_until
from tests.helpers.sinks import WorkerSink
from tests.helpers.venues import monday_noon_ms

PLAN = {"daily": 2, "weekly": 2, "monthly": 1, "quarterly": 1}  # 6 BTC expiries


def test_two_workers_split_the_expiries_evenly_and_fit_each_where_its_books_are_read():
    sim = Simulator(**sim_kwargs(seed=5, rate=1500, currencies=("BTC",), scale="small", plan=PLAN, n_strikes=9,
                                 now_ms=monday_noon_ms()))
    url = sim.start()
    try:
        chain.warm_up()
        config = load_config(overrides={"runtime": {"workers": 2},
                                        "sources": {"okx": {"enabled": False}, "deribit": {"currencies": ["BTC"]}}})
        (source,) = venue_sources(config, urls={"deribit": url})
        assert source.list_parts() == ["deribit-BTC.w0of2", "deribit-BTC.w1of2"]
        stop = threading.Event()
        wrapped = StoppableSource(source, stop)
        sink = WorkerSink(lambda fit: fit.expiry_ms, consumes=(SmileFit,))  # a fit is written where its chain ran
        listed = set(sim.instrument_names("BTC", "option"))
        expiries = {parse_instrument_name(n)[1] for n in listed}
        assert len(expiries) == 6

        conflicts_before = COUNTERS.snapshot().get("errors.placement_conflict", 0)

        def every_expiry_fitted():
            with sink.lock:
                return {e for e, _ in sink.seen} == expiries

        run_until(build_flow(config, wrapped, [sink]), stop, every_expiry_fitted,
                  what="a fit of every BTC expiry", entry_point=lambda f: cluster_main(f, [], 0, worker_count_per_proc=2))
    finally:
        sim.stop()
    clients = {p.client.route[0]: p.client for p in wrapped.parts}
    assert sorted(clients) == [0, 1]
    assert clients[0].placement.state() == clients[1].placement.state()  # both slots placed alike
    reads = {slot: {i.expiry_ms for i in c.active.values() if i.kind == "option"} for slot, c in clients.items()}
    assert reads[0].isdisjoint(reads[1]) and reads[0] | reads[1] == expiries
    options = {slot: sum(1 for i in c.active.values() if i.kind == "option") for slot, c in clients.items()}
    per_expiry = Counter(parse_instrument_name(n)[1] for n in listed)
    assert abs(options[0] - options[1]) <= max(per_expiry.values())  # even, to within one expiry
    fitted_on = {}
    for expiry, worker in sink.seen:
        assert fitted_on.setdefault(expiry, worker) == worker, f"expiry {expiry} fitted on two workers"
    assert fitted_on == {e: slot for slot, es in reads.items() for e in es}
    assert COUNTERS.snapshot().get("errors.placement_conflict", 0) == conflicts_before  # the surface saw one chain each
