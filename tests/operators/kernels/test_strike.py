"""operators.kernels.strike: per-strike greeks from a fit against plain scalar references
(the Black-76 kernel, finite differences), elementwise on arrays and on one strike alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from operators.kernels import black, svi
from operators.kernels import strike as S
from operators.kernels.svi import SviParams

params_st = st.builds(SviParams, a=st.floats(0.005, 0.1), b=st.floats(0.01, 0.6), rho=st.floats(-0.8, 0.8),
                      m=st.floats(-0.2, 0.2), sigma=st.floats(0.05, 0.6))


def w_plain(p, k):
    a, b, rho, m, s = p
    return a + b * (rho * (k - m) + math.sqrt((k - m) ** 2 + s * s))


@given(params_st, st.floats(0.003, 2.0), st.lists(st.floats(0.5, 2.0), min_size=1, max_size=8))
def test_greeks_match_plain_references_at_every_strike(p, t, moneyness):
    assume(svi.min_variance(p) > 1e-4)
    forward = 50_000.0
    data = S.StrikeData.of([forward * x for x in moneyness], forward)
    vols = S.fitted_vol(p, data, t)
    slopes = S.skew_slope(p, data, t)
    deltas = S.delta(p, data, t)
    puts = S.delta(p, data, t, is_call=False)
    vegas = S.vega(p, data, t)
    for i, x in enumerate(moneyness):
        k = math.log(x)
        vol = math.sqrt(w_plain(p, k) / t)
        assert vols[i] == pytest.approx(vol, rel=1e-12)
        h = 1e-6
        fd = (math.sqrt(w_plain(p, k + h) / t) - math.sqrt(w_plain(p, k - h) / t)) / (2 * h)
        assert slopes[i] == pytest.approx(fd, rel=1e-5, abs=1e-7)
        g = black.greeks(forward, forward * x, t, vol, True)
        assert deltas[i] == pytest.approx(float(g["delta"]), abs=1e-12)
        assert puts[i] == pytest.approx(deltas[i] - 1.0, abs=1e-12)
        assert vegas[i] == pytest.approx(float(g["vega"]) / forward, rel=1e-9)  # coin per coin of notional
        one = S.StrikeData.of([forward * x], forward)  # one strike: the same number
        assert S.fitted_vol(p, one, t)[0] == pytest.approx(vols[i], rel=1e-15)


def test_mid_minus_fit_needs_both_sides():
    p, t, forward = (0.02, 0.1, -0.3, 0.0, 0.2), 0.25, 100.0
    data = S.StrikeData.of([90.0, 100.0, 110.0], forward, bid_iv=(0.5, None, 0.4), ask_iv=(0.6, 0.5, None))
    out = S.mid_minus_fit(p, data, t)
    assert out[0] == pytest.approx(0.55 - S.fitted_vol(p, data, t)[0])
    assert np.isnan(out[1]) and np.isnan(out[2])
