"""`volgraph watch`: the gateway protocol's reference client (docs/gateway-protocol.md). It
subscribes to the chosen venues / underlyings, keeps each stream's merged surface by the
one merge rule (operators/merge.py) and its contiguous `seq`, answers a gap with Resync, and
prints a live table per surface: ATM vol, RR25 and BF25 per expiry (in vol points).

`StreamClient` is the protocol logic alone (bytes in, Resync bytes out), for other programs
and the tests; `main(argv)` is the terminal program. Ctrl-C and SIGTERM end it cleanly (exit
0). Never imports flows or the server; only reads its socket and writes the terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, TextIO
from urllib.parse import urlencode

import msgspec
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.sync.client import connect

from connectors.gateway.protocol import (
    Error,
    Hello,
    Resync,
    StreamPatch,
    StreamSnapshot,
    decode_server,
    encode,
)
from operators.events import SurfacePatch, SurfaceSnapshot
from operators.merge import apply_patch

SurfaceKey = tuple[str, str]
DAY_MS = 86_400_000


def _plain(event: Any) -> Any:
    """The operators.events event inside a StreamSnapshot / StreamPatch (seq fields dropped)."""
    cls = SurfaceSnapshot if isinstance(event, StreamSnapshot) else SurfacePatch
    return cls(**{f: getattr(event, f) for f in cls.__struct_fields__})


class StreamClient:
    """The protocol's client side: per stream the merged surface and the seq it is at.

    on_message(raw) takes one server message; a patch whose seq_from is not the stream's seq
    + 1 is a gap: the stream's patches are dropped and `send` gets one Resync until the
    stream's snapshot arrives. A stream not seen on this connection is at seq 0 (empty)."""

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self.send = send
        self.surfaces: dict[SurfaceKey, SurfaceSnapshot] = {}
        self.seqs: dict[SurfaceKey, int] = {}
        self.resyncing: set[SurfaceKey] = set()
        self.hello: Optional[Hello] = None
        self.gaps = 0
        self.errors: list[Error] = []
        self.bad_messages = 0

    def on_message(self, raw: bytes | str) -> Optional[SurfaceKey]:
        """Take one message; returns the stream it changed, if any."""
        try:
            msg = decode_server(raw)
        except (msgspec.DecodeError, UnicodeError):
            self.bad_messages += 1
            return None
        if isinstance(msg, Hello):
            self.hello = msg
            self.seqs.clear()
            self.resyncing.clear()
            return None
        if isinstance(msg, Error):
            self.errors.append(msg)
            return None
        if isinstance(msg, StreamSnapshot):
            key = (msg.venue, msg.underlying)
            self.surfaces[key] = _plain(msg)
            self.seqs[key] = msg.seq
            self.resyncing.discard(key)
            return key
        if isinstance(msg, StreamPatch):
            key = (msg.venue, msg.underlying)
            if key in self.resyncing:
                return None
            have = self.seqs.get(key)
            if msg.seq_from != (have or 0) + 1:
                self.gaps += 1
                self.resyncing.add(key)
                self.send(encode(Resync(msg.venue, msg.underlying)))
                return None
            base = self.surfaces.get(key) if have is not None else None
            self.surfaces[key] = apply_patch(base, _plain(msg))
            self.seqs[key] = msg.seq
            return key
        return None  # Ping, Subscribed

    def complete(self) -> bool:
        """True once every stream the Hello listed (and the subscription wants) has arrived."""
        if self.hello is None:
            return False
        wanted = []
        for name in self.hello.streams:
            venue, _, underlying = name.partition(":")
            if (self.hello.venues is None or venue in self.hello.venues) and (
                    self.hello.underlyings is None or underlying in self.hello.underlyings):
                wanted.append((venue, underlying))
        return (all(k in self.surfaces and k not in self.resyncing for k in wanted)
                and (bool(wanted) or bool(self.surfaces)))


# ---------------------------------------------------------------- the table


def _pts(x: Optional[float]) -> str:
    return "–" if x is None else f"{100.0 * x:.2f}"


def render(surfaces: dict[SurfaceKey, SurfaceSnapshot], now_ms: Optional[float] = None) -> str:
    """The terminal table: per surface a heading, then one row per expiry."""
    lines = []
    for (venue, underlying), s in sorted(surfaces.items()):
        index = "–" if s.index_px is None else f"{s.index_px:,.2f}"
        age = "" if now_ms is None else f"  data age {max(0.0, (now_ms - s.ts_exchange_ms) / 1000.0):.1f} s"
        lines.append(f"{venue}:{underlying}  epoch {s.epoch}  index {index}{age}")
        lines.append(f"  {'expiry':<10} {'days':>7} {'forward':>12} {'ATM vol (pts)':>14} {'RR25 (pts)':>11} "
                     f"{'BF25 (pts)':>11} {'RMSE (pts)':>11} {'quotes':>7}")
        for v in s.expiries:
            a = v.analytics
            day = dt.datetime.fromtimestamp(v.expiry_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")
            days = (v.expiry_ms - s.ts_exchange_ms) / DAY_MS
            lines.append(f"  {day:<10} {days:>7.2f} {v.fit.forward:>12.2f} {_pts(a.get('atm_vol')):>14} "
                         f"{_pts(a.get('rr25')):>11} {_pts(a.get('bf25')):>11} {v.fit.rmse_vol_pts:>11.2f} "
                         f"{v.fit.n_quotes:>7}")
        lines.append("")
    return "\n".join(lines) if lines else "(no surfaces yet)\n"


# ---------------------------------------------------------------- the program


def build_parser(defaults: Optional[dict[str, Any]] = None) -> argparse.ArgumentParser:
    """`defaults`: {"url": ...} from graph.toml [sinks.gateway] (handed over by `volgraph
    watch`); without it --url is required."""
    d = defaults or {}
    p = argparse.ArgumentParser(
        prog="volgraph watch",
        description="Print the live volatility surfaces a gateway serves: ATM vol, RR25 and BF25 per expiry "
                    "(vol points). The reference client of docs/gateway-protocol.md.")
    p.add_argument("--url", default=d.get("url"), required=d.get("url") is None,
                   help="the gateway's websocket, ws://HOST:PORT/ws (default: %(default)s)")
    p.add_argument("--venue", action="append", default=[],
                   help="only this venue (repeat or comma-separate; default: every venue)")
    p.add_argument("--underlying", action="append", default=[],
                   help="only this underlying (repeat or comma-separate; default: every underlying)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--once", action="store_true",
                      help="print the surfaces once every subscribed stream has arrived, then exit (default: keep going)")
    stop.add_argument("--seconds", type=float, default=None,
                      help="run this many seconds, then exit (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--refresh-s", type=float, default=1.0,
                   help="seconds between redraws (default: %(default)s)")
    p.add_argument("--open-timeout-s", type=float, default=10.0,
                   help="give up connecting after this long (default: %(default)s)")
    return p


def _names(values: list[str]) -> Optional[tuple[str, ...]]:
    names = tuple(n.strip() for v in values for n in v.split(",") if n.strip())
    return names or None


def main(argv: Optional[list[str]] = None, *, defaults: Optional[dict[str, Any]] = None,
         out: TextIO = sys.stdout, stop: Optional[threading.Event] = None) -> int:
    """`volgraph watch`. Exit 0 when done or stopped (Ctrl-C, SIGTERM, `stop` set), 1 when the
    gateway cannot be reached or refuses, 2 for bad arguments."""
    args = build_parser(defaults).parse_args(argv)
    if not args.url.startswith(("ws://", "wss://")):
        print(f"volgraph watch: --url {args.url!r} must be ws://HOST:PORT/ws (or wss://)", file=sys.stderr)
        return 2
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    tty = out.isatty()
    venues, underlyings = _names(args.venue), _names(args.underlying)
    url = args.url
    if venues or underlyings:  # the subscription from the first message on (docs/gateway-protocol.md)
        query = urlencode({k: ",".join(v) for k, v in (("venue", venues), ("underlying", underlyings)) if v})
        url += ("&" if "?" in url else "?") + query
    try:
        with connect(url, open_timeout=args.open_timeout_s, max_size=None, close_timeout=1) as ws:
            return _loop(ws, args, out, stop, tty)
    except InvalidStatus as exc:
        print(f"volgraph watch: {args.url} refused the connection (HTTP {exc.response.status_code}: "
              f"{exc.response.body.decode(errors='replace').strip()}); check the URL and the gateway's "
              f"allowed_origins / client limits", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, InvalidURI, WebSocketException) as exc:
        print(f"volgraph watch: cannot connect to {args.url} ({exc}); is `volgraph gateway` (or `volgraph run`) "
              f"running there? pass --url ws://HOST:PORT/ws", file=sys.stderr)
        return 1


def _loop(ws: Any, args: argparse.Namespace, out: TextIO, stop: threading.Event, tty: bool) -> int:
    """Read, merge and draw until done; 0, or 1 if the gateway closed the connection."""
    client = StreamClient(lambda raw: ws.send(raw, text=True))
    started = time.monotonic()
    next_draw = started
    try:
        while not stop.is_set():
            if args.seconds is not None and time.monotonic() - started >= args.seconds:
                break
            try:
                raw = ws.recv(timeout=0.25)
            except TimeoutError:
                raw = None
            if raw is not None:
                client.on_message(raw)
            if args.once:
                if client.complete():
                    out.write(render(client.surfaces))
                    out.flush()
                    break
                continue
            if time.monotonic() >= next_draw:
                next_draw = time.monotonic() + args.refresh_s
                text = render(client.surfaces, now_ms=time.time() * 1000)
                out.write(("\x1b[H\x1b[2J" + text) if tty else text + "\n")
                out.flush()
    except ConnectionClosed as exc:
        if not stop.is_set():
            print(f"volgraph watch: the gateway closed the connection ({exc}); run it again to reconnect",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
