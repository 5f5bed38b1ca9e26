"""operators.kernels.analytics: ATM vol, RR/BF conventions, delta → strike solve, SVI-JW."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

from operators.kernels import analytics as A
from operators.kernels import svi
from operators.kernels.svi import SviParams


def w_plain(p, k):
    a, b, rho, m, s = p
    return a + b * (rho * (k - m) + math.sqrt((k - m) ** 2 + s * s))


def call_delta_plain(p, k):
    w = w_plain(p, k)
    return ndtr(-k / math.sqrt(w) + math.sqrt(w) / 2)


params_st = st.builds(SviParams, a=st.floats(0.0, 0.1), b=st.floats(0.01, 0.6), rho=st.floats(-0.8, 0.8),
                      m=st.floats(-0.2, 0.2), sigma=st.floats(0.05, 0.6))


def arbitrage_free(p):
    k = np.linspace(-6, 6, 6001)
    return svi.lee_ok(p) and svi.min_variance(p) > 1e-4 and svi.butterfly_g(p, k).min() > 0


@given(st.floats(0.05, 2.0), st.floats(0.002, 3.0), st.sampled_from([0.25, 0.10, 0.4, 0.05]))
def test_flat_vol_gives_zero_rr_bf_and_analytic_delta_strikes(vol, t, delta):
    w = vol * vol * t
    flat = (w, 0.0, 0.0, 0.0, 0.1)
    assert A.atm_vol(flat, t) == pytest.approx(vol, rel=1e-12)
    assert A.risk_reversal(flat, t, delta=delta) == pytest.approx(0.0, abs=1e-12)
    assert A.butterfly(flat, t, delta=delta) == pytest.approx(0.0, abs=1e-12)
    # d1 = −k/√w + √w/2 = N⁻¹(Δ)  ⇒  k = w/2 − √w·N⁻¹(Δ) for the call, + for the put
    z = ndtri(delta)
    assert A.k_at_delta(flat, t, delta, is_call=True) == pytest.approx(w / 2 - math.sqrt(w) * z, abs=1e-12)
    assert A.k_at_delta(flat, t, delta, is_call=False) == pytest.approx(w / 2 + math.sqrt(w) * z, abs=1e-12)
    assert A.k_at_delta(flat, t, -delta) == A.k_at_delta(flat, t, delta, is_call=False)


def test_rr_sign_follows_the_skew():
    t = 0.25
    down = (0.01, 0.08, -0.6, 0.0, 0.1)
    up = (0.01, 0.08, 0.6, 0.0, 0.1)
    assert A.risk_reversal(down, t) < 0 and A.risk_reversal(down, t, delta=0.10) < 0
    assert A.risk_reversal(up, t) > 0 and A.risk_reversal(up, t, delta=0.10) > 0
    # a convex smile has positive butterflies, larger further out
    assert 0 < A.butterfly(down, t) < A.butterfly(down, t, delta=0.10)


@settings(max_examples=80, deadline=None)
@given(params_st, st.floats(0.01, 2.0), st.sampled_from([0.25, 0.10]))
def test_delta_strikes_and_rr_bf_against_a_plain_reference(p, t, delta):
    assume(arbitrage_free(p))
    # plain reference: brentq on the written-out forward call/put delta
    kc = brentq(lambda k: call_delta_plain(p, k) - delta, -20, 20, xtol=1e-14)
    kp = brentq(lambda k: (call_delta_plain(p, k) - 1.0) + delta, -20, 20, xtol=1e-14)
    assert A.k_at_delta(p, t, delta, True) == pytest.approx(kc, abs=1e-9)
    assert A.k_at_delta(p, t, delta, False) == pytest.approx(kp, abs=1e-9)
    vc, vp, v0 = (math.sqrt(w_plain(p, x) / t) for x in (kc, kp, 0.0))
    assert A.atm_vol(p, t) == pytest.approx(v0, rel=1e-12)
    assert A.risk_reversal(p, t, delta=delta) == pytest.approx(vc - vp, abs=1e-9)
    assert A.butterfly(p, t, delta=delta) == pytest.approx((vc + vp) / 2 - v0, abs=1e-9)
    out = A.smile_analytics(p, t)
    tag = "25" if delta == 0.25 else "10"
    assert out["rr" + tag] == pytest.approx(vc - vp, abs=1e-9)
    assert out["bf" + tag] == pytest.approx((vc + vp) / 2 - v0, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(st.floats(-0.5, 0.5), st.floats(0.0, 5.0), st.floats(-1.0, 1.0), st.floats(-2.0, 2.0),
       st.floats(1e-4, 3.0), st.floats(1e-3, 3.0))
def test_delta_solve_never_crashes_on_extreme_smiles(a, b, rho, m, sigma, t):
    """Arbitrageable, negative-variance, kinked smiles: a number or NaN, never an exception."""
    out = A.smile_analytics((a, b, rho, m, sigma), t)
    for key in ("atm_vol", "rr25", "bf25", "rr10", "bf10"):
        assert isinstance(out[key], float)
    for key in ("k25c", "k25p", "k10c", "k10p"):
        k = out[key]
        if k == k:  # a returned strike really has the delta
            w = float(svi.total_variance((a, b, rho, m, sigma), k))
            d1 = -k / math.sqrt(w) + math.sqrt(w) / 2
            target = ndtri(0.25 if "25" in key else 0.10) * (1 if key.endswith("c") else -1)
            assert d1 == pytest.approx(target, abs=1e-6)


@given(params_st, st.floats(0.01, 2.0))
def test_svi_jw_against_its_definitions(p, t):
    assume(svi.min_variance(p) > 1e-4)
    jw = A.svi_jw(p, t)
    w0 = w_plain(p, 0.0)
    h = 1e-6
    skew = (math.sqrt(w_plain(p, h)) - math.sqrt(w_plain(p, -h))) / (2 * h)  # ∂√w/∂k at 0
    assert jw["jw_v"] == pytest.approx(w0 / t, rel=1e-12)
    assert jw["jw_psi"] == pytest.approx(skew, rel=1e-5, abs=1e-8)
    big = 1e7  # wing slopes: w′(±∞)/√w₀
    assert jw["jw_c"] == pytest.approx((w_plain(p, big + 1) - w_plain(p, big)) / math.sqrt(w0), rel=1e-5, abs=1e-8)
    assert jw["jw_p"] == pytest.approx((w_plain(p, -big - 1) - w_plain(p, -big)) / math.sqrt(w0), rel=1e-5,
                                       abs=1e-8)
    kk = np.linspace(p.m - 5, p.m + 5, 200001)
    assert jw["jw_vt"] == pytest.approx(svi.total_variance(p, kk).min() / t, rel=1e-6)


def test_node_functions_take_graph_toml_parameters_and_any_params_form():
    p = SviParams(0.01, 0.1, -0.4, 0.02, 0.15)
    t = 0.3
    ref = A.smile_analytics(p, t)
    fit = svi.fit_svi(np.linspace(-0.5, 0.5, 21), svi.total_variance(p, np.linspace(-0.5, 0.5, 21)), t_years=t)
    for form in (p, tuple(p), list(p)):
        assert A.risk_reversal(form, t, delta=0.10) == ref["rr10"]
        assert A.butterfly(form, t, delta=0.25) == ref["bf25"]
        assert A.atm_vol(form, t) == ref["atm_vol"]
    assert A.risk_reversal(fit, t) == pytest.approx(ref["rr25"], abs=1e-7)
    assert A.jw_atm_skew(p, t) == ref["jw_psi"]
    assert A.jw_put_wing(p, t) == ref["jw_p"] and A.jw_call_wing(p, t) == ref["jw_c"]
    assert A.jw_atm_variance(p, t) == ref["jw_v"] and A.jw_min_variance(p, t) == ref["jw_vt"]
    assert A.vol_at_delta(p, t, 0.25, True) == ref["vol25c"]


def test_bad_inputs_name_the_input():
    with pytest.raises(ValueError, match="t_years"):
        A.atm_vol((0.01, 0.1, 0.0, 0.0, 0.1), 0.0)
    with pytest.raises(ValueError, match="delta"):
        A.risk_reversal((0.01, 0.1, 0.0, 0.0, 0.1), 0.5, delta=1.5)
    assert math.isnan(A.atm_vol((-0.5, 0.1, 0.0, 0.0, 0.1), 0.5))  # w(0) < 0: no vol


def test_blend_of_one_slice_equals_the_slice():
    p = SviParams(0.01, 0.1, -0.4, 0.02, 0.15)
    b = A.blend_analytics(A.BlendSmile((1.0,), (p,)), 0.3)
    ref = A.smile_analytics(p, 0.3)
    for key in ("atm_vol", "rr25", "bf25", "rr10", "bf10"):
        assert b[key] == pytest.approx(ref[key], abs=1e-14)
