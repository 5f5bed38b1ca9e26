"""Vol at size: the prices of a book's levels and of walking it to a size, and their implied vols.

Pure numerics over numpy arrays (numba loops): no I/O, no state, never imports connectors or flows.
Conventions (docs/architecture.md §6): coin-quoted premiums (price_usd = price_coin × forward),
Black-76 on the forward, t_years ACT/365, vols decimals; sizes in the book's own contracts
(Deribit: 1 coin; OKX BTC-USD: 0.01 coin — Instrument.contract_size).

A side of a book is its live levels best first (bids high → low, asks low → high). Walking it to
a size Q takes each level's size in turn until Q is filled; the execution price is the
size-weighted average price Σ pxᵢ·qᵢ / Q, and NaN where the side holds less than Q (the book is
thinner than the size). The execution vol is the implied vol of that price: it is a price like
any other, so the chain solves it (and skips / Taylor-steps it on a forward move) with the same
machinery as the touch (operators/kernels/iv.py, small_moves.py).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from operators.kernels import iv
from operators.kernels.small_moves import s_derivatives_one


def walk_sides(level_px: np.ndarray, level_size: np.ndarray, start: np.ndarray, count: np.ndarray, depth: int,
               sizes_contracts: np.ndarray):
    """Many book sides at once: side r's levels are level_px/level_size[start[r] : start[r] + count[r]],
    best first, sizes > 0.

    Returns (px, size, needed, complete):
      px (R, depth + len(sizes)): the first `depth` level prices (NaN past the side's end), then the
          execution price of each size (NaN where the side is thinner than it);
      size (R, depth): the level sizes (0 past the end);
      needed (R,): how many levels, best first, those prices read (the ladder's and the walks');
      complete (R,): the side has at least `depth` levels and fills every size, so a level worse
          than the last needed one cannot change any of the prices.
    """
    level_px = np.ascontiguousarray(level_px, np.float64)
    level_size = np.ascontiguousarray(level_size, np.float64)
    start = np.ascontiguousarray(start, np.int64)
    count = np.ascontiguousarray(count, np.int64)
    sizes = np.ascontiguousarray(sizes_contracts, np.float64).reshape(-1)
    n = start.shape[0]
    px = np.empty((n, depth + sizes.size))
    size = np.empty((n, depth))
    needed = np.empty(n, np.int64)
    complete = np.empty(n, np.bool_)
    _walk_kernel(level_px, level_size, start, count, int(depth), sizes, px, size, needed, complete)
    return px, size, needed, complete


@nb.njit(cache=True, error_model="numpy")
def _walk_kernel(level_px, level_size, start, count, depth, sizes, out_px, out_size, out_needed, out_complete):
    for r in range(start.shape[0]):
        out_needed[r], out_complete[r] = _walk_one(level_px, level_size, start[r], count[r], depth, sizes, out_px[r],
                                                   out_size[r])


@nb.njit(cache=True, error_model="numpy", inline="always")
def _walk_one(level_px, level_size, a, c, depth, sizes, out_px, out_size):
    """One side: its c levels at level_px/level_size[a:a + c] into out_px (levels, then walks) and
    out_size; returns (needed, complete) as walk_sides documents."""
    for j in range(depth):
        if j < c:
            out_px[j] = level_px[a + j]
            out_size[j] = level_size[a + j]
        else:
            out_px[j] = math.nan
            out_size[j] = 0.0
    needed = depth if depth < c else c
    complete = c >= depth
    for m in range(sizes.shape[0]):
        want = sizes[m]
        left = want
        cost = 0.0
        j = 0
        while j < c and left > 0.0:
            take = level_size[a + j] if level_size[a + j] < left else left
            cost += take * level_px[a + j]
            left -= take  # the last take is `left` itself: left becomes exactly 0
            j += 1
        if left > 0.0 or not want > 0.0:
            out_px[depth + m] = math.nan
            complete = False
        else:
            # an average of the levels walked, within them despite rounding (one level: its price)
            best, worst = level_px[a], level_px[a + j - 1]
            lo, hi = (worst, best) if worst < best else (best, worst)
            vwap = cost / want
            out_px[depth + m] = lo if vwap < lo else (hi if vwap > hi else vwap)
        if j > needed:
            needed = j
    return needed, complete


def read_books(ladder: np.ndarray, n: int, stale: np.ndarray, store_px: np.ndarray, store_sz: np.ndarray,
               count: np.ndarray, sizes_contracts: np.ndarray, lv_px: np.ndarray, lv_size: np.ndarray,
               lv_stale: np.ndarray, reach: np.ndarray, full: np.ndarray, reach_any: int) -> tuple[int, np.ndarray]:
    """The chain's read of its flagged books in one compiled pass: every row r < n with ladder[r]
    (the flag is lowered) is walked from the store (operators/state/book.py: px, sz (2, rows, cap)
    best first, count (2, rows); a `stale` row reads as empty) into lv_px (2, books, depth + sizes)
    and lv_size (2, books, depth); full marks the prices that changed (NaN equal to NaN); reach
    (2, rows) takes how many levels each side's prices read (reach_any where the side is
    incomplete: fewer than depth levels, or a size it cannot fill); lv_stale takes `stale`.
    Returns (books read, the rows whose prices, sizes or staleness changed, ascending)."""
    return _read_books_kernel(ladder, int(n), stale, store_px, store_sz, count,
                              np.ascontiguousarray(sizes_contracts, np.float64), lv_px, lv_size, lv_stale, reach,
                              full, int(reach_any))


@nb.njit(cache=True, error_model="numpy")
def _read_books_kernel(ladder, n, stale, store_px, store_sz, count, sizes, lv_px, lv_size, lv_stale, reach, full,
                       reach_any):
    depth, width = lv_size.shape[2], lv_px.shape[2]
    flat_px, flat_sz = store_px.reshape(-1), store_sz.reshape(-1)
    rows_cap, cap = store_px.shape[1], store_px.shape[2]
    px = np.empty(width)
    size = np.empty(depth)
    moved = np.empty(n, np.int64)
    read = m = 0
    for r in range(n):
        if not ladder[r]:
            continue
        ladder[r] = False
        read += 1
        changed = stale[r] != lv_stale[r]
        lv_stale[r] = stale[r]
        for j in range(2):
            c = 0 if stale[r] else count[j, r]
            needed, complete = _walk_one(flat_px, flat_sz, (j * rows_cap + r) * cap, c, depth, sizes, px, size)
            reach[j, r] = needed if complete else reach_any
            for k in range(width):
                old = lv_px[j, r, k]
                differs = not (px[k] == old or (px[k] != px[k] and old != old))
                full[j, r, k] = differs
                changed |= differs
                lv_px[j, r, k] = px[k]
            for k in range(depth):
                changed |= size[k] != lv_size[j, r, k]
                lv_size[j, r, k] = size[k]
        if changed:
            moved[m] = r
            m += 1
    return read, moved[:m]


def solve_marked(px: np.ndarray, full: np.ndarray, forward: float, t_years: float, x_book: np.ndarray,
                 strike_book: np.ndarray, call_book: np.ndarray, width: int, x0: np.ndarray, s0: np.ndarray,
                 s: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> int:
    """The chain's exact level solve in one compiled pass over flat (2, books, width) arrays (C order):
    every element marked `full` is solved from its coin price at (forward, t_years) and becomes
    an exact point — s0 = s = σ√T, x0 = ln(F/K), s1, s2 = its small-move derivatives
    (small_moves.s_derivatives) — or, with no price (a level gone, a side thinner than a size),
    has no vol (s0 = s = NaN). x_book, strike_book, call_book: ln(F/K), the strike and the call
    flag per book. The same numbers as implied_vol_coin_flat then s_derivatives on the gathered
    elements, without the numpy gathers and scatters between them: a 1-process shock's level solve
    12.6–12.9 → 11.7–11.8 ms over 12 expiries, the solves themselves ~8 ms of it (docs/benchmarks.md,
    "A chain tick's steps as compiled passes"). Updates in place; returns how many solved."""
    return _solve_marked_kernel(px, full, float(forward), float(t_years), x_book, strike_book, call_book, int(width),
                                x0, s0, s, s1, s2, iv.guess_tables())


@nb.njit(cache=True, error_model="numpy")
def _solve_marked_kernel(px, full, forward, t_years, x_book, strike_book, call_book, width, x0, s0, s, s1, s2, tab):
    nbooks = x_book.shape[0]
    m = 0
    for i in range(px.shape[0]):
        if full[i]:
            if px[i] == px[i]:
                m += 1
            else:
                s[i] = s0[i] = math.nan
    idx = np.empty(m, np.int64)
    price_usd = np.empty(m)
    strike = np.empty(m)
    calls = np.empty(m, np.bool_)
    j = 0
    for i in range(px.shape[0]):
        if full[i] and px[i] == px[i]:
            b = (i // width) % nbooks
            idx[j] = i
            price_usd[j] = px[i] * forward
            strike[j] = strike_book[b]
            calls[j] = call_book[b]
            j += 1
    vol = np.empty(m)
    status = np.empty(m, np.int8)
    iv.solve_block(price_usd, np.full(m, forward), strike, np.full(m, t_years), calls, vol, status, tab)
    sqrt_t = math.sqrt(t_years)
    for j in range(m):
        i = idx[j]
        b = (i // width) % nbooks
        total_std = vol[j] * sqrt_t
        x0[i] = x_book[b]
        s0[i] = s[i] = total_std
        s1[i], s2[i] = s_derivatives_one(x_book[b], total_std, call_book[b])
    return m


def ladder_rows(px: np.ndarray, size: np.ndarray, s: np.ndarray, iv_sent: np.ndarray, changed: np.ndarray,
                sqrt_t: float, change_bp: float):
    """The ladders to publish, in one compiled pass over the chain's (2, books, width) arrays: a
    book's row goes out when `changed` (its levels moved) or any of its vols σ = s / √T moved
    beyond change_bp since `iv_sent` (or appeared or went); iv_sent takes the vols sent.
    size: (2, books, depth) level sizes, the first `depth` columns of px the levels, the rest the
    walks. Returns (rows, matrices): the books sent, ascending, and the ten LADDER_MATRICES
    (operators/events.py Ladders) in its field order — rows × depth for the levels, rows × sizes
    for the walks; NaN where there is no value (a non-finite price or vol, a size of 0)."""
    rows = _ladder_rows_kernel(s, iv_sent, changed, float(sqrt_t), float(change_bp))
    return rows, _ladder_matrices_kernel(px, size, s, iv_sent, rows, float(sqrt_t))


@nb.njit(cache=True, error_model="numpy")
def _ladder_rows_kernel(s, iv_sent, changed, sqrt_t, change_bp):
    nbooks, width = s.shape[1], s.shape[2]
    moved = changed.copy()
    for b in range(nbooks):
        k = 0
        while not moved[b] and k < 2 * width:
            v = s[k // width, b, k % width] / sqrt_t
            w = iv_sent[k // width, b, k % width]
            moved[b] = (v != v) != (w != w) or abs(v - w) * 1e4 > change_bp
            k += 1
    return np.flatnonzero(moved)


@nb.njit(cache=True, error_model="numpy")
def _finite_or_nan(v):
    return v if math.isfinite(v) else math.nan


@nb.njit(cache=True, error_model="numpy")
def _ladder_matrices_kernel(px, size, s, iv_sent, rows, sqrt_t):
    m, depth, width = rows.shape[0], size.shape[2], px.shape[2]
    walks = width - depth
    lv = [np.empty((m, depth)) for _ in range(6)]  # bid px, size, iv; ask px, size, iv
    ex = [np.empty((m, walks)) for _ in range(4)]  # bid exec px, iv; ask exec px, iv
    for r in range(m):
        b = rows[r]
        for j in range(2):
            for k in range(width):
                v = s[j, b, k] / sqrt_t
                iv_sent[j, b, k] = v
                if k < depth:
                    lv[3 * j][r, k] = _finite_or_nan(px[j, b, k])
                    q = size[j, b, k]
                    lv[3 * j + 1][r, k] = _finite_or_nan(q) if q > 0 else math.nan
                    lv[3 * j + 2][r, k] = _finite_or_nan(v)
                else:
                    ex[2 * j][r, k - depth] = _finite_or_nan(px[j, b, k])
                    ex[2 * j + 1][r, k - depth] = _finite_or_nan(v)
    return lv[0], lv[1], lv[2], lv[3], lv[4], lv[5], ex[0], ex[1], ex[2], ex[3]


def execution_price(level_px, level_size, size_contracts: float) -> float:
    """The size-weighted average price of walking one side (levels best first) to `size_contracts`;
    NaN where the side holds less."""
    px = np.asarray(level_px, np.float64).reshape(-1)
    out, _, _, _ = walk_sides(px, np.asarray(level_size, np.float64).reshape(-1), np.array([0]),
                              np.array([px.size]), 0, np.array([float(size_contracts)]))
    return float(out[0, 0])


def execution_vol_coin(level_px, level_size, size_contracts: float, forward: float, strike: float, t_years: float,
                       is_call: bool) -> float:
    """The execution vol: the implied vol of walking one side of a coin-quoted book to a size
    (bids for a sale, asks for a purchase; levels best first). NaN where the side is thinner
    than the size or its average price carries no vol (operators/kernels/iv.py's reasons)."""
    price = execution_price(level_px, level_size, size_contracts)
    return float(iv.implied_vol_coin(price, forward, strike, t_years, is_call))


def warm_up() -> None:
    """Compile (or load from the numba cache) the walk, the chain's book read, level solve and
    ladder pass on tiny arrays (tests/operators/kernels/test_levels.py checks none is left to the
    first epoch)."""
    walk_sides(np.array([2.0, 1.0, 3.0]), np.array([1.0, 2.0, 1.0]), np.array([0, 2]), np.array([2, 1]), 2,
               np.array([1.5, 9.0]))
    one = np.array([0.01, math.nan])
    solve_marked(one, np.ones(2, np.bool_), 100.0, 0.5, np.array([0.1]), np.array([90.0]), np.array([True]), 2,
                 *(np.zeros(2) for _ in range(5)))
    ladder_rows(np.ones((2, 1, 2)), np.ones((2, 1, 1)), np.ones((2, 1, 2)), np.zeros((2, 1, 2)), np.zeros(1, np.bool_),
                0.5, 0.1)
    read_books(np.ones(1, np.bool_), 1, np.zeros(1, np.bool_), np.ones((2, 1, 2)), np.ones((2, 1, 2)),
               np.ones((2, 1), np.int64), np.array([1.5]), np.zeros((2, 1, 2)), np.zeros((2, 1, 1)),
               np.ones(1, np.bool_), np.zeros((2, 1), np.int64), np.zeros((2, 1, 2), np.bool_), 1 << 62)
