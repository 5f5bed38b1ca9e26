"""The gateway's client protocol, version PROTOCOL_VERSION (docs/gateway-protocol.md): the
msgspec types of every message on /ws in both directions, the checks and bounds a published
frame must pass, and the JSON Schema generated from these very types
(docs/gateway-protocol.schema.json; tests/connectors/gateway/test_protocol.py asserts the
committed file equals `schema_document()`, so the two cannot drift).

Server → client: Hello, SurfaceSnapshot and SurfacePatch (operators/events.py's events plus
the stream's contiguous `seq`, assigned here by the gateway per (venue, underlying)), Ping,
Subscribed, Error. Client → server: Subscribe, Resync, Pong.

Pure data and validation: no sockets, no I/O, no logging; never imports flows or the server.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Union

import msgspec
import numpy as np

from operators.events import (
    Ladders,
    SmileFit,
    StatusReport,
    SurfacePatch,
    SurfaceSnapshot,
    dec_hook,
    enc_hook,
    schema_hook,
)

PROTOCOL_VERSION = 1

# ---------------------------------------------------------------- server -> client


class StreamSnapshot(SurfaceSnapshot, tag="SurfaceSnapshot", kw_only=True):
    """The whole current surface of one stream; `seq` is the stream's sequence number it is at
    (the `seq` of the last patch folded into it; 0 for a stream that has had none)."""

    seq: int


class StreamPatch(SurfacePatch, tag="SurfacePatch", kw_only=True):
    """The changes of one stream from `seq_from` to `seq` (equal unless patches were coalesced
    for a slow client). It applies to the state at `seq_from - 1`; anything else is a gap."""

    seq: int
    seq_from: int


class Hello(msgspec.Struct, frozen=True, tag="Hello"):
    """First message on every /ws connection."""

    protocol: int  # PROTOCOL_VERSION
    ping_interval_ms: int  # the server sends Ping this often (0: never)
    max_message_bytes: int  # the largest message a client may send; larger ones close it
    streams: tuple[str, ...]  # "venue:underlying" of the surfaces known now
    venues: Optional[tuple[str, ...]] = None  # the subscription in force (None = all)
    underlyings: Optional[tuple[str, ...]] = None


class Subscribed(msgspec.Struct, frozen=True, tag="Subscribed"):
    """The answer to Subscribe: the subscription in force. Snapshots of the newly included
    streams follow; nothing more is sent for the excluded ones."""

    venues: Optional[tuple[str, ...]] = None
    underlyings: Optional[tuple[str, ...]] = None


class Ping(msgspec.Struct, frozen=True, tag="Ping"):
    """Sent every ping_interval_ms (besides websocket ping frames): a client that hears
    nothing for two intervals may treat the connection as dead. Answering is optional."""

    ts_ms: int


class Error(msgspec.Struct, frozen=True, tag="Error"):
    """Sent before the server closes a connection for a bad client message."""

    reason: str  # "malformed", "unknown_stream", ...
    detail: str


# ---------------------------------------------------------------- client -> server


class Subscribe(msgspec.Struct, frozen=True, tag="Subscribe", forbid_unknown_fields=True):
    """Replace the subscription: streams whose venue is in `venues` and whose underlying is in
    `underlyings` (None or omitted = any). Until a client sends one, it has every stream (or
    those of the ?venue=&underlying= query of its URL)."""

    venues: Optional[tuple[str, ...]] = None
    underlyings: Optional[tuple[str, ...]] = None


class Resync(msgspec.Struct, frozen=True, tag="Resync", forbid_unknown_fields=True):
    """Ask for a fresh snapshot of one stream (after a gap in its seq)."""

    venue: str
    underlying: str


class Pong(msgspec.Struct, frozen=True, tag="Pong", forbid_unknown_fields=True):
    ts_ms: int = 0


ServerMessage = Union[Hello, StreamSnapshot, StreamPatch, Subscribed, Ping, Error]
ClientMessage = Union[Subscribe, Resync, Pong]
PublishMessage = Union[SurfacePatch, SurfaceSnapshot, StatusReport]  # /publish (the dataflow's frames)

_decode_client = msgspec.json.Decoder(ClientMessage, dec_hook=dec_hook).decode
_decode_server = msgspec.json.Decoder(ServerMessage, dec_hook=dec_hook).decode
encode = msgspec.json.Encoder(enc_hook=enc_hook).encode

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")  # venue and underlying names
MAX_FILTER_NAMES = 64


class ProtocolError(ValueError):
    """A client message the server refuses; `reason` is the counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_client(message: bytes | str) -> Union[Subscribe, Resync, Pong]:
    """One client message; ProtocolError for anything that is not exactly one of them."""
    try:
        msg = _decode_client(message)
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise ProtocolError("malformed", f"{exc}; send one of Subscribe, Resync, Pong "
                                         "(docs/gateway-protocol.md)") from None
    if isinstance(msg, Subscribe):
        for field in ("venues", "underlyings"):
            names = getattr(msg, field)
            if names is not None and (len(names) > MAX_FILTER_NAMES or not all(NAME_RE.match(n) for n in names)):
                raise ProtocolError("malformed", f"Subscribe.{field}: at most {MAX_FILTER_NAMES} names of "
                                                 f"letters, digits, '_', '.', '-' (1 to 32 characters)")
    return msg


def decode_server(message: bytes | str) -> Any:
    """One server message (for clients: connectors/gateway/watch.py, the tests)."""
    return _decode_server(message)


def stream_name(venue: str, underlying: str) -> str:
    return f"{venue}:{underlying}"


# ---------------------------------------------------------------- published frames: checks and bounds


class Limits(msgspec.Struct, frozen=True):
    """graph.toml [sinks.gateway]: publish_max_message_bytes, max_surfaces,
    max_expiries_per_surface."""

    max_message_bytes: int
    max_surfaces: int
    max_expiries_per_surface: int


class Refused(ValueError):
    """A published frame the gateway drops; `reason` is its counter label (/status
    publish_errors)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# Every *_ms in a published frame lies in [1970-01-01, 2100-01-01) UTC.
MIN_TS_MS = 0
MAX_TS_MS = 4_102_444_800_000
MAX_COUNTERS = 1000  # keys in one StatusReport
MAX_SOURCE_CHARS = 64


def _finite(x: Optional[float]) -> bool:
    return x is None or math.isfinite(x)


def _ts(name: str, x: int) -> None:
    if not MIN_TS_MS <= x < MAX_TS_MS:
        raise Refused("bad_value", f"{name} = {x} is not a UTC epoch millisecond before 2100")


def _fit(fit: SmileFit, where: str) -> None:
    for name in ("t_years", "forward", "a", "b", "rho", "m", "sigma", "rmse_vol_pts", "min_g", "fit_ms",
                 "inside_band_frac"):
        if not _finite(getattr(fit, name)):
            raise Refused("bad_value", f"{where}.fit.{name} is not a finite number")
    _ts(f"{where}.fit.expiry_ms", fit.expiry_ms)
    if fit.n_quotes < 0:
        raise Refused("bad_value", f"{where}.fit.n_quotes = {fit.n_quotes} is negative")


_LADDER_NAMES = ("instrument", "venue", "strike", "option_type", "contract_size", "stale")
_LADDER_LEVELS = ("bid_px", "bid_size_contracts", "bid_iv", "ask_px", "ask_size_contracts", "ask_iv")
_LADDER_SIZES = ("bid_exec_px", "bid_exec_iv", "ask_exec_px", "ask_exec_iv")


def _ladders(ladders: Ladders, where: str) -> None:
    """One entry per book in every column, level_depth values a level row, one per size an
    execution row; prices, sizes and vols finite and not negative (or null)."""
    n = len(ladders.instrument)
    if ladders.level_depth < 0 or not all(math.isfinite(x) and x > 0 for x in ladders.sizes_contracts):
        raise Refused("bad_value", f"{where}: level_depth is negative or a size is not a positive finite number")
    for name in _LADDER_NAMES:
        if len(getattr(ladders, name)) != n:
            raise Refused("bad_value", f"{where}.{name}: one entry per book ({n})")
    if not all(math.isfinite(k) and k > 0 for k in ladders.strike) or \
            not all(math.isfinite(c) and c > 0 for c in ladders.contract_size):
        raise Refused("bad_value", f"{where}: a strike or contract_size is not a positive finite number")
    for names, width in ((_LADDER_LEVELS, ladders.level_depth), (_LADDER_SIZES, len(ladders.sizes_contracts))):
        for name in names:
            rows = getattr(ladders, name)  # a float matrix (operators.events.level_matrix), NaN for null
            shaped = rows.shape == (n, width) or (n == 0 and rows.size == 0)
            if not shaped or not bool(np.all(np.isnan(rows) | (np.isfinite(rows) & (rows >= 0)))):
                raise Refused("bad_value", f"{where}.{name}: per book {width} finite values >= 0 (or null)")


def check_surface(event: Union[SurfacePatch, SurfaceSnapshot]) -> None:
    """Every nested number of a surface event is finite and in range, its names are names, its
    per-strike arrays agree in length, its ladders are well formed (_ladders). Raises Refused."""
    for name in ("venue", "underlying"):
        if not NAME_RE.match(getattr(event, name)):
            raise Refused("bad_name", f"{name} = {getattr(event, name)[:40]!r}: 1 to 32 letters, digits, '_', '.', '-'")
    _ts("ts_exchange_ms", event.ts_exchange_ms)
    _ts("ts_emit_ms", event.ts_emit_ms)
    if event.index_px is not None and not (math.isfinite(event.index_px) and event.index_px > 0):
        raise Refused("bad_value", f"index_px = {event.index_px} is not a positive finite price")
    for view in event.expiries:
        where = f"expiries[{view.expiry_ms}]"
        _ts(where + ".expiry_ms", view.expiry_ms)
        _fit(view.fit, where)
        n = len(view.strikes)
        if len(view.bid_iv) != n or len(view.ask_iv) != n:
            raise Refused("bad_value", f"{where}: strikes, bid_iv, ask_iv differ in length")
        if len(view.bid_venue) not in (0, n) or len(view.ask_venue) not in (0, n):
            raise Refused("bad_value", f"{where}: bid_venue / ask_venue must be empty or one per strike")
        if not all(math.isfinite(k) and k > 0 for k in view.strikes):
            raise Refused("bad_value", f"{where}.strikes: every strike is a positive finite price")
        for side in (view.bid_iv, view.ask_iv):
            if not all(v is None or (math.isfinite(v) and v >= 0) for v in side):
                raise Refused("bad_value", f"{where}: an IV is negative or not finite")
        if not all(_finite(v) for v in view.analytics.values()):
            raise Refused("bad_value", f"{where}.analytics: a value is not finite")
        for node, values in view.strike_analytics.items():
            if len(values) != n or not all(_finite(v) for v in values):
                raise Refused("bad_value", f"{where}.strike_analytics[{node[:40]!r}]: one finite value (or null) per strike")
        if view.ladders is not None:
            _ladders(view.ladders, where + ".ladders")
    if not all(_finite(v) for v in event.underlying_analytics.values()):
        raise Refused("bad_value", "underlying_analytics: a value is not finite")
    for tenor in event.tenors:
        if not all(_finite(getattr(tenor, f)) for f in ("atm_vol", "rr25", "bf25")) or tenor.tenor_days <= 0:
            raise Refused("bad_value", f"tenors[{tenor.tenor_days}]: a vol is not finite or the tenor is not positive")
    for check in event.calendar:
        if not math.isfinite(check.worst):
            raise Refused("bad_value", f"calendar[{check.expiry_ms_1}, {check.expiry_ms_2}].worst is not finite")
    for gone in getattr(event, "removed", ()):
        _ts("removed[]", gone)


def check_status(report: StatusReport) -> None:
    if not 0 < len(report.source) <= MAX_SOURCE_CHARS:
        raise Refused("bad_name", f"StatusReport.source: 1 to {MAX_SOURCE_CHARS} characters")
    _ts("StatusReport.ts_ms", report.ts_ms)
    _ts("StatusReport.started_ms", report.started_ms)
    if len(report.counters) > MAX_COUNTERS:
        raise Refused("too_many_counters", f"StatusReport has {len(report.counters)} counters; at most {MAX_COUNTERS}")
    if not all(math.isfinite(v) and v >= 0 for v in report.counters.values()):
        raise Refused("bad_value", "StatusReport.counters: every counter is a finite number >= 0")


# ---------------------------------------------------------------- the JSON Schema

SCHEMA_ID = "https://volgraph.invalid/gateway-protocol.schema.json"


def schema_document() -> dict:
    """The JSON Schema of both directions, generated from the types above (and the events of
    operators/events.py they carry)."""
    (server, client, publish), components = msgspec.json.schema_components(
        (ServerMessage, ClientMessage, PublishMessage), ref_template="#/$defs/{name}", schema_hook=schema_hook)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"volgraph gateway protocol, version {PROTOCOL_VERSION}",
        "description": "Messages on ws://HOST:PORT/ws, both directions, and the frames publishers send "
                       "to /publish (docs/gateway-protocol.md). Generated by "
                       "connectors/gateway/protocol.py schema_document(); do not edit by hand.",
        "protocol": PROTOCOL_VERSION,
        "oneOf": [
            {"title": "server message", **server},
            {"title": "client message", **client},
            {"title": "publish frame", **publish},
        ],
        "$defs": {
            "ServerMessage": server,
            "ClientMessage": client,
            "PublishMessage": publish,
            **components,
        },
    }


def schema_json() -> bytes:
    """schema_document() as the committed file holds it (sorted keys, 2-space indent, newline)."""
    import json

    return (json.dumps(schema_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


__all__ = [
    "PROTOCOL_VERSION", "ClientMessage", "Error", "Hello", "Limits", "Ping", "Pong", "ProtocolError", "Refused",
    "Resync", "ServerMessage", "StreamPatch", "StreamSnapshot", "Subscribe", "Subscribed", "check_status",
    "check_surface", "decode_client", "decode_server", "encode", "schema_document", "schema_json", "stream_name",
]
