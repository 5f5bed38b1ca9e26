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


@settings(max_examples=300, deadline=None)
@given(data=st.data(), nbooks=st.integers(1, 6), width=st.integers(1, 5), log_f=st.floats(-0.3, 0.3),
       t=st.floats(0.002, 2.0))
def test_the_compiled_level_solve_is_the_plain_solve_then_derivatives(data, nbooks, width, log_f, t):
    """solve_marked over (2, books, width): marked prices solved (the coin price through
    implied_vol_coin_flat, then σ√T and small_moves.s_derivatives there), marked prices that went
    (NaN) lose their vol, unmarked elements untouched — bit for bit."""
    from operators.kernels import small_moves

    strikes = np.array(data.draw(st.lists(st.floats(20_000.0, 120_000.0), min_size=nbooks, max_size=nbooks)))
    calls = np.array(data.draw(st.lists(st.booleans(), min_size=nbooks, max_size=nbooks)))
    n = 2 * nbooks * width
    px = np.array(data.draw(st.lists(st.one_of(st.floats(1e-6, 1.2), st.just(math.nan)), min_size=n, max_size=n)))
    full = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    forward = 60_000.0 * math.exp(log_f)
    x_book = np.log(forward / strikes)
    before = [np.array(data.draw(st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n))) for _ in range(5)]
    x0, s0, s, s1, s2 = (a.copy() for a in before)
    solved = levels.solve_marked(px, full.copy(), forward, t, x_book, strikes, calls, width, x0, s0, s, s1, s2)

    book = (np.arange(n) // width) % nbooks
    priced = full & ~np.isnan(px)
    assert solved == int(priced.sum())
    sel = np.flatnonzero(priced)
    want = [a.copy() for a in before]
    total_std = iv.implied_vol_coin_flat(px[sel], forward, strikes[book[sel]], t, calls[book[sel]]) * math.sqrt(t)
    want[0][sel] = x_book[book[sel]]
    want[1][sel] = want[2][sel] = total_std
    want[3][sel], want[4][sel] = small_moves.s_derivatives(x_book[book[sel]], total_std, calls[book[sel]])
    gone = full & np.isnan(px)
    want[1][gone] = want[2][gone] = math.nan
    for got, ref in zip((x0, s0, s, s1, s2), want):
        np.testing.assert_array_equal(got, ref)


def ladder_rows_reference(px, size, s, iv_sent, changed, sqrt_t, change_bp):
    """The rule as plain numpy steps: vols moved beyond change_bp (or appeared or went) or levels
    changed pick a row; iv_sent takes the rows' vols; matrices NaN where not finite (sizes: ≤ 0)."""
    vols = s / sqrt_t
    with np.errstate(invalid="ignore"):
        moved = (np.abs(vols - iv_sent) * 1e4 > change_bp) | (np.isnan(vols) != np.isnan(iv_sent))
    rows = np.flatnonzero(moved.any(axis=(0, 2)) | changed)
    iv_sent[:, rows] = vols[:, rows]
    depth = size.shape[2]
    fin = lambda a: np.where(np.isfinite(a), a, np.nan)  # noqa: E731
    p, q, v = px[:, rows], np.where(size[:, rows] > 0, size[:, rows], np.nan), vols[:, rows]
    return rows, [fin(p[0, :, :depth]), fin(q[0]), fin(v[0, :, :depth]), fin(p[1, :, :depth]), fin(q[1]),
                  fin(v[1, :, :depth]), fin(p[0, :, depth:]), fin(v[0, :, depth:]), fin(p[1, :, depth:]),
                  fin(v[1, :, depth:])]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), nbooks=st.integers(1, 6), depth=st.integers(1, 4), walks=st.integers(0, 3),
       sqrt_t=st.floats(0.01, 1.5), change_bp=st.floats(0.0, 5.0))
def test_ladder_rows_are_the_plain_rule(data, nbooks, depth, walks, sqrt_t, change_bp):
    width = depth + walks
    value = st.one_of(st.floats(-1.0, 2.0), st.just(math.nan), st.just(math.inf))

    def arr(shape, elements):
        n = int(np.prod(shape))
        return np.array(data.draw(st.lists(elements, min_size=n, max_size=n)), float).reshape(shape)

    px, s = arr((2, nbooks, width), value), arr((2, nbooks, width), value)
    size = arr((2, nbooks, depth), st.one_of(st.floats(-1.0, 50.0), st.just(math.nan), st.just(math.inf)))
    # vols sent: some equal to the vols now, some nudged by less or more than change_bp, some other
    sent = s / sqrt_t + arr((2, nbooks, width), st.sampled_from([0.0, 0.0, 1e-5, 1e-3, math.nan]))
    changed = np.array(data.draw(st.lists(st.booleans(), min_size=nbooks, max_size=nbooks)))
    want_sent = sent.copy()
    want_rows, want = ladder_rows_reference(px, size, s, want_sent, changed, sqrt_t, change_bp)
    rows, got = levels.ladder_rows(px, size, s, sent, changed, sqrt_t, change_bp)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(sent, want_sent)
    assert len(got) == 10
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.flags.c_contiguous
        np.testing.assert_array_equal(g, w)


REACH_ANY = 1 << 62


@settings(max_examples=300, deadline=None)
@given(data=st.data(), nrows=st.integers(1, 6), spare=st.integers(0, 2), depth=st.integers(1, 4),
       sizes=st.lists(st.floats(0.1, 60.0), max_size=3))
def test_read_books_walks_the_flagged_rows_as_walk_sides_does(data, nrows, spare, depth, sizes):
    """read_books against walk_sides row by row: flagged rows (flags lowered) read their sides
    (empty when stale), changed prices are marked, reach and staleness follow, and only rows
    whose prices, sizes or staleness changed are reported; unflagged rows are untouched."""
    cap, width = 5, depth + len(sizes)
    rows_cap = nrows + spare
    store_px, store_sz = np.full((2, rows_cap, cap), math.nan), np.zeros((2, rows_cap, cap))
    count = np.zeros((2, rows_cap), np.int64)
    for r in range(nrows):
        for j in (0, 1):
            side = sorted(data.draw(side_st)[:cap], reverse=j == 0)
            count[j, r] = len(side)
            store_px[j, r, :len(side)] = [p for p, _ in side]
            store_sz[j, r, :len(side)] = [q for _, q in side]
    ladder = np.array(data.draw(st.lists(st.booleans(), min_size=rows_cap, max_size=rows_cap)))
    stale = np.array(data.draw(st.lists(st.booleans(), min_size=rows_cap, max_size=rows_cap)))
    # the last read: some rows as the store holds them now, some different
    lv_px = np.full((2, nrows, width), math.nan)
    lv_size = np.zeros((2, nrows, depth))
    lv_stale = np.array(data.draw(st.lists(st.booleans(), min_size=nrows, max_size=nrows)))
    arrays = (store_px.reshape(-1), store_sz.reshape(-1))
    for r in range(nrows):
        if data.draw(st.booleans()):
            for j in (0, 1):
                start, n = np.array([(j * rows_cap + r) * cap]), np.array([0 if lv_stale[r] else count[j, r]])
                px, size, _, _ = levels.walk_sides(*arrays, start, n, depth, np.array(sizes))
                lv_px[j, r], lv_size[j, r] = px[0], size[0]
            if data.draw(st.booleans()):
                lv_size[:, r] *= 2.0  # the same prices, other sizes
    reach = np.full((2, rows_cap), -1, np.int64)
    want_px, want_size, want_stale, want_reach = lv_px.copy(), lv_size.copy(), lv_stale.copy(), reach.copy()
    want_full, want_moved = np.zeros(lv_px.shape, bool), []
    for r in np.flatnonzero(ladder[:nrows]):
        moved = bool(stale[r] != lv_stale[r])
        for j in (0, 1):
            start, n = np.array([(j * rows_cap + r) * cap]), np.array([0 if stale[r] else count[j, r]])
            px, size, needed, complete = levels.walk_sides(*arrays, start, n, depth, np.array(sizes))
            changed = ~((px[0] == lv_px[j, r]) | (np.isnan(px[0]) & np.isnan(lv_px[j, r])))
            moved |= bool(changed.any() or (size[0] != lv_size[j, r]).any())
            want_full[j, r], want_px[j, r], want_size[j, r] = changed, px[0], size[0]
            want_reach[j, r] = needed[0] if complete[0] else REACH_ANY
        want_stale[r] = stale[r]
        if moved:
            want_moved.append(r)
    full = np.zeros(lv_px.shape, bool)
    flags = ladder.copy()
    read, moved = levels.read_books(flags, nrows, stale, store_px, store_sz, count, np.array(sizes), lv_px, lv_size,
                                    lv_stale, reach, full, REACH_ANY)
    assert read == int(ladder[:nrows].sum())
    np.testing.assert_array_equal(flags, ladder & (np.arange(rows_cap) >= nrows))
    np.testing.assert_array_equal(moved, np.array(want_moved, np.int64))
    for got, want in ((lv_px, want_px), (lv_size, want_size), (lv_stale, want_stale), (reach, want_reach),
                      (full, want_full)):
        np.testing.assert_array_equal(got, want)


def test_warm_up_compiles_every_kernel_a_level_vol_epoch_runs():
    """In a fresh process, per module: after warm_up(), two chain epochs with level vols on (the
    books read, the levels solved and replanned, the touch solved, ladders taken) compile nothing
    more — the first market data never waits on the JIT."""
    from tests.helpers.jit import warm_up_coverage

    for module in ("operators.kernels.levels", "operators.kernels.small_moves", "operators.kernels.books"):
        report = warm_up_coverage(module, level_depth=4, sizes_contracts=(1.0, 10.0))
        assert report["fits"] == 2, (module, report)
        assert any(n > 0 for n in report["before"].values()), (module, report)
        assert report["after"] == report["before"], (module, report)
