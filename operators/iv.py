"""Implied volatility under Black-76 on the forward, undiscounted (coin-margined options).

Pure numerics over numpy arrays (scalars broadcast): no I/O, no bytewax, never imports
connectors or flows. Kernels are numba-compiled with cache=True; call `warm_up()` once at
start-up so the first market data never waits on a compile.

Conventions (DESIGN.md §6): price in the forward's unit (USD for a USD forward; Deribit coin
premiums convert with price_usd = price_coin × forward, see `implied_vol_coin`), t_years
ACT/365, vol a decimal (0.65 = 65 %).

How it solves (our own scheme): every option is mapped to the out-of-the-money call in
normalised coordinates x = −|ln(F/K)| ≤ 0, β = time value / √(F·K), whose price is
    b(x, s) = e^{x/2} Φ(x/s + s/2) − e^{−x/2} Φ(x/s − s/2),   s = σ√T,   0 < b < e^{x/2}.
The root of b(x, s) = β is found by safeguarded Halley steps (a bracket is kept; a step
that leaves it bisects) on a log objective: ln b − ln β where β ≤ e^{x/2}/2, and
ln(e^{x/2} − b) − ln(e^{x/2} − β) above, the complement computed as a sum of two tails so
it never cancels. Both are concave in s, so the steps are monotone once left of the root.
The wing price is a difference of two erfc's: the rounding of their arguments is corrected
to first order (error-free sums and an FMA), which is what keeps hour-dated wings at the
floor; where Φ would underflow an asymptotic Mills-ratio form takes over. The initial guess
comes from asymptotic formulas (lower wing, near the money, upper tail); 2–4 steps reach
the floor |σ − σ_true| ≤ 1e-12 + 4·ε·P/vega.

Status codes (one int8 per element; NaN vol unless OK):
    OK               solved.
    BELOW_INTRINSIC  price ≤ intrinsic value (no time value: no vol information).
    ABOVE_MAX        price ≥ the upper bound (F for a call, K for a put).
    BAD_INPUT        price, forward, strike or t is NaN/inf, price < 0, forward or strike ≤ 0.
    EXPIRED          t_years ≤ 0.
    LOW_INFORMATION  the time value is within 16 ulps of the price (deep in the money: the
                     price is intrinsic up to rounding) or the normalised time value is
                     subnormal: a number could be computed but it would be rounding noise.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

OK = 0
BELOW_INTRINSIC = 1
ABOVE_MAX = 2
BAD_INPUT = 3
EXPIRED = 4
LOW_INFORMATION = 5
STATUS_NAMES = {
    OK: "ok",
    BELOW_INTRINSIC: "below_intrinsic",
    ABOVE_MAX: "above_max",
    BAD_INPUT: "bad_input",
    EXPIRED: "expired",
    LOW_INFORMATION: "low_information",
}

_EPS = 2.220446049250313e-16
_TINY = 2.2250738585072014e-308  # smallest normal double: below it a price has lost bits
_LOW_INFO_ULPS = 16.0
_SQRT_2PI = 2.5066282746310007
_LN_SQRT_2PI = 0.9189385332046728
_INV_SQRT_PI = 0.5641895835477563
_INV_SQRT2 = 0.7071067811865476
_INV_SQRT2_LO = -4.833646656726457e-17  # 1/√2 − _INV_SQRT2
_MAX_ITER = 60
_STEP_RTOL = 1e-5  # Halley is cubic: after a step this small the error is ~1e-15 relative or less


# ------------------------------------------------------------------ scalar building blocks


@intrinsic
def _fma(typingctx, a, b, c):
    """a·b + c with one rounding (the hardware FMA): gives exact product errors."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


@nb.njit(cache=True, error_model="numpy", inline="always")
def _scaled_arg(a, b):
    """(y, e): y = fl((a + b)/√2) and e = (a + b)/√2 − y to second order.

    erfc(y) has relative sensitivity ~2y² to its argument, and the wing price is a
    difference of two erfc's: without this correction the rounding of the arguments alone
    would cost up to ~1e-11 in vol on hour-dated wings (see the module doc).
    """
    u = a + b
    bb = u - a
    e_u = (a - (u - bb)) + (b - bb)  # TwoSum: a + b = u + e_u exactly
    y = u * _INV_SQRT2
    e = _fma(u, _INV_SQRT2, -y) + (u * _INV_SQRT2_LO + e_u * _INV_SQRT2)
    return y, e


@nb.njit(cache=True, error_model="numpy", inline="always")
def _mills(z):
    """R(z) = Φ(−z)/φ(z) for any z (underflow-free for large z)."""
    if z < 6.0:
        return 0.5 * math.erfc(z * _INV_SQRT2) * math.exp(0.5 * z * z) * _SQRT_2PI
    # Continued fraction R(z) = 1/(z + 1/(z + 2/(z + 3/(z + …)))), evaluated backwards.
    acc = z
    for n in range(60, 0, -1):
        acc = z + n / acc
    return 1.0 / acc


@nb.njit(cache=True, error_model="numpy")
def _lnb(x, s, ex2p, ex2m):
    """(ln b(x, s), d ln b / ds) for x ≤ 0; ln b = −inf only if b truly underflows.

    b = ½[e^{x/2} erfc(y1) − e^{−x/2} erfc(y2)], y1 = −d1/√2, y2 = −d2/√2, with the first-order
    correction for the rounding of y1, y2: d erfc(y)/dy = −(2/√π)e^{−y²} and
    e^{x/2}e^{−y1²} = e^{−x/2}e^{−y2²} = e^{−q}, q = (h² + t²)/2 — so one exp serves all.
    """
    h = x / s
    t = 0.5 * s
    q = 0.5 * (h * h + t * t)  # b_s = exp(−q)/√(2π)
    if q - 0.5 * x < 690.0:
        y1, e1 = _scaled_arg(-h, -t)
        y2, e2 = _scaled_arg(t, -h)
        g = math.exp(-q)
        b = 0.5 * (ex2p * math.erfc(y1) - ex2m * math.erfc(y2)) - _INV_SQRT_PI * g * (e1 - e2)
        if b > 0.0:
            return math.log(b), g / (_SQRT_2PI * b)
        if q < 30.0:
            return -math.inf, math.inf
        # else b was lost to cancellation far in the wing: the Mills form below keeps it
    d_r = _mills(-h - t) - _mills(t - h)
    if d_r <= 0.0:
        return -math.inf, math.inf
    return -q - _LN_SQRT_2PI + math.log(d_r), 1.0 / d_r


@nb.njit(cache=True, error_model="numpy")
def _lnc(x, s, ex2p, ex2m):
    """(ln c, d ln c / ds) with c = e^{x/2} − b(x, s), computed as a sum of two tails."""
    h = x / s
    t = 0.5 * s
    q = 0.5 * (h * h + t * t)
    y1, e1 = _scaled_arg(h, t)  # +d1/√2
    y2, e2 = _scaled_arg(t, -h)  # −d2/√2
    g = math.exp(-q)
    c = 0.5 * (ex2p * math.erfc(y1) + ex2m * math.erfc(y2)) - _INV_SQRT_PI * g * (e2 - e1)
    if c > 0.0:
        return math.log(c), -g / (_SQRT_2PI * c)
    return -math.inf, -math.inf


@nb.njit(cache=True, error_model="numpy", inline="always")
def _inv_norm_tail(p):
    """z with Φ(−z) ≈ p for 0 < p ≤ 0.5 (Abramowitz–Stegun 26.2.23, |err| < 4.5e-4)."""
    q = math.sqrt(-2.0 * math.log(p))
    return q - (2.515517 + q * (0.802853 + q * 0.010328)) / (
        1.0 + q * (1.432788 + q * (0.189269 + q * 0.001308)))


@nb.njit(cache=True, error_model="numpy")
def _guess(x, beta, bmax, lnbeta):
    """A starting s for b(x, s) = β, x ≤ 0."""
    ax = -x
    if beta > 0.5 * bmax:
        # upper: c = e^{x/2} − b ≈ Φ(−s/2)(e^{x/2} + e^{−x/2}) when s ≫ |x|/s
        p = (bmax - beta) / (bmax + 1.0 / bmax)
        return 2.0 * _inv_norm_tail(min(p, 0.5))
    # near the money b ≈ s/√(2π) + x/2
    s_atm = _SQRT_2PI * (beta + 0.5 * ax)
    if ax > 0.0 and lnbeta < -1.0:
        # lower wing: ln b ≈ −x²/(2s²) − s²/8 + ln(s³/x²) − ln√(2π), fixed point in s
        a = lnbeta + _LN_SQRT_2PI + 2.0 * math.log(ax)
        s = ax / math.sqrt(-2.0 * lnbeta)
        for _ in range(3):
            den = 3.0 * math.log(s) - 0.125 * s * s - a
            if den <= 0.0:
                break
            s = ax / math.sqrt(2.0 * den)
        if s * s < ax:
            return s
    return s_atm


@nb.njit(cache=True, error_model="numpy")
def _solve_s(x, beta, bmax, ex2p, ex2m):
    """s = σ√T with b(x, s) = β for x ≤ 0, 0 < β < bmax = e^{x/2}."""
    upper = beta > 0.5 * bmax
    if upper:
        target = math.log(bmax - beta)  # exact subtraction (Sterbenz) for β ≥ bmax/2
    else:
        target = math.log(beta)
    s = _guess(x, beta, bmax, math.log(beta))
    lo = 0.0
    hi = math.inf
    x2 = x * x
    for _ in range(_MAX_ITER):
        if not (s > lo and s < hi):
            if hi == math.inf:
                s = 2.0 * lo if lo > 0.0 else 1.0
            elif lo == 0.0:
                s = 0.5 * hi
            else:
                s = 0.5 * (lo + hi)
        if upper:
            f, f1 = _lnc(x, s, ex2p, ex2m)
            f -= target
            small = f > 0.0  # c > c*: b < β, s too small
        else:
            f, f1 = _lnb(x, s, ex2p, ex2m)
            f -= target
            small = f < 0.0
        if f == 0.0:
            return s
        if small:
            lo = s
        else:
            hi = s
        if not (math.isfinite(f) and math.isfinite(f1)) or f1 == 0.0:
            continue  # out of the representable range: the bracket moves us back
        n = -f / f1
        kappa = x2 / (s * s * s) - 0.25 * s  # b_ss / b_s
        den = 1.0 + 0.5 * n * (kappa - f1)
        step = n / den if den > 0.5 else n
        s_new = s + step
        if abs(step) <= _STEP_RTOL * s and s_new > lo and s_new < hi:
            return s_new
        if hi < math.inf and hi - lo <= 4.0 * _EPS * hi:
            return 0.5 * (lo + hi)
        s = s_new
    return s


@nb.njit(cache=True, error_model="numpy")
def _solve_one(price, forward, strike, t_years, is_call):
    """(vol, status) for one option; never raises."""
    if not (math.isfinite(price) and math.isfinite(forward) and math.isfinite(strike)):
        return math.nan, BAD_INPUT
    if math.isnan(t_years) or t_years == math.inf:
        return math.nan, BAD_INPUT
    if price < 0.0 or forward <= 0.0 or strike <= 0.0:
        return math.nan, BAD_INPUT
    if t_years <= 0.0:
        return math.nan, EXPIRED
    if is_call:
        upper_bound = forward
        intrinsic = forward - strike if forward > strike else 0.0
    else:
        upper_bound = strike
        intrinsic = strike - forward if strike > forward else 0.0
    if price >= upper_bound:
        return math.nan, ABOVE_MAX
    time_value = price - intrinsic
    if time_value <= 0.0:
        return math.nan, BELOW_INTRINSIC
    if time_value <= _LOW_INFO_ULPS * _EPS * price:
        return math.nan, LOW_INFORMATION
    x = math.log(forward / strike)
    if x > 0.0:
        x = -x
    root_fk = math.sqrt(forward) * math.sqrt(strike)
    beta = time_value / root_fk
    ex2p = math.exp(0.5 * x)
    ex2m = 1.0 / ex2p
    if beta >= ex2p:
        return math.nan, ABOVE_MAX
    if beta < _TINY:
        return math.nan, LOW_INFORMATION
    s = _solve_s(x, beta, ex2p, ex2p, ex2m)
    vol = s / math.sqrt(t_years)
    if not (vol > 0.0 and math.isfinite(vol)):
        return math.nan, LOW_INFORMATION
    return vol, OK


@nb.njit(cache=True, error_model="numpy")
def _iv_kernel(price, forward, strike, t_years, is_call, out_vol, out_status):
    for i in range(price.shape[0]):
        v, st = _solve_one(price[i], forward[i], strike[i], t_years[i], is_call[i])
        out_vol[i] = v
        out_status[i] = st


# ------------------------------------------------------------------ public API


def _as_call_flags(is_call):
    a = np.asarray(is_call)
    if a.dtype == np.bool_:
        return a
    if a.dtype.kind in "US":
        low = np.char.lower(a.astype(str))
        ok = np.isin(low, ("c", "call", "p", "put"))
        if not ok.all():
            bad = a[~ok].ravel()[0]
            raise ValueError(f"is_call: option type {bad!r} is not one of 'C', 'call', 'P', 'put'; "
                             "pass booleans (True = call) or those strings")
        return np.isin(low, ("c", "call"))
    return a.astype(bool)


def _prepare(price, forward, strike, t_years, is_call):
    arrs = [np.asarray(price, dtype=np.float64), np.asarray(forward, dtype=np.float64),
            np.asarray(strike, dtype=np.float64), np.asarray(t_years, dtype=np.float64),
            _as_call_flags(is_call)]
    shape = arrs[0].shape
    if all(a.shape == shape for a in arrs) and all(a.flags.c_contiguous for a in arrs):
        return shape, [a.reshape(-1) for a in arrs]  # fast path: no copies
    shape = np.broadcast_shapes(*(a.shape for a in arrs))
    return shape, [np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1) for a in arrs]


def implied_vol_and_status(price, forward, strike, t_years, is_call):
    """Solve once: (vol ndarray float64, status ndarray int8), broadcast shape of the inputs.

    price in the forward's unit (USD for a USD forward), t_years ACT/365, is_call bool (or
    'C'/'P'/'call'/'put'). vol is NaN wherever status != OK.
    """
    shape, (p, f, k, t, c) = _prepare(price, forward, strike, t_years, is_call)
    vol = np.empty(p.shape[0], dtype=np.float64)
    status = np.empty(p.shape[0], dtype=np.int8)
    _iv_kernel(p, f, k, t, c, vol, status)
    return vol.reshape(shape), status.reshape(shape)


def implied_vol(price, forward, strike, t_years, is_call):
    """Black-76 implied vol (decimal); NaN where the price carries no vol information."""
    return implied_vol_and_status(price, forward, strike, t_years, is_call)[0]


def implied_vol_status(price, forward, strike, t_years, is_call):
    """The int8 reason code per element (OK, BELOW_INTRINSIC, …) — see the module doc."""
    return implied_vol_and_status(price, forward, strike, t_years, is_call)[1]


def implied_vol_coin(price_coin, forward, strike, t_years, is_call):
    """Implied vol from a coin-quoted premium (Deribit): price_usd = price_coin × forward."""
    price_usd = np.asarray(price_coin, dtype=np.float64) * np.asarray(forward, dtype=np.float64)
    return implied_vol(price_usd, forward, strike, t_years, is_call)


def implied_vol_coin_and_status(price_coin, forward, strike, t_years, is_call):
    price_usd = np.asarray(price_coin, dtype=np.float64) * np.asarray(forward, dtype=np.float64)
    return implied_vol_and_status(price_usd, forward, strike, t_years, is_call)


def warm_up():
    """Compile (or load from the numba cache) and run every kernel on tiny arrays."""
    p = np.array([5.0, 1.0, 0.0, 99.0, 1e-9, 40.0, 2.0, np.nan])
    f = np.array([100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    k = np.array([100.0, 150.0, 90.0, 60.0, 300.0, 60.0, 100.0, 100.0])
    t = np.array([0.5, 1.0, 0.1, 3.0, 0.01, 0.2, -1.0, 1.0])
    c = np.array([True, True, False, True, True, True, False, True])
    implied_vol_and_status(p, f, k, t, c)
