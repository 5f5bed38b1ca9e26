"""Small forward moves without a full IV solve (DESIGN.md §4): skip, Taylor step, or solve.

Pure numerics over numpy arrays: no I/O, no state. Works in normalised Black space, where
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

import numpy as np
from scipy.special import ndtr

SQRT_2PI = np.sqrt(2.0 * np.pi)

FULL, TAYLOR, SKIP = 0, 1, 2


def s_derivatives(x, s, is_call):
    """(s′, s″) with respect to x at fixed coin price, at the point (x, s)."""
    x = np.asarray(x, float)
    s = np.asarray(s, float)
    with np.errstate(all="ignore"):
        d1 = x / s + 0.5 * s
        d2 = d1 - s
        pdf = np.exp(-0.5 * d1 * d1) / SQRT_2PI
        ex = np.exp(-x)
        c_x = np.where(is_call, ex * ndtr(d2), -ex * ndtr(-d2))
        c_s = pdf
        c_ss = pdf * d1 * d2 / s
        c_xs = -pdf * d1 / s
        c_xx = -c_x + pdf / s
        s1 = -c_x / c_s
        s2 = -(c_xx + 2.0 * c_xs * s1 + c_ss * s1 * s1) / c_s
    return s1, s2


def plan_moves(dx, s1, s2, sqrt_t, skip_bp: float, approx_bp: float, taylor2_bp: float):
    """Choose per element: SKIP, TAYLOR or FULL, and the new total std where not FULL.

    dx: x − x0 since the last exact solve; s1, s2: derivatives there; sqrt_t: √T now.
    The first-order move in vol bp decides: below skip_bp keep s0; below approx_bp take
    the second-order step, if its second-order term is itself below taylor2_bp (so the
    neglected third-order term is far smaller); anything else, or non-finite, is FULL.
    Returns (action, ds) where the new s = s0 + ds for SKIP/TAYLOR.
    """
    with np.errstate(all="ignore"):
        first = s1 * dx
        second = 0.5 * s2 * dx * dx
        first_bp = np.abs(first) / sqrt_t * 1e4
        second_bp = np.abs(second) / sqrt_t * 1e4
    finite = np.isfinite(first_bp) & np.isfinite(second_bp)
    skip = finite & (first_bp < skip_bp) & (second_bp < skip_bp)
    taylor = finite & ~skip & (first_bp < approx_bp) & (second_bp < taylor2_bp)
    action = np.where(skip, SKIP, np.where(taylor, TAYLOR, FULL)).astype(np.int8)
    ds = np.where(skip, 0.0, np.where(taylor, first + second, np.nan))
    return action, ds
