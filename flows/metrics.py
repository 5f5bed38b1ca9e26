"""Process-wide counters of the running flow: what the status line, StatusReports and
/metrics show. Plain increments on the hot path; prometheus exposition on demand."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)
_counts = Counter("volgraph_flow", "Flow counters: messages_in, iv_full, iv_taylor, iv_skipped, dirty, fits, "
                  "fits_deferred, patches, epoch_us (CPU µs in chain epochs), ...", ["name"], registry=REGISTRY)
_errors = Counter("volgraph_feed_errors", "Bad input, by reason", ["reason"], registry=REGISTRY)
_gauges = Gauge("volgraph_flow_gauge", "patch_lag_ms (exchange timestamp to patch), audit_max_err_bp",
                ["name"], registry=REGISTRY)


class Counters:
    """Thread-safe named counters (a few per epoch, so a lock is cheap enough)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = defaultdict(float)
        self.started_ms = int(time.time() * 1000)

    def add(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self._values[name] += value
        if name.startswith("errors."):
            _errors.labels(name[7:]).inc(value)
        else:
            _counts.labels(name).inc(value)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value
        _gauges.labels(name).set(value)

    def max(self, name: str, value: float) -> None:
        with self._lock:
            if value <= self._values.get(name, float("-inf")):
                return
            self._values[name] = value
        _gauges.labels(name).set(value)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose REGISTRY at http://host:port/metrics (prometheus_client's own server thread)."""
    start_http_server(port, addr=host, registry=REGISTRY)


COUNTERS = Counters()

# Set to end the flow cleanly: every source partition then ends its input (EOF), so the
# steps flush what they owe and the sinks close (PostgreSQL rows written, not dropped).
STOP = threading.Event()
