"""operators.kernels.svi_jw: JW → raw SVI against the raw → JW map (analytics.svi_jw, itself
checked against its definitions in test_analytics.py): the round trip raw → JW → raw."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from operators.kernels import svi
from operators.kernels.svi import SviParams
from operators.kernels.svi_jw import jw_to_raw, raw_to_jw

params_st = st.builds(SviParams, a=st.floats(0.0, 0.1), b=st.floats(0.01, 0.6), rho=st.floats(-0.9, 0.9),
                      m=st.floats(-0.3, 0.3), sigma=st.floats(0.02, 0.6))


def w_plain(p, k):
    a, b, rho, m, s = p
    return a + b * (rho * (k - m) + math.sqrt((k - m) ** 2 + s * s))


@given(params_st, st.floats(0.002, 3.0))
def test_raw_to_jw_to_raw_gives_back_the_smile_and_the_params(p, t):
    assume(svi.min_variance(p) > 1e-4)
    assume(abs(p.rho) > 0.05 or abs(p.m) > 0.01)  # ρ = m = 0 leaves σ unidentified by JW (ṽ = v)
    back = jw_to_raw(*raw_to_jw(p, t), t)
    for k in np.linspace(-2, 2, 41):  # the same total variance everywhere
        assert w_plain(back, k) == pytest.approx(w_plain(p, k), rel=1e-7, abs=1e-10)
    assert back[1] == pytest.approx(p.b, rel=1e-9)
    assert back[2] == pytest.approx(p.rho, abs=1e-9)
    assert back[3] == pytest.approx(p.m, rel=1e-5, abs=1e-7)
    assert back[4] == pytest.approx(p.sigma, rel=1e-5, abs=1e-7)


def test_m_zero_takes_the_beta_zero_branch():
    p = SviParams(0.02, 0.2, -0.4, 0.0, 0.15)
    back = jw_to_raw(*raw_to_jw(p, 0.5), 0.5)
    assert back == pytest.approx(tuple(p), abs=1e-12)


@pytest.mark.parametrize("jw, match", [((0.0, 0.0, 0.1, 0.1, 0.0), "need v > 0"),
                                       ((0.5, 0.0, 0.0, 0.0, 0.1), "p \\+ c > 0"),
                                       ((0.5, 5.0, 0.1, 0.1, 0.1), "must lie in")])
def test_jw_that_is_no_raw_svi_is_refused_naming_the_rule(jw, match):
    with pytest.raises(ValueError, match=match):
        jw_to_raw(*jw, 0.5)
