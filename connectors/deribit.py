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
on a change_id gap and when its queue overflowed and had to drop a book event of X; in both
cases it resubscribes X's book channel, and X's next BookUpdate is a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import itertools
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterable, Optional

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

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

    kind: str  # "heartbeat" | "test_request" | "response"
    id: Optional[int] = None
    result: Any = None
    error: Optional[dict] = None


def now_ms() -> int:
    return int(time.time() * 1000)


class _Bad(Exception):
    """Internal: a frame that fails validation; becomes a FeedError."""

    def __init__(self, reason: str, detail: str, instrument: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.instrument = instrument


def _num(value: Any, field: str, instrument: str = "") -> float:
    # bool is an int subclass; orjson never yields NaN/inf from valid JSON but "1e999" is inf.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad("bad_field", f"{field} must be a number, got {value!r:.60}", instrument)
    f = float(value)
    if not math.isfinite(f):
        raise _Bad("bad_price", f"{field} is not finite: {value!r}", instrument)
    return f


def _opt_price(data: dict, field: str, instrument: str) -> Optional[float]:
    """A price where 0 or absence means "none" (Deribit's empty-side sentinel)."""
    value = data.get(field)
    if value is None:
        return None
    f = _num(value, field, instrument)
    if f < 0:
        raise _Bad("bad_price", f"{field} is negative: {f}", instrument)
    return f if f > 0 else None


def _iv(data: dict, field: str, instrument: str, absent: tuple[float, ...]) -> Optional[float]:
    """Percent IV → decimal; the sentinels in `absent` (0, 500) mean no IV."""
    value = data.get(field)
    if value is None:
        return None
    f = _num(value, field, instrument)
    if f < 0:
        raise _Bad("bad_price", f"{field} is negative: {f}", instrument)
    if f in absent:
        return None
    return f / 100.0


def _int(value: Any, field: str, instrument: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad("bad_field", f"{field} must be an integer, got {value!r:.60}", instrument)
    return value


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad("bad_field", f"{field} must be a non-empty string, got {value!r:.60}")
    return value


_INF = float("inf")
_DELETE_ACTIONS = {"new": False, "change": False, "delete": True}


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
        if not (0 < px < _INF and 0 <= amt < _INF):
            raise _Bad("bad_price", f"{side} level price {px} amount {amt}: price must be > 0 "
                       "and amount >= 0", instrument)
        append((float(px), 0.0 if delete else float(amt)))
    return tuple(out)


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
    if price <= 0:
        raise _Bad("bad_price", f"index {name} price {price} must be > 0", name)
    ts = _int(data.get("timestamp"), "timestamp", name)
    return [IndexPrice(VENUE, name.split("_", 1)[0].upper(), ts, ts_recv_ms, price)]


_CHANNELS = (("book.", _book), ("ticker.", _ticker), ("deribit_price_index.", _index))


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
        return [FeedError(VENUE, bad.reason, bad.detail, ts_recv_ms, bad.instrument)]
    except Exception as exc:  # a parser bug must not kill the feed; count it loudly
        return [FeedError(VENUE, "parse_error", f"{type(exc).__name__}: {exc}"[:300], ts_recv_ms)]


def _parse(raw: bytes | str, ts_recv_ms: int, max_bytes: int) -> list:
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        raise _Bad("malformed_json", f"frame must be bytes or str, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise _Bad("oversized", f"frame of {len(raw)} bytes exceeds max_frame_bytes={max_bytes}; "
                   "raise max_frame_bytes if this frame is legitimate")
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


async def _discard(ws) -> None:
    try:
        while True:
            await ws.recv(decode=False)
    except Exception:  # closed: exactly what we are waiting for
        pass


class RpcError(Exception):
    def __init__(self, method: str, error: dict):
        super().__init__(f"{method}: error {error.get('code')} {error.get('message')}")
        self.code = error.get("code")


class DeribitClient:
    """One websocket session to Deribit (or the simulator), on its own thread and event loop.

    Call start(); read with drain(); stop() shuts down and joins. Parsed market events land in
    a bounded deque; when it is full, events are dropped (counted) and the affected books are
    resynchronised (see the module docstring), the socket loop never blocks on the consumer.
    """

    def __init__(self, url: str = DEFAULT_URL, currencies: Iterable[str] = ("BTC",), *,
                 interval: str = "100ms", heartbeat_s: float = 10, queue_max: int = 200_000,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, discovery_max_bytes: int = 64 << 20,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 include_futures: bool = True, subscribe_batch: int = 500,
                 subscribe_burst: int = 10, subscribe_per_s: float = 3.0,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 resync_delay_s: float = 0.05, open_timeout_s: float = 10.0,
                 proxy: Any = None, seed: Optional[int] = None):
        if interval not in ("100ms", "agg2", "raw"):
            raise ValueError(f"interval={interval!r}: use '100ms' (unauthenticated), 'agg2' or 'raw'")
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s={heartbeat_s}: must be > 0 (Deribit requires >= 10)")
        if queue_max < 1:
            raise ValueError(f"queue_max={queue_max}: must be >= 1")
        self.url = url
        self.currencies = tuple(c.upper() for c in currencies)
        self.interval = interval
        self.heartbeat_s = heartbeat_s
        self.queue_max = queue_max
        self.max_frame_bytes = max_frame_bytes
        self.discovery_max_bytes = max(discovery_max_bytes, max_frame_bytes)
        self.max_expiries = max_expiries
        self.max_strikes = max_strikes
        self.include_futures = include_futures
        self.subscribe_batch = subscribe_batch
        self.subscribe_burst = subscribe_burst
        self.subscribe_per_s = subscribe_per_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.resync_delay_s = resync_delay_s
        self.open_timeout_s = open_timeout_s
        self.proxy = proxy
        self._rng = random.Random(seed)

        # deque append/popleft/len are atomic under the GIL: the loop thread appends, the
        # consumer pops; no lock is needed for this one-producer one-consumer use.
        self._queue: collections.deque = collections.deque()
        self._has_data = threading.Event()
        self._counters: collections.Counter = collections.Counter()
        self._cond = threading.Condition()  # notified on session milestones (tests, ops)
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._stopping = False
        self._ws = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._last_change: dict[str, int] = {}
        self._stale: set[str] = set()
        self._resync_pending: set[str] = set()
        self._resync_task: Optional[asyncio.Task] = None
        self._discovering = 0
        self._tokens = float(subscribe_burst)
        self._tokens_ts = time.monotonic()
        self._last_frame = time.monotonic()
        self.channels: list[str] = []  # the current session's subscriptions
        self.instruments: dict[str, Instrument] = {}

    # -------------------------------------------------- consumer side (any thread)

    def start(self) -> "DeribitClient":
        if self._thread is not None:
            raise RuntimeError("DeribitClient.start() called twice; create a new client instead")
        self._thread = threading.Thread(target=self._run, name=f"deribit-{'-'.join(self.currencies)}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        loop = self._loop
        if loop is not None and self._stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop already closed
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            self._cond.notify_all()

    def drain(self, max_items: int = 10_000, timeout: float = 0.0) -> list:
        """Up to max_items events, oldest first. Non-blocking unless timeout > 0 (then waits at
        most that long for the first event)."""
        q = self._queue
        if not q and timeout > 0:
            self._has_data.wait(timeout)
        out = []
        pop = q.popleft
        try:
            for _ in range(min(max_items, len(q))):
                out.append(pop())
        except IndexError:
            pass
        if not q:
            self._has_data.clear()
            if q:  # a producer appended between the check and the clear
                self._has_data.set()
        return out

    def counters(self) -> dict:
        """A copy: frames, bytes, events.<Type>, errors.<reason>, gaps, reconnects,
        heartbeats_answered, queue_drops, resyncs, connects, subscribed_channels, queue_len."""
        out = dict(self._counters)
        out["queue_len"] = len(self._queue)
        return out

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(counters()) is true (re-checked on session milestones)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.counters()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return predicate(self.counters())
                self._cond.wait(min(left, 0.05))
        return True

    # -------------------------------------------------- loop thread

    def _bump(self, key: str, n: int = 1, notify: bool = False) -> None:
        self._counters[key] += n
        if notify:
            with self._cond:
                self._cond.notify_all()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:  # never die silently: the counters say what happened
            log.exception("deribit client loop crashed")
            self._bump("errors.client_crash", notify=True)
        finally:
            loop.close()

    async def _main(self) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        self._stop = asyncio.Event()
        if self._stopping:
            return
        attempt = 0
        while not self._stopping:
            healthy = False
            try:
                async with connect(self.url, max_size=self.discovery_max_bytes, compression=None,
                                   open_timeout=self.open_timeout_s, proxy=self.proxy,
                                   ping_interval=20, ping_timeout=20, close_timeout=2,
                                   max_queue=1024) as ws:  # frames buffered before TCP backpressure
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
            if self._stopping:
                break
            attempt = 0 if healthy else attempt + 1
            # Exponential backoff with equal jitter: half fixed, half random, so a fleet of
            # clients dropped together does not reconnect in lockstep.
            cap = min(self.reconnect_max_s, self.reconnect_min_s * (2 ** min(attempt, 16)))
            delay = cap / 2 + self._rng.uniform(0, cap / 2)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
            if not self._stopping:
                self._bump("reconnects", notify=True)

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._pending.clear()

    async def _session(self, ws) -> bool:
        """Set up one connection and read until it ends. Returns True if it got to streaming."""
        self._last_change.clear()
        self._stale.clear()
        self._resync_pending.clear()
        reader = asyncio.get_running_loop().create_task(self._reader(ws))
        stopper = asyncio.get_running_loop().create_task(self._stop.wait())
        streaming = False
        try:
            setup = asyncio.get_running_loop().create_task(self._setup(ws))
            done, _ = await asyncio.wait({setup, reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if setup in done:
                setup.result()  # raises setup errors
                streaming = True
                self._bump("sessions_streaming", notify=True)
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            else:
                setup.cancel()
            if reader.done() and not reader.cancelled():
                reader.result()  # raises the read error, if any
        finally:
            for t in (reader, stopper):
                t.cancel()
            if self._resync_task is not None:
                self._resync_task.cancel()
                self._resync_task = None
            # Keep reading (and discarding) while closing: with the reader gone, a full receive
            # buffer would hide the server's close frame and stall close() for close_timeout.
            discard = asyncio.get_running_loop().create_task(_discard(ws))
            await ws.close()
            discard.cancel()
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
        channels: list[str] = []
        for cur in self.currencies:
            options, futures = [], []
            for name in [n for n, i in self.instruments.items() if i.underlying == cur]:
                del self.instruments[name]  # rediscover: expired listings must not come back
            for kind in ("option", "future") if self.include_futures else ("option",):
                self._discovering += 1
                try:
                    await self._call(ws, "public/get_instruments",
                                     {"currency": cur, "kind": kind, "expired": False}, timeout=60.0)
                finally:
                    self._discovering -= 1
            for inst in self.instruments.values():
                if inst.underlying != cur:
                    continue
                (options if inst.kind == "option" else futures).append(inst)
            spot = await self._spot(ws, cur)
            chosen = self._filter_options(options, spot)
            chosen_names = {i.instrument for i in chosen} | {f.instrument for f in futures}
            for name in list(self.instruments):
                inst = self.instruments[name]
                if inst.underlying == cur and name not in chosen_names:
                    del self.instruments[name]
            for inst in chosen:
                self._push(inst)
                channels.append(f"book.{inst.instrument}.{self.interval}")
                channels.append(f"ticker.{inst.instrument}.{self.interval}")
            for inst in futures:
                self._push(inst)
                channels.append(f"ticker.{inst.instrument}.{self.interval}")
            channels.append(f"deribit_price_index.{cur.lower()}_usd")
        self.channels = channels
        for i in range(0, len(channels), self.subscribe_batch):
            await self._subscribe_tokens()
            await self._call(ws, "public/subscribe", {"channels": channels[i:i + self.subscribe_batch]})
        self._counters["subscribed_channels"] = len(channels)

    async def _spot(self, ws, currency: str) -> Optional[float]:
        try:
            res = await self._call(ws, "public/get_index_price", {"index_name": f"{currency.lower()}_usd"})
            return float(res["index_price"])
        except (RpcError, KeyError, TypeError, ValueError, asyncio.TimeoutError):
            return None

    def _filter_options(self, options: list[Instrument], spot: Optional[float]) -> list[Instrument]:
        """Nearest max_expiries expiries; per expiry the max_strikes strikes nearest the spot
        (the median listed strike if the index is unknown). Both calls and puts are kept."""
        by_expiry: dict[int, list[Instrument]] = collections.defaultdict(list)
        for inst in options:
            by_expiry[inst.expiry_ms].append(inst)
        expiries = sorted(by_expiry)
        if self.max_expiries is not None:
            expiries = expiries[: self.max_expiries]
        out = []
        for e in expiries:
            insts = by_expiry[e]
            if self.max_strikes is not None:
                strikes = sorted({i.strike for i in insts})
                center = spot if spot else strikes[len(strikes) // 2]
                keep = set(sorted(strikes, key=lambda k: (abs(math.log(k / center)), k))[: self.max_strikes])
                insts = [i for i in insts if i.strike in keep]
            out.extend(sorted(insts, key=lambda i: (i.strike, i.option_type)))
        return out

    async def _subscribe_tokens(self) -> None:
        """A token bucket for public/subscribe (credits: ~3 calls/s, burst 10; PROTOCOLS A.6)."""
        while True:
            now = time.monotonic()
            self._tokens = min(self.subscribe_burst, self._tokens + (now - self._tokens_ts) * self.subscribe_per_s)
            self._tokens_ts = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.subscribe_per_s)

    async def _watchdog(self, ws) -> None:
        # Silence longer than ~2.5 heartbeat intervals means a dead connection (PROTOCOLS A.5).
        silence_s = max(2.5 * self.heartbeat_s, 1.0)
        while True:
            await asyncio.sleep(silence_s / 5)
            if time.monotonic() - self._last_frame > silence_s:
                self._bump("errors.silence")
                await ws.close(1001, "no frames within 2.5 heartbeat intervals")
                return

    async def _reader(self, ws) -> None:
        counters = self._counters
        self._last_frame = time.monotonic()
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(ws))
        try:
            await self._read_loop(ws, counters)
        finally:
            watchdog.cancel()

    async def _read_loop(self, ws, counters) -> None:
        monotonic = time.monotonic
        while True:
            raw = await ws.recv(decode=False)
            self._last_frame = monotonic()
            ts = now_ms()
            counters["frames"] += 1
            counters["bytes"] += len(raw)
            limit = self.discovery_max_bytes if self._discovering else self.max_frame_bytes
            for ev in parse_frame(raw, ts, limit):
                if type(ev) is Control:
                    await self._control(ws, ev)
                else:
                    self._route(ev)

    async def _control(self, ws, ctl: Control) -> None:
        if ctl.kind == "test_request":
            # Answer at once on this loop: an unanswered test_request closes the session.
            await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": "public/test",
                                        "params": {}}), text=True)
            self._bump("heartbeats_answered", notify=True)
        elif ctl.kind == "heartbeat":
            self._counters["heartbeats"] += 1
        else:
            fut = self._pending.get(ctl.id)
            if fut is not None and not fut.done():
                fut.set_result(ctl)

    def _route(self, ev) -> None:
        """Sequence bookkeeping, then the queue. Runs on the loop thread only."""
        counters = self._counters
        tname = type(ev).__name__
        counters["events." + tname] += 1
        if tname == "BookUpdate":
            inst = ev.instrument
            if ev.kind == "snapshot":
                self._stale.discard(inst)
                self._last_change[inst] = ev.seq
            else:
                last = self._last_change.get(inst)
                if inst in self._stale or last is None:
                    counters["changes_skipped_stale"] += 1  # waiting for a fresh snapshot
                    return
                if ev.prev_seq != last:
                    counters["gaps"] += 1
                    self._mark_stale(inst, f"prev_change_id {ev.prev_seq} != last change_id {last}")
                    return
                self._last_change[inst] = ev.seq
            if not self._push(ev):
                counters["gaps_queue"] += 1
                self._mark_stale(inst, "event queue full: a book event was dropped")
            return
        if tname == "FeedError":
            counters["errors." + ev.reason] += 1
            if ev.instrument and ev.detail.startswith("book."):
                # A book frame we could not read leaves that book incomplete: error, then resync.
                self._push(ev)
                self._mark_stale(ev.instrument, f"unreadable book frame: {ev.reason}")
                return
        elif tname == "Instrument":
            self.instruments[ev.instrument] = ev
            return  # pushed by _setup once filtered
        self._push(ev)

    def _push(self, ev) -> bool:
        if len(self._queue) >= self.queue_max:
            self._counters["queue_drops"] += 1
            return False
        self._queue.append(ev)
        if not self._has_data.is_set():
            self._has_data.set()
        return True

    def _push_error(self, reason: str, detail: str, instrument: str = "") -> None:
        # Staleness notices bypass the size limit: at most one per instrument per gap, and the
        # book step must see them to withhold the book.
        self._queue.append(FeedError(VENUE, reason, detail, now_ms(), instrument))
        self._has_data.set()

    def _mark_stale(self, inst: str, detail: str) -> None:
        first = inst not in self._stale
        self._stale.add(inst)
        self._last_change.pop(inst, None)
        if first:
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
            insts = sorted(self._resync_pending)[: self.subscribe_batch]
            self._resync_pending.difference_update(insts)
            channels = [f"book.{i}.{self.interval}" for i in insts]
            self._bump("resyncs", len(insts), notify=True)  # counted when requested
            try:
                await self._subscribe_tokens()
                await self._call(ws, "public/unsubscribe", {"channels": channels})
                await self._subscribe_tokens()
                await self._call(ws, "public/subscribe", {"channels": channels})
            except (RpcError, ConnectionError, asyncio.TimeoutError) as exc:
                self._counters["errors.resync_failed"] += 1
                self._push_error("resync_failed", f"{type(exc).__name__}: {exc}"[:300])
                return  # a reconnect resubscribes everything


# ---------------------------------------------------------------- bytewax source


class DeribitSource(FixedPartitionedSource):
    """One partition per currency ("deribit-BTC"), each owning its own DeribitClient.

    snapshot() is None: a live source resubscribes after a restart and every book starts again
    from a fresh snapshot. `run_seconds` ends the partition (StopIteration) after that long,
    for tests and `--seconds` runs. `max_expiries`/`max_strikes` trim the chain for small runs.
    Other keyword arguments go to DeribitClient.
    """

    def __init__(self, url: str = DEFAULT_URL, currencies: Iterable[str] = ("BTC", "ETH"), *, depth: int = 5,
                 interval: str = "100ms", heartbeat_s: float = 10, queue_max: int = 200_000,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, run_seconds: Optional[float] = None,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 batch_max: int = 5_000, idle_ms: float = 5.0, **client_kwargs: Any):
        self.url = url
        self.currencies = tuple(c.upper() for c in currencies)
        self.depth = depth  # levels kept downstream; the incremental channel always sends full depth
        self.interval = interval
        self.heartbeat_s = heartbeat_s
        self.queue_max = queue_max
        self.max_frame_bytes = max_frame_bytes
        self.run_seconds = run_seconds
        self.max_expiries = max_expiries
        self.max_strikes = max_strikes
        self.batch_max = batch_max
        self.idle_ms = idle_ms
        self.client_kwargs = client_kwargs

    def list_parts(self) -> list[str]:
        return [f"deribit-{c}" for c in self.currencies]

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> "DeribitPartition":
        currency = for_part.split("-", 1)[1]
        client = DeribitClient(self.url, (currency,), interval=self.interval, heartbeat_s=self.heartbeat_s,
                               queue_max=self.queue_max, max_frame_bytes=self.max_frame_bytes,
                               max_expiries=self.max_expiries, max_strikes=self.max_strikes,
                               **self.client_kwargs)
        return DeribitPartition(client, self.run_seconds, self.batch_max, self.idle_ms)


class DeribitPartition(StatefulSourcePartition):
    def __init__(self, client: DeribitClient, run_seconds: Optional[float], batch_max: int, idle_ms: float):
        self.client = client.start()
        self.deadline = time.monotonic() + run_seconds if run_seconds is not None else None
        self.batch_max = batch_max
        self.idle = timedelta(milliseconds=idle_ms)
        self.awake: Optional[datetime] = None

    def next_batch(self) -> list:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.client.stop()
            raise StopIteration()
        batch = self.client.drain(self.batch_max)
        # Idle: wake again in a few ms rather than spin (bytewax asks next_awake after each batch).
        self.awake = None if batch else datetime.now(timezone.utc) + self.idle
        return batch

    def next_awake(self) -> Optional[datetime]:
        return self.awake

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.client.stop()
