"""The dataflow's gateway publisher: a bytewax sink that sends surface events to the
gateway's /publish websocket (connectors/gateway/server.py).

Each worker's partition keeps one websockets *sync* client connection and the merged
latest surface per (venue, underlying) (operators.merge.SurfaceState: the one merge rule,
O(changed expiries) per patch; the snapshot is only built when a reconnect needs it). A failed connection never raises into the
dataflow: the events are counted as dropped, a reconnect is tried after a back-off, and
on every (re)connect the partition first sends a SurfaceSnapshot of each surface it
knows, so the gateway's state heals whatever was lost. Only translates events to bytes.

The publish token travels in the Authorization header only (a `?token=` in the URL is moved
there). Without an explicit token it is looked up on every connect, as
connectors/gateway/auth.py publisher_token says: $VOLGRAPH_PUBLISH_TOKEN,
$VOLGRAPH_PUBLISH_TOKEN_FILE, the token_file argument, the URL, then a loopback gateway's
cookie file (so a restarted gateway's new token is picked up). Never imports the server.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Optional

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from websockets.version import version as websockets_version
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from connectors.gateway.auth import publisher_token, strip_token
from operators.events import StatusReport, SurfacePatch, SurfaceSnapshot, to_json
from operators.merge import SurfaceState

log = logging.getLogger("volgraph.gateway_sink")

FORWARDED = (SurfacePatch, SurfaceSnapshot, StatusReport)
# websockets >= 17.1 wants connect() as a context manager unless legacy=True: this
# connection outlives any `with` block (it lives as long as the sink partition).
_CONNECT_KW = {"legacy": True} if tuple(int(x) for x in websockets_version.split(".")[:2]) >= (17, 1) else {}


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
        self.surfaces: dict[tuple[str, str], SurfaceState] = {}
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
        if isinstance(event, (SurfacePatch, SurfaceSnapshot)):
            key = (event.venue, event.underlying)
            state = self.surfaces.get(key)
            if state is None:
                state = self.surfaces[key] = SurfaceState()
            if isinstance(event, SurfacePatch):
                state.apply(event)
            else:
                state.replace(event)

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


class _GatewayPartition(StatelessSinkPartition):
    def __init__(self, publisher: GatewayPublisher) -> None:
        self.publisher = publisher

    def write_batch(self, items: list) -> None:
        self.publisher.write_batch(items)

    def close(self) -> None:
        self.publisher.close()


class GatewaySink(DynamicSink):
    """bytewax sink: every worker publishes its surfaces to the gateway at `url`
    (ws://host:port/publish) with the publish token: `token`, else $VOLGRAPH_PUBLISH_TOKEN,
    $VOLGRAPH_PUBLISH_TOKEN_FILE, `token_file`, ... (GatewayPublisher). The flow hands it only
    what it `consumes` (flows/surface.py)."""

    consumes = (SurfacePatch, StatusReport)

    def __init__(self, url: str, token: Optional[str] = None, *, token_file: Optional[str] = None,
                 **options: Any) -> None:
        GatewayPublisher(url, token, token_file=token_file, **options)  # validate the arguments at build time
        self.url = url
        self.token = token or None
        self.options = dict(options, token_file=token_file)
        self.publishers: list[GatewayPublisher] = []  # for status and tests

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _GatewayPartition:
        publisher = GatewayPublisher(self.url, self.token, name=f"{step_id}-w{worker_index}", **self.options)
        self.publishers.append(publisher)
        return _GatewayPartition(publisher)
