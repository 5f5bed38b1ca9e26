"""Forward per expiry (operators.kernels.forward): future mid, put-call parity, fallbacks."""

from __future__ import annotations

import csv
import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.kernels import black
from operators.kernels.forward import (METHOD_FUTURE, METHOD_INDEX, METHOD_NONE, METHOD_PARITY,
                               METHOD_UNDERLYING, ForwardEstimate, estimate_forward, parity_bounds)
from tests.helpers.data import SNAPSHOT


def synthetic_chain(forward, t_years, strikes, vol=0.6, half_spread_coin=0.0005, coin=True):
    """Black prices around a known forward, with bid/ask half a spread either side."""
    call = black.black_price(forward, strikes, t_years, vol, True)
    put = black.black_price(forward, strikes, t_years, vol, False)
    if coin:
        call, put = call / forward, put / forward
        hs = half_spread_coin
    else:
        hs = half_spread_coin * forward
    return (np.maximum(call - hs, 0.0), call + hs, np.maximum(put - hs, 0.0), put + hs)


def test_future_mid_wins():
    est = estimate_forward([100.0], [1.0], [2.0], [1.0], [2.0], future_bid=64_000.0, future_ask=64_010.0,
                           underlying_px=63_000.0)
    assert est == ForwardEstimate(64_005.0, METHOD_FUTURE, 0, 10.0)


def test_crossed_or_missing_future_falls_through():
    strikes = np.linspace(50_000, 80_000, 13)
    quotes = synthetic_chain(64_000.0, 0.1, strikes)
    for fb, fa in ((64_100.0, 64_000.0), (None, 64_000.0), (math.nan, 64_000.0), (0.0, 1.0)):
        est = estimate_forward(strikes, *quotes, future_bid=fb, future_ask=fa)
        assert est.method == METHOD_PARITY


@pytest.mark.parametrize("coin", [True, False])
def test_parity_recovers_the_forward(coin):
    forward = 64_123.0
    strikes = np.arange(40_000.0, 90_001.0, 2_500.0)
    quotes = synthetic_chain(forward, 30 / 365, strikes, coin=coin)
    est = estimate_forward(strikes, *quotes, prices_in_coin=coin, underlying_px=63_900.0)
    assert est.method == METHOD_PARITY
    assert est.n_pairs == 6
    # symmetric quotes around true prices: every pair's interval is centred on the truth
    assert est.forward == pytest.approx(forward, rel=1e-9)
    assert 0.0 < est.spread < 0.0021 * forward * 4


def test_coin_parity_formula():
    # one pair: F = K / (1 − (C − P)) with coin premiums; bounds from the quote sides
    f_low, f_high = parity_bounds([60_000.0], [0.12], [0.13], [0.02], [0.025], prices_in_coin=True)
    assert float(f_low[0]) == pytest.approx(60_000.0 / (1 - (0.12 - 0.025)))
    assert float(f_high[0]) == pytest.approx(60_000.0 / (1 - (0.13 - 0.02)))
    f_low, f_high = parity_bounds([60_000.0], [5_000.0], [5_100.0], [900.0], [950.0], prices_in_coin=False)
    assert (float(f_low[0]), float(f_high[0])) == (64_050.0, 64_200.0)


def test_missing_bid_is_zero_missing_ask_drops_the_pair():
    k = [60_000.0, 60_000.0, 60_000.0]
    f_low, f_high = parity_bounds(k, [0.12, 0.12, 0.12], [0.13, np.nan, 0.13], [np.nan, 0.02, 0.02],
                                  [0.025, 0.025, 0.0])
    assert float(f_high[0]) == pytest.approx(60_000.0 / (1 - 0.13))  # put bid counted as 0
    assert np.isnan(f_low[1]) and np.isnan(f_low[2])  # no call ask, no put ask
    # a crossed leg and C − P ≥ 1 coin are unusable too
    f_low, _ = parity_bounds([1.0, 60_000.0], [0.2, 1.2], [0.1, 1.3], [0.0, 0.0], [0.1, 0.1])
    assert np.all(np.isnan(f_low))


def test_fallbacks_and_no_information():
    nan = math.nan
    empty = ([], [], [], [], [])
    assert estimate_forward(*empty, underlying_px=64_000.0) == ForwardEstimate(64_000.0, METHOD_UNDERLYING, 0, nan) \
        or estimate_forward(*empty, underlying_px=64_000.0).method == METHOD_UNDERLYING
    est = estimate_forward([60_000.0], [nan], [nan], [nan], [nan], index_px=63_000.0)
    assert (est.forward, est.method, est.n_pairs) == (63_000.0, METHOD_INDEX, 0)
    est = estimate_forward([60_000.0], [nan], [nan], [nan], [nan], underlying_px=-1.0, index_px=nan)
    assert est.method == METHOD_NONE and math.isnan(est.forward)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=5, max_size=5),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)), st.booleans())
def test_never_raises_on_garbage(vals, fut, und, coin):
    k, cb, ca, pb, pa = ([v, 60_000.0] for v in vals)
    est = estimate_forward(k, cb, ca, pb, pa, future_bid=fut, future_ask=fut, underlying_px=und,
                           prices_in_coin=coin)
    assert est.method in (METHOD_FUTURE, METHOD_PARITY, METHOD_UNDERLYING, METHOD_INDEX, METHOD_NONE)
    assert (est.method == METHOD_NONE) == (not math.isfinite(est.forward))
    if math.isfinite(est.forward):
        assert est.forward > 0


@settings(max_examples=150, deadline=None)
@given(st.floats(1_000.0, 200_000.0), st.floats(2.0 / 365, 1.0), st.floats(0.2, 1.5),
       st.lists(st.floats(0.0, 1.0), min_size=60, max_size=60), st.booleans())
def test_estimate_within_the_widest_used_band_when_quotes_bracket_the_truth(forward, t, vol, us, coin):
    """If every bid ≤ true price ≤ ask, every pair's band holds F: so does the weighted median."""
    strikes = forward * np.exp(np.linspace(-0.5, 0.5, 15))
    call = black.black_price(forward, strikes, t, vol, True)
    put = black.black_price(forward, strikes, t, vol, False)
    if coin:
        call, put = call / forward, put / forward
    u = np.asarray(us).reshape(4, 15)
    spread = 0.002 * (forward if not coin else 1.0)
    cb, ca = call * (1 - 1e-12) - u[0] * spread, call * (1 + 1e-12) + u[1] * spread
    pb, pa = put * (1 - 1e-12) - u[2] * spread, put * (1 + 1e-12) + u[3] * spread
    f_low, f_high = parity_bounds(strikes, cb, ca, pb, pa, prices_in_coin=coin)
    ok = np.isfinite(f_low)
    assert np.all(f_low[ok] <= forward * (1 + 1e-9)) and np.all(f_high[ok] >= forward * (1 - 1e-9))
    est = estimate_forward(strikes, cb, ca, pb, pa, prices_in_coin=coin)
    assert est.method == METHOD_PARITY
    assert abs(est.forward - forward) <= 0.5 * float(np.max(f_high[ok] - f_low[ok])) + 1e-9 * forward


def test_real_snapshot_parity_agrees_with_deribit_underlying():
    by_expiry = defaultdict(dict)
    with SNAPSHOT.open(newline="") as fh:
        for r in csv.DictReader(fh):
            by_expiry[(r["currency"], r["expiry_datetime"])].setdefault(float(r["strike"]), {})[r["option_type"]] = r

    def px(s):
        return float(s) if s else math.nan

    assert len(by_expiry) == 24
    for key, by_strike in by_expiry.items():
        ks = sorted(k for k, v in by_strike.items() if "call" in v and "put" in v)
        legs = [[px(by_strike[k][side][col]) for k in ks]
                for side, col in (("call", "bid_price"), ("call", "ask_price"), ("put", "bid_price"), ("put", "ask_price"))]
        underlying = float(by_strike[ks[0]]["call"]["underlying"])
        est = estimate_forward(ks, *legs, index_px=float(by_strike[ks[0]]["call"]["index_price"]))
        assert est.method == METHOD_PARITY and est.n_pairs >= 3, key
        # Deribit's own forward sits inside our parity band, and within 10 bp of our estimate
        assert abs(est.forward - underlying) <= est.spread, (key, est, underlying)
        assert abs(est.forward / underlying - 1.0) < 10e-4, (key, est, underlying)
