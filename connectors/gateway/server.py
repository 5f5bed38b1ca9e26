"""The gateway (`volgraph gateway`): a websockets server between the dataflow and dashboards.

`/publish` takes the dataflow's SurfacePatch / SurfaceSnapshot / StatusReport JSON frames
(from connectors/gateway/publisher.py), always with the publish token
(connectors/gateway/auth.py); each frame is decoded by a typed msgspec decoder, checked and
bounded (connectors/gateway/protocol.py: finite numbers, names, message bytes, surfaces,
expiries per surface); a refused frame is counted (/status publish_errors) and dropped, never
forwarded. `/ws` speaks the protocol of docs/gateway-protocol.md: Hello, then a snapshot per
subscribed stream (one per (venue, underlying)), then patches carrying the stream's
contiguous `seq` assigned here; Subscribe / Resync from the client; Ping from the server.
Per stream the gateway keeps the merged current surface (operators/merge.py, the one merge
rule), so a new client starts from the latest state. Each client has a coalescing queue per
stream: a few shared patch objects merged into one message (seq_from..seq) when the client
is ready, or past `coalesce_after` a marker that sends the current snapshot; a client that
falls more than `client_queue_max` updates behind is dropped, never buffered for; a client
that keeps up (nothing queued, its socket taking data) gets each patch written by the
fan-out loop itself, without waking its sender task (`_write_now`). Browser
origins are checked against an allow-list; clients are limited in total and per address.
Plain HTTP on the same port (connectors/gateway/web.py): the dashboard page (/), its assets
(/static/...), /healthz, /status, /metrics.

This module: the server's lifecycle, its websocket handlers and fan-out, and the CLI — one
piece of ~830 lines because the handlers, the fan-out's direct write and the client limits
share the event loop's per-client state and its ordering rule (a patch is written directly only
while the client's sender task holds nothing), which is easier to check in one place.
Every [sinks.gateway] setting is a required keyword here (its default is graph.toml's), and
the CLI's defaults are handed over by `volgraph gateway` (flows/cli.py); never imports flows.
State and queues live in connectors/gateway/surfaces.py. Translates bytes <-> events
only: never computes volatility, never blocks on I/O other than its own sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import http
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.http11 import Request, Response

from connectors.gateway.auth import (
    PUBLISH_TOKEN_ENV,
    PUBLISH_TOKEN_FILE_ENV,
    TokenError,
    cookie_path,
    is_loopback,
    new_publish_token,
    normalise_origin,
    origin_allowed,
    own_origins,
    read_token_file,
    remove_cookie,
    token_ok,
    write_cookie,
)
from connectors.gateway.protocol import (
    MAX_FILTER_NAMES,
    NAME_RE,
    PROTOCOL_VERSION,
    Error,
    Hello,
    Limits,
    Ping,
    ProtocolError,
    Refused,
    Resync,
    Subscribe,
    Subscribed,
    decode_client,
    encode,
    stream_name,
)
from connectors.gateway.surfaces import (
    SNAPSHOT,
    Client,
    PatchMsg,
    Surface,
    SurfaceKey,
    encode_queued,
    validate_frame,
)
from connectors.gateway.web import (
    DASHBOARD_DIR,
    GatewayCollector,
    http_response,
    response,
    status_document,
)
from operators.events import StatusReport, SurfaceSnapshot, to_json

log = logging.getLogger("volgraph.gateway")

MAX_STATUS_SOURCES = 1024  # StatusReport sources kept (one per flow worker)
MIN_PING_TIMEOUT_S = 10.0  # a peer is closed when a websocket ping goes unanswered max(ping_interval_s, this)
# The kernel's send buffer per dashboard connection. Left to autotuning it grows to
# net.ipv4.tcp_wmem's maximum (4 MiB here): 1,000 readers could pin GBs of kernel memory, and
# a reader that stopped would hide behind megabytes before its queue even began to coalesce.
CLIENT_SEND_BUFFER_BYTES = 256 * 1024
WS_OPEN = State.OPEN


def _addr(connection: ServerConnection) -> str:
    """The remote address a connection counts against (max_clients_per_addr)."""
    peer = connection.remote_address
    return str(peer[0]) if peer else "?"


def _closed_with(ws: ServerConnection, code: int) -> bool:
    """True if the server closed (or is closing) this connection with `code`."""
    sent = ws.protocol.close_sent
    return sent is not None and sent.code == code


def _filters(query: str) -> tuple[Optional[frozenset], Optional[frozenset]]:
    """The initial subscription from /ws?venue=a,b&underlying=BTC (absent = any);
    ProtocolError for names that are not names."""
    out = []
    params = parse_qs(query)
    for field in ("venue", "underlying"):
        values = [n for v in params.get(field, []) for n in v.split(",") if n]
        if not values:
            out.append(None)
            continue
        if len(values) > MAX_FILTER_NAMES or not all(NAME_RE.match(n) for n in values):
            raise ProtocolError("bad_query", f"?{field}=: at most {MAX_FILTER_NAMES} comma-separated names of "
                                             "letters, digits, '_', '.', '-'")
        out.append(frozenset(values))
    return out[0], out[1]


class Gateway:
    """websockets server for dashboards (/ws) and the dataflow's publisher (/publish).

    Every keyword below named like a graph.toml [sinks.gateway] key is that key (its default
    lives there). publish_token / publish_token_file: the token /publish requires; with
    neither, a loopback gateway makes its own and writes it to its cookie file
    (connectors/gateway/auth.py), and any other bind raises TokenError (refuses to start).
    allowed_origins: browser origins allowed on /ws and /publish besides the page's own
    loopback origin. client_queue_max: updates a client may fall behind before it is dropped.
    coalesce_after: patches queued per stream before a client is sent one snapshot instead.
    stale_after_ms: a dependency not heard from for this long counts as down (/healthz, /status).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        publish_token: Optional[str],
        publish_token_file: Optional[str],
        stale_after_ms: int,
        allowed_origins: Iterable[str],
        max_clients: int,
        max_clients_per_addr: int,
        client_queue_max: int,
        coalesce_after: int,
        client_max_message_bytes: int,
        publish_max_message_bytes: int,
        max_surfaces: int,
        max_expiries_per_surface: int,
        ping_interval_s: float,
        compression: bool = False,
        dashboard_dir: str | os.PathLike = DASHBOARD_DIR,
    ) -> None:
        for name, value in (("max_clients", max_clients), ("max_clients_per_addr", max_clients_per_addr),
                            ("client_queue_max", client_queue_max), ("coalesce_after", coalesce_after),
                            ("max_surfaces", max_surfaces), ("max_expiries_per_surface", max_expiries_per_surface)):
            if value < 1:
                raise ValueError(f"sinks.gateway.{name} = {value}: it must be an integer >= 1")
        self.host = host
        self.port = port
        token = publish_token or (read_token_file(publish_token_file, "publish_token_file") if publish_token_file else None)
        self.token_generated = token is None
        if token is None and not is_loopback(host):
            raise TokenError(
                f"gateway on {host}: bound off loopback with no publish token, anyone who reaches it could "
                f"publish; set ${PUBLISH_TOKEN_ENV} or sinks.gateway.publish_token_file (--publish-token-file "
                f"PATH), or bind to 127.0.0.1")
        self.publish_token: str = token or new_publish_token()
        self.cookie_path: Optional[Path] = None  # where a generated token was written
        self.stale_after_s = stale_after_ms / 1000.0
        self.extra_origins = {normalise_origin(o) for o in allowed_origins if o}
        self.origins: set[str] = set()  # filled once the port is bound (own_origins needs it)
        self.max_clients = max_clients
        self.max_clients_per_addr = max_clients_per_addr
        self.client_queue_max = client_queue_max
        self.coalesce_after = coalesce_after
        self.client_max_message_bytes = client_max_message_bytes
        self.publish_max_message_bytes = publish_max_message_bytes
        self.limits = Limits(publish_max_message_bytes, max_surfaces, max_expiries_per_surface)
        self.ping_interval_s = ping_interval_s
        self.compression = compression
        self.dashboard_dir = Path(dashboard_dir).resolve()

        self.surfaces: dict[SurfaceKey, Surface] = {}
        self.last_update_s: dict[SurfaceKey, float] = {}
        self.workers: dict[str, StatusReport] = {}
        self.clients: set[Client] = set()
        self.clients_per_addr: Counter = Counter()
        self.publishers = 0
        # patches_out, dropped_clients, published.<type>, rejected.<reason>, publish_errors.<reason>,
        # client_errors.<reason>, resyncs, coalesced, ...
        self.counters: Counter = Counter()
        self.started_s = time.time()
        self.last_publish_s: Optional[float] = None  # the latest frame from any publisher
        self.publisher_changed_s = time.time()  # when the publisher count last went to or from 0
        self._next_cid = 0
        self._logged_s: dict[str, float] = {}  # refusal reason -> when last logged (one line a minute)
        self._changed = threading.Condition()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self.registry = CollectorRegistry()
        self.registry.register(GatewayCollector(self))

    # -- lifecycle ---------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def publish_url(self) -> str:
        return f"ws://{self.host}:{self.port}/publish"

    async def serve(self, ready: Optional[Callable[[], None]] = None) -> None:
        """Serve until stop() (or cancellation). Port 0 binds a free port (see .port)."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self.started_s = time.time()
        async with serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            max_size=self.publish_max_message_bytes,
            ping_interval=self.ping_interval_s,
            ping_timeout=max(self.ping_interval_s, MIN_PING_TIMEOUT_S),
            compression="deflate" if self.compression else None,
            close_timeout=2,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.origins = own_origins(self.host, self.port) | self.extra_origins
            if self.token_generated:
                self.cookie_path = write_cookie(self.port, self.publish_token)
                if self.cookie_path is not None:
                    log.info("no publish token configured: this gateway made one; publishers of this user read it "
                             "from %s (or set $%s for both)", self.cookie_path, PUBLISH_TOKEN_ENV)
                else:
                    log.warning("no publish token configured and no private directory for its cookie file (%s): "
                                "no publisher can authenticate; set $%s", cookie_path(self.port).parent,
                                PUBLISH_TOKEN_ENV)
            log.info("gateway listening on %s (dashboard %s, publish %s)", self.http_url, self.ws_url, self.publish_url)
            pinger = asyncio.create_task(self._pinger())
            if ready is not None:
                ready()
            try:
                await self._stop_event.wait()
            finally:
                pinger.cancel()
                if self.cookie_path is not None:
                    remove_cookie(self.port, self.publish_token)

    def start(self, timeout: float = 10.0) -> str:
        """Run the server on its own thread and event loop; returns its http:// URL."""
        if self._thread is not None:
            raise RuntimeError("Gateway.start() called twice; create a new Gateway")

        def run() -> None:
            try:
                asyncio.run(self.serve(ready=self._ready.set))
            except BaseException as exc:  # reported to start()'s caller
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name=f"gateway-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"gateway did not start on {self.host}:{self.port} within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"gateway could not start on {self.host}:{self.port}: {self._error}") from self._error
        return self.http_url

    def request_stop(self) -> None:
        """Ask serve() to return (from any thread or a signal handler)."""
        if self._loop is not None and self._stop_event is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:  # loop already closed
                pass

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (closing every connection) and join the thread start() made."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- cross-thread views (tests, CLI) ------------------------------------------

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run fn on the gateway's event loop (its state is only touched there)."""
        loop = self._loop
        try:
            in_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            in_loop = False
        if loop is None or in_loop or not loop.is_running():
            return fn()

        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    def status(self) -> dict:
        """The /status document (safe from any thread)."""
        return self._call(self._status)

    def state(self, venue: str, underlying: str) -> Optional[SurfaceSnapshot]:
        """The current merged surface (safe from any thread)."""
        surface = self.surfaces.get((venue, underlying))
        return None if surface is None else self._call(surface.snapshot)

    def seq(self, venue: str, underlying: str) -> Optional[int]:
        """The stream's current seq: a plain read, safe in wait_until predicates."""
        surface = self.surfaces.get((venue, underlying))
        return surface.seq if surface is not None else None

    def epoch(self, venue: str, underlying: str) -> Optional[int]:
        """The current surface's epoch: a plain read, safe in wait_until predicates."""
        surface = self.surfaces.get((venue, underlying))
        return surface.epoch if surface is not None else None

    def wait_until(self, predicate: Callable[["Gateway"], bool], timeout: float) -> bool:
        """Block until predicate(gateway) holds, re-checked whenever the gateway's state
        changes (publish, connect, drop). The predicate must only read attributes."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- HTTP and handshake --------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Optional[Response]:
        parts = urlsplit(request.path)
        path = parts.path
        if path in ("/ws", "/publish"):
            if not origin_allowed(request.headers.get("Origin"), self.origins):
                return self._refuse("origin", http.HTTPStatus.FORBIDDEN,
                                    b"origin not allowed; add it to graph.toml sinks.gateway.allowed_origins\n")
            if path == "/publish":
                if not token_ok(request.headers.get("Authorization"), parts.query, self.publish_token):
                    return self._refuse("token", http.HTTPStatus.UNAUTHORIZED, b"publish token missing or wrong\n")
            else:
                if len(self.clients) >= self.max_clients:
                    return self._refuse("capacity", http.HTTPStatus.SERVICE_UNAVAILABLE, b"too many clients\n")
                if self.clients_per_addr[_addr(connection)] >= self.max_clients_per_addr:
                    return self._refuse("capacity_per_addr", http.HTTPStatus.SERVICE_UNAVAILABLE,
                                        b"too many clients from this address\n")
                try:
                    _filters(parts.query)
                except ProtocolError as exc:
                    return self._refuse("bad_query", http.HTTPStatus.BAD_REQUEST, exc.detail.encode() + b"\n")
            return None  # websockets completes the handshake (426 if not an upgrade)
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return response(http.HTTPStatus.NOT_FOUND, b"websocket paths: /ws, /publish\n", "text/plain")
        return http_response(self, path)

    def _refuse(self, reason: str, status: http.HTTPStatus, body: bytes) -> Response:
        self.counters[f"rejected.{reason}"] += 1
        self._notify()
        return response(status, body, "text/plain")

    # -- websocket handlers --------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path
        if path == "/publish":
            await self._publisher(ws)
        else:
            await self._client(ws)

    async def _publisher(self, ws: ServerConnection) -> None:
        self.publishers += 1
        if self.publishers == 1:
            self.publisher_changed_s = time.time()
        self._notify()
        try:
            async for message in ws:
                self.publish_raw(message)
        except ConnectionClosed:
            pass
        finally:
            if _closed_with(ws, 1009):  # websockets refused a frame over publish_max_message_bytes
                self._publish_error("oversized", f"a frame over {self.publish_max_message_bytes} bytes "
                                                 "(sinks.gateway.publish_max_message_bytes); publisher disconnected")
            self.publishers -= 1
            if self.publishers == 0:
                self.publisher_changed_s = time.time()
            self._notify()

    def publish(self, event: Any) -> None:
        """Take one event object into the gateway (event-loop thread only)."""
        self.publish_raw(to_json(event))

    def publish_raw(self, message: bytes | str) -> None:
        """Take one published JSON frame: check it, update the state and fan it out
        (event-loop thread only). Bad frames are counted and dropped, never raised."""
        try:
            self._take(message)
        finally:
            self._notify()

    def _publish_error(self, reason: str, detail: str) -> None:
        self.counters[f"publish_errors.{reason}"] += 1
        now_s = time.time()
        if now_s - self._logged_s.get(reason, 0.0) >= 60.0:
            self._logged_s[reason] = now_s
            log.warning("refused a published frame (%s): %s; counted in /status publish_errors", reason, detail)

    def _take(self, message: bytes | str) -> None:
        self.last_publish_s = time.time()
        try:
            event = validate_frame(message, self.limits.max_message_bytes)
            if isinstance(event, StatusReport):
                if event.source not in self.workers and len(self.workers) >= MAX_STATUS_SOURCES:
                    raise Refused("too_many_sources", f"more than {MAX_STATUS_SOURCES} StatusReport sources")
            else:
                key = (event.venue, event.underlying)
                surface = self.surfaces.get(key)
                if surface is None and len(self.surfaces) >= self.limits.max_surfaces:
                    raise Refused("too_many_surfaces", f"{key[0]}:{key[1]} would be surface "
                                  f"{len(self.surfaces) + 1}; sinks.gateway.max_surfaces is {self.limits.max_surfaces}")
                held = (surface or Surface()).would_hold(event)
                if held > self.limits.max_expiries_per_surface:
                    raise Refused("too_many_expiries", f"{key[0]}:{key[1]} would hold {held} expiries; "
                                  f"sinks.gateway.max_expiries_per_surface is {self.limits.max_expiries_per_surface}")
        except Refused as exc:
            # A bad publisher must not corrupt what dashboards receive: a string where a
            # vol is, a null where a fit parameter is, an infinite price ... drops the whole frame.
            self._publish_error(exc.reason, exc.detail)
            return
        kind = type(event).__name__
        # counted before the fan-out: a client that has seen the event finds it counted too
        self.counters[f"published.{kind}"] += 1
        if kind == "StatusReport":
            self.workers[event.source] = event
        else:
            key = (event.venue, event.underlying)
            surface = self.surfaces.get(key)
            if surface is None:
                surface = self.surfaces[key] = Surface()
            if kind == "SurfacePatch":
                seq = surface.apply(event)
                self._fan_out(key, PatchMsg(event, seq))
            else:
                surface.replace(event)
                self._fan_out(key, SNAPSHOT)
            self.last_update_s[key] = time.time()

    def _fan_out(self, key: SurfaceKey, message: Any) -> None:
        """Queue per client and surface: a short list of shared patch objects (merged into
        one message when sent), or past `coalesce_after` patches a SNAPSHOT marker (the
        snapshot is encoded once per state version and shared by all lagging clients)."""
        raw = None if message is SNAPSHOT else message.raw
        for client in list(self.clients):
            if not client.wants(key):
                continue
            if raw is not None and self._write_now(client, raw):
                continue
            absorbed = client.queue(key, message, self.coalesce_after)
            if absorbed:
                self.counters["coalesced"] += absorbed
            if client.pending_updates > self.client_queue_max:
                self._drop(client)
            else:
                client.wake.set()

    def _write_now(self, client: Client, raw: bytes) -> bool:
        """The fast path of fan-out: a client with nothing queued, whose sender is idle and
        whose socket takes data without waiting, gets the patch written here and now, with
        no task switch (websockets' own send() does the same two steps: frame it with the
        sans-I/O protocol, write what it produced; bench/bench_gateway.py measures the
        difference). False: use the queue (and the sender task) instead. Order is kept:
        nothing is queued or being sent for this client, so this frame is the next one."""
        if client.pending or client.control or client.sending or client.dropped:
            return False
        ws = client.ws
        transport = ws.transport
        # `paused`: websockets' flow-control flag (asyncio's pause_writing() callback): the
        # transport's buffer is past its high-water mark, so send() would wait for drain
        if getattr(ws, "paused", True) or transport is None or transport.is_closing() or ws.protocol.state is not WS_OPEN:
            return False  # a slow reader or a closing connection: the queue and the sender task
        ws.protocol.send_text(raw)
        ws.send_data()
        client.sent += 1
        self.counters["patches_out"] += 1
        self.counters["bytes_out"] += len(raw)
        return True

    def _drop(self, client: Client) -> None:
        """A client that fell too far behind: cut it off now rather than buffer for it."""
        client.dropped = True
        client.pending.clear()
        self.clients.discard(client)
        self.counters["dropped_clients"] += 1
        log.warning("dropping slow client %d (more than %d updates behind)", client.cid, self.client_queue_max)
        # abort(): a close frame would queue behind the data it is not reading.
        if client.ws.transport is not None:
            client.ws.transport.abort()
        client.wake.set()

    async def _client(self, ws: ServerConnection) -> None:
        ws.protocol.max_message_size = self.client_max_message_bytes  # clients send small control messages
        sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SEND_BUFFER_BYTES)
            except OSError:  # not a TCP socket (tests may hand over others): the kernel's default
                pass
        venues, underlyings = _filters(urlsplit(ws.request.path).query)
        self._next_cid += 1
        addr = _addr(ws)
        client = Client(ws, self._next_cid, addr, venues, underlyings)
        client.control.append(self._hello(client))
        for key in self.surfaces:
            if client.wants(key):
                client.pending[key] = SNAPSHOT
        client.pending_updates = 0
        client.wake.set()
        self.clients.add(client)
        self.clients_per_addr[addr] += 1
        self.counters["connections"] += 1
        self._notify()
        sender = asyncio.create_task(self._sender(client))
        try:
            async for message in ws:
                try:
                    self._on_client_message(client, decode_client(message))
                except ProtocolError as exc:
                    self.counters[f"client_errors.{exc.reason}"] += 1
                    self._notify()
                    await ws.send(encode(Error(exc.reason, exc.detail[:500])), text=True)
                    await ws.close(1008, exc.reason)
                    break
        except ConnectionClosed:
            pass
        finally:
            if _closed_with(ws, 1009):  # websockets refused a message over client_max_message_bytes
                self.counters["client_errors.oversized"] += 1
            sender.cancel()
            self.clients.discard(client)
            self.clients_per_addr[addr] -= 1
            if self.clients_per_addr[addr] <= 0:
                del self.clients_per_addr[addr]
            self._notify()

    def _hello(self, client: Client) -> bytes:
        return encode(Hello(
            protocol=PROTOCOL_VERSION,
            ping_interval_ms=round(self.ping_interval_s * 1000),
            max_message_bytes=self.client_max_message_bytes,
            streams=tuple(sorted(stream_name(*key) for key in self.surfaces)),
            venues=None if client.venues is None else tuple(sorted(client.venues)),
            underlyings=None if client.underlyings is None else tuple(sorted(client.underlyings)),
        ))

    def _on_client_message(self, client: Client, msg: Any) -> None:
        if isinstance(msg, Subscribe):
            before = {key for key in self.surfaces if client.wants(key)}
            client.venues = None if msg.venues is None else frozenset(msg.venues)
            client.underlyings = None if msg.underlyings is None else frozenset(msg.underlyings)
            for key in list(client.pending):
                if not client.wants(key):
                    del client.pending[key]
            client.control.append(encode(Subscribed(msg.venues, msg.underlyings)))
            for key in self.surfaces:
                if client.wants(key) and key not in before:
                    client.queue(key, SNAPSHOT, self.coalesce_after)
            self.counters["subscribes"] += 1
        elif isinstance(msg, Resync):
            key = (msg.venue, msg.underlying)
            if key in self.surfaces and client.wants(key):
                client.queue(key, SNAPSHOT, self.coalesce_after)
                self.counters["resyncs"] += 1
            else:
                self.counters["client_errors.unknown_stream"] += 1
        # Pong: nothing to do (liveness is the websocket ping's job)
        client.wake.set()
        self._notify()

    async def _pinger(self) -> None:
        """A Ping message to every client each ping_interval_s (one at most in its queue)."""
        while True:
            await asyncio.sleep(self.ping_interval_s)
            ping = encode(Ping(int(time.time() * 1000)))
            for client in list(self.clients):
                if not client.control:
                    client.control.append(ping)
                    client.wake.set()

    async def _sender(self, client: Client) -> None:
        ws = client.ws
        try:
            while not client.dropped:
                await client.wake.wait()
                client.wake.clear()
                client.sending = True
                while (client.pending or client.control) and not client.dropped:
                    # Encode the whole batch before the first await: snapshots then reflect
                    # exactly the state the later queued patches apply to.
                    batch = client.control + [self._encode(key, queued) for key, queued in client.pending.items()]
                    client.control = []
                    client.pending.clear()
                    client.pending_updates = 0
                    for raw in batch:
                        await ws.send(raw, text=True)
                        client.sent += 1
                        self.counters["patches_out"] += 1
                        self.counters["bytes_out"] += len(raw)
                client.sending = False
        except ConnectionClosed:
            pass

    def _encode(self, key: SurfaceKey, queued: Any) -> bytes:
        raw, coalesced = encode_queued(self.surfaces[key], queued)
        if coalesced:
            self.counters["coalesced"] += coalesced
        return raw

    # -- status --------------------------------------------------------------------

    def _status(self) -> dict:
        return status_document(self)

    def dependencies(self) -> dict[str, dict]:
        """Each dependency's state ("up", "down", "unknown", or "off" when not configured) and
        age in seconds, as the gateway sees it: the publisher directly; the feeds and the
        database through the flow workers' latest StatusReports (a report older than
        stale_after_ms says nothing: "unknown")."""
        now_s = time.time()
        stale = self.stale_after_s
        if self.publishers and self.last_publish_s is not None and now_s - self.last_publish_s <= stale:
            publisher = {"state": "up", "age_s": now_s - self.last_publish_s, "detail": f"{self.publishers} connected"}
        else:
            publisher = {"state": "down", "age_s": now_s - (self.last_publish_s or self.publisher_changed_s),
                         "detail": f"{self.publishers} connected, last frame "
                                   + ("never" if self.last_publish_s is None else f"{now_s - self.last_publish_s:.1f} s ago")}
        fresh = [r for r in list(self.workers.values()) if now_s - r.ts_ms / 1000.0 <= stale]
        out = {"publisher": publisher}
        for name in ("feeds", "database"):  # the flow's probes (flows/surface.py watch_dependencies)
            reports = [(r, r.counters.get(f"dependency.{name}.up")) for r in fresh]
            known = [(r, up) for r, up in reports if up is not None]
            if not fresh:
                out[name] = {"state": "unknown", "age_s": None, "detail": "no fresh worker status"}
            elif not known and name == "database" and all(f"dependency.{name}.age_s" not in r.counters for r in fresh):
                out[name] = {"state": "off", "age_s": None, "detail": "not configured in the flow"}
            elif not known:
                out[name] = {"state": "unknown", "age_s": None, "detail": "not tried yet"}
            else:
                up = all(u == 1.0 for _r, u in known)
                age = max(float(r.counters.get(f"dependency.{name}.age_s", 0.0)) + (now_s - r.ts_ms / 1000.0)
                          for r, _u in known)
                down = sum(1 for _r, u in known if u != 1.0)
                out[name] = {"state": "up" if up else "down", "age_s": age,
                             "detail": f"{len(known) - down} of {len(known)} workers up"}
        for dep in out.values():
            if dep["age_s"] is not None:
                dep["age_s"] = round(dep["age_s"], 3)
        return out


# ---------------------------------------------------------------- CLI


# graph.toml [sinks.gateway] keys the CLI takes as --flags (argparse type); `volgraph gateway`
# hands their values over as `defaults` (flows/cli.py), the module form needs each flag.
LIMIT_FLAGS = {
    "stale_after_ms": int,
    "max_clients": int,
    "max_clients_per_addr": int,
    "client_queue_max": int,
    "coalesce_after": int,
    "client_max_message_bytes": int,
    "publish_max_message_bytes": int,
    "max_surfaces": int,
    "max_expiries_per_surface": int,
    "ping_interval_s": float,
}
LIMIT_HELP = {
    "stale_after_ms": "a dependency not heard from for this long counts as down on /healthz and /status",
    "max_clients": "dashboard connections at once; more are refused with 503",
    "max_clients_per_addr": "dashboard connections at once from one remote address",
    "client_queue_max": "updates a client may fall behind before it is dropped",
    "coalesce_after": "patches queued for one stream of a slow client before they become one snapshot",
    "client_max_message_bytes": "a larger client message closes that client",
    "publish_max_message_bytes": "a larger published frame is refused and counted",
    "max_surfaces": "(venue, underlying) surfaces kept; frames for more are refused and counted",
    "max_expiries_per_surface": "expiries per surface; frames exceeding it are refused and counted",
    "ping_interval_s": "seconds between pings to clients",
}


def build_parser(defaults: Optional[dict[str, Any]] = None) -> argparse.ArgumentParser:
    """The CLI. `defaults`: graph.toml's [sinks.gateway] keys (handed over by `volgraph gateway`:
    every key of GatewaySinkConfig); VOLGRAPH_GATEWAY_HOST / _PORT override host and port.
    Without them (the module form) every flag they would give is required."""
    d = defaults or {}
    host = os.environ.get("VOLGRAPH_GATEWAY_HOST", d.get("host"))
    port = os.environ.get("VOLGRAPH_GATEWAY_PORT", d.get("port"))

    def said(key: str, value: Any) -> str:
        return (f"graph.toml sinks.gateway.{key}; default: %(default)s" if value is not None
                else "required without graph.toml: `volgraph gateway` reads it")

    p = argparse.ArgumentParser(
        prog="volgraph gateway",
        description=(
            "Serve live volatility surfaces to dashboards (protocol: docs/gateway-protocol.md). The dataflow "
            "publishes SurfacePatch / SurfaceSnapshot / StatusReport frames to ws://HOST:PORT/publish with the "
            f"publish token (${PUBLISH_TOKEN_ENV}, or a file); clients connect to ws://HOST:PORT/ws and get a "
            "snapshot per stream, then patches numbered by a contiguous seq. The same port serves the "
            "dashboard (/), /healthz, /status (JSON) and /metrics (Prometheus)."
        ),
    )
    p.add_argument("--host", default=host, required=host is None,
                   help=f"bind address; 0.0.0.0 in a container, which needs a publish token "
                        f"(env VOLGRAPH_GATEWAY_HOST; {said('host', host)})")
    p.add_argument("--port", type=int, default=None if port is None else int(port), required=port is None,
                   help=f"TCP port for websockets and HTTP; 0 picks a free one (env VOLGRAPH_GATEWAY_PORT; "
                        f"{said('port', port)})")
    p.add_argument("--publish-token-file", default=d.get("publish_token_file") or None, metavar="PATH",
                   help=f"file holding the token publishers must send (Authorization: Bearer); "
                        f"${PUBLISH_TOKEN_ENV} (the token) or ${PUBLISH_TOKEN_FILE_ENV} (a path) take precedence. "
                        "None at all: a loopback gateway makes its own and writes it to a cookie file only its "
                        "user can read; any other bind refuses to start "
                        "(graph.toml sinks.gateway.publish_token_file; default: %(default)s)")
    p.add_argument("--publish-token", default=None,
                   help=f"DEPRECATED: a token on the command line is visible to every local user in /proc; "
                        f"use ${PUBLISH_TOKEN_ENV} or --publish-token-file (default: none)")
    p.add_argument("--allowed-origins", default=",".join(d.get("allowed_origins") or ()),
                   help="comma-separated browser origins allowed besides the page's own loopback origin "
                        "(graph.toml sinks.gateway.allowed_origins; default: none, the page's own origin only)")
    for key, kind in LIMIT_FLAGS.items():
        value = d.get(key)
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value, required=value is None,
                       help=f"{LIMIT_HELP[key]} ({said(key, value)})")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)")
    return p


def resolve_token(args: argparse.Namespace, defaults: dict[str, Any]) -> Optional[str]:
    """The publish token: --publish-token (deprecated), $VOLGRAPH_PUBLISH_TOKEN,
    $VOLGRAPH_PUBLISH_TOKEN_FILE, --publish-token-file, graph.toml publish_token; else None."""
    if args.publish_token:
        print("volgraph gateway: warning: --publish-token puts the token where every local user can read it "
              f"(/proc/PID/cmdline); set ${PUBLISH_TOKEN_ENV} or use --publish-token-file PATH", file=sys.stderr)
        return args.publish_token
    if os.environ.get(PUBLISH_TOKEN_ENV):
        return os.environ[PUBLISH_TOKEN_ENV]
    if os.environ.get(PUBLISH_TOKEN_FILE_ENV):
        return read_token_file(os.environ[PUBLISH_TOKEN_FILE_ENV], f"${PUBLISH_TOKEN_FILE_ENV}")
    if args.publish_token_file:
        return read_token_file(args.publish_token_file, "--publish-token-file")
    return defaults.get("publish_token") or None


def main(argv: Optional[list[str]] = None, *, defaults: Optional[dict[str, Any]] = None) -> int:
    """`volgraph gateway`; `defaults` as build_parser takes them."""
    d = defaults or {}
    args = build_parser(d).parse_args(argv)
    # `volgraph gateway` has set up the handlers (plain or JSON lines); the module form gets plain ones
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    if args.log_level.upper() != "DEBUG":  # websockets logs every HTTP request at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)
    try:
        gateway = Gateway(
            args.host,
            args.port,
            publish_token=resolve_token(args, d),
            publish_token_file=None,
            allowed_origins=[o.strip() for o in args.allowed_origins.split(",") if o.strip()],
            **{key: getattr(args, key) for key in LIMIT_FLAGS},
        )
    except (TokenError, ValueError) as exc:
        print(f"volgraph gateway: {exc}", file=sys.stderr)
        return 2

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, gateway.request_stop)
            except (NotImplementedError, RuntimeError):  # not the main thread / platform
                pass
        await gateway.serve()

    try:
        asyncio.run(run())
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"volgraph gateway: port {args.port} is in use by another process; pass --port N "
                  f"(0 picks a free one) or stop that process", file=sys.stderr)
        else:
            print(f"volgraph gateway: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
                  f"pass another --host/--port", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
