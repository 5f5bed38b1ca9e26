"""Deribit JSON-RPC v2 frames -> normalised events (docs/protocols.md §A): `parse_frame` and the
frame -> event translation, a msgspec fast path for book and ticker notifications, and the
careful parser that names every bad field.

Many frames at once: the book notifications' envelopes are decoded by msgspec with their level
lists left as raw JSON, and every level list of the batch is then read in one compiled pass
(levels.py) into the columns of a BookBatch (operators/events.py); every other frame, and any
level list the pass declines, goes through `parse_frame`, so the events are the same either way.
`parse_columns` (what a replay reads per source batch) keeps the BookBatches, each run of book
notifications one; `parse_frames` (what the live client reads: its checks hold books one update
at a time) turns them into BookUpdates, in exactly parse_frame's order.

Translation only: bytes in, events (operators.events) out. It never raises (bad input becomes a
FeedError with a reason code), keeps no state, never judges a book (sequence chains and crossed
books are the client's, connectors/venues/base.py BookGuard), never imports the client or bytewax.

Non-market frames. `parse_frame` returns, next to market events, small `Control` objects for
frames that are about the session rather than the market: heartbeats (`kind="heartbeat"`),
test requests (`kind="test_request"`, must be answered with `public/test`) and responses to
our own requests (`kind="response"`, matched by `id`). The client consumes them and never
puts them on the event queue.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Sequence

import msgspec
import numpy as np
import orjson

from connectors.venues.base import BadFrame as _Bad
from connectors.venues.base import check_frame, check_not_crossed, now_ms, parse_name
from connectors.venues.deribit import levels as level_scan
from connectors.venues.deribit.names import VENUE, InstrumentNameError, parse_instrument_name
from operators.events import (BOOK_CHANGE, BOOK_SNAPSHOT, NO_BOOK_LEVELS, NO_PREV_SEQ, ORDER_FREE, BookBatch,
                              BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker)

DEFAULT_MAX_FRAME_BYTES = 1 << 20

# ---------------------------------------------------------------- frame parsing


@dataclass(frozen=True, slots=True)
class Control:
    """A session frame, not market data: heartbeat, test_request, or a response to our request."""

    kind: str  # "heartbeat" | "test_request" | "response" | "instrument_state" (result = (name, state))
    id: Optional[int] = None
    result: Any = None
    error: Optional[dict] = None


def _num(value: Any, field: str, instrument: str = "") -> float:
    # bool is an int subclass; orjson never yields NaN/inf from valid JSON but "1e999" is inf.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad("bad_field", f"{field} must be a number, got {value!r:.60}", instrument)
    f = float(value)
    if not -MAX_AMOUNT < f < MAX_AMOUNT:  # also NaN and infinities
        raise _Bad("bad_price", f"{field} is not finite or absurdly large: {value!r}", instrument)
    return f


def _non_negative(data: dict, field: str, instrument: str) -> Optional[float]:
    """An optional number that must not be negative (None when absent)."""
    value = data.get(field)
    if value is None:
        return None
    f = _num(value, field, instrument)
    if f < 0:
        raise _Bad("bad_price", f"{field} is negative: {f}", instrument)
    return f


def _opt_price(data: dict, field: str, instrument: str) -> Optional[float]:
    """A price where 0 or absence means "none" (Deribit's empty-side sentinel)."""
    f = _non_negative(data, field, instrument)
    if f is not None and f >= MAX_PRICE:
        raise _Bad("bad_price", f"{field} {f} is not a price (>= {MAX_PRICE:g})", instrument)
    return f if f else None


def _iv(data: dict, field: str, instrument: str, absent: tuple[float, ...]) -> Optional[float]:
    """Percent IV → decimal; the sentinels in `absent` (0, 500) mean no IV."""
    f = _non_negative(data, field, instrument)
    return None if f is None or f in absent else f / 100.0


def _int(value: Any, field: str, instrument: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("bad_field", f"{field} must be an integer, got {value!r:.60}", instrument)
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad("bad_field", f"{field} must be a non-empty string, got {value!r:.60}")
    return value


_INF = float("inf")
# No option (coin), future or index (USD) price comes near this; 1e308 on the wire is corruption.
MAX_PRICE = level_scan.MAX_PRICE
MAX_AMOUNT = level_scan.MAX_AMOUNT
_DELETE_ACTIONS = {"new": False, "change": False, "delete": True}
GROUPED_DEPTHS = (1, 10, 20)  # the depths Deribit offers on book.{instrument}.{group}.{depth}.{interval}


def grouped_depth(depth: int) -> int:
    """The grouped channel depth that carries `depth` levels per side."""
    for d in GROUPED_DEPTHS:
        if d >= depth:
            return d
    raise ValueError(f"depth={depth}: a grouped book carries at most {GROUPED_DEPTHS[-1]} levels per side; "
                     "use the incremental book for more")


def _levels(raw: Any, side: str, instrument: str, snapshot: bool) -> np.ndarray:
    """[[action, price, amount], …] (or grouped [[price, amount], …]) → levels × (price, size).
    Hot path: inline type checks, one pass; any bad level rejects the whole frame."""
    if raw is None:
        return ()
    if type(raw) is not list:
        raise _Bad("bad_field", f"{side} must be a list, got {type(raw).__name__}", instrument)
    out = []
    append = out.append
    for lvl in raw:
        if type(lvl) is list and len(lvl) == 3:
            action, px, amt = lvl
            delete = _DELETE_ACTIONS.get(action) if type(action) is str else None
            if delete is None:
                raise _Bad("bad_field", f"{side} level action {action!r:.40} is not new|change|delete", instrument)
            if snapshot and action != "new":
                raise _Bad("bad_field", f"snapshot {side} level has action {action!r}", instrument)
        elif type(lvl) is list and len(lvl) == 2:  # grouped book: [price, amount]
            px, amt = lvl
            delete = False
        else:
            raise _Bad("bad_field", f"{side} level must be [action, price, amount], got {lvl!r:.60}", instrument)
        tp, ta = type(px), type(amt)
        if not ((tp is float or tp is int) and (ta is float or ta is int)):
            raise _Bad("bad_field", f"{side} level price/amount must be numbers, got {lvl!r:.60}", instrument)
        # chained comparisons also reject NaN and infinities
        if not (0 < px < MAX_PRICE and 0 <= amt < MAX_AMOUNT):
            raise _Bad("bad_price", f"{side} level price {px} amount {amt}: price must be in (0, {MAX_PRICE:g}) "
                       f"and amount in [0, {MAX_AMOUNT:g})", instrument)
        append((float(px), 0.0 if delete else float(amt)))
    return np.array(out, np.float64) if out else NO_BOOK_LEVELS


# The hot path (~90 % of the traffic): a well-formed book notification, decoded and checked
# by msgspec in C in one pass (types, level actions, price and amount ranges), ~5x cheaper than
# orjson plus checks in Python. Anything it refuses goes to the careful parser below, which
# gives the precise error, so both paths give identical results (tests/connectors/venues/test_deribit_parse.py).
_Px = Annotated[float, msgspec.Meta(gt=0, lt=MAX_PRICE)]
_Amt = Annotated[float, msgspec.Meta(ge=0, lt=MAX_AMOUNT)]
_Action = Literal["new", "change", "delete"]
_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


def _notification_decoder(name: str, data: type) -> Callable:
    """The decoder of a subscription notification {"method": "subscription", "params":
    {"channel": …, "data": <data>}} (its other members ignored)."""
    params = msgspec.defstruct(f"_{name}Params", [("channel", str), ("data", data)])
    frame = msgspec.defstruct(f"_{name}Frame", [("method", Literal["subscription"]), ("params", params)])
    return msgspec.json.Decoder(frame).decode


def _book_decoder(name: str, levels: Any) -> Callable:
    """An incremental book notification's decoder, its bids and asks read as `levels`."""
    return _notification_decoder(name, msgspec.defstruct(f"_{name}Data", [
        ("type", Literal["snapshot", "change"]), ("timestamp", int), ("instrument_name", _NonEmpty),
        ("change_id", int), ("bids", levels), ("asks", levels), ("prev_change_id", Optional[int], None)]))


def _grouped_decoder(name: str, levels: Any) -> Callable:
    """A grouped book notification's decoder: a whole snapshot, no change chain. A frame carrying
    an incremental book's `type` or `prev_change_id` is refused (not a grouped snapshot)."""
    return _notification_decoder(name, msgspec.defstruct(f"_{name}Data", [
        ("timestamp", int), ("instrument_name", _NonEmpty), ("change_id", int), ("bids", levels), ("asks", levels),
        ("type", msgspec.UnsetType, msgspec.UNSET), ("prev_change_id", msgspec.UnsetType, msgspec.UNSET)]))


_decode_book = _book_decoder("Book", list[tuple[_Action, _Px, _Amt]])
_decode_grouped = _grouped_decoder("Grouped", tuple[tuple[_Px, _Amt], ...])
_NOT_FAST = (msgspec.ValidationError, msgspec.DecodeError)
# Grouped (depth-limited) channels are named book.{instrument}.{group}.{depth}.{interval};
# the client always asks for group "none". The marker only picks which decoder to try: a frame
# it misleads is refused by that decoder and read by the careful parser.
_GROUPED_MARK = ".none."
_GROUPED_MARK_B = _GROUPED_MARK.encode()
# A ticker frame named as such near its start goes straight to the ticker decoder: tried as a book
# first, a ticker cost two failed decodes — 14 µs a frame in parse_frames against 3.5 µs
# (2026-12-07, the seed stream's 20,125 tickers among 200,000 frames). Only a shortcut: a frame
# written otherwise ("channel": "ticker. with a space, the channel late) takes the usual path.
_TICKER_PEEK = '"channel":"ticker.'
_TICKER_PEEK_B = _TICKER_PEEK.encode()
_PEEK_END = 160


def _book_data(decode: Callable, raw: bytes | str):
    """The data of a book notification `decode` accepts; None sends the frame to the careful parser."""
    try:
        params = decode(raw).params
    except _NOT_FAST:
        return None
    return params.data if params.channel.startswith("book.") else None


def _fast_grouped(raw: bytes | str, ts_recv_ms: int) -> Optional[list]:
    """A grouped book notification: a whole snapshot of [price, amount] pairs, decoded straight
    into the BookUpdate's level tuples (no per-level Python work)."""
    d = _book_data(_decode_grouped, raw)
    if d is None:
        return None
    # a crossed book is the client's to find (connectors/venues/base.py), not the parser's
    return [BookUpdate(VENUE, d.instrument_name, d.timestamp, ts_recv_ms, d.change_id, None, "snapshot",
                       _pairs(d.bids), _pairs(d.asks))]


def _pairs(levels: tuple) -> np.ndarray:
    return np.array(levels, np.float64) if levels else NO_BOOK_LEVELS


def _fast_book(raw: bytes | str, ts_recv_ms: int) -> Optional[list]:
    """[BookUpdate] for a frame the hot path accepts; None sends it to the careful parser."""
    d = _book_data(_decode_book, raw)
    if d is None:
        return None
    if d.type == "snapshot":
        for levels in (d.bids, d.asks):
            for lvl in levels:
                if lvl[0] != "new":
                    return None  # the careful parser names the bad action
        bids = np.array([(px, amt) for _, px, amt in d.bids], np.float64) if d.bids else NO_BOOK_LEVELS
        asks = np.array([(px, amt) for _, px, amt in d.asks], np.float64) if d.asks else NO_BOOK_LEVELS
        prev = None
    else:
        prev = d.prev_change_id
        if prev is None:
            return None
        # an array per side that has levels (most changes touch one side): ~0.6 µs each
        bids = (np.array([(px, 0.0 if action == "delete" else amt) for action, px, amt in d.bids], np.float64)
                if d.bids else NO_BOOK_LEVELS)
        asks = (np.array([(px, 0.0 if action == "delete" else amt) for action, px, amt in d.asks], np.float64)
                if d.asks else NO_BOOK_LEVELS)
    return [BookUpdate(VENUE, d.instrument_name, d.timestamp, ts_recv_ms, d.change_id, prev, d.type, bids, asks)]


# _read: the same notifications with their level lists left as JSON, for the compiled pass
_decode_raw_book = _book_decoder("RawBook", msgspec.Raw)
_decode_raw_grouped = _grouped_decoder("RawGrouped", msgspec.Raw)


# From this many frames the batch is cheaper than parse_frame one by one: the compiled pass costs
# ~19 µs a call before the first frame (measured 2026-12-06 on the seed stream's book frames, 1.6
# levels each: 22.8 µs a frame in batches of 1, 5.4 of 8, 4.2 of 16, against 4.0 one by one; a
# shock's frames of 21 levels gain from far fewer)
BATCH_MIN = 16
_SNAPSHOT, _CHANGE = level_scan.SNAPSHOT, level_scan.CHANGE


@dataclass(slots=True)
class _Read:
    """A batch of frames read by `_read`: the events in order with None at each book notification's
    place, and per notification its frame, its columns and its levels as the compiled pass read them."""

    out: list
    found: list
    names: list
    ts_x: list
    ts_r: list
    seqs: list
    prevs: list
    kinds: list
    pairs: Optional[np.ndarray]
    px: Optional[np.ndarray]
    amount: Optional[np.ndarray]
    ok: list


def _read(raws: Sequence[Any], ts_recv_ms: Sequence[int], max_bytes: int) -> _Read:
    """What parse_frames and parse_columns share: every frame but the book notifications parsed,
    and those notifications' envelopes decoded by msgspec with their level lists left as raw JSON,
    every level list of the batch then read in one compiled pass (levels.py). A notification is
    `ok` (a row, or a BookUpdate) when the pass read both its lists and, a change, it is chained."""
    out: list = []  # the events in order; a book notification's place holds None
    found: list = []  # the frame position of each book notification, in order
    lists: list = []  # their raw level lists: bids, asks, bids, …
    modes: list = []  # per notification: how its lists are read (levels.py SNAPSHOT or CHANGE)
    names: list = []  # per notification: its columns
    ts_x: list = []
    ts_r: list = []
    seqs: list = []
    prevs: list = []  # None where a change is unchained: the careful parser says so
    kinds: list = []
    add_list = lists.append
    for i, raw in enumerate(raws):
        kind = type(raw)
        if (kind is bytes or kind is str) and len(raw) <= max_bytes:
            if raw.find(_TICKER_PEEK_B if kind is bytes else _TICKER_PEEK, 0, _PEEK_END) >= 0:
                fast = _fast_ticker(raw, ts_recv_ms[i])
                out.extend(fast if fast is not None else parse_frame(raw, ts_recv_ms[i], max_bytes))
                continue
            grouped = (_GROUPED_MARK in raw) if kind is str else (_GROUPED_MARK_B in raw)
            try:
                params = (_decode_raw_grouped if grouped else _decode_raw_book)(raw).params
            except _NOT_FAST:
                params = None
            if params is not None and params.channel.startswith("book."):
                d = params.data
                found.append(i)
                out.append(None)
                add_list(d.bids)
                add_list(d.asks)
                snapshot = grouped or d.type == "snapshot"
                modes.append(_SNAPSHOT if snapshot else _CHANGE)
                names.append(d.instrument_name)
                ts_x.append(d.timestamp)
                ts_r.append(ts_recv_ms[i])
                seqs.append(d.change_id)
                kinds.append(BOOK_SNAPSHOT if snapshot else BOOK_CHANGE)
                prevs.append(NO_PREV_SEQ if snapshot else d.prev_change_id)
                continue
        out.extend(parse_frame(raw, ts_recv_ms[i], max_bytes))
    if not found:
        return _Read(out, found, names, ts_x, ts_r, seqs, prevs, kinds, None, None, None, [])
    lengths = np.fromiter(map(len, lists), np.int64, len(lists))
    ends = np.cumsum(lengths)
    buf = np.frombuffer(b"".join(lists), np.uint8)
    room = level_scan.levels_room(buf.size)
    px, amount, counts = np.empty(room), np.empty(room), np.empty(len(lists), np.int64)
    k = level_scan.scan_levels(buf, ends - lengths, ends, np.repeat(np.array(modes, np.int64), 2), level_scan.POW10,
                               px, amount, counts)
    pairs = counts.reshape(-1, 2)
    ok = (pairs >= 0).all(axis=1)
    if None in prevs:
        ok &= ~np.fromiter((p is None for p in prevs), bool, len(prevs))
        prevs = [NO_PREV_SEQ if p is None else p for p in prevs]
    return _Read(out, found, names, ts_x, ts_r, seqs, prevs, kinds, pairs, px[:k], amount[:k], ok.tolist())


def parse_frames(raws: Sequence[Any], ts_recv_ms: Sequence[int], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list:
    """Many frames → their events in order, the same as `parse_frame` frame by frame (Control
    objects included): a BookUpdate per book notification, its sides slices of one array for the
    whole batch. What the live client reads (its checks hold books one update at a time). Never
    raises. Fewer than BATCH_MIN frames are parsed one by one."""
    if len(raws) < BATCH_MIN:
        return [ev for raw, ts in zip(raws, ts_recv_ms) for ev in parse_frame(raw, ts, max_bytes)]
    r = _read(raws, ts_recv_ms, max_bytes)
    if not r.found:
        return r.out
    # BookUpdates built here from the read's lists, not by BookBatch.updates() from a BookBatch's arrays:
    # that round trip made this 4-7 % slower (bench_parse.py "batch", interleaved, 2026-12-07 23:31 UTC)
    both = np.stack((r.px, r.amount), axis=1)
    out: list = []
    at = 0  # levels of the notifications before
    j = 0
    pairs = r.pairs.tolist()
    for ev in r.out:
        if ev is not None:
            out.append(ev)
            continue
        n_bids, n_asks = pairs[j]
        if r.ok[j]:
            mid, end = at + n_bids, at + n_bids + n_asks
            # most changes touch one side: the other is the shared empty array, not a slice (0.3 µs each)
            snapshot = r.kinds[j] == BOOK_SNAPSHOT
            out.append(BookUpdate(VENUE, r.names[j], r.ts_x[j], r.ts_r[j], r.seqs[j], None if snapshot else r.prevs[j],
                                  "snapshot" if snapshot else "change", both[at:mid] if n_bids else NO_BOOK_LEVELS,
                                  both[mid:end] if n_asks else NO_BOOK_LEVELS))
            at = end
        else:  # a list the pass declined, or an unchained change: the careful parser says why
            at += max(n_bids, 0) + max(n_asks, 0)
            i = r.found[j]
            out.extend(parse_frame(raws[i], ts_recv_ms[i], max_bytes))
        j += 1
    return out


def parse_columns(raws: Sequence[Any], ts_recv_ms: Sequence[int], max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list:
    """Many frames → their events, the book notifications as BookBatches (operators/events.py):
    each run of them with only order-free events between (operators.events ORDER_FREE: tickers,
    index and future prices, frame errors) becomes one BookBatch at the place of its first, those
    events keeping their order after it. A run also ends before a book whose instrument had such
    an event since it began, so each instrument's events keep their order: what is stored of a
    replay does not depend on where its batches were cut. What a replay reads per source batch.
    Never raises. Fewer than BATCH_MIN frames are parsed one by one (BookUpdates, no BookBatch)."""
    if len(raws) < BATCH_MIN:
        return [ev for raw, ts in zip(raws, ts_recv_ms) for ev in parse_frame(raw, ts, max_bytes)]
    r = _read(raws, ts_recv_ms, max_bytes)
    if not r.found:
        return r.out
    ok_list, names, pairs = r.ok, r.names, r.pairs
    if all(ok_list):
        rows, levels = slice(None), slice(None)
    else:
        rows = np.array(ok_list, bool)
        levels = np.repeat(rows, np.maximum(pairs, 0).sum(axis=1))
        names = [n for n, good in zip(names, ok_list) if good]
    columns = (np.array(r.ts_x, np.int64)[rows], np.array(r.ts_r, np.int64)[rows], np.array(r.seqs, np.int64)[rows],
               np.array(r.prevs, np.int64)[rows], np.array(r.kinds, np.int64)[rows])
    sides, level_px, level_size = pairs[rows].ravel(), r.px[levels], r.amount[levels]
    result: list = []
    run_start = 0  # first row of the run being gathered
    row = 0  # rows (ok notifications) seen
    level = 0  # their levels seen
    run_level = 0
    open_at = -1  # where in result the open run's BookBatch goes, -1: no run open
    j = 0
    side_counts = pairs.sum(axis=1).tolist()

    def close() -> None:
        result[open_at] = BookBatch(VENUE, names[run_start:row], *(c[run_start:row] for c in columns),
                                    sides[2 * run_start:2 * row], level_px[run_level:level],
                                    level_size[run_level:level])

    passed: set = set()  # instruments of the order-free events the open run has passed
    for ev in r.out:
        if ev is not None:
            if open_at >= 0:
                if type(ev) not in ORDER_FREE:
                    close()
                    open_at = -1
                else:
                    passed.add(getattr(ev, "instrument", ""))
            result.append(ev)
            continue
        if ok_list[j]:
            if open_at >= 0 and r.names[j] in passed:  # its instrument's events keep their order
                close()
                open_at = -1
            if open_at < 0:
                open_at, run_start, run_level = len(result), row, level
                passed.clear()
                result.append(None)
            row += 1
            level += side_counts[j]
        else:  # a list the pass declined, or an unchained change: the careful parser says why
            if open_at >= 0:
                close()
                open_at = -1
            i = r.found[j]
            result.extend(parse_frame(raws[i], ts_recv_ms[i], max_bytes))
        j += 1
    if open_at >= 0:
        close()
    return result


_Price = Optional[Annotated[float, msgspec.Meta(ge=0, lt=MAX_PRICE)]]  # 0 or absent: none
_Number = Optional[Annotated[float, msgspec.Meta(gt=-MAX_AMOUNT, lt=MAX_AMOUNT)]]
_PctIv = Optional[Annotated[float, msgspec.Meta(ge=0, lt=MAX_AMOUNT)]]


class _TickerData(msgspec.Struct):
    instrument_name: _NonEmpty
    timestamp: int
    state: str = "open"
    best_bid_price: _Price = None
    best_bid_amount: _Number = None
    best_ask_price: _Price = None
    best_ask_amount: _Number = None
    mark_price: _Price = None
    underlying_price: _Price = None
    underlying_index: str = ""
    index_price: _Price = None
    bid_iv: _PctIv = None
    ask_iv: _PctIv = None
    mark_iv: _PctIv = None


_decode_ticker = _notification_decoder("Ticker", _TickerData)


def _fast_ticker(raw: bytes | str, ts_recv_ms: int) -> Optional[list]:
    """The ticker notification (~10 % of the traffic) the same way; None: the careful parser."""
    try:
        frame = _decode_ticker(raw)
    except _NOT_FAST:
        return None
    if not frame.params.channel.startswith("ticker."):
        return None
    d = frame.params.data
    inst = d.instrument_name
    try:
        underlying, expiry_ms, strike, _ = parse_instrument_name(inst)
    except InstrumentNameError:
        return None
    bid, ask = d.best_bid_price or None, d.best_ask_price or None
    if bid is not None and ask is not None and bid > ask:
        return None
    bid_iv, ask_iv, mark_iv = d.bid_iv, d.ask_iv, d.mark_iv
    tick = Ticker(VENUE, inst, d.timestamp, ts_recv_ms, d.state, bid, d.best_bid_amount or 0.0, ask,
                  d.best_ask_amount or 0.0, d.mark_price or None, d.underlying_price or None, d.underlying_index,
                  d.index_price or None,
                  None if not bid_iv else bid_iv / 100.0,
                  None if not ask_iv or ask_iv == 500.0 else ask_iv / 100.0,
                  None if not mark_iv else mark_iv / 100.0)
    if strike is not None:
        return [tick]
    return [tick, FuturePrice(VENUE, inst, underlying, expiry_ms, d.timestamp, ts_recv_ms, bid, ask, tick.mark_px)]


def _book(channel: str, data: dict, ts_recv_ms: int) -> list:
    inst = _str(data.get("instrument_name"), "instrument_name")
    typ = data.get("type")
    change_id = _int(data.get("change_id"), "change_id", inst)
    ts = _int(data.get("timestamp"), "timestamp", inst)
    if typ is None:
        # no type field: grouped books (whole snapshots) and the older wire format still found in
        # recordings, where a notification chained to a previous one is a change
        typ = "change" if "prev_change_id" in data else "snapshot"
    if typ == "snapshot":
        prev = None
    elif typ == "change":
        prev = _int(data.get("prev_change_id"), "prev_change_id", inst)
    else:
        raise _Bad("bad_field", f"book type {typ!r:.40} is not snapshot|change", inst)
    snap = typ == "snapshot"
    bids = _levels(data.get("bids"), "bids", inst, snap)
    asks = _levels(data.get("asks"), "asks", inst, snap)
    return [BookUpdate(VENUE, inst, ts, ts_recv_ms, change_id, prev, typ, bids, asks)]


def _ticker(channel: str, data: dict, ts_recv_ms: int) -> list:
    inst = _str(data.get("instrument_name"), "instrument_name")
    underlying, expiry_ms, strike, _ = parse_name(parse_instrument_name, InstrumentNameError, inst)
    ts = _int(data.get("timestamp"), "timestamp", inst)
    bid = _opt_price(data, "best_bid_price", inst)
    ask = _opt_price(data, "best_ask_price", inst)
    check_not_crossed(bid, ask, inst, "best bid > best ask")
    mark = _opt_price(data, "mark_price", inst)
    state = data.get("state", "open")
    if not isinstance(state, str):
        raise _Bad("bad_field", f"state must be a string, got {state!r:.40}", inst)
    bid_amt = data.get("best_bid_amount") or 0.0
    ask_amt = data.get("best_ask_amount") or 0.0
    index_name = data.get("underlying_index", "")
    tick = Ticker(
        VENUE, inst, ts, ts_recv_ms, state,
        bid, _num(bid_amt, "best_bid_amount", inst), ask, _num(ask_amt, "best_ask_amount", inst), mark,
        _opt_price(data, "underlying_price", inst),
        index_name if isinstance(index_name, str) else "",
        _opt_price(data, "index_price", inst),
        _iv(data, "bid_iv", inst, (0.0,)),
        _iv(data, "ask_iv", inst, (0.0, 500.0)),
        _iv(data, "mark_iv", inst, (0.0,)),
    )
    if strike is not None:
        return [tick]
    return [tick, FuturePrice(VENUE, inst, underlying, expiry_ms, ts, ts_recv_ms, bid, ask, mark)]


def _index(channel: str, data: dict, ts_recv_ms: int) -> list:
    name = _str(data.get("index_name"), "index_name")
    price = _num(data.get("price"), "price", name)
    if not 0 < price < MAX_PRICE:
        raise _Bad("bad_price", f"index {name} price {price} must be > 0", name)
    ts = _int(data.get("timestamp"), "timestamp", name)
    return [IndexPrice(VENUE, name.split("_", 1)[0].upper(), ts, ts_recv_ms, price)]


_STATES = frozenset(("created", "started", "settled", "closed", "terminated", "deactivated", "archivized"))


def _instrument_state(channel: str, data: dict, ts_recv_ms: int) -> list:
    """instrument.state.{kind}.{currency}: a listing or delisting, for the client only."""
    name = _str(data.get("instrument_name"), "instrument_name")
    parse_name(parse_instrument_name, InstrumentNameError, name)
    state = data.get("state")
    if state not in _STATES:
        raise _Bad("bad_field", f"instrument state {state!r:.40} is not one of {', '.join(sorted(_STATES))}", name)
    return [Control("instrument_state", None, (name, state))]


_CHANNELS = (("book.", _book), ("ticker.", _ticker), ("deribit_price_index.", _index),
             ("instrument.state.", _instrument_state))


def _instrument(row: Any, ts_recv_ms: int) -> Instrument:
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"get_instruments row must be an object, got {row!r:.60}")
    name = _str(row.get("instrument_name"), "instrument_name")
    kind = row.get("kind")
    underlying, expiry_from_name, strike, cp = parse_name(parse_instrument_name, InstrumentNameError, name)
    expiry_ms = row.get("expiration_timestamp", expiry_from_name)
    if kind == "option":
        opt = row.get("option_type")
        cp = {"call": "C", "put": "P"}.get(opt, cp)
        strike = _num(row.get("strike", strike), "strike", name)
        out_kind = "option"
    elif kind == "future":
        out_kind = "perpetual" if expiry_from_name == 0 else "future"
        strike = cp = None
    else:
        raise _Bad("bad_field", f"instrument kind {kind!r:.40} is not option|future", name)
    if out_kind == "perpetual":
        expiry_ms = 0  # Deribit reports a far-future expiration_timestamp for perpetuals
    expiry_ms = _int(expiry_ms, "expiration_timestamp", name)
    base = row.get("base_currency", underlying)
    return Instrument(
        VENUE, name, base if isinstance(base, str) and base else underlying, out_kind, expiry_ms,
        strike, cp, _num(row.get("tick_size", 0.0), "tick_size", name),
        _num(row.get("contract_size", 1.0), "contract_size", name),
        str(row.get("quote_currency", "")), ts_recv_ms,
        _int(row.get("creation_timestamp", 0), "creation_timestamp", name))  # the listing order (placement.py)


_CHANNEL_RE = re.compile(rb'"channel"\s*:\s*"((?:book|ticker)\.[A-Za-z0-9_.-]{1,120})"')


def _salvage_channel(raw: Any, bad: _Bad) -> None:
    """A frame we cannot decode may still name its channel near the start: then the client
    knows which book lost a change and resyncs it now rather than at the next change."""
    try:
        head = bytes(raw[:512], "utf-8", "replace") if isinstance(raw, str) else bytes(raw[:512])
        m = _CHANNEL_RE.search(head)
    except Exception:  # noqa: BLE001 — best effort on a frame already known to be bad
        return
    if m:
        channel = m.group(1).decode("ascii", "replace")
        bad.instrument = _channel_instrument(channel)
        bad.detail = f"{channel}: {bad.detail}"


def _is_instrument_list(result: Any) -> bool:
    return (isinstance(result, list) and len(result) > 0 and isinstance(result[0], dict)
            and "instrument_name" in result[0] and "kind" in result[0])


def parse_frame(raw: bytes | str, ts_recv_ms: Optional[int] = None,
                max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list:
    """One websocket frame → a list of events (and Control objects). Never raises.

    Notifications: book.* → BookUpdate; ticker.* → Ticker (futures/perpetuals also
    FuturePrice); deribit_price_index.* → IndexPrice. A get_instruments response → one
    Instrument per row, then the Control response. An RPC error → the Control response and
    a FeedError("rpc_error"). Anything else bad → one FeedError.
    """
    if ts_recv_ms is None:
        ts_recv_ms = now_ms()
    try:
        return _parse(raw, ts_recv_ms, max_bytes)
    except _Bad as bad:
        if not bad.instrument and bad.reason in ("oversized", "malformed_json"):
            _salvage_channel(raw, bad)
        return [FeedError(VENUE, bad.reason, bad.detail, ts_recv_ms, bad.instrument)]
    except Exception as exc:  # a parser bug must not kill the feed; count it loudly
        return [FeedError(VENUE, "parse_error", f"{type(exc).__name__}: {exc}"[:300], ts_recv_ms)]


def _parse(raw: bytes | str, ts_recv_ms: int, max_bytes: int) -> list:
    check_frame(raw, max_bytes)
    kind = type(raw)
    if (kind is bytes or kind is str) and raw.find(_TICKER_PEEK_B if kind is bytes else _TICKER_PEEK, 0,
                                                   _PEEK_END) >= 0:
        fast = _fast_ticker(raw, ts_recv_ms)
    else:
        if (_GROUPED_MARK in raw) if kind is str else (kind is bytes and _GROUPED_MARK_B in raw):
            fast = _fast_grouped(raw, ts_recv_ms)
        else:
            fast = _fast_book(raw, ts_recv_ms)
        if fast is None:
            fast = _fast_ticker(raw, ts_recv_ms)
    if fast is not None:
        return fast
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Bad("malformed_json", f"not JSON: {exc}"[:200]) from None
    if not isinstance(msg, dict):
        raise _Bad("malformed_json", f"frame must be a JSON object, got {type(msg).__name__}")
    method = msg.get("method")
    if method == "subscription":
        params = msg.get("params")
        if not isinstance(params, dict):
            raise _Bad("bad_field", "subscription params must be an object")
        channel = params.get("channel")
        data = params.get("data")
        if not isinstance(channel, str):
            raise _Bad("bad_field", f"subscription channel must be a string, got {channel!r:.60}")
        if not isinstance(data, dict):
            raise _Bad("bad_field", f"channel {channel:.80} data must be an object")
        for prefix, fn in _CHANNELS:
            if channel.startswith(prefix):
                try:
                    return fn(channel, data, ts_recv_ms)
                except _Bad as bad:
                    # Name the channel: the client resyncs a book whose frame it could not read.
                    bad.detail = f"{channel[:120]}: {bad.detail}"
                    if not bad.instrument and prefix != "deribit_price_index.":
                        bad.instrument = _channel_instrument(channel)
                    raise
        raise _Bad("unknown_channel", f"no parser for channel {channel:.120}")
    if method == "heartbeat":
        params = msg.get("params")
        typ = params.get("type") if isinstance(params, dict) else None
        if typ == "test_request":
            return [Control("test_request")]
        if typ == "heartbeat":
            return [Control("heartbeat")]
        raise _Bad("bad_field", f"heartbeat type {typ!r:.40} is not heartbeat|test_request")
    req_id = msg.get("id")
    if req_id is not None and method is None:
        if "error" in msg:
            err = msg["error"]
            if not isinstance(err, dict):
                err = {"code": None, "message": str(err)[:200]}
            code, message = err.get("code"), err.get("message")
            return [Control("response", req_id, None, err),
                    FeedError(VENUE, "rpc_error", f"request {req_id}: error {code} {message}"[:300], ts_recv_ms)]
        if "result" in msg:
            result = msg["result"]
            out: list = []
            if _is_instrument_list(result):
                for row in result:
                    try:
                        out.append(_instrument(row, ts_recv_ms))
                    except _Bad as bad:  # one odd listing must not hide the others
                        out.append(FeedError(VENUE, bad.reason, bad.detail, ts_recv_ms, bad.instrument))
            out.append(Control("response", req_id, result))  # last: the waiter sees the rows routed
            return out
        raise _Bad("bad_field", f"response {req_id!r:.40} has neither result nor error")
    raise _Bad("unknown_message", f"frame is neither a notification nor a response: method {method!r:.60}")


def _channel_instrument(channel: str) -> str:
    # book.BTC-27DEC24-100000-C.100ms → BTC-27DEC24-100000-C (names contain no dots)
    parts = channel.split(".")
    return parts[1] if len(parts) >= 3 else ""

