"""Raw SVI smiles: evaluation, butterfly diagnostics and an arbitrage-free quasi-explicit fit.

Pure numerics over numpy arrays (numba kernels, cache=True): no I/O, no bytewax, never
imports connectors or flows.

Conventions (docs/architecture.md §6): k = ln(K/F) on the forward, total variance w = σ²T with T in
ACT/365 years, vols are decimals (0.65 = 65 %), `*_vol_pts` are vol points (0.65 → 65.0).

Raw SVI:  w(k) = a + b(ρ(k − m) + √((k − m)² + σ²)).
Butterfly-free iff Gatheral's g(k) = (1 − k w′/(2w))² − (w′²/4)(1/w + 1/4) + w″/2 ≥ 0 (and w > 0).

Calibration is quasi-explicit (Zeliade, 2009): for fixed (m, σ) write y = (k − m)/σ and
w = a + d·y + c·√(y² + 1) with c = bσ, d = ρbσ; that is linear in (a, c, d). We solve it
in the rotated coordinates u = c + d = bσ(1 + ρ), v = c − d = bσ(1 − ρ), where the
constraints b ≥ 0, |ρ| ≤ 1 and Lee's moment bound on the wings become a box:

    0 ≤ u ≤ 2σ,  0 ≤ v ≤ 2σ   ⇔   b ≥ 0, |ρ| ≤ 1, b(1 + |ρ|) ≤ 2

(the bound used here is Lee's: the total-variance wing slopes b(1 ± ρ) are at most 2), plus
a ≤ max(w) (Zeliade's cap). The inner problem is a 3-variable box-constrained weighted
least squares, solved exactly by enumerating active sets with a KKT test. The outer
problem over (m, log σ) is a coarse grid scan followed by Nelder–Mead from the best local
minima (cold), or from the previous fit plus a cheap coarse-grid guard (warm).

The inner box does not guarantee g ≥ 0, so every fit is checked on a dense k-grid (the
quoted range with padding, a sinh-spaced grid around m and far wings to |k| = 200, with the
worst grid point refined by golden section). When the best fit has g < 0 the outer search
is re-run with feasibility first (lexicographic: butterfly violation, then error), and if
that still fails the wings are shrunk (b → λb, keeping w at the centre of the data) until
g ≥ 0 — a flat smile always passes, so the returned fit is arbitrage-free by construction.
`SviFit.repaired` says whether the unconstrained optimum had to be given up.

fit_svi_band fits the same model to the bid/ask band first and the mid second (its loss is
said and measured beside BAND_WEIGHT): the inner problem becomes a convex piecewise
quadratic, solved by an active-set Newton loop in _inner; optional floor / ceiling slices
add one-sided calendar bounds on a k-grid (used by operators/kernels/surface.py). Where a slice
keeps under 98.5 % of its quotes in band, fit_svi_band also tries a few variant losses and keeps
the one with the most quotes in band, under a guard on the largest excursion (the "share
rescue", said and measured beside RESCUE_BELOW); a slice still under it gets a smooth local
correction on its quoted range, raw SVI + a cubic B-spline (SplineSvi, the "spline rescue",
said and measured beside SPLINE_BELOW), still butterfly- and calendar-checked as above.

Why one module of ~1400 lines: the numba kernels (inner solve, g-minimum search, objective,
Nelder–Mead, repair) call one another as compiled functions and share private constants
(the m-offset grids, the margin); split across modules they would become public API of each
other and the cache=True compile units would multiply. Everything here is one calibration.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from numba import njit
from scipy.optimize import minimize

from operators.kernels import bspline

# ------------------------------------------------------------------------- parameters


# Stored with every run (runs.methods, flows/runs.py): bump it whenever a change alters the SVI fits
# this module computes, so rows made before and after say which method made them.
METHOD_VERSION = "svi/raw-quasi-explicit/3"  # 3: fit_svi_band's share rescue (issue #17)

class SviParams(NamedTuple):
    """Raw SVI parameters (total variance, not variance): w(k) = a + b(ρ(k−m) + √((k−m)²+σ²)).
    A fit that carries a spline is a SplineSvi instead; spline_* here say "none"."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float

    spline_lo_k = 0.0  # class attributes, not fields (no annotation): a raw-SVI smile has no spline
    spline_hi_k = 0.0
    spline_w = ()

    def raw(self) -> "SviParams":
        return self


class SplineSvi(NamedTuple):
    """Raw SVI plus a smooth local correction on [spline_lo_k, spline_hi_k]:
    w(k) = raw SVI(k) + Σⱼ spline_w[j]·Bⱼ(k), uniform cubic B-splines that vanish with their
    slope and curvature at and beyond both ends (operators/kernels/bspline.py), so the wings
    stay raw SVI's. Only fit_svi_band makes one (the spline rescue, said beside SPLINE_BELOW).
    Its first five fields are SviParams'; raw() is the SVI part alone (the wings, Lee's
    bound, the jump-wings view); unpack with p[:5]."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float
    spline_lo_k: float
    spline_hi_k: float
    spline_w: tuple[float, ...]

    def raw(self) -> SviParams:
        return SviParams(self.a, self.b, self.rho, self.m, self.sigma)


Smile = Union[SviParams, "SplineSvi"]  # what a fit's params are


_RAW = ("a", "b", "rho", "m", "sigma")
_SPLINE = ("spline_lo_k", "spline_hi_k", "spline_w")


def _with_spline(raw: SviParams, lo, hi, coefs) -> Smile:
    c = tuple(float(x) for x in coefs)
    if not c:
        return SviParams(*raw[:5])
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo and all(math.isfinite(x) for x in c)):
        raise ValueError(f"SVI params: spline on [{lo!r}, {hi!r}] with {len(c)} coefficients; pass finite "
                         "spline_lo_k < spline_hi_k and finite spline_w")
    return SplineSvi(*raw[:5], lo, hi, c)


def as_params(obj: Any) -> Smile:
    """Accept SviParams, an SviFit, any object with a, b, rho, m, sigma (e.g. a SmileFit
    event; with spline_lo_k, spline_hi_k, spline_w too where it has them), a 5-sequence
    (a, b, rho, m, sigma) or an 8-sequence (..., spline_lo_k, spline_hi_k, spline_w)."""
    if isinstance(obj, (SviParams, SplineSvi)):
        return obj
    if isinstance(obj, SviFit):
        return obj.params
    if all(hasattr(obj, n) for n in _RAW):
        raw = SviParams(*(float(getattr(obj, n)) for n in _RAW))
        if all(hasattr(obj, n) for n in _SPLINE) and getattr(obj, "spline_w"):
            return _with_spline(raw, *(getattr(obj, n) for n in _SPLINE))
        return raw
    try:
        vals = list(obj)
    except TypeError:
        raise TypeError(f"SVI params: got {type(obj).__name__} {obj!r}; pass (a, b, rho, m, sigma), "
                        "SviParams, an SviFit or an object with those attributes") from None
    if len(vals) == 8:
        return _with_spline(SviParams(*(float(x) for x in vals[:5])), *vals[5:])
    if len(vals) != 5:
        raise ValueError(f"SVI params: got {len(vals)} values {vals!r}; pass exactly (a, b, rho, m, sigma)")
    return SviParams(*(float(x) for x in vals))


def _spline(p: SplineSvi, k, nu: int = 0):
    return bspline.value(p.spline_lo_k, p.spline_hi_k, p.spline_w, k, nu)


def total_variance(params: Any, k) -> np.ndarray:
    """w(k) of SVI params (raw SVI plus its spline, if any) at log-moneyness k (array or scalar)."""
    p = as_params(params)
    a, b, rho, m, sigma = p[:5]
    x = np.asarray(k, float) - m
    w = a + b * (rho * x + np.sqrt(x * x + sigma * sigma))
    return w + _spline(p, k) if p.spline_w else w


_tv = total_variance  # for functions whose argument is named total_variance


def _derivs(params: Any, k):
    p = as_params(params)
    a, b, rho, m, sigma = p[:5]
    k = np.asarray(k, float)
    x = k - m
    r = np.sqrt(x * x + sigma * sigma)
    w = a + b * (rho * x + r)
    w1 = b * (rho + x / r)
    w2 = b * sigma * sigma / (r * r * r)
    if p.spline_w:
        w, w1, w2 = w + _spline(p, k), w1 + _spline(p, k, 1), w2 + _spline(p, k, 2)
    return k, w, w1, w2


def butterfly_g(params: Any, k) -> np.ndarray:
    """Gatheral's g(k) = (1 − k w′/(2w))² − (w′²/4)(1/w + 1/4) + w″/2; −inf where w ≤ 0.

    The density of the terminal price is proportional to g, so g ≥ 0 everywhere (with
    w > 0) is the butterfly no-arbitrage condition for the slice.
    """
    k, w, w1, w2 = _derivs(params, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = (1.0 - k * w1 / (2.0 * w)) ** 2 - 0.25 * w1 * w1 * (1.0 / w + 0.25) + 0.5 * w2
    return np.where(w > 0, g, -np.inf)


def lee_ok(params: Any) -> bool:
    """Lee's moment bound on both wings: b(1 + |ρ|) ≤ 2 (total-variance slopes; a spline never
    reaches the wings)."""
    a, b, rho, m, sigma = as_params(params)[:5]
    return b >= 0 and abs(rho) <= 1 and b * (1 + abs(rho)) <= 2.0 + 1e-12


def min_variance(params: Any) -> float:
    """min_k w(k): raw SVI's a + bσ√(1 − ρ²), or lower where a spline dips below it (its support
    on SPLINE_CHECK_N points)."""
    p = as_params(params)
    a, b, rho, m, sigma = p[:5]
    w_min = a + b * sigma * math.sqrt(max(0.0, 1.0 - rho * rho))
    if p.spline_w:
        w_min = min(w_min, float(total_variance(p, _spline_grid(p)).min()))
    return w_min


# ------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class SviFit:
    """One fitted slice.

    params: raw SVI (SviParams), or SplineSvi where the spline rescue added a spline; rmse_vol_pts: plain RMSE of fitted vs mid vol over the n fitted quotes
    (vol points; with t_years=None vols are √w, i.e. T taken as 1); objective: the weighted
    error actually minimised (≈ weighted mean squared vol error, decimals²);
    butterfly_ok: min_g ≥ 0 and w > 0 on the check grid; min_g, min_g_k: the worst g and
    where; repaired: the unconstrained best fit had g < 0 and was replaced by the
    arbitrage-free one returned here; inside_band_frac/outside_idx: share of two-sided
    quotes whose bid–ask band contains the fit, and the indices (into the input k) of
    those that do not (None/() when no band given); warm: warm-started from `prev`.
    """

    params: Smile
    rmse_vol_pts: float
    n: int
    butterfly_ok: bool
    min_g: float
    min_g_k: float
    repaired: bool
    inside_band_frac: Optional[float]
    outside_idx: tuple[int, ...]
    fit_ms: float
    warm: bool
    t_years: Optional[float]
    objective: float
    lee_ok: bool


# ------------------------------------------------------------------------- numba kernels

_BIG = 1.0e6  # lexicographic offset: any butterfly violation ranks after every valid fit


@njit(cache=True)
def _solve_box3(H, r, lo, hi):
    """min xᵀHx − 2rᵀx subject to lo ≤ x ≤ hi (3 variables) by active-set enumeration.

    Returns x. Each pattern fixes some variables at a bound and solves the normal equations
    for the rest; the first pattern that is primal feasible and satisfies the KKT sign test
    on the fixed gradients is the global minimum (convex problem). Falls back to the best
    feasible candidate if rounding defeats every KKT test.
    """
    best = np.empty(3)
    best_f = np.inf
    x = np.empty(3)
    g = np.empty(3)
    scale = max(H[0, 0], max(H[1, 1], H[2, 2])) + 1e-300
    tol = 1e-10 * scale
    for pat in range(27):
        s0 = pat % 3
        s1 = (pat // 3) % 3
        s2 = pat // 9
        states = (s0, s1, s2)  # 0 free, 1 at lower, 2 at upper
        ok = True
        for i in range(3):
            st = states[i]
            if st == 1:
                if not np.isfinite(lo[i]):
                    ok = False
                x[i] = lo[i]
            elif st == 2:
                if not np.isfinite(hi[i]):
                    ok = False
                x[i] = hi[i]
        if not ok:
            continue
        free = np.empty(3, np.int64)
        nf = 0
        for i in range(3):
            if states[i] == 0:
                free[nf] = i
                nf += 1
        # reduced right-hand side r_F − H_FC x_C
        rhs = np.zeros(3)
        for ii in range(nf):
            i = free[ii]
            acc = r[i]
            for j in range(3):
                if states[j] != 0:
                    acc -= H[i, j] * x[j]
            rhs[ii] = acc
        if nf == 1:
            i = free[0]
            if H[i, i] <= 1e-14 * scale:
                continue
            x[i] = rhs[0] / H[i, i]
        elif nf == 2:
            i = free[0]
            j = free[1]
            det = H[i, i] * H[j, j] - H[i, j] * H[i, j]
            if det <= 1e-12 * H[i, i] * H[j, j] or det <= 0.0:
                continue
            x[i] = (H[j, j] * rhs[0] - H[i, j] * rhs[1]) / det
            x[j] = (H[i, i] * rhs[1] - H[i, j] * rhs[0]) / det
        elif nf == 3:
            h00, h01, h02 = H[0, 0], H[0, 1], H[0, 2]
            h11, h12, h22 = H[1, 1], H[1, 2], H[2, 2]
            c00 = h11 * h22 - h12 * h12
            c01 = h02 * h12 - h01 * h22
            c02 = h01 * h12 - h02 * h11
            det = h00 * c00 + h01 * c01 + h02 * c02
            if det <= 1e-12 * h00 * h11 * h22 or det <= 0.0:
                continue
            c11 = h00 * h22 - h02 * h02
            c12 = h01 * h02 - h00 * h12
            c22 = h00 * h11 - h01 * h01
            x[0] = (c00 * rhs[0] + c01 * rhs[1] + c02 * rhs[2]) / det
            x[1] = (c01 * rhs[0] + c11 * rhs[1] + c12 * rhs[2]) / det
            x[2] = (c02 * rhs[0] + c12 * rhs[1] + c22 * rhs[2]) / det
        feasible = True
        for i in range(3):
            span = hi[i] - lo[i] if np.isfinite(hi[i] - lo[i]) else 1.0
            eps = 1e-12 * (abs(span) + 1.0)
            if x[i] < lo[i] - eps or x[i] > hi[i] + eps:
                feasible = False
        if not feasible:
            continue
        for i in range(3):
            x[i] = min(max(x[i], lo[i]), hi[i])
        kkt = True
        for i in range(3):
            gi = -r[i]
            for j in range(3):
                gi += H[i, j] * x[j]
            g[i] = gi
            if states[i] == 1 and gi < -tol:
                kkt = False
            elif states[i] == 2 and gi > tol:
                kkt = False
        if kkt:
            return x.copy()
        f = 0.0
        for i in range(3):
            f += x[i] * (g[i] - r[i])  # xᵀHx − 2rᵀx = xᵀ(Hx − r) − rᵀx
        if f < best_f:
            best_f = f
            best[:] = x
    if best_f == np.inf:
        best[0] = 0.0
        best[1] = 0.0
        best[2] = 0.0
        if np.isfinite(lo[0]):
            best[0] = lo[0]
    return best


@njit(cache=True)
def _pq(k, m, sig, P, Q):
    for i in range(k.size):
        y = (k[i] - m) / sig
        z = math.sqrt(y * y + 1.0)
        # p = (z + y)/2, q = (z − y)/2 with p·q = 1/4, computed without cancellation
        if y >= 0.0:
            p = 0.5 * (z + y)
            q = 0.25 / p
        else:
            q = 0.5 * (z - y)
            p = 0.25 / q
        P[i] = p
        Q[i] = q


@njit(cache=True)
def _model(P, Q, W, wt, lo_b, hi_b, wband, hub, state, banded, H, r):
    """The quadratic Σ wt(w − W)² (+ each point's band piece as `state` reads it) as
    xᵀHx − 2rᵀx + sww over x = (a, u, v); fills H and r, returns sww."""
    H[:, :] = 0.0
    r[:] = 0.0
    sww = 0.0
    for i in range(P.size):
        c = wt[i]
        ct = c * W[i]
        ctt = ct * W[i]
        p = P[i]
        q = Q[i]
        if banded and state[i] != 0:
            st = state[i]
            if st <= 2:
                bnd = lo_b[i] if st == 1 else hi_b[i]
                c += wband[i]
                ct += wband[i] * bnd
                ctt += wband[i] * bnd * bnd
            else:  # linear piece: ∓2·hub·wband·w, i.e. ±hub·wband on r
                g = wband[i] * hub[i] if st == 3 else -wband[i] * hub[i]
                r[0] += g
                r[1] += g * p
                r[2] += g * q
        H[0, 0] += c
        H[0, 1] += c * p
        H[0, 2] += c * q
        H[1, 1] += c * p * p
        H[1, 2] += c * p * q
        H[2, 2] += c * q * q
        r[0] += ct
        r[1] += p * ct
        r[2] += q * ct
        sww += ctt
    H[1, 0] = H[0, 1]
    H[2, 0] = H[0, 2]
    H[2, 1] = H[1, 2]
    return sww


@njit(cache=True)
def _band_loss(x, P, Q, W, wt, lo_b, hi_b, wband, hub, state):
    """The true banded loss at x; writes each point's piece into `state`, returns
    (loss, whether any piece changed)."""
    f = 0.0
    changed = False
    for i in range(P.size):
        wf = x[0] + x[1] * P[i] + x[2] * Q[i]
        e = wf - W[i]
        f += wt[i] * e * e
        st = 0
        d = 0.0
        if wf < lo_b[i]:
            d = lo_b[i] - wf
            st = 1
        elif wf > hi_b[i]:
            d = wf - hi_b[i]
            st = 2
        if st != 0:
            if d < hub[i]:
                f += wband[i] * d * d
            else:
                f += wband[i] * hub[i] * (2.0 * d - hub[i])
                st += 2
        if st != state[i]:
            changed = True
            state[i] = st
    return f, changed


@njit(cache=True)
def _band_slope(x, dx, t, P, Q, W, wt, lo_b, hi_b, wband, hub):
    """Half the first and second derivative in t of the banded loss at x + t·dx."""
    g = 0.0
    h = 0.0
    for i in range(P.size):
        s = dx[0] + dx[1] * P[i] + dx[2] * Q[i]
        wf = x[0] + x[1] * P[i] + x[2] * Q[i] + t * s
        g += wt[i] * (wf - W[i]) * s
        h += wt[i] * s * s
        d = 0.0
        sgn = 0.0
        if wf < lo_b[i]:
            d = lo_b[i] - wf
            sgn = -1.0
        elif wf > hi_b[i]:
            d = wf - hi_b[i]
            sgn = 1.0
        if sgn != 0.0:
            if d < hub[i]:
                g += sgn * wband[i] * d * s
                h += wband[i] * s * s
            else:
                g += sgn * wband[i] * hub[i] * s
    return g, h


@njit(cache=True)
def _line_search(x, dx, P, Q, W, wt, lo_b, hi_b, wband, hub):
    """Exact minimiser over t ∈ [0, 1] of the banded loss along x + t·dx. The loss is convex
    and C¹ in t with a piecewise-linear slope, so a Newton step on the slope, kept inside a
    shrinking bracket (bisection when it leaves it), lands on the root in a few steps."""
    g1, _ = _band_slope(x, dx, 1.0, P, Q, W, wt, lo_b, hi_b, wband, hub)
    if g1 <= 0.0:
        return 1.0
    g0, h0 = _band_slope(x, dx, 0.0, P, Q, W, wt, lo_b, hi_b, wband, hub)
    if g0 >= 0.0:
        return 0.0
    t_lo = 0.0
    t_hi = 1.0
    t = -g0 / h0 if h0 > 0.0 else 0.5
    for _ in range(60):
        if not (t_lo < t < t_hi):
            t = 0.5 * (t_lo + t_hi)
        g, h = _band_slope(x, dx, t, P, Q, W, wt, lo_b, hi_b, wband, hub)
        if abs(g) <= 1e-12 * -g0:
            return t  # the slope is rounding noise here: t is the minimum
        if g > 0.0:
            t_hi = t
        else:
            t_lo = t
        if t_hi - t_lo <= 1e-15:
            break
        t = t - g / h if h > 0.0 else 0.5 * (t_lo + t_hi)
    return t_lo if t_lo > 0.0 else t_hi


@njit(cache=True)
def _inner(k, W, wt, lo_b, hi_b, wband, hub, a_hi, m, sig):
    """Best (a, u, v) for fixed (m, σ): returns (loss, a, u, v).

    Plain (wband empty): weighted least squares Σ wtᵢ(wᵢ − Wᵢ)², solved once.
    Banded (lo_b, hi_b, wband, hub: one entry per point): loss Σ wtᵢ(wᵢ − Wᵢ)² +
    Σ wbandᵢ·h(dᵢ; hubᵢ) with dᵢ the distance of wᵢ outside [lo_bᵢ, hi_bᵢ] and h Huber's
    hinge: d² for d < hub, 2·hub·d − hub² beyond (hub = inf: the squared hinge). Convex, C¹
    and piecewise quadratic in (a, u, v); solved by a damped semismooth Newton loop: each
    pass reads which side and piece every point is on at the current x and solves that
    quadratic exactly in the box; it moves there when that lowers the true loss, else to the
    exact minimum of the true loss on the segment towards it. Full steps alone can cycle
    between two piece patterns and stop 3 % above the minimum (hypothesis found one on 5
    points); with the line search every pass descends, so the loop ends at the
    box-constrained minimum. Trying the full step first keeps the warm fit at the speed of
    plain Newton (line search on every pass: 0.49 ms warm, 2.0 cold per 100-strike slice
    against 0.37 / 1.3, bench_surface 2026-12-05 21:14 UTC).
    """
    n = k.size
    P = np.empty(n)
    Q = np.empty(n)
    _pq(k, m, sig, P, Q)
    lo = np.array([-np.inf, 0.0, 0.0])
    hi = np.array([a_hi, 2.0 * sig, 2.0 * sig])
    banded = wband.size == n
    # 0 inside (or no band); 1 / 2 below / above on the quadratic piece; 3 / 4 on the linear one
    state = np.zeros(n, np.int8)
    H = np.zeros((3, 3))
    r = np.zeros(3)
    sww = _model(P, Q, W, wt, lo_b, hi_b, wband, hub, state, banded, H, r)
    x = _solve_box3(H, r, lo, hi)
    if not banded:
        f = sww
        for i in range(3):
            hx = 0.0
            for j in range(3):
                hx += H[i, j] * x[j]
            f += x[i] * hx - 2.0 * r[i] * x[i]
        return max(f, 0.0), x[0], x[1], x[2]
    f, changed = _band_loss(x, P, Q, W, wt, lo_b, hi_b, wband, hub, state)
    dx = np.zeros(3)
    for _ in range(64):
        if not changed:
            break  # x minimises the quadratic of the pieces it sits on: the minimum
        _model(P, Q, W, wt, lo_b, hi_b, wband, hub, state, banded, H, r)
        y = _solve_box3(H, r, lo, hi)
        step = 0.0
        for j in range(3):
            dx[j] = y[j] - x[j]
            step = max(step, abs(dx[j]) / (abs(x[j]) + 1e-12))
        if step <= 1e-13:
            break
        f_new, changed = _band_loss(y, P, Q, W, wt, lo_b, hi_b, wband, hub, state)
        if f_new < f:  # the full step descends: take it (as a plain Newton pass would)
            x[:] = y
            f = f_new
            continue
        t = _line_search(x, dx, P, Q, W, wt, lo_b, hi_b, wband, hub)
        if t <= 0.0:
            _band_loss(x, P, Q, W, wt, lo_b, hi_b, wband, hub, state)
            break
        for j in range(3):
            x[j] = min(max(x[j] + t * dx[j], lo[j]), hi[j])
        f_new, changed = _band_loss(x, P, Q, W, wt, lo_b, hi_b, wband, hub, state)
        if t < 1.0:
            changed = True  # a damped step ends off the model's minimum: take another pass
        stalled = f_new >= f * (1.0 - 1e-15) and t < 1.0
        f = f_new
        if stalled:
            break
    return f, x[0], x[1], x[2]


@njit(cache=True)
def _raw(a, u, v, m, sig):
    c = 0.5 * (u + v)
    d = 0.5 * (u - v)
    b = c / sig
    rho = d / c if c > 0.0 else 0.0
    return a, b, rho, m, sig


@njit(cache=True)
def _g_at(a, b, rho, m, sig, k):
    x = k - m
    rr = math.sqrt(x * x + sig * sig)
    w = a + b * (rho * x + rr)
    if w <= 0.0:
        return -1.0e3 - (-w if w < 0.0 else 0.0)
    w1 = b * (rho + x / rr)
    w2 = b * sig * sig / (rr * rr * rr)
    t = 1.0 - k * w1 / (2.0 * w)
    return t * t - 0.25 * w1 * w1 * (1.0 / w + 0.25) + 0.5 * w2


@njit(cache=True)
def _refine_min(a, b, rho, m, sig, lo, hi, gbest, kbest, rel_tol):
    """Golden-section search for the minimum of g on [lo, hi] (to rel_tol of the bracket)."""
    invphi = 0.6180339887498949
    x1 = hi - invphi * (hi - lo)
    x2 = lo + invphi * (hi - lo)
    f1 = _g_at(a, b, rho, m, sig, x1)
    f2 = _g_at(a, b, rho, m, sig, x2)
    tol = rel_tol * (hi - lo)
    for _ in range(80):
        if f1 < f2:
            hi = x2
            x2 = x1
            f2 = f1
            x1 = hi - invphi * (hi - lo)
            f1 = _g_at(a, b, rho, m, sig, x1)
        else:
            lo = x1
            x1 = x2
            f1 = f2
            x2 = lo + invphi * (hi - lo)
            f2 = _g_at(a, b, rho, m, sig, x2)
        if hi - lo < tol:
            break
    if f1 < gbest:
        gbest, kbest = f1, x1
    if f2 < gbest:
        gbest, kbest = f2, x2
    return gbest, kbest


_M_OFFSETS = np.concatenate([-np.geomspace(16.0, 1.0 / 64.0, 25), [0.0], np.geomspace(1.0 / 64.0, 16.0, 25)])
_M_OFFSETS_COARSE = np.concatenate([-np.geomspace(16.0, 1.0 / 16.0, 13), [0.0], np.geomspace(1.0 / 16.0, 16.0, 13)])
# The search uses a coarse grid without refinement and this margin on g; the result is
# then re-checked on the dense, refined grid (and the search repeated with a larger margin
# in the rare case that the dense check disagrees).
_SEARCH_MARGIN = 1e-6


@njit(cache=True)
def _min_g(a, b, rho, m, sig, gk, moff, rel_tol=1e-13):
    """Min of g over the fixed sorted grid gk and the grid m + σ·moff; the lowest grid point
    on each side of m (g has up to one dip per wing) is refined by golden section to
    rel_tol of its bracket (rel_tol = 0: no refinement). Returns (min g, k at the min).
    w itself is checked in closed form first: min w = a + b·σ·√(1 − ρ²), reached at
    k − m = −ρσ/√(1 − ρ²) — with |ρ| → 1 beyond any grid (a = −5e-6, ρ = 1 made w < 0 only
    for k < −1000; hypothesis found it), so a negative minimum is flagged as g is (−1e3 − |w|)."""
    w_min = a + b * sig * math.sqrt(max(1.0 - rho * rho, 0.0))
    if w_min < 0.0:
        c = math.sqrt(max(1.0 - rho * rho, 1e-300))
        return -1.0e3 + w_min, m - max(min(rho * sig / c, 1e12), -1e12)
    gbest = np.inf
    kbest = 0.0
    for pass_ in range(2):
        n = gk.size if pass_ == 0 else moff.size
        i_l = -1
        i_r = -1
        v_l = np.inf
        v_r = np.inf
        for i in range(n):
            kk = gk[i] if pass_ == 0 else m + sig * moff[i]
            gv = _g_at(a, b, rho, m, sig, kk)
            if kk < m:
                if gv < v_l:
                    v_l = gv
                    i_l = i
            elif gv < v_r:
                v_r = gv
                i_r = i
        for side in range(2):
            imin = i_l if side == 0 else i_r
            vmin = v_l if side == 0 else v_r
            if imin < 0:
                continue
            if vmin < gbest:
                gbest = vmin
                kbest = gk[imin] if pass_ == 0 else m + sig * moff[imin]
            if rel_tol > 0.0 and vmin > -1.0e3:  # refine real minima, not the w ≤ 0 flag
                il = max(imin - 1, 0)
                ih = min(imin + 1, n - 1)
                klo = gk[il] if pass_ == 0 else m + sig * moff[il]
                khi = gk[ih] if pass_ == 0 else m + sig * moff[ih]
                if khi > klo:
                    gbest, kbest = _refine_min(a, b, rho, m, sig, klo, khi, gbest, kbest, rel_tol)
    return gbest, kbest


@njit(cache=True)
def _objective(k, W, wt, lo_b, hi_b, wband, hub, a_hi, m, ls, strict, gk, moff, margin):
    sig = math.exp(ls)
    f, a, u, v = _inner(k, W, wt, lo_b, hi_b, wband, hub, a_hi, m, sig)
    if strict:
        a_, b_, rho_, m_, s_ = _raw(a, u, v, m, sig)
        gmin, _ = _min_g(a_, b_, rho_, m_, s_, gk, moff, 1e-5)
        if gmin < margin:
            return _BIG + (margin - gmin), a, u, v
    return f, a, u, v


@njit(cache=True)
def _grid_scan(k, W, wt, lo_b, hi_b, wband, hub, a_hi, m_grid, ls_grid):
    out = np.empty((m_grid.size, ls_grid.size))
    for i in range(m_grid.size):
        for j in range(ls_grid.size):
            out[i, j] = _inner(k, W, wt, lo_b, hi_b, wband, hub, a_hi, m_grid[i], math.exp(ls_grid[j]))[0]
    return out


@njit(cache=True)
def _nelder_mead(k, W, wt, lo_b, hi_b, wband, hub, a_hi, x0, step, lo, hi, strict, gk, moff, margin, maxiter, xtol,
                 ftol):
    """2-D Nelder–Mead over (m, log σ), clamped to the box [lo, hi]. Returns (m, ls, f, nfev)."""
    P = np.empty((3, 2))
    F = np.empty(3)
    P[0, 0], P[0, 1] = x0[0], x0[1]
    P[1, 0], P[1, 1] = x0[0] + step[0], x0[1]
    P[2, 0], P[2, 1] = x0[0], x0[1] + step[1]
    for i in range(3):
        for d in range(2):
            P[i, d] = min(max(P[i, d], lo[d]), hi[d])
        F[i] = _objective(k, W, wt, lo_b, hi_b, wband, hub, a_hi, P[i, 0], P[i, 1], strict, gk, moff, margin)[0]
    nfev = 3
    xr = np.empty(2)
    xe = np.empty(2)
    xc = np.empty(2)
    for _ in range(maxiter):
        # order
        for i in range(1, 3):
            j = i
            while j > 0 and F[j] < F[j - 1]:
                F[j], F[j - 1] = F[j - 1], F[j]
                for d in range(2):
                    P[j, d], P[j - 1, d] = P[j - 1, d], P[j, d]
                j -= 1
        size = max(abs(P[1, 0] - P[0, 0]) + abs(P[2, 0] - P[0, 0]),
                   abs(P[1, 1] - P[0, 1]) + abs(P[2, 1] - P[0, 1]))
        if size < xtol and abs(F[2] - F[0]) <= ftol * (abs(F[0]) + 1e-300):
            break
        if size < 1e-3 * xtol:
            break
        cx = 0.5 * (P[0, 0] + P[1, 0])
        cy = 0.5 * (P[0, 1] + P[1, 1])
        xr[0] = min(max(cx + (cx - P[2, 0]), lo[0]), hi[0])
        xr[1] = min(max(cy + (cy - P[2, 1]), lo[1]), hi[1])
        fr = _objective(k, W, wt, lo_b, hi_b, wband, hub, a_hi, xr[0], xr[1], strict, gk, moff, margin)[0]
        nfev += 1
        if fr < F[0]:
            xe[0] = min(max(cx + 2.0 * (cx - P[2, 0]), lo[0]), hi[0])
            xe[1] = min(max(cy + 2.0 * (cy - P[2, 1]), lo[1]), hi[1])
            fe = _objective(k, W, wt, lo_b, hi_b, wband, hub, a_hi, xe[0], xe[1], strict, gk, moff, margin)[0]
            nfev += 1
            if fe < fr:
                P[2, 0], P[2, 1], F[2] = xe[0], xe[1], fe
            else:
                P[2, 0], P[2, 1], F[2] = xr[0], xr[1], fr
        elif fr < F[1]:
            P[2, 0], P[2, 1], F[2] = xr[0], xr[1], fr
        else:
            if fr < F[2]:
                xc[0] = cx + 0.5 * (xr[0] - cx)
                xc[1] = cy + 0.5 * (xr[1] - cy)
            else:
                xc[0] = cx + 0.5 * (P[2, 0] - cx)
                xc[1] = cy + 0.5 * (P[2, 1] - cy)
            fc = _objective(k, W, wt, lo_b, hi_b, wband, hub, a_hi, xc[0], xc[1], strict, gk, moff, margin)[0]
            nfev += 1
            if fc < min(fr, F[2]):
                P[2, 0], P[2, 1], F[2] = xc[0], xc[1], fc
            else:  # shrink towards the best vertex
                for i in range(1, 3):
                    for d in range(2):
                        P[i, d] = P[0, d] + 0.5 * (P[i, d] - P[0, d])
                    F[i] = _objective(k, W, wt, lo_b, hi_b, wband, hub, a_hi, P[i, 0], P[i, 1], strict, gk, moff,
                                      margin)[0]
                nfev += 2
    ib = 0
    for i in range(1, 3):
        if F[i] < F[ib]:
            ib = i
    return P[ib, 0], P[ib, 1], F[ib], nfev


# ------------------------------------------------------------------------- fitting


def _check_grid(k: np.ndarray, n_near: int = 241, n_wing: int = 480) -> np.ndarray:
    """Fixed part of the butterfly check grid: quoted range ± padding, and far wings (read-only;
    cached by range, so a warm refit of the same strikes reuses it: 65 µs of a 0.52 ms warm fit
    on the synthetic 100-strike slices, measured 2026-12-06)."""
    return _check_grid_of(float(k.min()), float(k.max()), n_near, n_wing)


@functools.lru_cache(maxsize=1024)
def _check_grid_of(k_lo: float, k_hi: float, n_near: int, n_wing: int) -> np.ndarray:
    span = max(k_hi - k_lo, 1e-3)
    pad = max(0.5 * span, 0.1)
    near = np.linspace(k_lo - pad, k_hi + pad, n_near)
    # far wings: g's asymptote is approached slowly, and with ρ → ±1 a shallow dip can sit
    # tens of units out; 2 % spacing keeps such a dip between refinable neighbours
    wings = _wings(n_wing)
    grid = np.unique(np.concatenate([near, -wings + min(k_lo - pad, 0.0), wings + max(k_hi + pad, 0.0)]))
    grid.flags.writeable = False  # shared between fits
    return grid


@functools.lru_cache(maxsize=4)
def _wings(n_wing: int) -> np.ndarray:
    wings = np.geomspace(0.05, 1000.0, n_wing)
    wings.flags.writeable = False  # shared between fits
    return wings


def _floats(p: Smile) -> Smile:
    """p with every number a Python float (numba and numpy hand back their own scalars)."""
    raw = SviParams(*(float(x) for x in p[:5]))
    return _with_spline(raw, *p[5:]) if p.spline_w else raw


SPLINE_CHECK_N = 4001  # butterfly check points over a spline's support (g is smooth there; see SPLINE_BELOW)


def _spline_grid(p: SplineSvi) -> np.ndarray:
    return np.linspace(p.spline_lo_k, p.spline_hi_k, SPLINE_CHECK_N)


def _g_min(p: Smile, gk: np.ndarray) -> tuple[float, float]:
    """(min g, k at it) of params that may carry a spline: raw SVI's search (_min_g) where the
    spline is zero, the spline's support on its check grid."""
    g, k_at = _min_g(*p[:5], gk, _M_OFFSETS)
    if p.spline_w:
        grid = _spline_grid(p)
        gs = butterfly_g(p, grid)
        i = int(np.argmin(gs))
        if not gs[i] >= g:
            g, k_at = float(gs[i]), float(grid[i])
    return g, k_at


def _params_tuple(obj: Any) -> Optional[Smile]:
    if obj is None:
        return None
    return as_params(obj)


def _no_band(a_hi: float) -> tuple:
    """aux for a plain mid fit: no band points, no wing-slope bounds."""
    return (_EMPTY, _EMPTY, _EMPTY, _EMPTY, a_hi)


_EMPTY = np.empty(0)


def _usable(name: str, k, total_variance, weights, t_years):
    k = np.ascontiguousarray(k, dtype=float)
    W = np.ascontiguousarray(total_variance, dtype=float)
    if k.ndim != 1 or W.shape != k.shape:
        raise ValueError(f"{name}: k has shape {k.shape} and total_variance {W.shape}; "
                         "pass two 1-D arrays of equal length")
    if t_years is not None and not (isinstance(t_years, (int, float, np.floating)) and math.isfinite(t_years)
                                    and t_years > 0):
        raise ValueError(f"{name}: t_years={t_years!r}; pass a positive year fraction (ACT/365) or None")
    wts = np.ones_like(k) if weights is None else np.ascontiguousarray(weights, dtype=float)
    if wts.shape != k.shape:
        raise ValueError(f"{name}: weights has shape {wts.shape}, k {k.shape}; pass one weight per quote")
    use = np.isfinite(k) & np.isfinite(W) & (W > 0) & np.isfinite(wts) & (wts > 0)
    n = int(use.sum())
    if n < 3:
        raise ValueError(f"{name}: only {n} usable quotes (finite k, w > 0, weight > 0); an SVI fit needs at least 3")
    return k, W, wts, use


def fit_svi(k, total_variance, weights=None, prev=None, *, t_years: Optional[float] = None,
            w_bid=None, w_ask=None, n_m: int = 17, n_sigma: int = 13, n_starts: int = 2,
            maxiter: int = 300, a_cap: bool = True, g_margin: float = 0.0) -> SviFit:
    """Fit raw SVI to total variances w_i at log-moneyness k_i (arbitrage-free output).

    weights: relative weights on each quote's squared *vol* error (default equal); they are
    converted to total-variance space as weight / (4 w_i T) so the minimised error is, to
    first order, the weighted mean squared vol error. prev: a previous SviFit / params to
    warm-start from (the outer search then starts at its (m, σ), with a coarse-grid guard
    against a stale basin). t_years: for vol-point RMSE (else T = 1). w_bid, w_ask: optional
    bid/ask total variances (NaN where missing) for the band report only (fit_svi_band fits
    to the band). Non-finite or non-positive w_i are dropped. Raises ValueError on malformed
    input or < 3 usable quotes.
    """
    t0 = time.perf_counter()
    k, W, wts, use = _usable("fit_svi", k, total_variance, weights, t_years)
    idx = np.flatnonzero(use)
    kk, WW = k[use], W[use]
    T = 1.0 if t_years is None else float(t_years)
    wt = wts[use] / (4.0 * WW * T)
    wt = wt / wts[use].sum()
    aux = _no_band(float(WW.max()) if a_cap else np.inf)
    params, f_best, repaired, warm, gmin, gk_at = _fit_core(kk, kk, WW, wt, aux, prev, n_m, n_sigma, n_starts,
                                                             maxiter, g_margin)
    return _finish(params, k, W, idx, kk, WW, wts[use], T, t_years, w_bid, w_ask, gmin, gk_at, repaired,
                   warm, f_best, t0)


# Band-aware loss (fit_svi_band), in vol units to first order (total-variance errors are
# scaled by 1/(4wT), as in fit_svi):
#     Σ ŵᵢ(σᵢ − midᵢ)² / Σŵ  +  BAND_WEIGHT·mean(ŵ)·Σ dᵢ² / Σŵ
# ŵᵢ: the caller's weight (1/spread² from prepare_slice); dᵢ: distance of the fitted vol
# outside [bidᵢ, askᵢ] shrunk by BAND_INSET of its width on each side (a squared hinge). The
# band term weighs every quote's excursion alike (the goal is the excursion in vol points);
# the mid term only chooses among curves that fit the band equally well.
# Measured 2026-12-05 on the 291 slices of the 12 real chains in tests/data (cold fits;
# share of quotes in band / worst slice / excursion p95 over quotes outside, vol pts):
#   mid fit (fit_svi)                          96.9 % / 54.5 % / 1.19
#   squared hinge, inset 0.05 (this)           96.7 % / 59.1 % / 0.38
#   squared hinge, inset 0 / 0.02 / 0.1 / 0.2  95.4 / 96.6 / 96.7 / 96.1 %, p95 0.31–0.45
#   BAND_WEIGHT 1000 or 10000 instead of 100   ±0.1 % in band, slower
#   Huber hinge (linear beyond 5 % / 1 % of the band width: band_huber=0.05 / 0.01)
#                                              97.2 / 97.2 % in band, p95 1.24 / 0.58, 2-3× slower
#   squared hinge with no butterfly repair     97.1 % (not arbitrage-free: a bound, not a choice)
# The squared hinge is the only loss that meets the excursion goal; no loss reaches 98.5 %
# in band because raw SVI (5 parameters) cannot follow bands that zig-zag by more than their
# width (e.g. BTC 26JUN26 on 2026-02-12: 59 % whatever the loss or the search effort).
BAND_WEIGHT = 100.0
BAND_INSET = 0.05
BAND_HUBER = 0.0  # > 0: Huber's hinge, linear beyond this fraction of the band width (measured above)
# Share rescue (fit_svi_band(rescue=True), issue #17): a slice keeping under RESCUE_BELOW of its
# quotes in band is refitted under each RESCUE_VARIANTS loss (band_inset, band_huber): the best
# (a, u, v) at its fitted (m, σ) and, on a cold fit, after a warm Nelder–Mead (+ coarse-grid
# guard, no repair) from there; a warm fit instead re-tries the variants at the previous fit's
# (m, σ), where a rescue may have won. The candidate keeping the most quotes in band replaces
# the fit if it is butterfly-free and its largest excursion stays ≤ max(the fit's,
# RESCUE_MAX_EXC_VOL_PTS). No single loss is best on every slice; choosing per slice by the
# count itself is the "loss that counts quotes outside", and the excursion guard keeps what
# the squared hinge bought. Measured 2026-12-06 on the same 291 slices (fit_svi_band, no
# calendar; share in band / worst slice / excursion p95 / max, vol pts; CPU ms per slice):
#   no rescue                                          96.67 % / 59.1 % / 0.38 / 0.97
#   one variant, warm Nelder–Mead: inset 0 / 0.15 / 0.25 / Huber 0.05
#                                                      96.72 / 96.81 / 96.78 / 96.93 %, p95 ≤ 0.38
#   these four at the fit's (m, σ) only                96.98 % / 59.1 % / 0.38 / 0.97
#   + the search on cold fits (this)                   97.17 % / 59.1 % / 0.38 / 0.97; warm refits
#       97.16 % (96.96 % without the previous fit's (m, σ)); ms cold median 1.67 → 1.79, p99
#       12.0 → 16.3, warm median 0.59 → 0.74 (real slices; the synthetic 100-strike slices of
#       bench_surface are all ≥ 98.5 % in band and never pay it)
#   24 variants (inset 0–0.35 × Huber 0 / 0.05 / 0.01) at (m, σ): 97.08 %
#   guard 0.6 / 1.0 vol pts instead of 0.4            97.16 / 97.23 %, p95 0.45 (misses its goal)
#   giving up the 1–6 outermost quotes of a side where a slice is < 80 % in band
#                                                      97.47 % / 65.9 % / p95 3.58 / max 24
#   the same wherever a slice is < 90 %, no guard      98.12 % / 68.2 % / p95 7.25 / max 29
# The last rows are the limit of raw SVI here: bench/band_ceiling.py shows a butterfly-free (and
# calendar-free) curve can keep 99.98 % of these quotes in band, every slice ≥ 95.5 %, so the
# quotes allow the goals; raw SVI's two straight-line wings do not (BTC 26JUN26 on 2026-02-12
# keeps 26/44 with every quote ≤ 1 vol pt out, or 38/44 leaving four deep puts 4–12 vol pts out).
RESCUE_BELOW = 0.985
RESCUE_VARIANTS = ((0.0, 0.0), (0.15, 0.0), (0.25, 0.0), (BAND_INSET, 0.05))
RESCUE_MAX_EXC_VOL_PTS = 0.4
# Spline rescue (fit_svi_band(rescue=True), issue #17): a slice still under SPLINE_BELOW in band
# after the SVI fit and the share rescue gets a smooth local correction on its quoted range
# (± SPLINE_PAD of it): w = raw SVI + Σ cⱼBⱼ(k), one cubic B-spline per SPLINE_QUOTES_PER_COEF
# quotes (SPLINE_MIN_COEFS to SPLINE_MAX_COEFS), zero with its slope and curvature at both ends
# so the wings stay raw SVI's (SplineSvi, operators/kernels/bspline.py). c minimises the same
# band loss plus SPLINE_SMOOTH × the largest band weight × Σ(Δ²c)² under g ≥ SPLINE_G_MARGIN and
# the calendar bounds on SPLINE_GRID_N points (SLSQP, scipy), and is kept only if it passes the
# full checks, keeps more quotes in band and its largest excursion stays under the share
# rescue's guard. Raw SVI's two straight wings cannot follow real bands that zig-zag more than
# their width (the rows above); bench/band_ceiling.py shows a butterfly-free curve can keep
# 99.98 % of the real quotes in band. Measured 2026-12-06 on the 291 real slices with
# bench/bench_surface.py (fit_surface, calendar bounds on; in band / worst slice / excursion p95 /
# max vol pts; ms per slice cold, p99), spline rescue off → on:
#   off (the share rescue alone)                         97.15 % / 59.1 % / 0.38 / 0.97; 4.6, 9.4
#   on, constraints on 400 points                        99.80 % / 90.9 % / 0.37 / 0.41; 7.4, 18.3
#   on, 200 points (this)                                99.72 % / 90.9 % / 0.35 / 0.41; 6.9, 15.8
# 47 of 291 slices take a spline: SLSQP runs a median 37 iterations, 7 ms (max 33 ms). The
# synthetic 100-strike slices of the speed goals are all ≥ 98.5 % in band and never pay it; the
# engine benchmark's simulated chains do (~3 % of fits, ~95 quotes each), and with 16
# coefficients and ftol 1e-14 that cost the flow 8 % of its msg/s (bench_engine A/B, 07:17–07:28
# UTC). Then, 07:35 UTC, the same 110,000 simulated messages through the naive engine's 54,370
# fits (ms per fit mean / per spline fit) and the real chains (in band / worst / splines):
#   16 coefficients (this)                               1.23 / 20.7 ms;  99.72 % / 90.9 % / 44
#   12                                                   0.93 / 14.6 ms;  99.70 % / 90.9 % / 43
#       but in the flow (bench_engine, 08:05–08:13 UTC, side by side) 12 made the 1-process row
#       43k msg/s, 3.2 CPU s in chain epochs, fit latency p99 2.8 s, where 16 gave 89k, 1.1 s,
#       169 ms (the base before the spline 84k, 1.0 s, 183 ms): kept at 16
#   10                                                   0.84 / 11.1 ms;  99.61 % / 81.8 % / 42
#   12, SLSQP ftol 1e-14 (this) → 1e-10 → 1e-8          iterations on the real chains 1,564 →
#       1,205 → 759 (47 solves), figures identical; but on the simulated chains ftol 1e-8 made a
#       spline fit 55 ms mean, 450 ms max (14.9 / 60 ms at 1e-14), and the engine's 1-process
#       row 63k msg/s with 2.3 s fit latency p99 (07:49 UTC): the tight tolerance stays
SPLINE_BELOW = RESCUE_BELOW
SPLINE_PAD = 0.05
SPLINE_QUOTES_PER_COEF = 3
SPLINE_MIN_COEFS = 6
SPLINE_MAX_COEFS = 16
SPLINE_SMOOTH = 1e-3
SPLINE_G_MARGIN = 1e-4
SPLINE_GRID_N = 200
SPLINE_MAXITER = 200
SPLINE_FTOL = 1e-14  # absolute, on the loss (≈ a weighted mean squared vol error)
SPLINE_SHRINKS = 20
# Calendar bounds (fit_svi_band(floor=..., ceiling=...)): on the calendar k-grid, w must stay
# ≥ the floor slice (a shorter expiry) and ≤ the ceiling slice (a longer one). The grid
# points enter the loss as one-sided band points with CALENDAR_WEIGHT × the band weight,
# aimed CALENDAR_MARGIN_REL inside the bound; exact feasibility is then restored by moving a
# (see _shift_inside). Wing slopes are not bounded: calendar-free is promised on the grid
# (±1 in k and every quoted k by default), not for |k| → ∞, because a short expiry's wings
# beyond its quotes are extrapolation (bounding them pushed every longer slice out of its
# band: 63 % in band, measured 2026-12-05 on tests/data's chains).
CALENDAR_WEIGHT = 100.0
CALENDAR_GRID_N = 41
CALENDAR_BOOSTS = (100.0, 1.0e4, None)  # heavier calendar points when a slice crosses both bounds
CALENDAR_CHECK_N = 8001
CALENDAR_MARGIN_REL = 1e-4


def fit_svi_band(k, total_variance, w_bid, w_ask, weights=None, prev=None, *, t_years: float,
                 floor=None, ceiling=None, calendar_k=None, band_weight: float = BAND_WEIGHT,
                 band_inset: float = BAND_INSET, band_huber: float = BAND_HUBER, n_m: int = 17, n_sigma: int = 13,
                 n_starts: int = 2, maxiter: int = 300, g_margin: float = 0.0, rescue: bool = True) -> SviFit:
    """Band-aware raw-SVI fit: inside [bid, ask] first, near mid second; butterfly-free.

    k, total_variance (mid), weights, prev: as fit_svi. w_bid, w_ask: bid/ask total
    variances per quote (NaN where a side is missing: that quote is fitted to mid only).
    t_years: required (the loss is in vol units). floor / ceiling: params (or SviFit) of the
    slices this one must not cross — the previous / next expiry of the same underlying —
    on calendar_k's range (default calendar_grid([k])): the result has floor ≤ w ≤ ceiling
    on a CALENDAR_CHECK_N-point grid over that range whenever the shift of a this takes
    keeps the slice butterfly-free, else it becomes a copy of the floor or ceiling (the one
    with the lower loss that lies between both; the caller's calendar check sees a crossing
    only when neither does, i.e. when floor and ceiling cross each other). The loss is said beside BAND_WEIGHT;
    SviFit.objective is that loss at the returned params; repaired as in fit_svi (butterfly) or when a was moved.
    rescue: a slice under RESCUE_BELOW in band may take the fit of a variant loss that keeps more
    quotes in band (said beside RESCUE_BELOW; its objective is then above the loss's minimum).
    """
    t0 = time.perf_counter()
    if t_years is None:
        raise ValueError("fit_svi_band: t_years=None; pass a positive year fraction (ACT/365)")
    k, W, wts, use = _usable("fit_svi_band", k, total_variance, weights, t_years)
    wb_all = np.asarray(w_bid, float)
    wa_all = np.asarray(w_ask, float)
    if wb_all.shape != k.shape or wa_all.shape != k.shape:
        raise ValueError(f"fit_svi_band: w_bid {wb_all.shape} / w_ask {wa_all.shape} must match k {k.shape}; "
                         "pass one bid and one ask total variance per quote (NaN for none)")
    if not (math.isfinite(band_weight) and band_weight >= 0 and 0 <= band_inset < 0.5):
        raise ValueError(f"fit_svi_band: band_weight={band_weight!r}, band_inset={band_inset!r}; pass "
                         "band_weight ≥ 0 and 0 ≤ band_inset < 0.5")
    idx = np.flatnonzero(use)
    kq, WW = k[use], W[use]
    T = float(t_years)
    w_hat = wts[use]
    scale = 1.0 / (4.0 * WW * T * w_hat.sum())
    wt = w_hat * scale
    wb, wa = wb_all[use], wa_all[use]
    two = np.isfinite(wb) & np.isfinite(wa) & (wa >= wb)
    inset = band_inset * np.where(two, wa - wb, 0.0)
    lo_b = np.where(two, wb + inset, -np.inf)
    hi_b = np.where(two, wa - inset, np.inf)
    wband = np.where(two, band_weight * float(w_hat.mean()) * scale, 0.0)
    hub = np.where(two, band_huber * (wa - wb), np.inf) if band_huber > 0 else np.full(kq.shape, np.inf)
    kk, Wk, wtk = kq, WW, wt
    a_hi = float(WW.max())
    floor_p, ceil_p = _params_tuple(floor), _params_tuple(ceiling)
    if floor_p is not None or ceil_p is not None:
        kc = kq if calendar_k is None else np.asarray(calendar_k, float)
        if kc.ndim != 1 or kc.size < 2 or not np.all(np.isfinite(kc)):
            raise ValueError(f"fit_svi_band: calendar_k has shape {kc.shape}; pass ≥ 2 finite log-moneyness values")
        kc = np.concatenate([kc, kq])
        kc = np.linspace(float(kc.min()), float(kc.max()), CALENDAR_GRID_N)
        def calendar_points(kpts):  # (L, U, weight) of calendar points at kpts
            L, U = _bounds(floor_p, ceil_p, kpts, CALENDAR_MARGIN_REL)
            ref = np.where(np.isfinite(L) & (L > 0), L, np.where(np.isfinite(U) & (U > 0), U, float(WW.mean())))
            ref = np.maximum(ref, float(WW.min()))
            return L, U, CALENDAR_WEIGHT * band_weight * float(w_hat.mean()) / (4.0 * ref * T * w_hat.sum())

        L, U, wc = calendar_points(kc)
        kk = np.concatenate([kq, kc])
        Wk = np.concatenate([WW, np.zeros_like(kc)])
        wtk = np.concatenate([wt, np.zeros_like(kc)])
        lo_b = np.concatenate([lo_b, L])
        hi_b = np.concatenate([hi_b, U])
        wband = np.concatenate([wband, wc])
        hub = np.concatenate([hub, np.full_like(kc, np.inf)])
        if floor_p is not None:
            a_hi = max(a_hi, float(np.max(L)))
    aux = tuple(np.ascontiguousarray(x) for x in (lo_b, hi_b, wband, hub)) + (a_hi,)
    params, f_best, repaired, warm, gmin, gk_at = _fit_core(kq, kk, Wk, wtk, aux, prev, n_m, n_sigma, n_starts,
                                                             maxiter, g_margin)
    if rescue and two.any():
        got = _rescue(kq, kk, Wk, wtk, aux, wb, wa, two, T, params, g_margin, _params_tuple(prev) if warm else None)
        if got is not None:
            params, gmin, gk_at = got
            f_best = _loss(params, kk, Wk, wtk, aux)
    if floor_p is not None or ceil_p is not None:
        gk = _check_grid(kq)
        for boost in CALENDAR_BOOSTS:
            dense = _calendar_check_grid(float(kc[0]), float(kc[-1]), params, floor_p, ceil_p)
            if _between(params, *_bounds(floor_p, ceil_p, dense, 0.5 * CALENDAR_MARGIN_REL), dense):
                break
            shifted = _shift_inside(params, *_bounds(floor_p, ceil_p, dense, CALENDAR_MARGIN_REL), dense)
            if shifted is None:  # no room for the margin (neighbours 2e-5 apart): the middle of what there is
                shifted = _shift_inside(params, *_bounds(floor_p, ceil_p, dense, 0.0), dense, centre=True)
            if shifted is not None:
                dense2 = _calendar_check_grid(float(kc[0]), float(kc[-1]), shifted, floor_p, ceil_p)
                if _between(shifted, *_bounds(floor_p, ceil_p, dense2, 0.0), dense2):
                    g2, gk2 = _g_min(shifted, gk)
                    if g2 >= g_margin:
                        params, gmin, gk_at, repaired = shifted, g2, gk2, True
                        f_best = _loss(params, kk, Wk, wtk, aux)
                        break
            if boost is None:
                # last resort: the better of the bounds themselves (each lies between floor
                # and ceiling, the bounds being calendar-consistent with each other)
                best = None
                for c in (floor_p, ceil_p):
                    if c is None:
                        continue
                    dense2 = _calendar_check_grid(float(kc[0]), float(kc[-1]), c, floor_p, ceil_p)
                    if not _between(c, *_bounds(floor_p, ceil_p, dense2, 0.0), dense2):
                        continue
                    g2, gk2 = _g_min(c, gk)
                    f2 = _loss(c, kk, Wk, wtk, aux)
                    if g2 >= g_margin and (best is None or f2 < best[0]):
                        best = (f2, c, g2, gk2)
                if best is not None:
                    f_best, params, gmin, gk_at = best
                    repaired = True
                break
            # the penalty lost to the quotes, or the crossing lies between calendar points:
            # add the dense grid's worst crossings as calendar points (cutting planes: a
            # slice pinched between close neighbours crossed 5e-6 between the 41 points and
            # fell back to a copy of its floor, 0 % in band) and refit with heavier ones
            k_new = _worst_crossings(params, floor_p, ceil_p, dense)
            Ln, Un, wn = calendar_points(k_new)
            kk = np.concatenate([kk, k_new])
            Wk = np.concatenate([Wk, np.zeros_like(k_new)])
            wtk = np.concatenate([wtk, np.zeros_like(k_new)])
            wb2 = np.concatenate([aux[2], wn])
            wb2[kq.size:] *= boost
            aux = (np.concatenate([aux[0], Ln]), np.concatenate([aux[1], Un]), wb2,
                   np.concatenate([aux[3], np.full_like(k_new, np.inf)]), aux[4])
            params, f_best, rep2, _, gmin, gk_at = _fit_core(kq, kk, Wk, wtk, aux, params, n_m, n_sigma, n_starts,
                                                             maxiter, g_margin)
            repaired = True
    if rescue and two.any():
        got = _spline_rescue(kq, WW, wt, wb, wa, two, T, params, g_margin, floor_p, ceil_p,
                             None if floor_p is None and ceil_p is None else (float(kc[0]), float(kc[-1])),
                             _params_tuple(prev) if warm else None)
        if got is not None:
            params, gmin, gk_at = got
            f_best = _loss(params, kk, Wk, wtk, aux)
    return _finish(params, k, W, idx, kq, WW, w_hat, T, t_years, wb_all, wa_all, gmin, gk_at, repaired,
                   warm, f_best, t0)


def _spline_rescue(kq, WW, wt, wb, wa, two, T, params, g_margin, floor_p, ceil_p, cal_range, prev=None):
    """The spline rescue (said beside SPLINE_BELOW): where the SVI fit keeps under SPLINE_BELOW of
    its quotes in band, the best correction Σ cⱼBⱼ(k) on the quoted range (the band loss of
    fit_svi_band plus a curvature penalty on c, by SLSQP from c = 0) under g ≥ SPLINE_G_MARGIN on
    SPLINE_GRID_N points and floor ≤ w ≤ ceiling on as many; then checked as every fit is
    (g on SPLINE_CHECK_N points, the calendar on fit_svi_band's dense grid), shrunk towards
    c = 0 (the SVI fit, which passes) until it passes; warm (prev a SplineSvi on the same range)
    SLSQP starts from prev's coefficients. Returns (params, min g, k at min g) when
    it keeps more quotes in band with its largest excursion ≤ max(the fit's,
    RESCUE_MAX_EXC_VOL_PTS), else None."""
    n_two = int(two.sum())
    n_in, exc0 = _band_count(params, kq, wb, wa, two, T)
    if n_in >= SPLINE_BELOW * n_two:
        return None
    base = params.raw()
    k_lo, k_hi = float(kq.min()), float(kq.max())
    pad = SPLINE_PAD * max(k_hi - k_lo, 1e-3)
    lo, hi = k_lo - pad, k_hi + pad
    n = int(min(max(kq.size // SPLINE_QUOTES_PER_COEF, SPLINE_MIN_COEFS), SPLINE_MAX_COEFS))
    B = bspline.basis(lo, hi, n, kq)
    w0 = total_variance(base, kq)
    width = np.where(two, wa - wb, 0.0)
    lo_b = np.where(two, wb + BAND_INSET * width, -np.inf)
    hi_b = np.where(two, wa - BAND_INSET * width, np.inf)
    wband = np.where(two, BAND_WEIGHT * float(wt.mean()), 0.0)
    D = np.diff(np.eye(n), 2, axis=0)
    R = SPLINE_SMOOTH * float(wband.max()) * (D.T @ D)

    def loss(c):
        w = w0 + B @ c
        r = w - WW
        d_lo, d_hi = np.maximum(lo_b - w, 0.0), np.maximum(w - hi_b, 0.0)
        val = float(np.sum(wt * r * r) + np.sum(wband * (d_lo * d_lo + d_hi * d_hi)) + c @ R @ c)
        return val, B.T @ (2.0 * wt * r + 2.0 * wband * (d_hi - d_lo)) + 2.0 * (R @ c)

    kg = np.linspace(lo, hi, SPLINE_GRID_N)
    Bg, Bg1, Bg2 = (bspline.basis(lo, hi, n, kg, nu) for nu in (0, 1, 2))
    _, w0g, w1g, w2g = _derivs(base, kg)

    def g_con(c):
        w, w1, w2 = w0g + Bg @ c, w1g + Bg1 @ c, w2g + Bg2 @ c
        return (1.0 - kg * w1 / (2.0 * w)) ** 2 - 0.25 * w1 * w1 * (1.0 / w + 0.25) + 0.5 * w2 - SPLINE_G_MARGIN

    def g_jac(c):
        w, w1 = w0g + Bg @ c, w1g + Bg1 @ c
        A = 1.0 - kg * w1 / (2.0 * w)
        dg_dw = A * kg * w1 / (w * w) + 0.25 * w1 * w1 / (w * w)
        dg_dw1 = -A * kg / w - 0.5 * w1 * (1.0 / w + 0.25)
        return dg_dw[:, None] * Bg + dg_dw1[:, None] * Bg1 + 0.5 * Bg2

    cons = [{"type": "ineq", "fun": g_con, "jac": g_jac}]
    if cal_range is not None:
        L, U = _bounds(floor_p, ceil_p, kg, CALENDAR_MARGIN_REL)
        for sign, bound in ((1.0, L), (-1.0, U)):
            ok = np.isfinite(bound)
            if ok.any():
                Bc, rhs = sign * Bg[ok], sign * (bound[ok] - w0g[ok])
                cons.append({"type": "ineq", "fun": lambda c, Bc=Bc, rhs=rhs: Bc @ c - rhs,
                             "jac": lambda c, Bc=Bc: Bc})
    c0 = np.zeros(n)
    if prev is not None and len(prev.spline_w) == n and (prev.spline_lo_k, prev.spline_hi_k) == (lo, hi):
        c0 = np.asarray(prev.spline_w, float)  # warm: the same quotes' range, start from its spline
    res = minimize(loss, c0, jac=True, method="SLSQP", constraints=cons,
                   options={"maxiter": SPLINE_MAXITER, "ftol": SPLINE_FTOL})
    if not np.all(np.isfinite(res.x)):
        return None
    gk = _check_grid(kq)
    scale = 1.0
    for _ in range(SPLINE_SHRINKS):
        cand = _with_spline(base, lo, hi, scale * res.x)
        g2, gk2 = _g_min(cand, gk)
        ok = g2 >= g_margin
        if ok and cal_range is not None:
            dense = np.concatenate([_calendar_check_grid(cal_range[0], cal_range[1], cand, floor_p, ceil_p), kg])
            ok = _between(cand, *_bounds(floor_p, ceil_p, dense, 0.0), dense)
        if ok:
            n2, exc2 = _band_count(cand, kq, wb, wa, two, T)
            if n2 > n_in and exc2 <= max(exc0, RESCUE_MAX_EXC_VOL_PTS):
                return cand, g2, gk2
            return None
        scale *= 0.7
    return None


def _band_count(params, kq, wb, wa, two, T) -> tuple[int, float]:
    """(quotes whose band [wb, wa] contains w, largest excursion outside a band in vol pts)
    over the two-sided quotes — the figures' own test (tests/helpers/real_chains.band_figures)."""
    w = total_variance(params, kq[two])
    lo, hi = wb[two], wa[two]
    inside = (w >= lo) & (w <= hi)
    vol = np.sqrt(np.maximum(w, 0.0) / T)
    exc = np.maximum(np.sqrt(lo / T) - vol, 0.0) + np.maximum(vol - np.sqrt(hi / T), 0.0)
    return int(inside.sum()), float(exc.max()) * 100.0


def _rescue(kq, kk, Wk, wtk, aux, wb, wa, two, T, params, g_margin, prev=None):
    """The share rescue (said beside RESCUE_BELOW): where the fit keeps under RESCUE_BELOW of its
    quotes in band, the best (a, u, v) under each RESCUE_VARIANTS loss at the fit's (m, σ) and
    at prev's (warm) or after a _warm_search (cold). Returns (params, min g, k at min g) of the
    candidate keeping the most quotes in band that is butterfly-free and whose largest
    excursion stays ≤ max(the fit's, RESCUE_MAX_EXC_VOL_PTS), or None when none beats the fit."""
    nq = kq.size
    n_in, exc0 = _band_count(params, kq, wb, wa, two, T)
    if n_in >= RESCUE_BELOW * int(two.sum()):
        return None
    exc_cap = max(exc0, RESCUE_MAX_EXC_VOL_PTS)
    width = np.where(two, wa - wb, 0.0)
    gk = None
    best = None
    for inset, huber in RESCUE_VARIANTS:
        lo_b, hi_b, hub = aux[0].copy(), aux[1].copy(), aux[3].copy()
        lo_b[:nq] = np.where(two, wb + inset * width, -np.inf)
        hi_b[:nq] = np.where(two, wa - inset * width, np.inf)
        hub[:nq] = np.where(two, huber * width, np.inf) if huber > 0 else np.inf
        aux2 = (lo_b, hi_b, aux[2], hub, aux[4])
        cands = [(params.m, math.log(params.sigma))]
        if prev is not None:  # warm: also at the previous fit's (m, σ), where a rescue may have won
            cands.append((prev.m, math.log(prev.sigma)))
        else:
            cands += _warm_search(kq, kk, Wk, wtk, aux2, params, g_margin)
        for m_, ls_ in cands:
            _, a, u, v = _inner(kk, Wk, wtk, *aux2, m_, math.exp(ls_))
            cand = SviParams(*_raw(a, u, v, m_, math.exp(ls_)))
            n2, exc2 = _band_count(cand, kq, wb, wa, two, T)
            if n2 <= (n_in if best is None else best[0]) or exc2 > exc_cap:
                continue
            gk = _check_grid(kq) if gk is None else gk
            g2, gk2 = _min_g(*cand[:5], gk, _M_OFFSETS)
            if g2 >= g_margin:
                best = (n2, cand, g2, gk2)
    return None if best is None else best[1:]


# The warm guard's coarse (m, log σ) grid. Measured 2026-12-06 on 982 warm refits (291 real slices
# and 200 synthetic 100-strike ones, each twice with 1 % noise on w), against a cold fit of the
# same data: 7 × 5 points and 5 × 4 leave the same 4 warm fits > 1 % worse in loss and the same
# share in band (99.845 %); 5 × 4 takes 0.09 ms less (synthetic warm median 0.52 → 0.41 ms).
GUARD_M_N, GUARD_LS_N = 5, 4


def _grid_guard(kk, WW, wt, aux, k_lo: float, k_hi: float, span: float, f_warm: float):
    """The warm search's guard: the loss on a coarse (m, log σ) grid; when a point beats the warm
    result, the basin moved: (x0, step) to restart Nelder–Mead from there, else None."""
    m_grid = np.linspace(k_lo - 0.25 * span, k_hi + 0.25 * span, GUARD_M_N)
    ls_grid = np.linspace(math.log(span * 3e-3), math.log(span * 3.0), GUARD_LS_N)
    grid = _grid_scan(kk, WW, wt, *aux, m_grid, ls_grid)
    i, j = np.unravel_index(int(np.argmin(grid)), grid.shape)
    if not grid[i, j] < f_warm * (1.0 - 1e-6):
        return None
    return (np.array([m_grid[i], ls_grid[j]]),
            np.array([(m_grid[1] - m_grid[0]) * 0.5, (ls_grid[1] - ls_grid[0]) * 0.5]))


def _warm_search(kq, kk, Wk, wtk, aux, params, g_margin, maxiter=300):
    """The warm half of _fit_core without its repair: Nelder–Mead from params' (m, σ), and
    from the best point of a coarse grid when that beats it. Returns [(m, log σ), ...]."""
    k_lo, k_hi = float(kq.min()), float(kq.max())
    span = max(k_hi - k_lo, 1e-3)
    lo = np.array([k_lo - 2.0 * span, math.log(span * 1e-4)])
    hi = np.array([k_hi + 2.0 * span, math.log(span * 10.0)])
    x0 = np.array([min(max(params.m, lo[0]), hi[0]), min(max(math.log(params.sigma), lo[1]), hi[1])])
    m_, ls_, f_, _ = _nelder_mead(kk, Wk, wtk, *aux, x0, np.array([0.05 * span, 0.1]), lo, hi, False, _EMPTY,
                                  _M_OFFSETS, g_margin, maxiter, 1e-7, 1e-12)
    out = [(m_, ls_)]
    moved = _grid_guard(kk, Wk, wtk, aux, k_lo, k_hi, span, f_)
    if moved is not None:
        m_, ls_, _, _ = _nelder_mead(kk, Wk, wtk, *aux, *moved, lo, hi, False, _EMPTY, _M_OFFSETS, g_margin,
                                     maxiter, 1e-7, 1e-12)
        out.append((m_, ls_))
    return out


def _worst_crossings(params, floor, ceiling, grid: np.ndarray, n: int = 8) -> np.ndarray:
    """Up to n points of grid where params crosses floor or ceiling (with the calendar
    margin) the most: the deepest point of each run of crossing grid points, deepest runs first."""
    L, U = _bounds(floor, ceiling, grid, CALENDAR_MARGIN_REL)
    w = total_variance(params, grid)
    viol = np.maximum(L - w, w - U)
    bad = viol > 0.0
    if not bad.any():
        return np.zeros(0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], bad.view(np.int8), [0]])))
    peaks = [s + int(np.argmax(viol[s:e])) for s, e in zip(edges[::2], edges[1::2])]
    peaks.sort(key=lambda i: -viol[i])
    return grid[np.array(peaks[:n])]


def _calendar_check_grid(k_lo: float, k_hi: float, *slices) -> np.ndarray:
    """CALENDAR_CHECK_N points over [k_lo, k_hi] plus, for each slice, m ± σ·sinh(±8) —
    where a small σ bends w faster than a uniform grid sees."""
    parts = [np.linspace(k_lo, k_hi, CALENDAR_CHECK_N)]
    for p in slices:
        if p is not None:
            parts.append(p.m + p.sigma * _SINH_OFFSETS)
    g = np.concatenate(parts)
    return np.unique(g[(g >= k_lo) & (g <= k_hi)])


_SINH_OFFSETS = np.sinh(np.linspace(-8.0, 8.0, 801))


def within_calendar_bounds(params, floor, ceiling, calendar_k) -> bool:
    """floor ≤ w ≤ ceiling (params, or None for no bound) over calendar_k's range, checked as
    fit_svi_band checks its own result."""
    p, fl, ce = as_params(params), _params_tuple(floor), _params_tuple(ceiling)
    kc = np.asarray(calendar_k, float)
    grid = _calendar_check_grid(float(kc.min()), float(kc.max()), p, fl, ce)
    return _between(p, *_bounds(fl, ce, grid, 0.0), grid)


def evaluate_fit(params, k, total_variance, weights=None, *, t_years: float, w_bid=None, w_ask=None) -> SviFit:
    """The SviFit of given params on these quotes, without fitting (warm=True, repaired=False,
    objective: the weighted mean squared vol error fit_svi minimises). For keeping a fit
    whose quotes have not changed."""
    t0 = time.perf_counter()
    k, W, wts, use = _usable("evaluate_fit", k, total_variance, weights, t_years)
    p = as_params(params)
    kk, WW = k[use], W[use]
    T = float(t_years)
    wt = wts[use] / (4.0 * WW * T) / wts[use].sum()
    gmin, gk_at = _g_min(p, _check_grid(kk))
    f = _loss(p, kk, WW, wt, _no_band(np.inf))
    return _finish(p, k, W, np.flatnonzero(use), kk, WW, wts[use], T, t_years, w_bid, w_ask, gmin, gk_at, False,
                   True, f, t0)


def _bounds(floor, ceiling, grid, rel: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on w over grid from the floor / ceiling slices (±inf where
    none), each pulled inside by rel·w — but by at most a quarter of the gap where both
    exist, so that a slice squeezed between touching neighbours still has room."""
    L = np.full(grid.shape, -np.inf) if floor is None else total_variance(floor, grid)
    U = np.full(grid.shape, np.inf) if ceiling is None else total_variance(ceiling, grid)
    ref = np.where(np.isfinite(L), np.abs(L), np.where(np.isfinite(U), np.abs(U), 0.0))
    gap = np.where(np.isfinite(L) & np.isfinite(U), np.maximum(U - L, 0.0), np.inf)
    mrg = np.minimum(rel * ref, 0.25 * gap)
    return L + mrg, U - mrg


def _between(params, L: np.ndarray, U: np.ndarray, grid: np.ndarray) -> bool:
    w = total_variance(params, grid)
    return bool(np.all(w >= L) and np.all(w <= U))


def _shift_inside(params: SviParams, L: np.ndarray, U: np.ndarray, grid: np.ndarray,
                  centre: bool = False) -> Optional[SviParams]:
    """params with a moved so that L ≤ w ≤ U on grid: by the least shift (centre=False) or
    to the middle of the room (centre=True); None when no single shift of a fits."""
    w = total_variance(params, grid)
    s_lo = float(np.max(L - w))  # the least shift that clears L
    s_hi = float(np.min(U - w))  # the most that stays under U
    if not s_lo <= s_hi:
        return None
    if centre and math.isfinite(s_lo) and math.isfinite(s_hi):
        return params._replace(a=params.a + 0.5 * (s_lo + s_hi))
    return params._replace(a=params.a + min(max(0.0, s_lo), s_hi))


def _loss(params, kk, Wk, wtk, aux) -> float:
    """The loss _inner minimises, evaluated at params (plain or banded)."""
    lo_b, hi_b, wband, hub = aux[0], aux[1], aux[2], aux[3]
    wf = total_variance(params, kk)
    f = float(np.sum(wtk * (wf - Wk) ** 2))
    if wband.size == kk.size:
        d = np.maximum(lo_b - wf, 0.0) + np.maximum(wf - hi_b, 0.0)
        with np.errstate(invalid="ignore"):
            f += float(np.sum(wband * np.where(d < hub, d * d, hub * (2.0 * d - hub))))
    return f


def _fit_core(kq, kk, WW, wt, aux, prev, n_m, n_sigma, n_starts, maxiter, g_margin):
    """The outer search over (m, log σ) shared by fit_svi and fit_svi_band. kq: the quotes'
    k (sets the search box and the butterfly check grid); kk, WW, wt: every point of the
    loss (quotes, then any calendar-floor points with zero mid weight); aux: (lo_b, hi_b,
    wband, hub, a_hi) as _inner takes them. Returns (params, loss, repaired, warm, min g, k at
    min g)."""
    k_lo, k_hi = float(kq.min()), float(kq.max())
    span = max(k_hi - k_lo, 1e-3)
    lo = np.array([k_lo - 2.0 * span, math.log(span * 1e-4)])
    hi = np.array([k_hi + 2.0 * span, math.log(span * 10.0)])
    gk = _check_grid(kq)
    xtol, ftol = 1e-7, 1e-12
    prev_p = _params_tuple(prev)
    warm = prev_p is not None and prev_p.sigma > 0 and math.isfinite(prev_p.m)

    cands: list[tuple[float, float, float]] = []  # (f, m, ls)
    if warm:
        x0 = np.array([min(max(prev_p.m, lo[0]), hi[0]), min(max(math.log(prev_p.sigma), lo[1]), hi[1])])
        step = np.array([0.05 * span, 0.1])
        m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, *aux, x0, step, lo, hi, False, gk, _M_OFFSETS, g_margin,
                                      maxiter, xtol, ftol)
        cands.append((f_, m_, ls_))
        # guard: a coarse grid; any point better than the warm result means the basin moved
        moved = _grid_guard(kk, WW, wt, aux, k_lo, k_hi, span, f_)
        if moved is not None:
            m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, *aux, *moved, lo, hi, False, gk, _M_OFFSETS,
                                          g_margin, maxiter, xtol, ftol)
            cands.append((f_, m_, ls_))
    else:
        m_grid = np.linspace(k_lo - 0.5 * span, k_hi + 0.5 * span, n_m)
        ls_grid = np.linspace(math.log(span * 1e-3), math.log(span * 4.0), n_sigma)
        grid = _grid_scan(kk, WW, wt, *aux, m_grid, ls_grid)
        for (i, j) in _local_minima(grid, n_starts):
            x0 = np.array([m_grid[i], ls_grid[j]])
            step = np.array([(m_grid[1] - m_grid[0]) * 0.5, (ls_grid[1] - ls_grid[0]) * 0.5])
            m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, *aux, x0, step, lo, hi, False, gk, _M_OFFSETS,
                                          g_margin, maxiter, xtol, ftol)
            cands.append((f_, m_, ls_))
    f_best, m_best, ls_best = min(cands)
    f_best, a, u, v = _inner(kk, WW, wt, *aux, m_best, math.exp(ls_best))
    params = SviParams(*_raw(a, u, v, m_best, math.exp(ls_best)))
    gmin, gk_at = _min_g(*params[:5], gk, _M_OFFSETS)
    repaired = False
    if not gmin >= g_margin:
        repaired = True
        starts = [(prev_p.m, math.log(prev_p.sigma))] if warm else []
        params, f_best = _repair(kq, kk, WW, wt, aux, params, lo, hi, gk, g_margin, maxiter, xtol, ftol, starts)
        gmin, gk_at = _min_g(*params[:5], gk, _M_OFFSETS)
    return params, f_best, repaired, warm, gmin, gk_at


def _local_minima(grid: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Up to n grid points lower than their 8 neighbours, best first (always ≥ 1)."""
    pad = np.pad(grid, 1, constant_values=np.inf)
    center = pad[1:-1, 1:-1]
    is_min = np.ones_like(center, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= center <= pad[1 + di:pad.shape[0] - 1 + di, 1 + dj:pad.shape[1] - 1 + dj]
    flat = np.flatnonzero(is_min.ravel())
    if flat.size == 0:
        flat = np.array([int(np.argmin(grid))])
    order = flat[np.argsort(grid.ravel()[flat])][:n]
    return [tuple(int(x) for x in np.unravel_index(i, grid.shape)) for i in order]


def _repair(kq, kk, WW, wt, aux, params, lo, hi, gk, g_margin, maxiter, xtol, ftol, starts=()):
    """Arbitrage-constrained refit: feasibility-first Nelder–Mead, then wing shrinking.

    Returns (params, objective). Starts: the caller's (e.g. the previous fit), the
    unconstrained optimum (its basin is usually right, only a wing needs bending), then two
    more; later starts run only when the earlier ones lose more than 2 % of the objective.
    Nelder–Mead stalls on constraint boundaries, so each start is restarted while it gains.
    """
    span = max(float(kq.max() - kq.min()), 1e-3)
    gk_coarse = _check_grid(kq, 81, 120)
    margin = max(g_margin, 0.0) + _SEARCH_MARGIN
    f_free = _inner(kk, WW, wt, *aux, params.m, params.sigma)[0]
    all_starts = list(starts) + [(params.m, math.log(params.sigma)), (params.m, math.log(params.sigma) + 1.0),
                                 (float(np.average(kk, weights=wt)), math.log(0.5 * span))]
    best: Optional[tuple[float, SviParams]] = None
    for m0, ls0 in all_starts:
        x = np.array([min(max(m0, lo[0]), hi[0]), min(max(ls0, lo[1]), hi[1])])
        f_last = np.inf
        for _ in range(4):
            m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, *aux, x, np.array([0.1 * span, 0.5]), lo, hi, True,
                                          gk_coarse, _M_OFFSETS_COARSE, margin, maxiter, xtol, ftol)
            x = np.array([m_, ls_])
            if f_ >= _BIG or f_ >= f_last * (1.0 - 1e-7):
                break
            f_last = f_
        if f_last >= _BIG:
            continue
        f2, a, u, v = _inner(kk, WW, wt, *aux, x[0], math.exp(x[1]))
        p = SviParams(*_raw(a, u, v, x[0], math.exp(x[1])))
        if _min_g(*p[:5], gk, _M_OFFSETS)[0] < g_margin:  # the dense grid saw a dip the coarse one missed
            p = _shrink(kk, wt, p, gk, g_margin)
            f2 = _loss(p, kk, WW, wt, aux)
        if best is None or f2 < best[0]:
            best = (f2, p)
        if best[0] <= 1.02 * f_free + 1e-300:
            break
    if best is not None:
        return best[1], best[0]
    p = _shrink(kk, wt, params, gk, g_margin)
    return p, _loss(p, kk, WW, wt, aux)


def _shrink(kk, wt, params, gk, g_margin) -> SviParams:
    """Wing shrink: b → λb keeping w at the data's weighted centre; λ = 0 is flat (g ≡ 1)."""
    a, b, rho, m, sig = params[:5]
    k_c = float(np.average(kk, weights=wt))
    w_c = float(total_variance(params, k_c))
    if not w_c > 0:
        w_c = float(np.average(total_variance(params, kk), weights=wt))
    if not w_c > 0:
        w_c = 1e-8
    h_c = rho * (k_c - m) + math.sqrt((k_c - m) ** 2 + sig * sig)
    lam_ok, lam_bad = 0.0, 1.0
    for _ in range(30):
        lam = 0.5 * (lam_ok + lam_bad)
        g, _ = _min_g(w_c - lam * b * h_c, lam * b, rho, m, sig, gk, _M_OFFSETS)
        if g >= g_margin + _SEARCH_MARGIN:
            lam_ok = lam
        else:
            lam_bad = lam
    return SviParams(w_c - lam_ok * b * h_c, lam_ok * b, rho, m, sig)


def _finish(params, k, W, idx, kk, WW, wts_used, T, t_years, w_bid, w_ask, gmin, gk_at, repaired, warm,
            objective, t0) -> SviFit:
    wf = total_variance(params, kk)
    vol_fit = np.sqrt(np.maximum(wf, 0.0) / T)
    vol_mid = np.sqrt(WW / T)
    rmse = float(np.sqrt(np.mean((vol_fit - vol_mid) ** 2)) * 100.0)
    inside_frac: Optional[float] = None
    outside: tuple[int, ...] = ()
    if w_bid is not None and w_ask is not None:
        wb = np.asarray(w_bid, float)
        wa = np.asarray(w_ask, float)
        if wb.shape != k.shape or wa.shape != k.shape:
            raise ValueError(f"fit_svi: w_bid {wb.shape} / w_ask {wa.shape} must match k {k.shape}")
        two = np.isfinite(wb) & np.isfinite(wa) & (wa >= wb)
        if two.any():
            wall = total_variance(params, k)
            inside = two & (wall >= wb) & (wall <= wa)
            inside_frac = float(inside.sum() / two.sum())
            outside = tuple(int(i) for i in np.flatnonzero(two & ~inside))
    gmin = float(gmin)
    return SviFit(params=_floats(params), rmse_vol_pts=rmse, n=int(kk.size),
                  butterfly_ok=bool(gmin >= 0.0), min_g=gmin, min_g_k=float(gk_at), repaired=repaired,
                  inside_band_frac=inside_frac, outside_idx=outside, fit_ms=(time.perf_counter() - t0) * 1e3,
                  warm=bool(warm), t_years=None if t_years is None else float(t_years),
                  objective=float(objective), lee_ok=lee_ok(params))


# ------------------------------------------------------------------------- slices


@dataclass(frozen=True, slots=True)
class SliceInputs:
    """Fit inputs built from one expiry's quotes (only two-sided OTM quotes are kept).

    idx: positions in the caller's arrays; k = ln(K/F); total_variance: mid-IV² T;
    w_bid/w_ask: bid/ask IV² T; weights: on squared vol errors (see prepare_slice).
    """

    idx: np.ndarray
    k: np.ndarray
    total_variance: np.ndarray
    weights: np.ndarray
    w_bid: np.ndarray
    w_ask: np.ndarray


SPREAD_FLOOR_VOL = 0.005  # 0.5 vol pt: no quote is trusted more than this band width


def prepare_slice(strikes, forward: float, t_years: float, bid_iv, ask_iv, is_call=None) -> SliceInputs:
    """k, mid total variance and weights from one slice's bid/ask IVs (decimals, NaN = none).

    With is_call given, only out-of-the-money options are used (puts below the forward,
    calls at and above it); without it one quote per strike is assumed. Quotes need both a
    bid and an ask IV with ask ≥ bid. Weight on a quote's squared vol error:
    1 / max(spread_iv, 0.5 vol pt)². The band in vol is the price spread divided by vega,
    so this is vega² / spread_price²: vega and the bid-ask spread both enter, once. (An
    extra vega factor on top double-counts it and starves the wings; measured on the
    simulator's known surface it doubled the wing error, and on the real chain it raised
    the share of quotes inside their band from 98.2 % to 98.7 %.)
    """
    strikes = np.asarray(strikes, float)
    bid_iv = np.asarray(bid_iv, float)
    ask_iv = np.asarray(ask_iv, float)
    if strikes.ndim != 1 or bid_iv.shape != strikes.shape or ask_iv.shape != strikes.shape:
        raise ValueError(f"prepare_slice: strikes {strikes.shape}, bid_iv {bid_iv.shape}, ask_iv {ask_iv.shape}; "
                         "pass 1-D arrays of equal length")
    if not (math.isfinite(forward) and forward > 0):
        raise ValueError(f"prepare_slice: forward={forward!r}; pass a positive forward price")
    if not (math.isfinite(t_years) and t_years > 0):
        raise ValueError(f"prepare_slice: t_years={t_years!r}; pass a positive year fraction (ACT/365)")
    ok = (np.isfinite(strikes) & (strikes > 0) & np.isfinite(bid_iv) & np.isfinite(ask_iv)
          & (bid_iv > 0) & (ask_iv >= bid_iv))
    if is_call is not None:
        is_call = np.broadcast_to(np.asarray(is_call, bool), strikes.shape)
        ok &= np.where(strikes >= forward, is_call, ~is_call)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(strikes[idx], kind="stable")]
    k = np.log(strikes[idx] / forward)
    mid = 0.5 * (bid_iv[idx] + ask_iv[idx])
    spread = np.maximum(ask_iv[idx] - bid_iv[idx], SPREAD_FLOOR_VOL)
    weights = 1.0 / (spread * spread)
    return SliceInputs(idx=idx, k=k, total_variance=mid * mid * t_years, weights=weights,
                       w_bid=bid_iv[idx] ** 2 * t_years, w_ask=ask_iv[idx] ** 2 * t_years)


MIN_QUOTES = 5


def fit_slice(strikes, forward: float, t_years: float, bid_iv, ask_iv, is_call=None, prev=None,
              **opts) -> Optional[SviFit]:
    """prepare_slice + fit_svi_band for one expiry (the flow's fit: inside the bid/ask band first,
    near mid second, with the share and spline rescues); None when fewer than MIN_QUOTES usable
    quotes. opts go to fit_svi_band.

    SviFit.outside_idx indexes the prepared (sorted OTM) quotes; map back with
    prepare_slice(...).idx when needed.
    """
    s = prepare_slice(strikes, forward, t_years, bid_iv, ask_iv, is_call)
    if s.k.size < MIN_QUOTES:
        return None
    return fit_svi_band(s.k, s.total_variance, s.w_bid, s.w_ask, s.weights, prev, t_years=t_years, **opts)


def warm_up() -> None:
    """Compile (or load cached) numba kernels on a tiny slice, so the first real fit is fast."""
    p = SviParams(0.02, 0.1, -0.3, 0.05, 0.2)
    k = np.linspace(-0.5, 0.5, 9)
    w = total_variance(p, k)
    f = fit_svi(k, w, t_years=0.5)
    fit_svi(k, w * 1.01, prev=f, t_years=0.5)
    _repair(k, k, w, np.ones_like(k), _no_band(float(w.max())), SviParams(-0.041, 0.1331, 0.306, 0.3586, 0.4153),
            np.array([-2.0, -9.0]), np.array([2.0, 2.0]), _check_grid(k), 0.0, 20, 1e-6, 1e-10)
    fb = fit_svi_band(k, w, w * 0.98, w * 1.02, t_years=0.5)
    fit_svi_band(k, w * 0.9, w * 0.88, w * 0.92, prev=fb, t_years=0.4, ceiling=fb)


__all__ = ["SviParams", "SplineSvi", "Smile", "SviFit", "SliceInputs", "as_params", "total_variance", "butterfly_g", "lee_ok",
           "min_variance", "fit_svi", "fit_svi_band", "evaluate_fit", "within_calendar_bounds", "prepare_slice",
           "fit_slice", "warm_up", "MIN_QUOTES"]
