"""operators/kernels/bspline.py against scipy.interpolate.BSpline, and a smile carrying a spline
(svi.SviParams.spline_*) evaluated the same way everywhere: svi.total_variance and butterfly_g,
the analytics' compiled delta solve, the strike nodes' slope; and the spline rescue of
svi.fit_svi_band on a slice raw SVI cannot follow."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.interpolate import BSpline

from operators.kernels import analytics, bspline, strike, svi
from operators.kernels.svi import SviParams


def reference(lo, hi, coefs, x, nu):
    """Σ cⱼ Bⱼ from scipy's basis elements on the same uniform knots."""
    n = len(coefs)
    knots = np.linspace(lo, hi, n + 4)
    out = np.zeros_like(x)
    for j, c in enumerate(coefs):
        e = BSpline.basis_element(knots[j:j + 5], extrapolate=False)
        out += c * np.nan_to_num((e.derivative(nu) if nu else e)(x))
    return out


splines = st.tuples(st.floats(-1.0, 0.5), st.floats(0.05, 2.0), st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=20))


@settings(max_examples=60, deadline=None)
@given(splines, st.sampled_from([0, 1, 2]))
def test_basis_matches_scipy_and_vanishes_outside(sp, nu):
    lo, width, coefs = sp
    hi = lo + width
    x = np.concatenate([np.linspace(lo - 0.5, hi + 0.5, 997), [lo, hi]])
    got = bspline.value(lo, hi, coefs, x, nu)
    ref = reference(lo, hi, coefs, x, nu)
    h = width / (len(coefs) + 3)
    assert np.allclose(got, ref, atol=1e-9 / h ** nu, rtol=1e-9)
    assert np.all(got[(x <= lo) | (x >= hi)] == 0.0)
    if nu == 0:
        one = np.array([bspline.value_at(lo, hi, np.asarray(coefs, float), len(coefs), float(v)) for v in x])
        assert np.allclose(one, got, atol=1e-13)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="hi > lo"):
        bspline.basis(0.1, 0.1, 3, [0.0])
    with pytest.raises(ValueError, match="nu=3"):
        bspline.basis(0.0, 1.0, 3, [0.5], nu=3)
    with pytest.raises(ValueError, match="spline_lo_k < spline_hi_k"):
        svi.as_params((0.01, 0.1, -0.3, 0.0, 0.2, 0.5, 0.1, (0.001,)))


@st.composite
def spline_smiles(draw):
    """A raw-SVI smile with a small spline on part of its range."""
    p = SviParams(draw(st.floats(0.005, 0.05)), draw(st.floats(0.02, 0.4)), draw(st.floats(-0.7, 0.7)),
                  draw(st.floats(-0.1, 0.1)), draw(st.floats(0.05, 0.4)))
    lo = draw(st.floats(-0.6, 0.0))
    hi = lo + draw(st.floats(0.2, 1.0))
    n = draw(st.integers(1, 16))
    c = draw(st.lists(st.floats(-1e-3, 1e-3), min_size=n, max_size=n))
    return svi.as_params(tuple(p)[:5] + (lo, hi, tuple(c)))


@settings(max_examples=60, deadline=None)
@given(spline_smiles(), st.floats(0.02, 2.0))
def test_a_spline_smile_is_evaluated_alike_everywhere(p, t):
    k = np.linspace(-1.5, 1.5, 3001)
    raw = p.raw()
    w = svi.total_variance(p, k)
    assert np.allclose(w, svi.total_variance(raw, k) + reference(p.spline_lo_k, p.spline_hi_k, p.spline_w, k, 0),
                       atol=1e-14)
    assume(np.all(w > 1e-4))
    # g from a plain reference: raw SVI's derivatives by hand, the spline's from scipy
    a, b, rho, m, sig = raw
    x = k - m
    r = np.sqrt(x * x + sig * sig)
    w1 = b * (rho + x / r) + reference(p.spline_lo_k, p.spline_hi_k, p.spline_w, k, 1)
    w2 = b * sig * sig / r ** 3 + reference(p.spline_lo_k, p.spline_hi_k, p.spline_w, k, 2)
    g_ref = (1 - k * w1 / (2 * w)) ** 2 - 0.25 * w1 ** 2 * (1 / w + 0.25) + 0.5 * w2
    assert np.allclose(svi.butterfly_g(p, k), g_ref, rtol=1e-9, atol=1e-9)
    h = 1e-6
    # the analytics' compiled blend and the strike nodes see the same curve
    sm = analytics.BlendSmile((1.0,), (p,))
    coef, P = sm.arrays()
    some = k[::97]
    assert np.allclose([analytics._w_blend(coef, P, float(x)) for x in some], svi.total_variance(p, some), atol=1e-14)
    assert analytics.atm_vol(p, t) == pytest.approx(math.sqrt(float(svi.total_variance(p, 0.0)) / t), rel=1e-12)
    w_s, dw_s = strike._w_and_slope(p, some)
    assert np.allclose(w_s, svi.total_variance(p, some), atol=1e-14)
    assert np.allclose(dw_s, (svi.total_variance(p, some + h) - svi.total_variance(p, some - h)) / (2 * h), atol=1e-6)
    # the jump-wings view describes the curve: v is the ATM variance, ψ its slope in √w
    jw = analytics.svi_jw(p, t)
    w0 = float(svi.total_variance(p, 0.0))
    assert jw["jw_v"] == pytest.approx(w0 / t, rel=1e-12) and jw["jw_v"] == pytest.approx(analytics.atm_vol(p, t) ** 2, rel=1e-9)
    slope = (math.sqrt(svi.total_variance(p, h)) - math.sqrt(svi.total_variance(p, -h))) / (2 * h)
    assert jw["jw_psi"] == pytest.approx(slope, rel=1e-5, abs=1e-7)
    assert jw["jw_vt"] <= float(w.min()) / t * (1 + 1e-6)  # both minima on grids
    # the wings are raw SVI's
    far = np.array([p.spline_lo_k - 0.01, p.spline_hi_k + 0.01, -50.0, 50.0])
    assert np.array_equal(svi.total_variance(p, far), svi.total_variance(raw, far))
    assert svi.lee_ok(p) == svi.lee_ok(raw)


def test_params_round_trip_through_every_accepted_form():
    p = svi.as_params((0.01, 0.1, -0.3, 0.0, 0.2, -0.4, 0.4, (1e-4, -2e-4, 3e-4)))
    assert p.spline_w == (1e-4, -2e-4, 3e-4) and p.raw() == SviParams(0.01, 0.1, -0.3, 0.0, 0.2)
    assert svi.as_params(tuple(p)) == p

    class Event:  # what a SmileFit looks like to as_params
        a, b, rho, m, sigma = p[:5]
        spline_lo_k, spline_hi_k, spline_w = p[5:]
    assert svi.as_params(Event()) == p
    assert svi.min_variance(p) <= svi.min_variance(p.raw()) + 1e-12 or min(p.spline_w) > 0


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.05, 1.0))
def test_the_spline_rescue_follows_a_bump_raw_svi_cannot(seed, t):
    """Quotes on raw SVI plus a narrow bump (a kink raw SVI's five parameters cannot follow), bands
    ±0.3 vol pt: fit_svi_band keeps more of them in band than the raw-SVI fit alone, stays
    butterfly-free on an independent dense grid, and between a floor and a ceiling when given."""
    rng = np.random.default_rng(seed)
    base = SviParams(0.02 * t, 0.1 * math.sqrt(t), -0.4, 0.0, 0.15 * math.sqrt(t))
    k = np.linspace(-0.5, 0.4, 40) * math.sqrt(t)
    bump = 0.01 * t * np.exp(-0.5 * ((k - rng.uniform(-0.2, 0.2) * math.sqrt(t)) / (0.05 * math.sqrt(t))) ** 2)
    w = svi.total_variance(base, k) + bump
    vol = np.sqrt(w / t)
    wb, wa = (vol - 0.003) ** 2 * t, (vol + 0.003) ** 2 * t
    plain = svi.fit_svi_band(k, w, wb, wa, t_years=t, rescue=False)
    fit = svi.fit_svi_band(k, w, wb, wa, t_years=t)
    assert fit.butterfly_ok and fit.inside_band_frac >= plain.inside_band_frac
    if plain.inside_band_frac < svi.SPLINE_BELOW:
        assert fit.params.spline_w and fit.inside_band_frac > plain.inside_band_frac
    grid = np.linspace(k.min() - 1.0, k.max() + 1.0, 20001)
    assert float(svi.butterfly_g(fit.params, grid).min()) >= 0.0
    # between neighbours: the floor a shorter expiry's smile, the ceiling a longer one's
    floor = base._replace(a=base.a * 0.5)
    ceiling = base._replace(a=base.a + 0.02 * t)
    between = svi.fit_svi_band(k, w, wb, wa, t_years=t, floor=floor, ceiling=ceiling)
    assert between.butterfly_ok and svi.within_calendar_bounds(between.params, floor, ceiling, k)
    wf = svi.total_variance(between.params, grid[(grid >= k.min()) & (grid <= k.max())])
    assert np.all(wf >= svi.total_variance(floor, grid[(grid >= k.min()) & (grid <= k.max())]) - 1e-15)
