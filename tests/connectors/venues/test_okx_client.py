"""OkxClient and OkxSource against the OKX simulator over real websockets (and its REST path
over real HTTP) on 127.0.0.1: discovery, snapshots then chained updates, keep-alives and seqId
resets, ping/pong, gaps, dropped connections, the 64008 notice, and a bytewax run whose SVI fits
match the simulator's true surface. Waits are on counters/conditions with timeouts, never sleeps."""

from __future__ import annotations

import math
import threading
import time
import urllib.request

import orjson
import pytest

from connectors.venues.okx import OkxClient, OkxSource, RestInstrumentsFetcher
from connectors.sim.okx import OkxSimulator
from operators.events import (BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, SmileFit, SurfacePatch,
                              Ticker)
from tests.helpers.venues import (books, check_chains, check_discovery, check_smile_against_truth, collect,
                                  inject_when_streaming, monday_noon_ms, okx_client, run_source)
from tests.helpers.config import okx_kwargs, sim_cli_defaults, sim_kwargs
from tests.helpers.levels import pairs


@pytest.fixture
def sim():
    with OkxSimulator(**sim_kwargs(seed=21, rate=600, families=["BTC-USD", "ETH-USD"])) as s:
        yield s


def test_discovery_snapshots_chained_updates_and_summary(sim):
    client = okx_client(sim.url, depth_per_conn=25).start()
    try:
        opts = sim.inst_ids("BTC-USD")
        futs = sim.inst_ids("BTC-USD", "future")
        events: list = []
        collect(client, events, lambda ev: len(books(ev)) == len(opts)
                and sum(len(v) >= 3 for v in books(ev).values()) >= 5
                and any(isinstance(e, FuturePrice) for e in ev) and any(isinstance(e, IndexPrice) for e in ev)
                and sum(isinstance(e, Ticker) for e in ev) >= len(opts), what="snapshots, updates, summary")
        insts = check_discovery(events)
        assert {i.instrument for i in insts if i.kind == "option"} == set(opts)
        assert {i.instrument for i in insts if i.kind == "future"} == set(futs) and futs
        assert all(i.expiry_ms in sim.expiries("BTC") and i.quote_currency == "BTC" and i.contract_size == 0.01
                   for i in insts if i.kind == "option")
        assert sim.counters["http_requests"] >= 2  # discovery used the REST path (OPTION and FUTURES)
        assert not [e for e in events if isinstance(e, FeedError)]
        # opt-summary: decimal vols, fwdPx as the forward; book prices in coin
        ticks = [e for e in events if isinstance(e, Ticker) and e.mark_iv is not None]
        assert ticks and all(0.05 < t.mark_iv < 5 for t in ticks)
        expiry_of = {i.instrument: i.expiry_ms for i in insts}
        for t in ticks[:20]:
            fwd = sim.forward("BTC", expiry_of[t.instrument])
            assert t.underlying_px == pytest.approx(fwd, rel=0.02)
        prices = [p for e in events if isinstance(e, BookUpdate) for p, _ in pairs(e.bids) + pairs(e.asks)]
        assert prices and all(0 < p < 1 for p in prices)  # coin premiums
        idx = [e for e in events if isinstance(e, IndexPrice)]
        assert all(e.underlying == "BTC" and e.price == pytest.approx(sim.spot("BTC"), rel=0.05) for e in idx)
        c = client.counters()
        n_conns = 1 + math.ceil(len(opts) / 25)
        assert c["connections"] == n_conns and c["connects"] == n_conns
        assert client.wait_for(lambda k: k.get("connections_subscribed", 0) == n_conns, 10)
        assert client.counters()["subscribed_channels"] == len(opts) + len(futs) + 2
        assert sim.counters["connections_open"] == n_conns
    finally:
        client.stop()
    assert not client._thread.is_alive()


def test_ping_pong_keeps_a_quiet_connection_and_silence_is_dropped():
    # A quiet market: nothing is pushed after the first frames. The server drops connections
    # silent for idle_drop_s; the client pings after 0.25 s of silence and is never dropped.
    quiet = OkxSimulator(**sim_kwargs(seed=5, rate=0, families=["ETH-USD"], summary_interval_ms=None,
                                      index_interval_ms=None, ticker_interval_ms=None, idle_drop_s=1.0))
    quiet.start()
    client = okx_client(quiet.url, ("ETH-USD",), ping_after_s=0.25, pong_timeout_s=2.0, max_expiries=1,
                         max_strikes=2, include_futures=False)
    client.start()
    try:
        assert client.wait_for(lambda k: k.get("pongs", 0) >= 8, 20), client.counters()
        c = client.counters()
        assert c["pings_sent"] >= 8 and c["connects"] == c["connections"] and c.get("reconnects", 0) == 0
        assert quiet.counters["idle_drops"] == 0 and quiet.counters["pings"] >= 8

        # a raw client that subscribes but never pings is cut off after idle_drop_s
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        with connect(quiet.url) as ws:
            ws.send('{"id":"7","op":"subscribe","args":[{"channel":"index-tickers","instId":"ETH-USD"}]}')
            got = []
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(ws.recv(timeout=10))
            assert '"event":"subscribe"' in got[0] and "idxPx" in got[1]
        assert quiet.wait_for(lambda k: k["idle_drops"] >= 1, 5)
    finally:
        client.stop()
        quiet.stop()


def test_keepalive_and_seq_reset_are_not_gaps():
    s = OkxSimulator(**sim_kwargs(seed=8, rate=40, families=["BTC-USD"], keepalive_s=600))
    s.start()
    client = okx_client(s.url, max_expiries=1, max_strikes=2, include_futures=False).start()
    try:
        events: list = []
        collect(client, events, lambda ev: len(books(ev)) == 4 and all(len(v) >= 2 for v in books(ev).values()),
                what="4 books streaming")
        target = sorted(books(events))[0]
        s.inject("keepalive", target)
        collect(client, events, lambda ev: client.counters().get("keepalives", 0) >= 1, what="keep-alive")
        s.inject("reset", target)
        assert s.wait_for(lambda k: k["resets_injected"] >= 1, 10)
        n_before = len(books(events)[target])
        collect(client, events, lambda ev: client.counters().get("seq_resets", 0) >= 1
                and len(books(ev)[target]) >= n_before + 3, what="reset and updates after it")
        bk = books(events)[target]
        keep = [e for e in bk if e.kind == "change" and e.seq == e.prev_seq and not len(e.bids) and not len(e.asks)]
        reset = [e for e in bk if e.kind == "change" and e.seq < e.prev_seq]
        assert keep and reset
        after = bk[bk.index(reset[0]) + 1]
        assert after.kind == "change" and after.prev_seq == reset[0].seq  # continues from the new seqId
        check_chains(events)
        assert not [e for e in events if isinstance(e, FeedError)]
        assert client.counters().get("gaps", 0) == 0 and client.counters().get("resyncs", 0) == 0
    finally:
        client.stop()
        s.stop()


def test_gap_gives_seq_gap_then_a_fresh_snapshot(sim):
    client = okx_client(sim.url, ("ETH-USD",), include_futures=False).start()
    try:
        target = sim.inst_ids("ETH-USD")[7]
        events, _ = inject_when_streaming(client, sim, target, "gap")

        def resynced(ev):
            gap = [i for i, e in enumerate(ev) if isinstance(e, FeedError) and e.reason == "seq_gap"
                   and e.instrument == target]
            return gap and sum(isinstance(e, BookUpdate) and e.instrument == target for e in ev[gap[0]:]) >= 3

        collect(client, events, resynced, what="seq_gap then fresh snapshot")
        gap_at = next(i for i, e in enumerate(events) if isinstance(e, FeedError) and e.reason == "seq_gap")
        first_after = next(e for e in events[gap_at:] if isinstance(e, BookUpdate) and e.instrument == target)
        assert first_after.kind == "snapshot" and first_after.prev_seq is None
        assert "prevSeqId" in events[gap_at].detail
        check_chains(events)
        c = client.counters()
        assert c["gaps"] == 1 and c["resyncs"] == 1 and c["errors.seq_gap"] == 1
        assert sim.counters["gaps_injected"] == 1 and sim.counters["unsubscribe_requests"] == 1
        # only the stale book was resubscribed: every other book still has its first snapshot only
        assert sum(e.kind == "snapshot" for e in books(events)[sim.inst_ids("ETH-USD")[0]]) == 1
    finally:
        client.stop()


def _six_books_then(client, sim, fault: str) -> tuple[list, int, int]:
    """Collect until 6 books stream, then inject `fault`: (events, connections then, index of the fault)."""
    events: list = []
    collect(client, events, lambda ev: len(books(ev)) == 6, what="6 books")
    n_conns = client.counters()["connections"]
    sim.inject(fault)
    return events, n_conns, len(events)


def test_dropped_connection_reconnects_with_fresh_snapshots(sim):
    client = okx_client(sim.url, max_expiries=1, max_strikes=3).start()
    try:
        events, n_conns, mark = _six_books_then(client, sim, "drop")
        collect(client, events, lambda ev: len({e.instrument for e in ev[mark:] if isinstance(e, BookUpdate)
                                                and e.kind == "snapshot"}) == 6, what="fresh snapshots")
        assert client.wait_for(lambda k: k.get("reconnects", 0) >= n_conns and k["connects"] >= 2 * n_conns, 10), \
            client.counters()
        assert any(isinstance(e, FeedError) and e.reason == "disconnect" for e in events[mark:])
        withheld = {e.instrument for e in events[mark:] if isinstance(e, FeedError) and e.reason == "seq_gap"}
        assert withheld == set(books(events))  # each book withheld until its fresh snapshot
        check_chains(events)
        assert sim.counters["drops_injected"] == 1
    finally:
        client.stop()


def test_notice_64008_reconnects_before_the_server_cuts(sim):
    client = okx_client(sim.url, max_expiries=1, max_strikes=3).start()
    try:
        events, n_conns, mark = _six_books_then(client, sim, "notice")  # the server would close in notice_grace_s = 60 s
        collect(client, events, lambda ev: client.counters().get("proactive_reconnects", 0) >= n_conns
                and len({e.instrument for e in ev[mark:] if isinstance(e, BookUpdate) and e.kind == "snapshot"}) == 6,
                what="proactive reconnect")
        assert client.wait_for(lambda k: k["connects"] >= 2 * n_conns, 10), client.counters()
        c = client.counters()
        assert c["notices"] >= n_conns and c["connects"] == 2 * n_conns and c.get("reconnects", 0) == 0
        assert sim.counters["notice_closes"] == 0  # we left before being cut
        check_chains(events)
        # the books of the replaced connection are withheld until their fresh snapshots
        errors = [e for e in events if isinstance(e, FeedError)]
        assert errors and all(e.reason == "seq_gap" and "notice 64008" in e.detail for e in errors)
        assert {e.instrument for e in errors} == set(books(events))
    finally:
        client.stop()


def test_listings_while_running_are_announced_subscribed_and_let_go_at_their_expiry():
    """The listing is read again every refresh_s: a new expiry's options are announced (their
    Instrument events before any of their books) and streamed, on a new connection when the
    others are full; one that expires is let go at its expiry time and unsubscribed, and
    nothing of it received afterwards is queued; a delisted one is withheld for good."""
    # no expiry today (an instId names the date only): the short-lived one listed below takes today
    plan = {"daily": 0, "weekly": 1, "monthly": 1, "quarterly": 0, "min_life_ms": 2 * 86_400_000}
    with OkxSimulator(**sim_kwargs(seed=22, rate=800, families=["BTC-USD"], plan=plan)) as sim:
        opts = sim.inst_ids("BTC-USD")
        per_conn = max(d for d in range(1, 30) if len(opts) % d == 0)  # the first discovery fills its connections
        client = okx_client(sim.url, depth_per_conn=per_conn, refresh_s=0.2).start()
        try:
            events: list = []
            collect(client, events, lambda ev: len(books(ev)) == len(opts), what="every book streaming")
            conns = client.counters()["connections"]
            new = sim.list_expiry("BTC-USD", n_strikes=2)
            short = sim.list_expiry("BTC-USD", expiry_ms=int(time.time() * 1000) + 5_000, n_strikes=1)
            assert len(new) == 4 and len(short) == 2
            mark = len(events)
            collect(client, events, lambda ev: set(new + short) <= set(books(ev[mark:])), what="the new books streaming")
            tail = events[mark:]
            first_inst = {e.instrument: i for i, e in enumerate(tail) if isinstance(e, Instrument)}
            first_book = {}
            for i, e in enumerate(tail):
                if isinstance(e, BookUpdate):
                    first_book.setdefault(e.instrument, i)
            for name in new + short:
                assert first_inst[name] < first_book[name] and tail[first_book[name]].kind == "snapshot"
            listed = {e.instrument: e for e in tail if isinstance(e, Instrument)}
            assert all(listed[n].listed_ms > 0 for n in new + short)  # listTime, the listing order
            assert client.counters()["listed_intraday"] == 6
            assert client.counters()["connections"] > conns  # the full connections got a new one
            # the short expiry goes at its expiry time: unsubscribed, and nothing received after is queued
            assert client.wait_for(lambda k: k.get("expired", 0) == 2, 10)
            gone_ms = int(time.time() * 1000)
            assert not set(short) & set(client.instruments)
            assert client.wait_for(lambda k: k.get("unsubscribe_requests", 0) >= 1, 5)
            mark = len(events)
            collect(client, events, lambda ev: len(books(ev[mark:])) >= len(opts) // 2, what="books still streaming")
            late = [e for e in events if isinstance(e, BookUpdate) and e.instrument in short and e.ts_recv_ms > gone_ms]
            assert not late
            assert set(new) <= set(client.instruments) and client.counters()["refreshes"] >= 2
            # a delisted option is let go at the next refresh: withheld downstream for good (seq_gap)
            sim.delist(new[0])
            mark = len(events)
            collect(client, events, lambda ev: any(isinstance(e, FeedError) and e.reason == "seq_gap"
                                                   and e.instrument == new[0] for e in ev[mark:]),
                    what="the delisted option withheld")
            assert new[0] not in client.instruments and client.counters()["delisted"] == 1
            assert set(new[1:]) <= set(client.instruments)
        finally:
            client.stop()


def test_books5_mode_is_all_snapshots(sim):
    client = okx_client(sim.url, ("ETH-USD",), book_channel="books5", depth_per_conn=100).start()
    try:
        events: list = []
        collect(client, events, lambda ev: sum(isinstance(e, BookUpdate) for e in ev) >= 200, what="books5")
        bk = [e for e in events if isinstance(e, BookUpdate)]
        assert all(e.kind == "snapshot" and e.prev_seq is None and len(e.bids) <= 5 and len(e.asks) <= 5 for e in bk)
        assert client.counters()["connections"] == 2 and sim.counters["books5_messages"] > 0
        assert not [e for e in events if isinstance(e, FeedError)]
    finally:
        client.stop()


def test_pluggable_fetcher_retry_and_units_check(sim):
    rest = RestInstrumentsFetcher(sim.rest_url)
    calls = []

    def flaky(inst_type, family):
        calls.append((inst_type, family))
        if len(calls) == 1:
            raise ConnectionError("instruments endpoint unreachable")
        return rest(inst_type, family)

    client = okx_client(sim.url, ("ETH-USD",), instruments_fetcher=flaky, max_expiries=1, max_strikes=1).start()
    try:
        events: list = []
        collect(client, events, lambda ev: len(books(ev)) == 2, what="books after a failed discovery")
        assert events[0].reason == "discovery_failed" and "unreachable" in events[0].detail
        assert calls[0] == ("OPTION", "ETH-USD") and ("FUTURES", "ETH-USD") in calls
    finally:
        client.stop()

    def linear(inst_type, family):  # a family whose options settle in USDC: premiums not in coin
        return [dict(r, settleCcy="USDC") if r["instType"] == "OPTION" else r for r in rest(inst_type, family)]

    client = okx_client(sim.url, ("BTC-USD",), instruments_fetcher=linear).start()
    try:
        events = []
        collect(client, events, lambda ev: any(isinstance(e, FeedError) and e.reason == "unsupported_units"
                                               for e in ev), what="unsupported_units")
        assert client.wait_for(lambda k: k.get("discoveries", 0) == 1, 10)
        assert not [e for e in events if isinstance(e, Instrument) and e.kind == "option"]
        assert "USDC" in next(e.detail for e in events if isinstance(e, FeedError))
    finally:
        client.stop()


def test_client_arguments_are_checked():
    with pytest.raises(ValueError, match="book_channel"):
        OkxClient(**okx_kwargs(book_channel="books-l2-tbt"))
    with pytest.raises(ValueError, match="fewer than 30"):
        OkxClient(**okx_kwargs(depth_per_conn=30))
    with pytest.raises(ValueError, match="ping_after_s"):
        OkxClient(**okx_kwargs(ping_after_s=30))
    with pytest.raises(ValueError, match="queue_max"):
        OkxClient(**okx_kwargs(queue_max=0))
    with pytest.raises(ValueError, match="btc-usd"):
        OkxClient(**okx_kwargs(families=["btc-usd"]))
    with pytest.raises(ValueError, match="families"):
        OkxSimulator(**sim_kwargs(families=["BTC-USDC"]))
    with pytest.raises(ValueError, match="inject"):
        OkxSimulator(**sim_kwargs(families=["BTC-USD"])).inject("explode")


def test_source_in_a_dataflow_one_partition_per_family(sim):
    source = OkxSource(**okx_kwargs(OkxSource, url=sim.url, families=["BTC-USD", "ETH-USD"], max_expiries=1,
                                    max_strikes=3, reconnect_min_s=0.05, connects_per_s=1000.0))
    assert source.list_parts() == ["okx-BTC-USD", "okx-ETH-USD"]
    out, by_type = run_source(source, "okx_source_test", what="6 listings, books and tickers of each family",
                              until=lambda out, n: min(n["Instrument"], n["BookUpdate"], n["Ticker"]) >= 2 * 6
                              and {e.underlying for e in out if isinstance(e, Instrument)} == {"BTC", "ETH"})
    assert by_type["Instrument"] >= 2 * 6 and by_type["BookUpdate"] >= 2 * 6 and by_type["Ticker"] >= 2 * 6
    assert {e.underlying for e in out if isinstance(e, Instrument)} == {"BTC", "ETH"}
    assert all(e.venue == "okx" for e in out)
    check_chains(out)
    part = source.build_part("in", "okx-ETH-USD", None)
    try:
        assert part.snapshot() is None and part.client.families == ("ETH-USD",)
    finally:
        part.close()


def test_source_on_a_cluster_splits_each_familys_expiries_evenly(sim):
    """route_workers=2: a connection per family and worker slot; both slots place the listing
    alike, read disjoint expiries that together are what one connection reads, and hold
    option counts within one expiry's worth of each other."""
    from collections import Counter

    source = OkxSource(**okx_kwargs(OkxSource, url=sim.url, families=["BTC-USD"], reconnect_min_s=0.05,
                                    connects_per_s=1000.0, route_workers=2))
    assert source.list_parts() == ["okx-BTC-USD.w0of2", "okx-BTC-USD.w1of2"]
    whole = okx_client(sim.url).start()
    parts = [source.build_part("in", name, None) for name in source.list_parts()]
    try:
        for client in [whole] + [p.client for p in parts]:
            assert client.wait_for(lambda k: k.get("discoveries", 0) >= 1, 10)
        options = [Counter(i.expiry_ms for i in c.instruments.values() if i.kind == "option")
                   for c in [whole] + [p.client for p in parts]]
        assert len(options[0]) >= 2 and options[1] + options[2] == options[0]
        assert set(options[1]).isdisjoint(options[2])
        assert abs(sum(options[1].values()) - sum(options[2].values())) <= max(options[0].values())
        assert parts[0].snapshot() == parts[1].snapshot() and set(parts[0].snapshot()["BTC"]["expiries"]) == set(options[0])
    finally:
        whole.stop()
        for p in parts:
            p.close()


@pytest.mark.slow
def test_flow_fits_match_the_true_surface():
    """OkxSource → flows.surface → SmileFits (venue okx) within 0.5 vol pts RMS of the true smile
    at the quoted strikes the quotes pin (bid-ask IV band ≤ 4 pts), and within a quarter band of it
    in the wings, for every simulated expiry of both families."""
    from flows.surface import build_flow
    from tests.helpers.sinks import CallbackSink
    from operators.state import chain
    from flows.config import load_config
    from tests.helpers.flowrun import StoppableSource, holds, run_until

    # No daily (its wings are a tick or two wide), and a pinned clock: see monday_noon_ms.
    s = OkxSimulator(**sim_kwargs(seed=11, rate=3000, families=["BTC-USD", "ETH-USD"], scale="small",
                                  now_ms=monday_noon_ms(),
                                  plan={"daily": 0, "weekly": 2, "monthly": 1, "quarterly": 1}, n_strikes=15))
    s.start()
    try:
        chain.warm_up()
        config = load_config()
        stop = threading.Event()
        source = StoppableSource(OkxSource(**okx_kwargs(OkxSource, url=s.url, families=["BTC-USD", "ETH-USD"],
                                                        connects_per_s=1000.0)), stop)
        out: list = []
        run_until(build_flow(config, source, [CallbackSink(out.append)]), stop,
                  lambda: holds(lambda: check_okx_fits(s, list(out))),
                  what="every simulated expiry of both families fitted near the true smile")
    finally:
        s.stop()
    check_okx_fits(s, out)  # the final patches too


def check_okx_fits(s, out):
    fits = [e for e in out if isinstance(e, SmileFit) and e.venue == "okx"]
    assert fits and {f.underlying for f in fits} == {"BTC", "ETH"}
    views = {}  # the latest OKX view per expiry: its fit and the quoted strikes behind it
    for patch in (e for e in out if isinstance(e, SurfacePatch) and e.venue == "okx"):
        for v in patch.expiries:
            views[(patch.underlying, v.expiry_ms)] = v
    for u in ("BTC", "ETH"):
        assert {e for (uu, e) in views if uu == u} == set(s.expiries(u)), u
        for expiry_ms in s.expiries(u):
            view = views[(u, expiry_ms)]
            assert len(view.strikes) >= 6 and view.fit.butterfly_ok
            check_smile_against_truth(view, lambda K, f: s.true_vol(u, expiry_ms, K, forward=f), (u, expiry_ms))


def test_subscribe_budget_is_respected():
    """480 (un)subscribe requests per connection per hour on OKX: here 2 on both sides. A gap's
    resync needs an unsubscribe and a subscribe; the second waits for the budget instead of
    being rejected. A raw client that ignores the budget gets error 50011."""
    from websockets.sync.client import connect

    from connectors.venues.okx import Control, parse_frame

    s = OkxSimulator(**sim_kwargs(seed=4, rate=100, families=["BTC-USD"], subscribe_per_hour=2))
    s.start()
    client = okx_client(s.url, subscribe_per_hour=2, max_expiries=1, max_strikes=1, include_futures=False).start()
    try:
        events: list = []
        collect(client, events, lambda ev: len(books(ev)) == 2 and all(len(v) >= 2 for v in books(ev).values()),
                what="2 books")
        s.inject("gap", sorted(books(events))[0])
        assert client.wait_for(lambda k: k.get("subscribe_budget_waits", 0) >= 1, 10), client.counters()
        assert s.wait_for(lambda k: k["unsubscribe_requests"] == 1, 10)  # sent before the wait began
        assert s.counters["rate_limited"] == 0 and s.counters["subscribe_requests"] == 2

        with connect(s.url) as ws:
            got = []
            for i in range(3):
                ws.send(f'{{"id":"{i}","op":"subscribe","args":[{{"channel":"index-tickers","instId":"BTC-USD"}}]}}')
            while not any(b'"50011"' in g for g in got):
                got.append(ws.recv(timeout=10, decode=False))
        ctl, err = parse_frame(next(g for g in got if b'"50011"' in g))
        assert isinstance(ctl, Control) and (ctl.kind, ctl.code, ctl.id) == ("error", "50011", "2")
        assert err.reason == "rpc_error"
        assert s.counters["rate_limited"] == 1
    finally:
        client.stop()
        s.stop()


def test_simulator_is_seeded_and_quotes_bracket_the_true_price():
    now = 1_767_225_600_000  # 2026-01-01T00:00Z
    a, b, c = (OkxSimulator(**sim_kwargs(seed=sd, families=["BTC-USD", "ETH-USD"], now_ms=now)) for sd in (3, 3, 4))
    for sim in (a, b, c):
        sim.advance(50)
    ids = a.inst_ids("BTC-USD")
    assert ids == b.inst_ids("BTC") and all(i.startswith("BTC-USD-26") for i in ids)
    assert [a.quote_levels(i) for i in ids] == [b.quote_levels(i) for i in ids]
    assert a.spot("BTC") == b.spot("BTC") != c.spot("BTC")
    assert a._instrument_rows("OPTION", "BTC-USD") == b._instrument_rows("OPTION", "BTC-USD")
    for fam in ("BTC-USD", "ETH-USD"):
        for inst in a.inst_ids(fam):
            bids, asks = a.quote_levels(inst)
            true = a.true_price_coin(inst)
            assert (not bids or bids[0] <= true + 1e-12) and true <= asks[0] + 1e-12, inst
            for p in bids + asks:  # on the tick bands: 0.0001 below 0.005, 0.0005 from there
                tick = 0.0005 if p >= 0.005 else 0.0001
                assert abs(p / tick - round(p / tick)) < 1e-6, (inst, p)
    # the true vol is the SSVI slice, exposed as raw SVI too
    e = a.expiries("ETH")[0]
    aa, bb, rho, m, sig, t = a.true_svi("ETH", e)
    for k_strike in a.strikes("ETH", e):
        k = math.log(k_strike / a.forward("ETH", e))
        w = aa + bb * (rho * (k - m) + math.sqrt((k - m) ** 2 + sig * sig))
        assert math.sqrt(w / t) == pytest.approx(a.true_vol("ETH", e, k_strike), rel=1e-12)


def test_a_pinned_clock_stamps_in_model_time():
    """With now_ms fixed, the REST clock and index rows say the model's time (its prices are
    for it), not the wall clock's (see the Deribit simulator's test of the same)."""
    now = 1_767_225_600_000  # 2026-01-01T00:00Z
    s = OkxSimulator(**sim_kwargs(seed=3, rate=50, families=["BTC-USD"], now_ms=now))
    s.start()
    try:
        def get(path):
            with urllib.request.urlopen(s.rest_url + path, timeout=10) as r:
                return orjson.loads(r.read())["data"]

        clock = int(get("/api/v5/public/time")[0]["ts"])
        index_ts = int(get("/api/v5/market/index-tickers?instId=BTC-USD")[0]["ts"])
        model_now = s.now_ms()
    finally:
        s.stop()
    assert now <= clock <= model_now and now <= index_ts <= model_now


def test_simulator_cli_runs_and_stops(capsys):
    from connectors.sim.okx import main

    assert main(["--seconds", "0.3", "--families", "ETH-USD", "--rate", "10"], defaults=sim_cli_defaults("okx")) == 0
    out = capsys.readouterr().out
    assert "okx sim: ws://127.0.0.1:" in out and "/ws/v5/public" in out and "stopped" in out
