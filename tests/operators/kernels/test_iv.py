"""The Black-76 implied-vol solver (operators.kernels.iv) and greeks (operators.kernels.black).

Checked against a plain, obviously-correct reference in extended precision (mpmath pricing,
bisection on the vol), on random samples and hypothesis properties.
The accuracy floor: |σ − σ_true| ≤ 1e-12 + 4·ε·P/vega, with P the double price handed in.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from operators.kernels import black, iv

EPS = 2.0**-52
MP_DPS = 40
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ the plain reference


def ref_price(forward, strike, t_years, vol, is_call, dps=MP_DPS):
    """Black-76 undiscounted price in extended precision (mpmath), as an mpf."""
    with mp.workdps(dps):
        f, k, t, v = (mp.mpf(float(a)) for a in (forward, strike, t_years, vol))
        sd = v * mp.sqrt(t)
        d1 = mp.log(f / k) / sd + sd / 2
        d2 = d1 - sd
        if is_call:
            return f * mp.ncdf(d1) - k * mp.ncdf(d2)
        return k * mp.ncdf(-d2) - f * mp.ncdf(-d1)


def ref_vega(forward, strike, t_years, vol):
    with mp.workdps(MP_DPS):
        f, k, t, v = (mp.mpf(float(a)) for a in (forward, strike, t_years, vol))
        sd = v * mp.sqrt(t)
        d1 = mp.log(f / k) / sd + sd / 2
        return float(f * mp.npdf(d1) * mp.sqrt(t))


def ref_implied_vol(price, forward, strike, t_years, is_call, iterations=160):
    """Bisection on σ with mpmath prices: slow, and obviously right. None if out of bounds."""
    with mp.workdps(MP_DPS):
        p = mp.mpf(float(price))
        lo, hi = mp.mpf("1e-9"), mp.mpf(1)
        if ref_price(forward, strike, t_years, lo, is_call) >= p:
            return None
        while ref_price(forward, strike, t_years, hi, is_call) < p:
            hi *= 2
            if hi > 1e4:
                return None
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if ref_price(forward, strike, t_years, mid, is_call) < p:
                lo = mid
            else:
                hi = mid
        return float((lo + hi) / 2)


def random_options(n, seed, *, k_range=1.5, t_min=1.0 / 8760.0, t_max=3.0, vol_min=0.05, vol_max=3.0):
    """The issue's population: k in [−1.5, 1.5], T 1 hour … 3 years, σ in [0.05, 3], C and P."""
    rng = np.random.default_rng(seed)
    k = rng.uniform(-k_range, k_range, n)
    t = np.exp(rng.uniform(math.log(t_min), math.log(t_max), n))
    vol = rng.uniform(vol_min, vol_max, n)
    call = rng.random(n) < 0.5
    forward = np.exp(rng.uniform(math.log(50.0), math.log(2e5), n))
    strike = forward * np.exp(k)
    price = np.array([float(ref_price(forward[i], strike[i], t[i], vol[i], call[i])) for i in range(n)])
    vega = np.array([ref_vega(forward[i], strike[i], t[i], vol[i]) for i in range(n)])
    return price, forward, strike, t, vol, call, vega


def floor_bound(price, vega):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return 1e-12 + 4.0 * EPS * price / vega


# ------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("seed,kwargs", [
    (11, {}),
    (12, {"t_max": 2.0 / 365.0}),  # hour-to-day options: where wing prices are hardest
    (13, {"vol_min": 2.0}),  # high vol: prices near the upper bound
    (14, {"k_range": 0.02}),  # near the money
    (15, {"k_range": 6.0, "vol_min": 0.01, "vol_max": 8.0}),  # beyond the guess tables (|x| > 3)
    (16, {"k_range": 1e-4, "t_max": 1.0 / 365.0}),  # the corner: at the money, hours to expiry
])
def test_accuracy_floor_on_random_sample(seed, kwargs):
    price, forward, strike, t, vol, call, vega = random_options(1500, seed, **kwargs)
    got, status = iv.implied_vol_and_status(price, forward, strike, t, call)
    ok = status == iv.OK
    assert ok.sum() > 300, "the sample should mostly be solvable"
    err = np.abs(got - vol)
    bound = floor_bound(price, vega)
    worst = np.argmax(np.where(ok, err / bound, 0.0))
    assert np.all(err[ok] <= bound[ok]), (
        f"worst: F={forward[worst]!r} K={strike[worst]!r} t={t[worst]!r} vol={vol[worst]!r} "
        f"call={call[worst]} price={price[worst]!r}: got {got[worst]!r}, bound {bound[worst]:.3g}")
    # every non-OK element carries a reason and a NaN, never a wrong number
    assert np.all(np.isnan(got[~ok]))
    assert set(np.unique(status[~ok])) <= {iv.BELOW_INTRINSIC, iv.LOW_INFORMATION}
    # and no-information means what it says: the time value is (nearly) gone
    intrinsic = np.where(call, np.maximum(forward - strike, 0), np.maximum(strike - forward, 0))
    below = status == iv.BELOW_INTRINSIC
    assert np.all(price[below] <= intrinsic[below])
    low = status == iv.LOW_INFORMATION
    assert np.all((price[low] - intrinsic[low] <= 16 * EPS * price[low])
                  | ((price[low] - intrinsic[low]) / np.sqrt(forward[low] * strike[low]) < 2.3e-308))


def test_matches_reference_bisection():
    """Solving the same double price: ours against mpmath bisection of that exact price."""
    price, forward, strike, t, vol, call, vega = random_options(60, 21)
    got, status = iv.implied_vol_and_status(price, forward, strike, t, call)
    checked = 0
    for i in range(len(price)):
        if status[i] != iv.OK:
            continue
        ref = ref_implied_vol(price[i], forward[i], strike[i], t[i], call[i])
        assert ref is not None
        # the reference inverts the rounded price exactly: only our evaluation error remains
        assert abs(got[i] - ref) <= floor_bound(price[i], vega[i]), (i, got[i], ref)
        checked += 1
    assert checked >= 30


def test_known_values():
    # ATM: b = 2Φ(σ√T/2) − 1 has a closed form inverse
    f, t, vol = 100.0, 0.25, 0.8
    price = float(ref_price(f, f, t, vol, True))
    assert iv.implied_vol(price, f, f, t, True) == pytest.approx(vol, abs=1e-14)
    assert iv.implied_vol(price, f, f, t, False) == pytest.approx(vol, abs=1e-14)
    # a plain textbook case, priced in mpmath
    price = float(ref_price(100.0, 120.0, 0.5, 0.3, True))
    assert abs(float(iv.implied_vol(price, 100.0, 120.0, 0.5, True)) - 0.3) < 1e-13


# ------------------------------------------------------------------ properties (hypothesis)

forwards = st.floats(1.0, 1e6)
log_moneyness = st.floats(-1.5, 1.5)
t_years_st = st.floats(1.0 / 8760.0, 3.0)
vols = st.floats(0.05, 3.0)


@SETTINGS
@given(forwards, log_moneyness, t_years_st, vols, st.booleans())
def test_round_trip_price_iv_price(forward, k, t, vol, is_call):
    strike = forward * math.exp(k)
    price = float(ref_price(forward, strike, t, vol, is_call))
    got, status = iv.implied_vol_and_status(price, forward, strike, t, is_call)
    if status != iv.OK:
        assert math.isnan(got)
        assume(False)
    vega = ref_vega(forward, strike, t, vol)
    assert abs(float(got) - vol) <= floor_bound(price, vega)
    # and back to the price: the solved vol reprices to within the double-precision floor
    repriced = ref_price(forward, strike, t, float(got), is_call)
    assert abs(float(repriced) - price) <= 4 * EPS * price + 1e-12 * vega


@SETTINGS
@given(forwards, log_moneyness, t_years_st, vols)
def test_put_call_parity_of_ivs(forward, k, t, vol):
    strike = forward * math.exp(k)
    with mp.workdps(MP_DPS):
        call_mp = ref_price(forward, strike, t, vol, True)
        put_mp = call_mp - (mp.mpf(forward) - mp.mpf(strike))  # parity, undiscounted
    call_px, put_px = float(call_mp), float(put_mp)
    vols_out, status = iv.implied_vol_and_status([call_px, put_px], forward, strike, t, [True, False])
    assume(np.all(status == iv.OK))
    vega = ref_vega(forward, strike, t, vol)
    tol = floor_bound(call_px, vega) + floor_bound(put_px, vega)
    assert abs(vols_out[0] - vols_out[1]) <= tol


@SETTINGS
@given(forwards, log_moneyness, t_years_st, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans())
def test_monotone_in_price(forward, k, t, u1, u2, is_call):
    strike = forward * math.exp(k)
    intrinsic = max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    upper = forward if is_call else strike
    p1, p2 = sorted(intrinsic + u * (upper - intrinsic) for u in (u1, u2))
    v, status = iv.implied_vol_and_status([p1, p2], forward, strike, t, is_call)
    assume(np.all(status == iv.OK))
    assert v[0] <= v[1]


@SETTINGS
@given(forwards, log_moneyness, t_years_st, st.floats(-0.5, 1.5), st.booleans())
def test_nan_and_codes_exactly_out_of_bounds(forward, k, t, u, is_call):
    strike = forward * math.exp(k)
    intrinsic = max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    upper = forward if is_call else strike
    price = intrinsic + u * (upper - intrinsic)
    vol, status = iv.implied_vol_and_status(price, forward, strike, t, is_call)
    vol, status = float(vol), int(status)
    if price < 0:
        assert status == iv.BAD_INPUT
    elif price <= intrinsic:
        assert status == iv.BELOW_INTRINSIC
    elif price >= upper:
        assert status == iv.ABOVE_MAX
    elif price - intrinsic > 16 * EPS * price and (price - intrinsic) / math.sqrt(forward * strike) > 1e-300:
        assert status == iv.OK
    else:
        assert status in (iv.OK, iv.LOW_INFORMATION)
    assert math.isnan(vol) == (status != iv.OK)
    if status == iv.OK:
        assert vol > 0 and math.isfinite(vol)


any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=500, deadline=None)
@given(any_float, any_float, any_float, any_float, st.booleans())
def test_no_exceptions_on_any_float(price, forward, strike, t, is_call):
    vol, status = iv.implied_vol_and_status(price, forward, strike, t, is_call)
    assert int(status) in iv.STATUS_NAMES
    assert math.isnan(float(vol)) == (int(status) != iv.OK)
    if not all(math.isfinite(a) for a in (price, forward, strike)) or math.isnan(t) or t == math.inf:
        assert status == iv.BAD_INPUT
    elif price < 0 or forward <= 0 or strike <= 0:
        assert status == iv.BAD_INPUT
    elif t <= 0:
        assert status == iv.EXPIRED


def test_special_inputs_codes():
    nan, inf = math.nan, math.inf
    cases = [
        ((nan, 100, 100, 1, True), iv.BAD_INPUT),
        ((inf, 100, 100, 1, True), iv.BAD_INPUT),
        ((5.0, -100, 100, 1, True), iv.BAD_INPUT),
        ((5.0, 0.0, 100, 1, True), iv.BAD_INPUT),
        ((5.0, 100, 0.0, 1, True), iv.BAD_INPUT),
        ((5.0, 100, inf, 1, True), iv.BAD_INPUT),
        ((-1.0, 100, 100, 1, True), iv.BAD_INPUT),
        ((5.0, 100, 100, nan, True), iv.BAD_INPUT),
        ((5.0, 100, 100, 0.0, True), iv.EXPIRED),
        ((5.0, 100, 100, -inf, True), iv.EXPIRED),
        ((0.0, 100, 100, 1, True), iv.BELOW_INTRINSIC),
        ((10.0, 110, 100, 1, True), iv.BELOW_INTRINSIC),  # exactly intrinsic
        ((9.0, 110, 100, 1, True), iv.BELOW_INTRINSIC),
        ((110.0, 110, 100, 1, True), iv.ABOVE_MAX),  # call ≥ F
        ((100.0, 110, 100, 1, False), iv.ABOVE_MAX),  # put ≥ K
        ((10.0 + 1e-14, 110, 100, 1, True), iv.LOW_INFORMATION),  # a few ulps of time value
        ((10.5, 110, 100, 1, True), iv.OK),
    ]
    for args, want in cases:
        vol, status = iv.implied_vol_and_status(*args)
        assert int(status) == want, (args, iv.STATUS_NAMES[int(status)])
        assert math.isnan(float(vol)) == (want != iv.OK)


def test_broadcasting_shapes_and_option_type_strings():
    strikes = np.array([[80.0, 100.0, 120.0], [90.0, 100.0, 110.0]])
    prices = black.black_price(100.0, strikes, 0.5, 0.6, True)
    vol = iv.implied_vol(prices, 100.0, strikes, 0.5, "C")
    assert vol.shape == (2, 3)
    np.testing.assert_allclose(vol, 0.6, atol=1e-12)
    assert iv.implied_vol_status(prices, 100.0, strikes, 0.5, True).dtype == np.int8
    put = black.black_price(100.0, 120.0, 0.5, 0.6, False)
    assert float(iv.implied_vol(put, 100.0, 120.0, 0.5, "put")) == pytest.approx(0.6, abs=1e-12)
    with pytest.raises(ValueError, match="is_call"):
        iv.implied_vol(put, 100.0, 120.0, 0.5, "X")
    assert np.ndim(iv.implied_vol(5.0, 100.0, 100.0, 1.0, True)) == 0
    empty = iv.implied_vol(np.array([]), 100.0, 100.0, 1.0, True)
    assert empty.shape == (0,)


def test_coin_quoted_prices_convert_with_the_forward():
    forward, strike, t, vol = 64_000.0, 70_000.0, 30 / 365, 0.55
    price_usd = float(ref_price(forward, strike, t, vol, True))
    price_coin = price_usd / forward
    got = float(iv.implied_vol_coin(price_coin, forward, strike, t, True))
    assert abs(got - vol) < 1e-11
    v2, s2 = iv.implied_vol_coin_and_status(price_coin, forward, strike, t, True)
    assert float(v2) == got and int(s2) == iv.OK
    np.testing.assert_allclose(black.coin_to_usd(price_coin, forward), price_coin * forward)


def test_warm_up_compiles_every_kernel_a_chain_epoch_runs():
    """In a fresh process: after warm_up(), two real chain epochs (solves, small moves, fits)
    compile nothing more in this module — the first market data never waits on the JIT."""
    from tests.helpers.jit import warm_up_coverage

    report = warm_up_coverage("operators.kernels.iv")
    assert report["fits"] == 2  # the epochs did run the kernels
    assert any(n > 0 for n in report["before"].values()), report  # warm_up compiled (or loaded) kernels
    assert report["after"] == report["before"], report  # ... every one the epochs call from Python


# ------------------------------------------------------------------ greeks vs finite differences


@settings(max_examples=150, deadline=None)
@given(st.floats(100.0, 1e5), st.floats(-1.0, 1.0), st.floats(0.01, 3.0), st.floats(0.1, 2.0), st.booleans())
def test_greeks_against_central_differences(forward, k, t, vol, is_call):
    strike = forward * math.exp(k)

    def price(f=forward, v=vol):
        return float(ref_price(f, strike, t, v, is_call, dps=50))

    g = black.greeks(forward, strike, t, vol, is_call)
    hf, hv = forward * 1e-5, 1e-5
    with mp.workdps(50):
        d_f = (price(f=forward + hf) - price(f=forward - hf)) / (2 * hf)
        d_v = (price(v=vol + hv) - price(v=vol - hv)) / (2 * hv)
        gamma = (price(f=forward + hf) - 2 * price() + price(f=forward - hf)) / hf**2
        volga = (price(v=vol + hv) - 2 * price() + price(v=vol - hv)) / hv**2
        vanna = (price(f=forward + hf, v=vol + hv) - price(f=forward + hf, v=vol - hv)
                 - price(f=forward - hf, v=vol + hv) + price(f=forward - hf, v=vol - hv)) / (4 * hf * hv)
    scale_p = forward  # price scale: greeks are compared relative to natural magnitudes
    assert abs(float(g["delta"]) - d_f) <= 1e-7
    assert abs(float(g["vega"]) - d_v) <= 1e-7 * scale_p
    assert abs(float(g["gamma"]) - gamma) <= 1e-5 / forward
    assert abs(float(g["volga"]) - volga) <= 1e-5 * scale_p
    assert abs(float(g["vanna"]) - vanna) <= 1e-5


def test_greeks_put_call_relations_and_bad_input():
    f, k, t, v = 100.0, 110.0, 0.5, 0.7
    gc = black.greeks(f, k, t, v, True)
    gp = black.greeks(f, k, t, v, False)
    assert float(gc["delta"]) - float(gp["delta"]) == pytest.approx(1.0, abs=1e-15)
    for name in ("vega", "gamma", "vanna", "volga"):
        assert float(gc[name]) == pytest.approx(float(gp[name]), rel=1e-15)
    bad = black.greeks([100.0, 100.0, -1.0], 100.0, [0.0, 1.0, 1.0], [0.5, 0.0, 0.5], True)
    for arr in bad.values():
        assert np.all(np.isnan(arr))
    # the price function agrees with the mpmath reference
    assert float(black.black_price(f, k, t, v, True)) == pytest.approx(float(ref_price(f, k, t, v, True)), rel=1e-13)


# ------------------------------------------------------------------ the fast path's parts


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(0.0, 60.0), st.floats(1e-12, 1e-3), st.floats(40.0, 1e6)))
def test_erfcx_within_an_ulp(y):
    """Our erfcx(y) = e^{y²}erfc(y) (the price needs no erfc) against mpmath."""
    with mp.workdps(40):
        ref = mp.exp(mp.mpf(y) ** 2) * mp.erfc(mp.mpf(y))
        err = abs((mp.mpf(float(iv._erfcx(y))) - ref) / ref)
    assert err <= 1.5 * EPS, (y, float(err) / EPS)


def test_erfcx_on_a_dense_grid_and_at_the_piece_edges():
    ys = np.concatenate([np.linspace(0.0, 3.0, 301), np.geomspace(3.0, 50.0, 200), [49.999999, 50.0, 50.000001]])
    # the edges of the 32 pieces in z = 4/(4 + y), and just either side of them
    z_edges = iv._ERFCX_Z0 + (1.0 - iv._ERFCX_Z0) * np.arange(33) / 32
    edges = 4.0 / z_edges - 4.0
    ys = np.concatenate([ys, edges, np.nextafter(edges, 0.0), np.nextafter(edges, np.inf)])
    ys = ys[ys >= 0.0]
    worst = 0.0
    with mp.workdps(40):
        for y in ys:
            ref = mp.exp(mp.mpf(float(y)) ** 2) * mp.erfc(mp.mpf(float(y)))
            worst = max(worst, float(abs((mp.mpf(float(iv._erfcx(float(y)))) - ref) / ref)))
    assert worst <= 1.5 * EPS, worst / EPS
    assert iv._erfcx(math.inf) == 0.0


def ref_log_price(x, s, upper):
    """ln b(x, s) or ln(e^{x/2} − b) in extended precision (the normalised OTM call)."""
    with mp.workdps(MP_DPS):
        x, s = mp.mpf(x), mp.mpf(s)
        b = mp.exp(x / 2) * mp.ncdf(x / s + s / 2) - mp.exp(-x / 2) * mp.ncdf(x / s - s / 2)
        return mp.log(mp.exp(x / 2) - b) if upper else mp.log(b)


@settings(max_examples=300, deadline=None)
@given(st.floats(0.0, 6.0), st.floats(1e-4, 20.0), st.booleans())
@example(0.002615706864097499, 0.0001, False)  # x/s = −26 near the money: 1.4 × EPS/a (found 2026-11-22)
def test_price_evaluation_against_mpmath(a, s, upper):
    """The erfcx form of ln b (or ln c) and its slope: the error, read as an error in s, is
    far below the floor (it is what the accepted step inherits). Checked where each form is
    used (its value ≤ half the bound): far past the root only the sign and slope matter."""
    x = -a
    f, f1, kappa = iv._price_eval(x, s, upper, math.exp(0.5 * x))
    ref = ref_log_price(x, s, upper)
    assume(mp.isfinite(ref) and ref > -700)
    # each form is used where its root lies: ln b while b ≤ e^{x/2}/2, ln c above
    assume(float(ref) <= 0.5 * x - math.log(2.0) + 1e-12)
    assert math.isfinite(f) and math.isfinite(f1)
    with mp.workdps(MP_DPS):
        h = mp.mpf(s) * mp.mpf("1e-20")
        slope = (ref_log_price(x, s + float(h), upper) - ref) / h if s + float(h) != s else None
    # error in ln b over |s·d ln b/ds| is the relative error it induces in s
    rel_s = abs(float(mp.mpf(f) - ref)) / abs(s * f1)
    # near the money the rounding of e^{x/2} (relative EPS) is amplified ~1/a: allow 2·EPS/a there
    assert rel_s <= 4e-15 + 2.0 * EPS / max(a, 1e-300), (a, s, upper, rel_s)
    if slope is not None:
        assert abs(f1 - float(slope)) <= 1e-9 * abs(float(slope)) + 1e-300
    assert kappa == pytest.approx(a * a / s**3 - s / 4, rel=1e-12, abs=1e-12)


def test_guess_tables_are_good_to_1e5_for_the_bulk():
    """The tabulated guess is what makes one evaluation enough: check its accuracy directly."""
    tab_flat = iv._tables()
    rng = np.random.default_rng(5)
    n = 20000
    a = rng.uniform(0.0, 3.0, n)
    s_true = np.exp(rng.uniform(math.log(1e-3), math.log(6.0), n))
    x = -a
    ex2p = np.exp(0.5 * x)
    # b(x, s) in double from the solver's own evaluation (exact enough for a 1e-5 check)
    rel = []
    for i in range(n):
        ln_b, _, _ = iv._price_eval(x[i], s_true[i], False, ex2p[i])  # ln β of this s
        if ln_b < -700.0:
            continue  # a subnormal price: no table (nor information) there
        upper = ln_b > 0.5 * x[i] - math.log(2.0)  # β > e^{x/2}/2: the solver's split
        target = iv._price_eval(x[i], s_true[i], True, ex2p[i])[0] if upper else ln_b
        g = iv._table_guess(x[i], upper, target, tab_flat)
        rel.append(abs(g / s_true[i] - 1.0) if g > 0 else math.inf)
    rel = np.array(rel)
    assert len(rel) > 0.5 * n  # the rest are deep-wing prices below 1e-304
    assert np.quantile(rel, 0.5) < 1e-7
    assert np.quantile(rel, 0.98) < 1e-5
    assert np.quantile(rel, 0.999) < 1e-3


def test_blocks_give_the_same_answer_as_one_by_one():
    """The kernel works in blocks and compacts the solvable options: mixing reason codes across
    block edges must not shift any answer."""
    price, forward, strike, t, vol, call, vega = random_options(700, 31)
    rng = np.random.default_rng(32)
    # sprinkle every kind of bad input through the arrays
    for idx, kind in zip(rng.choice(700, 120, replace=False), range(120)):
        if kind % 5 == 0:
            price[idx] = math.nan
        elif kind % 5 == 1:
            t[idx] = -1.0
        elif kind % 5 == 2:
            price[idx] = forward[idx] * 2 + strike[idx]
        elif kind % 5 == 3:
            forward[idx] = 0.0
        else:
            price[idx] = 0.0
    got, status = iv.implied_vol_and_status(price, forward, strike, t, call)
    for i in range(700):
        v1, s1 = iv.implied_vol_and_status(price[i], forward[i], strike[i], t[i], call[i])
        assert int(s1) == int(status[i]), i
        assert (math.isnan(v1) and math.isnan(got[i])) or float(v1) == got[i], i
    assert set(np.unique(status)) >= {iv.OK, iv.BAD_INPUT, iv.EXPIRED, iv.ABOVE_MAX, iv.BELOW_INTRINSIC}


@pytest.mark.parametrize("a,s", [(0.0, 1e-200), (0.0, 1e-20), (0.0, 1e-9), (0.0, 3e-6), (0.0, 5e-6),
                                 (0.0, 1e-4), (1e-10, 1e-9), (1e-10, 3e-6), (1e-10, 5e-6), (1e-10, 1e-4)])
def test_tiny_time_value_near_the_money(a, s):
    """σ√T ≪ 1 at the money: b ≈ s/√(2π) is a difference of two ~1 terms in the erfc/erfcx forms;
    the Bachelier-limit branch keeps it (the old solver answered ~1e-16 for any s below that)."""
    strike = float(math.exp(a))  # the reference prices this double strike exactly
    with mp.workdps(40 - int(math.log10(s))):  # the two Φ's agree to ~s: carry the digits
        f, k, sd = mp.mpf(1), mp.mpf(strike), mp.mpf(s)
        d1 = mp.log(f / k) / sd + sd / 2
        price = float(f * mp.ncdf(d1) - k * mp.ncdf(d1 - sd))  # the OTM call (K ≥ F)
    vol, status = iv.implied_vol_and_status(price, 1.0, strike, 1.0, True)
    assert int(status) == iv.OK, iv.STATUS_NAMES[int(status)]
    assert abs(float(vol) / s - 1.0) <= 1e-10


def test_extreme_but_valid_inputs_give_codes_not_crashes():
    """Ratios F/K that underflow, subnormal prices, huge and tiny t: the table lookups and the
    erfcx pieces must stay in bounds whatever the kernel is handed."""
    tiny, huge = 5e-324, 1.7e308
    price = np.array([1e-300, 1.0, tiny, 1e-310, 0.5, 1e300, 2.0, 1e-200, 3.0, 1.0])
    forward = np.array([1.0, huge, 1.0, 1e-300, 1.0, huge, 1e-300, 1.0, 100.0, 1.0])
    strike = np.array([1.0, tiny, 1.0, 1e300, 1e-300, 1.0, 1e300, 1e200, 100.0, 1.0 + 2e-16])
    t = np.array([1e-300, 1.0, 1.0, 1.0, huge, 1e-12, 1.0, 1.0, 1e-300, 1e300])
    call = np.array([True, False, True, False, True, True, False, True, True, False])
    vol, status = iv.implied_vol_and_status(price, forward, strike, t, call)
    assert set(np.unique(status)) <= set(iv.STATUS_NAMES)
    assert np.array_equal(np.isnan(vol), status != iv.OK)
    assert np.all(vol[status == iv.OK] > 0) and np.all(np.isfinite(vol[status == iv.OK]))
    # the at-the-money ones solve exactly as s/√t with s = √(2π)·β·(1 + O(β²))
    assert int(status[0]) == iv.OK
    assert float(vol[0]) == pytest.approx(math.sqrt(2 * math.pi) * 1e-300 / math.sqrt(1e-300), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), forward=st.floats(1.0, 1e6), t=st.floats(1e-4, 5.0), seed=st.integers(0, 2**32 - 1))
def test_the_chains_flat_call_equals_the_broadcasting_one(n, forward, t, seed):
    rng = np.random.default_rng(seed)
    strikes = forward * np.exp(rng.normal(0.0, 0.5, n))
    prices = rng.uniform(0.0, 0.5, n)
    calls = rng.random(n) < 0.5
    flat = iv.implied_vol_coin_flat(prices, forward, strikes, t, calls)
    np.testing.assert_array_equal(flat, iv.implied_vol_coin(prices, forward, strikes, t, calls))
