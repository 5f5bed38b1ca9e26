"""Faults a real feed produces, injected by the simulator over real loopback websockets, and
the Deribit connector recovering from each by itself.

For each fault: the affected books are withheld while stale (a seq_gap FeedError before
their fresh snapshot), the counters say what happened, unaffected instruments lose nothing
(their change chains never break), and at the end, with the market paused, every book the
consumer holds equals the simulator's book exactly. Two tests run the real dataflow: a gap
withholds its strike from the published smile until the resnapshot, and an expiry leaves
the surface at its expiry time without a restart. Waits are conditions with timeouts.
"""

from __future__ import annotations

import collections
import threading
import time

import pytest
from bytewax.testing import run_main

from connectors.venues.deribit import DeribitClient, DeribitSource, now_ms
from connectors.sim.deribit import Simulator
from flows.metrics import COUNTERS
from flows.surface import build_flow
from tests.helpers.sinks import CallbackSink
from operators.state.book import OrderBook
from operators.events import BookUpdate, FeedError, Instrument, SurfacePatch, Ticker
from flows.config import load_config
from tests.helpers.flowrun import StoppableSource
from tests.helpers.venues import monday_noon_ms
from tests.helpers.config import deribit_kwargs, sim_kwargs

HEARTBEAT_S = 0.3
WAIT_S = 120.0  # every wait is for a condition; this only bounds a failing run (machine speed drifts)


@pytest.fixture
def sim():
    with Simulator(**sim_kwargs(seed=5, rate=800, currencies=["BTC"], n_strikes=8, min_heartbeat_s=0.1)) as s:
        yield s


def make_client(sim, **kw):
    kw.setdefault("heartbeat_s", HEARTBEAT_S)
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.3)
    kw.setdefault("seed", 1)
    kw.setdefault("subscribe_per_s", 1000.0)
    kw.setdefault("instruments_per_s", 100.0)
    return DeribitClient(**deribit_kwargs(url=sim.url, currencies=("BTC",), **kw))


class Feed:
    """The consumer: drains the client, keeps books the way the chain step does (OrderBook,
    seq_gap = stale), and records every event in order."""

    def __init__(self, sim: Simulator, client: DeribitClient, delay_s: float = 0.0):
        self.sim, self.client, self.delay_s = sim, client, delay_s
        self.events: list = []
        self.books: dict[str, OrderBook] = {}
        self.withheld: collections.Counter = collections.Counter()
        self.book_errors: list = []

    def pump(self, until, timeout: float = WAIT_S, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            batch = self.client.drain(100_000, timeout=0.05)
            for e in batch:
                if isinstance(e, BookUpdate):
                    err = self.books.setdefault(e.instrument, OrderBook()).apply(e)
                    if err is not None:
                        self.book_errors.append(err)
                elif isinstance(e, FeedError) and e.reason == "seq_gap" and e.instrument:
                    self.books.setdefault(e.instrument, OrderBook()).stale = True
                    self.withheld[e.instrument] += 1
            self.events.extend(batch)
            if until():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; client {self.client.counters()}, "
                                     f"sim {dict(self.sim.counters)}")
            if self.delay_s:  # a slow consumer: the client folds meanwhile
                threading.Event().wait(self.delay_s)

    def streaming(self, n_changes: int = 2):
        names = self.option_names()
        per = collections.Counter(e.instrument for e in self.events if isinstance(e, BookUpdate))
        return len(names) > 0 and all(per[n] >= n_changes for n in names)

    def option_names(self) -> list[str]:
        return [n for n, i in self.client.active.items() if i.kind == "option"]

    def mark(self) -> int:
        return len(self.events)

    def books_match(self, names) -> bool:
        truth = self.sim.books()
        for n in names:
            b = self.books.get(n)
            bids, asks, change_id = truth[n]
            if b is None or b.stale or b.bids != bids or b.asks != asks or b.last_seq != change_id:
                return False
        return True

    def settle(self, names=None):
        """Pause the market, read everything in flight, then every book must equal the sim's."""
        self.sim.pause()
        names = list(names if names is not None else self.option_names())
        self.pump(lambda: self.books_match(names), what="books equal to the simulator's")
        self.sim.pause(False)

    def chains_unbroken(self, names, since: int = 0) -> None:
        last: dict = {}
        for e in self.events[since:]:
            if isinstance(e, FeedError) and e.reason == "seq_gap" and e.instrument in names:
                raise AssertionError(f"unaffected {e.instrument} was withheld: {e.detail}")
            if isinstance(e, BookUpdate) and e.instrument in names:
                if e.kind == "change" and e.instrument in last:
                    assert e.prev_seq == last[e.instrument], f"broken chain for {e.instrument}"
                last[e.instrument] = e.seq

    def withheld_then_resnapshotted(self, inst: str, since: int) -> bool:
        tail = self.events[since:]
        gap = next((i for i, e in enumerate(tail) if isinstance(e, FeedError) and e.reason == "seq_gap"
                    and e.instrument == inst), None)
        return gap is not None and any(isinstance(e, BookUpdate) and e.instrument == inst and e.kind == "snapshot"
                                       for e in tail[gap:])


def run_fault(sim, client, inject, targets, counter_ok, what):
    """Stream, inject, wait for withhold + resnapshot of every target and the counters, then
    check the unaffected books never broke and all books equal the simulator's."""
    feed = Feed(sim, client)
    feed.pump(feed.streaming, what="all books streaming")
    mark = feed.mark()
    inject()
    feed.pump(lambda: all(feed.withheld_then_resnapshotted(t, mark) for t in targets)
              and counter_ok(client.counters()), what=what)
    others = [n for n in feed.option_names() if n not in targets]
    feed.chains_unbroken(others, since=mark)
    feed.settle()
    return feed


def test_malformed_frames_each_variant_resyncs_its_book_only(sim):
    client = make_client(sim).start()
    try:
        names = sim.instrument_names("BTC")
        variants = ["truncated", "nan_literal", "garbage", "not_object", "wrong_type"]
        targets = names[1:1 + len(variants)]

        def inject():
            for inst, variant in zip(targets, variants):
                sim.inject("malformed", inst, variant=variant)

        run_fault(sim, client, inject, targets,
                  lambda c: c.get("errors.malformed_json", 0) >= 4 and c.get("errors.bad_field", 0) >= 1,
                  "every malformed book resynced")
        c = client.counters()
        # garbage names no channel: that book is caught by the change_id gap of its next change
        assert c["gaps"] >= 1 and c["resyncs"] >= len(targets)
        assert sim.counters["faults.malformed"] == len(variants) and sim.counters["faults_applied"] >= 5
        assert c.get("reconnects", 0) == 0
    finally:
        client.stop()


def test_oversized_crossed_and_bad_prices(sim):
    client = make_client(sim, max_frame_bytes=256 << 10).start()
    try:
        names = sim.instrument_names("BTC")
        bad_values = [-0.001, 1e308, "0.05", "NaN", None]
        targets = [names[2], names[3]] + names[4:4 + len(bad_values)]
        ticker_inst = names[12]

        def inject():
            sim.inject("oversized", targets[0], bytes=1 << 20)
            sim.inject("crossed", targets[1])
            for inst, value in zip(targets[2:], bad_values):
                sim.inject("bad_price", inst, value=value)
            sim.inject("bad_price", ticker_inst, channel="ticker", field="mark_price", value=-0.001)

        feed = run_fault(sim, client, inject, targets,
                         lambda c: (c.get("errors.oversized", 0) >= 1 and c.get("crossed", 0) >= 1
                                    and c.get("errors.bad_price", 0) >= 3 and c.get("errors.bad_field", 0) >= 2),
                         "oversized, crossed and badly priced books resynced")
        c = client.counters()
        # -0.001, 1e308 and the ticker's -0.001 are bad prices; "0.05" and null bad fields; NaN not JSON
        assert c["errors.bad_price"] == 3 and c["errors.bad_field"] == 2 and c["errors.malformed_json"] == 1
        assert c["errors.crossed_book"] == 1 and c["errors.seq_gap"] == len(targets)
        # a bad ticker is dropped and counted; its book is never withheld for it
        bad_ticks = [e for e in feed.events if isinstance(e, FeedError) and e.instrument == ticker_inst]
        assert bad_ticks and all(e.reason == "bad_price" for e in bad_ticks)
        assert feed.withheld[ticker_inst] == 0
        assert all(t.mark_px is None or t.mark_px > 0 for t in feed.events if isinstance(t, Ticker))
        # the crossed change never reached the consumer's book: the connector caught it
        assert not [e for e in feed.book_errors if e.reason == "crossed_book"]
    finally:
        client.stop()


@pytest.mark.parametrize("fault", ["drop", "stall", "heartbeat_stop"])
def test_connection_faults_reconnect_and_rebuild_every_book(sim, fault):
    client = make_client(sim).start()
    try:
        feed = Feed(sim, client)
        feed.pump(feed.streaming, what="all books streaming")
        names = feed.option_names()
        mark = feed.mark()
        if fault == "stall":
            sim.inject("stall", seconds=4 * HEARTBEAT_S)  # silent past 2 heartbeat intervals
        else:
            sim.inject(fault)
        # a stall is seen as silence; whether data or heartbeats fall silent first depends on
        # what was already in flight, so either counter may record it
        expected = {"drop": ("errors.disconnect",), "stall": ("errors.silence", "errors.heartbeat_silence"),
                    "heartbeat_stop": ("errors.heartbeat_silence",)}[fault]
        feed.pump(lambda: all(feed.withheld_then_resnapshotted(n, mark) for n in names)
                  and sum(client.counters().get(k, 0) for k in expected) >= 1, what=f"{fault}: every book rebuilt")
        if fault == "heartbeat_stop":
            assert client.counters().get("errors.silence", 0) == 0  # data kept flowing all along
        assert client.wait_for(lambda k: k.get("reconnects", 0) >= 1 and k.get("sessions_streaming", 0) >= 2, WAIT_S)
        # withheld from the disconnect on: after each book's seq_gap, its next book event is a snapshot
        for n in names:
            tail = [e for e in feed.events[mark:] if getattr(e, "instrument", None) == n
                    and isinstance(e, (BookUpdate, FeedError))]
            gap = next(i for i, e in enumerate(tail) if isinstance(e, FeedError))
            after = next(e for e in tail[gap:] if isinstance(e, BookUpdate))
            assert after.kind == "snapshot", (n, after)
        feed.settle()
        assert sim.wait_for(lambda k: k["test_answers"] >= 2, WAIT_S)  # the new session's heartbeats
    finally:
        client.stop()


@pytest.mark.parametrize("via_state_channel", [True, False])
def test_listings_and_expiries_intraday(sim, via_state_channel):
    # With instrument.state the client learns at once; without, its scheduled refresh finds them.
    client = make_client(sim, track_instrument_state=via_state_channel,
                         refresh_s=60.0 if via_state_channel else 0.3).start()
    try:
        feed = Feed(sim, client)
        feed.pump(feed.streaming, what="all books streaming")
        mark = feed.mark()
        new = sim.inject("listing", underlying="BTC") + sim.inject("listing", underlying="BTC", new_expiry=True)
        assert len(new) == 2 + 4

        def announced_then_streaming():
            tail = feed.events[mark:]
            first = {}
            for i, e in enumerate(tail):
                if getattr(e, "instrument", None) in new:
                    first.setdefault((e.instrument, type(e).__name__), i)
            return all((n, "Instrument") in first and (n, "BookUpdate") in first for n in new) and all(
                first[(n, "Instrument")] < first[(n, "BookUpdate")] for n in new)

        feed.pump(announced_then_streaming, what="new listings announced, then streaming")
        added = {e.instrument: e for e in feed.events[mark:] if isinstance(e, Instrument)}
        assert set(new) <= set(added) and all(added[n].expiry_ms in sim.expiries("BTC") for n in new)
        assert client.counters()["listed_intraday"] == len(new)

        # delist one strike and a whole expiry; late frames follow the notice
        one = sim.instrument_names("BTC")[0]
        expiry = sim.expiries("BTC")[1]
        gone = sim.inject("expire", one, late=2) + sim.inject("expire", underlying="BTC", expiry_ms=expiry)
        mark = feed.mark()
        feed.pump(lambda: not (set(gone) & set(client.active)) and client.counters().get("delisted", 0) >= len(gone),
                  what="delisted instruments removed")
        last = len(feed.events)
        feed.settle()  # everything still listed, new listings included, equals the simulator
        assert not [e for e in feed.events[last:] if getattr(e, "instrument", None) in gone]
        # delisted options are withheld for good, without errors other than that notice
        for n in (g for g in gone if "-" in g[4:] and g.count("-") == 3):
            assert feed.books[n].stale
        errors = [e for e in feed.events[mark:] if isinstance(e, FeedError)]
        assert {e.reason for e in errors} <= {"seq_gap"} and all(e.instrument in gone for e in errors)
        if via_state_channel:
            assert client.counters()["late_frames"] >= 1  # sent after the notice: dropped, no error
        assert sim.counters["late_frames_sent"] >= 1
    finally:
        client.stop()


def test_a_delisting_missed_by_a_session_is_let_go_when_the_next_one_starts(sim):
    """A strike delisted while the session does not hear of it (no instrument.state channel, no
    refresh due), then the connection drops: the new session's listing lacks it, and it is let go
    as a refresh would have — counted as delisted, withheld downstream for good — not just left
    unread (a reconnect under load made the intraday-listing test wait for a count that never came)."""
    client = make_client(sim, track_instrument_state=False, refresh_s=3600.0).start()
    try:
        feed = Feed(sim, client)
        feed.pump(feed.streaming, what="all books streaming")
        one = next(n for n in feed.option_names())
        assert sim.inject("expire", one) == [one]
        assert one in client.active and client.counters().get("delisted", 0) == 0  # unheard of
        mark = feed.mark()
        sim.inject("drop")
        feed.pump(lambda: client.counters().get("delisted", 0) == 1 and client.counters().get("sessions_streaming", 0) >= 2
                  and feed.streaming(), what="the new session lets the delisted strike go")
        assert one not in client.active and one not in client.instruments
        withheld = [e for e in feed.events[mark:] if isinstance(e, FeedError) and e.instrument == one]
        assert any("no longer listed" in e.detail for e in withheld), withheld
        last_error = max(i for i, e in enumerate(feed.events) if isinstance(e, FeedError) and e.instrument == one)
        assert not [e for e in feed.events[last_error:] if isinstance(e, BookUpdate) and e.instrument == one]
        assert feed.books[one].stale
    finally:
        client.stop()


def test_slow_consumer_gets_folded_exact_books_and_heartbeats_go_on(sim):
    client = make_client(sim).start()
    try:
        feed = Feed(sim, client, delay_s=0.4)  # reads 2.5 times a second
        feed.pump(lambda: client.counters().get("queue.folded", 0) > 500 and feed.streaming(),
                  what="folding under a slow consumer")
        c = client.counters()
        assert c["fold_ratio"] > 1.5 and c.get("gaps_queue", 0) == 0 and c.get("errors.seq_gap", 0) == 0
        assert sim.counters["heartbeat_closes"] == 0 and c.get("reconnects", 0) == 0
        print(f"\nslow consumer: {c['queue.pushed']} events pushed, {c['queue.drained']} drained, "
              f"fold ratio {c['fold_ratio']:.1f}")
        feed.delay_s = 0.0
        feed.settle()  # folded, yet every book is exact
    finally:
        client.stop()


def test_queue_bound_resyncs_instead_of_growing(sim):
    client = make_client(sim, queue_max=20).start()
    try:
        feed = Feed(sim, client, delay_s=0.3)
        feed.pump(lambda: client.counters().get("gaps_queue", 0) >= 1, what="bound reached")
        assert client.counters()["queue_len"] <= 20 + 64  # errors may exceed the bound, little else
        feed.delay_s = 0.0
        feed.settle()
    finally:
        client.stop()


# ---------------------------------------------------------------- with the real dataflow


class Sink:
    def __init__(self):
        self.items: list = []
        self.cond = threading.Condition()

    def __call__(self, item):
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, predicate, timeout=WAIT_S, what="condition"):
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.items), timeout):
                raise AssertionError(f"timed out waiting for {what}")


def run_flow_with(sim, scenario, clock=now_ms, **source_kw):
    """Run the real flow (build_flow + run_main) on the simulator while `scenario(sink, source)`
    runs in a thread; the flow ends when the scenario does."""
    stop = threading.Event()
    source = StoppableSource(DeribitSource(**deribit_kwargs(DeribitSource, url=sim.url, currencies=["BTC"],
                                                            heartbeat_s=HEARTBEAT_S, reconnect_min_s=0.05,
                                                            subscribe_per_s=1000.0, instruments_per_s=100.0,
                                                            clock_ms=clock, **source_kw)), stop)
    sink = Sink()
    failure: list = []

    def drive():
        try:
            scenario(sink, source)
        except BaseException as exc:  # noqa: BLE001 — re-raised in the test thread
            failure.append(exc)
        finally:
            stop.set()

    flow = build_flow(load_config(), source, [CallbackSink(sink)], now_ms=clock)
    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    run_main(flow)
    thread.join(WAIT_S)
    if failure:
        raise failure[0]
    return sink, source


def _views(items, expiry_ms):
    return [v for p in items if isinstance(p, SurfacePatch) for v in p.expiries if v.expiry_ms == expiry_ms]


def test_flow_withholds_a_gapped_strike_until_its_fresh_snapshot():
    sim = Simulator(**sim_kwargs(seed=9, rate=1500, currencies=["BTC"], n_strikes=12, min_heartbeat_s=0.1,
                                 plan={"daily": 0, "weekly": 1, "monthly": 0, "quarterly": 0}, now_ms=monday_noon_ms()))
    sim.start()
    try:
        expiry = sim.expiries("BTC")[0]
        fwd = sim.forward("BTC", expiry)
        strike = min(k for k in sim.strikes("BTC", expiry) if k > fwd * 1.01)  # OTM call: the fitted side
        inst = next(n for n in sim.instrument_names("BTC") if n.endswith(f"-{int(strike)}-C"))
        gaps_before = COUNTERS.snapshot().get("errors.seq_gap", 0)
        seen = {}

        def scenario(sink, source):
            sink.wait(lambda items: any(strike in v.strikes for v in _views(items, expiry)), what="strike fitted")
            seen["before"] = len(sink.items)
            sim.inject("gap", inst)
            sink.wait(lambda items: any(strike not in v.strikes and len(v.strikes) >= 6
                                        for v in _views(items[seen["before"]:], expiry)), what="strike withheld")
            seen["withheld"] = len(sink.items)
            sink.wait(lambda items: any(strike in v.strikes for v in _views(items[seen["withheld"]:], expiry)),
                      what="strike back after its snapshot")

        sink, source = run_flow_with(sim, scenario, resync_delay_s=1.0)  # stale for a second at least
        c = source.parts[0].client.counters()
        assert c["gaps"] == 1 and c["resyncs"] >= 1
        assert COUNTERS.snapshot().get("errors.seq_gap", 0) - gaps_before >= 1
        back = [v for v in _views(sink.items[seen["withheld"]:], expiry) if strike in v.strikes]
        i = back[0].strikes.index(strike)
        true_vol = sim.true_vol("BTC", expiry, strike)
        assert back[0].bid_iv[i] < true_vol + 0.005 and back[0].ask_iv[i] > true_vol - 0.005  # brackets it
    finally:
        sim.stop()


def test_flow_runs_through_an_expiry_without_a_restart_or_errors():
    # bytewax schedules the chain step's expiry by the real clock, so the expiry must really
    # pass: the simulator lists a short-lived expiry mid-run (a test device; Deribit's are 08:00)
    # On the wall clock, then: its weekly is listed at least two days out (hours from expiry,
    # tick-wide quotes might not make the six a fit needs).
    sim = Simulator(**sim_kwargs(seed=4, rate=1500, currencies=["BTC"], n_strikes=10, min_heartbeat_s=0.1,
                                 plan={"daily": 0, "weekly": 1, "monthly": 0, "quarterly": 0,
                                       "min_life_ms": 2 * 86_400_000}))
    sim.start()
    try:
        weekly = sim.expiries("BTC")[0]
        errors_before = {k: v for k, v in COUNTERS.snapshot().items() if k.startswith("errors.")}
        box = {}

        def scenario(sink, source):
            sink.wait(lambda items: _views(items, weekly), what="the weekly fitted")
            client = source.parts[0].client
            box["expiry"] = expiry = now_ms() + 2_500
            box["new"] = new = sim.inject("listing", underlying="BTC", expiry_ms=expiry, n_strikes=3)
            assert client.wait_for(lambda k: k.get("listed_intraday", 0) == len(new), WAIT_S)
            assert set(new) <= set(client.active)
            assert client.wait_for(lambda k: k.get("expired", 0) == len(new), WAIT_S)  # at its expiry time
            assert now_ms() >= expiry and not set(new) & set(client.active)
            box["late_before"] = sim.counters["unsubscribe_calls"]
            n = len(sink.items)
            sink.wait(lambda items: len(_views(items[n:], weekly)) >= 2, what="the weekly still updating")

        sink, source = run_flow_with(sim, scenario)
        c = source.parts[0].client.counters()
        assert c["expired"] == len(box["new"]) and c.get("reconnects", 0) == 0
        assert sim.counters["unsubscribe_calls"] >= 1  # the client unsubscribed the expired channels
        after = {k: v for k, v in COUNTERS.snapshot().items() if k.startswith("errors.")}
        assert {k: after[k] - errors_before.get(k, 0) for k in after if after[k] != errors_before.get(k, 0)} == {}
    finally:
        sim.stop()
