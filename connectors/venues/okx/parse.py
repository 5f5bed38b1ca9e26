"""OKX v5 public websocket frames (and the REST instruments body) -> normalised events
(venue="okx"; docs/protocols.md §B, §C): `parse_frame` and the frame -> event translation.

Translation only: bytes in, events (operators.events) out. It never raises (bad input becomes a
FeedError with a reason code), keeps no state, never judges a book (sequence chains and crossed
books are the client's, connectors/venues/base.py BookGuard), never imports the client or bytewax.

Units and conventions (what the events carry, and why):
- Premiums. OKX lists crypto-margined ("inverse") option families such as BTC-USD and ETH-USD:
  `settleCcy` is the coin, and book prices (`px` in books, `bidPx`/`askPx` in tickers) are in
  coin per one coin of underlying, exactly like Deribit (0.0415 BTC for a BTC option). They are
  passed through unchanged (BookUpdate levels, Ticker best_*_px are coin). docs/protocols.md §B marks
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import orjson

from connectors.venues.base import BadFrame as _Bad
from connectors.venues.base import check_frame, check_not_crossed, now_ms, parse_name
from connectors.venues.okx.names import DEPTH_CHANNELS, INCREMENTAL_BOOKS, VENUE, InstIdError, parse_inst_id
from operators.events import NO_BOOK_LEVELS, BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker

DEFAULT_MAX_FRAME_BYTES = 1 << 20

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


def _levels(raw: Any, side: str, instrument: str) -> np.ndarray:
    """[[px, sz, "0", nOrders], …] → levels × (px, sz); sz 0 deletes the level in an update.
    Hot path: one pass; any bad level rejects the whole frame."""
    if raw is None:
        return NO_BOOK_LEVELS
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
    return np.array(out, np.float64) if out else NO_BOOK_LEVELS


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
    # a crossed book is the client's to find (connectors/venues/base.py), not the parser's
    return BookUpdate(VENUE, inst, ts, ts_recv_ms, seq, prev, kind, bids, asks)


def _summary_row(row: Any, ts_recv_ms: int) -> Ticker:
    if not isinstance(row, dict):
        raise _Bad("bad_field", f"opt-summary row must be an object, got {row!r:.60}")
    inst = _str(row.get("instId"), "instId")
    _, _, strike, _ = parse_name(parse_inst_id, InstIdError, inst)
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
    underlying, expiry_ms, strike, _ = parse_name(parse_inst_id, InstIdError, inst)
    ts = _ts(row.get("ts"), "ts", inst)
    bid = _opt_px(row, "bidPx", inst)
    ask = _opt_px(row, "askPx", inst)
    check_not_crossed(bid, ask, inst, "bidPx > askPx")
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
    underlying, expiry_from_id, strike, cp = parse_name(parse_inst_id, InstIdError, inst)
    exp_raw = row.get("expTime", "")
    expiry_ms = _ts(exp_raw, "expTime", inst) if exp_raw not in ("", None) else expiry_from_id
    list_raw = row.get("listTime", "")  # the listing order (connectors/venues/placement.py)
    listed_ms = _ts(list_raw, "listTime", inst) if list_raw not in ("", None) else 0
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
                          settle, ts_recv_ms, listed_ms)
    if inst_type in ("FUTURES", "SWAP"):
        if strike is not None:
            raise _Bad("bad_field", f"instType {inst_type} but {inst} is an option id", inst)
        kind = "perpetual" if expiry_from_id == 0 else "future"
        return Instrument(VENUE, inst, underlying, kind, 0 if kind == "perpetual" else expiry_ms, None, None, tick,
                          ct_val * ct_mult, settle, ts_recv_ms, listed_ms)
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

