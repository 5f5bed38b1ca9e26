"""operators/state/surface.py and nodes.py: every graph.toml node lands in ExpiryView.analytics
by name (with its unit), and a node that fails is counted per node and reason and logged once."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.events import ChainUpdate, SmileFit
from operators.items import ExpiryFit
from operators.kernels import analytics as A
from operators.state.nodes import Node, NodeFailures, evaluate_nodes
from operators.state.surface import SurfaceLogic, SurfaceState

T0 = 1_767_225_600_000
PARAMS = (0.01, 0.1, -0.3, 0.0, 0.2)


def node(name, fn, inputs=("fit",), unit="", **params):
    return Node(name, f"tests:{name}", fn, tuple(inputs), "expiry", params, unit)


def ratio(x, y, t_years):
    return x / y


def boom(params, t_years):
    raise ZeroDivisionError("division by zero in the wing")


def item(expiry_ms, t_years=0.25):
    fit = SmileFit("deribit", "BTC", expiry_ms, 1, T0, T0, t_years, 100_000.0, *PARAMS, 0.2, 20, True, 0.05, 1.0)
    chain = ChainUpdate("deribit", "BTC", expiry_ms, 1, T0, T0, t_years, 100_000.0, "future")
    return ExpiryFit(fit, chain)


def logic(nodes):
    return SurfaceLogic(SurfaceState("deribit", "BTC"), nodes=tuple(nodes), tenors_days=[7, 30],
                        drop_calendar_violators=False, repair_calendar=False, weekend_weight=1.0, epoch_ms=50,
                        now_ms=lambda: T0)


def test_every_node_is_published_by_name_with_its_unit():
    nodes = [node("atm_vol", A.atm_vol, unit="vol pts"), node("rr15", A.risk_reversal, unit="vol pts", delta=0.15),
             node("skew_ratio", ratio, inputs=("rr15", "atm_vol"))]
    surface = logic(nodes)
    surface.on_items([item(T0 + 7 * 86_400_000), item(T0 + 30 * 86_400_000, 0.5)])
    patch = surface.on_epoch()
    assert len(patch.expiries) == 2
    for view in patch.expiries:
        t = view.fit.t_years
        assert list(view.analytics) == ["atm_vol", "rr15", "skew_ratio"]  # graph.toml's order
        assert view.analytics["atm_vol"] == A.atm_vol(PARAMS, t)
        assert view.analytics["skew_ratio"] == pytest.approx(A.risk_reversal(PARAMS, t, delta=0.15) / A.atm_vol(PARAMS, t))
        assert view.units == {"atm_vol": "vol pts", "rr15": "vol pts"}  # only nodes that give one
    assert dict(surface.counters) == {}


def test_nodes_read_the_fit_with_its_spline():
    """A fit that took the spline rescue: every node reads the fitted curve (raw SVI plus its
    spline), as the dashboard draws it, not the raw SVI part alone."""
    import msgspec

    from operators.kernels import strike as S
    from operators.kernels.svi import SplineSvi

    spline = dict(spline_lo_k=-0.3, spline_hi_k=0.3, spline_w=(0.0, 0.004, 0.006, 0.004, 0.0))
    curve = SplineSvi(*PARAMS, *spline.values())
    nodes = [node("atm_vol", A.atm_vol), node("rr25", A.risk_reversal, delta=0.25),
             Node("iv_fit", "tests:iv_fit", S.fitted_vol, ("fit", "strike"), "instrument", {}, "")]
    surface = logic(nodes)
    fit_item = item(T0 + 30 * 86_400_000, 0.25)
    strikes = (90_000.0, 100_000.0, 110_000.0)
    fit_item = ExpiryFit(msgspec.structs.replace(fit_item.fit, **spline),
                         msgspec.structs.replace(fit_item.chain, strikes=strikes, bid_iv=(0.5,) * 3, ask_iv=(0.6,) * 3))
    surface.on_items([fit_item])
    view = surface.on_epoch().expiries[0]
    assert view.analytics["atm_vol"] == A.atm_vol(curve, 0.25)
    assert view.analytics["atm_vol"] > A.atm_vol(PARAMS, 0.25) + 0.005  # the spline lifts the money
    assert view.analytics["rr25"] == A.risk_reversal(curve, 0.25, 0.25)
    data = S.StrikeData.of(strikes, 100_000.0)
    assert view.strike_analytics["iv_fit"] == tuple(S.fitted_vol(curve, data, 0.25).tolist())
    assert view.strike_analytics["iv_fit"][1] != S.fitted_vol(PARAMS, data, 0.25)[1]


def test_the_calendar_check_reads_the_fits_with_their_splines():
    """Two expiries with the same raw SVI (calendar-flat, allowed); a spline that lifts the near
    one's money above the far one's is a calendar crossing (the later expiry is flagged)."""
    import msgspec

    surface = logic([])
    near, far = item(T0 + 7 * 86_400_000, 0.25), item(T0 + 30 * 86_400_000, 0.5)
    surface.on_items([near, far])
    assert [c.ok for c in surface.on_epoch().calendar] == [True]
    bump = dict(spline_lo_k=-0.3, spline_hi_k=0.3, spline_w=(0.0, 0.004, 0.006, 0.004, 0.0))
    surface.on_items([ExpiryFit(msgspec.structs.replace(near.fit, epoch=2, **bump), near.chain)])
    patch = surface.on_epoch()
    assert [c.ok for c in patch.calendar] == [False] and patch.calendar[0].worst < -0.001
    assert {v.expiry_ms: v.calendar_ok for v in patch.expiries} == {near.fit.expiry_ms: True, far.fit.expiry_ms: False}


def test_a_failing_node_is_counted_per_reason_and_logged_once(caplog):
    nodes = [node("bad", boom), node("nan", lambda p, t: float("nan")), node("text", lambda p, t: "n/a"),
             node("after_bad", ratio, inputs=("bad", "nan")), node("atm_vol", A.atm_vol)]
    surface = logic(nodes)
    with caplog.at_level(logging.WARNING, logger="volgraph.nodes"):
        for i in range(3):
            t = 0.1 * (i + 1)
            surface.on_items([item(T0 + (i + 1) * 86_400_000, t)])
            patch = surface.on_epoch()
            assert patch.expiries[0].analytics == {"bad": None, "nan": None, "text": None, "after_bad": None,
                                                   "atm_vol": A.atm_vol(PARAMS, t)}
    assert dict(surface.counters) == {
        "node_errors.bad.ZeroDivisionError": 3, "node_errors.nan.non_finite": 3,
        "node_errors.text.not_a_number": 3, "node_errors.after_bad.missing_input": 3}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # once per (node, kind of failure), not once per evaluation
    bad = next(line for line in lines if "'bad'" in line)
    assert "ZeroDivisionError('division by zero in the wing')" in bad and "[nodes.bad]" in bad
    assert "node_errors.bad.ZeroDivisionError" in bad
    assert any("'after_bad'" in line and "no value from input 'bad', 'nan'" in line for line in lines)


def test_failures_are_logged_once_per_kind_not_once_per_node(caplog):
    calls = iter([ValueError("x"), KeyError("y"), ValueError("z")])

    def flaky(params, t_years):
        raise next(calls)

    failures = NodeFailures()
    with caplog.at_level(logging.WARNING, logger="volgraph.nodes"):
        for _ in range(3):
            evaluate_nodes((node("flaky", flaky),), PARAMS, 0.25, failures)
    assert dict(failures.counts) == {"node_errors.flaky.ValueError": 2, "node_errors.flaky.KeyError": 1}
    assert len(caplog.records) == 2
    # another surface (another underlying) counts its own failures but does not log them again
    other = NodeFailures()
    with caplog.at_level(logging.WARNING, logger="volgraph.nodes"):
        evaluate_nodes((node("flaky", boom),), PARAMS, 0.25, other)
        evaluate_nodes((node("flaky", lambda p, t: math.inf),), PARAMS, 0.25, other)
    assert dict(other.counts) == {"node_errors.flaky.ZeroDivisionError": 1, "node_errors.flaky.non_finite": 1}
    assert len(caplog.records) == 4  # two new kinds, one line each


@given(value=st.one_of(st.floats(), st.integers(-10**6, 10**6), st.none(), st.text(max_size=3)))
def test_a_node_value_is_a_finite_float_or_none_and_a_none_is_always_counted(value):
    failures = NodeFailures()
    out = evaluate_nodes((node("v", lambda p, t: value),), PARAMS, 0.25, failures)["v"]
    if out is None:
        assert sum(failures.counts.values()) == 1
    else:
        assert isinstance(out, float) and math.isfinite(out) and not failures.counts


def quoted(expiry_ms, t_years, true, fitted, half_vol=0.005):
    """An ExpiryFit whose quotes are the `true` smile ± half_vol and whose fit is `fitted`."""
    from operators.kernels.svi import total_variance

    strikes = tuple(float(K) for K in np.linspace(70_000, 140_000, 29))
    k = np.log(np.asarray(strikes) / 100_000.0)
    vol = np.sqrt(total_variance(true, k) / t_years)
    fit = SmileFit("deribit", "BTC", expiry_ms, 1, T0, T0, t_years, 100_000.0, *fitted, 0.2, 29, True, 0.05, 1.0)
    chain = ChainUpdate("deribit", "BTC", expiry_ms, 1, T0, T0, t_years, 100_000.0, "future", strikes=strikes,
                        bid_iv=tuple(float(v - half_vol) for v in vol), ask_iv=tuple(float(v + half_vol) for v in vol))
    return ExpiryFit(fit, chain)


@pytest.mark.parametrize("repair", [False, True])
def test_a_fit_that_crosses_its_neighbour_is_refitted_between_them(repair):
    """The second expiry's fit sits under the first's near the money (a calendar crossing) while
    its quotes do not: with repair_calendar the surface step refits it from its quotes between
    its neighbours — the patch is calendar-free, the refit inside its quotes' band and marked
    calendar_repaired — and without it the crossing is flagged."""
    from operators.kernels.svi import total_variance

    short = (0.004, 0.05, -0.3, 0.0, 0.1)  # T = 0.05
    long_true = (0.006, 0.07, -0.3, 0.0, 0.15)  # T = 0.15, above the short one everywhere
    long_bad = (-0.004, 0.07, -0.3, 0.0, 0.15)  # a fit that dips under the short one at the money
    grid = np.linspace(-1, 1, 201)
    assert np.all(total_variance(long_true, grid) > total_variance(short, grid))
    assert np.min(total_variance(long_bad, grid) - total_variance(short, grid)) < 0
    e1, e2 = T0 + 18 * 86_400_000, T0 + 55 * 86_400_000
    surface = SurfaceLogic(SurfaceState("deribit", "BTC"), nodes=(node("atm_vol", A.atm_vol),), tenors_days=[30],
                           drop_calendar_violators=False, repair_calendar=repair, weekend_weight=1.0, epoch_ms=50,
                           now_ms=lambda: T0)
    surface.on_items([quoted(e1, 0.05, short, short), quoted(e2, 0.15, long_true, long_bad)])
    patch = surface.on_epoch()
    (check,) = patch.calendar
    view = {v.expiry_ms: v for v in patch.expiries}[e2]
    if not repair:
        assert not check.ok and not view.calendar_ok and not view.fit.calendar_repaired
        return
    assert check.ok and view.calendar_ok and view.fit.calendar_repaired and view.fit.butterfly_ok
    assert view.fit.inside_band_frac >= 0.9
    p = (view.fit.a, view.fit.b, view.fit.rho, view.fit.m, view.fit.sigma)
    assert view.analytics["atm_vol"] == pytest.approx(A.atm_vol(p, 0.15))
    assert abs(view.analytics["atm_vol"] - A.atm_vol(long_true, 0.15)) < 0.005  # back on its quotes
    assert surface.counters["calendar_repairs"] == 1
    # smile_fits keeps the chain's own fit: the refit shares its key (connectors/postgres/rows.py)
    from connectors.postgres.rows import rows_for
    assert [r[9:14] for r in rows_for([patch], "r")["smile_fits"]] == [short]


def test_fits_of_one_expiry_from_two_chain_steps_are_counted_and_logged_once(caplog):
    """Two worker slots that both placed an expiry run two chain steps for it (salted keys); the
    surface step counts each fit from the second and logs it once, with the fix."""
    from operators.items import ExpiryGone

    expiry = T0 + 7 * 86_400_000
    surface = logic([])
    first, second = f"deribit|BTC|{expiry}", f"deribit|BTC|{expiry}#3"
    plain = item(expiry)
    with caplog.at_level(logging.ERROR, logger="operators.state.surface"):
        surface.on_items([ExpiryFit(plain.fit, plain.chain, first), ExpiryFit(plain.fit, plain.chain, first)])
        assert "errors.placement_conflict" not in surface.counters
        surface.on_items([ExpiryFit(plain.fit, plain.chain, second), ExpiryFit(plain.fit, plain.chain, second)])
    assert surface.counters["errors.placement_conflict"] == 2
    (record,) = [r for r in caplog.records if "two chain steps" in r.getMessage()]
    assert first in record.getMessage() and second in record.getMessage() and "without recovery" in record.getMessage()
    # the expiry settles; a later listing of the same date from another key is no conflict
    surface.on_items([ExpiryGone("deribit", "BTC", expiry), ExpiryFit(plain.fit, plain.chain, second)])
    assert surface.counters["errors.placement_conflict"] == 2
