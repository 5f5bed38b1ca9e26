"""operators.kernels.term: the underlying-level term-structure nodes against plain references
(ATM total variance interpolated by hand, the fixed tenors of operators/kernels/calendar.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.kernels import analytics, calendar
from operators.kernels import term as T

DAY = 1 / 365.0


def w0(p):
    a, b, rho, m, s = p
    return a + b * (-rho * m + math.sqrt(m * m + s * s))


@st.composite
def term_fits(draw):
    """2 to 6 expiries between 1 and 400 days, calendar-free at the money (w₀ grows with T)."""
    days = sorted(draw(st.lists(st.integers(1, 400), min_size=2, max_size=6, unique=True)))
    out, w_prev = [], 0.0
    for i, d in enumerate(days):
        vol = draw(st.floats(0.3, 1.2))
        rho = draw(st.floats(-0.7, 0.3))
        w_atm = max(vol * vol * d * DAY, w_prev * 1.01 + 1e-6)
        b = 0.1 * math.sqrt(d * DAY)
        s = 0.2
        a = w_atm - b * s  # m = 0: w(0) = a + bσ
        out.append((d * DAY, (a, b, rho, 0.0, s), 1_700_000_000_000 + i))
        w_prev = w_atm
    return T.TermFits.of(out)


def w_atm_plain(fits, t):
    ts, ws = list(fits.t_years), [w0(p) for p in fits.params]
    if t <= ts[0]:
        return ws[0] * t / ts[0]
    if t >= ts[-1]:
        return ws[-1] * t / ts[-1]
    for i in range(len(ts) - 1):
        if ts[i] <= t <= ts[i + 1]:
            lam = (t - ts[i]) / (ts[i + 1] - ts[i])
            return (1 - lam) * ws[i] + lam * ws[i + 1]


@given(term_fits(), st.integers(1, 200), st.integers(1, 200))
def test_slope_and_forward_vol_match_the_plain_interpolation(fits, d1, d2):
    d1, d2 = min(d1, d2), max(d1, d2)
    if d1 == d2:
        d2 += 1
    t1, t2 = d1 * DAY, d2 * DAY
    v1, v2 = math.sqrt(w_atm_plain(fits, t1) / t1), math.sqrt(w_atm_plain(fits, t2) / t2)
    assert T.atm_term_slope(fits, d1, d2) == pytest.approx((v2 - v1) / (t2 - t1), rel=1e-9, abs=1e-9)
    assert T.atm_vol_at(fits, d1) == pytest.approx(v1, rel=1e-12)
    dw = w_atm_plain(fits, t2) - w_atm_plain(fits, t1)
    fv = T.forward_vol(fits, d1, d2)
    assert fv == pytest.approx(math.sqrt(dw / (t2 - t1)), rel=1e-9)  # calendar-free at the money: dw ≥ 0
    # the forward variance adds up: w(T2) = w(T1) + σ_fwd²(T2 − T1)
    assert w_atm_plain(fits, t1) + fv * fv * (t2 - t1) == pytest.approx(w_atm_plain(fits, t2), rel=1e-9)


@given(term_fits())
def test_rr_slope_agrees_with_the_fixed_tenor_points(fits):
    slices = [(t, tuple(p)) for t, p in zip(fits.t_years, fits.params)]
    p30, p90 = calendar.tenor_points(slices, [30, 90])
    expect = (p90.rr25 - p30.rr25) / (60 * DAY)
    assert T.rr_term_slope(fits, 30, 90) == pytest.approx(expect, rel=1e-9, abs=1e-9)


def test_front_back_slope_skips_missing_expiries_and_wants_two():
    fits = T.TermFits.of([(0.1, (0.01, 0.1, 0, 0, 0.1), 1), (0.2, (0.02, 0.1, 0, 0, 0.1), 2),
                          (0.4, (0.04, 0.1, 0, 0, 0.1), 3)])
    assert T.front_back_slope(fits, np.array([0.5, 0.7, np.nan])) == pytest.approx((0.7 - 0.5) / 0.1)
    assert math.isnan(T.front_back_slope(fits, np.array([np.nan, 0.7, np.nan])))
    with pytest.raises(ValueError, match="t2_days > t1_days"):
        T.atm_term_slope(fits, 90, 30)
    with pytest.raises(ValueError, match="positive number of days"):
        T.forward_vol(fits, 0, 30)
    assert analytics.atm_vol(T.tenor_smile(fits, 0.2), 0.2) == pytest.approx(math.sqrt(0.02 + 0.1 * 0.1) / math.sqrt(0.2))
