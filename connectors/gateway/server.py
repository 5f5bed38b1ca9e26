"""The gateway (`volgraph gateway`): a websockets server between the dataflow and dashboards.

`/publish` takes the dataflow's SurfacePatch / SurfaceSnapshot / StatusReport JSON frames
(from connectors.gateway.server.publisher); `/ws` streams to dashboards a SurfaceSnapshot per known
surface on connect, then patches. Per (venue, underlying) the gateway keeps the merged
current surface (operators.events.apply_patch), so a new client starts from the latest
state. Each client has a coalescing queue per surface: a few shared patch objects merged
into one message when the client is ready (latest view per expiry wins), or past
`coalesce_after` a marker that sends the current snapshot, so a client always converges
to the gateway's state; a client that falls more than `client_queue_max` updates behind
is dropped, never buffered for. Plain HTTP on the same port: the dashboard page (/),
its assets (/static/...), /healthz, /status, /metrics.

Translates bytes <-> events only: never computes volatility, never blocks on I/O other
than its own sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import http
import logging
import math
import os
import signal
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from operators.events import (
    SCHEMA_VERSION,
    ContractError,
    StatusReport,
    SurfacePatch,
    SurfaceSnapshot,
    apply_patch,
    from_dict,
    from_json,
    to_json,
)

log = logging.getLogger("volgraph.gateway")

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboard"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
SurfaceKey = tuple[str, str]  # (venue, underlying)


# ---------------------------------------------------------------- merge semantics


def merge_patches(first: SurfacePatch, second: SurfacePatch) -> SurfacePatch:
    """One patch equivalent to applying `first` then `second`:
    apply_patch(apply_patch(s, first), second) == apply_patch(s, merge_patches(first, second))
    for every snapshot s (apply_patch removes first, then adds)."""
    views = {v.expiry_ms: v for v in first.expiries if v.expiry_ms not in second.removed}
    for v in second.expiries:
        views[v.expiry_ms] = v
    removed = (set(first.removed) | set(second.removed)) - set(views)
    return SurfacePatch(
        venue=second.venue,
        underlying=second.underlying,
        epoch=second.epoch,
        ts_exchange_ms=second.ts_exchange_ms,
        ts_emit_ms=second.ts_emit_ms,
        expiries=tuple(views[k] for k in sorted(views)),
        removed=tuple(sorted(removed)),
        tenors=second.tenors,
        calendar=second.calendar,
        index_px=second.index_px if second.index_px is not None else first.index_px,
    )


def coalesce(pending: SurfacePatch | SurfaceSnapshot | None, new: SurfacePatch | SurfaceSnapshot):
    """The single message that replaces `pending` followed by `new` for one surface."""
    if pending is None or isinstance(new, SurfaceSnapshot):
        return new
    if isinstance(pending, SurfaceSnapshot):
        return apply_patch(pending, new)
    return merge_patches(pending, new)


# ---------------------------------------------------------------- wire-level state
#
# The gateway keeps surfaces as decoded JSON (orjson dicts), not as event objects:
# operators.events.from_json validates by type hints and costs ~0.5 ms for a 3 KB patch,
# while orjson.loads costs microseconds, and a patch nobody needs to merge is forwarded
# as the very bytes it arrived in. The dict merges below mirror apply_patch /
# merge_patches exactly (tests check them against the event versions).

_HEAD_FIELDS = ("venue", "underlying", "epoch", "ts_exchange_ms", "ts_emit_ms")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_surface_dict(data: dict) -> None:
    """Shape check of a decoded SurfacePatch / SurfaceSnapshot; raises ContractError
    naming the field (a bad publisher must not corrupt what dashboards receive)."""
    name = data.get("type")
    if data.get("v", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise ContractError(f"{name} has schema version {data.get('v')}, this gateway reads {SCHEMA_VERSION}")
    for f in ("venue", "underlying"):
        if not isinstance(data.get(f), str):
            raise ContractError(f"{name}.{f} must be a string, got {data.get(f)!r}")
    for f in ("epoch", "ts_exchange_ms", "ts_emit_ms"):
        if not _is_int(data.get(f)):
            raise ContractError(f"{name}.{f} must be an integer, got {data.get(f)!r}")
    for f in ("expiries", "removed", "tenors", "calendar"):
        if not isinstance(data.get(f, []), list):
            raise ContractError(f"{name}.{f} must be a list")
    for i, view in enumerate(data.get("expiries", [])):
        if not isinstance(view, dict) or not _is_int(view.get("expiry_ms")) or not isinstance(view.get("fit"), dict):
            raise ContractError(f"{name}.expiries[{i}] must be an ExpiryView object with an integer expiry_ms and a fit")
    if not all(_is_int(x) for x in data.get("removed", [])):
        raise ContractError(f"{name}.removed must list integer expiry_ms values")
    px = data.get("index_px")
    if px is not None and (isinstance(px, bool) or not isinstance(px, (int, float))):
        raise ContractError(f"{name}.index_px must be a number or null, got {px!r}")


def merge_patch_dicts(*patches: dict) -> dict:
    """merge_patches folded over decoded JSON patches, in one pass."""
    views: dict[int, dict] = {}
    removed: set[int] = set()
    index_px = None
    for patch in patches:
        for gone in patch.get("removed", ()):
            views.pop(gone, None)
            removed.add(gone)
        for view in patch.get("expiries", ()):
            views[view["expiry_ms"]] = view
        if patch.get("index_px") is not None:
            index_px = patch["index_px"]
    merged = dict(patches[-1])
    merged["expiries"] = [views[k] for k in sorted(views)]
    merged["removed"] = sorted(removed - set(views))
    merged["index_px"] = index_px
    return merged


class _Surface:
    """The merged current surface of one (venue, underlying), as decoded JSON."""

    __slots__ = ("head", "views", "version", "_json", "_json_version")

    def __init__(self) -> None:
        self.head: dict = {}
        self.views: dict[int, dict] = {}
        self.version = 0
        self._json: bytes = b""
        self._json_version = -1

    def apply_patch(self, patch: dict) -> None:
        for gone in patch.get("removed", ()):
            self.views.pop(gone, None)
        for view in patch.get("expiries", ()):
            self.views[view["expiry_ms"]] = view
        index_px = patch.get("index_px")
        self._set_head(patch, index_px if index_px is not None else self.head.get("index_px"))

    def replace(self, snapshot: dict) -> None:
        self.views = {v["expiry_ms"]: v for v in snapshot.get("expiries", ())}
        self._set_head(snapshot, snapshot.get("index_px"))

    def _set_head(self, data: dict, index_px: Any) -> None:
        head = {f: data[f] for f in _HEAD_FIELDS}
        head["tenors"] = data.get("tenors", [])
        head["calendar"] = data.get("calendar", [])
        head["index_px"] = index_px
        self.head = head
        self.version += 1

    def snapshot_json(self) -> bytes:
        """The SurfaceSnapshot message, encoded once per version for all clients."""
        if self._json_version != self.version:
            body = {"type": "SurfaceSnapshot", **self.head, "expiries": [self.views[k] for k in sorted(self.views)], "v": SCHEMA_VERSION}
            self._json = orjson.dumps(body)
            self._json_version = self.version
        return self._json

    def fitted(self) -> int:
        return sum(1 for v in self.views.values() if fitted_dict(v))


def fitted_dict(view: dict) -> bool:
    """An expiry counts as fitted when its SVI fit used quotes and its parameters are finite."""
    fit = view.get("fit") or {}
    params = [fit.get(k) for k in ("a", "b", "rho", "m", "sigma")]
    n_quotes = fit.get("n_quotes")
    return (
        _is_int(n_quotes) and n_quotes > 0
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in params)
    )


class _PatchMsg:
    """A published patch: decoded for merging, raw to forward as is. One object is
    shared by every client queue it sits in."""

    __slots__ = ("data", "raw")

    def __init__(self, data: dict, raw: bytes) -> None:
        self.data = data
        self.raw = raw


SNAPSHOT = "snapshot"  # queue marker: send the surface's snapshot as of when the sender takes it


# ---------------------------------------------------------------- clients


class _Client:
    __slots__ = ("ws", "cid", "pending", "pending_updates", "wake", "dropped", "sent")

    def __init__(self, ws: ServerConnection, cid: int) -> None:
        self.ws = ws
        self.cid = cid
        # Per surface: a list of _PatchMsg (merged when sent) or the SNAPSHOT marker.
        self.pending: OrderedDict[SurfaceKey, Any] = OrderedDict()
        self.pending_updates = 0  # updates queued since the sender last took `pending`
        self.wake = asyncio.Event()
        self.dropped = False
        self.sent = 0


# ---------------------------------------------------------------- the gateway


class Gateway:
    """websockets server for dashboards (/ws) and the dataflow's publisher (/publish).

    allowed_origins: extra browser origins allowed to open websockets ("*" = any); a
    request with no Origin (non-browser) or with the gateway's own origin is always allowed.
    client_queue_max: updates a client may fall behind before it is dropped.
    coalesce_after: patches queued per surface before a client is sent one snapshot instead.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        *,
        publish_token: Optional[str] = None,
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
        self.allowed_origins = {o.rstrip("/") for o in (allowed_origins or ()) if o}
        self.max_clients = max_clients
        self.client_queue_max = client_queue_max
        self.coalesce_after = max(1, coalesce_after)
        self.client_max_message_bytes = client_max_message_bytes
        self.publish_max_message_bytes = publish_max_message_bytes
        self.ping_interval_s = ping_interval_s
        self.compression = compression
        self.dashboard_dir = Path(dashboard_dir).resolve()

        self.surfaces: dict[SurfaceKey, _Surface] = {}
        self.last_update_s: dict[SurfaceKey, float] = {}
        self.workers: dict[str, StatusReport] = {}
        self.clients: set[_Client] = set()
        self.publishers = 0
        self.counters: Counter = Counter()  # patches_out, dropped_clients, published.<type>, rejected.<reason>, ...
        self.started_s = time.time()
        self._next_cid = 0
        self._changed = threading.Condition()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop_event: Optional[asyncio.Event] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self.registry = CollectorRegistry()
        self.registry.register(_GatewayCollector(self))

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
        """The current merged surface as an event (decoded on demand; not for hot paths)."""
        raw = self._call(lambda: self.surfaces[(venue, underlying)].snapshot_json() if (venue, underlying) in self.surfaces else None)
        return None if raw is None else from_json(raw)

    def epoch(self, venue: str, underlying: str) -> Optional[int]:
        """The current surface's epoch: a plain read, safe in wait_until predicates."""
        surface = self.surfaces.get((venue, underlying))
        return surface.head.get("epoch") if surface is not None else None

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
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        if path in ("/ws", "/publish"):
            if not self._origin_ok(request):
                self.counters["rejected.origin"] += 1
                self._notify()
                return _response(http.HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")
            if path == "/publish":
                if not self._token_ok(request, parts.query):
                    self.counters["rejected.token"] += 1
                    self._notify()
                    return _response(http.HTTPStatus.UNAUTHORIZED, b"publish token missing or wrong\n", "text/plain")
            elif len(self.clients) >= self.max_clients:
                self.counters["rejected.capacity"] += 1
                self._notify()
                return _response(http.HTTPStatus.SERVICE_UNAVAILABLE, b"too many clients\n", "text/plain")
            return None  # websockets completes the handshake (426 if not an upgrade)
        if upgrade:
            return _response(http.HTTPStatus.NOT_FOUND, b"websocket paths: /ws, /publish\n", "text/plain")
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b'{"ok":true}', "application/json")
        if path == "/status":
            return _response(http.HTTPStatus.OK, orjson.dumps(self._status()), "application/json")
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            return _response(http.HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        if path in ("/", "/index.html"):
            return self._static("index.html")
        for prefix in ("/static/", "/dashboard/"):
            if path.startswith(prefix):
                return self._static(path[len(prefix) :])
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    def _static(self, name: str) -> Response:
        target = (self.dashboard_dir / name).resolve()
        if (
            not name
            or self.dashboard_dir not in target.parents
            or not target.is_file()
            or target.suffix not in CONTENT_TYPES
        ):
            return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        return _response(http.HTTPStatus.OK, target.read_bytes(), CONTENT_TYPES[target.suffix], cache="no-cache")

    def _origin_ok(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: nothing to hijack
        origin = origin.rstrip("/")
        if "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        host = request.headers.get("Host", "")
        return urlsplit(origin).netloc.lower() == host.lower() and bool(host)

    def _token_ok(self, request: Request, query: str) -> bool:
        if self.publish_token is None:
            return True
        given = ""
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            given = (parse_qs(query).get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.publish_token.encode())

    # -- websocket handlers --------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path
        if path == "/publish":
            await self._publisher(ws)
        else:
            await self._client(ws)

    async def _publisher(self, ws: ServerConnection) -> None:
        self.publishers += 1
        self._notify()
        try:
            async for message in ws:
                self.publish_raw(message)
        except ConnectionClosed:
            pass
        finally:
            self.publishers -= 1
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
        try:
            data = orjson.loads(message)
            if not isinstance(data, dict):
                raise ContractError("an event is a JSON object with a 'type' field")
            kind = data.get("type")
            if kind in ("SurfacePatch", "SurfaceSnapshot"):
                validate_surface_dict(data)
            elif kind == "StatusReport":
                report = from_dict(data)
            else:
                self.counters[f"publish_errors.unsupported.{kind}"] += 1
                return
        except (orjson.JSONDecodeError, ContractError) as exc:
            self.counters["publish_errors.bad_event"] += 1
            log.warning("publisher sent a bad frame (%s); dropped", exc)
            return
        if kind == "StatusReport":
            self.workers[report.source] = report
        else:
            key = (data["venue"], data["underlying"])
            surface = self.surfaces.get(key)
            if surface is None:
                surface = self.surfaces[key] = _Surface()
            if kind == "SurfacePatch":
                surface.apply_patch(data)
                raw = message.encode() if isinstance(message, str) else bytes(message)
                self._fan_out(key, _PatchMsg(data, raw))
            else:
                surface.replace(data)
                self._fan_out(key, SNAPSHOT)
            self.last_update_s[key] = time.time()
        self.counters[f"published.{kind}"] += 1

    def _fan_out(self, key: SurfaceKey, message: Any) -> None:
        """Queue per client and surface: a short list of shared patch objects (merged into
        one message when sent), or past `coalesce_after` patches a SNAPSHOT marker (the
        snapshot is encoded once per state version and shared by all lagging clients)."""
        for client in list(self.clients):
            queued = client.pending.get(key)
            if queued is None:
                client.pending[key] = SNAPSHOT if message is SNAPSHOT else [message]
            elif queued is not SNAPSHOT:
                if message is SNAPSHOT or len(queued) >= self.coalesce_after:
                    client.pending[key] = SNAPSHOT
                else:
                    queued.append(message)
            client.pending_updates += 1
            if client.pending_updates > self.client_queue_max:
                self._drop(client)
            else:
                client.wake.set()

    def _drop(self, client: _Client) -> None:
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
        client = _Client(ws, self._next_cid)
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

    async def _sender(self, client: _Client) -> None:
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
        except ConnectionClosed:
            pass

    def _encode(self, key: SurfaceKey, queued: Any) -> bytes:
        if queued is SNAPSHOT:
            return self.surfaces[key].snapshot_json()
        if len(queued) == 1:
            return queued[0].raw
        self.counters["coalesced"] += len(queued) - 1
        return orjson.dumps(merge_patch_dicts(*(m.data for m in queued)))

    # -- status --------------------------------------------------------------------

    def _status(self) -> dict:
        now_s = time.time()
        now_ms = now_s * 1000.0
        workers = {
            source: {
                "ts_ms": r.ts_ms,
                "started_ms": r.started_ms,
                "age_s": round(max(0.0, now_ms - r.ts_ms) / 1000.0, 3),
                "counters": r.counters,
            }
            for source, r in sorted(self.workers.items())
        }
        underlyings = {}
        for (venue, underlying), surface in sorted(self.surfaces.items()):
            underlyings[f"{venue}:{underlying}"] = {
                "venue": venue,
                "underlying": underlying,
                "epoch": surface.head.get("epoch"),
                "expiries_known": len(surface.views),
                "expiries_fitted": surface.fitted(),
                "last_patch_age_s": round(now_s - self.last_update_s.get((venue, underlying), now_s), 3),
                "index_px": surface.head.get("index_px"),
            }
        published = {k.split(".", 1)[1]: v for k, v in self.counters.items() if k.startswith("published.")}
        rejected = {k.split(".", 1)[1]: v for k, v in self.counters.items() if k.startswith("rejected.")}
        errors = {k.split(".", 1)[1]: v for k, v in self.counters.items() if k.startswith("publish_errors.")}
        return {
            "ok": True,
            "uptime_s": round(now_s - self.started_s, 3),
            "messages_in": sum(float(r.counters.get("messages_in", 0)) for r in self.workers.values()),
            "patches_out": self.counters["patches_out"],
            "clients": len(self.clients),
            "dropped_clients": self.counters["dropped_clients"],
            "publishers": self.publishers,
            "published": published,
            "rejected": rejected,
            "publish_errors": errors,
            "workers": workers,
            "underlyings": underlyings,
        }


class _GatewayCollector:
    """Prometheus view of the gateway's counters, read at scrape time."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self):
        g = self.gateway
        now_s = time.time()
        yield GaugeMetricFamily("volgraph_gateway_uptime_seconds", "Seconds since the gateway started", value=now_s - g.started_s)
        yield GaugeMetricFamily("volgraph_gateway_clients", "Connected dashboard clients", value=len(g.clients))
        yield GaugeMetricFamily("volgraph_gateway_publishers", "Connected publishers", value=g.publishers)
        yield CounterMetricFamily("volgraph_gateway_dropped_clients", "Clients dropped for falling behind", value=g.counters["dropped_clients"])
        yield CounterMetricFamily("volgraph_gateway_messages_sent", "Messages sent to clients", value=g.counters["patches_out"])
        pub = CounterMetricFamily("volgraph_gateway_published", "Events received from publishers", labels=["type"])
        rej = CounterMetricFamily("volgraph_gateway_rejected", "Connections refused", labels=["reason"])
        for key, value in g.counters.items():
            if key.startswith("published."):
                pub.add_metric([key.split(".", 1)[1]], value)
            elif key.startswith("rejected."):
                rej.add_metric([key.split(".", 1)[1]], value)
        yield pub
        yield rej
        yield GaugeMetricFamily(
            "volgraph_gateway_messages_in", "Sum of messages_in over the flow workers' latest status",
            value=sum(float(r.counters.get("messages_in", 0)) for r in g.workers.values()),
        )
        age = GaugeMetricFamily("volgraph_gateway_last_update_age_seconds", "Seconds since the surface last changed", labels=["venue", "underlying"])
        known = GaugeMetricFamily("volgraph_gateway_expiries", "Expiries in the current surface", labels=["venue", "underlying", "state"])
        for (venue, underlying), surface in list(g.surfaces.items()):
            age.add_metric([venue, underlying], now_s - g.last_update_s.get((venue, underlying), now_s))
            known.add_metric([venue, underlying, "known"], len(surface.views))
            known.add_metric([venue, underlying, "fitted"], surface.fitted())
        yield age
        yield known


def _response(status: http.HTTPStatus, body: bytes, content_type: str, cache: str = "no-store") -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = cache
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)


# ---------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="volgraph gateway", description="Serve surfaces to dashboards over websockets.")
    p.add_argument("--host", default=os.environ.get("VOLGRAPH_GATEWAY_HOST", "127.0.0.1"), help="bind address (0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=int(os.environ.get("VOLGRAPH_GATEWAY_PORT", "8765")))
    p.add_argument("--publish-token", default=os.environ.get("VOLGRAPH_PUBLISH_TOKEN"), help="required from publishers if set (env VOLGRAPH_PUBLISH_TOKEN)")
    p.add_argument("--allowed-origins", default="", help="comma-separated browser origins allowed besides same-origin; '*' for any")
    p.add_argument("--max-clients", type=int, default=256)
    p.add_argument("--client-queue-max", type=int, default=256, help="updates a client may lag before it is dropped")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level.upper() != "DEBUG":  # websockets logs every HTTP request at INFO
        logging.getLogger("websockets").setLevel(logging.WARNING)
    gateway = Gateway(
        args.host,
        args.port,
        publish_token=args.publish_token,
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

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
