"""Process-wide counters of the running flow: what the status line, StatusReports and
/metrics show. Plain increments on the hot path; prometheus exposition on demand."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Gauge

REGISTRY = CollectorRegistry(auto_describe=True)
_events = Counter("volgraph_events_total", "Normalised market events into the flow", ["type"], registry=REGISTRY)
_errors = Counter("volgraph_feed_errors_total", "Bad input, by reason", ["reason"], registry=REGISTRY)
_fits = Counter("volgraph_fits_total", "SVI fits run", registry=REGISTRY)
_iv = Counter("volgraph_iv_solves_total", "Implied vols solved", registry=REGISTRY)
_patches = Counter("volgraph_patches_total", "Surface patches emitted", registry=REGISTRY)
_lag = Gauge("volgraph_patch_lag_ms", "Exchange timestamp to patch emit, last patch", registry=REGISTRY)


class Counters:
    """Thread-safe named counters (a few per epoch, so a lock is cheap enough)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = defaultdict(float)
        self.started_ms = int(time.time() * 1000)

    def add(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self._values[name] += value
        if name == "messages_in":
            _events.labels("all").inc(value)
        elif name.startswith("errors."):
            _errors.labels(name[7:]).inc(value)
        elif name == "fits":
            _fits.inc(value)
        elif name == "iv_solves":
            _iv.inc(value)
        elif name == "patches":
            _patches.inc(value)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value
        if name == "patch_lag_ms":
            _lag.set(value)

    def max(self, name: str, value: float) -> None:
        with self._lock:
            if value > self._values.get(name, float("-inf")):
                self._values[name] = value

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)


COUNTERS = Counters()

# Set to end the flow cleanly: every source partition then ends its input (EOF), so the
# steps flush what they owe and the sinks close (PostgreSQL rows written, not dropped).
STOP = threading.Event()
