"""The volgraph Grafana dashboard and its alert rules, built as plain data.

`dashboard()` is the dashboard JSON model (what /api/dashboards/db takes under "dashboard" and
what file provisioning reads from deploy/grafana/volgraph.json); `alert_rules()` is the alert
rule group in Grafana's file-provisioning shape (deploy/grafana/volgraph-alerts.json), and
`api_alert_rules()` the same rules as /api/v1/provisioning/alert-rules takes them. Every query
is PromQL over the metrics flows/metrics.py METRICS lists; `metrics_used()` names them, and
`unknown_metrics()` checks them against that list (the CLI hands it over: this module never
imports flows). tests/deploy/test_grafana.py scrapes a running gateway and flow and checks
every name here is really exposed.

Pure data: no I/O, never imports flows or grafana-client.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

DASHBOARD_UID = "volgraph-overview"
FOLDER_UID = "volgraph"
FOLDER_TITLE = "volgraph"
DATASOURCE_UID = "volgraph-prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yaml names it
RULE_GROUP = "volgraph"
RULE_GROUP_INTERVAL_S = 60

# Names a panel may query besides METRICS: what prometheus_client's ProcessCollector exposes
# in every volgraph process (flows/metrics.py registers it).
PROCESS_METRICS = ("process_cpu_seconds_total", "process_resident_memory_bytes")

# Alert thresholds. The feed one sits well above graph.toml consolidation.venue_stale_ms
# (5 s: the point where a venue leaves the combined surface), so a short reconnect never pages.
FEED_SILENT_S = 30
BACKLOG_EVENTS = 10_000
FIT_RMSE_VOL_PTS = 2.0


def _ds() -> dict:
    return {"type": "prometheus", "uid": DATASOURCE_UID}


# (title, description, unit, [(PromQL, legend)]) per panel, by row. Units are Grafana's.
ROWS: list[tuple[str, list[tuple[str, str, str, list[tuple[str, str]]]]]] = [
    ("Feeds", [
        ("Feed freshness (flow)", "Seconds since the flow last read a venue message, per process. "
         "Alert 'volgraph feed silent' fires above %d s." % FEED_SILENT_S, "s",
         [('volgraph_dependency_state_age_seconds{dependency="feeds"}', "{{instance}}")]),
        ("Surface freshness (gateway)", "Seconds since each venue's surface last changed at the gateway.", "s",
         [("max by (venue, underlying) (volgraph_gateway_last_update_age_seconds)", "{{venue}} {{underlying}}")]),
        ("Messages in", "Venue messages read per second, per process.", "ops",
         [("sum by (instance) (rate(volgraph_messages_in_total[1m]))", "{{instance}}")]),
        ("Invalid messages by reason", "Bad or unusable input per second, by reason (parse_error, seq_gap, ...).",
         "ops", [("sum by (reason) (rate(volgraph_feed_errors_total[5m]))", "{{reason}}")]),
        ("Dependencies up", "1 while the dependency is up (feeds, database, publisher), per process.", "none",
         [("volgraph_dependency_up", "{{dependency}} {{instance}}")]),
    ]),
    ("Compute", [
        ("Dirty nodes", "Strikes and forwards marked dirty per second: the work the messages really required.",
         "ops", [("sum(rate(volgraph_dirty_nodes_total[1m]))", "dirty")]),
        ("Implied vols by path", "IVs per second: full solve, Taylor step, or skipped as too small a move.", "ops",
         [("sum by (path) (rate(volgraph_iv_solves_total[1m]))", "{{path}}")]),
        ("SVI fits", "Fits run and fits deferred (interval or budget) per second.", "ops",
         [("sum(rate(volgraph_fits_total[1m]))", "fits"),
          ("sum(rate(volgraph_fits_deferred_total[1m]))", "deferred")]),
        ("Fit time", "SVI fit time, p50 and p99 over 5 minutes.", "s",
         [("histogram_quantile(0.5, sum by (le) (rate(volgraph_fit_seconds_bucket[5m])))", "p50"),
          ("histogram_quantile(0.99, sum by (le) (rate(volgraph_fit_seconds_bucket[5m])))", "p99")]),
        ("Fit RMSE per expiry", "RMSE of each expiry's latest fit, in vol points. "
         "Alert 'volgraph fits failing' fires above %.1f." % FIT_RMSE_VOL_PTS, "none",
         [("volgraph_fit_rmse_vol_points", "{{venue}} {{underlying}} {{expiry_ms}}")]),
        ("Butterfly and calendar arbitrage", "Expiries whose latest fit is not butterfly-arbitrage free, and "
         "neighbouring expiry pairs whose fits cross (calendar), per surface.", "none",
         [("sum by (venue, underlying) (1 - volgraph_fit_butterfly_ok)", "butterfly {{venue}} {{underlying}}"),
          ("volgraph_calendar_violations", "calendar {{venue}} {{underlying}}")]),
        ("Recovery hand-off", "Time each recovery snapshot waited for its epoch's rows to reach PostgreSQL or "
         "the spill files, p99 over 5 minutes.", "s",
         [("histogram_quantile(0.99, sum by (le) (rate(volgraph_recovery_handoff_seconds_bucket[5m])))", "p99")]),
        ("Epoch compute time", "Compute time of one expiry's epoch (forward, IVs, fit), p99 over 5 minutes, "
         "and CPU seconds per second spent in epochs.", "s",
         [("histogram_quantile(0.99, sum by (le) (rate(volgraph_epoch_compute_seconds_bucket[5m])))", "p99"),
          ("sum(rate(volgraph_epoch_cpu_seconds_total[1m]))", "cpu s/s")]),
        ("Patch lag", "Exchange timestamp to patch emission, latest patch, per process.", "s",
         [("volgraph_patch_lag_seconds", "{{instance}}")]),
    ]),
    ("Delivery", [
        ("Gateway clients", "Dashboard clients and flow publishers connected, per gateway.", "none",
         [("sum by (instance) (volgraph_gateway_clients)", "clients {{instance}}"),
          ("sum by (instance) (volgraph_gateway_publishers)", "publishers {{instance}}")]),
        ("Gateway bytes sent", "Bytes per second sent to dashboard clients.", "Bps",
         [("sum by (instance) (rate(volgraph_gateway_sent_bytes_total[1m]))", "{{instance}}")]),
        ("Gateway messages", "Messages per second sent to clients and events received from publishers.", "ops",
         [("sum(rate(volgraph_gateway_messages_sent_total[1m]))", "sent"),
          ("sum by (type) (rate(volgraph_gateway_published_total[1m]))", "published {{type}}")]),
        ("Gateway drops", "Clients dropped for falling behind, and connections refused by reason, per second.",
         "ops", [("sum(rate(volgraph_gateway_dropped_clients_total[5m]))", "dropped clients"),
                 ("sum by (reason) (rate(volgraph_gateway_rejected_total[5m]))", "rejected {{reason}}")]),
    ]),
    ("Persistence and processes", [
        ("PostgreSQL backlog", "Events waiting to be written (memory and spill). Alert 'volgraph persistence "
         "backlog growing' fires while it is above %d and rising." % BACKLOG_EVENTS, "none",
         [("sum by (instance) (volgraph_postgres_backlog_events)", "{{instance}}")]),
        ("Spilled to disk", "Events per second spilled to disk while PostgreSQL was down.", "ops",
         [("sum(rate(volgraph_postgres_spilled_events_total[5m]))", "spilled")]),
        ("Process CPU", "CPU seconds per second, per process.", "percentunit",
         [("rate(process_cpu_seconds_total[1m])", "{{job}} {{instance}}")]),
        ("Process memory", "Resident memory, per process.", "bytes",
         [("process_resident_memory_bytes", "{{job}} {{instance}}")]),
    ]),
]

PANEL_WIDTH = 8
PANEL_HEIGHT = 8


def _panel(panel_id: int, title: str, description: str, unit: str, queries: list[tuple[str, str]],
           x: int, y: int) -> dict:
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": _ds(),
        "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": _ds(), "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)],
    }


def dashboard() -> dict:
    """The dashboard JSON model (no `id`: Grafana assigns it; `uid` is fixed so pushes overwrite)."""
    panels: list[dict] = []
    next_id = 1
    y = 0
    for row_title, row_panels in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id += 1
        y += 1
        for i, (title, description, unit, queries) in enumerate(row_panels):
            x = (i * PANEL_WIDTH) % 24
            if i and x == 0:
                y += PANEL_HEIGHT
            panels.append(_panel(next_id, title, description, unit, queries, x, y))
            next_id += 1
        y += PANEL_HEIGHT
    return {
        "uid": DASHBOARD_UID,
        "title": "volgraph",
        "description": "volgraph: feeds, compute, delivery and persistence (built by connectors/grafana/dashboards.py)",
        "tags": ["volgraph"],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


# ---------------------------------------------------------------- alert rules

# uid, title, PromQL (a series present with value > 0 means "firing"), for, severity, summary, runbook anchor
ALERTS: list[tuple[str, str, str, str, str, str, str]] = [
    ("volgraph-feed-silent", "volgraph feed silent",
     'max by (instance) (volgraph_dependency_state_age_seconds{dependency="feeds"}) > %d' % FEED_SILENT_S,
     "1m", "critical", "A dataflow process has read no venue message for more than %d s." % FEED_SILENT_S,
     "feed-silent"),
    ("volgraph-backlog-growing", "volgraph persistence backlog growing",
     "(sum by (instance) (volgraph_postgres_backlog_events) > %d) "
     "and (sum by (instance) (deriv(volgraph_postgres_backlog_events[5m])) > 0)" % BACKLOG_EVENTS,
     "5m", "warning", "Rows are waiting for PostgreSQL and their number keeps rising.",
     "persistence-backlog-growing"),
    ("volgraph-fits-failing", "volgraph fits failing",
     "(sum(rate(volgraph_messages_in_total[5m])) > 0) unless (sum(rate(volgraph_fits_total[5m])) > 0)",
     "5m", "critical", "Venue messages arrive but no SVI fit has run for 5 minutes.", "fits-failing"),
    ("volgraph-fit-quality", "volgraph fit quality poor",
     "(max by (venue, underlying) (volgraph_fit_rmse_vol_points) > %s) "
     "or (sum by (venue, underlying) (1 - volgraph_fit_butterfly_ok) > 0)" % FIT_RMSE_VOL_PTS,
     "10m", "warning", "Some expiry's latest fit has an RMSE above %.1f vol points or butterfly arbitrage."
     % FIT_RMSE_VOL_PTS, "fit-quality-poor"),
]


def _rule_data(expr: str) -> list[dict]:
    return [
        {"refId": "A", "relativeTimeRange": {"from": 600, "to": 0}, "datasourceUid": DATASOURCE_UID,
         "model": {"refId": "A", "expr": expr, "instant": True, "range": False, "intervalMs": 1000,
                   "maxDataPoints": 43200, "datasource": _ds()}},
        {"refId": "B", "relativeTimeRange": {"from": 0, "to": 0}, "datasourceUid": "__expr__",
         "model": {"refId": "B", "type": "threshold", "expression": "A",
                   "datasource": {"type": "__expr__", "uid": "__expr__"},
                   "conditions": [{"evaluator": {"type": "gt", "params": [0]}}]}},
    ]


def _rule(uid: str, title: str, expr: str, for_: str, severity: str, summary: str, anchor: str) -> dict:
    return {
        "uid": uid,
        "title": title,
        "condition": "B",
        "data": _rule_data(expr),
        "noDataState": "OK",  # no series = nothing matched the condition
        "execErrState": "Error",
        "for": for_,
        "annotations": {"summary": summary, "runbook": f"docs/operations.md#{anchor}"},
        "labels": {"severity": severity, "service": "volgraph"},
        "isPaused": False,
    }


def alert_rules() -> dict:
    """The rule group in Grafana's file-provisioning format (provisioning/alerting/*.json)."""
    return {
        "apiVersion": 1,
        "groups": [{
            "orgId": 1,
            "name": RULE_GROUP,
            "folder": FOLDER_TITLE,
            "interval": f"{RULE_GROUP_INTERVAL_S}s",
            "rules": [_rule(*a) for a in ALERTS],
        }],
    }


def api_alert_rules() -> list[dict]:
    """The same rules as POST/PUT /api/v1/provisioning/alert-rules take them, one per call."""
    out = []
    for a in ALERTS:
        rule = _rule(*a)
        rule.update({"folderUID": FOLDER_UID, "ruleGroup": RULE_GROUP, "orgID": 1})
        out.append(rule)
    return out


# ---------------------------------------------------------------- metric names

_NAME = re.compile(r"\b((?:volgraph|process)_[a-z0-9_]+)\b")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def queries() -> list[str]:
    """Every PromQL expression of the dashboard and the alert rules."""
    out = [expr for _row, panels in ROWS for _t, _d, _u, qs in panels for expr, _legend in qs]
    out += [a[2] for a in ALERTS]
    return out


def metrics_used(exprs: Iterable[str] | None = None) -> list[str]:
    """The metric names the queries name, as exposed (a histogram's `_bucket` series named by
    its family: volgraph_fit_seconds_bucket -> volgraph_fit_seconds)."""
    names = set()
    for expr in queries() if exprs is None else exprs:
        for name in _NAME.findall(expr):
            for suffix in _HISTOGRAM_SUFFIXES:
                if name.endswith(suffix):
                    name = name[: -len(suffix)]
                    break
            names.add(name)
    return sorted(names)


def unknown_metrics(known: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """The names the queries use that are neither in `known` (flows.metrics.METRICS) nor process_*."""
    known = set(known) | set(PROCESS_METRICS)
    return [name for name in metrics_used() if name not in known]


def render(obj: Any) -> str:
    """The one JSON text of a rendered file: sorted keys, two-space indent, final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


DASHBOARD_FILE = "volgraph.json"
ALERTS_FILE = "volgraph-alerts.json"
CONFIGMAP_NAME = "volgraph-grafana-dashboards"


def rendered_files() -> dict[str, str]:
    """File name -> text, as `volgraph grafana render --out deploy/grafana` writes them."""
    return {DASHBOARD_FILE: render(dashboard()), ALERTS_FILE: render(alert_rules())}


def configmap_yaml(namespace: str = "volgraph") -> str:
    """deploy/k8s/grafana-dashboards.yaml: the rendered files in a ConfigMap (YAML written by
    hand, block scalars, so no YAML library is needed), mounted by Grafana's provisioning."""
    lines = [
        "# Generated by `volgraph grafana render --out deploy/grafana --k8s deploy/k8s/grafana-dashboards.yaml`;",
        "# do not edit (tests/deploy/test_grafana.py checks it matches connectors/grafana/dashboards.py).",
        "# Mount volgraph.json where the dashboard provider reads (/var/lib/grafana/dashboards/volgraph) and",
        "# volgraph-alerts.json under /etc/grafana/provisioning/alerting/.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {CONFIGMAP_NAME}",
        f"  namespace: {namespace}",
        "  labels:",
        "    app.kubernetes.io/name: volgraph",
        "    app.kubernetes.io/component: grafana-provisioning",
        "    grafana_dashboard: \"1\"",
        "data:",
    ]
    for name, text in sorted(rendered_files().items()):
        lines.append(f"  {name}: |")
        lines.extend(("    " + line) if line else "" for line in text.rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"
