"""operators/state/surface.py and nodes.py, graph.toml levels beyond "expiry": instrument nodes
give one value per strike of the view (ExpiryView.strike_analytics), underlying nodes one value
per surface (SurfacePatch.underlying_analytics), sent only when it changed; a failing node is
counted and logged once, as at the expiry level."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operators.events import ChainUpdate, SmileFit
from operators.items import ExpiryFit, ExpiryGone
from operators.kernels import analytics as A
from operators.kernels import strike as S
from operators.kernels import term as TM
from operators.merge import apply_patch
from operators.state.nodes import Node
from operators.state.surface import SurfaceLogic, SurfaceState

T0 = 1_767_225_600_000
DAY_MS = 86_400_000
F = 100_000.0
STRIKES = (80_000.0, 90_000.0, 100_000.0, 110_000.0, 125_000.0)


def params(t):
    return (0.36 * t - 0.05 * math.sqrt(t), 0.25 * math.sqrt(t), -0.4, 0.0, 0.2)


def node(name, fn, level, inputs, unit="", **kw):
    return Node(name, f"tests:{name}", fn, tuple(inputs), level, kw, unit)


def item(days, epoch=1, scale=1.0):
    t = days / 365.0
    p = params(t)
    p = (p[0] * scale, *p[1:])
    fit = SmileFit("deribit", "BTC", T0 + days * DAY_MS, epoch, T0, T0, t, F, *p, 0.2, 20, True, 0.05, 1.0)
    chain = ChainUpdate("deribit", "BTC", T0 + days * DAY_MS, epoch, T0, T0, t, F, "future", strikes=STRIKES,
                        bid_iv=(0.7, None, 0.58, 0.57, 0.6), ask_iv=(0.72, 0.65, 0.6, None, 0.62))
    return ExpiryFit(fit, chain)


def logic(nodes):
    return SurfaceLogic(SurfaceState("deribit", "BTC"), nodes=tuple(nodes), tenors_days=[7, 30],
                        drop_calendar_violators=False, repair_calendar=False, weekend_weight=1.0, epoch_ms=50,
                        now_ms=lambda: T0)


def half(values, t_years):
    return values / 2


NODES = [
    node("atm_vol", A.atm_vol, "expiry", ["fit"], unit="vol pts"),
    node("iv_fit", S.fitted_vol, "instrument", ["fit", "strike"], unit="vol pts"),
    node("delta_call", S.delta, "instrument", ["fit", "strike"]),
    node("half_iv", half, "instrument", ["iv_fit"]),
    node("mid_gap", S.mid_minus_fit, "instrument", ["fit", "strike"]),
    node("fwd_vol", TM.forward_vol, "underlying", ["fits"], unit="vol pts", t1_days=10, t2_days=40),
    node("atm_fb", TM.front_back_slope, "underlying", ["fits", "atm_vol"]),
]


def test_instrument_nodes_give_one_value_per_strike_and_underlying_nodes_one_per_surface():
    surface = logic(NODES)
    surface.on_items([item(7), item(30), item(60)])
    patch = surface.on_epoch()
    for view in patch.expiries:
        t = view.fit.t_years
        k = np.log(np.asarray(STRIKES) / F)
        vols = np.sqrt(A._smile(params(t)).total_variance(k) / t)
        assert view.strike_analytics["iv_fit"] == pytest.approx(tuple(vols), rel=1e-12)
        assert view.strike_analytics["half_iv"] == pytest.approx(tuple(vols / 2), rel=1e-12)  # reads another
        assert all(0 < d < 1 for d in view.strike_analytics["delta_call"])
        gap = view.strike_analytics["mid_gap"]  # None where a side has no quote: data, not a failure
        assert gap[1] is None and gap[3] is None and gap[0] == pytest.approx(0.71 - vols[0])
        assert view.units == {"atm_vol": "vol pts", "iv_fit": "vol pts"}
    fits = TM.TermFits.of((v.fit.t_years, params(v.fit.t_years), v.expiry_ms) for v in patch.expiries)
    atms = [v.analytics["atm_vol"] for v in patch.expiries]
    assert patch.underlying_analytics == pytest.approx(
        {"fwd_vol": TM.forward_vol(fits, 10, 40), "atm_fb": TM.front_back_slope(fits, atms)}, rel=1e-12)
    assert patch.underlying_analytics["fwd_vol"] == pytest.approx(0.6, abs=1e-9)  # w(0) = 0.36 t
    assert patch.underlying_units == {"fwd_vol": "vol pts"}
    assert dict(surface.counters) == {}


def test_an_underlying_value_is_sent_only_when_it_changed():
    surface = logic(NODES)
    surface.on_items([item(7), item(30), item(60)])
    first = surface.on_epoch()
    surface.on_items([item(7, epoch=2)])  # the same fit again: no underlying value moved
    again = surface.on_epoch()
    assert again.expiries and again.underlying_analytics == {} and again.underlying_units == {}
    surface.on_items([item(30, epoch=3, scale=1.05)])  # the 30-day ATM variance moved
    moved = surface.on_epoch()
    assert set(moved.underlying_analytics) == {"fwd_vol"}  # atm_fb reads the 7- and 60-day expiries only
    surface.on_items([ExpiryGone("deribit", "BTC", T0 + 7 * DAY_MS), ExpiryGone("deribit", "BTC", T0 + 30 * DAY_MS),
                      ExpiryGone("deribit", "BTC", T0 + 60 * DAY_MS)])
    gone = surface.on_epoch()
    assert gone.underlying_analytics == {"fwd_vol": None, "atm_fb": None}  # nothing left to compute from
    folded = apply_patch(apply_patch(apply_patch(None, first), again), moved)
    assert folded.underlying_analytics == {**first.underlying_analytics, **moved.underlying_analytics}
    assert folded.underlying_units == {"fwd_vol": "vol pts"}
    assert folded.underlying_analytics["atm_fb"] == first.underlying_analytics["atm_fb"] is not None


def test_no_value_is_counted_apart_from_failures_and_passes_to_dependants(caplog):
    from operators.kernels import quoted

    far = Node("rr5_bid", "q", quoted.side_risk_reversal, ("fit", "quotes"), "expiry", {"delta": 0.05, "side": "bid"})
    after = node("after", lambda x, t_years: x, "expiry", ["rr5_bid"])
    surface = logic([far, after])
    with caplog.at_level("WARNING", logger="volgraph.nodes"):
        surface.on_items([item(60)])  # no quote reaches the 5Δ strikes
        view = surface.on_epoch().expiries[0]
    assert view.analytics == {"rr5_bid": None, "after": None}
    assert dict(surface.counters) == {"node_no_value.rr5_bid": 1, "node_no_value.after": 1}
    assert caplog.text == ""


def test_failing_nodes_of_each_level_are_counted_and_leave_the_rest(caplog):
    def bad_shape(params, strike, t_years):
        return np.zeros(2)

    def boom(fits):
        raise ArithmeticError("no term structure")

    nodes = [*NODES, node("bad_shape", bad_shape, "instrument", ["fit", "strike"]),
             node("boom", boom, "underlying", ["fits"]), node("after_boom", lambda x: x, "underlying", ["boom"])]
    surface = logic(nodes)
    with caplog.at_level("WARNING", logger="volgraph.nodes"):
        surface.on_items([item(7), item(30)])
        patch = surface.on_epoch()
    assert all(v.strike_analytics["bad_shape"] == (None,) * len(STRIKES) for v in patch.expiries)
    assert patch.underlying_analytics["boom"] is None and patch.underlying_analytics["after_boom"] is None
    assert patch.underlying_analytics["fwd_vol"] is not None
    assert dict(surface.counters) == {"node_errors.bad_shape.not_a_number": 2, "node_errors.boom.ArithmeticError": 1,
                                      "node_errors.after_boom.missing_input": 1}
    assert "underlying deribit|BTC" in caplog.text and "not one number per strike (5)" in caplog.text
