"""The batch decoder of Deribit book levels (connectors/venues/deribit/levels.py) and the batch
parser built on it (parse.py parse_frames), by property: the scanner reads a level list exactly as
orjson plus the careful parser's rules do, or declines it; parse_frames gives the events
parse_frame gives frame by frame, for real frames, mutated frames and any mix of them."""

from __future__ import annotations

import json

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.venues.deribit import levels as scan
from connectors.venues.deribit.parse import (BATCH_MIN, MAX_AMOUNT, MAX_PRICE, parse_columns, parse_frame,
                                            parse_frames)
from operators.events import BookBatch, BookUpdate, FeedError, FuturePrice, IndexPrice, Ticker, expand_books
from tests.helpers.venues import load_frames, mutate_json

FRAMES = load_frames("deribit_real_shapes.jsonl")
TS = 1_733_990_400_999
BOOKS = sorted(n for n in FRAMES if n.startswith("book"))


def reference(raw: bytes, snapshot: bool):
    """What the careful parser's rules make of one level list: [(price, size)], or None (refused)."""
    try:
        levels = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(levels) is not list:
        return None
    out = []
    for lvl in levels:
        if type(lvl) is not list or len(lvl) not in (2, 3):
            return None
        delete = False
        if len(lvl) == 3:
            action, px, amt = lvl
            if action not in ("new", "change", "delete") or (snapshot and action != "new"):
                return None
            delete = action == "delete"
        else:
            px, amt = lvl
        if not all(type(v) in (int, float) for v in (px, amt)) or not (0 < px < MAX_PRICE and 0 <= amt < MAX_AMOUNT):
            return None
        out.append((float(px), 0.0 if delete else float(amt)))
    return out


def run_scan(lists: list[bytes], snapshot: list[bool]):
    buf = np.frombuffer(b"".join(lists), np.uint8)
    ends = np.cumsum([len(x) for x in lists]).astype(np.int64)
    starts = ends - np.array([len(x) for x in lists], np.int64)
    room = scan.levels_room(buf.size)
    px, amt, counts = np.empty(room), np.empty(room), np.empty(len(lists), np.int64)
    modes = np.array([scan.SNAPSHOT if s else scan.CHANGE for s in snapshot], np.int64)
    k = scan.scan_levels(buf, starts, ends, modes, scan.POW10, px, amt, counts)
    out, at = [], 0
    for c in counts.tolist():
        out.append(None if c < 0 else list(zip(px[at:at + c].tolist(), amt[at:at + c].tolist())))
        at += max(c, 0)
    assert at == k
    return out


# numbers as venues write them (ticks, contracts) and as JSON allows (exponents, integers, signs)
prices = st.one_of(
    st.integers(1, 400_000).map(lambda n: repr(n * 0.0005)),  # coin prices on a tick
    st.floats(1e-9, 2e9, allow_nan=False).map(repr),
    st.integers(-5, 10**12).map(str),
    st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["0", "-0.0", "1e5", "1E-3", "2.5e+2", "0.1e1", "01", "1.", ".5", "1e", "-", "1e-400",
                     "123456789012345678", "0.000000000000000000000001", "9007199254740993", "true", "null",
                     '"1.0"']))
actions = st.sampled_from(['"new"', '"change"', '"delete"', '"New"', '"add"', '"ne\\u0077"', '""', "1"])
spaces = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


@st.composite
def level_lists(draw) -> bytes:
    levels = []
    for _ in range(draw(st.integers(0, 6))):
        sp = draw(spaces)
        parts = [draw(prices), draw(prices)]
        if draw(st.integers(0, 4)):
            parts.insert(0, draw(actions))
        if not draw(st.integers(0, 30)):
            parts.append(draw(prices))  # a level of four values
        levels.append("[" + sp + ("," + sp).join(parts) + sp + "]")
    text = draw(spaces) + "[" + draw(spaces) + ",".join(levels) + draw(spaces) + "]" + draw(spaces)
    if not draw(st.integers(0, 40)):
        text = text[:draw(st.integers(0, len(text)))]  # cut short
    return text.encode()


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(level_lists(), st.booleans()), min_size=1, max_size=5))
def test_the_scanner_reads_a_list_as_the_careful_parser_or_declines_it(cases):
    got = run_scan([raw for raw, _ in cases], [snap for _, snap in cases])
    for (raw, snapshot), levels in zip(cases, got):
        want = reference(raw, snapshot)
        if levels is not None:  # read: exactly the careful reading (declining is always allowed)
            assert want is not None and levels == want, raw
            assert all(np.float64(p).tobytes() == np.float64(q).tobytes() for (p, _), (q, _) in zip(levels, want))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 6), st.integers(0, 10**5), st.integers(0, 3)),
                max_size=8))
def test_tick_prices_and_contract_amounts_are_read_not_declined(rows):
    """What the venue sends (a price on a tick, an amount in contracts) is always within the fast
    path: the scanner never hands real levels to the careful parser."""
    levels = [[["new", "change", "delete"][a % 3], round(p * 10.0 ** -d, d), float(q)] for p, d, q, a in rows]
    raw = json.dumps(levels).encode()
    assert run_scan([raw], [False]) == [reference(raw, False)]


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), st.floats(allow_nan=False),
                   st.text(max_size=8), st.lists(st.floats(0, 10, allow_nan=False), max_size=3))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(FRAMES)), min_size=1, max_size=BATCH_MIN + 8), st.data())
def test_a_batch_gives_the_events_of_its_frames_one_by_one(names, data):
    """Below BATCH_MIN frames parse_frames parses them one by one; from it, in one pass."""
    raws = []
    for name in names:
        frame = orjson.loads(orjson.dumps(FRAMES[name]))
        mutate_json(frame, data, _VALUES, st.integers(0, 3))
        # as venues write them (compact: the ticker shortcut) and spaced out (the usual path)
        raw = json.dumps(frame, **data.draw(st.sampled_from([{"separators": (",", ":")}, {}, {"indent": 1}])))
        raws.append(raw.encode() if data.draw(st.booleans()) else raw)
    stamps = [TS + i for i in range(len(raws))]
    one_by_one = [ev for raw, ts in zip(raws, stamps) for ev in parse_frame(raw, ts)]
    assert parse_frames(raws, stamps) == one_by_one


_ORDER_FREE = (Ticker, IndexPrice, FuturePrice, FeedError)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(FRAMES)), min_size=BATCH_MIN, max_size=BATCH_MIN + 24), st.data())
def test_book_notifications_in_columns_are_the_same_events_with_books_run_together(names, data):
    """parse_columns (what a replay reads): its BookBatches expanded are the frames' events one by
    one, but for order-free events (tickers, index and future prices, frame errors) a run of books
    passes: every other event, every book, keeps its order, and so do the order-free ones, and so
    do each instrument's own."""
    raws = []
    mutated = False
    for name in names:
        frame = orjson.loads(orjson.dumps(FRAMES[name]))
        if data.draw(st.integers(0, 3)) == 0:
            mutate_json(frame, data, _VALUES, st.integers(0, 2))
            mutated = True
        raws.append(orjson.dumps(frame))
    stamps = [TS + i for i in range(len(raws))]
    one_by_one = [ev for raw, ts in zip(raws, stamps) for ev in parse_frame(raw, ts)]
    got = parse_columns(raws, stamps)
    expanded = expand_books(got)
    free = [e for e in one_by_one if type(e) in _ORDER_FREE]
    assert [e for e in expanded if type(e) in _ORDER_FREE] == free
    assert [e for e in expanded if type(e) not in _ORDER_FREE] == [e for e in one_by_one if type(e) not in _ORDER_FREE]
    # each instrument's events in the order it sent them (what is stored does not depend on batching)
    for name in {getattr(e, "instrument", "") for e in one_by_one}:
        assert ([e for e in expanded if getattr(e, "instrument", "") == name]
                == [e for e in one_by_one if getattr(e, "instrument", "") == name]), name
    # each BookBatch stands where its first book stood: nothing but order-free events between its rows
    at = 0
    for e in got:
        if type(e) is BookBatch:
            rows = e.updates()
            first = one_by_one.index(rows[0], at)
            span = [x for x in one_by_one[first:] if type(x) not in _ORDER_FREE][:len(rows)]
            assert span == rows
            at = first + 1
    if not mutated:  # the venue's own frames: every book in a BookBatch
        assert not any(type(e) is BookUpdate for e in got)
        assert sum(len(e) for e in got if type(e) is BookBatch) == sum(type(e) is BookUpdate for e in one_by_one)


def test_a_batch_of_book_frames_shares_one_array():
    raws = [orjson.dumps(FRAMES[name]) for name in BOOKS] * BATCH_MIN
    events = parse_frames(raws, [TS] * len(raws))
    books = [e for e in events if type(e) is BookUpdate]
    assert len(books) == len(raws) and any(len(b.bids) for b in books)
    bases = {id(side.base) for b in books for side in (b.bids, b.asks) if len(side)}
    assert len(bases) == 1  # slices of one array, no per-frame copy


def test_an_oversized_or_unreadable_frame_in_a_batch_is_its_own_error():
    good = orjson.dumps(FRAMES["book_change"])
    raws = [good, b"{not json", good[:-5], good + b" "] + [good] * BATCH_MIN
    events = parse_frames(raws, [TS] * len(raws), max_bytes=len(good))
    assert [type(e).__name__ for e in events[:5]] == ["BookUpdate", "FeedError", "FeedError", "FeedError", "BookUpdate"]
    assert [e.reason for e in events[1:4]] == ["malformed_json", "malformed_json", "oversized"]
    assert len(events) == len(raws)


def test_a_ticker_read_by_the_shortcut_is_the_ticker_read_the_usual_way():
    """A compact ticker frame goes straight to the ticker decoder (parse.py _TICKER_PEEK); the same
    frame spaced out is tried as a book first. Both give the same events, alone and in a batch."""
    tickers = [f for name, f in sorted(FRAMES.items()) if f.get("params", {}).get("channel", "").startswith("ticker.")]
    assert len(tickers) >= 3
    for frame in tickers:
        compact, spaced = orjson.dumps(frame), json.dumps(frame).encode()
        assert b'"channel":"ticker.' in compact and b'"channel":"ticker.' not in spaced
        assert parse_frame(compact, TS) == parse_frame(spaced, TS) and parse_frame(compact, TS)
        assert parse_frames([compact] * BATCH_MIN, [TS] * BATCH_MIN) == parse_frames([spaced] * BATCH_MIN,
                                                                                    [TS] * BATCH_MIN)
