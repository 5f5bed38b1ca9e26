"""operators.kernels.svi: SVI evaluation, Gatheral's g, the quasi-explicit fit and its arbitrage guarantees."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from operators.kernels import svi
from operators.kernels.svi import SviParams

VOGT = SviParams(a=-0.0410, b=0.1331, rho=0.3060, m=0.3586, sigma=0.4153)  # T = 1, butterfly arbitrage


def dense_grid(params: SviParams, k_lo=-4.0, k_hi=4.0) -> np.ndarray:
    """An independent check grid: uniform, plus fine points around m on the σ scale."""
    near_m = params.m + params.sigma * np.sinh(np.linspace(-6, 6, 2001))
    return np.sort(np.concatenate([np.linspace(k_lo, k_hi, 20001), near_m]))


def g_reference(p: SviParams, k: float, h: float = 1e-4) -> float:
    """g(k) written out plainly with central finite differences of w (no shared code)."""
    def w(x):
        return p.a + p.b * (p.rho * (x - p.m) + math.sqrt((x - p.m) ** 2 + p.sigma ** 2))
    w0 = w(k)
    w1 = (w(k + h) - w(k - h)) / (2 * h)
    w2 = (w(k + h) - 2 * w0 + w(k - h)) / (h * h)
    return (1 - k * w1 / (2 * w0)) ** 2 - w1 * w1 / 4 * (1 / w0 + 0.25) + w2 / 2


params_st = st.builds(
    lambda a, b, rho, m, sigma: SviParams(a, b, rho, m, sigma),
    a=st.floats(-0.05, 0.1), b=st.floats(0.01, 0.9), rho=st.floats(-0.9, 0.9),
    m=st.floats(-0.3, 0.3), sigma=st.floats(0.02, 0.8))


def arbitrage_free(p: SviParams) -> bool:
    g = svi.butterfly_g(p, dense_grid(p, -8, 8))
    return svi.lee_ok(p) and svi.min_variance(p) > 1e-4 and bool(np.all(g > 1e-6))


# ------------------------------------------------------------------ formulas


@given(params_st, st.floats(-1.5, 1.5))
def test_total_variance_and_g_match_plain_formulas(p, k):
    assume(svi.min_variance(p) > 1e-3)
    w = p.a + p.b * (p.rho * (k - p.m) + math.sqrt((k - p.m) ** 2 + p.sigma ** 2))
    assert float(svi.total_variance(p, k)) == pytest.approx(w, rel=1e-12, abs=1e-15)
    assert float(svi.butterfly_g(p, k)) == pytest.approx(g_reference(p, k), rel=1e-4, abs=1e-4)


def test_vogt_example_has_butterfly_arbitrage():
    k = np.linspace(-1.5, 1.5, 3001)
    g = svi.butterfly_g(VOGT, k)
    assert g.min() < -0.02  # the known dip, on the call side (Gatheral & Jacquier 2014, fig. 1)
    assert 0.0 < k[np.argmin(g)] < 1.5
    assert svi.lee_ok(VOGT)  # Lee's bound alone does not catch it


def test_g_is_minus_inf_where_variance_is_negative():
    p = SviParams(-0.1, 0.1, 0.0, 0.0, 0.1)
    assert svi.butterfly_g(p, 0.0) == -np.inf


def test_as_params_accepts_the_usual_shapes_and_names_bad_input():
    p = SviParams(0.01, 0.1, -0.2, 0.0, 0.3)
    assert svi.as_params(tuple(p)) == p
    assert svi.as_params(list(p)) == p

    class WithAttrs:
        a, b, rho, m, sigma = p
    assert svi.as_params(WithAttrs()) == p
    with pytest.raises(ValueError, match="exactly"):
        svi.as_params((1, 2, 3))
    with pytest.raises(TypeError, match="a, b, rho, m, sigma"):
        svi.as_params(3.0)


# ------------------------------------------------------------------ fitting


def test_vogt_slice_fit_is_repaired_and_arbitrage_free():
    k = np.linspace(-1.0, 1.0, 41)
    fit = svi.fit_svi(k, svi.total_variance(VOGT, k), t_years=1.0)
    assert fit.repaired  # the exact fit (Vogt's params) has g < 0, so it had to be given up
    assert fit.butterfly_ok and fit.min_g >= 0
    assert svi.butterfly_g(fit.params, dense_grid(fit.params)).min() >= 0
    assert fit.rmse_vol_pts < 2.0  # still close to the quotes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(params_st, st.integers(8, 60))
def test_fit_round_trip_on_noiseless_arbitrage_free_data(p, n):
    assume(arbitrage_free(p))
    k = np.linspace(min(p.m - 2 * p.sigma, -0.4), max(p.m + 2 * p.sigma, 0.4), n)
    w = svi.total_variance(p, k)
    fit = svi.fit_svi(k, w, t_years=0.5)
    assert not fit.repaired and fit.butterfly_ok
    assert np.max(np.abs(svi.total_variance(fit.params, k) - w)) <= 1e-6 * w.max()
    assert fit.rmse_vol_pts < 1e-3
    # the parameters themselves come back (data covers m ± 2σ)
    assert fit.params.m == pytest.approx(p.m, abs=1e-3)
    assert fit.params.sigma == pytest.approx(p.sigma, rel=1e-2, abs=1e-3)
    assert fit.params.rho == pytest.approx(p.rho, abs=1e-2)
    assert fit.params.b == pytest.approx(p.b, rel=1e-2)


@settings(max_examples=60, deadline=None)
@given(params_st, st.integers(6, 80), st.floats(0.0, 0.02), st.integers(0, 2**31 - 1),
       st.floats(0.003, 2.0))
def test_every_fit_is_arbitrage_free_on_an_independent_grid(p, n, noise, seed, t):
    """Noisy, possibly arbitrageable inputs: whatever comes back must have g ≥ 0."""
    assume(svi.min_variance(p) > 1e-4)
    rng = np.random.default_rng(seed)
    k = np.sort(rng.uniform(-0.8, 0.8, n)) * math.sqrt(t)
    assume(np.ptp(k) > 1e-3)
    w = svi.total_variance(p, k) * (1.0 + noise * rng.standard_normal(n))
    assume(np.all(w > 0))
    fit = svi.fit_svi(k, w, weights=rng.uniform(0.1, 1.0, n), t_years=t)
    assert fit.butterfly_ok and fit.lee_ok
    g = svi.butterfly_g(fit.params, dense_grid(fit.params, -6, 6))
    assert g.min() >= 0.0, (fit, g.min())
    assert fit.min_g <= g.min() + 1e-10  # the reported minimum is not optimistic


def test_warm_start_reaches_the_cold_optimum():
    p = SviParams(0.02, 0.15, -0.4, 0.05, 0.25)
    k = np.linspace(-0.9, 0.7, 100)
    cold = svi.fit_svi(k, svi.total_variance(p, k), t_years=0.5)
    moved = SviParams(0.021, 0.16, -0.42, 0.06, 0.24)
    w2 = svi.total_variance(moved, k)
    warm = svi.fit_svi(k, w2, prev=cold, t_years=0.5)
    ref = svi.fit_svi(k, w2, t_years=0.5)
    assert warm.warm and not ref.warm
    assert warm.objective <= ref.objective * (1 + 1e-6) + 1e-16
    assert np.max(np.abs(svi.total_variance(warm.params, k) - w2)) < 1e-7


def test_warm_start_escapes_a_stale_basin():
    """prev far from the new smile: the coarse-grid guard must still find the right fit."""
    k = np.linspace(-0.5, 0.5, 40)
    new = SviParams(0.01, 0.2, 0.5, 0.3, 0.05)
    w = svi.total_variance(new, k)
    stale = SviParams(0.05, 0.05, -0.8, -0.4, 0.8)
    warm = svi.fit_svi(k, w, prev=stale, t_years=0.25)
    cold = svi.fit_svi(k, w, t_years=0.25)
    assert warm.objective <= cold.objective * (1 + 1e-4) + 1e-14


def test_band_report_counts_and_names_the_strikes_outside():
    p = SviParams(0.02, 0.1, -0.3, 0.0, 0.2)
    k = np.linspace(-0.5, 0.5, 11)
    w = svi.total_variance(p, k)
    w_bid, w_ask = w * 0.99, w * 1.01
    w_bid[3] = w[3] * 1.001  # fit (= w) is below this band
    w_ask[7] = w[7] * 0.999  # and above this one
    w_bid[9] = np.nan  # one-sided: not counted
    fit = svi.fit_svi(k, w, t_years=1.0, w_bid=w_bid, w_ask=w_ask)
    assert fit.outside_idx == (3, 7)
    assert fit.inside_band_frac == pytest.approx(8 / 10)


def test_fit_input_errors_name_the_input():
    with pytest.raises(ValueError, match="at least 3"):
        svi.fit_svi([0.0, 0.1], [0.01, 0.02])
    with pytest.raises(ValueError, match="equal length"):
        svi.fit_svi([0.0, 0.1, 0.2], [0.01, 0.02])
    with pytest.raises(ValueError, match="t_years"):
        svi.fit_svi([0.0, 0.1, 0.2], [0.01, 0.02, 0.03], t_years=-1.0)
    with pytest.raises(ValueError, match="weights"):
        svi.fit_svi([0.0, 0.1, 0.2], [0.01, 0.02, 0.03], weights=[1.0])
    # NaN and non-positive variances are dropped, not fatal
    k = np.linspace(-0.3, 0.3, 9)
    w = svi.total_variance((0.02, 0.1, 0.0, 0.0, 0.2), k)
    w[2], w[5] = np.nan, -1.0
    assert svi.fit_svi(k, w).n == 7


# ------------------------------------------------------------------ slices


def test_prepare_slice_uses_otm_two_sided_quotes_and_weights():
    F, t = 100.0, 0.25
    strikes = np.array([80, 80, 90, 90, 100, 100, 110, 110, 120, 120], float)
    is_call = np.array([True, False] * 5)
    bid = np.array([0.50, 0.52, 0.45, 0.46, 0.40, 0.41, 0.42, 0.43, np.nan, 0.47])
    ask = bid + 0.02
    ask[8] = 0.49  # call at 120 has no bid: dropped
    s = svi.prepare_slice(strikes, F, t, bid, ask, is_call)
    # puts below F (80, 90), calls at and above (100, 110); 120 call one-sided
    assert s.idx.tolist() == [1, 3, 4, 6]
    assert np.allclose(s.k, np.log(np.array([80, 90, 100, 110]) / F))
    mid = 0.5 * (bid[s.idx] + ask[s.idx])
    assert np.allclose(s.total_variance, mid ** 2 * t)
    assert np.allclose(s.w_bid, bid[s.idx] ** 2 * t) and np.allclose(s.w_ask, ask[s.idx] ** 2 * t)
    # weights are 1/band² in vol: equal bands weigh equally, a wider band (a vega-poor
    # quote: the same price spread is more vol) weighs by the inverse square of its width
    assert np.allclose(s.weights, 1.0 / 0.02 ** 2)
    wide = ask.copy()
    wide[6] = bid[6] + 0.04
    assert np.allclose(svi.prepare_slice(strikes, F, t, bid, wide, is_call).weights[3], 1.0 / 0.04 ** 2)
    tight = ask.copy()
    tight[6] = bid[6] + 0.001  # below the 0.5 vol pt floor: no quote is trusted more than that
    assert np.allclose(svi.prepare_slice(strikes, F, t, bid, tight, is_call).weights[3], 1.0 / 0.005 ** 2)
    with pytest.raises(ValueError, match="forward"):
        svi.prepare_slice(strikes, -1.0, t, bid, ask, is_call)
    with pytest.raises(ValueError, match="equal length"):
        svi.prepare_slice(strikes, F, t, bid[:3], ask, is_call)


def test_fit_slice_returns_none_below_min_quotes_and_fits_otherwise():
    F, t = 100.0, 0.1
    strikes = np.linspace(70, 130, 25)
    p = SviParams(0.002, 0.03, -0.4, 0.0, 0.1)
    vol = np.sqrt(svi.total_variance(p, np.log(strikes / F)) / t)
    fit = svi.fit_slice(strikes, F, t, vol - 0.005, vol + 0.005)
    assert fit is not None and fit.butterfly_ok
    assert fit.inside_band_frac == 1.0 and fit.rmse_vol_pts < 0.05
    assert svi.fit_slice(strikes[:4], F, t, vol[:4] - 0.005, vol[:4] + 0.005) is None


def test_warm_up_compiles_every_kernel_a_chain_epoch_runs():
    """In a fresh process: after warm_up(), two real chain epochs (solves, small moves, fits)
    compile nothing more in this module — the first market data never waits on the JIT."""
    from tests.helpers.jit import warm_up_coverage

    report = warm_up_coverage("operators.kernels.svi")
    assert report["fits"] == 2  # the epochs did run the kernels
    assert any(n > 0 for n in report["before"].values()), report  # warm_up compiled (or loaded) kernels
    assert report["after"] == report["before"], report  # ... every one the epochs call from Python


# ------------------------------------------------------------------ band-aware fit (fit_svi_band)


def band_loss_reference(x, k, W, wt, lo_b, hi_b, wband, m, sig):
    """The banded inner loss written out plainly: (a, u, v) → Σ wt(w − W)² + Σ wband·d²."""
    a, u, v = x
    y = (k - m) / sig
    z = np.sqrt(y * y + 1.0)
    w = a + u * (z + y) / 2 + v * (z - y) / 2
    d = np.maximum(lo_b - w, 0.0) + np.maximum(w - hi_b, 0.0)
    return float(np.sum(wt * (w - W) ** 2) + np.sum(wband * d * d))


@settings(max_examples=40, deadline=None)
@given(params_st, st.integers(5, 40), st.integers(0, 2**31 - 1), st.floats(-0.2, 0.2), st.floats(0.05, 0.6))
def test_banded_inner_solve_matches_a_generic_bounded_minimiser(p, n, seed, m, sig):
    """For fixed (m, σ) the active-set Newton loop finds the box-constrained minimum of the
    squared-hinge loss that scipy's L-BFGS-B finds from many starts (or a lower one)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(seed)
    k = np.sort(rng.uniform(-0.6, 0.6, n))
    W = np.maximum(svi.total_variance(p, k), 1e-3) * (1 + 0.05 * rng.standard_normal(n))
    W = np.abs(W) + 1e-4
    half = W * rng.uniform(0.005, 0.05, n)
    lo_b, hi_b = W - half + 0.3 * half * rng.standard_normal(n), W + half
    wt = rng.uniform(0.1, 1.0, n) / W
    wband = 100.0 * wt.mean() * np.ones(n)
    hub = np.full(n, np.inf)
    a_hi = float(W.max())
    f, a, u, v = svi._inner(k, W, wt, lo_b, hi_b, wband, hub, a_hi, m, sig)
    assert f == pytest.approx(band_loss_reference((a, u, v), k, W, wt, lo_b, hi_b, wband, m, sig), rel=1e-9, abs=1e-15)
    assert a <= a_hi + 1e-12 and -1e-12 <= u <= 2 * sig + 1e-12 and -1e-12 <= v <= 2 * sig + 1e-12
    bounds = [(None, a_hi), (0.0, 2 * sig), (0.0, 2 * sig)]
    best = np.inf
    for x0 in ([W.mean(), 0.0, 0.0], [0.0, sig, sig], [a, u, v]):
        r = minimize(band_loss_reference, x0, args=(k, W, wt, lo_b, hi_b, wband, m, sig), method="L-BFGS-B",
                     bounds=bounds, options=dict(ftol=1e-15, gtol=1e-13, maxiter=5000))
        best = min(best, r.fun)
    assert f <= best * (1 + 1e-6) + 1e-14


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(params_st, st.integers(8, 60), st.floats(0.005, 1.5), st.integers(0, 2**31 - 1))
def test_band_fit_is_arbitrage_free_and_inside_a_band_an_svi_fits(p, n, t, seed):
    """Quotes whose bands contain an arbitrage-free SVI (mids off-centre by up to 40 % of the
    half-width): the band fit is butterfly-free on an independent grid and inside almost
    every band; the mid fit of the same quotes is the baseline it must not lose to."""
    assume(arbitrage_free(p))
    rng = np.random.default_rng(seed)
    k = np.linspace(min(p.m - 2 * p.sigma, -0.4), max(p.m + 2 * p.sigma, 0.4), n)
    true = svi.total_variance(p, k)
    half = true * rng.uniform(0.01, 0.04, n)
    mid = true + 0.4 * half * rng.uniform(-1, 1, n)
    fit = svi.fit_svi_band(k, mid, true - half, true + half, None, t_years=t)
    assert fit.butterfly_ok and fit.lee_ok
    assert svi.butterfly_g(fit.params, dense_grid(fit.params, -6, 6)).min() >= 0.0
    w = svi.total_variance(fit.params, k)
    inside = (w >= true - half) & (w <= true + half)
    assert fit.inside_band_frac == pytest.approx(inside.mean())
    assert inside.mean() >= 0.95, (fit, np.flatnonzero(~inside))
    mid_fit = svi.fit_svi(k, mid, t_years=t, w_bid=true - half, w_ask=true + half)
    assert fit.inside_band_frac >= mid_fit.inside_band_frac - 1.0 / n


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(params_st, st.integers(8, 40), st.floats(1.0, 1.3), st.integers(0, 2**31 - 1))
def test_band_fit_stays_under_a_ceiling_and_over_a_floor(p, n, lift, seed):
    """Quotes above a longer expiry's smile (calendar-inverted data): the fit with that
    smile as its ceiling stays under it on the calendar range; with it as a floor, over it."""
    assume(arbitrage_free(p))
    rng = np.random.default_rng(seed)
    k = np.sort(rng.uniform(-0.5, 0.5, n))
    assume(np.ptp(k) > 0.1)
    w = svi.total_variance(p, k) * lift * (1 + 0.01 * rng.standard_normal(n))
    grid = np.linspace(-1.0, 1.0, 20001)
    under = svi.fit_svi_band(k, w, w * 0.99, w * 1.01, t_years=0.3, ceiling=p, calendar_k=grid)
    assert np.all(svi.total_variance(under.params, grid) <= svi.total_variance(p, grid))
    assert under.butterfly_ok
    over = svi.fit_svi_band(k, w / lift ** 2, w * 0.99 / lift ** 2, w * 1.01 / lift ** 2, t_years=0.3, floor=p,
                            calendar_k=grid)
    assert np.all(svi.total_variance(over.params, grid) >= svi.total_variance(p, grid))
    assert over.butterfly_ok


def test_band_fit_names_bad_input():
    k = np.linspace(-0.3, 0.3, 9)
    w = np.full(9, 0.04)
    with pytest.raises(ValueError, match="w_bid"):
        svi.fit_svi_band(k, w, w[:5], w, t_years=0.5)
    with pytest.raises(ValueError, match="t_years"):
        svi.fit_svi_band(k, w, w * 0.9, w * 1.1, t_years=None)
    with pytest.raises(ValueError, match="t_years"):
        svi.fit_svi_band(k, w, w * 0.9, w * 1.1, t_years=-1.0)
    with pytest.raises(ValueError, match="usable quotes"):
        svi.fit_svi_band(k[:2], w[:2], w[:2], w[:2], t_years=0.5)
    with pytest.raises(ValueError, match="band_inset"):
        svi.fit_svi_band(k, w, w * 0.9, w * 1.1, t_years=0.5, band_inset=0.7)
    with pytest.raises(ValueError, match="calendar_k"):
        svi.fit_svi_band(k, w, w * 0.9, w * 1.1, t_years=0.5, floor=(0.01, 0.1, 0.0, 0.0, 0.1), calendar_k=[0.0])


def test_band_fit_without_a_band_is_a_mid_fit():
    """NaN bands: only the mid term is left, so the band fit is the mid fit's optimum."""
    p = SviParams(0.02, 0.15, -0.4, 0.05, 0.25)
    k = np.linspace(-0.9, 0.7, 60)
    w = svi.total_variance(p, k) * (1 + 0.01 * np.sin(7 * k))
    nan = np.full(k.size, np.nan)
    band = svi.fit_svi_band(k, w, nan, nan, t_years=0.5)
    mid = svi.fit_svi(k, w, t_years=0.5)
    assert band.objective == pytest.approx(mid.objective, rel=1e-6)
    assert np.max(np.abs(svi.total_variance(band.params, k) - svi.total_variance(mid.params, k))) < 1e-6 * w.max()


def band_count_and_excursion(params, k, wb, wa, t):
    """(quotes in band, largest excursion outside a band in vol pts), written out plainly."""
    w = svi.total_variance(params, k)
    vol = np.sqrt(np.maximum(w, 0.0) / t)
    exc = np.maximum(np.sqrt(wb / t) - vol, 0.0) + np.maximum(vol - np.sqrt(wa / t), 0.0)
    return int(np.sum((w >= wb) & (w <= wa))), float(exc.max()) * 100.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(params_st, st.integers(8, 60), st.floats(0.02, 1.5), st.floats(0.5, 3.0), st.integers(0, 2**31 - 1))
def test_the_share_rescue_keeps_more_in_band_never_fewer_and_stays_arbitrage_free(p, n, t, zig, seed):
    """Bands that zig-zag around an SVI by `zig` half-widths (so no SVI keeps them all): the
    rescued fit keeps at least as many quotes in band as the plain band fit, is butterfly-free
    on an independent grid, and its largest excursion stays within max(the plain fit's, 0.4
    vol pts) whenever it differs from the plain fit."""
    assume(arbitrage_free(p))
    rng = np.random.default_rng(seed)
    k = np.linspace(min(p.m - 2 * p.sigma, -0.4), max(p.m + 2 * p.sigma, 0.4), n)
    true = svi.total_variance(p, k)
    half = true * rng.uniform(0.005, 0.03, n)
    centre = true + zig * half * np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.uniform(0.5, 1.0, n)
    wb, wa = centre - half, centre + half
    assume(np.all(wb > 0))
    plain = svi.fit_svi_band(k, centre, wb, wa, None, t_years=t, rescue=False)
    fit = svi.fit_svi_band(k, centre, wb, wa, None, t_years=t)
    n_plain, exc_plain = band_count_and_excursion(plain.params, k, wb, wa, t)
    n_fit, exc_fit = band_count_and_excursion(fit.params, k, wb, wa, t)
    assert fit.butterfly_ok and fit.lee_ok
    assert svi.butterfly_g(fit.params, dense_grid(fit.params, -6, 6)).min() >= 0.0
    assert n_fit >= n_plain
    assert fit.inside_band_frac == pytest.approx(n_fit / n)
    if fit.params != plain.params:
        assert n_fit > n_plain
        assert exc_fit <= max(exc_plain, svi.RESCUE_MAX_EXC_VOL_PTS) + 1e-9
    warm = svi.fit_svi_band(k, centre, wb, wa, None, fit, t_years=t)
    assert warm.butterfly_ok
