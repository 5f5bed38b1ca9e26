"""operators.kernels.calendar: calendar-arbitrage checks, dropping violators, fixed-tenor smiles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.kernels import analytics as A
from operators.kernels import calendar as C
from operators.kernels import svi
from operators.kernels.svi import SviParams

K = C.DEFAULT_K_GRID


def scaled(p: SviParams, f: float) -> SviParams:
    """Total variance scaled by f (same smile shape in vol, longer maturity)."""
    return SviParams(p.a * f, p.b * f, p.rho, p.m, p.sigma)


BASE = SviParams(0.004, 0.03, -0.4, 0.0, 0.1)
T3 = (7 / 365, 30 / 365, 90 / 365)
GOOD = [(T3[0], scaled(BASE, 1.0)), (T3[1], scaled(BASE, 4.0)), (T3[2], scaled(BASE, 12.0))]


def test_increasing_slices_pass_and_worst_is_the_plain_minimum():
    checks = C.calendar_check(GOOD)
    assert [c.ok for c in checks] == [True, True]
    for c, (t1, p1), (t2, p2) in zip(checks, GOOD, GOOD[1:]):
        diff = [svi.total_variance(p2, k) - svi.total_variance(p1, k) for k in K]
        assert c.worst == pytest.approx(min(diff), abs=1e-15)
        assert (c.t1_years, c.t2_years) == (t1, t2)


def test_a_crossing_pair_is_flagged_where_it_crosses():
    # the later slice has more ATM variance but a much flatter left wing: they cross at k < 0
    early = SviParams(0.002, 0.08, -0.9, 0.0, 0.05)
    late = SviParams(0.012, 0.01, 0.0, 0.0, 0.05)
    checks = C.calendar_check([(0.05, early), (0.1, late)])
    assert not checks[0].ok and checks[0].worst < 0 and checks[0].worst_k < 0
    assert svi.total_variance(late, checks[0].worst_k) < svi.total_variance(early, checks[0].worst_k)


def test_drop_calendar_violators_removes_the_bad_expiry_only():
    bad = (60 / 365, scaled(BASE, 2.0))  # between 30d and 90d but below the 30d slice
    items = [GOOD[0], GOOD[1], bad, GOOD[2]]
    assert not all(c.ok for c in C.calendar_check(items))
    kept, dropped = C.drop_calendar_violators(items)
    assert dropped == [2]
    assert kept == [GOOD[0], GOOD[1], GOOD[2]]
    assert all(c.ok for c in C.calendar_check(kept))
    assert C.drop_calendar_violators(GOOD) == (GOOD, [])


def test_tenor_points_exact_at_expiries():
    tenors = C.tenor_points(GOOD, tenors_days=(7, 30, 90))
    for tp, (t, p) in zip(tenors, GOOD):
        assert tp.t_years == t and tp.extrapolated == "" and not tp.calendar_flag
        assert np.array_equal(tp.total_variance, svi.total_variance(p, K))
        assert tp.atm_vol == pytest.approx(A.atm_vol(p, t), rel=1e-14)
        assert tp.rr25 == pytest.approx(A.risk_reversal(p, t), abs=1e-12)
        assert tp.bf25 == pytest.approx(A.butterfly(p, t), abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(8, 89))
def test_tenor_points_linear_in_t_between_expiries(days):
    (tp,) = C.tenor_points(GOOD, tenors_days=(days,))
    t = days / 365
    j = 1 if t <= T3[1] else 2
    (t1, p1), (t2, p2) = GOOD[j - 1], GOOD[j]
    lam = (t - t1) / (t2 - t1)
    for k in (-0.5, 0.0, 0.3):
        expect = (1 - lam) * float(svi.total_variance(p1, k)) + lam * float(svi.total_variance(p2, k))
        assert float(np.interp(k, K, tp.total_variance)) == pytest.approx(expect, rel=1e-9)
    # analytics are on the exact interpolated smile: ATM vol from its k = 0 variance
    w0 = (1 - lam) * float(svi.total_variance(p1, 0.0)) + lam * float(svi.total_variance(p2, 0.0))
    assert tp.atm_vol == pytest.approx(math.sqrt(w0 / t), rel=1e-12)


def test_flat_vol_extrapolation_and_opt_out():
    before, after = C.tenor_points(GOOD, tenors_days=(1, 180))
    vol1 = np.sqrt(svi.total_variance(GOOD[0][1], K) / GOOD[0][0])
    vol3 = np.sqrt(svi.total_variance(GOOD[2][1], K) / GOOD[2][0])
    assert before.extrapolated == "before" and after.extrapolated == "after"
    assert np.allclose(np.sqrt(before.total_variance / (1 / 365)), vol1, rtol=1e-12)
    assert np.allclose(np.sqrt(after.total_variance / (180 / 365)), vol3, rtol=1e-12)
    assert C.tenor_points(GOOD, tenors_days=(1, 30, 180), extrapolate=False)[0] is None
    assert C.tenor_points(GOOD, tenors_days=(1, 30, 180), extrapolate=False)[2] is None
    assert C.tenor_points([], tenors_days=(1, 7)) == [None, None]


def test_tenor_flagged_when_its_pair_has_calendar_arbitrage():
    bad = [GOOD[0], (30 / 365, scaled(BASE, 0.5)), GOOD[2]]  # 30d below 7d
    t7, t14, t60 = C.tenor_points(bad, tenors_days=(7, 14, 60))
    assert t14.calendar_flag  # bracketed by the bad (7d, 30d) pair
    assert t7.calendar_flag  # at an expiry that belongs to the bad pair
    assert not t60.calendar_flag  # (30d, 90d) is fine


def test_bad_inputs_name_the_input():
    with pytest.raises(ValueError, match="increasing"):
        C.calendar_check([GOOD[1], GOOD[0]])
    with pytest.raises(ValueError, match="t_years"):
        C.calendar_check([(-1.0, BASE), GOOD[0]])
    with pytest.raises(ValueError, match="tenors_days"):
        C.tenor_points(GOOD, tenors_days=(0,))
    # (t, forward, params) triples are accepted too
    assert C.calendar_check([(t, 100.0, p) for t, p in GOOD]) == C.calendar_check(GOOD)


@given(st.lists(st.floats(-1.5, 1.5), min_size=1, max_size=20), st.lists(st.floats(-1.5, 1.5), min_size=1, max_size=20),
       st.floats(0.0, 0.05))
def test_pairs_are_checked_on_their_quoted_range_when_given(k1, k2, dip):
    """With k_ranges each pair is checked on pair_grid(its two quoted ranges), worst and
    where exactly as a plain min over that grid; a crossing outside both ranges is not one."""
    p1 = SviParams(0.01, 0.1, -0.3, 0.0, 0.2)
    p2 = SviParams(0.02 - dip, 0.1, -0.3, 0.0, 0.2)  # below p1 by dip − 0.01 everywhere
    items = [(0.2, p1), (0.4, p2)]
    (c,) = C.calendar_check(items, k_ranges=[np.array(k1), np.array(k2)])
    grid = C.pair_grid(k1, k2)
    assert grid[0] == min(k1 + k2) and grid[-1] == max(k1 + k2)
    diff = svi.total_variance(p2, grid) - svi.total_variance(p1, grid)
    assert c.worst == pytest.approx(float(diff.min()), abs=1e-15) and c.worst_k == grid[int(np.argmin(diff))]
    assert c.ok == (diff.min() >= -C.CALENDAR_TOL)
    with pytest.raises(ValueError, match="k_ranges has 1 entries for 2 slices"):
        C.calendar_check(items, k_ranges=[np.array(k1)])
    with pytest.raises(ValueError, match="pair_grid"):
        C.pair_grid([np.nan], [])
