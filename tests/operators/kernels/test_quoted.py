"""operators.kernels.quoted: RR/BF of the bid and ask smiles at the fitted mid smile's delta
strikes, against a plain reference (a loop that finds the bracketing quotes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.kernels import analytics
from operators.kernels import quoted as Q
from operators.kernels.novalue import NoValue
from operators.kernels.strike import StrikeData

FIT = (0.02, 0.12, -0.4, 0.02, 0.15)
T = 0.25
F = 50_000.0


def interp_plain(ks, ivs, k):
    pts = sorted((x, y) for x, y in zip(ks, ivs) if y is not None and not math.isnan(y) and y > 0)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= k <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (k - x0) / (x1 - x0)
    return math.nan


@given(st.lists(st.tuples(st.floats(0.5, 2.0), st.none() | st.floats(0.2, 1.5), st.none() | st.floats(0.2, 1.5)),
                min_size=2, max_size=20, unique_by=lambda x: round(x[0], 6)))
def test_side_rr_bf_match_the_plain_reference(quotes):
    strikes = [F * q[0] for q in quotes]
    data = StrikeData.of(strikes, F, [q[1] for q in quotes], [q[2] for q in quotes])
    for side, col in (("bid", 1), ("ask", 2)):
        ivs = [q[col] for q in quotes]
        ks = list(data.k)
        kc = analytics.k_at_delta(FIT, T, 0.25, True)
        kp = analytics.k_at_delta(FIT, T, 0.25, False)
        c, p, atm = (interp_plain(ks, ivs, kc), interp_plain(ks, ivs, kp), interp_plain(ks, ivs, 0.0))
        ref_bf = 0.5 * (c + p) - atm
        for fn, ref in ((Q.side_risk_reversal, c - p), (Q.side_butterfly, ref_bf)):
            if math.isnan(ref):  # no quote of that side around a strike it needs: no value, not a failure
                with pytest.raises(NoValue, match=f"no {side} quotes"):
                    fn(FIT, data, T, 0.25, side)
            else:
                assert fn(FIT, data, T, 0.25, side) == pytest.approx(ref, abs=1e-12)


@given(st.lists(st.tuples(st.floats(0.5, 2.0), st.none() | st.floats(0.2, 1.5) | st.just(math.nan) | st.just(-0.1)),
                max_size=20, unique_by=lambda x: round(x[0], 6)),
       st.lists(st.floats(-1.0, 1.0) | st.just(math.nan) | st.just(math.inf), max_size=6))
def test_side_vols_at_any_k_match_the_plain_reference(quotes, targets):
    """The compiled reading of a side, at any k, against the plain loop: unsorted strikes, sides
    with holes, non-positive IVs, targets outside the quotes or not finite."""
    data = StrikeData.of([F * q[0] for q in quotes], F, [q[1] for q in quotes], ())
    got = Q.side_vols_at(data, targets, "bid")
    want = [interp_plain(list(data.k), [q[1] for q in quotes], k) if math.isfinite(k) else math.nan for k in targets]
    assert got.shape == (len(targets),)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert all(math.isnan(x) for x in Q.side_vols_at(data, targets, "ask"))  # no ask quotes at all


def test_quotes_on_the_fitted_smile_give_the_fitted_rr_and_bf_and_a_spread_orders_them():
    k = np.linspace(-0.8, 0.6, 57)
    mid = np.sqrt(np.asarray([analytics._smile(FIT).total_variance(x) for x in k]) / T)
    strikes = F * np.exp(k)
    data = StrikeData.of(strikes, F, mid - 0.01, mid + 0.01)  # a flat 2-vol-point spread
    for side in ("bid", "ask"):
        assert Q.side_risk_reversal(FIT, data, T, side=side) == pytest.approx(analytics.risk_reversal(FIT, T), abs=2e-4)
        assert Q.side_butterfly(FIT, data, T, side=side) == pytest.approx(analytics.butterfly(FIT, T), abs=2e-4)
    # a spread that widens in the wings: the bid smile is flatter than the ask smile
    wide = StrikeData.of(strikes, F, mid - 0.01 - 0.05 * k * k, mid + 0.01 + 0.05 * k * k)
    assert Q.side_butterfly(FIT, wide, T, side="bid") < analytics.butterfly(FIT, T) < Q.side_butterfly(FIT, wide, T,
                                                                                                          side="ask")


def test_a_wing_nobody_quotes_has_no_value_and_a_bad_side_is_refused():
    data = StrikeData.of([F * 0.99, F * 1.01], F, (0.5, 0.5), (0.6, 0.6))  # nothing out at 25Δ
    assert math.isnan(Q.side_vol_at(data, analytics.k_at_delta(FIT, T, 0.25, True), "bid"))
    with pytest.raises(NoValue):
        Q.side_risk_reversal(FIT, data, T)
    with pytest.raises(ValueError, match='side = "bid" or side = "ask"'):
        Q.side_risk_reversal(FIT, data, T, side="mid")
