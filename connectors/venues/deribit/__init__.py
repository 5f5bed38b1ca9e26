"""Deribit JSON-RPC v2 over websocket: instrument names, frame parsing, a live client and a
bytewax source (PROTOCOLS.md §A).

Translation only: bytes in, normalised events (operators.events) out. No volatility math,
no book state beyond change_id bookkeeping. The parser never raises: bad input becomes a
FeedError with a reason code. The client keeps its websocket reads, heartbeat answers and
reconnects on its own thread and asyncio loop, so the dataflow's CPU work never starves them.

Non-market frames. `parse_frame` returns, next to market events, small `Control` objects for
frames that are about the session rather than the market: heartbeats (`kind="heartbeat"`),
test requests (`kind="test_request"`, must be answered with `public/test`) and responses to
our own requests (`kind="response"`, matched by `id`). The client consumes them and never
puts them on the event queue.

Staleness contract with the book step: a `FeedError(reason="seq_gap", instrument=X)` means
"the book of X is incomplete: withhold it until the next snapshot of X". The client emits it
on a change_id gap, an unreadable or crossed book frame, and when X's book passed the queue's
bound; in each case it resubscribes X's book channel and X's next BookUpdate is a fresh
snapshot. It also emits it for every live book when a session ends (their snapshots follow the
reconnect) and for a delisted option (no snapshot follows: withheld for good). Counters keep
the causes apart (gaps, crossed, errors.<reason>, gaps_queue, delisted).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Annotated, Any, Callable, Iterable, Literal, Optional

import msgspec
import orjson
from websockets.exceptions import WebSocketException

from connectors.venues.base import BadFrame as _Bad
from connectors.venues.base import (ClientPartition, ClientSource, FrameTap, LockedFoldingQueue, TokenBucket, VenueClient,
                                  SOURCE_BATCH_MAX, check_frame, close_draining, filter_options, now_ms)
from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker

log = logging.getLogger(__name__)

VENUE = "deribit"
DEFAULT_URL = "wss://www.deribit.com/ws/api/v2"
DEFAULT_MAX_FRAME_BYTES = 1 << 20
EXPIRY_HOUR_UTC = 8  # Deribit expiries settle at 08:00 UTC

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NUM = {m: i + 1 for i, m in enumerate(_MONTHS)}

# Options: BTC-27DEC24-100000-C. Linear altcoin options (SOL_USDC-…) may have decimal strikes,
# which Deribit writes with a "d" for the decimal point (XRP_USDC-30AUG24-0d625-C); a "." is
# accepted too. Futures: BTC-27DEC24. Perpetuals: BTC-PERPETUAL, SOL_USDC-PERPETUAL.
_OPTION_RE = re.compile(r"^([A-Z0-9]+(?:_[A-Z0-9]+)?)-(\d{1,2})([A-Z]{3})(\d{2})-(\d+(?:[.d]\d+)?)-([CP])$")
_FUTURE_RE = re.compile(r"^([A-Z0-9]+(?:_[A-Z0-9]+)?)-(\d{1,2})([A-Z]{3})(\d{2})$")
_PERP_RE = re.compile(r"^([A-Z0-9]+(?:_[A-Z0-9]+)?)-PERPETUAL$")


class InstrumentNameError(ValueError):
    """An instrument name that is not a Deribit option, future or perpetual."""


# ---------------------------------------------------------------- instrument names


def _expiry_ms(name: str, day: str, mon: str, yy: str) -> int:
    month = _MONTH_NUM.get(mon)
    if month is None:
        raise InstrumentNameError(f"instrument {name!r}: unknown month {mon!r}; expected one of {', '.join(_MONTHS)}")
    year = 2000 + int(yy)
    d = int(day)
    if not 1 <= d <= calendar.monthrange(year, month)[1]:
        raise InstrumentNameError(f"instrument {name!r}: day {d} does not exist in {mon} {year}")
    return calendar.timegm((year, month, d, EXPIRY_HOUR_UTC, 0, 0)) * 1000


@lru_cache(maxsize=65536)
def parse_instrument_name(name: str) -> tuple[str, int, Optional[float], Optional[str]]:
    """`BTC-27DEC24-100000-C` → ("BTC", expiry_ms at 08:00 UTC, 100000.0, "C").

    Futures give (underlying, expiry_ms, None, None); perpetuals (underlying, 0, None, None).
    Raises InstrumentNameError naming the input for anything else. The authoritative expiry is
    `expiration_timestamp` from public/get_instruments; this one agrees with it on Deribit.
    """
    if not isinstance(name, str):
        raise InstrumentNameError(f"instrument name must be a string, got {type(name).__name__}")
    m = _OPTION_RE.match(name)
    if m:
        underlying, day, mon, yy, strike_txt, cp = m.groups()
        strike = float(strike_txt.replace("d", "."))
        if not strike > 0:
            raise InstrumentNameError(f"instrument {name!r}: strike must be positive")
        return underlying, _expiry_ms(name, day, mon, yy), strike, cp
    m = _FUTURE_RE.match(name)
    if m:
        underlying, day, mon, yy = m.groups()
        return underlying, _expiry_ms(name, day, mon, yy), None, None
    m = _PERP_RE.match(name)
    if m:
        return m.group(1), 0, None, None
    raise InstrumentNameError(
        f"instrument {name!r} is not a Deribit name; expected an option BTC-27DEC24-100000-C, "
        "a future BTC-27DEC24 or a perpetual BTC-PERPETUAL")


def instrument_kind(name: str) -> str:
    """"option" | "future" | "perpetual"; raises InstrumentNameError for unknown forms."""
    _, expiry_ms, strike, _ = parse_instrument_name(name)
    if strike is not None:
        return "option"
    return "perpetual" if expiry_ms == 0 else "future"


def format_strike(strike: float) -> str:
    """100000 → "100000"; 0.625 → "0d625" (Deribit's decimal-point convention)."""
    if strike == int(strike):
        return str(int(strike))
    return repr(float(strike)).replace(".", "d")


def format_expiry(expiry_ms: int) -> str:
    """1735286400000 → "27DEC24" (day without zero padding)."""
    dt = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    return f"{dt.day}{_MONTHS[dt.month - 1]}{dt.year % 100:02d}"


def format_instrument_name(underlying: str, expiry_ms: int, strike: Optional[float] = None,
                           option_type: Optional[str] = None) -> str:
    """The inverse of parse_instrument_name (expiry_ms 0 = perpetual)."""
    if expiry_ms == 0:
        return f"{underlying}-PERPETUAL"
    if strike is None:
        return f"{underlying}-{format_expiry(expiry_ms)}"
    if option_type not in ("C", "P"):
        raise ValueError(f"option_type must be 'C' or 'P', got {option_type!r}")
    return f"{underlying}-{format_expiry(expiry_ms)}-{format_strike(strike)}-{option_type}"


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
MAX_PRICE = 1e9
MAX_AMOUNT = 1e12
_DELETE_ACTIONS = {"new": False, "change": False, "delete": True}
GROUPED_DEPTHS = (1, 10, 20)  # the depths Deribit offers on book.{instrument}.{group}.{depth}.{interval}


def grouped_depth(depth: int) -> int:
    """The grouped channel depth that carries `depth` levels per side."""
    for d in GROUPED_DEPTHS:
        if d >= depth:
            return d
    raise ValueError(f"depth={depth}: a grouped book carries at most {GROUPED_DEPTHS[-1]} levels per side; "
                     "use the incremental book for more")


def _levels(raw: Any, side: str, instrument: str, snapshot: bool) -> tuple[tuple[float, float], ...]:
    """[[action, price, amount], …] (or grouped [[price, amount], …]) → ((price, size), …).
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
    return tuple(out)


# The hot path (~90 % of the traffic): a well-formed book notification, decoded and checked
# by msgspec in C in one pass (types, level actions, price and amount ranges), ~5x cheaper than
# orjson plus checks in Python. Anything it refuses goes to the careful parser below, which
# gives the precise error, so both paths give identical results (tests/connectors/venues/test_deribit_parse.py).
_Px = Annotated[float, msgspec.Meta(gt=0, lt=MAX_PRICE)]
_Amt = Annotated[float, msgspec.Meta(ge=0, lt=MAX_AMOUNT)]
_Action = Literal["new", "change", "delete"]


class _BookData(msgspec.Struct):
    type: Literal["snapshot", "change"]
    timestamp: int
    instrument_name: Annotated[str, msgspec.Meta(min_length=1)]
    change_id: int
    bids: list[tuple[_Action, _Px, _Amt]]
    asks: list[tuple[_Action, _Px, _Amt]]
    prev_change_id: Optional[int] = None


class _BookParams(msgspec.Struct):
    channel: str
    data: _BookData


class _BookFrame(msgspec.Struct):
    method: Literal["subscription"]
    params: _BookParams


class _GroupedData(msgspec.Struct):
    timestamp: int
    instrument_name: Annotated[str, msgspec.Meta(min_length=1)]
    change_id: int
    bids: tuple[tuple[_Px, _Amt], ...]
    asks: tuple[tuple[_Px, _Amt], ...]
    # an incremental book's fields: a frame carrying either is not a grouped snapshot
    type: msgspec.UnsetType = msgspec.UNSET
    prev_change_id: msgspec.UnsetType = msgspec.UNSET


class _GroupedParams(msgspec.Struct):
    channel: str
    data: _GroupedData


class _GroupedFrame(msgspec.Struct):
    method: Literal["subscription"]
    params: _GroupedParams


_decode_book = msgspec.json.Decoder(_BookFrame).decode
_decode_grouped = msgspec.json.Decoder(_GroupedFrame).decode
_NOT_FAST = (msgspec.ValidationError, msgspec.DecodeError)
# Grouped (depth-limited) channels are named book.{instrument}.{group}.{depth}.{interval};
# the client always asks for group "none". The marker only picks which decoder to try: a frame
# it misleads is refused by that decoder and read by the careful parser.
_GROUPED_MARK = ".none."
_GROUPED_MARK_B = _GROUPED_MARK.encode()


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
    bids, asks = d.bids, d.asks
    # best bid and ask by value, not position (a venue's order is not checked elsewhere)
    if bids and asks and max(bids)[0] >= min(asks)[0]:
        return None  # crossed: the careful path reports it
    return [BookUpdate(VENUE, d.instrument_name, d.timestamp, ts_recv_ms, d.change_id, None, "snapshot", bids, asks)]


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
        bids = tuple([(px, amt) for _, px, amt in d.bids])
        asks = tuple([(px, amt) for _, px, amt in d.asks])
        if bids and asks:
            best_bid = max((p for p, q in bids if q > 0), default=None)
            best_ask = min((p for p, q in asks if q > 0), default=None)
            if best_bid is not None and best_ask is not None and best_bid >= best_ask:
                return None  # crossed: the careful path reports it
        prev = None
    else:
        prev = d.prev_change_id
        if prev is None:
            return None
        bids = tuple([(px, 0.0 if action == "delete" else amt) for action, px, amt in d.bids])
        asks = tuple([(px, 0.0 if action == "delete" else amt) for action, px, amt in d.asks])
    return [BookUpdate(VENUE, d.instrument_name, d.timestamp, ts_recv_ms, d.change_id, prev, d.type, bids, asks)]


_Price = Optional[Annotated[float, msgspec.Meta(ge=0, lt=MAX_PRICE)]]  # 0 or absent: none
_Number = Optional[Annotated[float, msgspec.Meta(gt=-MAX_AMOUNT, lt=MAX_AMOUNT)]]
_PctIv = Optional[Annotated[float, msgspec.Meta(ge=0, lt=MAX_AMOUNT)]]


class _TickerData(msgspec.Struct):
    instrument_name: Annotated[str, msgspec.Meta(min_length=1)]
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


class _TickerParams(msgspec.Struct):
    channel: str
    data: _TickerData


class _TickerFrame(msgspec.Struct):
    method: Literal["subscription"]
    params: _TickerParams


_decode_ticker = msgspec.json.Decoder(_TickerFrame).decode


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
    if typ is None and "prev_change_id" not in data:
        typ = "snapshot"  # grouped books are whole snapshots without a type
    if typ == "snapshot":
        prev = None
    elif typ == "change":
        prev = _int(data.get("prev_change_id"), "prev_change_id", inst)
    else:
        raise _Bad("bad_field", f"book type {typ!r:.40} is not snapshot|change", inst)
    snap = typ == "snapshot"
    bids = _levels(data.get("bids"), "bids", inst, snap)
    asks = _levels(data.get("asks"), "asks", inst, snap)
    if snap and bids and asks:
        best_bid = max(p for p, s in bids if s > 0) if any(s > 0 for _, s in bids) else None
        best_ask = min(p for p, s in asks if s > 0) if any(s > 0 for _, s in asks) else None
        if best_bid is not None and best_ask is not None and best_bid >= best_ask:
            raise _Bad("crossed_book", f"snapshot best bid {best_bid} >= best ask {best_ask}", inst)
    return [BookUpdate(VENUE, inst, ts, ts_recv_ms, change_id, prev, typ, bids, asks)]


def _ticker(channel: str, data: dict, ts_recv_ms: int) -> list:
    inst = _str(data.get("instrument_name"), "instrument_name")
    try:
        underlying, expiry_ms, strike, _ = parse_instrument_name(inst)
    except InstrumentNameError as exc:
        raise _Bad("unknown_instrument", str(exc), inst) from None
    ts = _int(data.get("timestamp"), "timestamp", inst)
    bid = _opt_price(data, "best_bid_price", inst)
    ask = _opt_price(data, "best_ask_price", inst)
    if bid is not None and ask is not None and bid > ask:
        raise _Bad("crossed_book", f"ticker best bid {bid} > best ask {ask}", inst)
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
    try:
        parse_instrument_name(name)
    except InstrumentNameError as exc:
        raise _Bad("unknown_instrument", str(exc), name) from None
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
    try:
        underlying, expiry_from_name, strike, cp = parse_instrument_name(name)
    except InstrumentNameError as exc:
        raise _Bad("unknown_instrument", str(exc), name) from None
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
        str(row.get("quote_currency", "")), ts_recv_ms)


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
    if (_GROUPED_MARK in raw) if type(raw) is str else (type(raw) is bytes and _GROUPED_MARK_B in raw):
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


# ---------------------------------------------------------------- live client


def _channel_instrument(channel: str) -> str:
    # book.BTC-27DEC24-100000-C.100ms → BTC-27DEC24-100000-C (names contain no dots)
    parts = channel.split(".")
    return parts[1] if len(parts) >= 3 else ""


class RpcError(Exception):
    def __init__(self, method: str, error: dict):
        super().__init__(f"{method}: error {error.get('code')} {error.get('message')}")
        self.code = error.get("code")


class DeribitClient(VenueClient):
    """One websocket session to Deribit (or the simulator), on its own thread and event loop.

    Call start(); read with drain(); stop() shuts down and joins. Parsed market events wait in
    a FoldingQueue (connectors/venues/folding.py): under a slow consumer pending book changes of one
    instrument fold into one exact change and tickers/index prices keep their latest value, so
    the queue stays bounded and the socket loop never blocks on the consumer; past the bound a
    book is resynchronised from a fresh snapshot (see the module docstring).

    Instruments: discovered with public/get_instruments at connect, then refreshed every
    `refresh_s` and on instrument.state notifications (within `instruments_per_s` /
    `instruments_burst`, Deribit's 1 per 10 s, burst 5). New listings are announced (their
    Instrument events first) and subscribed intraday; delisted ones are unsubscribed, dropped
    from the queue and withheld downstream (a seq_gap FeedError with no snapshot to follow);
    instruments reaching their expiry (08:00 UTC, by `clock_ms`) are unsubscribed and their
    late frames dropped (counted `late_frames`), the chain step removes the expiry itself.

    Liveness: set_heartbeat, test_requests answered at once on this loop; a session with no
    frame, or no heartbeat, for `silence_factor` × heartbeat_s is closed and reconnected with
    jittered exponential backoff; every book then starts again from a fresh snapshot and is
    withheld downstream (seq_gap) from the disconnect until then.

    `inline_work` (tests and demonstrations only) runs a function on the socket loop for each
    market event: the naive design this client exists to avoid (see tests/connectors/venues/test_starvation.py).
    `frame_tap(ts_recv_ms, frame)` (recording, connectors/capture/record.py) is called on this loop with
    every frame received, discovery responses included, before it is parsed.

    Counters: frames, bytes, events.<Type>, errors.<reason>, gaps, crossed, reconnects,
    heartbeats_answered, queue_drops, resyncs, connects, subscribed_channels, listed, delisted,
    expired, late_frames, queue_len, queue.<pushed|folded|drained|overflow|…>, fold_ratio
    (events pushed per event drained).
    """

    venue = VENUE

    def __init__(self, url: str = DEFAULT_URL, currencies: Iterable[str] = ("BTC",), *,
                 interval: str = "100ms", heartbeat_s: float = 10, queue_max: int = 200_000,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, discovery_max_bytes: int = 64 << 20,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 include_futures: bool = True, subscribe_batch: int = 500,
                 subscribe_burst: int = 10, subscribe_per_s: float = 3.0,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 resync_delay_s: float = 0.05, open_timeout_s: float = 10.0,
                 proxy: Any = None, seed: Optional[int] = None,
                 refresh_s: float = 300.0, instruments_per_s: float = 0.1, instruments_burst: int = 5,
                 track_instrument_state: bool = True, silence_factor: float = 2.0,
                 fold_max_levels: int = 2_000, clock_ms: Optional[Callable[[], int]] = None,
                 inline_work: Optional[Callable[[Any], None]] = None, frame_tap: Optional[FrameTap] = None,
                 route: Optional[tuple[int, int]] = None, book_depth: Optional[int] = None):
        if interval not in ("100ms", "agg2", "raw"):
            raise ValueError(f"interval={interval!r}: use '100ms' (unauthenticated), 'agg2' or 'raw'")
        if book_depth is not None and (book_depth not in GROUPED_DEPTHS or interval == "raw"):
            raise ValueError(f"book_depth={book_depth!r}, interval={interval!r}: a grouped book has depth "
                             f"{', '.join(map(str, GROUPED_DEPTHS))} and interval '100ms' or 'agg2' "
                             "(book_depth=None subscribes the incremental book)")
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s={heartbeat_s}: must be > 0 (Deribit requires >= 10)")
        if not silence_factor > 1:
            raise ValueError(f"silence_factor={silence_factor}: must be > 1 (2 = two heartbeat intervals)")
        if not (instruments_per_s > 0 and instruments_burst >= 1 and refresh_s > 0):
            raise ValueError(f"refresh_s={refresh_s}, instruments_per_s={instruments_per_s}, instruments_burst="
                             f"{instruments_burst}: all must be positive (Deribit: 0.1 per s, burst 5)")
        self.currencies = tuple(c.upper() for c in currencies)
        # The loop thread pushes, the consumer drains: pending events of one key fold.
        super().__init__(url=url, make_queue=lambda n: LockedFoldingQueue(n, fold_max_levels),
                         thread_name=f"deribit-{'-'.join(self.currencies)}", seed=seed, queue_max=queue_max,
                         max_frame_bytes=max_frame_bytes, max_expiries=max_expiries, max_strikes=max_strikes,
                         include_futures=include_futures, subscribe_batch=subscribe_batch,
                         resync_delay_s=resync_delay_s, reconnect_min_s=reconnect_min_s,
                         reconnect_max_s=reconnect_max_s, open_timeout_s=open_timeout_s, proxy=proxy,
                         frame_tap=frame_tap, route=route)
        self.interval = interval
        self.book_depth = book_depth
        self.heartbeat_s = heartbeat_s
        self.discovery_max_bytes = max(discovery_max_bytes, max_frame_bytes)
        self.subscribe_burst = subscribe_burst
        self.subscribe_per_s = subscribe_per_s
        self.refresh_s = refresh_s
        self.track_instrument_state = track_instrument_state
        self.silence_factor = silence_factor
        self.clock_ms = clock_ms or now_ms
        self.inline_work = inline_work
        self._ws = None
        self._pending: dict[int, asyncio.Future] = {}
        self._last_change: dict[str, int] = {}
        self._books: dict[str, tuple[dict, dict]] = {}  # levels, only to catch crossed changes
        self._resync_pending: set[str] = set()
        self._resync_task: Optional[asyncio.Task] = None
        self._discovering = 0
        self._subscribe_bucket = TokenBucket(subscribe_per_s, subscribe_burst)  # PROTOCOLS A.6
        self._instruments_bucket = TokenBucket(instruments_per_s, instruments_burst)  # PROTOCOLS A.2
        # name → the removal count when it was delisted or expired: a listing fetched before
        # that must not bring it back (see _refresh)
        self._removed_at: dict[str, int] = {}
        self._removals = 0
        self._last_frame = time.monotonic()
        self._last_heartbeat = time.monotonic()
        self._refresh_wanted: set[str] = set()
        self._wake: Optional[asyncio.Event] = None
        self._tasks: set[asyncio.Task] = set()
        self.channels: list[str] = []  # the current session's subscriptions
        self.instruments: dict[str, Instrument] = {}  # listed (last discovery)
        self.active: dict[str, Instrument] = {}  # subscribed and emitted

    # -------------------------------------------------- loop thread

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        if self._stopping:
            return
        attempt = 0
        while not self._stopping:
            healthy = False
            try:
                async with self._connect(self.discovery_max_bytes, ping_interval=20, ping_timeout=20) as ws:
                    self._ws = ws
                    self._bump("connects", notify=True)
                    healthy = await self._session(ws)
            except (OSError, asyncio.TimeoutError, WebSocketException, RpcError, ConnectionError) as exc:
                reason = "rate_limited" if isinstance(exc, RpcError) and exc.code == 10028 else "disconnect"
                self._bump(f"errors.{reason}")
                self._push_error(reason, f"{type(exc).__name__}: {exc}"[:300])
            finally:
                self._ws = None
                self._fail_pending()
                self._withhold_all("disconnected: withheld until the fresh snapshot after reconnecting")
            if self._stopping:
                break
            attempt = 0 if healthy else attempt + 1
            if await self._backoff(attempt):
                break
            self._bump("reconnects", notify=True)

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._pending.clear()

    def _withhold_all(self, detail: str) -> None:
        """Every live book is stale once the session ends: say so downstream at once."""
        for inst in list(self._last_change):
            self._queue_discard(inst, "B")
            self._bump("errors.seq_gap")
            self._push_error("seq_gap", detail, inst)
        self._last_change.clear()
        self._books.clear()
        self._stale.clear()
        self._resync_pending.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _session(self, ws) -> bool:
        """Set up one connection and read until it ends. Returns True if it got to streaming."""
        self._last_change.clear()
        self._books.clear()
        self._stale.clear()
        self._resync_pending.clear()
        self._heartbeat_on = False
        reader = asyncio.get_running_loop().create_task(self._reader(ws))
        stopper = asyncio.get_running_loop().create_task(self._stop.wait())
        streaming = False
        maintain = None
        try:
            setup = asyncio.get_running_loop().create_task(self._setup(ws))
            done, _ = await asyncio.wait({setup, reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if setup in done:
                setup.result()  # raises setup errors
                streaming = True
                self._bump("sessions_streaming", notify=True)
                maintain = asyncio.get_running_loop().create_task(self._maintain(ws))
                await asyncio.wait({reader, stopper, maintain}, return_when=asyncio.FIRST_COMPLETED)
                if maintain.done() and not maintain.cancelled():
                    maintain.result()  # a maintenance failure ends the session, loudly
            else:
                setup.cancel()
            if reader.done() and not reader.cancelled():
                reader.result()  # raises the read error, if any
        finally:
            for t in (reader, stopper, maintain, *self._tasks):
                if t is not None:
                    t.cancel()
            if self._resync_task is not None:
                self._resync_task.cancel()
                self._resync_task = None
            await close_draining(ws)
        return streaming

    async def _call(self, ws, method: str, params: dict, timeout: float = 30.0) -> Any:
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}),
                      text=True)
        try:
            ctl: Control = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req_id, None)
        if ctl.error is not None:
            raise RpcError(method, ctl.error)
        return ctl.result

    async def _setup(self, ws) -> None:
        hb = int(self.heartbeat_s) if float(self.heartbeat_s).is_integer() else self.heartbeat_s
        await self._call(ws, "public/set_heartbeat", {"interval": hb})
        self._heartbeat_on = True
        self._last_heartbeat = time.monotonic()
        self.active.clear()  # a new session subscribes everything again
        channels: list[str] = []
        for cur in self.currencies:
            listed = await self._discover(ws, cur)
            spot = await self._spot(ws, cur)
            for inst in self._choose(listed, spot):
                channels.extend(self._activate(inst))
            channels.append(f"deribit_price_index.{cur.lower()}_usd")
            if self.track_instrument_state:
                kinds = ("option", "future") if self.include_futures else ("option",)
                channels.extend(f"instrument.state.{k}.{cur.lower()}" for k in kinds)
        self.channels = channels
        await self._subscribe(ws, channels)
        self._counters["subscribed_channels"] = len(self.channels)
        self._counters["listed"] = len(self.active)

    async def _subscribe(self, ws, channels: list[str], method: str = "public/subscribe") -> None:
        for i in range(0, len(channels), self.subscribe_batch):
            await self._subscribe_bucket.take()
            await self._call(ws, method, {"channels": channels[i:i + self.subscribe_batch]})

    def _activate(self, inst: Instrument) -> list[str]:
        """Announce an instrument (its Instrument event goes out before any market event about
        it) and return its channels."""
        self._push(inst)
        self.active[inst.instrument] = inst
        if inst.kind == "option":
            return [self._book_channel(inst.instrument), f"ticker.{inst.instrument}.{self.interval}"]
        return [f"ticker.{inst.instrument}.{self.interval}"]

    def _book_channel(self, name: str) -> str:
        if self.book_depth is None:
            return f"book.{name}.{self.interval}"
        return f"book.{name}.none.{self.book_depth}.{self.interval}"

    async def _discover(self, ws, currency: str) -> dict[str, Instrument]:
        """public/get_instruments for each kind → the live listing of `currency` (rate limited).
        Instruments already past their expiry are left out even if still listed."""
        names: set[str] = set()
        for kind in ("option", "future") if self.include_futures else ("option",):
            await self._instruments_bucket.take(lambda: self._bump("instrument_calls_waited"))
            self._discovering += 1
            try:
                rows = await self._call(ws, "public/get_instruments",
                                        {"currency": currency, "kind": kind, "expired": False}, timeout=60.0)
            finally:
                self._discovering -= 1
            self._bump("discoveries")
            if isinstance(rows, list):
                names.update(r.get("instrument_name") for r in rows if isinstance(r, dict))
        now = self.clock_ms()
        for name in [n for n, i in self.instruments.items() if i.underlying == currency and n not in names]:
            del self.instruments[name]
        return {n: i for n, i in self.instruments.items()
                if n in names and i.underlying == currency and (i.expiry_ms == 0 or i.expiry_ms > now)}

    def _choose(self, listed: dict[str, Instrument], spot: Optional[float]) -> list[Instrument]:
        options = [i for i in listed.values() if i.kind == "option"]
        chosen = [i for i in filter_options(options, spot, self.max_expiries, self.max_strikes) if self.on_this_worker(i)]
        if self.include_futures:
            chosen.extend(sorted((i for i in listed.values() if i.kind != "option" and self.on_this_worker(i)),
                                 key=lambda i: i.instrument))
        return chosen

    async def _spot(self, ws, currency: str) -> Optional[float]:
        try:
            res = await self._call(ws, "public/get_index_price", {"index_name": f"{currency.lower()}_usd"})
            return float(res["index_price"])
        except (RpcError, KeyError, TypeError, ValueError, asyncio.TimeoutError):
            return None

    # -------------------------------------------------- listings and expiries

    async def _maintain(self, ws) -> None:
        """Expire instruments at their expiry, refresh listings on schedule or when told."""
        next_refresh = time.monotonic() + self.refresh_s
        while True:
            now = self.clock_ms()
            expired = [n for n, i in self.active.items() if 0 < i.expiry_ms <= now]
            if expired:
                await self._remove(ws, expired, "expired")
            if time.monotonic() >= next_refresh:
                self._refresh_wanted.update(self.currencies)
                next_refresh = time.monotonic() + self.refresh_s
            while self._refresh_wanted:
                await self._refresh(ws, self._refresh_wanted.pop())
            future = [i.expiry_ms for i in self.active.values() if i.expiry_ms > now]
            wait_s = next_refresh - time.monotonic()
            if future:  # wake at the next expiry (checked again at least every second)
                wait_s = min(wait_s, max((min(future) - now) / 1000.0, 0.0), 1.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait_s, 0.001))
            except asyncio.TimeoutError:
                pass

    async def _refresh(self, ws, currency: str) -> None:
        removals_before = self._removals
        listed = await self._discover(ws, currency)
        # Discovery awaits two responses; a delisting notice read in between removed names this
        # listing still holds. They are not new listings: leave them out.
        for name in [n for n, k in self._removed_at.items() if k >= removals_before and n in listed]:
            del listed[name]
        self._removed_at = {n: k for n, k in self._removed_at.items() if k >= removals_before}
        gone = [n for n, i in self.active.items() if i.underlying == currency and n not in listed]
        if gone:
            await self._remove(ws, gone, "delisted")
        new = [i for i in self._choose(listed, None if self.max_strikes is None else await self._spot(ws, currency))
               if i.instrument not in self.active]
        if new:
            channels: list[str] = []
            for inst in new:
                channels.extend(self._activate(inst))  # Instrument events first, then subscribe
            self.channels.extend(channels)
            self._bump("listed_intraday", len(new), notify=True)
            await self._subscribe(ws, channels)
            self._counters["subscribed_channels"] = len(self.channels)
        self._counters["listed"] = len(self.active)
        self._bump("refreshes", notify=True)

    async def _remove(self, ws, names: list[str], why: str) -> None:
        """Stop emitting `names`: forget their state, drop their queued events, unsubscribe."""
        await self._unsubscribe(ws, self._forget(names, why))

    def _forget(self, names: list[str], why: str) -> list[str]:
        """Forget `names` at once (frames already in flight are then dropped as late_frames) and
        return their channels to unsubscribe. Delisted options are withheld downstream for good
        (a seq_gap no snapshot will end); at expiry the chain step removes the whole expiry
        itself, so nothing is sent."""
        channels: list[str] = []
        self._removals += 1
        for name in names:
            inst = self.active.pop(name, None)
            if inst is None:
                continue
            self._removed_at[name] = self._removals
            self._last_change.pop(name, None)
            self._books.pop(name, None)
            self._stale.discard(name)
            self._resync_pending.discard(name)
            self._queue_discard(name, "BTF")
            if why != "expired" and inst.kind == "option":
                self._bump("errors.seq_gap")
                self._push_error("seq_gap", f"{why}: {name} is no longer listed; withheld for good", name)
            channels.extend(c for c in self.channels if c.split(".")[1:2] == [name])
        dropped = set(channels)
        self.channels = [c for c in self.channels if c not in dropped]
        self._bump(why, len(names), notify=True)
        self._counters["listed"] = len(self.active)
        self._counters["subscribed_channels"] = len(self.channels)
        return channels

    async def _unsubscribe(self, ws, channels: list[str]) -> None:
        if channels:
            try:
                await self._subscribe(ws, channels, "public/unsubscribe")
            except (RpcError, asyncio.TimeoutError) as exc:  # the server stops sending them anyway
                self._bump("errors.unsubscribe_failed")
                log.warning("unsubscribe of %d channels failed: %s", len(channels), exc)

    def _on_instrument_state(self, name: str, state: str) -> None:
        if state in ("created", "started"):
            if name not in self.active:
                try:
                    currency = parse_instrument_name(name)[0]
                except InstrumentNameError:
                    return
                if currency in self.currencies:
                    self._refresh_wanted.add(currency)
                    self._wake.set()
        elif name in self.active:
            inst = self.active[name]
            # a settlement notice just before 08:00 is the normal expiry, not a delisting
            why = "expired" if 0 < inst.expiry_ms <= self.clock_ms() + 60_000 else "delisted"
            # forgotten now, not when the task runs: the frames read meanwhile are late
            self._spawn(self._unsubscribe(self._ws, self._forget([name], why)))

    # -------------------------------------------------- reading

    async def _watchdog(self, ws) -> None:
        # No frame, or no heartbeat since set_heartbeat, for silence_factor × the interval
        # means a dead or broken session (PROTOCOLS A.5): close it and reconnect.
        silence_s = max(self.silence_factor * self.heartbeat_s, 0.2)
        while True:
            await asyncio.sleep(silence_s / 8)
            now = time.monotonic()
            if now - self._last_frame > silence_s:
                self._bump("errors.silence", notify=True)
                await ws.close(1001, "no frames within 2 heartbeat intervals")
                return
            if self._heartbeat_on and now - self._last_heartbeat > silence_s:
                self._bump("errors.heartbeat_silence", notify=True)
                await ws.close(1001, "no heartbeats within 2 heartbeat intervals")
                return

    async def _reader(self, ws) -> None:
        self._last_frame = time.monotonic()
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(ws))
        try:
            await self._read_loop(ws)
        finally:
            watchdog.cancel()

    async def _read_loop(self, ws) -> None:
        monotonic = time.monotonic
        inline = self.inline_work
        while True:
            raw = await ws.recv(decode=False)
            self._last_frame = monotonic()
            ts = self._received(raw)
            limit = self.discovery_max_bytes if self._discovering else self.max_frame_bytes
            for ev in parse_frame(raw, ts, limit):
                if type(ev) is Control:
                    await self._control(ws, ev)
                else:
                    if inline is not None:
                        inline(ev)  # the naive design: consumer work on the socket loop
                    self._route(ev)

    async def _control(self, ws, ctl: Control) -> None:
        if ctl.kind == "test_request":
            self._last_heartbeat = time.monotonic()
            # Answer at once on this loop: an unanswered test_request closes the session.
            await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": "public/test",
                                        "params": {}}), text=True)
            self._bump("heartbeats_answered", notify=True)
        elif ctl.kind == "heartbeat":
            self._last_heartbeat = time.monotonic()
            self._counters["heartbeats"] += 1
        elif ctl.kind == "instrument_state":
            self._counters["instrument_states"] += 1
            self._on_instrument_state(*ctl.result)
        else:
            fut = self._pending.get(ctl.id)
            if fut is not None and not fut.done():
                fut.set_result(ctl)

    def _route(self, ev) -> None:
        """Sequence and sanity bookkeeping, then the queue. Runs on the loop thread only."""
        counters = self._counters
        tname = type(ev).__name__
        counters["events." + tname] += 1
        if tname == "BookUpdate":
            inst = ev.instrument
            if inst not in self.active:
                counters["late_frames"] += 1  # expired or delisted: in flight when we left
                return
            if ev.kind == "snapshot":
                self._stale.discard(inst)
                self._last_change[inst] = ev.seq
                if self.book_depth is None:  # a grouped book has no changes to check against a copy
                    self._books[inst] = ({p: s for p, s in ev.bids if s > 0}, {p: s for p, s in ev.asks if s > 0})
            else:
                if not self._chain_continues(ev, self._last_change.get(inst), "prev_change_id", "change_id"):
                    return
                crossed = self._apply_levels(inst, ev)
                if crossed is not None:
                    counters["crossed"] += 1
                    counters["errors.crossed_book"] += 1
                    self._push(FeedError(VENUE, "crossed_book", crossed, ev.ts_recv_ms, inst))
                    self._mark_stale(inst, f"crossed book after change_id {ev.seq}: {crossed}")
                    return
                self._last_change[inst] = ev.seq
            if not self._push(ev):
                counters["gaps_queue"] += 1
                self._mark_stale(inst, "event queue bound reached: book resynced from a fresh snapshot")
            return
        if tname == "FeedError":
            counters["errors." + ev.reason] += 1
            if ev.instrument:
                if ev.instrument not in self.active:
                    counters["late_frames"] += 1
                    return
                if ev.detail.startswith("book."):
                    # A book frame we could not read leaves that book incomplete: error, then resync.
                    self._push(ev)
                    self._mark_stale(ev.instrument, f"unreadable book frame: {ev.reason}")
                    return
        elif tname == "Instrument":
            self.instruments[ev.instrument] = ev
            return  # announced by _activate once chosen
        elif tname == "Ticker" or tname == "FuturePrice":
            if ev.instrument not in self.active:
                counters["late_frames"] += 1
                return
        self._push(ev)

    def _apply_levels(self, inst: str, ev: BookUpdate) -> Optional[str]:
        """Apply a chained change to our copy of the levels; a description if it crosses."""
        book = self._books.get(inst)
        if book is None:
            return None
        bids, asks = book
        for px, sz in ev.bids:
            if sz > 0:
                bids[px] = sz
            else:
                bids.pop(px, None)
        for px, sz in ev.asks:
            if sz > 0:
                asks[px] = sz
            else:
                asks.pop(px, None)
        if bids and asks:
            best_bid, best_ask = max(bids), min(asks)
            if best_bid >= best_ask:
                return f"best bid {best_bid} >= best ask {best_ask}"
        return None

    def _queue_discard(self, inst: str, kinds: str) -> None:
        self._queue.discard(inst, kinds)

    def _mark_stale(self, inst: str, detail: str) -> None:
        first = inst not in self._stale
        self._stale.add(inst)
        self._last_change.pop(inst, None)
        self._books.pop(inst, None)
        if first:
            self._queue_discard(inst, "B")  # its pending changes are moot: a snapshot follows
            self._counters["errors.seq_gap"] += 1
            self._push_error("seq_gap", detail, inst)
            with self._cond:
                self._cond.notify_all()
        self._resync_pending.add(inst)
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        """Unsubscribe + subscribe the stale books' channels (batched) for fresh snapshots."""
        await asyncio.sleep(self.resync_delay_s)  # gather the gaps of one burst into one call
        ws = self._ws
        while self._resync_pending and ws is not None:
            insts = [i for i in sorted(self._resync_pending) if i in self.active][: self.subscribe_batch]
            self._resync_pending.difference_update(insts)
            if not insts:
                self._resync_pending.clear()
                return
            channels = [self._book_channel(i) for i in insts]
            self._bump("resyncs", len(insts), notify=True)  # counted when requested
            try:
                await self._subscribe_bucket.take()
                await self._call(ws, "public/unsubscribe", {"channels": channels})
                await self._subscribe_bucket.take()
                await self._call(ws, "public/subscribe", {"channels": channels})
            except (RpcError, ConnectionError, asyncio.TimeoutError) as exc:
                self._counters["errors.resync_failed"] += 1
                self._push_error("resync_failed", f"{type(exc).__name__}: {exc}"[:300])
                return  # a reconnect resubscribes everything


# ---------------------------------------------------------------- bytewax source


class DeribitSource(ClientSource):
    """One partition per currency ("deribit-BTC"), each owning its own DeribitClient; on a
    cluster (route_workers > 1) one per currency and worker slot (see ClientSource).

    snapshot() is None: a live source resubscribes after a restart and every book starts again
    from a fresh snapshot. `run_seconds` ends the partition (StopIteration) after that long,
    for tests and `--seconds` runs. `max_expiries`/`max_strikes` trim the chain for small runs.
    `book`: "incremental" (book.{instrument}.{interval}: a snapshot, then changes chained by
    change_id) or "grouped" (book.{instrument}.none.{N}.{interval}, N the Deribit depth ≥
    `depth`: every notification a whole snapshot of the top levels — no chain to break, and a
    move of every level costs one short frame instead of a delete and a new per level).
    Other keyword arguments go to DeribitClient.
    """

    def __init__(self, url: str = DEFAULT_URL, currencies: Iterable[str] = ("BTC", "ETH"), *, depth: int = 5,
                 book: str = "incremental",
                 interval: str = "100ms", heartbeat_s: float = 10, queue_max: int = 200_000,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, run_seconds: Optional[float] = None,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 batch_max: int = SOURCE_BATCH_MAX, idle_ms: float = 5.0, route_workers: int = 1, **client_kwargs: Any):
        self.url = url
        self.currencies = tuple(c.upper() for c in currencies)
        super().__init__("deribit", self.currencies, queue_max=queue_max, max_frame_bytes=max_frame_bytes,
                         max_expiries=max_expiries, max_strikes=max_strikes, run_seconds=run_seconds,
                         batch_max=batch_max, idle_ms=idle_ms, client_kwargs=client_kwargs,
                         route_workers=route_workers)
        if book not in ("incremental", "grouped"):
            raise ValueError(f"book={book!r}: use \"grouped\" or \"incremental\"")
        self.depth = depth  # levels kept downstream; the incremental channel always sends full depth
        self.book_depth = grouped_depth(depth) if book == "grouped" else None
        self.interval = interval
        self.heartbeat_s = heartbeat_s

    def make_client(self, currency: str, slot: int) -> DeribitClient:
        return DeribitClient(self.url, (currency,), interval=self.interval, heartbeat_s=self.heartbeat_s,
                             book_depth=self.book_depth, **self.client_options(slot))


DeribitPartition = ClientPartition  # one started DeribitClient, drained in batches
