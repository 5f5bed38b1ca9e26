"""The flow's counters reach prometheus: /metrics served over loopback shows them."""

import urllib.request

from flows.metrics import COUNTERS, serve_metrics
from tests.conftest import free_port


def test_counters_are_served_as_prometheus_metrics():
    before = COUNTERS.snapshot().get("iv_taylor", 0)
    COUNTERS.add("iv_taylor", 7)
    COUNTERS.add("errors.seq_gap")
    COUNTERS.max("audit_max_err_bp", 0.25)
    port = free_port()
    serve_metrics(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'volgraph_flow_total{{name="iv_taylor"}} {float(before + 7)}' in body
    assert 'volgraph_feed_errors_total{reason="seq_gap"}' in body
    assert 'volgraph_flow_gauge{name="audit_max_err_bp"} 0.25' in body
    assert COUNTERS.snapshot()["iv_taylor"] == before + 7
