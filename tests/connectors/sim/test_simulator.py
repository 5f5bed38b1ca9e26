"""connectors.sim (the Deribit simulator, its market, calendar, ticks and command line): its
frames have the real Deribit shapes (tests/data/frames/) and parse with
the same parser as the real exchange; its true surface is arbitrage-free; its books bracket the
true price; it is deterministic given the seed. Sockets are real (127.0.0.1, ephemeral port)."""

from __future__ import annotations

import calendar
import contextlib
import math
from datetime import datetime, timezone

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from connectors.venues.deribit import Control, parse_frame, parse_instrument_name
from connectors.sim.deribit import Simulator, main
from connectors.sim.deribit_names import OPT_TICK_ABOVE, OPT_TICK_LARGE, OPT_TICK_SMALL, OPTION_TICKS
from connectors.sim.expiries import deribit_expiries
from connectors.sim.implied import implied_vol
from connectors.sim.market import MODELS
from operators.kernels.black import black_price
from tests.helpers.data import FRAMES_DIR
from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Ticker
from tests.helpers.config import sim_cli_defaults, sim_kwargs

FRAMES = {row["name"]: row["frame"] for row in
          map(orjson.loads, (FRAMES_DIR / "deribit_real_shapes.jsonl").read_bytes().splitlines())}
NOW_MS = calendar.timegm((2024, 12, 11, 9, 30, 0)) * 1000  # a Wednesday


class RawClient:
    """A bare JSON-RPC websocket client: keeps every frame it reads, in order."""

    def __init__(self, url: str):
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(url, max_size=64 << 20, max_queue=None, proxy=None))
        self.frames: list[dict] = []
        self.raw: list[bytes] = []
        self.next_id = 1

    def read(self, timeout: float = 5.0) -> dict:
        raw = self.ws.recv(timeout=timeout, decode=False)
        self.raw.append(raw)
        msg = orjson.loads(raw)
        self.frames.append(msg)
        return msg

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        req_id = self.next_id
        self.next_id += 1
        self.ws.send(orjson.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}),
                     text=True)
        while True:
            msg = self.read(timeout)
            if msg.get("id") == req_id:
                return msg

    def read_until(self, predicate, timeout: float = 10.0) -> dict:
        while True:
            msg = self.read(timeout)
            if predicate(msg):
                return msg

    def close(self):
        self._stack.close()


@pytest.fixture
def sim():
    with Simulator(**sim_kwargs(seed=11, rate=400, currencies=["BTC", "ETH"], min_heartbeat_s=0.2)) as s:
        yield s


def data_keys(frame: dict) -> set:
    return set(frame["params"]["data"])


# ---------------------------------------------------------------- wire shapes


def test_instruments_have_the_real_fields(sim):
    c = RawClient(sim.url)
    try:
        opts = c.call("public/get_instruments", {"currency": "BTC", "kind": "option", "expired": False})
        futs = c.call("public/get_instruments", {"currency": "BTC", "kind": "future", "expired": False})
    finally:
        c.close()
    assert set(opts) == set(FRAMES["get_instruments_option"])  # envelope: usIn, usOut, usDiff, testnet
    real_opt = FRAMES["get_instruments_option"]["result"][0]
    real_fut = FRAMES["get_instruments_future"]["result"][0]
    assert opts["result"] and all(set(r) == set(real_opt) for r in opts["result"])
    assert futs["result"] and all(set(r) == set(real_fut) for r in futs["result"])
    names = {r["instrument_name"] for r in opts["result"]}
    assert names == set(sim.instrument_names("BTC"))
    for r in opts["result"]:
        underlying, expiry_ms, strike, cp = parse_instrument_name(r["instrument_name"])
        assert r["expiration_timestamp"] == expiry_ms and r["strike"] == strike
        assert r["option_type"] == {"C": "call", "P": "put"}[cp] and r["quote_currency"] == "BTC"
    perp = [r for r in futs["result"] if r["instrument_name"] == "BTC-PERPETUAL"]
    assert perp and perp[0]["settlement_period"] == "perpetual"
    events = parse_frame(orjson.dumps(opts), 1)
    assert isinstance(events[-1], Control) and len(events) == 1 + len(opts["result"])


def test_subscribed_frames_have_the_real_shapes_and_parse(sim):
    inst = sim.instrument_names("BTC")[len(sim.instrument_names("BTC")) // 2]
    future = sim.instrument_names("BTC", "future")[0]
    channels = [f"book.{inst}.100ms", f"ticker.{inst}.100ms", f"ticker.{future}.100ms",
                "ticker.BTC-PERPETUAL.100ms", "deribit_price_index.btc_usd", "book.NOPE-1JAN25-1-C.100ms"]
    c = RawClient(sim.url)
    try:
        sub = c.call("public/subscribe", {"channels": channels})
        assert set(sub) == set(FRAMES["subscribe_response"])
        assert sub["result"] == channels[:-1]  # unknown channels are left out
        seen: dict[str, list[dict]] = {}

        for f in c.frames:  # the snapshots and tickers sent with the subscribe response
            if f.get("method") == "subscription":
                seen.setdefault(f["params"]["channel"], []).append(f)

        def enough(msg):
            if msg.get("method") == "subscription":
                seen.setdefault(msg["params"]["channel"], []).append(msg)
            return len(seen.get(channels[0], [])) >= 4 and all(ch in seen for ch in channels[1:5])

        c.read_until(enough, timeout=15)
    finally:
        c.close()
    book = seen[channels[0]]
    snap, changes = book[0], book[1:]
    assert data_keys(snap) == data_keys(FRAMES["book_snapshot"])
    assert snap["params"]["data"]["type"] == "snapshot"
    for ch in changes:
        assert data_keys(ch) == data_keys(FRAMES["book_change"]) and ch["params"]["data"]["type"] == "change"
    # change_id chaining: each change's prev_change_id is the previous message's change_id
    ids = [b["params"]["data"]["change_id"] for b in book]
    prevs = [b["params"]["data"]["prev_change_id"] for b in changes]
    assert prevs == ids[:-1] and ids == sorted(ids)
    for level in snap["params"]["data"]["bids"] + snap["params"]["data"]["asks"]:
        assert level[0] == "new" and 0 < level[1] < 1 and level[2] > 0  # coin prices
    for ch in changes:
        for level in ch["params"]["data"]["bids"] + ch["params"]["data"]["asks"]:
            assert level[0] in ("new", "change", "delete")

    tick = seen[channels[1]][0]["params"]["data"]
    real = FRAMES["ticker_option"]["params"]["data"]
    assert set(tick) == set(real)
    assert set(tick["greeks"]) == set(real["greeks"]) and set(tick["stats"]) == set(real["stats"])
    assert tick["mark_iv"] > 5  # percent, not decimal
    assert 0 < tick["mark_price"] < 1 and tick["underlying_price"] > 1000 and tick["interest_rate"] == 0
    assert data_keys(seen[channels[2]][0]) == data_keys(FRAMES["ticker_future"])
    assert data_keys(seen[channels[3]][0]) == data_keys(FRAMES["ticker_perpetual"])
    assert data_keys(seen[channels[4]][0]) == data_keys(FRAMES["price_index"])

    # the same parser as the real exchange reads every frame, with no errors
    events = [e for raw in c.raw for e in parse_frame(raw, 1)]
    assert not [e for e in events if isinstance(e, FeedError)]
    kinds = {type(e) for e in events}
    assert {BookUpdate, Ticker, FuturePrice, IndexPrice} <= kinds


def test_a_pinned_clock_stamps_frames_in_model_time():
    """With now_ms fixed, a started simulator prices for its model clock, and its frames (and
    public/get_time) must say that time: a wall-clock stamp put a client's time to expiry days
    away from the one the prices were made for (fits 6 vol points under the true smile)."""
    start = NOW_MS  # a Wednesday two years back: far from the wall clock
    s = Simulator(**sim_kwargs(seed=3, rate=200, currencies=["BTC"], now_ms=start, min_heartbeat_s=0.2))
    s.start()
    c = RawClient(s.url)
    try:
        inst = s.instrument_names("BTC")[0]
        c.call("public/subscribe", {"channels": [f"book.{inst}.100ms", "deribit_price_index.btc_usd"]})
        c.read_until(lambda m: m.get("method") == "subscription" and m["params"]["channel"].startswith("deribit")
                     and m["params"]["data"]["timestamp"] > start)  # one sent after a tick
        model_now = s.now_ms()
        clock = c.call("public/get_time")["result"]
    finally:
        c.close()
        s.stop()
    stamps = [f["params"]["data"]["timestamp"] for f in c.frames if f.get("method") == "subscription"]
    assert stamps and all(start <= ts <= model_now for ts in stamps)
    assert model_now <= clock <= model_now + 60_000  # the model's time, not 2026's wall clock


def test_heartbeats_test_requests_and_closing_an_unanswering_client(sim):
    c = RawClient(sim.url)
    try:
        bad = c.call("public/set_heartbeat", {"interval": 0.1})
        assert bad["error"]["code"] == -32602 and bad["error"]["data"]["param"] == "interval"
        assert c.call("public/set_heartbeat", {"interval": 0.3})["result"] == "ok"
        hb = c.read_until(lambda m: m.get("method") == "heartbeat" and m["params"]["type"] == "heartbeat")
        assert hb == FRAMES["heartbeat"]
        tr = c.read_until(lambda m: m.get("method") == "heartbeat" and m["params"]["type"] == "test_request")
        assert tr == FRAMES["test_request"]
        ok = c.call("public/test", {})
        assert set(ok) == set(FRAMES["public_test_response"]) and "version" in ok["result"]
        assert sim.wait_for(lambda k: k["test_answers"] >= 1, 5)
        # now stop answering: the server must close the session
        with pytest.raises(ConnectionClosed):
            while True:
                c.read(timeout=10)
    finally:
        c.close()
    assert sim.wait_for(lambda k: k["heartbeat_closes"] >= 1, 5)


def test_rpc_errors_look_like_deribit(sim):
    c = RawClient(sim.url)
    try:
        err = c.call("public/no_such_method", {})
        assert set(err) == set(FRAMES["error_method_not_found"])
        assert err["error"] == {"message": "Method not found", "code": -32601}
        err = c.call("public/get_instruments", {"currency": "DOGE"})
        assert err["error"]["code"] == -32602
        t = c.call("public/get_time")["result"]
        assert isinstance(t, int) and t > 1_600_000_000_000
        idx = c.call("public/get_index_price", {"index_name": "eth_usd"})["result"]
        assert idx["index_price"] > 0
        assert c.call("public/get_instruments", {"currency": "BTC", "expired": True})["result"] == []
        c.ws.send(b"{not json", text=True)
        assert c.read()["error"]["code"] == -32700
        sim.inject("rate_limit")
        limited = c.call("public/get_time")
        assert limited["error"] == FRAMES["error_too_many_requests"]["error"]
        with pytest.raises(ConnectionClosed):
            c.read(timeout=5)
    finally:
        c.close()


def test_unsubscribe_stops_the_channel(sim):
    c = RawClient(sim.url)
    try:
        ch = "deribit_price_index.eth_usd"
        c.call("public/subscribe", {"channels": [ch]})
        c.read_until(lambda m: m.get("params", {}).get("channel") == ch)
        assert c.call("public/unsubscribe", {"channels": [ch]})["result"] == [ch]
        # after the response no frame of that channel arrives; get_time responses still do
        n = len(c.frames)
        for _ in range(3):
            c.call("public/get_time")
        assert not [f for f in c.frames[n:] if f.get("params", {}).get("channel") == ch]
    finally:
        c.close()


def test_gap_injection_skips_a_change_id(sim):
    inst = sim.instrument_names("ETH")[5]
    ch = f"book.{inst}.100ms"
    c = RawClient(sim.url)
    try:
        c.call("public/subscribe", {"channels": [ch]})
        snap = c.read_until(lambda m: m.get("params", {}).get("channel") == ch)
        last = snap["params"]["data"]["change_id"]
        sim.inject("gap", inst)
        while True:
            data = c.read_until(lambda m: m.get("params", {}).get("channel") == ch)["params"]["data"]
            if data["prev_change_id"] != last:
                break
            last = data["change_id"]
        assert data["prev_change_id"] > last  # a change_id the client never saw
    finally:
        c.close()
    assert sim.counters["gaps_injected"] == 1


def test_cli_main_runs_and_stops(capsys):
    assert main(["--port", "0", "--seconds", "0.3", "--currencies", "BTC", "--seed", "3"],
                defaults=sim_cli_defaults("deribit")) == 0
    out = capsys.readouterr().out
    assert "ws://127.0.0.1:" in out and "stopped" in out


# ---------------------------------------------------------------- the true market


def test_expiries_are_deribit_like():
    exps = deribit_expiries(NOW_MS, daily=2, weekly=2, monthly=3, quarterly=2)
    dts = [datetime.fromtimestamp(e / 1000, tz=timezone.utc) for e in exps]
    assert all((d.hour, d.minute) == (8, 0) for d in dts) and exps == sorted(set(exps))
    assert len(exps) == 9 and exps[0] > NOW_MS
    assert [d.day for d in dts[:2]] == [12, 13]  # Thursday 12th and Friday 13th (dailies)
    assert sum(d.weekday() == 4 for d in dts) >= 7
    assert dts[-1].month in (3, 6, 9, 12)


def test_small_and_seed_scales():
    small = Simulator(**sim_kwargs(seed=1, scale="small", currencies=["BTC"], now_ms=NOW_MS))
    assert len(small.expiries("BTC")) == 2
    assert len(small.instrument_names("BTC")) == 2 * 12 * 2
    seed = Simulator(**sim_kwargs(seed=1, scale="seed", now_ms=NOW_MS))
    n_btc, n_eth = len(seed.instrument_names("BTC")), len(seed.instrument_names("ETH"))
    assert 3_500 <= n_btc <= 4_500 and 1_700 <= n_eth <= 2_300
    for u in ("BTC", "ETH"):
        for e in seed.expiries(u):
            ks = seed.strikes(u, e)
            assert min(ks) > 0 and ks == sorted(set(ks))
            assert min(ks) < seed.forward(u, e) < max(ks)
    custom = Simulator(**sim_kwargs(seed=1, currencies=["ETH"], n_expiries=3, n_strikes=7, now_ms=NOW_MS,
                                    plan={"daily": 1, "weekly": 2, "monthly": 1, "quarterly": 0}))
    assert len(custom.expiries("ETH")) == 3 and len(custom.instrument_names("ETH")) == 3 * 7 * 2


def test_raw_svi_matches_the_true_vol():
    sim = Simulator(**sim_kwargs(seed=2, scale="seed", now_ms=NOW_MS))
    for u in ("BTC", "ETH"):
        for e in sim.expiries(u):
            a, b, rho, m, sig, t = sim.true_svi(u, e)
            fwd = sim.forward(u, e)
            for k_strike in sim.strikes(u, e)[::20]:
                k = math.log(k_strike / fwd)
                w = a + b * (rho * (k - m) + math.sqrt((k - m) ** 2 + sig ** 2))
                assert math.sqrt(w / t) == pytest.approx(sim.true_vol(u, e, k_strike), rel=1e-12)


def _g(a, b, rho, m, sig, k):
    """Gatheral's butterfly density factor g(k) for raw SVI, written out plainly."""
    x = k - m
    r = np.sqrt(x * x + sig * sig)
    w = a + b * (rho * x + r)
    w1 = b * (rho + x / r)
    w2 = b * sig * sig / r ** 3
    return (1 - k * w1 / (2 * w)) ** 2 - (w1 ** 2 / 4) * (1 / w + 0.25) + w2 / 2


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 300), st.sampled_from(["BTC", "ETH"]))
def test_true_surface_is_free_of_butterfly_and_calendar_arbitrage(seed, ticks, u):
    sim = Simulator(**sim_kwargs(seed=seed, scale="small", currencies=[u], now_ms=NOW_MS,
                                 plan={"daily": 2, "weekly": 2, "monthly": 3, "quarterly": 2}))
    sim.advance(ticks)
    k = np.linspace(-3, 3, 601)
    prev_w = None
    for e in sim.expiries(u):
        a, b, rho, m, sig, t = sim.true_svi(u, e)
        assert b >= 0 and abs(rho) < 1 and sig > 0 and a + b * sig * math.sqrt(1 - rho * rho) >= 0
        assert _g(a, b, rho, m, sig, k).min() >= -1e-12
        w = a + b * (rho * (k - m) + np.sqrt((k - m) ** 2 + sig ** 2))
        if prev_w is not None:
            assert (w - prev_w).min() >= -1e-12  # calendar: total variance grows with T at fixed k
        prev_w = w
    model = MODELS[u]
    assert model.eta * (1 + abs(model.rho)) <= 2


def test_books_bracket_the_true_price_on_ticks():
    sim = Simulator(**sim_kwargs(seed=5, scale="seed", now_ms=NOW_MS))
    sim.advance(3)
    for u in ("BTC", "ETH"):
        for name in sim.instrument_names(u)[::7]:
            bids, asks = sim.quote_levels(name)
            truth = sim.true_price_coin(name)
            assert asks and asks[0] >= truth
            if bids:
                assert bids[0] <= truth < asks[0]
                assert bids == sorted(bids, reverse=True) and len(set(bids)) == len(bids)
            assert asks == sorted(asks) and len(set(asks)) == len(asks)
            for px in bids + asks:
                tick = OPT_TICK_LARGE if px >= OPT_TICK_ABOVE else OPT_TICK_SMALL
                assert abs(px / tick - round(px / tick)) < 1e-6, (name, px)
            assert len(asks) == sim.depth and len(bids) <= sim.depth


def test_prices_are_black76_at_the_true_vol_in_coin():
    sim = Simulator(**sim_kwargs(seed=9, scale="small", currencies=["BTC"], now_ms=NOW_MS))
    e = sim.expiries("BTC")[1]
    fwd = sim.forward("BTC", e)
    t = (e - sim.now_ms()) / (365 * 86_400_000)
    for name in sim.instrument_names("BTC"):
        u, expiry, strike, cp = parse_instrument_name(name)
        if expiry != e:
            continue
        vol = sim.true_vol("BTC", e, strike)
        usd = float(black_price(fwd, strike, t, vol, cp == "C"))
        assert sim.true_price_coin(name) == pytest.approx(usd / fwd, rel=1e-9, abs=1e-15)


@settings(max_examples=300)
@given(st.floats(1e-6, 5.0))
def test_tick_rounding(p):
    lo, hi = OPTION_TICKS.floor_one(p), OPTION_TICKS.ceil_one(p)
    assert lo <= p + 1e-12 and hi >= p - 1e-12
    assert hi - lo <= OPT_TICK_LARGE + 1e-12
    for px in (lo, hi):
        if px > 0:
            tick = OPT_TICK_LARGE if px >= OPT_TICK_ABOVE else OPT_TICK_SMALL
            assert abs(px / tick - round(px / tick)) < 1e-6


@settings(max_examples=200)
@given(st.floats(0.05, 3.0), st.floats(0.5, 2.0), st.floats(1 / 365, 2.0), st.booleans())
def test_ticker_iv_inverts_black(vol, moneyness, t, is_call):
    fwd, strike = 100_000.0, 100_000.0 * moneyness
    price = float(black_price(fwd, strike, t, vol, is_call))
    intrinsic = max(fwd - strike, 0) if is_call else max(strike - fwd, 0)
    if price - intrinsic < 1e-6 * fwd:
        return  # no time value left to invert
    assert implied_vol(price, fwd, strike, t, is_call) == pytest.approx(vol, abs=1e-6)


def test_deterministic_given_the_seed():
    a = Simulator(**sim_kwargs(seed=42, scale="small", now_ms=NOW_MS))
    b = Simulator(**sim_kwargs(seed=42, scale="small", now_ms=NOW_MS))
    c = Simulator(**sim_kwargs(seed=43, scale="small", now_ms=NOW_MS))
    for s in (a, b, c):
        s.advance(500)
    assert a.spot("BTC") == b.spot("BTC") and a.spot("ETH") == b.spot("ETH")
    assert a.spot("BTC") != c.spot("BTC")
    assert a.spot("BTC") != MODELS["BTC"].spot_usd  # it moved
    name = a.instrument_names("BTC")[3]
    assert a.quote_levels(name) == b.quote_levels(name)
    e = a.expiries("ETH")[0]
    assert a.true_svi("ETH", e) == b.true_svi("ETH", e)
    # message generation (amounts, change ids) is seeded too
    ts = 1
    assert a._snapshot_data(name, ts) == b._snapshot_data(name, ts)
    assert [a._change_data(name, ts) for _ in range(5)] == [b._change_data(name, ts) for _ in range(5)]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="scale"):
        Simulator(**sim_kwargs(scale="huge"))
    with pytest.raises(ValueError, match="DOGE"):
        Simulator(**sim_kwargs(currencies=["DOGE"]))
    sim = Simulator(**sim_kwargs(scale="small", currencies=["BTC"], now_ms=NOW_MS))
    with pytest.raises(ValueError, match="inject"):
        sim.inject("meteor")
    with pytest.raises(ValueError, match="ETH"):
        sim.spot("ETH")


@settings(max_examples=100)
@given(st.lists(st.floats(0.0, 3.0), min_size=1, max_size=30))
def test_vector_ticks_match_the_scalar_rules(prices):
    arr = np.array(prices)
    assert OPTION_TICKS.floor(arr).tolist() == [OPTION_TICKS.floor_one(p) for p in prices]
    assert OPTION_TICKS.ceil(arr).tolist() == [OPTION_TICKS.ceil_one(p) for p in prices]


# ---------------------------------------------------------------- faults

def _fault_frames(seed):
    """Frames of a not-started simulator with the same faults injected: the scenario's bytes."""
    s = Simulator(**sim_kwargs(seed=seed, currencies=["BTC"], now_ms=NOW_MS))
    names = s.instrument_names("BTC")
    out = []
    for inst in names[:3]:
        out.append(s.offline_initial_frame(f"book.{inst}.100ms", NOW_MS))
    s.inject("malformed", names[0])  # variant drawn from the seeded fault generator
    s.inject("crossed", names[1])
    s.inject("bad_price", names[2], value="NaN")
    s.advance(3)
    for inst in names[:3]:
        out.append(s.offline_frame(f"book.{inst}.100ms", NOW_MS + 300))
    return out, s


def test_faults_replay_identically_given_the_seed():
    a, sim_a = _fault_frames(4)
    b, _ = _fault_frames(4)
    assert a == b
    assert sim_a.counters["faults_applied"] == 3 and [f["kind"] for f in sim_a.fault_log] == [
        "malformed", "crossed", "bad_price"]
    crossed = orjson.loads(a[4])["params"]["data"]
    _, asks, _ = sim_a.book(crossed["instrument_name"])
    assert max(px for _, px, _ in crossed["bids"]) > min(asks)  # a bid above the book's best ask
    assert b"NaN" in a[5] and parse_frame(a[5], 1)[0].reason == "malformed_json"
    variant = sim_a.fault_log[0].get("variant")
    first = parse_frame(a[3], 1)[0]
    assert isinstance(first, FeedError) and first.reason in ("malformed_json", "bad_field"), variant


def test_fault_arguments_are_checked():
    s = Simulator(**sim_kwargs(seed=1, currencies=["BTC"]))
    with pytest.raises(ValueError, match="known faults"):
        s.inject("meteor")
    with pytest.raises(ValueError, match="unknown instrument"):
        s.inject("gap", "BTC-1JAN20-1-C")
    with pytest.raises(ValueError, match="known faults"):
        Simulator(**sim_kwargs(seed=1, currencies=["BTC"], faults=[{"at_s": 1, "kind": "meteor"}]))


def test_listing_and_expiry_change_get_instruments_and_notify(sim):
    c = RawClient(sim.url)
    try:
        c.call("public/subscribe", {"channels": ["instrument.state.option.btc"]})
        new = sim.inject("listing", underlying="BTC", new_expiry=True, n_strikes=2)
        notes = []
        c.read_until(lambda m: m.get("method") == "subscription" and m["params"]["channel"].startswith(
            "instrument.state") and notes.append(m["params"]["data"]) is None and len(notes) == len(new))
        assert {n["instrument_name"] for n in notes} == set(new) and {n["state"] for n in notes} == {"created"}
        listed = {r["instrument_name"] for r in c.call("public/get_instruments", {"currency": "BTC",
                                                                                   "kind": "option"})["result"]}
        assert set(new) <= listed
        gone = sim.inject("expire", new[0])
        note = c.read_until(lambda m: m.get("method") == "subscription")["params"]["data"]
        assert note == {**note, "instrument_name": new[0], "state": "settled"}
        listed = {r["instrument_name"] for r in c.call("public/get_instruments", {"currency": "BTC",
                                                                                   "kind": "option"})["result"]}
        assert gone == [new[0]] and new[0] not in listed and new[1] in listed
        sub = c.call("public/subscribe", {"channels": [f"book.{new[0]}.100ms"]})
        assert sub["result"] == []  # a delisted channel cannot be subscribed
    finally:
        c.close()


def test_cli_runs_a_fault_schedule(capsys):
    faults = '[{"at_s": 0, "kind": "gap"}, {"at_s": 0.1, "kind": "heartbeat_stop"}]'
    assert main(["--seconds", "0.4", "--currencies", "BTC", "--faults", faults], defaults=sim_cli_defaults("deribit")) == 0
    out = capsys.readouterr().out
    assert "'faults_injected': 2" in out and "'faults.gap': 1" in out
    with pytest.raises(SystemExit):
        main(["--seconds", "0.1", "--faults", "[1, 2]"], defaults=sim_cli_defaults("deribit"))
