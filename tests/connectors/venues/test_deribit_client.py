"""DeribitClient and DeribitSource against the simulator over real websockets on 127.0.0.1:
discovery, subscription, snapshot + chained changes, heartbeats, gap resync, reconnects,
queue overflow. Waits are on queues/conditions with timeouts, never sleeps."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest

from connectors.venues.deribit import DeribitClient, DeribitSource
from connectors.venues.deribit.names import parse_instrument_name
from connectors.sim.deribit import Simulator
from connectors.venues.base import SOURCE_BATCH_MAX, SOURCE_GATHER_MS
from operators.state.book import OrderBook
from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker
from tests.helpers.venues import (books, check_chains, check_discovery, collect, deribit_client,
                                  inject_when_streaming, run_source, stream_target)


@pytest.fixture
def sim():
    with Simulator(**sim_kwargs(seed=21, rate=600, currencies=["BTC", "ETH"], min_heartbeat_s=0.2)) as s:
        yield s


def test_discovery_subscription_chains_and_heartbeats(sim):
    client = deribit_client(sim.url).start()
    try:
        n_opts = len(sim.instrument_names("BTC"))
        n_futs = len(sim.instrument_names("BTC", "future"))
        events: list = []
        collect(client, events, lambda ev: len(books(ev)) == n_opts and sum(
            len(v) >= 3 for v in books(ev).values()) >= 5 and any(isinstance(e, FuturePrice) for e in ev)
            and any(isinstance(e, IndexPrice) for e in ev), what="snapshots and changes")
        insts = check_discovery(events)
        assert len(insts) == n_opts + n_futs
        assert {i.instrument for i in insts if i.kind == "option"} == set(sim.instrument_names("BTC"))
        assert all(i.expiry_ms in sim.expiries("BTC") for i in insts if i.kind == "option")
        assert not [e for e in events if isinstance(e, FeedError)]
        ticks = [e for e in events if isinstance(e, Ticker) and e.mark_iv is not None]
        assert ticks and all(0.05 < t.mark_iv < 5 for t in ticks)  # decimals
        assert all(0 < t.mark_px < 1 for t in ticks)  # coin
        # heartbeats: the sim sends test_requests every 0.3 s; the client answers each
        assert sim.wait_for(lambda k: k["test_answers"] >= 3, 10)
        assert client.wait_for(lambda k: k.get("heartbeats_answered", 0) >= 3, 10)
        assert sim.counters["heartbeat_closes"] == 0
        assert client.wait_for(lambda k: k.get("sessions_streaming", 0) >= 1, 10)
        c = client.counters()
        assert c["frames"] > 0 and c["bytes"] > 0 and c["events.BookUpdate"] >= len(books(events))
        # books and tickers of options, tickers of futures, the index, instrument.state × 2 kinds
        assert c["subscribed_channels"] == 2 * n_opts + n_futs + 1 + 2
    finally:
        client.stop()
    assert not client._thread.is_alive()


def test_gap_gives_seq_gap_then_a_fresh_snapshot(sim):
    client = deribit_client(sim.url, ("ETH",)).start()
    try:
        target = sim.instrument_names("ETH")[7]
        events, _ = inject_when_streaming(client, sim, target, "gap")

        def resynced(ev):
            gap = [i for i, e in enumerate(ev) if isinstance(e, FeedError) and e.reason == "seq_gap"
                   and e.instrument == target]
            return gap and any(isinstance(e, BookUpdate) and e.instrument == target and e.kind == "snapshot"
                               for e in ev[gap[0]:])

        collect(client, events, resynced, what="seq_gap and resnapshot")
        gap = next(e for e in events if isinstance(e, FeedError) and e.reason == "seq_gap")
        assert gap.instrument == target and "prev_change_id" in gap.detail
        check_chains(events)
        c = client.counters()
        assert c["gaps"] == 1 and c["resyncs"] >= 1 and c["errors.seq_gap"] == 1
        assert sim.counters["unsubscribe_calls"] >= 1 and sim.counters["gaps_injected"] == 1
        # the book keeps streaming after the fresh snapshot
        n = len(books(events)[target])
        collect(client, events, lambda ev: len(books(ev)[target]) >= n + 2, what="changes after resync")
        check_chains(events)
    finally:
        client.stop()


def test_grouped_book_channel_gives_whole_snapshots_of_the_same_book(sim):
    """book.X.none.10.100ms beside book.X.100ms on one simulator: every grouped notification is a
    whole snapshot (no change chain), and both end on the same book, the simulator's."""
    grouped = deribit_client(sim.url, ("ETH",), book_depth=10).start()
    incremental = deribit_client(sim.url, ("ETH",)).start()
    try:
        names = sim.instrument_names("ETH")
        g_events: list = []
        i_events: list = []
        collect(grouped, g_events, lambda ev: len(books(ev)) == len(names)
                and sum(len(v) >= 3 for v in books(ev).values()) >= 5, what="grouped books moving")
        collect(incremental, i_events, lambda ev: len(books(ev)) == len(names), what="incremental snapshots")
        sim.pause()
        final = sim.books()

        def caught_up(ev):
            by = books(ev)
            return all(n in by and by[n][-1].seq == final[n][2] for n in names)

        collect(grouped, g_events, caught_up, what="grouped books at the simulator's last change_id")
        collect(incremental, i_events, caught_up, what="incremental books at the simulator's last change_id")
        assert not [e for e in g_events + i_events if isinstance(e, FeedError)]
        g_books = books(g_events)
        assert all(e.kind == "snapshot" and e.prev_seq is None for v in g_books.values() for e in v)
        assert max(len(v) for v in g_books.values()) >= 3
        check_chains(i_events)
        assert f"book.{names[0]}.none.10.100ms" in grouped.channels
        assert f"book.{names[0]}.100ms" in incremental.channels
        for name in names:
            bids, asks, _ = final[name]
            g, i = OrderBook(), OrderBook()
            for e in g_books[name]:
                assert g.apply(e) is None
            for e in books(i_events)[name]:
                assert i.apply(e) is None
            top_bids = dict(sorted(bids.items(), reverse=True)[:10])
            top_asks = dict(sorted(asks.items())[:10])
            assert g.bids == top_bids == dict(sorted(i.bids.items(), reverse=True)[:10])
            assert g.asks == top_asks == dict(sorted(i.asks.items())[:10])
            assert (g.best_bid, g.best_ask) == (i.best_bid, i.best_ask)
        assert grouped.counters().get("gaps", 0) == 0
    finally:
        grouped.stop()
        incremental.stop()


def test_grouped_crossed_frame_is_an_error_and_the_next_snapshot_heals(sim):
    client = deribit_client(sim.url, ("ETH",), book_depth=10).start()
    try:
        events, target = stream_target(client, sim, sim.instrument_names("ETH"))
        sim.inject("crossed", target)
        mark = len(events)

        def healed(ev):
            err = [i for i, e in enumerate(ev) if i >= mark and isinstance(e, FeedError) and e.instrument == target]
            return err and any(isinstance(e, BookUpdate) and e.instrument == target for e in ev[err[0]:])

        collect(client, events, healed, what="crossed_book error, then a good snapshot")
        err = next(e for e in events[mark:] if isinstance(e, FeedError) and e.instrument == target)
        assert err.reason == "crossed_book" and "best bid" in err.detail
        book = OrderBook()
        for e in books(events)[target]:
            book.apply(e)
        assert not book.stale and book.best_bid < book.best_ask
        assert client.counters()["errors.crossed_book"] == 1
    finally:
        client.stop()


def test_dropped_connection_reconnects_and_resubscribes(sim):
    client = deribit_client(sim.url, ("BTC",)).start()
    try:
        events: list = []
        n_opts = len(sim.instrument_names("BTC"))
        collect(client, events, lambda ev: len(books(ev)) == n_opts, what="first snapshots")
        mark = len(events)
        sim.inject("drop")
        assert client.wait_for(lambda k: k.get("reconnects", 0) >= 1 and k.get("sessions_streaming", 0) >= 2, 20)

        def all_resnapshotted(ev):
            snaps = {e.instrument for e in ev[mark:] if isinstance(e, BookUpdate) and e.kind == "snapshot"}
            return len(snaps) == n_opts

        collect(client, events, all_resnapshotted, what="snapshots after reconnect")
        errors = [e for e in events[mark:] if isinstance(e, FeedError)]
        assert errors and errors[0].reason == "disconnect"
        assert sim.counters["connections"] >= 2 and sim.counters["drops_injected"] == 1
        check_chains(events[mark:])
    finally:
        client.stop()


def test_full_queue_drops_never_block_and_resync_the_books(sim):
    client = deribit_client(sim.url, ("BTC",), queue_max=40).start()
    try:
        # Do not read: the socket loop must keep going and count drops instead of blocking.
        assert client.wait_for(lambda k: k.get("queue_drops", 0) > 50, 20)
        assert sim.wait_for(lambda k: k["test_answers"] >= 2, 10)  # heartbeats still answered
        events: list = []

        def healed(ev):
            pending = {}
            for e in ev:
                if isinstance(e, FeedError) and e.reason == "seq_gap":
                    pending[e.instrument] = True
                elif isinstance(e, BookUpdate) and e.kind == "snapshot":
                    pending[e.instrument] = False
            return ev and not any(pending.values()) and client.counters().get("queue_len", 0) == 0

        collect(client, events, healed, what="every dropped book resnapshotted")
        check_chains(events)
        c = client.counters()
        assert c["gaps_queue"] >= 1 and c["resyncs"] >= 1
    finally:
        client.stop()


def test_instrument_filters_keep_the_strikes_nearest_the_money(sim):
    client = deribit_client(sim.url, ("BTC",), max_expiries=1, max_strikes=4, include_futures=False).start()
    try:
        events: list = []
        collect(client, events, lambda ev: len(books(ev)) == 8, what="8 filtered books")
        opts = [e for e in events if isinstance(e, Instrument)]
        expiry = sim.expiries("BTC")[0]
        assert len(opts) == 8 and {o.expiry_ms for o in opts} == {expiry}
        strikes = sorted({o.strike for o in opts})
        spot = sim.spot("BTC")
        all_strikes = sim.strikes("BTC", expiry)
        nearest = sorted(all_strikes, key=lambda k: abs(math.log(k / spot)))[:4]
        assert strikes == sorted(nearest) or len(set(strikes) & set(nearest)) >= 3  # spot moves a little
        assert client.wait_for(lambda k: k.get("sessions_streaming", 0) >= 1, 10)
        assert client.counters()["subscribed_channels"] == 8 * 2 + 1 + 1  # + instrument.state.option
    finally:
        client.stop()


def test_rate_limit_error_ends_the_session_and_the_client_comes_back(sim):
    sim.inject("rate_limit")
    client = deribit_client(sim.url, ("ETH",)).start()
    try:
        assert client.wait_for(lambda k: k.get("errors.rate_limited", 0) >= 1
                               and k.get("sessions_streaming", 0) >= 1, 20)
        events: list = []
        collect(client, events, lambda ev: any(isinstance(e, BookUpdate) for e in ev), what="books after 10028")
        assert any(isinstance(e, FeedError) and e.reason == "rate_limited" for e in events)
    finally:
        client.stop()


def test_unreachable_server_backs_off_and_stops_cleanly():
    sim = Simulator(**sim_kwargs(seed=1, currencies=["BTC"]))
    url = sim.start()
    sim.stop()  # the port is now closed
    client = deribit_client(url, ("BTC",)).start()
    try:
        assert client.wait_for(lambda k: k.get("errors.disconnect", 0) >= 2 and k.get("reconnects", 0) >= 1, 20)
        assert client.counters().get("connects", 0) == 0
    finally:
        client.stop()
    assert not client._thread.is_alive()


def test_client_arguments_are_checked():
    with pytest.raises(ValueError, match="interval"):
        DeribitClient(**deribit_kwargs(interval="1s"))
    with pytest.raises(ValueError, match="heartbeat_s"):
        DeribitClient(**deribit_kwargs(heartbeat_s=0))
    with pytest.raises(ValueError, match="queue_max"):
        DeribitClient(**deribit_kwargs(queue_max=0))


def test_source_in_a_dataflow_one_partition_per_currency(sim):
    source = DeribitSource(**deribit_kwargs(DeribitSource, url=sim.url, currencies=["BTC", "ETH"], heartbeat_s=0.3,
                                            max_expiries=1, max_strikes=3, reconnect_min_s=0.05,
                                            subscribe_per_s=1000.0))
    assert source.list_parts() == ["deribit-BTC", "deribit-ETH"]
    out, by_type = run_source(source, "deribit_source_test", what="6 listings and books of each currency",
                              until=lambda out, n: n["Instrument"] >= 2 * 6 and n["BookUpdate"] >= 2 * 6
                              and {e.underlying for e in out if isinstance(e, Instrument)} == {"BTC", "ETH"})
    assert by_type["Instrument"] >= 2 * 6 and by_type["BookUpdate"] >= 2 * 6
    underlyings = {e.underlying for e in out if isinstance(e, Instrument)}
    assert underlyings == {"BTC", "ETH"}
    assert {e.underlying for e in out if isinstance(e, IndexPrice)} <= {"BTC", "ETH"}
    check_chains(out)
    part = source.build_part("in", "deribit-ETH", None)
    try:
        assert part.snapshot() is None and part.client.currencies == ("ETH",)
        assert part.client.wait_for(lambda k: k.get("events.BookUpdate", 0) >= 1, 10)
        before = datetime.now(timezone.utc)
        batch = part.next_batch()  # never blocks: what the client queued so far
        after = datetime.now(timezone.utc)
        assert 0 < len(batch) < SOURCE_BATCH_MAX
        # a part batch: the partition lets events gather SOURCE_GATHER_MS before reading again
        gather = timedelta(milliseconds=SOURCE_GATHER_MS)
        assert before + gather <= part.next_awake() <= after + gather
    finally:
        part.close()


def test_source_on_a_cluster_splits_expiries_evenly_and_keeps_the_split_through_a_restart(sim):
    """route_workers=2: a partition (connection) per currency and worker slot; both slots place
    the listing alike (connectors/venues/placement.py), slot k lists only the options and
    futures of the expiries placed on it, between them they read exactly what one connection
    would, the option counts differ by at most one expiry's worth, and a partition resumed
    from its snapshot keeps every expiry where it was."""
    from collections import Counter

    source = DeribitSource(**deribit_kwargs(DeribitSource, url=sim.url, currencies=["BTC", "ETH"], heartbeat_s=0.3,
                                            max_strikes=2, reconnect_min_s=0.05,
                                            subscribe_per_s=1000.0, route_workers=2))
    assert source.list_parts() == ["deribit-BTC.w0of2", "deribit-BTC.w1of2", "deribit-ETH.w0of2",
                                   "deribit-ETH.w1of2"]
    whole = deribit_client(sim.url, ("BTC",), max_strikes=2).start()
    parts = [source.build_part("in", name, None) for name in ("deribit-BTC.w0of2", "deribit-BTC.w1of2")]
    resumed = None
    try:
        for client in [whole] + [p.client for p in parts]:
            assert client.wait_for(lambda k: k.get("sessions_streaming", 0) >= 1, 10)
        listed = [{n: i for n, i in p.client.active.items()} for p in parts]
        assert listed[0] and listed[1] and set(listed[0]) & set(listed[1]) == {"BTC-PERPETUAL"}
        assert set(listed[0]) | set(listed[1]) == set(whole.active)
        states = [p.snapshot() for p in parts]
        expiries = {i.expiry_ms for i in whole.active.values() if i.kind == "option"}
        assert states[0] == states[1] and set(states[0]["BTC"]["expiries"]) == expiries  # both slots placed them alike
        options = [Counter(i.expiry_ms for i in insts.values() if i.kind == "option") for insts in listed]
        for slot, insts in enumerate(listed):
            assert parts[slot].client.route == (slot, 2)
            for inst in insts.values():
                if inst.expiry_ms:  # futures and options: their expiry's slot; perpetuals: both
                    assert parts[0].client.placement.slot_of("deribit", "BTC", inst.expiry_ms) == slot
        # the simulator lists max_strikes=2 strikes (4 options) in every expiry: an even split is by expiry count
        whole_counts = Counter(i.expiry_ms for i in whole.active.values() if i.kind == "option")
        assert set(whole_counts.values()) == {4}
        assert sorted([len(options[0]), len(options[1])]) == [len(expiries) // 2, (len(expiries) + 1) // 2]
        assert options[0] + options[1] == whole_counts
        # an expiry listed while both run: each slot places it from its own discovery, alike, and one reads it
        new = sim.inject("listing", underlying="BTC", new_expiry=True)
        new_expiry = parse_instrument_name(new[0])[1]
        for p in parts:
            assert p.client.wait_for(lambda _k, c=p.client: new_expiry in c.placement.placed("BTC"), 10)
        assert parts[0].snapshot() == parts[1].snapshot()
        reader = parts[parts[0].client.placement.slot_of("deribit", "BTC", new_expiry)].client
        assert reader.wait_for(lambda _k: set(new) <= set(reader.active), 10)
        assert not set(new) & set(parts[1 - reader.route[0]].client.active)
        states = [p.snapshot() for p in parts]
        listed = [dict(p.client.active) for p in parts]
        parts[1].close()
        resumed = source.build_part("in", "deribit-BTC.w1of2", states[1])
        assert resumed.client.wait_for(lambda k: k.get("sessions_streaming", 0) >= 1, 10)
        assert resumed.snapshot() == states[1] and set(resumed.client.active) == set(listed[1])
        with pytest.raises(ValueError, match="runtime.workers"):
            source.build_part("in", "deribit-BTC", None)
    finally:
        whole.stop()
        for p in parts + ([resumed] if resumed else []):
            p.close()


# ---------------------------------------------------------------- the folding queue (pure)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from connectors.venues.folding import APPENDED, DROPPED, FOLDED, OVERFLOW, FoldingQueue  # noqa: E402
from tests.helpers.config import deribit_kwargs, sim_kwargs
from tests.helpers.levels import pairs

_INSTS = ("A", "B", "C")
# bids and asks from disjoint price ranges: a book never crosses, so staleness only comes from
# gaps and errors and must match exactly too
_bid_px = st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0])
_ask_px = st.sampled_from([6.0, 7.0, 8.0, 9.0, 10.0])
_size = st.sampled_from([0.0, 0.0, 1.0, 2.5, 3.0])
_step = st.one_of(
    st.tuples(st.just("change"), st.sampled_from(_INSTS), st.lists(st.tuples(_bid_px, _size), max_size=4),
              st.lists(st.tuples(_ask_px, _size), max_size=4)),
    st.tuples(st.just("snapshot"), st.sampled_from(_INSTS), st.lists(st.tuples(_bid_px, _size), max_size=4),
              st.lists(st.tuples(_ask_px, _size), max_size=4)),
    st.tuples(st.just("gap"), st.sampled_from(_INSTS)),
    st.tuples(st.just("error"), st.sampled_from(_INSTS)),
    st.tuples(st.just("ticker"), st.sampled_from(_INSTS), st.floats(0.01, 1.0)),
    st.tuples(st.just("index"), st.floats(1.0, 1e5)),
    st.tuples(st.just("drain"), st.integers(0, 5)),
)


def _stream(steps):
    """Turn drawn steps into a realistic event stream: per instrument, changes chain on the
    last change_id, a "gap" skips one, snapshots restart the chain."""
    seq = {i: None for i in _INSTS}
    next_id = [100]
    out = []
    for step in steps:
        kind = step[0]
        if kind in ("change", "snapshot"):
            _, inst, bids, asks = step
            next_id[0] += 1
            if kind == "snapshot":
                out.append(BookUpdate("x", inst, next_id[0], next_id[0], next_id[0], None, "snapshot",
                                      tuple(dict(bids).items()), tuple(dict(asks).items())))
                seq[inst] = next_id[0]
            elif seq[inst] is not None:
                out.append(BookUpdate("x", inst, next_id[0], next_id[0], next_id[0], seq[inst], "change",
                                      tuple(bids), tuple(asks)))
                seq[inst] = next_id[0]
        elif kind == "gap":
            if seq[step[1]] is not None:
                next_id[0] += 1
                seq[step[1]] = next_id[0]  # a change that never arrives
        elif kind == "error":
            out.append(FeedError("x", "seq_gap", "test", 0, step[1]))
        elif kind == "ticker":
            out.append(Ticker("x", step[1], 0, 0, mark_px=step[2]))
        elif kind == "index":
            out.append(IndexPrice("x", "BTC", 0, 0, step[1]))
        else:
            out.append(("drain", step[1]))
    return out


def _apply(events):
    """Books the way the chain step keeps them (seq_gap FeedError = stale), plus the last
    ticker per instrument and the last index."""
    books = {i: OrderBook() for i in _INSTS}
    last = {}
    for e in events:
        if isinstance(e, BookUpdate):
            books[e.instrument].apply(e)
        elif isinstance(e, FeedError):
            books[e.instrument].stale = True
        elif isinstance(e, (Ticker, IndexPrice)):
            last[(type(e).__name__, getattr(e, "instrument", ""))] = e
    return {i: (b.bids, b.asks, b.last_seq, b.stale) for i, b in books.items()}, last


@settings(max_examples=400, deadline=None)
@given(st.lists(_step, max_size=60))
def test_folded_stream_gives_exactly_the_unfolded_books(steps):
    stream = _stream(steps)
    plain = [e for e in stream if not isinstance(e, tuple)]
    q = FoldingQueue()
    folded = []
    for e in stream:
        if isinstance(e, tuple):
            folded.extend(q.drain(e[1]))  # a consumer that reads a little, now and then
        else:
            assert q.push(e) in (APPENDED, FOLDED)
    folded.extend(q.drain(10**6))
    assert len(q) == 0
    assert _apply(folded) == _apply(plain)
    assert len(folded) <= len(plain)
    assert q.counters["pushed"] == len(plain) and q.counters["drained"] == len(folded)
    assert q.counters["folded"] == len(plain) - len(folded)
    # errors and Instrument-like events are never folded away, and keep their order
    assert [e for e in folded if isinstance(e, FeedError)] == [e for e in plain if isinstance(e, FeedError)]
    # per instrument, book events still chain exactly as the unfolded ones did at each snapshot
    for e in folded:
        if isinstance(e, BookUpdate) and e.kind == "change":
            assert e.prev_seq is not None


def test_folding_merges_changes_and_snapshots_exactly():
    q = FoldingQueue()
    q.push(BookUpdate("x", "A", 1, 1, 10, None, "snapshot", ((5.0, 1.0), (4.0, 2.0)), ((6.0, 1.0),)))
    q.push(BookUpdate("x", "A", 2, 2, 11, 10, "change", ((5.0, 0.0), (3.0, 7.0)), ()))
    q.push(BookUpdate("x", "A", 3, 3, 12, 11, "change", ((3.0, 8.0),), ((6.5, 1.0),)))
    q.push(BookUpdate("x", "B", 1, 1, 20, 19, "change", ((1.0, 1.0),), ()))
    q.push(BookUpdate("x", "B", 2, 2, 21, 20, "change", ((1.0, 0.0), (2.0, 1.0)), ()))
    (a, b) = q.drain()
    assert a.kind == "snapshot" and a.seq == 12 and a.prev_seq is None and a.ts_exchange_ms == 3
    assert pairs(a.bids) == ((4.0, 2.0), (3.0, 8.0)) and pairs(a.asks) == ((6.0, 1.0), (6.5, 1.0))
    assert b.kind == "change" and (b.prev_seq, b.seq) == (19, 21)
    assert pairs(b.bids) == ((1.0, 0.0), (2.0, 1.0))  # the delete survives: the consumer's level goes
    assert q.fold_ratio() == 2.5


def test_folding_bounds_overflow_books_and_drop_prices_counted():
    q = FoldingQueue(max_slots=2, max_levels=3)
    assert q.push(BookUpdate("x", "A", 1, 1, 1, None, "snapshot", ((1.0, 1.0),), ((2.0, 1.0),))) == APPENDED
    assert q.push(BookUpdate("x", "A", 2, 2, 2, 1, "change", ((0.5, 1.0), (0.4, 1.0)), ())) == OVERFLOW
    assert len(q) == 0  # nothing of A is kept: the caller resyncs it
    assert q.push(Ticker("x", "A", 0, 0)) == APPENDED
    assert q.push(Ticker("x", "B", 0, 0)) == APPENDED
    assert q.push(Ticker("x", "C", 0, 0)) == DROPPED
    assert q.push(BookUpdate("x", "C", 1, 1, 1, None, "snapshot")) == OVERFLOW
    assert q.push(FeedError("x", "seq_gap", "d", 0, "C")) == APPENDED  # errors are never refused
    assert q.counters["overflow"] == 2 and q.counters["dropped"] == 1 and len(q) == 3
    assert q.discard("A") == 1 and len(q) == 2


def test_a_burst_is_parsed_as_a_batch_and_gives_the_simulators_books():
    """Frames that arrive together (the snapshots after subscribing, a fast feed) go through the
    batch parser in one call, and the books they give are exactly the simulator's."""
    with Simulator(**sim_kwargs(seed=5, rate=8_000, currencies=["BTC"], min_heartbeat_s=0.2)) as fast:
        client = deribit_client(fast.url, ("BTC",), heartbeat_s=2.0).start()  # a busy box delays heartbeats
        try:
            names = fast.instrument_names("BTC")
            events: list = []
            # bursts come as the client falls behind the feed: on a loaded box the simulator's frames
            # may trickle for a while first (35 of 904 frames batch-parsed once, 2026-12-07 on a busy
            # VM), so the wait holds until 100 went through the batch parser, not a frame count
            collect(client, events, lambda ev: len(books(ev)) == len(names)
                    and sum(len(v) >= 3 for v in books(ev).values()) >= 20
                    and client.counters().get("frames_batch_parsed", 0) >= 100,
                    timeout=60.0, what="every book, moving, and 100 frames parsed in batches")
            fast.pause()
            final = fast.books()
            collect(client, events, lambda ev: all(books(ev)[n][-1].seq == final[n][2] for n in names),
                    what="every book at the simulator's last change_id")
            assert client.counters().get("frames_batch_parsed", 0) >= 100
            assert not [e for e in events if isinstance(e, FeedError)]
            check_chains(events)
            for name in names:
                book = OrderBook()
                for e in books(events)[name]:
                    assert book.apply(e) is None
                bids, asks, _ = final[name]
                assert (book.bids, book.asks) == (bids, asks), name
        finally:
            client.stop()
