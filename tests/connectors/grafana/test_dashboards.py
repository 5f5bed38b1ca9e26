"""connectors/grafana/dashboards.py: the dashboard and alert rules as data.

- every metric a panel or a rule queries is in flows/metrics.py METRICS (or process_*), and a
  running flow and gateway really expose it (a real bare-entry-point flow on a simulator, a real
  gateway, both scraped over loopback);
- the metric-name parser finds exactly the names in a query (property test);
- the layout is valid (unique ids, panels inside a 24-column grid, no overlap);
- each alert rule's runbook anchor is a heading of docs/operations.md.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from connectors.grafana import dashboards
from flows.metrics import METRICS
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.resources import free_port
from tests.helpers.entry import BareFlow, scrape, wait_for_next_status

ROOT = Path(__file__).resolve().parents[3]


def test_every_queried_metric_is_in_the_one_list():
    assert dashboards.unknown_metrics(METRICS) == []
    used = set(dashboards.metrics_used())
    # the list: freshness, messages/s, invalid by reason, dirty nodes, vols by path, fit time,
    # RMSE, butterfly flags, gateway clients/bytes/drops, persistence backlog, epoch compute time
    for name in ("volgraph_dependency_state_age_seconds", "volgraph_messages_in_total", "volgraph_feed_errors_total",
                 "volgraph_dirty_nodes_total", "volgraph_iv_solves_total", "volgraph_fit_seconds",
                 "volgraph_fit_rmse_vol_points", "volgraph_fit_butterfly_ok", "volgraph_gateway_clients",
                 "volgraph_gateway_sent_bytes_total", "volgraph_gateway_dropped_clients_total",
                 "volgraph_postgres_backlog_events", "volgraph_epoch_compute_seconds"):
        assert name in used, name


def test_an_unknown_metric_is_reported_by_name():
    missing = dashboards.unknown_metrics(["volgraph_fits_total"])  # every name the panels query but this list lacks
    assert missing == sorted(missing) and "volgraph_dependency_state_age_seconds" in missing
    assert "volgraph_fits_total" not in dashboards.unknown_metrics(["volgraph_fits_total"])


_names = st.from_regex(r"volgraph_[a-z]{1,8}(_[a-z]{1,8}){0,3}", fullmatch=True)


@given(st.lists(_names, min_size=1, max_size=4), st.sampled_from(["", "_bucket", "_sum", "_count"]))
def test_metric_parser_finds_exactly_the_names_of_a_query(names, suffix):
    parts = [f'rate({n}{suffix}{{venue="deribit",path=~"full|taylor"}}[5m])' for n in names]
    expr = "sum by (le) (" + " + on() ".join(parts) + ") > 0.5"
    expected = set()
    for n in names:
        full = n + suffix
        stripped = full
        for s in ("_bucket", "_sum", "_count"):
            if full.endswith(s):
                stripped = full[: -len(s)]
                break
        expected.add(stripped)
    assert set(dashboards.metrics_used([expr])) == expected


def test_layout_ids_unique_and_panels_inside_the_grid_without_overlap():
    board = dashboards.dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (p["title"], x, y)
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == dashboards.DATASOURCE_UID
            assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]
    assert board["uid"] == dashboards.DASHBOARD_UID and "id" not in board


def test_alert_rules_cover_the_three_conditions_and_link_the_runbook():
    group = dashboards.alert_rules()["groups"][0]
    titles = {r["title"] for r in group["rules"]}
    assert {"volgraph feed silent", "volgraph persistence backlog growing", "volgraph fits failing"} <= titles
    runbook = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for rule in group["rules"]:
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor in anchors, anchor
        assert rule["condition"] == "B"
        assert [d["refId"] for d in rule["data"]] == ["A", "B"]
        assert rule["data"][0]["datasourceUid"] == dashboards.DATASOURCE_UID
    api = dashboards.api_alert_rules()
    assert [r["uid"] for r in api] == [r["uid"] for r in group["rules"]]
    assert all(r["folderUID"] == dashboards.FOLDER_UID and r["ruleGroup"] == dashboards.RULE_GROUP for r in api)


def _families(body: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) \w+", body, re.M))


def test_every_panel_metric_is_exposed_by_a_running_flow_or_gateway(tmp_path):
    """A real gateway and the bare bytewax entry point (what waxctl runs) on a local Deribit
    simulator, until fits flow; then both /metrics are scraped and every name the dashboard and
    the alert rules query must be a metric family one of them serves."""
    from connectors.gateway.server import Gateway
    from connectors.sim.deribit import Simulator
    from tests.helpers.config import gateway_kwargs, sim_kwargs

    sim = Simulator(**sim_kwargs(seed=5, rate=1000, currencies=("BTC",), scale="small"))
    sim_url = sim.start()
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=0))
    gw_url = gw.start()
    metrics_port = free_port()
    config = tmp_path / "graph.toml"
    config.write_text(f'[runtime]\nmetrics_port = 0\ndata_dir = "{tmp_path / "data"}"\n\n'
                      '[sources.deribit]\ncurrencies = ["BTC"]\n\n[sources.okx]\nenabled = false\n\n'
                      '[sinks.postgres]\nenabled = false\n')
    env = dict(os.environ, VOLGRAPH_CONFIG=str(config), VOLGRAPH_URL=sim_url, VOLGRAPH_GATEWAY_URL=gw.publish_url,
               VOLGRAPH_METRICS_PORT=str(metrics_port), VOLGRAPH_PG_DSN="")
    flow_body = gw_body = ""
    live_status = None
    try:
        with BareFlow(env) as flow:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and flow.alive():
                flow_body = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                if re.search(r"^volgraph_fits_total [1-9]", flow_body, re.M) and gw.surfaces:
                    break
                wait_for_next_status(gw)
            gw_body = urllib.request.urlopen(f"{gw_url}/metrics", timeout=5).read().decode()
            # the gateway answers the liveness path deploy/k8s/gateway.yaml probes
            live_status = urllib.request.urlopen(f"{gw_url}/livez", timeout=5).status
            flow.stop()
        output = flow.output
    finally:
        gw.stop()
        sim.stop()
    assert re.search(r"^volgraph_fits_total [1-9]", flow_body, re.M), output[-3000:]
    exposed = _families(flow_body) | _families(gw_body)
    missing = [name for name in dashboards.metrics_used() if name not in exposed]
    assert missing == [], f"queried but served by no process: {missing}"
    assert live_status == 200
    print(json.dumps({"flow_families": len(_families(flow_body)), "gateway_families": len(_families(gw_body))}))


def test_queries_are_well_formed_promql_shapes():
    """No PromQL engine runs here, so the shapes that break most often are checked: balanced
    brackets, range selectors with a duration, label matchers with quoted values, and every
    histogram quantile over a `_bucket` series summed by `le`."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    for expr in dashboards.queries():
        stack = []
        for ch in re.sub(r'"[^"]*"', '""', expr):
            if ch in pairs:
                stack.append(pairs[ch])
            elif ch in pairs.values():
                assert stack and stack.pop() == ch, expr
        assert not stack, expr
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            assert re.fullmatch(r"\d+[smhd]", rng), (expr, rng)
        for matcher in re.findall(r"\{([^}]*)\}", expr):
            for part in filter(None, matcher.split(",")):
                assert re.fullmatch(r'\s*[a-z_]+\s*(=|!=|=~|!~)\s*"[^"]*"\s*', part), (expr, part)
        if "histogram_quantile" in expr:
            assert "_bucket[" in expr and "by (le)" in expr, expr
