"""OKX v5 public websocket (options): instrument ids, frame parsing, a live client and a bytewax
source (PROTOCOLS.md §B, §C).

Translation only: bytes in, normalised events (operators.events, venue="okx") out. No volatility
math, no book state beyond seqId bookkeeping. The parser never raises: bad input becomes a
FeedError with a reason code. The client keeps its websocket reads, pings, resubscribes and
reconnects on its own thread and asyncio loop, so the dataflow's CPU work never starves them.

Units and conventions (what the events carry, and why):
- Premiums. OKX lists crypto-margined ("inverse") option families such as BTC-USD and ETH-USD:
  `settleCcy` is the coin, and book prices (`px` in books, `bidPx`/`askPx` in tickers) are in
  coin per one coin of underlying, exactly like Deribit (0.0415 BTC for a BTC option). They are
  passed through unchanged (BookUpdate levels, Ticker best_*_px are coin). PROTOCOLS.md §B marks
  this as not verified against a capture; the client therefore checks each option row's
  `settleCcy` against the family's coin at discovery and refuses a family whose premiums would
  not be in coin (FeedError reason "unsupported_units"), e.g. a USDC-margined one.
  Instrument.quote_currency = settleCcy ("BTC" = coin-quoted premiums, as in events.py).
- Sizes. Book sizes (`sz`) are numbers of contracts, passed through unchanged. One contract is
  Instrument.contract_size = ctVal × ctMult coin (0.01 BTC on BTC-USD options, as listed; the
  premium of one contract is px × contract_size coin). Deribit sizes are coin: multiply OKX sizes
  by contract_size before comparing depth across venues. Nothing in the IV chain uses sizes.
- IVs. `markVol`/`bidVol`/`askVol` in opt-summary are decimals (0.3676 = 36.76 %), the same unit
  as events.Ticker — no /100 (unlike Deribit's percent `mark_iv`). "0" or "" means "none" → None
  (PROTOCOLS: bidVol "0" when there is no bid; treated the same for askVol and markVol).
- Forward. opt-summary `fwdPx` (USD) → Ticker.underlying_px, the forward OKX uses for its vols.
- Prices "" or "0" on a ticker side mean an empty side → None. Timestamps are ms strings → int.
- Expiry. OKX options and futures expire at 08:00 UTC; parse_inst_id derives that from the id,
  the authoritative value is the instruments row's `expTime` (ms), which Instrument carries.
- Sequencing of `books` (PROTOCOLS §B; the OKX "Sequence ID" rules): a snapshot has
  prevSeqId −1 → BookUpdate(kind="snapshot", prev_seq=None); an update → kind="change" with
  seq=seqId, prev_seq=prevSeqId, and must satisfy prevSeqId == the previous seqId. Two updates
  that look odd are NOT gaps: the ~60 s keep-alive (empty bids/asks, prevSeqId == seqId) is passed
  on as a change that changes nothing (the book step then sees a live, unchanged book and a fresh
  exchange timestamp); a maintenance reset (seqId < prevSeqId, prevSeqId still chaining) is passed
  on as a normal change — the next update chains from the new, smaller seqId. `books5` and
  `bbo-tbt` messages are each a full snapshot (kind "snapshot", prev_seq None).

Non-market frames. `parse_frame` returns, next to market events, small `Control` objects for
session frames: subscribe/unsubscribe acks, errors (also a FeedError "rpc_error"), the 64008
service-upgrade notice (the client reconnects at once, before the server cuts it), and the text
frame `pong`. The client consumes them and never puts them on the event queue.

Discovery. The real venue lists options over REST, `GET /api/v5/public/instruments?instType=
OPTION&instFamily=BTC-USD` on https://www.okx.com (a different host from the websocket).
RestInstrumentsFetcher does exactly that with urllib; the simulator (connectors/sim/okx.py)
serves the same path over HTTP on its websocket port, so the tests exercise the real protocol.
Any callable `fetcher(inst_type, inst_family) -> list[row dict]` can be plugged in instead.

Staleness contract with the book step (same as connectors/venues/deribit/__init__.py): a
`FeedError(reason="seq_gap", instrument=X)` means "the book of X is incomplete: withhold it until
the next snapshot of X". The client emits it on a seqId gap and when its queue overflowed and had
to drop a book event of X (in both cases it resubscribes X's `books` channel), and for every book
of a connection that closed or was replaced after a 64008 notice (the reconnect resubscribes);
X's next BookUpdate is then a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import calendar
import collections
import logging
import math
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable, Iterable, Optional

import orjson
from websockets.exceptions import WebSocketException

from connectors.venues.base import BadFrame as _Bad
from connectors.venues.base import (BoundedQueue, ClientPartition, ClientSource, FrameTap, TokenBucket, VenueClient,
                                  SOURCE_BATCH_MAX, check_frame, close_draining, filter_options, now_ms)
from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker

log = logging.getLogger(__name__)

VENUE = "okx"
DEFAULT_URL = "wss://ws.okx.com:8443/ws/v5/public"
DEFAULT_REST_URL = "https://www.okx.com"
DEFAULT_MAX_FRAME_BYTES = 1 << 20
EXPIRY_HOUR_UTC = 8  # OKX options and futures expire at 08:00 UTC
INSTRUMENTS_PATH = "/api/v5/public/instruments"
INDEX_TICKERS_PATH = "/api/v5/market/index-tickers"
DEPTH_CHANNELS = ("books", "books5", "bbo-tbt", "books50-l2-tbt", "books-l2-tbt")
INCREMENTAL_BOOKS = ("books", "books50-l2-tbt", "books-l2-tbt")  # seqId-chained updates

# BTC-USD-241013-70000-P; futures BTC-USD-241227; swaps BTC-USD-SWAP. Strikes may be decimal.
_OPTION_RE = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)-(\d{2})(\d{2})(\d{2})-(\d+(?:\.\d+)?)-([CP])$")
_FUTURE_RE = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)-(\d{2})(\d{2})(\d{2})$")
_SWAP_RE = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)-SWAP$")


class InstIdError(ValueError):
    """An instrument id that is not an OKX option, future or swap."""


# ---------------------------------------------------------------- instrument ids


def _expiry_ms(inst_id: str, yy: str, mm: str, dd: str) -> int:
    year, month, day = 2000 + int(yy), int(mm), int(dd)
    if not 1 <= month <= 12:
        raise InstIdError(f"instrument {inst_id!r}: month {month} in the YYMMDD expiry is not 01..12")
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise InstIdError(f"instrument {inst_id!r}: day {day} does not exist in {year}-{month:02d}")
    return calendar.timegm((year, month, day, EXPIRY_HOUR_UTC, 0, 0)) * 1000


@lru_cache(maxsize=65536)
def parse_inst_id(inst_id: str) -> tuple[str, int, Optional[float], Optional[str]]:
    """`BTC-USD-241013-70000-P` → ("BTC", expiry_ms at 08:00 UTC, 70000.0, "P").

    Futures `BTC-USD-241227` give (underlying, expiry_ms, None, None); swaps `BTC-USD-SWAP`
    (underlying, 0, None, None). Raises InstIdError naming the input for anything else.
    """
    if not isinstance(inst_id, str):
        raise InstIdError(f"instrument id must be a string, got {type(inst_id).__name__}")
    m = _OPTION_RE.match(inst_id)
    if m:
        base, _quote, yy, mm, dd, strike_txt, cp = m.groups()
        strike = float(strike_txt)
        if not strike > 0:
            raise InstIdError(f"instrument {inst_id!r}: strike must be positive")
        return base, _expiry_ms(inst_id, yy, mm, dd), strike, cp
    m = _FUTURE_RE.match(inst_id)
    if m:
        base, _quote, yy, mm, dd = m.groups()
        return base, _expiry_ms(inst_id, yy, mm, dd), None, None
    m = _SWAP_RE.match(inst_id)
    if m:
        return m.group(1), 0, None, None
    raise InstIdError(
        f"instrument {inst_id!r} is not an OKX id; expected an option BTC-USD-241013-70000-P, "
        "a future BTC-USD-241227 or a swap BTC-USD-SWAP")


def inst_family(inst_id: str) -> str:
    """`BTC-USD-241013-70000-P` → "BTC-USD" (the instFamily/uly); raises InstIdError."""
    parse_inst_id(inst_id)
    base, quote = inst_id.split("-", 2)[:2]
    return f"{base}-{quote}"


def family_coin(family: str) -> str:
    """"BTC-USD" → "BTC"; raises ValueError naming the input for anything else."""
    if not isinstance(family, str) or not re.fullmatch(r"[A-Z0-9]+-[A-Z0-9]+", family):
        raise ValueError(f"instrument family {family!r}: expected an upper-case pair such as 'BTC-USD'")
    return family.split("-", 1)[0]


def format_expiry(expiry_ms: int) -> str:
    """1735286400000 → "241227" (YYMMDD, UTC)."""
    dt = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    return f"{dt.year % 100:02d}{dt.month:02d}{dt.day:02d}"


def format_strike(strike: float) -> str:
    """70000 → "70000"; 0.5 → "0.5"."""
    return str(int(strike)) if float(strike).is_integer() else repr(float(strike))


def format_inst_id(family: str, expiry_ms: int, strike: Optional[float] = None,
                   option_type: Optional[str] = None) -> str:
    """The inverse of parse_inst_id: expiry_ms 0 = swap; strike None = future."""
    family_coin(family)
    if expiry_ms == 0:
        return f"{family}-SWAP"
    if strike is None:
        return f"{family}-{format_expiry(expiry_ms)}"
    if option_type not in ("C", "P"):
        raise ValueError(f"option_type must be 'C' or 'P', got {option_type!r}")
    return f"{family}-{format_expiry(expiry_ms)}-{format_strike(strike)}-{option_type}"


# ---------------------------------------------------------------- frame parsing


@dataclass(frozen=True, slots=True)
class Control:
    """A session frame, not market data."""

    kind: str  # "subscribe" | "unsubscribe" | "error" | "notice" | "pong" | "login" | "channel-conn-count"
    id: Optional[str] = None  # the request id we sent, echoed
    arg: Optional[dict] = None  # the channel argument of an ack
    code: str = ""  # "64008" for the service-upgrade notice; the error code of an error
    msg: str = ""
    conn_id: str = ""


_SESSION_EVENTS = ("subscribe", "unsubscribe", "login", "channel-conn-count", "channel-conn-count-error")
NOTICE_SERVICE_UPGRADE = "64008"


def _dec(value: Any, field: str, instrument: str = "") -> float:
    """An OKX decimal: a string such as "0.0415" (numbers tolerated). Finite, or bad input."""
    t = type(value)
    if t is str:
        try:
            f = float(value)
        except ValueError:
            raise _Bad("bad_field", f"{field} must be a decimal string, got {value!r:.60}", instrument) from None
    elif t is float or t is int:
        f = float(value)
    else:
        raise _Bad("bad_field", f"{field} must be a decimal string, got {value!r:.60}", instrument)
    if not math.isfinite(f):
        raise _Bad("bad_price", f"{field} is not finite: {value!r:.60}", instrument)
    return f


def _opt_px(row: dict, field: str, instrument: str) -> Optional[float]:
    """A price where absence, "" or 0 means "none" (an empty book side, no forward)."""
    value = row.get(field)
    if value is None or value == "":
        return None
    f = _dec(value, field, instrument)
    if f < 0:
        raise _Bad("bad_price", f"{field} is negative: {f}", instrument)
    return f if f > 0 else None


# A decimal vol (0.3676 = 36.76 %), no scaling, follows the same rule: absent, "" or "0" = none.
_vol = _opt_px


def _size(row: dict, field: str, instrument: str) -> float:
    value = row.get(field)
    if value is None or value == "":
        return 0.0
    f = _dec(value, field, instrument)
    if f < 0:
        raise _Bad("bad_price", f"{field} is negative: {f}", instrument)
    return f


def _ts(value: Any, field: str, instrument: str = "") -> int:
    """A ms timestamp: a digit string ("1597026383085") or an integer."""
    t = type(value)
    if t is int:
        n = value
    elif t is str and value.isascii() and value.isdigit() and len(value) <= 16:
        n = int(value)
    else:
        raise _Bad("bad_field", f"{field} must be a ms timestamp string, got {value!r:.60}", instrument)
    if not 0 <= n < 1 << 53:
        raise _Bad("bad_field", f"{field} {n} is out of range", instrument)
    return n


def _seq(value: Any, field: str, instrument: str, allow_minus_one: bool = False) -> int:
    if type(value) is not int:  # bool is excluded by the exact type check
        raise _Bad("bad_field", f"{field} must be an integer, got {value!r:.60}", instrument)
    if value < 0 and not (allow_minus_one and value == -1):
        raise _Bad("bad_field", f"{field} {value} is negative", instrument)
    if value >= 1 << 63:
        raise _Bad("bad_field", f"{field} {value} is out of range", instrument)
    return value


def _str(value: Any, field: str, instrument: str = "") -> str:
    if not isinstance(value, str) or not value:
        raise _Bad("bad_field", f"{field} must be a non-empty string, got {value!r:.60}", instrument)
    return value


_INF = float("inf")


def _levels(raw: Any, side: str, instrument: str) -> tuple[tuple[float, float], ...]:
    """[[px, sz, "0", nOrders], …] → ((px, sz), …); sz 0 deletes the level in an update.
    Hot path: one pass; any bad level rejects the whole frame."""
    if raw is None:
        return ()
    if type(raw) is not list:
        raise _Bad("bad_field", f"{side} must be a list, got {type(raw).__name__}", instrument)
    out = []
    append = out.append
    for lvl in raw:
        if type(lvl) is not list or len(lvl) < 2:
            raise _Bad("bad_field", f"{side} level must be [px, sz, \"0\", nOrders], got {lvl!r:.60}", instrument)
        px_raw, sz_raw = lvl[0], lvl[1]
        try:
            px = float(px_raw) if type(px_raw) is str else None
            sz = float(sz_raw) if type(sz_raw) is str else None
        except ValueError:
            px = sz = None
        if px is None or sz is None:
            raise _Bad("bad_field", f"{side} level px/sz must be decimal strings, got {lvl!r:.60}", instrument)
        # chained comparisons also reject NaN and infinities
        if not (0 < px < _INF and 0 <= sz < _INF):
            raise _Bad("bad_price", f"{side} level px {px_raw!r:.30} sz {sz_raw!r:.30}: px must be > 0 "
                       "and sz >= 0", instrument)
        append((px, sz))
    return tuple(out)


def _check_crossed(bids, asks, instrument: str, what: str) -> None:
    best_bid = max((p for p, s in bids if s > 0), default=None)
    best_ask = min((p for p, s in asks if s > 0), default=None)
    if best_bid is not None and best_ask is not None and best_bid >= best_ask:
        raise _Bad("crossed_book", f"{what} best bid {best_bid} >= best ask {best_ask}", instrument)


def _book(channel: str, arg: dict, action: Any, row: Any, ts_recv_ms: int) -> BookUpdate:
    inst = _str(arg.get("instId"), "arg.instId")
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"book data must be an object, got {row!r:.60}", inst)
    ts = _ts(row.get("ts"), "ts", inst)
    seq = _seq(row.get("seqId"), "seqId", inst)
    bids = _levels(row.get("bids"), "bids", inst)
    asks = _levels(row.get("asks"), "asks", inst)
    if channel in INCREMENTAL_BOOKS:
        if action == "snapshot":
            _seq(row.get("prevSeqId", -1), "prevSeqId", inst, allow_minus_one=True)
            kind, prev = "snapshot", None
        elif action == "update":
            prev = _seq(row.get("prevSeqId"), "prevSeqId", inst)
            kind = "change"
        else:
            raise _Bad("bad_field", f"books action {action!r:.40} is not snapshot|update", inst)
    else:  # books5, bbo-tbt: every message is a whole snapshot
        kind, prev = "snapshot", None
    if kind == "snapshot":
        _check_crossed(bids, asks, inst, "snapshot")
    return BookUpdate(VENUE, inst, ts, ts_recv_ms, seq, prev, kind, bids, asks)


def _summary_row(row: Any, ts_recv_ms: int) -> Ticker:
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"opt-summary row must be an object, got {row!r:.60}")
    inst = _str(row.get("instId"), "instId")
    try:
        _, _, strike, _ = parse_inst_id(inst)
    except InstIdError as exc:
        raise _Bad("unknown_instrument", str(exc), inst) from None
    if strike is None:
        raise _Bad("unknown_instrument", f"opt-summary row {inst} is not an option", inst)
    ts = _ts(row.get("ts"), "ts", inst)
    uly = row.get("uly", "")
    return Ticker(
        VENUE, inst, ts, ts_recv_ms, "open",
        underlying_px=_opt_px(row, "fwdPx", inst),
        underlying_index=uly if isinstance(uly, str) else "",
        bid_iv=_vol(row, "bidVol", inst), ask_iv=_vol(row, "askVol", inst), mark_iv=_vol(row, "markVol", inst),
    )


def _index_row(arg: dict, row: Any, ts_recv_ms: int) -> IndexPrice:
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"index-tickers row must be an object, got {row!r:.60}")
    name = _str(row.get("instId", arg.get("instId")), "instId")
    px = _dec(row.get("idxPx"), "idxPx", name)
    if not px > 0:
        raise _Bad("bad_price", f"index {name} idxPx {px} must be > 0", name)
    return IndexPrice(VENUE, name.split("-", 1)[0], _ts(row.get("ts"), "ts", name), ts_recv_ms, px)


def _ticker_row(arg: dict, row: Any, ts_recv_ms: int) -> list:
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"tickers row must be an object, got {row!r:.60}")
    inst = _str(row.get("instId", arg.get("instId")), "instId")
    try:
        underlying, expiry_ms, strike, _ = parse_inst_id(inst)
    except InstIdError as exc:
        raise _Bad("unknown_instrument", str(exc), inst) from None
    ts = _ts(row.get("ts"), "ts", inst)
    bid = _opt_px(row, "bidPx", inst)
    ask = _opt_px(row, "askPx", inst)
    if bid is not None and ask is not None and bid > ask:
        raise _Bad("crossed_book", f"ticker bidPx {bid} > askPx {ask}", inst)
    if strike is not None:
        return [Ticker(VENUE, inst, ts, ts_recv_ms, "open", bid, _size(row, "bidSz", inst), ask,
                       _size(row, "askSz", inst))]
    return [FuturePrice(VENUE, inst, underlying, expiry_ms, ts, ts_recv_ms, bid, ask, None)]


_LIVE_STATES = ("live", "preopen", "")


def instrument_from_row(row: Any, ts_recv_ms: int = 0) -> Optional[Instrument]:
    """One instruments row (REST `data[]` or a websocket `instruments` push) → an Instrument.

    None for a row that is not listed for trading (state expired/suspend/test). Raises _Bad.
    """
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"instruments row must be an object, got {row!r:.60}")
    inst = _str(row.get("instId"), "instId")
    state = row.get("state", "")
    if state not in _LIVE_STATES:
        return None
    inst_type = row.get("instType")
    try:
        underlying, expiry_from_id, strike, cp = parse_inst_id(inst)
    except InstIdError as exc:
        raise _Bad("unknown_instrument", str(exc), inst) from None
    exp_raw = row.get("expTime", "")
    expiry_ms = _ts(exp_raw, "expTime", inst) if exp_raw not in ("", None) else expiry_from_id
    ct_val = _dec(row.get("ctVal") or "1", "ctVal", inst)
    ct_mult = _dec(row.get("ctMult") or "1", "ctMult", inst)
    tick = _dec(row.get("tickSz") or "0", "tickSz", inst)
    if not (ct_val > 0 and ct_mult > 0 and tick >= 0):
        raise _Bad("bad_field", f"ctVal {ct_val}, ctMult {ct_mult} must be > 0 and tickSz {tick} >= 0", inst)
    settle = row.get("settleCcy", "")
    settle = settle if isinstance(settle, str) else ""
    if inst_type == "OPTION":
        if strike is None:
            raise _Bad("bad_field", f"instType OPTION but {inst} is not an option id", inst)
        stk = _dec(row.get("stk", strike), "stk", inst)
        if stk != strike:
            raise _Bad("bad_field", f"stk {stk} disagrees with the strike {strike} in {inst}", inst)
        opt = row.get("optType", cp)
        if opt != cp:
            raise _Bad("bad_field", f"optType {opt!r:.10} disagrees with {cp} in {inst}", inst)
        return Instrument(VENUE, inst, underlying, "option", expiry_ms, strike, cp, tick, ct_val * ct_mult,
                          settle, ts_recv_ms)
    if inst_type in ("FUTURES", "SWAP"):
        if strike is not None:
            raise _Bad("bad_field", f"instType {inst_type} but {inst} is an option id", inst)
        kind = "perpetual" if expiry_from_id == 0 else "future"
        return Instrument(VENUE, inst, underlying, kind, 0 if kind == "perpetual" else expiry_ms, None, None, tick,
                          ct_val * ct_mult, settle, ts_recv_ms)
    raise _Bad("unknown_instrument", f"instType {inst_type!r:.20} of {inst} is not OPTION, FUTURES or SWAP", inst)


def instruments_from_rows(rows: Any, ts_recv_ms: int = 0) -> list:
    """Rows → Instruments, one FeedError per bad row (an odd listing must not hide the others)."""
    if not isinstance(rows, list):
        return [FeedError(VENUE, "bad_field", f"instruments data must be a list, got {type(rows).__name__}",
                          ts_recv_ms)]
    out: list = []
    for row in rows:
        try:
            inst = instrument_from_row(row, ts_recv_ms)
        except _Bad as bad:
            out.append(FeedError(VENUE, bad.reason, f"instruments: {bad.detail}", ts_recv_ms, bad.instrument))
            continue
        except Exception as exc:  # a parser bug must not hide the other rows
            out.append(FeedError(VENUE, "parse_error", f"instruments: {type(exc).__name__}: {exc}"[:300], ts_recv_ms))
            continue
        if inst is not None:
            out.append(inst)
    return out


def parse_frame(raw: bytes | str, ts_recv_ms: Optional[int] = None,
                max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> list:
    """One websocket frame (or a REST instruments body) → events and Control objects. Never raises.

    Pushes: books/books-l2-tbt/books50-l2-tbt → BookUpdate (snapshot or change); books5/bbo-tbt →
    BookUpdate snapshots; opt-summary → one Ticker per row (IVs, fwdPx); index-tickers →
    IndexPrice; tickers → Ticker (options) or FuturePrice (futures, swaps); instruments →
    Instrument per live row. Events: subscribe/unsubscribe acks, notice → Control; error →
    Control + FeedError("rpc_error"). Text `pong` → Control("pong"). A multi-row push with one
    bad row gives the good rows plus a FeedError for the bad one. Anything else bad → one
    FeedError whose detail starts with the channel and instId.
    """
    if ts_recv_ms is None:
        ts_recv_ms = now_ms()
    try:
        return _parse(raw, ts_recv_ms, max_bytes)
    except _Bad as bad:
        return [FeedError(VENUE, bad.reason, bad.detail, ts_recv_ms, bad.instrument)]
    except Exception as exc:  # a parser bug must not kill the feed; count it loudly
        return [FeedError(VENUE, "parse_error", f"{type(exc).__name__}: {exc}"[:300], ts_recv_ms)]


_PONG = (b"pong", "pong")


def _parse(raw: bytes | str, ts_recv_ms: int, max_bytes: int) -> list:
    check_frame(raw, max_bytes)
    if raw in _PONG:
        return [Control("pong")]
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Bad("malformed_json", f"not JSON: {exc}"[:200]) from None
    if not isinstance(msg, dict):
        raise _Bad("malformed_json", f"frame must be a JSON object, got {type(msg).__name__}")
    if "event" in msg:
        return _event(msg, ts_recv_ms)
    arg = msg.get("arg")
    if arg is None and "code" in msg and "data" in msg:
        return _rest_body(msg, ts_recv_ms)
    if not isinstance(arg, dict):
        raise _Bad("unknown_message", "frame is neither a push (arg+data), an event nor a REST body")
    channel = arg.get("channel")
    if not isinstance(channel, str):
        raise _Bad("bad_field", f"arg.channel must be a string, got {channel!r:.60}")
    inst_arg = arg.get("instId")
    where = f"{channel:.40} {inst_arg:.60}" if isinstance(inst_arg, str) else f"{channel:.40}"
    data = msg.get("data")
    if not isinstance(data, list):
        book_inst = inst_arg if isinstance(inst_arg, str) and channel in DEPTH_CHANNELS else ""
        raise _Bad("bad_field", f"{where}: data must be a list, got {type(data).__name__}", book_inst)
    if channel in DEPTH_CHANNELS:
        action = msg.get("action")
        out = []
        try:
            for row in data:
                out.append(_book(channel, arg, action, row, ts_recv_ms))
        except _Bad as bad:
            # Name the channel and instrument: the client resyncs a book whose frame it could not read.
            bad.detail = f"{where}: {bad.detail}"
            bad.instrument = bad.instrument or (inst_arg if isinstance(inst_arg, str) else "")
            raise
        return out
    row_fn = _ROW_CHANNELS.get(channel)
    if row_fn is None:
        raise _Bad("unknown_channel", f"no parser for channel {channel:.80}")
    out = []
    for row in data:
        try:
            got = row_fn(arg, row, ts_recv_ms)
        except _Bad as bad:
            out.append(FeedError(VENUE, bad.reason, f"{where}: {bad.detail}", ts_recv_ms, bad.instrument))
            continue
        if got is None:
            continue
        if type(got) is list:
            out.extend(got)
        else:
            out.append(got)
    return out


_ROW_CHANNELS: dict[str, Callable] = {
    "opt-summary": lambda arg, row, ts: _summary_row(row, ts),
    "index-tickers": _index_row,
    "tickers": _ticker_row,
    "instruments": lambda arg, row, ts: instrument_from_row(row, ts),
}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))[:300]


def _event(msg: dict, ts_recv_ms: int) -> list:
    event = msg.get("event")
    req_id = msg.get("id")
    req_id = _text(req_id) if req_id is not None else None
    code, text, conn_id = _text(msg.get("code")), _text(msg.get("msg")), _text(msg.get("connId"))
    arg = msg.get("arg") if isinstance(msg.get("arg"), dict) else None
    if event in _SESSION_EVENTS:
        return [Control(event, req_id, arg, code, text, conn_id)]
    if event == "error":
        return [Control("error", req_id, arg, code, text, conn_id),
                FeedError(VENUE, "rpc_error", f"request {req_id}: error {code} {text}"[:300], ts_recv_ms)]
    if event == "notice":
        return [Control("notice", req_id, arg, code, text, conn_id)]
    raise _Bad("unknown_message", f"event {event!r:.40} is not subscribe|unsubscribe|error|notice")


def rest_instruments_frame(rows: list) -> str:
    """The REST instruments response body around `rows` ({"code":"0","msg":"","data":rows}):
    parse_frame turns it into Instrument events, so a recording keeps discovery as a frame."""
    return orjson.dumps({"code": "0", "msg": "", "data": rows}).decode()


def _rest_body(msg: dict, ts_recv_ms: int) -> list:
    code = _text(msg.get("code"))
    if code != "0":
        return [FeedError(VENUE, "rpc_error", f"REST error {code} {_text(msg.get('msg'))}"[:300], ts_recv_ms)]
    return instruments_from_rows(msg.get("data"), ts_recv_ms)


# ---------------------------------------------------------------- discovery (REST)


def default_rest_url(ws_url: str) -> str:
    """The REST base for a websocket URL: OKX's own hosts → https://www.okx.com; anything else
    (the simulator) → the same host and port over http(s)."""
    parts = urllib.parse.urlsplit(ws_url)
    host = parts.hostname or ""
    if host == "okx.com" or host.endswith(".okx.com"):
        return DEFAULT_REST_URL
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


class RestInstrumentsFetcher:
    """`GET /api/v5/public/instruments?instType=…&instFamily=…` with urllib (blocking: the client
    runs it in a worker thread). Rate limit on OKX: 20 requests per 2 s per IP + instType."""

    def __init__(self, base_url: str = DEFAULT_REST_URL, timeout_s: float = 10.0,
                 max_bytes: int = 64 << 20):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    def _get(self, path: str, params: dict) -> list:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "volgraph"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 (http(s) only)
            body = resp.read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            raise ValueError(f"{url}: response larger than {self.max_bytes} bytes; raise max_bytes")
        msg = orjson.loads(body)
        if not isinstance(msg, dict) or _text(msg.get("code")) != "0" or not isinstance(msg.get("data"), list):
            raise ValueError(f"{url}: OKX error {msg.get('code') if isinstance(msg, dict) else '?'} "
                             f"{msg.get('msg') if isinstance(msg, dict) else str(msg)[:100]}")
        return msg["data"]

    def __call__(self, inst_type: str, inst_family: str) -> list:
        return self._get(INSTRUMENTS_PATH, {"instType": inst_type, "instFamily": inst_family})

    def index_price(self, inst_family: str) -> Optional[float]:
        rows = self._get(INDEX_TICKERS_PATH, {"instId": inst_family})
        return float(rows[0]["idxPx"]) if rows else None


# ---------------------------------------------------------------- live client


class _Shard:
    """One websocket connection's share of the subscriptions."""

    def __init__(self, index: int, args: list[dict]):
        self.index = index
        self.args = args
        self.books = {a["instId"] for a in args if a["channel"] in INCREMENTAL_BOOKS}
        self.ws = None
        self.requests: collections.deque = collections.deque()  # send times of (un)subscribe requests
        self.resync_pending: set[str] = set()
        self.resync_task: Optional[asyncio.Task] = None
        self.notice: Optional[asyncio.Event] = None
        self.last_frame = time.monotonic()
        self.ping_sent: Optional[float] = None
        self.acked = 0


class OkxClient(VenueClient):
    """OKX v5 public websocket sessions on one thread and event loop.

    Call start(); read with drain(); stop() shuts down and joins. Discovery first (REST, or the
    pluggable `instruments_fetcher`), then the subscriptions split over several connections:
    connection 0 carries opt-summary, index-tickers and futures tickers; depth channels go
    `depth_per_conn` per connection (OKX: fewer than 30 per connection). Parsed market events land
    in a bounded deque; when it is full, events are dropped (counted) and affected books are
    resynchronised; the socket loop never blocks on the consumer.

    `frame_tap(ts_recv_ms, frame)` (recording, connectors/capture/record.py) is called on the client's
    loop with every websocket frame received, and with each REST instruments response as the
    body text parse_frame reads (rest_instruments_frame), before it is parsed.

    Counters: frames, bytes, events.<Type>, errors.<reason>, gaps, keepalives, seq_resets,
    pings_sent, pongs, notices, proactive_reconnects, reconnects, connects, resyncs,
    subscribe_requests, acks, queue_drops, subscribed_channels, connections, queue_len.
    """

    venue = VENUE

    def __init__(self, url: str = DEFAULT_URL, families: Iterable[str] = ("BTC-USD", "ETH-USD"), *,
                 rest_url: Optional[str] = None,
                 instruments_fetcher: Optional[Callable[[str, str], list]] = None,
                 book_channel: str = "books", depth_per_conn: int = 25, include_futures: bool = True,
                 queue_max: int = 200_000, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 ping_after_s: float = 20.0, pong_timeout_s: float = 10.0, subscribe_batch: int = 100,
                 subscribe_per_hour: int = 480, connects_per_s: float = 3.0,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, resync_delay_s: float = 0.05,
                 open_timeout_s: float = 10.0, proxy: Any = None, seed: Optional[int] = None,
                 frame_tap: Optional[FrameTap] = None, route: Optional[tuple[int, int]] = None):
        self.families = tuple(families)
        for fam in self.families:
            family_coin(fam)  # raises with the fix
        if book_channel not in ("books", "books5", "bbo-tbt"):
            raise ValueError(f"book_channel={book_channel!r}: use 'books' (400 levels + seqId updates), "
                             "'books5' (5-level snapshots) or 'bbo-tbt'; the l2-tbt channels need VIP4 and login")
        if not 1 <= depth_per_conn <= 29 and book_channel == "books":
            raise ValueError(f"depth_per_conn={depth_per_conn}: OKX wants fewer than 30 depth channels per "
                             "connection; use 1..29")
        if depth_per_conn < 1:
            raise ValueError(f"depth_per_conn={depth_per_conn}: must be >= 1")
        if not 0 < ping_after_s < 30:
            raise ValueError(f"ping_after_s={ping_after_s}: OKX drops a silent connection after 30 s; "
                             "ping after N seconds of silence with 0 < N < 30")
        if subscribe_per_hour < 2:
            raise ValueError(f"subscribe_per_hour={subscribe_per_hour}: must be >= 2 (OKX allows 480)")
        super().__init__(url=url, make_queue=BoundedQueue, thread_name=f"okx-{'-'.join(self.families)}",
                         seed=seed, queue_max=queue_max, max_frame_bytes=max_frame_bytes, max_expiries=max_expiries,
                         max_strikes=max_strikes, include_futures=include_futures, subscribe_batch=subscribe_batch,
                         resync_delay_s=resync_delay_s, reconnect_min_s=reconnect_min_s,
                         reconnect_max_s=reconnect_max_s, open_timeout_s=open_timeout_s, proxy=proxy,
                         frame_tap=frame_tap, route=route)
        self.rest_url = rest_url or default_rest_url(url)
        self.fetcher = instruments_fetcher or RestInstrumentsFetcher(self.rest_url)
        self.book_channel = book_channel
        self.depth_per_conn = depth_per_conn
        self.ping_after_s = ping_after_s
        self.pong_timeout_s = pong_timeout_s
        self.subscribe_per_hour = subscribe_per_hour
        self.connects_per_s = connects_per_s
        self._last_seq: dict[str, int] = {}
        self._shard_of: dict[str, _Shard] = {}
        # OKX allows 3 new connections per second per IP: one bucket over all connections
        self._connect_bucket = TokenBucket(connects_per_s, max(connects_per_s, 1.0))
        self.shards: list[_Shard] = []
        self.instruments: dict[str, Instrument] = {}

    # -------------------------------------------------- loop thread

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        if self._stopping:
            return
        attempt = 0
        while not self._stopping:  # discovery, retried with backoff
            try:
                args = await self._discover()
                break
            except Exception as exc:  # network, HTTP, JSON: report and retry
                self._bump("errors.discovery_failed", notify=True)
                self._push_error("discovery_failed", f"{type(exc).__name__}: {exc}"[:300])
                attempt += 1
                if await self._backoff(attempt):
                    return
        else:
            return
        self.shards = self._plan(args)
        for shard in self.shards:
            for inst in shard.books:
                self._shard_of[inst] = shard
        self._counters["connections"] = len(self.shards)
        tasks = [asyncio.get_running_loop().create_task(self._shard_loop(s)) for s in self.shards]
        try:
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _discover(self) -> list[dict]:
        """Instruments per family (REST or the plugged fetcher), filtered; returns the channel args."""
        books, others = [], []
        for fam in self.families:
            coin = family_coin(fam)
            for name in [n for n, i in self.instruments.items() if i.underlying == coin]:
                del self.instruments[name]
            ts = now_ms()
            rows = await asyncio.to_thread(self.fetcher, "OPTION", fam)
            if self.frame_tap is not None:
                self._tap(ts, rest_instruments_frame(rows))
            options = self._instruments(instruments_from_rows(rows, ts))
            futures: list[Instrument] = []
            if self.include_futures:
                rows = await asyncio.to_thread(self.fetcher, "FUTURES", fam)
                if self.frame_tap is not None:
                    self._tap(ts, rest_instruments_frame(rows))
                futures = [i for i in self._instruments(instruments_from_rows(rows, ts)) if i.kind == "future"]
            options = [i for i in options if i.kind == "option" and i.underlying == coin]
            wrong = sorted({i.quote_currency for i in options if i.quote_currency != coin})
            if wrong:
                # Premiums would not be coin per coin: the chain's coin Black-76 would be wrong.
                self._bump("errors.unsupported_units")
                self._push_error("unsupported_units", f"{fam}: options settle in {', '.join(wrong)}, not {coin}; "
                                 "volgraph reads OKX premiums as coin (crypto-margined families such as BTC-USD)")
                continue
            spot = None
            index_fn = getattr(self.fetcher, "index_price", None)
            if index_fn is not None and self.max_strikes is not None:
                try:
                    spot = await asyncio.to_thread(index_fn, fam)
                except Exception:  # centring is best effort; the median strike will do
                    spot = None
            chosen = filter_options(options, spot, self.max_expiries, self.max_strikes)
            for inst in [i for i in chosen + futures if self.on_this_worker(i)]:
                self.instruments[inst.instrument] = inst
                self._push(inst)
                if inst.kind == "option":
                    books.append({"channel": self.book_channel, "instId": inst.instrument})
                else:
                    others.append({"channel": "tickers", "instId": inst.instrument})
            others.append({"channel": "opt-summary", "instFamily": fam})
            others.append({"channel": "index-tickers", "instId": fam})
        self._bump("discoveries", notify=True)
        return others + books

    def _instruments(self, events: list) -> list[Instrument]:
        out = []
        for ev in events:
            if type(ev) is Instrument:
                out.append(ev)
            else:
                self._route(ev)
        return out

    def _plan(self, args: list[dict]) -> list[_Shard]:
        """Connection 0: everything but depth; then depth channels depth_per_conn per connection."""
        others = [a for a in args if a["channel"] not in DEPTH_CHANNELS]
        depth = [a for a in args if a["channel"] in DEPTH_CHANNELS]
        shards = [_Shard(0, others)] if others else []
        for i in range(0, len(depth), self.depth_per_conn):
            shards.append(_Shard(len(shards), depth[i:i + self.depth_per_conn]))
        return shards

    async def _request_slot(self, shard: _Shard) -> None:
        """At most subscribe_per_hour (un)subscribe requests per connection per rolling hour."""
        window = shard.requests
        while True:
            now = time.monotonic()
            while window and now - window[0] >= 3600.0:
                window.popleft()
            if len(window) < self.subscribe_per_hour:
                window.append(now)
                return
            self._bump("subscribe_budget_waits")
            await asyncio.sleep(window[0] + 3600.0 - now)

    async def _shard_loop(self, shard: _Shard) -> None:
        attempt = 0
        while not self._stopping:
            healthy = proactive = False
            await self._connect_bucket.take()
            try:
                async with self._connect(self.max_frame_bytes * 4, ping_interval=None) as ws:
                    shard.ws = ws
                    self._bump("connects", notify=True)
                    healthy, proactive = await self._session(shard, ws)
            except (OSError, asyncio.TimeoutError, WebSocketException, ConnectionError) as exc:
                self._bump("errors.disconnect")
                self._push_error("disconnect", f"connection {shard.index}: {type(exc).__name__}: {exc}"[:300])
            except Exception as exc:  # a bug in a session must not end this connection's retries
                log.exception("okx session %d failed", shard.index)
                self._bump("errors.session_crash")
                self._push_error("session_crash", f"connection {shard.index}: {type(exc).__name__}: {exc}"[:300])
            finally:
                shard.ws = None
            if self._stopping:
                break
            self._withhold(shard, "notice 64008" if proactive else "connection lost")
            if proactive:
                # 64008: the server goes away for an upgrade; reconnect now, not after a backoff.
                self._bump("proactive_reconnects", notify=True)
                attempt = 0
                continue
            attempt = 0 if healthy else attempt + 1
            if await self._backoff(attempt):
                break
            self._bump("reconnects", notify=True)

    async def _session(self, shard: _Shard, ws) -> tuple[bool, bool]:
        """Subscribe one connection and read it until it ends. Returns (streamed, notice)."""
        loop = asyncio.get_running_loop()
        for inst in shard.books:  # a new subscription starts each book with a snapshot
            self._last_seq.pop(inst, None)
        shard.resync_pending.clear()
        shard.notice = asyncio.Event()
        shard.acked = 0
        shard.ping_sent = None
        shard.last_frame = time.monotonic()
        reader = loop.create_task(self._read_loop(shard, ws))
        keepalive = loop.create_task(self._keepalive(shard, ws))
        stopper = loop.create_task(self._stop.wait())
        notice = loop.create_task(shard.notice.wait())
        streaming = False
        try:
            setup = loop.create_task(self._subscribe(shard, ws, "subscribe", shard.args))
            done, _ = await asyncio.wait({setup, reader, stopper, notice}, return_when=asyncio.FIRST_COMPLETED)
            if setup in done:
                setup.result()  # raises send errors
                streaming = True
                self._bump("sessions_streaming", notify=True)
                await asyncio.wait({reader, stopper, notice}, return_when=asyncio.FIRST_COMPLETED)
            else:
                setup.cancel()
            if reader.done() and not reader.cancelled():
                reader.result()  # raises the read error, if any
        finally:
            for t in (reader, keepalive, stopper, notice):
                t.cancel()
            if shard.resync_task is not None:
                shard.resync_task.cancel()
                shard.resync_task = None
            await close_draining(ws)
        return streaming, shard.notice.is_set()

    async def _subscribe(self, shard: _Shard, ws, op: str, args: list[dict]) -> None:
        for i in range(0, len(args), self.subscribe_batch):
            await self._request_slot(shard)
            req = {"id": str(next(self._ids)), "op": op, "args": args[i:i + self.subscribe_batch]}
            await ws.send(orjson.dumps(req).decode(), text=True)
            self._bump("subscribe_requests" if op == "subscribe" else "unsubscribe_requests")

    async def _keepalive(self, shard: _Shard, ws) -> None:
        # OKX drops a connection silent for 30 s: after ping_after_s without any frame send the
        # text `ping`; no `pong` within pong_timeout_s means a dead connection.
        tick = min(self.ping_after_s, self.pong_timeout_s) / 4
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if shard.ping_sent is not None:
                if now - shard.ping_sent > self.pong_timeout_s:
                    self._bump("errors.pong_timeout", notify=True)
                    await ws.close(1001, "no pong within pong_timeout_s")
                    return
            elif now - shard.last_frame >= self.ping_after_s:
                shard.ping_sent = now
                await ws.send("ping", text=True)
                self._bump("pings_sent", notify=True)

    async def _read_loop(self, shard: _Shard, ws) -> None:
        monotonic = time.monotonic
        limit = self.max_frame_bytes
        while True:
            raw = await ws.recv(decode=False)
            shard.last_frame = monotonic()
            ts = self._received(raw)
            for ev in parse_frame(raw, ts, limit):
                if type(ev) is Control:
                    self._control(shard, ev)
                else:
                    self._route(ev)

    def _control(self, shard: _Shard, ctl: Control) -> None:
        if ctl.kind == "pong":
            shard.ping_sent = None
            self._bump("pongs", notify=True)
        elif ctl.kind == "subscribe":
            shard.acked += 1
            self._counters["acks"] += 1
            self._counters["subscribed_channels"] += 1
            if shard.acked == len(shard.args):
                self._bump("connections_subscribed", notify=True)
        elif ctl.kind == "unsubscribe":
            self._counters["subscribed_channels"] -= 1
        elif ctl.kind == "notice":
            self._bump("notices", notify=True)
            if ctl.code == NOTICE_SERVICE_UPGRADE and shard.notice is not None:
                shard.notice.set()
        elif ctl.kind == "error":
            self._counters["errors.event_error"] += 1  # the FeedError("rpc_error") follows
        else:
            self._counters["control." + ctl.kind] += 1

    def _route(self, ev) -> None:
        """Sequence bookkeeping, then the queue. Loop thread only."""
        counters = self._counters
        kind = type(ev)
        counters["events." + kind.__name__] += 1
        if kind is BookUpdate:
            inst = ev.instrument
            if ev.kind == "snapshot":
                self._stale.discard(inst)
                self._last_seq[inst] = ev.seq
            else:
                if not self._chain_continues(ev, self._last_seq.get(inst), "prevSeqId", "seqId"):
                    return
                if ev.seq == ev.prev_seq and not ev.bids and not ev.asks:
                    counters["keepalives"] += 1  # ~60 s without change: alive, not a gap
                elif ev.seq < ev.prev_seq:
                    counters["seq_resets"] += 1  # maintenance reset: continue from the new seqId
                self._last_seq[inst] = ev.seq
            if not self._push(ev):
                counters["gaps_queue"] += 1
                self._mark_stale(inst, "event queue full: a book event was dropped")
            return
        if kind is FeedError:
            counters["errors." + ev.reason] += 1
            if ev.instrument and ev.detail.startswith(tuple(c + " " for c in INCREMENTAL_BOOKS)):
                # A book frame we could not read leaves that book incomplete: error, then resync.
                self._push(ev)
                self._mark_stale(ev.instrument, f"unreadable book frame: {ev.reason}")
                return
        self._push(ev)

    def _withhold(self, shard: _Shard, why: str) -> None:
        """A closed connection loses its books' updates until the resubscription's snapshots:
        tell the book step to withhold them (the seq_gap contract); no resync, the reconnect
        resubscribes everything."""
        n = 0
        for a in shard.args:
            if a["channel"] not in DEPTH_CHANNELS:
                continue
            inst = a["instId"]
            self._last_seq.pop(inst, None)
            if inst not in self._stale:
                self._stale.add(inst)
                self._push_error("seq_gap", f"connection {shard.index} closed ({why}): book withheld until "
                                 "its fresh snapshot", inst)
                n += 1
        if n:
            self._bump("books_withheld", n, notify=True)

    def _mark_stale(self, inst: str, detail: str) -> None:
        first = inst not in self._stale
        self._stale.add(inst)
        self._last_seq.pop(inst, None)
        if first:
            self._counters["errors.seq_gap"] += 1
            self._push_error("seq_gap", detail, inst)
            with self._cond:
                self._cond.notify_all()
        shard = self._shard_of.get(inst)
        if shard is None or self.book_channel != "books":
            return  # snapshot channels heal with their next message
        shard.resync_pending.add(inst)
        if shard.resync_task is None or shard.resync_task.done():
            shard.resync_task = asyncio.get_running_loop().create_task(self._resync(shard))

    async def _resync(self, shard: _Shard) -> None:
        """Unsubscribe + subscribe the stale books of one connection (batched) for fresh snapshots."""
        await asyncio.sleep(self.resync_delay_s)  # gather the gaps of one burst into one request
        ws = shard.ws
        while shard.resync_pending and ws is not None:
            insts = sorted(shard.resync_pending)[: self.subscribe_batch]
            shard.resync_pending.difference_update(insts)
            args = [{"channel": "books", "instId": i} for i in insts]
            self._bump("resyncs", len(insts), notify=True)
            try:
                await self._subscribe(shard, ws, "unsubscribe", args)
                await self._subscribe(shard, ws, "subscribe", args)
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                self._counters["errors.resync_failed"] += 1
                self._push_error("resync_failed", f"{type(exc).__name__}: {exc}"[:300])
                return  # a reconnect resubscribes everything
            except Exception as exc:  # websockets' ConnectionClosed and friends
                self._counters["errors.resync_failed"] += 1
                self._push_error("resync_failed", f"{type(exc).__name__}: {exc}"[:300])
                return


# ---------------------------------------------------------------- bytewax source


class OkxSource(ClientSource):
    """One partition per instrument family ("okx-BTC-USD"), each owning its own OkxClient.

    snapshot() is None: a live source resubscribes after a restart and every book starts again
    from a fresh snapshot. `run_seconds` ends the partition after that long (tests, `--seconds`).
    `max_expiries`/`max_strikes` trim the chain. Other keyword arguments go to OkxClient.
    """

    def __init__(self, url: str = DEFAULT_URL, families: Iterable[str] = ("BTC-USD", "ETH-USD"), *,
                 queue_max: int = 200_000, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 run_seconds: Optional[float] = None, max_expiries: Optional[int] = None,
                 max_strikes: Optional[int] = None, batch_max: int = SOURCE_BATCH_MAX, idle_ms: float = 5.0,
                 route_workers: int = 1, **client_kwargs: Any):
        self.url = url
        self.families = tuple(families)
        for fam in self.families:
            family_coin(fam)
        super().__init__("okx", self.families, queue_max=queue_max, max_frame_bytes=max_frame_bytes,
                         max_expiries=max_expiries, max_strikes=max_strikes, run_seconds=run_seconds,
                         batch_max=batch_max, idle_ms=idle_ms, client_kwargs=client_kwargs,
                         route_workers=route_workers)

    def make_client(self, family: str, slot: int) -> OkxClient:
        return OkxClient(self.url, (family,), **self.client_options(slot))


OkxPartition = ClientPartition  # one started OkxClient, drained in batches
