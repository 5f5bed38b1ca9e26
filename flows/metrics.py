"""Process-wide counters of the running flow — what the status line, StatusReports and /metrics
show — and the one list of every Prometheus metric volgraph exposes (METRICS below; the gateway's
own are served by connectors/gateway/web.py under the names listed here, and
tests/flows/test_services.py scrapes both and checks them against this list).

Plain increments on the hot path; Prometheus exposition on demand, named by Prometheus
conventions: counters end in `_total`, units are in the names (`_seconds`, `_bytes`), latencies
and fit times are histograms. Dependencies (the feeds, PostgreSQL) are probed at read time:
`Counters.probe(name, fn)` registers a function returning (up, age_s); the probe values appear
in every snapshot (so StatusReports carry them to the gateway's /status) and as
volgraph_dependency_up / volgraph_dependency_state_age_seconds.

Never imports connectors (the flow hands it the probes) and never does I/O but the /metrics
server it starts on request.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Optional

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics,
                               start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Every metric volgraph exposes: name -> (type, where it is served, help). docs/operations.md
# "Metrics" is this table in prose; Grafana panels (deploy/grafana/) query these names only.
FLOW = "flow"        # every dataflow process: `volgraph run`, `python -m bytewax.run flows.surface:flow`
GATEWAY = "gateway"  # `volgraph gateway` (connectors/gateway/web.py)
METRICS: dict[str, tuple[str, str, str]] = {
    "volgraph_messages_in_total": ("counter", FLOW, "Venue messages read from the feeds"),
    "volgraph_chain_items_total": ("counter", FLOW, "Events applied by the chain steps"),
    "volgraph_dirty_nodes_total": ("counter", FLOW, "Strikes and forwards marked dirty, recomputed at the epoch"),
    "volgraph_iv_solves_total": ("counter", FLOW, "Implied vols by path: full (solver), taylor (stepped), skipped"),
    "volgraph_fits_total": ("counter", FLOW, "SVI fits run"),
    "volgraph_fits_deferred_total": ("counter", FLOW, "SVI fits owed but deferred by the interval or the budget"),
    "volgraph_patches_total": ("counter", FLOW, "Surface patches emitted"),
    "volgraph_epoch_cpu_seconds_total": ("counter", FLOW, "CPU seconds spent in chain epochs"),
    "volgraph_feed_errors_total": ("counter", FLOW, "Bad or unusable input, by reason (every reason seen so far)"),
    "volgraph_flow_events_total": ("counter", FLOW, "Other flow counters by name (node errors, audit mismatches)"),
    "volgraph_epoch_compute_seconds": ("histogram", FLOW, "Compute time of one expiry's epoch (forward, IVs, fit)"),
    "volgraph_fit_seconds": ("histogram", FLOW, "Time of one SVI fit"),
    "volgraph_fit_rmse_vol_points": ("gauge", FLOW, "RMSE of the latest fit per expiry, in vol points"),
    "volgraph_fit_butterfly_ok": ("gauge", FLOW, "1 if the latest fit per expiry is butterfly-arbitrage free"),
    "volgraph_calendar_violations": ("gauge", FLOW, "Neighbouring expiry pairs whose fitted total variances cross, per surface"),
    "volgraph_recovery_handoff_seconds": ("histogram", FLOW, "Time a recovery snapshot waited for its epoch's rows to be stored or spilled (PostgreSQL sink)"),
    "volgraph_patch_lag_seconds": ("gauge", FLOW, "Exchange timestamp to patch emission, latest patch"),
    "volgraph_audit_max_error_bp": ("gauge", FLOW, "Largest published-vs-exact vol error seen by the audit, bp"),
    "volgraph_feed_last_message_age_seconds": ("gauge", FLOW, "Seconds since a venue's last option event reached the flow, per venue"),
    "volgraph_dependency_up": ("gauge", "flow+gateway", "1 if the dependency (feeds, postgres, publisher) is up"),
    "volgraph_dependency_state_age_seconds": ("gauge", "flow+gateway", "Seconds since the dependency last changed state (feeds: since the last message)"),
    "volgraph_postgres_backlog_events": ("gauge", FLOW, "Events waiting to be written to PostgreSQL (memory and spill)"),
    "volgraph_postgres_spilled_events_total": ("counter", FLOW, "Events spilled to disk while PostgreSQL was down"),
    "volgraph_gateway_uptime_seconds": ("gauge", GATEWAY, "Seconds since the gateway started"),
    "volgraph_gateway_clients": ("gauge", GATEWAY, "Connected dashboard clients"),
    "volgraph_gateway_publishers": ("gauge", GATEWAY, "Connected publishers (flow workers)"),
    "volgraph_gateway_dropped_clients_total": ("counter", GATEWAY, "Clients dropped for falling behind"),
    "volgraph_gateway_messages_sent_total": ("counter", GATEWAY, "Messages sent to dashboard clients"),
    "volgraph_gateway_sent_bytes_total": ("counter", GATEWAY, "Bytes sent to dashboard clients"),
    "volgraph_gateway_published_total": ("counter", GATEWAY, "Events received from publishers, by type"),
    "volgraph_gateway_rejected_total": ("counter", GATEWAY, "Connections refused, by reason"),
    "volgraph_gateway_messages_in": ("gauge", GATEWAY, "Sum of messages_in over the flow workers' latest status"),
    "volgraph_gateway_last_update_age_seconds": ("gauge", GATEWAY, "Seconds since a surface last changed"),
    "volgraph_gateway_expiries": ("gauge", GATEWAY, "Expiries in the current surface, by state (known, fitted)"),
}

# The flow's internal counter names (Counters.add) -> (metric, labels). Names not here go to
# volgraph_flow_events_total{name=...}; `errors.<reason>` to volgraph_feed_errors_total.
_COUNTER_OF = {
    "messages_in": ("volgraph_messages_in_total", {}),
    "items": ("volgraph_chain_items_total", {}),
    "dirty": ("volgraph_dirty_nodes_total", {}),
    "iv_full": ("volgraph_iv_solves_total", {"path": "full"}),
    "iv_taylor": ("volgraph_iv_solves_total", {"path": "taylor"}),
    "iv_skipped": ("volgraph_iv_solves_total", {"path": "skipped"}),
    "fits": ("volgraph_fits_total", {}),
    "fits_deferred": ("volgraph_fits_deferred_total", {}),
    "patches": ("volgraph_patches_total", {}),
}
_NOT_EXPOSED = {"iv_solves"}  # the sum of iv_full's: derivable, not a series of its own
# feed error reasons every process exposes from the start (at 0), so the series exists before the first error
KNOWN_ERROR_REASONS = ("parse_error", "bad_field", "seq_gap", "crossed_book", "unknown_instrument", "disconnect")

disable_created_metrics()  # no `_created` series beside every counter: dashboards never query them
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, process_resident_memory_bytes, ...


def _help(name: str) -> str:
    return METRICS[name][2]


def _strip(name: str) -> str:  # prometheus_client adds _total itself
    return name[:-6] if name.endswith("_total") else name


_counters = {metric: Counter(_strip(metric), _help(metric), list(labels), registry=REGISTRY)
             for metric, labels in dict(_COUNTER_OF.values()).items()}
_errors = Counter("volgraph_feed_errors", _help("volgraph_feed_errors_total"), ["reason"], registry=REGISTRY)
_other = Counter("volgraph_flow_events", _help("volgraph_flow_events_total"), ["name"], registry=REGISTRY)
_epoch_cpu = Counter("volgraph_epoch_cpu_seconds", _help("volgraph_epoch_cpu_seconds_total"), registry=REGISTRY)
EPOCH_SECONDS = Histogram("volgraph_epoch_compute_seconds", _help("volgraph_epoch_compute_seconds"), registry=REGISTRY,
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
FIT_SECONDS = Histogram("volgraph_fit_seconds", _help("volgraph_fit_seconds"), registry=REGISTRY,
                        buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1))
FIT_RMSE = Gauge("volgraph_fit_rmse_vol_points", _help("volgraph_fit_rmse_vol_points"),
                 ["venue", "underlying", "expiry_ms"], registry=REGISTRY)
FIT_BUTTERFLY_OK = Gauge("volgraph_fit_butterfly_ok", _help("volgraph_fit_butterfly_ok"),
                         ["venue", "underlying", "expiry_ms"], registry=REGISTRY)
CALENDAR_VIOLATIONS = Gauge("volgraph_calendar_violations", _help("volgraph_calendar_violations"),
                            ["venue", "underlying"], registry=REGISTRY)
HANDOFF_SECONDS = Histogram("volgraph_recovery_handoff_seconds", _help("volgraph_recovery_handoff_seconds"),
                            registry=REGISTRY, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0))
_gauges = {
    "patch_lag_ms": (Gauge("volgraph_patch_lag_seconds", _help("volgraph_patch_lag_seconds"), registry=REGISTRY), 1e-3),
    "audit_max_err_bp": (Gauge("volgraph_audit_max_error_bp", _help("volgraph_audit_max_error_bp"),
                               registry=REGISTRY), 1.0),
}
for _reason in KNOWN_ERROR_REASONS:
    _errors.labels(_reason)

Probe = Callable[[], tuple[Optional[bool], float]]  # () -> (up, or None if not known yet; age of that state in s)


class Counters:
    """Thread-safe named counters (a few per epoch, so a lock is cheap enough), with the
    dependency probes read at snapshot time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = defaultdict(float)
        self._probes: dict[str, Probe] = {}
        self.started_ms = int(time.time() * 1000)
        self.last_message_s: Optional[float] = None  # when messages_in last grew (the feeds probe)
        self.last_by_venue: dict[str, float] = {}  # venue -> when its last option event reached the flow

    def add(self, name: str, value: float = 1.0) -> None:
        with self._lock:
            self._values[name] += value
        if name == "messages_in":
            self.last_message_s = time.time()
        if name.startswith("errors."):
            _errors.labels(name[7:]).inc(value)
        elif name == "epoch_us":
            # one chain step's report per epoch: its delta is that expiry's epoch compute time
            _epoch_cpu.inc(value / 1e6)
            EPOCH_SECONDS.observe(value / 1e6)
        elif name in _COUNTER_OF:
            metric, labels = _COUNTER_OF[name]
            counter = _counters[metric]
            (counter.labels(**labels) if labels else counter).inc(value)
        elif name not in _NOT_EXPOSED:
            _other.labels(name).inc(value)

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value
        self._gauge(name, value)

    def max(self, name: str, value: float) -> None:
        with self._lock:
            if value <= self._values.get(name, float("-inf")):
                return
            self._values[name] = value
        self._gauge(name, value)

    @staticmethod
    def _gauge(name: str, value: float) -> None:
        gauge, scale = _gauges.get(name, (None, 1.0))
        if gauge is not None:
            gauge.set(value * scale)

    def heard(self, venue: str) -> None:
        """A venue's events reached the flow now (per-venue freshness)."""
        self.last_by_venue[venue] = time.time()

    def probe(self, dependency: str, fn: Probe) -> None:
        """Register (or replace) the probe of `dependency` ("feeds", "postgres")."""
        with self._lock:
            self._probes[dependency] = fn

    def dependencies(self) -> dict[str, tuple[Optional[bool], float]]:
        with self._lock:
            probes = dict(self._probes)
        return {name: fn() for name, fn in probes.items()}

    def snapshot(self) -> dict[str, float]:
        """The counters, plus `dependency.<name>.up` (1, 0; absent while unknown) and
        `dependency.<name>.age_s` per probe: what StatusReports carry to the gateway."""
        with self._lock:
            out = dict(self._values)
        for name, (up, age_s) in self.dependencies().items():
            if up is not None:
                out[f"dependency.{name}.up"] = 1.0 if up else 0.0
            out[f"dependency.{name}.age_s"] = round(age_s, 3)
        return out

    def forget_probes(self) -> None:
        with self._lock:
            self._probes.clear()


class _DependencyCollector:
    """volgraph_dependency_up / _state_age_seconds and the PostgreSQL backlog, read at scrape time."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.backlog: Optional[Callable[[], tuple[float, float]]] = None  # () -> (backlog events, spilled events)

    def collect(self):
        up = GaugeMetricFamily("volgraph_dependency_up", _help("volgraph_dependency_up"), labels=["dependency"])
        age = GaugeMetricFamily("volgraph_dependency_state_age_seconds", _help("volgraph_dependency_state_age_seconds"),
                                labels=["dependency"])
        for name, (is_up, age_s) in self.counters.dependencies().items():
            up.add_metric([name], 1.0 if is_up else 0.0)
            age.add_metric([name], age_s)
        yield up
        yield age
        now_s = time.time()
        fresh = GaugeMetricFamily("volgraph_feed_last_message_age_seconds",
                                  _help("volgraph_feed_last_message_age_seconds"), labels=["venue"])
        for venue, last_s in list(self.counters.last_by_venue.items()):
            fresh.add_metric([venue], now_s - last_s)
        yield fresh
        backlog, spilled = self.backlog() if self.backlog is not None else (0.0, 0.0)
        yield GaugeMetricFamily("volgraph_postgres_backlog_events", _help("volgraph_postgres_backlog_events"),
                                value=backlog)
        yield CounterMetricFamily("volgraph_postgres_spilled_events", _help("volgraph_postgres_spilled_events_total"),
                                  value=spilled)


FITTED: set[tuple[str, str, int]] = set()  # (venue, underlying, expiry_ms) fitted by this process: a replay's summary


def observe_fit(venue: str, underlying: str, expiry_ms: int, fit_ms: float, rmse_vol_pts: float,
                butterfly_ok: bool) -> None:
    """One SVI fit's time (histogram), RMSE and butterfly flag (gauges per expiry)."""
    FIT_SECONDS.observe(fit_ms / 1000.0)
    FITTED.add((venue, underlying, expiry_ms))
    labels = (venue, underlying, str(expiry_ms))
    FIT_RMSE.labels(*labels).set(rmse_vol_pts)
    FIT_BUTTERFLY_OK.labels(*labels).set(1.0 if butterfly_ok else 0.0)


def forget_fit(venue: str, underlying: str, expiry_ms: int) -> None:
    """An expiry has settled: its per-expiry series end (label sets do not pile up as expiries roll)."""
    labels = (venue, underlying, str(expiry_ms))
    for gauge in (FIT_RMSE, FIT_BUTTERFLY_OK):
        try:
            gauge.remove(*labels)
        except KeyError:
            pass


_servers: dict[tuple[str, int], object] = {}


def serve_metrics(port: int, host: str = "127.0.0.1") -> int:
    """Expose REGISTRY at http://host:port/metrics (prometheus_client's own server thread);
    port 0 picks a free one. Returns the port. Raises OSError (the caller names the fix)."""
    server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
    bound = server.server_address[1]
    _servers[(host, bound)] = server
    return bound


COUNTERS = Counters()
DEPENDENCIES = _DependencyCollector(COUNTERS)
REGISTRY.register(DEPENDENCIES)

# Set to end the flow cleanly: every source partition then ends its input (EOF), so the
# steps flush what they owe and the sinks close (PostgreSQL rows written, not dropped).
STOP = threading.Event()
