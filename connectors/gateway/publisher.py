"""The dataflow's gateway publisher: a bytewax sink that sends surface events to the
gateway's /publish websocket (connectors/gateway/server.py).

Each worker's partition keeps one websockets *sync* client connection and the merged
latest surface per (venue, underlying) (operators.merge.SurfaceState: the one merge rule,
O(changed expiries) per patch; the snapshot is only built when a reconnect needs it). A failed connection never raises into the
dataflow: the events are counted as dropped, a reconnect is tried after a back-off, and
on every (re)connect the partition first sends a SurfaceSnapshot of each surface it
knows, so the gateway's state heals whatever was lost. Only translates events to bytes.

Several gateway replicas (docs/gateway-protocol.md §9 "Replicas"): the sink publishes every
event to every gateway endpoint, so each replica holds the full, current surface on its own.
The endpoints are a list of URLs (comma-separated in $VOLGRAPH_GATEWAY_URL), and the host of a
ws:// URL is resolved again every `resolve_every_s` to all its addresses, so a Kubernetes
headless Service (one address per gateway pod) yields one connection per replica, and a replica
the HPA adds is found within that time. All of a worker's connections share one merged state
per surface, so a replica that joins late (or comes back) is first sent a snapshot of every
surface, then the patches: it catches up without a restart of anything. Name resolution runs
on a thread of its own, never on the dataflow's.

The publish token travels in the Authorization header only (a `?token=` in the URL is moved
there). Without an explicit token it is looked up on every connect, as
connectors/gateway/auth.py publisher_token says: $VOLGRAPH_PUBLISH_TOKEN,
$VOLGRAPH_PUBLISH_TOKEN_FILE, the token_file argument, the URL, then a loopback gateway's
cookie file (so a restarted gateway's new token is picked up). Never imports the server.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable, Optional, Sequence, Union
from urllib.parse import urlsplit

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from websockets.version import version as websockets_version
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from connectors.gateway.auth import LOOPBACK_NAMES, publisher_token, strip_token
from operators.events import StatusReport, SurfacePatch, SurfaceSnapshot, to_json
from operators.merge import SurfaceState

log = logging.getLogger("volgraph.gateway_sink")

FORWARDED = (SurfacePatch, SurfaceSnapshot, StatusReport)
# websockets >= 17.1 wants connect() as a context manager unless legacy=True: this
# connection outlives any `with` block (it lives as long as the sink partition).
_CONNECT_KW = {"legacy": True} if tuple(int(x) for x in websockets_version.split(".")[:2]) >= (17, 1) else {}


def remember(surfaces: dict, event: Any) -> None:
    """Merge a surface event into `surfaces` ((venue, underlying) -> SurfaceState)."""
    if isinstance(event, (SurfacePatch, SurfaceSnapshot)):
        key = (event.venue, event.underlying)
        state = surfaces.get(key)
        if state is None:
            state = surfaces[key] = SurfaceState()
        if isinstance(event, SurfacePatch):
            state.apply(event)
        else:
            state.replace(event)


class GatewayPublisher:
    """One publisher connection with its healing state; usable outside bytewax too."""

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        *,
        token_file: Optional[str] = None,
        open_timeout_s: float = 2.0,
        retry_min_ms: float = 100.0,
        retry_max_ms: float = 5000.0,
        name: str = "publisher",
        surfaces: Optional[dict] = None,
    ) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"gateway url {url!r} must be ws://host:port/publish (or wss://)")
        self.url = strip_token(url)
        self.given_url = url  # may carry ?token= (deploy/'s Secret form); never sent as is
        self.token = token or None
        self.token_file = token_file or None
        self.open_timeout_s = open_timeout_s
        self.retry_min_s = retry_min_ms / 1000.0
        self.retry_max_s = retry_max_ms / 1000.0
        self.name = name
        # the merged state per surface; shared by every endpoint of a PublisherSet
        self.surfaces: dict[tuple[str, str], SurfaceState] = {} if surfaces is None else surfaces
        self.conn: Optional[ClientConnection] = None
        self.counters: Counter = Counter()  # sent, dropped, skipped, connects, connect_failures, send_failures
        self.last_error = ""
        self._backoff_s = 0.0
        self._next_attempt = 0.0

    def write_batch(self, items: list) -> None:
        events = []
        for item in items:
            if not isinstance(item, FORWARDED):
                self.counters["skipped"] += 1
                continue
            self._remember(item)
            events.append(item)
        self.send(events)

    def send(self, events: list) -> None:
        """Send events already merged into `surfaces` (a fresh connection sends the snapshots
        instead of the surface events)."""
        if not events:
            return
        if self.conn is None:
            if not self._connect():
                self.counters["dropped"] += len(events)
                return
            # Fresh connection: the snapshots already carry this batch's surface events.
            events = [s.snapshot() for s in self.surfaces.values()] + [e for e in events if isinstance(e, StatusReport)]
        for i, event in enumerate(events):
            try:
                self.conn.send(to_json(event), text=True)
            except (WebSocketException, OSError) as exc:
                self._lost(f"send: {exc!r}")
                self.counters["send_failures"] += 1
                self.counters["dropped"] += len(events) - i
                return
            self.counters["sent"] += 1

    def _remember(self, event: Any) -> None:
        remember(self.surfaces, event)

    def _connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_attempt:
            return False  # backing off: do not stall the dataflow on every batch
        try:
            token = self.token or publisher_token(self.given_url, None, self.token_file)
        except ValueError as exc:  # TokenError: an unreadable token file
            self._lost(f"token: {exc}")
            self.counters["connect_failures"] += 1
            return False
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self.conn = connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.open_timeout_s,
                max_size=2**20,
                compression=None,
                close_timeout=1,
                **_CONNECT_KW,
            )
        except (WebSocketException, OSError, TimeoutError) as exc:
            reason = f"HTTP {exc.response.status_code}" if isinstance(exc, InvalidStatus) else repr(exc)
            self._lost(f"connect: {reason}")
            self.counters["connect_failures"] += 1
            return False
        self.counters["connects"] += 1
        self._backoff_s = 0.0
        self._next_attempt = 0.0
        log.info("%s: connected to %s", self.name, self.url)
        return True

    def _lost(self, reason: str) -> None:
        if self.last_error != reason:
            log.warning("%s: gateway %s unavailable (%s); dropping and retrying", self.name, self.url, reason)
        self.last_error = reason
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # already broken
                pass
        self.conn = None
        self._backoff_s = min(self.retry_max_s, max(self.retry_min_s, self._backoff_s * 2))
        self._next_attempt = time.monotonic() + self._backoff_s

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # closing at shutdown is best effort
                pass
            self.conn = None


Endpoint = tuple[str, int]  # (address, port) one gateway replica listens on
Resolver = Callable[[str, int], Sequence[Endpoint]]
RESOLVE_EVERY_S = 10.0  # how often a ws:// URL's host name is looked up again


def resolve_all(host: str, port: int) -> list[Endpoint]:
    """Every address `host` has (a headless Service: one per pod), IPv4 when there is any,
    sorted; [] when the name does not resolve now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    v4 = sorted({(i[4][0], port) for i in infos if i[0] == socket.AF_INET})
    return v4 or sorted({(i[4][0], port) for i in infos if i[0] == socket.AF_INET6})


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return host.lower() in LOOPBACK_NAMES


def split_urls(url: Union[str, Iterable[str]]) -> list[str]:
    """The endpoints in `url`: a list, or one string of comma-separated URLs."""
    urls = [u.strip() for u in (url.split(",") if isinstance(url, str) else url) if u and u.strip()]
    if not urls:
        raise ValueError("gateway url: give at least one ws://host:port/publish")
    return urls


class PublisherSet:
    """One worker's publishing to every gateway endpoint: a GatewayPublisher per endpoint, all
    sharing one merged state per surface. A ws:// URL whose host is a name (not an address,
    not loopback) is resolved every `resolve_every_s` on a thread of its own; each address
    becomes an endpoint (a new one starts with the snapshots, a vanished one is closed); until
    the first answer, or when the name does not resolve, the URL is used as given (or the
    last addresses found). wss:// URLs are used as given (the certificate names the host)."""

    def __init__(self, url: Union[str, Iterable[str]], token: Optional[str] = None, *,
                 resolve_every_s: float = RESOLVE_EVERY_S, resolver: Resolver = resolve_all,
                 name: str = "publisher", **options: Any) -> None:
        self.urls = split_urls(url)
        self.token = token
        self.options = options
        self.name = name
        self.resolver = resolver
        self.resolve_every_s = resolve_every_s
        self.surfaces: dict[tuple[str, str], SurfaceState] = {}
        self.publishers: dict[str, GatewayPublisher] = {}
        self.skipped = 0
        # URL -> the endpoint URLs it stands for now (written by the resolver thread, read here)
        self._targets: dict[str, tuple[str, ...]] = {u: (u,) for u in self.urls}
        self._names = [u for u in self.urls if self._resolvable(u)]
        self._stop = threading.Event()
        self._resolved = threading.Event()
        self._thread: Optional[threading.Thread] = None
        for u in self.urls:
            GatewayPublisher(u, token, **options)  # validate every URL now
        if self._names and resolve_every_s > 0:
            self._thread = threading.Thread(target=self._resolve_loop, name=f"{name}-resolve", daemon=True)
            self._thread.start()
            self._resolved.wait(2.0)  # the first answer, if it comes quickly; else the names as given

    @staticmethod
    def _resolvable(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "ws" and bool(parts.hostname) and not _literal(parts.hostname)

    def _resolve_loop(self) -> None:
        while True:
            for url in self._names:
                parts = urlsplit(url)
                found = self.resolver(parts.hostname, parts.port or 80)
                if found:
                    self._targets[url] = tuple(
                        parts._replace(netloc=f"{h if ':' not in h else f'[{h}]'}:{p}").geturl() for h, p in found)
            self._resolved.set()
            if self._stop.wait(self.resolve_every_s):
                return

    def endpoints(self) -> list[str]:
        """The endpoint URLs published to now (one per replica)."""
        return sorted({t for targets in list(self._targets.values()) for t in targets})

    def _refresh(self) -> None:
        wanted = self.endpoints()
        for url in wanted:
            if url not in self.publishers:
                self.publishers[url] = GatewayPublisher(url, self.token, name=f"{self.name}->{url}",
                                                        surfaces=self.surfaces, **self.options)
                if len(self.publishers) > 1 or url not in self.urls:
                    log.info("%s: publishing to %s too (%d endpoints)", self.name, url, len(self.publishers))
        for url in [u for u in self.publishers if u not in wanted]:
            log.info("%s: %s is gone from its name's addresses; closing it", self.name, url)
            self.publishers.pop(url).close()

    def write_batch(self, items: list) -> None:
        events = []
        for item in items:
            if not isinstance(item, FORWARDED):
                self.skipped += 1
                continue
            remember(self.surfaces, item)
            events.append(item)
        self._refresh()
        for publisher in list(self.publishers.values()):
            publisher.send(events)

    @property
    def counters(self) -> Counter:
        """Every endpoint's counters added up."""
        total: Counter = Counter(skipped=self.skipped)
        for p in self.publishers.values():
            total.update(p.counters)
        return total

    def close(self) -> None:
        self._stop.set()
        for p in self.publishers.values():
            p.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)


class _GatewayPartition(StatelessSinkPartition):
    def __init__(self, publisher: PublisherSet) -> None:
        self.publisher = publisher

    def write_batch(self, items: list) -> None:
        self.publisher.write_batch(items)

    def close(self) -> None:
        self.publisher.close()


class GatewaySink(DynamicSink):
    """bytewax sink: every worker publishes its surfaces to every gateway at `url` (one
    ws://host:port/publish, a list of them, or comma-separated URLs; a name with several
    addresses, such as a headless Service, is one endpoint per address: PublisherSet) with
    the publish token: `token`, else $VOLGRAPH_PUBLISH_TOKEN, $VOLGRAPH_PUBLISH_TOKEN_FILE,
    `token_file`, ... (GatewayPublisher). The flow hands it only what it `consumes`
    (flows/surface.py)."""

    consumes = (SurfacePatch, StatusReport)

    def __init__(self, url: Union[str, Iterable[str]], token: Optional[str] = None, *,
                 token_file: Optional[str] = None, resolve_every_s: float = RESOLVE_EVERY_S,
                 resolver: Resolver = resolve_all, **options: Any) -> None:
        self.urls = split_urls(url)
        for u in self.urls:
            GatewayPublisher(u, token, token_file=token_file, **options)  # validate the arguments at build time
        self.url = ",".join(self.urls)
        self.token = token or None
        self.options = dict(options, token_file=token_file)
        self.resolve_every_s = resolve_every_s
        self.resolver = resolver
        self.publishers: list[PublisherSet] = []  # one per worker, for status and tests

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GatewayPartition:
        publisher = PublisherSet(self.urls, self.token, resolve_every_s=self.resolve_every_s, resolver=self.resolver,
                                 name=f"{step_id}-w{worker_index}", **self.options)
        self.publishers.append(publisher)
        return _GatewayPartition(publisher)
