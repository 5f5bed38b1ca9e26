"""The flow's counters reach prometheus under their conventional names (flows/metrics.py
METRICS): /metrics served over loopback shows them."""

import urllib.request

from flows.metrics import COUNTERS, serve_metrics
from tests.helpers.resources import free_port


def test_counters_are_served_as_prometheus_metrics():
    before = COUNTERS.snapshot().get("iv_taylor", 0)
    COUNTERS.add("iv_taylor", 7)
    COUNTERS.add("errors.seq_gap")
    COUNTERS.max("audit_max_err_bp", 0.25)
    port = free_port()
    serve_metrics(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert f'volgraph_iv_solves_total{{path="taylor"}} {float(before + 7)}' in body
    assert 'volgraph_feed_errors_total{reason="seq_gap"}' in body
    assert 'volgraph_audit_max_error_bp 0.25' in body
    assert COUNTERS.snapshot()["iv_taylor"] == before + 7


def test_status_line_shows_each_epoch_counter_per_second():
    from flows.cli import status_text

    last = {"messages_in": 1_000, "dirty": 10, "iv_full": 5, "fits": 2, "fits_deferred": 1, "epoch_us": 0}
    now = {"messages_in": 21_000, "dirty": 410, "iv_full": 205, "iv_taylor": 600, "iv_skipped": 100, "fits": 12,
           "fits_deferred": 5, "epoch_us": 500_000, "patch_lag_ms": 42, "errors.seq_gap": 2, "errors.crossed_book": 1}
    line = status_text(last, now, 2.0)
    for part in ("msgs/s    10,000", "dirty/s      200", "IV/s full      100", "taylor      300", "skip       50",
                 "fits/s    5.0 deferred    2.0", "epoch cpu 25.0 %", "lag    42 ms", "errors 3"):
        assert part in line, (part, line)


def test_calendar_violations_and_the_recovery_hand_off_are_served():
    """A patch's calendar checks set the surface's violation gauge (each patch carries them all);
    the PostgreSQL sink's hand-off times reach their histogram."""
    from flows.metrics import HANDOFF_SECONDS
    from flows.surface import _count_patch
    from operators.events import CalendarCheck, SurfacePatch

    checks = (CalendarCheck(expiry_ms_1=1, expiry_ms_2=2, ok=True, worst=0.001),
              CalendarCheck(expiry_ms_1=2, expiry_ms_2=3, ok=False, worst=-0.002),
              CalendarCheck(expiry_ms_1=3, expiry_ms_2=4, ok=False, worst=-0.001))
    _count_patch(SurfacePatch(venue="deribit", underlying="CAL", epoch=1, ts_exchange_ms=1, ts_emit_ms=2,
                              expiries=(), removed=(), calendar=checks))
    HANDOFF_SECONDS.observe(0.02)
    port = free_port()
    serve_metrics(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'volgraph_calendar_violations{underlying="CAL",venue="deribit"} 2.0' in body
    assert 'volgraph_recovery_handoff_seconds_bucket{le="0.05"}' in body
    _count_patch(SurfacePatch(venue="deribit", underlying="CAL", epoch=2, ts_exchange_ms=1, ts_emit_ms=2,
                              expiries=(), removed=(), calendar=checks[:1]))
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'volgraph_calendar_violations{underlying="CAL",venue="deribit"} 0.0' in body
