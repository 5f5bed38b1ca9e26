"""Small forward moves without a full IV solve (docs/architecture.md §4): skip, Taylor step, or solve.

Pure numerics over numpy arrays (numba loops): no I/O, no state. Works in normalised Black space, where
a coin-quoted option price c = price_coin (= Black/F) depends only on x = ln(F/K) and the
total standard deviation s = σ√T:

    call: c = N(d1) − e^{−x} N(d2),   put: c = e^{−x} N(−d2) − N(−d1),   d1,2 = x/s ± s/2.

So a change of T alone is exact and free (σ = s/√T), and a forward move with the coin
price unchanged moves s along the implicit curve c(x, s) = const:

    s′ = −c_x / c_s,   s″ = −(c_xx + 2 c_xs s′ + c_ss s′²) / c_s
    c_s = φ(d1), c_ss = φ(d1) d1 d2 / s, c_xs = −φ(d1) d1 / s, c_xx = −c_x + φ(d1)/s,
    c_x = e^{−x} N(d2) (call), −e^{−x} N(−d2) (put).

Steps are always taken from the last exact solve (x0, s0), never chained, so the error
of a skipped or approximated vol is that of one step and never accumulates.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from operators.kernels import iv

SQRT_2PI = math.sqrt(2.0 * math.pi)
SQRT_2 = math.sqrt(2.0)

FULL, TAYLOR, SKIP = 0, 1, 2


def s_derivatives(x, s, is_call):
    """(s′, s″) with respect to x at fixed coin price, at the point (x, s); arrays broadcast."""
    shape, (x, s, is_call) = _flat_args(x, s, is_call)
    s1 = np.empty(x.size)
    s2 = np.empty(x.size)
    _s_derivatives_kernel(x, s, is_call, s1, s2)
    return s1.reshape(shape), s2.reshape(shape)


def plan_moves(dx, s1, s2, sqrt_t, skip_bp: float, approx_bp: float, taylor2_bp: float):
    """Choose per element: SKIP, TAYLOR or FULL, and the new total std where not FULL.

    dx: x − x0 since the last exact solve; s1, s2: derivatives there; sqrt_t: √T now.
    The first-order move in vol bp decides: below skip_bp keep s0; below approx_bp take
    the second-order step, if its second-order term is itself below taylor2_bp (so the
    neglected third-order term is far smaller); anything else, or non-finite, is FULL.
    Returns (action, ds) where the new s = s0 + ds for SKIP/TAYLOR (NaN for FULL).
    """
    shape, (dx, s1, s2) = _flat_args(dx, s1, s2)
    action = np.empty(dx.size, np.int8)
    ds = np.empty(dx.size)
    _plan_kernel(dx, s1, s2, float(sqrt_t), float(skip_bp), float(approx_bp), float(taylor2_bp), action, ds)
    return action.reshape(shape), ds.reshape(shape)


def _flat_args(a, b, c):
    """(broadcast shape, three flat contiguous arrays); the chain passes same-shape arrays
    (no copies), anything else is broadcast. c keeps a bool dtype (call flags)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    c = np.asarray(c)
    c = c if c.dtype == np.bool_ else c.astype(np.float64)
    if not (a.shape == b.shape == c.shape):
        a, b, c = np.broadcast_arrays(a, b, c)
    return a.shape, [np.ascontiguousarray(v).reshape(-1) for v in (a, b, c)]


def warm_up() -> None:
    """Compile (or load from the numba cache) both kernels on tiny arrays."""
    s_derivatives(np.array([0.1, -0.1]), np.array([0.5, 0.5]), np.array([False, True]))
    plan_moves(np.array([1e-4, 1.0]), np.array([1.0, 1.0]), np.array([0.5, 0.5]), 0.5, 0.25, 50.0, 2.0)
    one = np.array([0.01, 0.02])
    replan_levels(one, one, one, one, one, one.copy(), np.zeros(2, np.bool_), np.array([0.1]), np.array([True]), 1,
                  0.5, 0.25, 50.0, 2.0)
    two = np.full((2, 2), 0.01)
    solve_touch(two, np.array([90.0, 110.0]), 100.0, np.log(100.0 / np.array([90.0, 110.0])), np.array([False, True]),
                np.array([True, False]), True, np.array([False, True]), np.zeros(2), two.copy(), two.copy(),
                two.copy(), two.copy(), 0.5, 0.25, 50.0, 2.0, 0.1)


# Elementwise loops in numba: one pass instead of ~20 numpy temporaries (each ~1 µs of call
# overhead on the chain's few hundred strikes, every epoch).
@nb.njit(cache=True, error_model="numpy")
def _s_derivatives_kernel(x, s, is_call, s1_out, s2_out):
    for i in range(x.size):
        s1_out[i], s2_out[i] = s_derivatives_one(x[i], s[i], is_call[i])


@nb.njit(cache=True, error_model="numpy", inline="always")
def s_derivatives_one(xi, si, is_call):
    """(s′, s″) at one point, for compiled callers (levels.solve_marked): s_derivatives' formula."""
    d1 = xi / si + 0.5 * si
    d2 = d1 - si
    pdf = math.exp(-0.5 * d1 * d1) / SQRT_2PI
    ex = math.exp(-xi)
    if is_call:
        c_x = ex * 0.5 * math.erfc(-d2 / SQRT_2)  # e^{−x} N(d2)
    else:
        c_x = -ex * 0.5 * math.erfc(d2 / SQRT_2)  # −e^{−x} N(−d2)
    c_ss = pdf * d1 * d2 / si
    c_xs = -pdf * d1 / si
    c_xx = -c_x + pdf / si
    s1 = -c_x / pdf
    return s1, -(c_xx + 2.0 * c_xs * s1 + c_ss * s1 * s1) / pdf


@nb.njit(cache=True, error_model="numpy")
def _plan_kernel(dx, s1, s2, sqrt_t, skip_bp, approx_bp, taylor2_bp, action, ds):
    for i in range(dx.size):
        action[i], ds[i] = _plan_one(dx[i], s1[i], s2[i], sqrt_t, skip_bp, approx_bp, taylor2_bp)


@nb.njit(cache=True, error_model="numpy", inline="always")
def _plan_one(dx, s1, s2, sqrt_t, skip_bp, approx_bp, taylor2_bp):
    """plan_moves' rule for one element: (action, ds)."""
    first = s1 * dx
    second = 0.5 * s2 * dx * dx
    first_bp = abs(first) / sqrt_t * 1e4
    second_bp = abs(second) / sqrt_t * 1e4
    if not (math.isfinite(first_bp) and math.isfinite(second_bp)):
        return FULL, math.nan
    if first_bp < skip_bp and second_bp < skip_bp:
        return SKIP, 0.0
    if first_bp < approx_bp and second_bp < taylor2_bp:
        return TAYLOR, first + second
    return FULL, math.nan


def solve_touch(prices: np.ndarray, strikes: np.ndarray, forward: float, x: np.ndarray, side_now: np.ndarray,
                dirty: np.ndarray, forward_moved: bool, side: np.ndarray, x0: np.ndarray, s0: np.ndarray,
                s1: np.ndarray, s2: np.ndarray, s: np.ndarray, t_years: float, skip_bp: float, approx_bp: float,
                taylor2_bp: float, change_bp: float) -> tuple[int, int, int, bool]:
    """A chain tick's touch solve in one compiled pass: every slot's published total std s (2, n:
    bid, ask) brought to within 1 bp of an exact solve. `dirty` slots (quotes changed), and after a
    forward move slots whose OTM side flipped or with no exact point, are solved exactly; after a
    forward move the rest skip or take a Taylor step from their exact point (plan_moves), or are
    solved where either quote's plan says FULL, has no vol there, or a put's coin price is not
    below K/F (its upper bound). prices: the OTM coin prices (2, n) on side_now (strike ≥ F: call);
    x = ln(F/K). A slot solved becomes an exact point (side, x0, s0 = s, s1, s2). Updates in
    place; returns (prices solved, skipped, stepped, whether any vol moved beyond change_bp or
    appeared or went)."""
    return _solve_touch_kernel(prices, strikes, float(forward), x, side_now, dirty, bool(forward_moved), side, x0, s0,
                               s1, s2, s, float(t_years), float(skip_bp), float(approx_bp), float(taylor2_bp),
                               float(change_bp), iv.guess_tables())


@nb.njit(cache=True, error_model="numpy")
def _solve_touch_kernel(prices, strikes, forward, x, side_now, dirty, forward_moved, side, x0, s0, s1, s2, s, t_years,
                        skip_bp, approx_bp, taylor2_bp, change_bp, tab):
    n = strikes.shape[0]
    sqrt_t = math.sqrt(t_years)
    old = s.copy()
    full = dirty.copy()
    skipped = stepped = 0
    for i in range(n):
        if full[i] or not forward_moved:
            continue
        if side_now[i] != side[i] or not math.isfinite(x0[i]):
            full[i] = True
            continue
        a0, ds0 = _plan_bounded(prices[0, i], strikes[i], forward, side_now[i], x[i] - x0[i], s0[0, i], s1[0, i],
                                s2[0, i], sqrt_t, skip_bp, approx_bp, taylor2_bp)
        a1, ds1 = _plan_bounded(prices[1, i], strikes[i], forward, side_now[i], x[i] - x0[i], s0[1, i], s1[1, i],
                                s2[1, i], sqrt_t, skip_bp, approx_bp, taylor2_bp)
        if a0 == FULL or a1 == FULL:
            full[i] = True
            continue
        s[0, i] = s0[0, i] + ds0
        s[1, i] = s0[1, i] + ds1
        skipped += (a0 == SKIP) + (a1 == SKIP)
        stepped += (a0 == TAYLOR) + (a1 == TAYLOR)
    m = 0
    for i in range(n):
        m += full[i]
    idx = np.empty(m, np.int64)
    price_usd = np.empty(2 * m)
    strike = np.empty(2 * m)
    calls = np.empty(2 * m, np.bool_)
    k = 0
    for i in range(n):
        if full[i]:
            idx[k] = i
            for j in range(2):
                price_usd[j * m + k] = prices[j, i] * forward
                strike[j * m + k] = strikes[i]
                calls[j * m + k] = side_now[i]
            k += 1
    vol = np.empty(2 * m)
    status = np.empty(2 * m, np.int8)
    iv.solve_block(price_usd, np.full(2 * m, forward), strike, np.full(2 * m, t_years), calls, vol, status, tab)
    for k in range(m):
        i = idx[k]
        side[i] = side_now[i]
        x0[i] = x[i]
        for j in range(2):
            total_std = vol[j * m + k] * sqrt_t
            s0[j, i] = s[j, i] = total_std
            s1[j, i], s2[j, i] = s_derivatives_one(x[i], total_std, side_now[i])
    changed = False
    for j in range(2):
        for i in range(n):
            a, b = s[j, i], old[j, i]
            if abs(a - b) / sqrt_t * 1e4 > change_bp or (a != a) != (b != b):
                changed = True
    return 2 * m, skipped, stepped, changed


@nb.njit(cache=True, error_model="numpy", inline="always")
def _plan_bounded(price, strike, forward, is_call, dx, s0, s1, s2, sqrt_t, skip_bp, approx_bp, taylor2_bp):
    """_plan_one where the quote has a vol at its exact point and, a put, a coin price below K/F."""
    if not (math.isfinite(s0) and (is_call or price < strike / forward)):
        return FULL, math.nan
    return _plan_one(dx, s1, s2, sqrt_t, skip_bp, approx_bp, taylor2_bp)


def replan_levels(px, x0, s0, s1, s2, s, full, x_book, call_book, width: int, sqrt_t: float, skip_bp: float,
                  approx_bp: float, taylor2_bp: float) -> tuple[int, int]:
    """A forward move for the chain's level vols (flat (2, books, width) arrays, C order): every
    element with a price and not already marked `full` is planned from its last exact point as
    plan_moves does — s = s0 + ds on SKIP / TAYLOR — or marked `full` (no vol there yet, a FULL
    plan, or a price within 1e-9 of its intrinsic value or upper bound at the new forward, where
    the exact solver's reasons take over). x_book, call_book: ln(F/K) now and the call flag per
    book. Updates s and full in place; returns (skipped, stepped)."""
    return _replan_kernel(px, x0, s0, s1, s2, s, full, x_book, call_book, int(width), float(sqrt_t), float(skip_bp),
                          float(approx_bp), float(taylor2_bp))


@nb.njit(cache=True, error_model="numpy")
def _replan_kernel(px, x0, s0, s1, s2, s, full, x_book, call_book, width, sqrt_t, skip_bp, approx_bp, taylor2_bp):
    nbooks = x_book.shape[0]
    skipped = stepped = 0
    for i in range(px.shape[0]):
        c = px[i]
        if full[i] or not c == c:
            continue
        if not math.isfinite(s0[i]):
            full[i] = True  # no vol at the old forward: perhaps one now
            continue
        b = (i // width) % nbooks
        x = x_book[b]
        k_f = math.exp(-x)  # K/F
        if call_book[b]:
            intrinsic, upper = max(1.0 - k_f, 0.0), 1.0
        else:
            intrinsic, upper = max(k_f - 1.0, 0.0), k_f
        if not (c - intrinsic > 1e-9 * c and c < upper * (1.0 - 1e-9)):
            full[i] = True
            continue
        action, ds = _plan_one(x - x0[i], s1[i], s2[i], sqrt_t, skip_bp, approx_bp, taylor2_bp)
        if action == SKIP:
            s[i] = s0[i]
            skipped += 1
        elif action == TAYLOR:
            s[i] = s0[i] + ds
            stepped += 1
        else:
            full[i] = True
    return skipped, stepped
