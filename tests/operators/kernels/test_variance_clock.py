"""operators.kernels.variance_clock against a plain day-by-day reference."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.kernels import variance_clock as V

DAY = V.MS_PER_DAY


def weighted_plain(start, end, w):
    total, t = 0.0, start
    while t < end:
        nxt = min((t // DAY + 1) * DAY, end)
        weekday = dt.datetime.fromtimestamp(t / 1000, dt.timezone.utc).weekday()
        total += (nxt - t) * (w if weekday >= 5 else 1.0)
        t = nxt
    return total / V.MS_PER_YEAR


@given(st.integers(1_600_000_000_000, 1_900_000_000_000), st.integers(0, 400 * DAY), st.floats(0.0, 1.0))
def test_weighted_years_matches_the_day_by_day_sum(start, length, w):
    assert V.weighted_years(start, start + length, w) == pytest.approx(weighted_plain(start, start + length, w),
                                                                       rel=1e-12, abs=1e-15)
    assert V.weighted_years(start, start + length, 1.0) == pytest.approx(length / V.MS_PER_YEAR, rel=1e-12)


@given(st.lists(st.floats(0.001, 2.0), min_size=2, max_size=8, unique=True), st.floats(0.1, 1.5))
def test_leave_one_out_is_exact_on_a_flat_term_structure(taus, vol):
    tau = np.sort(np.asarray(taus))
    pred = V.leave_one_out_atm(tau, vol * vol * tau)
    assert np.isnan(pred[-1])
    assert pred[:-1] == pytest.approx(vol * vol * tau[:-1], rel=1e-9)


def test_a_bad_weight_is_refused():
    with pytest.raises(ValueError, match="weight from 0 to 1"):
        V.weighted_years(0, DAY, 1.5)
