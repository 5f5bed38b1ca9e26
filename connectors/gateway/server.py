"""The gateway (`volgraph gateway`): a websockets server between the dataflow and dashboards.

`/publish` takes the dataflow's SurfacePatch / SurfaceSnapshot / StatusReport JSON frames
(from connectors/gateway/publisher.py), decoded by a typed msgspec decoder (a bad frame is
counted and dropped, never forwarded); `/ws` streams to dashboards a SurfaceSnapshot per
known surface on connect, then patches. Per (venue, underlying) the gateway keeps the
merged current surface (operators/merge.py, the one merge rule), so a new client starts
from the latest state. Each client has a coalescing queue per surface: a few shared patch
objects merged into one message when the client is ready, or past `coalesce_after` a
marker that sends the current snapshot, so a client always converges to the gateway's
state; a client that falls more than `client_queue_max` updates behind is dropped, never
buffered for. Plain HTTP on the same port (connectors/gateway/web.py): the dashboard page
(/), its assets (/static/...), /healthz, /status, /metrics.

This module: the server's lifecycle, its websocket handlers and fan-out, and the CLI.
host, port and publish_token are graph.toml's [sinks.gateway]: required here, and the CLI's
defaults are handed over by `volgraph gateway` (flows/cli.py); never imports flows.
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
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connectors.gateway.surfaces import (
    SNAPSHOT,
    Client,
    PatchMsg,
    Surface,
    SurfaceKey,
    Unsupported,
    decode_frame,
    encode_queued,
)
from connectors.gateway.web import (
    DASHBOARD_DIR,
    GatewayCollector,
    http_response,
    origin_ok,
    response,
    status_document,
    token_ok,
)
from operators.events import ContractError, StatusReport, SurfaceSnapshot, to_json

log = logging.getLogger("volgraph.gateway")


class Gateway:
    """websockets server for dashboards (/ws) and the dataflow's publisher (/publish).

    allowed_origins: extra browser origins allowed to open websockets ("*" = any); a
    request with no Origin (non-browser) or with the gateway's own origin is always allowed.
    client_queue_max: updates a client may fall behind before it is dropped.
    coalesce_after: patches queued per surface before a client is sent one snapshot instead.
    stale_after_ms: a dependency not heard from for this long counts as down (/healthz, /status).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        publish_token: Optional[str],
        stale_after_ms: int,
        allowed_origins: Optional[Iterable[str]] = None,
        max_clients: int = 256,
        client_queue_max: int = 256,
        coalesce_after: int = 8,
        client_max_message_bytes: int = 4096,
        publish_max_message_bytes: int = 64 * 2**20,
        ping_interval_s: Optional[float] = 20.0,
        compression: bool = False,
        dashboard_dir: str | os.PathLike = DASHBOARD_DIR,
    ) -> None:
        if max_clients < 1 or client_queue_max < 1:
            raise ValueError(f"max_clients and client_queue_max must be >= 1; got {max_clients}, {client_queue_max}")
        self.host = host
        self.port = port
        self.publish_token = publish_token or None
        self.stale_after_s = stale_after_ms / 1000.0
        self.allowed_origins = {o.rstrip("/") for o in (allowed_origins or ()) if o}
        self.max_clients = max_clients
        self.client_queue_max = client_queue_max
        self.coalesce_after = max(1, coalesce_after)
        self.client_max_message_bytes = client_max_message_bytes
        self.publish_max_message_bytes = publish_max_message_bytes
        self.ping_interval_s = ping_interval_s
        self.compression = compression
        self.dashboard_dir = Path(dashboard_dir).resolve()

        self.surfaces: dict[SurfaceKey, Surface] = {}
        self.last_update_s: dict[SurfaceKey, float] = {}
        self.workers: dict[str, StatusReport] = {}
        self.clients: set[Client] = set()
        self.publishers = 0
        self.counters: Counter = Counter()  # patches_out, dropped_clients, published.<type>, rejected.<reason>, ...
        self.started_s = time.time()
        self.last_publish_s: Optional[float] = None  # the latest frame from any publisher
        self.publisher_changed_s = time.time()  # when the publisher count last went to or from 0
        self._next_cid = 0
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
            ping_timeout=self.ping_interval_s,
            compression="deflate" if self.compression else None,
            close_timeout=2,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            log.info("gateway listening on %s (dashboard %s, publish %s)", self.http_url, self.ws_url, self.publish_url)
            if ready is not None:
                ready()
            await self._stop_event.wait()

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
            if not origin_ok(request, self.allowed_origins):
                return self._refuse("origin", http.HTTPStatus.FORBIDDEN, b"origin not allowed\n")
            if path == "/publish":
                if not token_ok(request, parts.query, self.publish_token):
                    return self._refuse("token", http.HTTPStatus.UNAUTHORIZED, b"publish token missing or wrong\n")
            elif len(self.clients) >= self.max_clients:
                return self._refuse("capacity", http.HTTPStatus.SERVICE_UNAVAILABLE, b"too many clients\n")
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
            self.publishers -= 1
            if self.publishers == 0:
                self.publisher_changed_s = time.time()
            self._notify()

    def publish(self, event: Any) -> None:
        """Take one event object into the gateway (event-loop thread only)."""
        self.publish_raw(to_json(event))

    def publish_raw(self, message: bytes | str) -> None:
        """Take one published JSON frame: update the state and fan it out (event-loop
        thread only). Bad frames are counted and dropped, never raised."""
        try:
            self._take(message)
        finally:
            self._notify()

    def _take(self, message: bytes | str) -> None:
        self.last_publish_s = time.time()
        try:
            event = decode_frame(message)
        except Unsupported as exc:
            self.counters[f"publish_errors.unsupported.{exc.kind}"] += 1
            return
        except ContractError as exc:
            # A bad publisher must not corrupt what dashboards receive: a string where a
            # vol is, a null where a fit parameter is, ... drops the whole frame.
            self.counters["publish_errors.bad_event"] += 1
            log.warning("publisher sent a bad frame (%s); dropped", exc)
            return
        kind = type(event).__name__
        if kind == "StatusReport":
            self.workers[event.source] = event
        else:
            key = (event.venue, event.underlying)
            surface = self.surfaces.get(key)
            if surface is None:
                surface = self.surfaces[key] = Surface()
            if kind == "SurfacePatch":
                surface.apply(event)
                raw = message.encode() if isinstance(message, str) else bytes(message)
                self._fan_out(key, PatchMsg(event, raw))
            else:
                surface.replace(event)
                self._fan_out(key, SNAPSHOT)
            self.last_update_s[key] = time.time()
        self.counters[f"published.{kind}"] += 1

    def _fan_out(self, key: SurfaceKey, message: Any) -> None:
        """Queue per client and surface: a short list of shared patch objects (merged into
        one message when sent), or past `coalesce_after` patches a SNAPSHOT marker (the
        snapshot is encoded once per state version and shared by all lagging clients)."""
        for client in list(self.clients):
            client.queue(key, message, self.coalesce_after)
            if client.pending_updates > self.client_queue_max:
                self._drop(client)
            else:
                client.wake.set()

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
        ws.protocol.max_message_size = self.client_max_message_bytes  # read-only clients send little
        self._next_cid += 1
        client = Client(ws, self._next_cid)
        for key in self.surfaces:
            client.pending[key] = SNAPSHOT
        client.pending_updates = 0
        client.wake.set()
        self.clients.add(client)
        self.counters["connections"] += 1
        self._notify()
        sender = asyncio.create_task(self._sender(client))
        try:
            async for _ in ws:
                self.counters["client_messages_ignored"] += 1  # read-only: pings are handled by websockets
                self._notify()
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            self.clients.discard(client)
            self._notify()

    async def _sender(self, client: Client) -> None:
        ws = client.ws
        try:
            while not client.dropped:
                await client.wake.wait()
                client.wake.clear()
                while client.pending and not client.dropped:
                    # Encode the whole batch before the first await: snapshots then reflect
                    # exactly the state the later queued patches apply to.
                    batch = [self._encode(key, queued) for key, queued in client.pending.items()]
                    client.pending.clear()
                    client.pending_updates = 0
                    for raw in batch:
                        await ws.send(raw, text=True)
                        client.sent += 1
                        self.counters["patches_out"] += 1
                        self.counters["bytes_out"] += len(raw)
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


def build_parser(defaults: Optional[dict[str, Any]] = None) -> argparse.ArgumentParser:
    """The CLI. `defaults`: graph.toml's [sinks.gateway] host, port and publish_token (handed
    over by `volgraph gateway`); the environment variables override them. Without them (the
    module form) --host and --port are required unless their variables are set."""
    d = defaults or {}
    host = os.environ.get("VOLGRAPH_GATEWAY_HOST", d.get("host"))
    port = os.environ.get("VOLGRAPH_GATEWAY_PORT", d.get("port"))
    token = os.environ.get("VOLGRAPH_PUBLISH_TOKEN") or d.get("publish_token") or None

    def said(key: str, value: Any) -> str:
        return (f"graph.toml sinks.gateway.{key}; default: %(default)s" if value is not None
                else "required without graph.toml: `volgraph gateway` reads it")

    p = argparse.ArgumentParser(
        prog="volgraph gateway",
        description=(
            "Serve live volatility surfaces to dashboards. The dataflow publishes SurfacePatch / "
            "SurfaceSnapshot / StatusReport frames to ws://HOST:PORT/publish; dashboards connect to "
            "ws://HOST:PORT/ws and get a snapshot per surface, then patches. The same port serves the "
            "dashboard (/), /healthz, /status (JSON) and /metrics (Prometheus)."
        ),
    )
    p.add_argument("--host", default=host, required=host is None,
                   help=f"bind address; 0.0.0.0 in a container (env VOLGRAPH_GATEWAY_HOST; {said('host', host)})")
    p.add_argument("--port", type=int, default=None if port is None else int(port), required=port is None,
                   help=f"TCP port for websockets and HTTP; 0 picks a free one (env VOLGRAPH_GATEWAY_PORT; "
                        f"{said('port', port)})")
    p.add_argument("--publish-token", default=token,
                   help="token publishers must send (Authorization: Bearer or ?token=) "
                        "(default: $VOLGRAPH_PUBLISH_TOKEN if set, else graph.toml sinks.gateway.publish_token; "
                        "empty: no check)")
    p.add_argument("--allowed-origins", default="",
                   help="comma-separated browser origins allowed besides the gateway's own; '*' for any "
                        "(default: none, same-origin only)")
    p.add_argument("--max-clients", type=int, default=256,
                   help="dashboard connections at once; more are refused with 503 (default: %(default)s)")
    p.add_argument("--client-queue-max", type=int, default=256,
                   help="updates a dashboard may fall behind before it is dropped (default: %(default)s)")
    p.add_argument("--stale-after-ms", type=int, default=d.get("stale_after_ms"), required="stale_after_ms" not in d,
                   help="a dependency not heard from for this long counts as down on /healthz and /status "
                        f"({said('stale_after_ms', d.get('stale_after_ms'))})")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default: %(default)s)")
    return p


def main(argv: Optional[list[str]] = None, *, defaults: Optional[dict[str, Any]] = None) -> int:
    """`volgraph gateway`; `defaults` as build_parser takes them."""
    args = build_parser(defaults).parse_args(argv)
    # `volgraph gateway` has set up the handlers (plain or JSON lines); the module form gets plain ones
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(args.log_level.upper())
    if args.log_level.upper() != "DEBUG":  # websockets logs every HTTP request at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)
    gateway = Gateway(
        args.host,
        args.port,
        publish_token=args.publish_token or None,
        stale_after_ms=args.stale_after_ms,
        allowed_origins=[o.strip() for o in args.allowed_origins.split(",") if o.strip()],
        max_clients=args.max_clients,
        client_queue_max=args.client_queue_max,
    )

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
