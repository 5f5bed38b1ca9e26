"""graph.toml levels beyond "expiry", end to end on the real bytewax flow and a real PostgreSQL
(pgserver): a node added by editing a copy of graph.toml only, one test per level, reaches the
patches (ExpiryView.analytics, ExpiryView.strike_analytics, SurfacePatch.underlying_analytics)
and its table (expiry_nodes, instrument_nodes, underlying_nodes), and the surface rebuilt from
the rows (connectors.postgres.latest_surface) equals the fold of the patches."""

from __future__ import annotations

import math

import pytest

from connectors.postgres import connect, latest_surface
from operators.merge import apply_patch
from tests.helpers.flowrun import market_flow_to_postgres
from tests.helpers.market import SPOT, TENORS


def run_with(node_toml: str, pg_db: str, tmp_path):
    """The flow on market() with graph.toml plus `node_toml`; (patches, folded surfaces, db)."""
    _, patches = market_flow_to_postgres(pg_db, tmp_path, node_toml)
    folded: dict = {}
    for p in patches:
        folded[p.underlying] = apply_patch(folded.get(p.underlying), p)
    assert set(folded) == set(SPOT)
    with connect(pg_db) as conn:  # the sink's close wrote every row (its hand-off)
        for und, snap in folded.items():
            assert latest_surface(conn, "deribit", und, run_id="test-run") == snap, und
    return patches, folded


def test_an_expiry_node_reading_the_quotes(pg_db, tmp_path):
    patches, folded = run_with("""
[nodes.rr15_ask]
fn = "operators.kernels.quoted:side_risk_reversal"
inputs = ["fit", "quotes"]
level = "expiry"
unit = "vol pts"
delta = 0.15
side = "ask"
""", pg_db, tmp_path)
    views = [v for p in patches for v in p.expiries]
    assert views and all(v.analytics["rr15_ask"] is not None and v.units["rr15_ask"] == "vol pts" for v in views)
    for snap in folded.values():
        for v in snap.expiries:  # the market's ask smile is the true smile + 0.3 vol pts: the same skew
            assert v.analytics["rr15_ask"] < v.analytics["rr25_ask"] < 0
    with connect(pg_db) as conn:
        stored = dict(((u, e), x) for u, e, x in conn.execute(
            "SELECT DISTINCT ON (underlying, expiry_ms) underlying, expiry_ms, value FROM expiry_nodes"
            " WHERE run_id = 'test-run' AND node = 'rr15_ask' ORDER BY underlying, expiry_ms, epoch DESC"))
    assert stored == {(u, v.expiry_ms): v.analytics["rr15_ask"] for u, s in folded.items() for v in s.expiries}


def test_an_instrument_node(pg_db, tmp_path):
    patches, folded = run_with("""
[nodes.delta_put]
fn = "operators.kernels.strike:delta"
inputs = ["fit", "strike"]
level = "instrument"
is_call = false
""", pg_db, tmp_path)
    for snap in folded.values():
        for v in snap.expiries:
            puts, calls = v.strike_analytics["delta_put"], v.strike_analytics["delta_call"]
            assert len(puts) == len(v.strikes) >= 10
            assert all(p == pytest.approx(c - 1.0, abs=1e-12) for p, c in zip(puts, calls))
            assert list(v.strikes) == sorted(v.strikes)
            assert list(puts) == sorted(puts, reverse=True)  # from ~0 (far OTM put) to ~−1 (deep ITM)
    with connect(pg_db) as conn:
        # one instrument_nodes row per node per stored view, its strikes and values as aligned arrays
        views, rows_per_view = conn.execute(
            "SELECT (SELECT count(*) FROM expiry_views WHERE run_id = 'test-run' AND NOT removed),"
            " (SELECT count(*) FROM instrument_nodes WHERE run_id = 'test-run' AND node = 'delta_put'"
            "  AND cardinality(strikes) = cardinality(vals) AND cardinality(strikes) >= 10)").fetchone()
        # the history view gives them back one row per strike
        rows = conn.execute("SELECT DISTINCT ON (underlying, expiry_ms, strike) underlying, expiry_ms, strike, value"
                            " FROM instrument_node_history WHERE run_id = 'test-run' AND node = 'delta_put'"
                            " ORDER BY underlying, expiry_ms, strike, epoch DESC").fetchall()
    assert views == rows_per_view > 0
    expect = {(u, v.expiry_ms, k): x for u, s in folded.items() for v in s.expiries
              for k, x in zip(v.strikes, v.strike_analytics["delta_put"])}
    assert {(u, e, k): x for u, e, k, x in rows} == expect


def test_an_underlying_node(pg_db, tmp_path):
    patches, folded = run_with("""
[nodes.fwd_vol_20_60]
fn = "operators.kernels.term:forward_vol"
inputs = ["fits"]
level = "underlying"
unit = "vol pts"
t1_days = 20
t2_days = 60
""", pg_db, tmp_path)
    # (underlying, epoch) → the value its last patch of that epoch carried: the frozen flow clock puts
    # every end-of-input patch in one epoch, and a busy machine may batch them into several
    sent = {(p.underlying, p.epoch): p.underlying_analytics["fwd_vol_20_60"] for p in patches
            if "fwd_vol_20_60" in p.underlying_analytics}
    assert sent
    for snap in folded.values():
        # the market's true surface has w(0) = 0.36 T: a 60 % forward vol between any two tenors
        assert snap.underlying_analytics["fwd_vol_20_60"] == pytest.approx(0.6, abs=0.01)
        assert snap.underlying_units["fwd_vol_20_60"] == "vol pts"
        assert len(snap.expiries) == len(TENORS)
    with connect(pg_db) as conn:
        rows = conn.execute("SELECT underlying, epoch, value, unit FROM underlying_nodes WHERE run_id = 'test-run'"
                            " AND node = 'fwd_vol_20_60' ORDER BY underlying, epoch").fetchall()
    # one row per epoch in which the value changed, holding that epoch's last value (006_level_nodes.sql)
    assert {(u, e): x for u, e, x, _ in rows} == sent
    for und, snap in folded.items():
        last = [r for r in rows if r[0] == und][-1]
        assert last[2] == snap.underlying_analytics["fwd_vol_20_60"] and last[3] == "vol pts"
        assert not math.isnan(last[2])
