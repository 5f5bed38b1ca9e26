"""The gateway's plain HTTP side, on the websocket port: the dashboard page (/), its
assets (/static/...), Plotly.js for the page's charts (/static/plotly.min.js, the file
the `plotly` Python package ships: never a CDN, never a copy in this repo), /favicon.ico and
/dashboard.json (the page's settings), /healthz, /status (JSON) and /metrics (Prometheus). The handshake checks of /ws and /publish (browser
origin, publish token) are connectors/gateway/auth.py's.

Named web.py, not http.py: run as a script, connectors/gateway/ is first on sys.path and a
local http.py would shadow the standard library's `http` that websockets imports.

Reads the gateway's state, never changes it (except counting refused connections); no
volatility maths. Never imports plotly's Python code: it only locates the package's directory
(importlib.util.find_spec) to read the JavaScript file in it.
"""

from __future__ import annotations

import functools
import hashlib
import http
import importlib.util
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from websockets.datastructures import Headers
from websockets.http11 import Response

from connectors.gateway.protocol import PROTOCOL_VERSION

if TYPE_CHECKING:  # the server imports this module; only type hints go the other way
    from connectors.gateway.server import Gateway

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


def response(status: http.HTTPStatus, body: bytes, content_type: str, cache: str = "no-store") -> Response:
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["Cache-Control"] = cache
    headers["Connection"] = "close"
    return Response(status.value, status.phrase, headers, body)


NOT_FOUND = (http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")


def http_response(gateway: "Gateway", path: str) -> Response:
    """The answer to a plain HTTP GET of `path`."""
    if path == "/livez":  # liveness: the gateway serves HTTP (never restart it for a dependency)
        return response(http.HTTPStatus.OK, b'{"ok":true}', "application/json")
    if path == "/healthz":  # readiness: 503 while a dependency is down or unknown
        deps = gateway.dependencies()
        ok = healthy(deps)
        return response(http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE,
                        orjson.dumps({"ok": ok, "dependencies": deps}), "application/json")
    if path == "/status":
        return response(http.HTTPStatus.OK, orjson.dumps(status_document(gateway)), "application/json")
    if path == "/metrics":
        return response(http.HTTPStatus.OK, generate_latest(gateway.registry), CONTENT_TYPE_LATEST)
    if path in ("/", "/index.html"):
        return static_file(gateway.dashboard_dir, "index.html")
    if path == "/favicon.ico":  # browsers ask for it whatever the page links: an SVG icon, no 404
        return static_file(gateway.dashboard_dir, "favicon.svg", cache=f"public, max-age={ICON_MAX_AGE_S}")
    if path == "/dashboard.json":
        return response(http.HTTPStatus.OK, orjson.dumps(dashboard_document(gateway)), "application/json")
    if path == PLOTLY_PATH:
        return plotly_response()
    for prefix in ("/static/", "/dashboard/"):
        if path.startswith(prefix):
            return static_file(gateway.dashboard_dir, path[len(prefix):])
    return response(*NOT_FOUND)


# The page's assets are revalidated on every load (no-cache), so an upgraded gateway never
# serves a stale app.js next to a new index.html; only the icon may be cached.
ICON_MAX_AGE_S = 86400
# The page loads nothing from elsewhere and runs no inline script: say so to the browser.
# Inline styles are allowed ('unsafe-inline' in style-src only): Plotly.js injects its own
# <style> rules and style attributes for its charts, and cannot draw them without them.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                               "style-src 'self' 'unsafe-inline'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def static_file(root: Path, name: str, cache: str = "no-cache") -> Response:
    """A file of the dashboard directory; 404 for anything outside it or of an unknown kind."""
    target = (root / name).resolve()
    if not name or root not in target.parents or not target.is_file() or target.suffix not in CONTENT_TYPES:
        return response(*NOT_FOUND)
    answer = response(http.HTTPStatus.OK, target.read_bytes(), CONTENT_TYPES[target.suffix], cache=cache)
    for key, value in PAGE_HEADERS.items():
        answer.headers[key] = value
    return answer


# ---------------------------------------------------------------- Plotly.js for the charts
# The `plotly` PyPI package (a volgraph dependency, pinned in constraints.txt) ships the
# minified Plotly.js bundle at plotly/package_data/plotly.min.js. The page is told its URL in
# /dashboard.json with ?v=<content hash>, so the browser may keep it a year: a new plotly
# release is a new hash, hence a new URL. Without the file the page still works (its tables)
# and each chart panel says why it is empty.

PLOTLY_PATH = "/static/plotly.min.js"
PLOTLY_MAX_AGE_S = 365 * 86400
PLOTLY_PACKAGE = "plotly"  # the Python package that ships the file (read at each call)
PLOTLY_PACKAGE_FILE = ("package_data", "plotly.min.js")  # inside that package


def find_plotly_js(package: str) -> Path | None:
    """The plotly.min.js that the installed `package` ships, or None. Locates the package
    without importing it (plotly's Python side pulls in much the gateway never uses)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder).joinpath(*PLOTLY_PACKAGE_FILE)
        if candidate.is_file():
            return candidate
    return None


def plotly_js() -> tuple[bytes, str] | None:
    """(the bundle's bytes, the first 12 hex digits of their SHA-256), read once; None, logged
    once with the fix, when the package or its file is missing."""
    return _plotly_js(PLOTLY_PACKAGE)


@functools.cache
def _plotly_js(package: str) -> tuple[bytes, str] | None:
    path = find_plotly_js(package)
    if path is None:
        log.error("dashboard: plotly.min.js not found (the `%s` Python package is missing or has no %s), so "
                  "the dashboard's charts are off (its tables still work); install it into the gateway's environment: "
                  "pip install -c constraints.txt plotly (a volgraph dependency)", package, "/".join(PLOTLY_PACKAGE_FILE))
        return None
    body = path.read_bytes()
    return body, hashlib.sha256(body).hexdigest()[:12]


def plotly_url() -> str | None:
    """Where the page loads Plotly.js from (same origin, versioned by content), or None."""
    found = plotly_js()
    return f"{PLOTLY_PATH}?v={found[1]}" if found else None


def plotly_response() -> Response:
    found = plotly_js()
    if found is None:
        return response(http.HTTPStatus.NOT_FOUND, b"plotly.min.js not installed: pip install -c constraints.txt plotly\n",
                        "text/plain")
    answer = response(http.HTTPStatus.OK, found[0], CONTENT_TYPES[".js"], cache=f"public, max-age={PLOTLY_MAX_AGE_S}, immutable")
    for key, value in PAGE_HEADERS.items():
        answer.headers[key] = value
    return answer


def dashboard_document(g: "Gateway") -> dict:
    """/dashboard.json, what the page needs before its websocket: the surfaces the gateway
    holds now (the page picks its opening view once their snapshots are in), the age past
    which the page greys data as stale (graph.toml sinks.gateway.stale_after_ms) and where
    Plotly.js is (null when the gateway has none: each chart panel then says so). No secrets."""
    return {
        "surfaces": sorted(f"{venue}:{underlying}" for venue, underlying in g.surfaces),
        "stale_after_ms": round(g.stale_after_s * 1000),
        "plotly_js": plotly_url(),
    }


def healthy(dependencies: dict[str, dict]) -> bool:
    """True when every dependency is up or not configured."""
    return all(d["state"] in ("up", "off") for d in dependencies.values())


def status_document(g: "Gateway") -> dict:
    """The /status JSON: clients, publishers, counters, each worker's latest StatusReport
    and each surface's epoch, expiries and age."""
    now_s = time.time()
    now_ms = now_s * 1000.0
    workers = {
        source: {
            "ts_ms": r.ts_ms,
            "started_ms": r.started_ms,
            "age_s": round(max(0.0, now_ms - r.ts_ms) / 1000.0, 3),
            "counters": r.counters,
        }
        for source, r in sorted(g.workers.items())
    }
    underlyings = {}
    for (venue, underlying), surface in sorted(g.surfaces.items()):
        underlyings[f"{venue}:{underlying}"] = {
            "venue": venue,
            "underlying": underlying,
            "epoch": surface.epoch,
            "expiries_known": surface.known(),
            "expiries_fitted": surface.fitted(),
            "last_patch_age_s": round(now_s - g.last_update_s.get((venue, underlying), now_s), 3),
            "index_px": surface.index_px,
            "seq": surface.seq,
        }
    counters = g.counters

    def group(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in counters.items() if k.startswith(prefix)}

    deps = g.dependencies()
    return {
        "ok": healthy(deps),
        "pid": os.getpid(),
        "dependencies": deps,
        "uptime_s": round(now_s - g.started_s, 3),
        "messages_in": sum(float(r.counters.get("messages_in", 0)) for r in g.workers.values()),
        "patches_out": counters["patches_out"],
        "clients": len(g.clients),
        "dropped_clients": counters["dropped_clients"],
        "publishers": g.publishers,
        "published": group("published."),
        "rejected": group("rejected."),
        "publish_errors": group("publish_errors."),  # refused published frames, by reason
        "client_errors": group("client_errors."),  # clients closed for a bad message, by reason
        "resyncs": counters["resyncs"],
        "coalesced": counters["coalesced"],
        "protocol": PROTOCOL_VERSION,
        "limits": {
            "max_clients": g.max_clients,
            "max_clients_per_addr": g.max_clients_per_addr,
            "client_queue_max": g.client_queue_max,
            "coalesce_after": g.coalesce_after,
            "publish_max_message_bytes": g.limits.max_message_bytes,
            "max_surfaces": g.limits.max_surfaces,
            "max_expiries_per_surface": g.limits.max_expiries_per_surface,
        },
        "workers": workers,
        "underlyings": underlyings,
    }


class GatewayCollector:
    """Prometheus view of the gateway's counters, read at scrape time."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway

    def collect(self):
        g = self.gateway
        now_s = time.time()
        yield GaugeMetricFamily("volgraph_gateway_uptime_seconds", "Seconds since the gateway started", value=now_s - g.started_s)
        yield GaugeMetricFamily("volgraph_gateway_clients", "Connected dashboard clients", value=len(g.clients))
        yield GaugeMetricFamily("volgraph_gateway_publishers", "Connected publishers", value=g.publishers)
        yield CounterMetricFamily("volgraph_gateway_dropped_clients", "Clients dropped for falling behind", value=g.counters["dropped_clients"])
        yield CounterMetricFamily("volgraph_gateway_messages_sent", "Messages sent to clients", value=g.counters["patches_out"])
        yield CounterMetricFamily("volgraph_gateway_sent_bytes", "Bytes sent to dashboard clients", value=g.counters["bytes_out"])
        up = GaugeMetricFamily("volgraph_dependency_up", "1 if the dependency is up (as the gateway sees it)", labels=["dependency"])
        age = GaugeMetricFamily("volgraph_dependency_state_age_seconds", "Seconds since the dependency was last heard "
                                "from (feeds: since the last message)", labels=["dependency"])
        for name, dep in g.dependencies().items():
            if dep["state"] != "off":
                up.add_metric([name], 1.0 if dep["state"] == "up" else 0.0)
            if dep["age_s"] is not None:
                age.add_metric([name], dep["age_s"])
        yield up
        yield age
        pub = CounterMetricFamily("volgraph_gateway_published", "Events received from publishers", labels=["type"])
        rej = CounterMetricFamily("volgraph_gateway_rejected", "Connections refused", labels=["reason"])
        for key, value in list(g.counters.items()):
            if key.startswith("published."):
                pub.add_metric([key.split(".", 1)[1]], value)
            elif key.startswith("rejected."):
                rej.add_metric([key.split(".", 1)[1]], value)
            elif key.startswith(("publish_errors.", "client_errors.")):  # refused frames and messages
                what, reason = key.split(".", 1)
                rej.add_metric([f"{what.split('_')[0]}:{reason}"], value)
        yield pub
        yield rej
        yield GaugeMetricFamily(
            "volgraph_gateway_messages_in", "Sum of messages_in over the flow workers' latest status",
            value=sum(float(r.counters.get("messages_in", 0)) for r in list(g.workers.values())),
        )
        age = GaugeMetricFamily("volgraph_gateway_last_update_age_seconds", "Seconds since the surface last changed", labels=["venue", "underlying"])
        known = GaugeMetricFamily("volgraph_gateway_expiries", "Expiries in the current surface", labels=["venue", "underlying", "state"])
        for (venue, underlying), surface in list(g.surfaces.items()):
            age.add_metric([venue, underlying], now_s - g.last_update_s.get((venue, underlying), now_s))
            known.add_metric([venue, underlying, "known"], surface.known())
            known.add_metric([venue, underlying, "fitted"], surface.fitted())
        yield age
        yield known
