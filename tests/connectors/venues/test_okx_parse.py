"""connectors.venues.okx parsing: instrument ids and frames, against hand-written frames in the real
OKX v5 shapes (tests/data/frames/okx_real_shapes.jsonl, from docs/protocols.md §B and the OKX docs'
push examples), every sentinel and unit convention, and hypothesis fuzzing."""

from __future__ import annotations

import calendar
import datetime
import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.venues.okx import (Control, InstIdError, default_rest_url, family_coin, format_inst_id, inst_family,
                            instrument_from_row, instruments_from_rows, parse_frame, parse_inst_id)
from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker
from tests.helpers.venues import DELETE, json_paths, load_frames
from tests.helpers.venues import frame_with as _frame_with
from tests.helpers.levels import pairs

FRAMES = load_frames("okx_real_shapes.jsonl")
TS = 1_733_990_400_999
DEC27_MS = calendar.timegm((2024, 12, 27, 8, 0, 0)) * 1000
OPT = "BTC-USD-241227-100000-C"
_DELETE = DELETE


def parse(name: str, **kw) -> list:
    return parse_frame(orjson.dumps(FRAMES[name]), TS, **kw)


def frame_with(name: str, path: tuple, value) -> bytes:
    """A copy of a real-shaped frame with one field replaced (_DELETE removes it)."""
    return _frame_with(FRAMES, name, path, value)


def only(events, cls):
    assert len(events) == 1 and isinstance(events[0], cls), events
    return events[0]


# ---------------------------------------------------------------- instrument ids


@pytest.mark.parametrize("inst_id, expected", [
    ("BTC-USD-241013-70000-P", ("BTC", calendar.timegm((2024, 10, 13, 8, 0, 0)) * 1000, 70000.0, "P")),
    (OPT, ("BTC", DEC27_MS, 100000.0, "C")),
    ("ETH-USD-250328-3500-C", ("ETH", calendar.timegm((2025, 3, 28, 8, 0, 0)) * 1000, 3500.0, "C")),
    ("XRP-USD-250328-0.55-C", ("XRP", calendar.timegm((2025, 3, 28, 8, 0, 0)) * 1000, 0.55, "C")),
    ("BTC-USD-241227", ("BTC", DEC27_MS, None, None)),
    ("BTC-USD-SWAP", ("BTC", 0, None, None)),
    ("BTC-USDT-SWAP", ("BTC", 0, None, None)),
])
def test_inst_ids_parse(inst_id, expected):
    assert parse_inst_id(inst_id) == expected


def test_expiry_is_0800_utc():
    _, expiry_ms, _, _ = parse_inst_id("BTC-USD-241013-70000-P")
    assert expiry_ms % 86_400_000 == 8 * 3_600_000


@pytest.mark.parametrize("bad", [
    "", "BTC", "BTC-USD", "BTC-USD-241313-70000-C", "BTC-USD-240230-70000-C", "BTC-USD-241013-70000-X",
    "BTC-USD-241013-0-C", "BTC-27DEC24-100000-C", "btc-usd-241013-70000-P", "BTC-USD-24101-70000-P",
    "BTC-USD-241013--70000-P", "BTC-USD-PERPETUAL",
])
def test_bad_inst_ids_name_the_input(bad):
    with pytest.raises(InstIdError) as err:
        parse_inst_id(bad)
    assert repr(bad) in str(err.value)


def test_non_string_inst_id():
    with pytest.raises(InstIdError, match="string"):
        parse_inst_id(12345)


def test_family_helpers():
    assert inst_family("BTC-USD-241013-70000-P") == "BTC-USD"
    assert inst_family("ETH-USD-SWAP") == "ETH-USD"
    assert family_coin("ETH-USD") == "ETH"
    with pytest.raises(ValueError, match="btc-usd"):
        family_coin("btc-usd")
    with pytest.raises(ValueError, match="option_type"):
        format_inst_id("BTC-USD", DEC27_MS, 100000.0, "X")


@given(st.sampled_from(["BTC-USD", "ETH-USD", "SOL-USD"]),
       st.dates(min_value=datetime.date(2000, 1, 1), max_value=datetime.date(2099, 12, 31)),
       st.one_of(st.integers(1, 10_000_000).map(float),
                 st.decimals(min_value="0.001", max_value="100000", places=3).map(float)),
       st.sampled_from(["C", "P", None, "swap"]))
def test_inst_id_round_trip(family, day, strike, cp):
    expiry_ms = calendar.timegm((day.year, day.month, day.day, 8, 0, 0)) * 1000
    if cp == "swap":
        name = format_inst_id(family, 0)
        assert parse_inst_id(name) == (family_coin(family), 0, None, None)
        return
    if strike <= 0:
        return
    name = format_inst_id(family, expiry_ms, None if cp is None else strike, cp)
    got = parse_inst_id(name)
    assert got == (family_coin(family), expiry_ms, None if cp is None else strike, cp)
    assert inst_family(name) == family


def test_default_rest_url():
    assert default_rest_url("wss://ws.okx.com:8443/ws/v5/public") == "https://www.okx.com"
    assert default_rest_url("wss://wspap.okx.com:8443/ws/v5/public") == "https://www.okx.com"
    assert default_rest_url("ws://127.0.0.1:5555/ws/v5/public") == "http://127.0.0.1:5555"


# ---------------------------------------------------------------- books


def test_books_snapshot():
    ev = only(parse("books_snapshot"), BookUpdate)
    assert (ev.venue, ev.instrument, ev.kind, ev.seq, ev.prev_seq) == ("okx", OPT, "snapshot", 123456, None)
    assert ev.ts_exchange_ms == 1733990400123 and ev.ts_recv_ms == TS
    assert pairs(ev.bids) == ((0.0415, 125.0), (0.041, 30.0), (0.0405, 200.0))  # coin prices, contracts, as sent
    assert pairs(ev.asks) == ((0.043, 71.0), (0.0435, 150.0), (0.044, 10.0))


def test_books_update_size_zero_deletes():
    ev = only(parse("books_update"), BookUpdate)
    assert (ev.kind, ev.seq, ev.prev_seq) == ("change", 123457, 123456)
    assert pairs(ev.bids) == ((0.0405, 0.0), (0.0415, 95.0))  # sz "0": delete that level
    assert pairs(ev.asks) == ((0.0425, 20.0),)


def test_keepalive_is_an_empty_change_not_a_gap():
    ev = only(parse("books_keepalive"), BookUpdate)
    assert (ev.kind, ev.seq, ev.prev_seq, pairs(ev.bids), pairs(ev.asks)) == ("change", 123457, 123457, (), ())


def test_seq_reset_below_prev_is_accepted():
    ev = only(parse("books_reset"), BookUpdate)
    assert (ev.kind, ev.seq, ev.prev_seq) == ("change", 3, 123457)


def test_books_apply_in_the_book_step():
    """Snapshot → update → keep-alive → reset → next update: the book step never sees a gap."""
    from operators.state.book import OrderBook

    book = OrderBook()
    for name in ("books_snapshot", "books_update", "books_keepalive", "books_reset"):
        assert book.apply(only(parse(name), BookUpdate)) is None, name
    nxt = orjson.loads(frame_with("books_update", ("data", 0, "prevSeqId"), 3))
    nxt["data"][0]["seqId"] = 5
    assert book.apply(only(parse_frame(orjson.dumps(nxt), TS), BookUpdate)) is None
    assert not book.stale and max(book.bids) == 0.0415 and min(book.asks) == 0.0425


def test_books5_and_bbo_are_snapshots():
    ev = only(parse("books5"), BookUpdate)
    assert (ev.kind, ev.prev_seq, ev.seq) == ("snapshot", None, 123460) and len(ev.bids) == len(ev.asks) == 5
    ev = only(parse("bbo_tbt"), BookUpdate)
    assert (ev.kind, pairs(ev.bids), pairs(ev.asks)) == ("snapshot", ((0.0415, 125.0),), ((0.043, 71.0),))


@pytest.mark.parametrize("path, value, reason", [
    (("data", 0, "seqId"), "123457", "bad_field"),
    (("data", 0, "seqId"), True, "bad_field"),
    (("data", 0, "seqId"), -5, "bad_field"),
    (("data", 0, "prevSeqId"), _DELETE, "bad_field"),
    (("data", 0, "prevSeqId"), -1, "bad_field"),
    (("data", 0, "ts"), "soon", "bad_field"),
    (("data", 0, "ts"), "１２３", "bad_field"),  # full-width digits are not a timestamp
    (("data", 0, "bids"), {"0.04": "1"}, "bad_field"),
    (("data", 0, "bids", 0), ["0.04"], "bad_field"),
    (("data", 0, "bids", 0), [0.04, 1, "0", "1"], "bad_field"),
    (("data", 0, "bids", 0, 0), "abc", "bad_field"),
    (("data", 0, "bids", 0, 0), "-0.04", "bad_price"),
    (("data", 0, "bids", 0, 0), "0", "bad_price"),
    (("data", 0, "bids", 0, 0), "NaN", "bad_price"),
    (("data", 0, "bids", 0, 1), "inf", "bad_price"),
    (("data", 0, "asks", 0, 1), "-1", "bad_price"),
    (("action",), "partial", "bad_field"),
    (("action",), _DELETE, "bad_field"),
    (("arg", "instId"), 7, "bad_field"),
    (("data", 0), "row", "bad_field"),
    (("data",), {"a": 1}, "bad_field"),
])
def test_bad_book_frames(path, value, reason):
    ev = only(parse_frame(frame_with("books_update", path, value), TS), FeedError)
    assert ev.reason == reason and ev.venue == "okx", ev
    if path[:1] != ("arg",):
        assert ev.instrument == OPT and ev.detail.startswith(f"books {OPT}: "), ev


def test_crossed_snapshot_is_passed_on_for_the_client_to_judge():
    # book integrity (gaps, crossed books) is the client's: connectors/venues/base.py
    raw = frame_with("books_snapshot", ("data", 0, "bids", 0, 0), "0.05")
    ev = only(parse_frame(raw, TS), BookUpdate)
    assert ev.kind == "snapshot" and ev.instrument == OPT and ev.bids[0][0] == 0.05


# ---------------------------------------------------------------- opt-summary, index, tickers


def test_opt_summary_documented_example_decimal_vols_and_sentinels():
    t = only(parse("opt_summary"), Ticker)
    assert t.instrument == "BTC-USD-241013-70000-P" and t.ts_exchange_ms == 1728703155650
    assert t.mark_iv == pytest.approx(0.3675503331)  # a decimal, NOT percent: no /100
    assert t.bid_iv is None  # bidVol "0" = no bid
    assert t.ask_iv == pytest.approx(1.1669998535)
    assert t.underlying_px == pytest.approx(62604.6993093463)  # fwdPx: the forward
    assert t.underlying_index == "BTC-USD"
    assert t.best_bid_px is None and t.best_ask_px is None and t.mark_px is None


def test_opt_summary_one_ticker_per_row():
    ev = parse("opt_summary_two_rows")
    assert [type(e) for e in ev] == [Ticker, Ticker]
    assert [e.instrument for e in ev] == [OPT, "BTC-USD-241227-100000-P"]
    assert (ev[0].bid_iv, ev[0].ask_iv, ev[0].mark_iv) == (0.5421, 0.5642, 0.5531)
    assert ev[1].ask_iv is None and ev[1].bid_iv == 0.5402  # askVol "0": none
    assert all(e.underlying_px == 100512.45 for e in ev)


@pytest.mark.parametrize("field, value, expect", [
    ("markVol", "", None), ("markVol", "0", None), ("fwdPx", "", None), ("fwdPx", "0", None),
    ("askVol", "0.00", None), ("bidVol", "0.5", 0.5),
])
def test_opt_summary_empty_values(field, value, expect):
    t = only(parse_frame(frame_with("opt_summary", ("data", 0, field), value), TS), Ticker)
    got = {"markVol": t.mark_iv, "fwdPx": t.underlying_px, "askVol": t.ask_iv, "bidVol": t.bid_iv}[field]
    assert got == expect


def test_opt_summary_bad_row_does_not_hide_the_others():
    frame = orjson.loads(orjson.dumps(FRAMES["opt_summary_two_rows"]))
    frame["data"][0]["markVol"] = "-0.2"
    frame["data"].insert(1, {"instId": "BTC-27DEC24-100000-C", "ts": "1"})
    ev = parse_frame(orjson.dumps(frame), TS)
    assert [type(e).__name__ for e in ev] == ["FeedError", "FeedError", "Ticker"]
    assert (ev[0].reason, ev[0].instrument) == ("bad_price", OPT)
    assert ev[1].reason == "unknown_instrument"
    assert ev[2].instrument == "BTC-USD-241227-100000-P"


def test_index_tickers():
    ev = only(parse("index_tickers"), IndexPrice)
    assert (ev.venue, ev.underlying, ev.price, ev.ts_exchange_ms) == ("okx", "BTC", 100112.45, 1733990400400)
    for value, reason in (("0", "bad_price"), ("-1", "bad_price"), ("x", "bad_field"), (None, "bad_field")):
        bad = only(parse_frame(frame_with("index_tickers", ("data", 0, "idxPx"), value), TS), FeedError)
        assert bad.reason == reason


def test_tickers_future_swap_and_option():
    f = only(parse("tickers_future"), FuturePrice)
    assert (f.instrument, f.underlying, f.expiry_ms, f.bid, f.ask, f.mark) == (
        "BTC-USD-241227", "BTC", DEC27_MS, 100530.9, 100531.2, None)
    s = only(parse("tickers_swap"), FuturePrice)
    assert (s.expiry_ms, s.bid, s.ask) == (0, 100120.1, 100120.2)
    o = only(parse("tickers_option"), Ticker)
    assert (o.best_bid_px, o.best_bid_size, o.best_ask_px, o.best_ask_size) == (None, 0.0, 0.043, 71.0)
    crossed = only(parse_frame(frame_with("tickers_future", ("data", 0, "bidPx"), "100600"), TS), FeedError)
    assert crossed.reason == "crossed_book"


# ---------------------------------------------------------------- instruments


def test_instruments_push_and_rest_body():
    i = only(parse("instruments_push"), Instrument)
    assert (i.venue, i.instrument, i.underlying, i.kind, i.expiry_ms, i.strike, i.option_type) == (
        "okx", OPT, "BTC", "option", DEC27_MS, 100000.0, "C")
    assert i.tick_size == 0.0001 and i.contract_size == 0.01 and i.quote_currency == "BTC"  # coin-settled
    opt, fut = parse("rest_instruments")
    assert opt == i
    assert (fut.kind, fut.expiry_ms, fut.strike, fut.contract_size, fut.tick_size) == (
        "future", DEC27_MS, None, 100.0, 0.1)
    err = only(parse("rest_error"), FeedError)
    assert err.reason == "rpc_error" and "51000" in err.detail


def test_instrument_rows_validation():
    row = FRAMES["instruments_push"]["data"][0]
    assert instrument_from_row({**row, "state": "expired"}) is None
    assert instrument_from_row({**row, "ctMult": "10"}).contract_size == pytest.approx(0.1)
    assert instrument_from_row({**row, "expTime": ""}).expiry_ms == DEC27_MS  # from the id
    ev = instruments_from_rows([{**row, "stk": "90000"}, {**row, "optType": "P"}, {**row, "instType": "SPOT"},
                                {**row, "ctVal": "0"}, "x", row])
    assert [getattr(e, "reason", "ok") for e in ev] == ["bad_field", "bad_field", "unknown_instrument",
                                                        "bad_field", "bad_field", "ok"]
    assert only(instruments_from_rows("nope"), FeedError).reason == "bad_field"


# ---------------------------------------------------------------- session frames


def test_session_frames():
    ack = only(parse("subscribe_ack"), Control)
    assert (ack.kind, ack.id, ack.arg, ack.conn_id) == ("subscribe", "1512", {"channel": "opt-summary",
                                                                              "instFamily": "BTC-USD"}, "a4d3ae55")
    assert only(parse("unsubscribe_ack"), Control).kind == "unsubscribe"
    ctl, err = parse("error")
    assert (ctl.kind, ctl.code, ctl.id) == ("error", "60012", "1512")
    assert err.reason == "rpc_error" and "60012" in err.detail and "1512" in err.detail
    notice = only(parse("notice"), Control)
    assert (notice.kind, notice.code) == ("notice", "64008")
    assert only(parse("channel_conn_count"), Control).kind == "channel-conn-count"
    assert parse_frame(b"pong", TS) == [Control("pong")] == parse_frame("pong", TS)


@pytest.mark.parametrize("raw, reason", [
    (b"", "malformed_json"), (b"ping", "malformed_json"), (b"{", "malformed_json"), (b"[1,2]", "malformed_json"),
    (b'{"event":"bogus"}', "unknown_message"), (b'{"foo":1}', "unknown_message"),
    (b'{"arg":{"channel":"trades","instId":"BTC-USD-SWAP"},"data":[]}', "unknown_channel"),
    (b'{"arg":{"channel":7},"data":[]}', "bad_field"),
    (b'{"arg":{"channel":"books","instId":"X"},"data":null}', "bad_field"),
    (12345, "malformed_json"),
])
def test_bad_frames(raw, reason):
    assert only(parse_frame(raw, TS), FeedError).reason == reason


def test_oversized():
    ev = only(parse_frame(orjson.dumps(FRAMES["books_snapshot"]), TS, max_bytes=100), FeedError)
    assert ev.reason == "oversized" and "max_frame_bytes=100" in ev.detail


# ---------------------------------------------------------------- fuzz

ALL = (BookUpdate, Ticker, IndexPrice, FuturePrice, Instrument, FeedError, Control)


def check_events(events):
    # [] is legitimate: a push with an empty data list, or only expired instrument rows
    assert isinstance(events, list)
    for e in events:
        assert isinstance(e, ALL), e
        if isinstance(e, FeedError):
            assert e.reason and isinstance(e.detail, str)
        if isinstance(e, BookUpdate):
            assert all(p > 0 and s >= 0 and math.isfinite(p) and math.isfinite(s) for p, s in pairs(e.bids) + pairs(e.asks))
        if isinstance(e, Ticker):
            for iv in (e.bid_iv, e.ask_iv, e.mark_iv):
                assert iv is None or (iv > 0 and math.isfinite(iv))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_bytes_never_raise(raw):
    check_events(parse_frame(raw, TS))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_json_never_raise(value):
    check_events(parse_frame(json.dumps(value).encode(), TS))


MUTABLE = [(name, p) for name, frame in FRAMES.items() for p in json_paths(frame) if p]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MUTABLE), json_values | st.just(_DELETE))
def test_fuzz_mutated_real_frames(where, value):
    name, path = where
    events = parse_frame(frame_with(name, path, value), TS)
    check_events(events)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(list(FRAMES)), min_size=1, max_size=8), st.integers(0, 7))
def test_fuzz_counts_bad_frames_by_reason(names, corrupt_every):
    """A stream of real frames with some corrupted: each corrupted frame gives exactly one
    FeedError with a reason, the clean ones give no FeedError at all (rest_error and error are
    errors by design)."""
    import collections

    reasons = collections.Counter()
    n_bad = 0
    for i, name in enumerate(names):
        raw = orjson.dumps(FRAMES[name])
        corrupt = corrupt_every and i % corrupt_every == 0
        if corrupt:
            raw = raw[: len(raw) // 2]  # truncated in transit
            n_bad += 1
        errors = [e for e in parse_frame(raw, TS) if isinstance(e, FeedError)]
        if corrupt:
            assert len(errors) == 1 and errors[0].reason == "malformed_json"
        elif name not in ("rest_error", "error"):
            assert errors == [], (name, errors)
        reasons.update(e.reason for e in errors)
    assert reasons["malformed_json"] == n_bad


def test_every_real_frame_parses_cleanly():
    for name, frame in FRAMES.items():
        events = parse_frame(orjson.dumps(frame), TS)
        errors = [e for e in events if isinstance(e, FeedError)]
        assert (errors != []) == (name in ("rest_error", "error")), (name, events)
