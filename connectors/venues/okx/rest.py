"""OKX instrument discovery over REST: `GET /api/v5/public/instruments?instType=OPTION&
instFamily=BTC-USD` on https://www.okx.com (a different host from the websocket;
docs/protocols.md §B). RestInstrumentsFetcher does exactly that with urllib; the simulator
(connectors/sim/okx.py) serves the same path over HTTP on its websocket port, so the tests
exercise the real protocol. Any callable `fetcher(inst_type, inst_family) -> list[row dict]` can
be plugged into the client instead.

Blocking I/O only (the client runs it in a worker thread); never parses events, never imports
the client or bytewax.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Optional

import orjson

from connectors.venues.okx.names import DEFAULT_REST_URL, INDEX_TICKERS_PATH, INSTRUMENTS_PATH
from connectors.venues.okx.parse import _text

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

