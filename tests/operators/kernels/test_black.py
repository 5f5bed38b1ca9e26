"""black_price against an independent reference: Black-76 evaluated in 50-digit arithmetic
with mpmath (its own normal CDF, no scipy), over the inputs the engine prices.

Many tests use black_price as their expected answer (they price a known smile and check the
IV solver or the SVI fit recovers it), so it must be right on its own terms first.
"""

import math

import mpmath
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.kernels.black import black_price

mpmath.mp.dps = 50

forwards = st.floats(1.0, 200_000.0)
log_moneyness = st.floats(-2.5, 2.5)  # k = ln(K/F): the widest strikes a venue lists
t_years = st.floats(1e-4, 3.0)  # ~1 hour to 3 years
vols = st.floats(0.01, 5.0)


def reference(forward: float, strike: float, t: float, vol: float, is_call: bool) -> mpmath.mpf:
    f, k, s = mpmath.mpf(forward), mpmath.mpf(strike), mpmath.mpf(vol) * mpmath.sqrt(mpmath.mpf(t))
    d1 = mpmath.log(f / k) / s + s / 2
    d2 = d1 - s
    if is_call:
        return f * mpmath.ncdf(d1) - k * mpmath.ncdf(d2)
    return k * mpmath.ncdf(-d2) - f * mpmath.ncdf(-d1)


def tolerance(forward: float, strike: float, price: float) -> float:
    # float64 prices F·N(d1) − K·N(d2): the subtraction of two numbers of size ≤ max(F, K)
    # leaves an absolute error of a few ulps of max(F, K) (measured ≤ 3.5e-16 × max(F, K) over
    # 20,000 draws); on top of that, scipy's ndtr is good to ~1e-15 relative.
    return 4e-15 * max(forward, strike) + 1e-12 * abs(price)


@settings(max_examples=500)
@given(forwards, log_moneyness, t_years, vols, st.booleans())
def test_black_price_matches_the_50_digit_reference(forward, k, t, vol, is_call):
    strike = forward * math.exp(k)
    got = float(black_price(forward, strike, t, vol, is_call))
    want = reference(forward, strike, t, vol, is_call)
    assert abs(got - float(want)) <= tolerance(forward, strike, float(want)), (got, float(want))
    assert got >= -tolerance(forward, strike, 0.0)  # never meaningfully negative


@settings(max_examples=200)
@given(forwards, log_moneyness, t_years, vols)
def test_vectorised_call_equals_the_scalar_calls(forward, k, t, vol):
    """The array path (what the solvers and tests call) gives the scalar answers element-wise."""
    strikes = forward * np.exp(np.array([k, k / 2, 0.0, -k / 2]))
    is_call = np.array([True, False, True, False])
    arr = black_price(forward, strikes, t, vol, is_call)
    for i in range(len(strikes)):
        assert arr[i] == float(black_price(forward, strikes[i], t, vol, bool(is_call[i])))


def test_zero_vol_or_zero_time_is_the_intrinsic_value():
    assert float(black_price(100.0, 90.0, 0.0, 0.5, True)) == 10.0
    assert float(black_price(100.0, 90.0, 0.5, 0.0, False)) == 0.0
    assert float(black_price(100.0, 110.0, 0.0, 0.5, False)) == 10.0
