"""operators/kernels/levels.py against a plain reference: the level prices and the walks to size
(size-weighted average price, NaN where the side is thinner), which levels they read, and the
execution vol (that price's implied vol)."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.kernels import iv, levels
from operators.kernels.black import black_price


def walk_reference(side: list[tuple[float, float]], size: float) -> float:
    """Take levels best first until `size` is filled: Σ px·q / size, NaN if the side is thinner."""
    left, cost = size, 0.0
    for px, q in side:
        take = min(q, left)
        cost += px * take
        left -= take
        if left <= 0:
            return cost / size
    return math.nan


price = st.floats(1e-4, 0.5)
qty = st.floats(0.1, 40.0)
side_st = st.lists(st.tuples(price, qty), max_size=12, unique_by=lambda lv: lv[0])


@settings(max_examples=300, deadline=None)
@given(sides=st.lists(side_st, min_size=1, max_size=6), depth=st.integers(0, 6),
       sizes=st.lists(st.floats(0.1, 100.0), max_size=4), asks=st.booleans())
def test_walk_matches_the_plain_reference(sides, depth, sizes, asks):
    sides = [sorted(s, reverse=not asks) for s in sides]  # best first
    flat = [lv for s in sides for lv in s]
    count = np.array([len(s) for s in sides])
    start = np.cumsum(count) - count
    px, size, needed, complete = levels.walk_sides(np.array([p for p, _ in flat]), np.array([q for _, q in flat]),
                                                   start, count, depth, np.array(sizes))
    for r, side in enumerate(sides):
        for j in range(depth):
            if j < len(side):
                assert px[r, j] == side[j][0] and size[r, j] == side[j][1]
            else:
                assert math.isnan(px[r, j]) and size[r, j] == 0.0
        for m, q in enumerate(sizes):
            ref = walk_reference(side, q)
            got = px[r, depth + m]
            assert (math.isnan(ref) and math.isnan(got)) or abs(got - ref) <= 1e-12 * ref, (got, ref)
            if not math.isnan(ref):  # an average of the levels walked
                assert side[-1][0] <= got <= side[0][0] or side[0][0] <= got <= side[-1][0]
        fills = all(not math.isnan(walk_reference(side, q)) for q in sizes)
        assert complete[r] == (len(side) >= depth and fills)
        # the prices read only the first `needed` levels: whatever lies beyond changes none of them
        if complete[r] and needed[r] < len(side):
            cut = side[:needed[r]]
            for m, q in enumerate(sizes):
                assert walk_reference(cut, q) == walk_reference(side, q)


@settings(max_examples=200, deadline=None)
@given(side=side_st.filter(len), size=st.floats(0.1, 100.0), log_k=st.floats(-0.6, 0.6),
       t=st.floats(0.01, 2.0), is_call=st.booleans())
def test_execution_vol_is_the_vol_of_the_walked_price(side, size, log_k, t, is_call):
    forward = 60_000.0
    strike = forward * math.exp(log_k)
    side = sorted(side)  # an ask side
    got = levels.execution_vol_coin([p for p, _ in side], [q for _, q in side], size, forward, strike, t, is_call)
    ref_px = walk_reference(side, size)
    ref = float(iv.implied_vol_coin(ref_px, forward, strike, t, is_call)) if not math.isnan(ref_px) else math.nan
    assert (math.isnan(ref) and math.isnan(got)) or abs(got - ref) <= 1e-9, (got, ref)


def test_execution_vol_of_one_level_deep_enough_is_its_vol():
    forward, strike, t, vol = 60_000.0, 65_000.0, 0.25, 0.6
    px = float(black_price(forward, strike, t, vol, True)) / forward
    got = levels.execution_vol_coin([px, px * 1.1], [5.0, 5.0], 3.0, forward, strike, t, True)
    assert abs(got - vol) < 1e-9
    assert math.isnan(levels.execution_vol_coin([px], [5.0], 6.0, forward, strike, t, True))  # too thin
    between = levels.execution_vol_coin([px, px * 1.1], [5.0, 5.0], 8.0, forward, strike, t, True)
    assert vol < between < float(iv.implied_vol_coin(px * 1.1, forward, strike, t, True))
