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

Why one module of ~800 lines: the numba kernels (inner solve, g-minimum search, objective,
Nelder–Mead, repair) call one another as compiled functions and share private constants
(the m-offset grids, the margin); split across modules they would become public API of each
other and the cache=True compile units would multiply. Everything here is one calibration.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np
from numba import njit

# ------------------------------------------------------------------------- parameters


class SviParams(NamedTuple):
    """Raw SVI parameters (total variance, not variance): w(k) = a + b(ρ(k−m) + √((k−m)²+σ²))."""

    a: float
    b: float
    rho: float
    m: float
    sigma: float


def as_params(obj: Any) -> SviParams:
    """Accept SviParams, an SviFit, any object with a, b, rho, m, sigma (e.g. a SmileFit
    event) or a 5-sequence (a, b, rho, m, sigma)."""
    if isinstance(obj, SviParams):
        return obj
    if isinstance(obj, SviFit):
        return obj.params
    if all(hasattr(obj, n) for n in SviParams._fields):
        return SviParams(*(float(getattr(obj, n)) for n in SviParams._fields))
    try:
        vals = [float(x) for x in obj]
    except TypeError:
        raise TypeError(f"SVI params: got {type(obj).__name__} {obj!r}; pass (a, b, rho, m, sigma), "
                        "SviParams, an SviFit or an object with those attributes") from None
    if len(vals) != 5:
        raise ValueError(f"SVI params: got {len(vals)} values {vals!r}; pass exactly (a, b, rho, m, sigma)")
    return SviParams(*vals)


def total_variance(params: Any, k) -> np.ndarray:
    """w(k) of raw SVI params at log-moneyness k (array or scalar)."""
    a, b, rho, m, sigma = as_params(params)
    x = np.asarray(k, float) - m
    return a + b * (rho * x + np.sqrt(x * x + sigma * sigma))


def _derivs(params: Any, k):
    a, b, rho, m, sigma = as_params(params)
    k = np.asarray(k, float)
    x = k - m
    r = np.sqrt(x * x + sigma * sigma)
    w = a + b * (rho * x + r)
    w1 = b * (rho + x / r)
    w2 = b * sigma * sigma / (r * r * r)
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
    """Lee's moment bound on both wings: b(1 + |ρ|) ≤ 2 (total-variance slopes)."""
    a, b, rho, m, sigma = as_params(params)
    return b >= 0 and abs(rho) <= 1 and b * (1 + abs(rho)) <= 2.0 + 1e-12


def min_variance(params: Any) -> float:
    """min_k w(k) = a + bσ√(1 − ρ²)."""
    a, b, rho, m, sigma = as_params(params)
    return a + b * sigma * math.sqrt(max(0.0, 1.0 - rho * rho))


# ------------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class SviFit:
    """One fitted slice.

    params: raw SVI; rmse_vol_pts: plain RMSE of fitted vs mid vol over the n fitted quotes
    (vol points; with t_years=None vols are √w, i.e. T taken as 1); objective: the weighted
    error actually minimised (≈ weighted mean squared vol error, decimals²);
    butterfly_ok: min_g ≥ 0 and w > 0 on the check grid; min_g, min_g_k: the worst g and
    where; repaired: the unconstrained best fit had g < 0 and was replaced by the
    arbitrage-free one returned here; inside_band_frac/outside_idx: share of two-sided
    quotes whose bid–ask band contains the fit, and the indices (into the input k) of
    those that do not (None/() when no band given); warm: warm-started from `prev`.
    """

    params: SviParams
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
def _inner(k, W, wt, m, sig, a_hi):
    """Best (a, u, v) for fixed (m, σ): returns (sse, a, u, v)."""
    H = np.zeros((3, 3))
    r = np.zeros(3)
    sww = 0.0
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
        c = wt[i]
        t = W[i]
        H[0, 0] += c
        H[0, 1] += c * p
        H[0, 2] += c * q
        H[1, 1] += c * p * p
        H[1, 2] += c * p * q
        H[2, 2] += c * q * q
        r[0] += c * t
        r[1] += c * p * t
        r[2] += c * q * t
        sww += c * t * t
    H[1, 0] = H[0, 1]
    H[2, 0] = H[0, 2]
    H[2, 1] = H[1, 2]
    lo = np.array([-np.inf, 0.0, 0.0])
    hi = np.array([a_hi, 2.0 * sig, 2.0 * sig])
    x = _solve_box3(H, r, lo, hi)
    f = sww
    for i in range(3):
        hx = 0.0
        for j in range(3):
            hx += H[i, j] * x[j]
        f += x[i] * hx - 2.0 * r[i] * x[i]
    return max(f, 0.0), x[0], x[1], x[2]


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
    rel_tol of its bracket (rel_tol = 0: no refinement). Returns (min g, k at the min)."""
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
def _objective(k, W, wt, a_hi, m, ls, strict, gk, moff, margin):
    sig = math.exp(ls)
    f, a, u, v = _inner(k, W, wt, m, sig, a_hi)
    if strict:
        a_, b_, rho_, m_, s_ = _raw(a, u, v, m, sig)
        gmin, _ = _min_g(a_, b_, rho_, m_, s_, gk, moff, 1e-5)
        if gmin < margin:
            return _BIG + (margin - gmin), a, u, v
    return f, a, u, v


@njit(cache=True)
def _grid_scan(k, W, wt, a_hi, m_grid, ls_grid):
    out = np.empty((m_grid.size, ls_grid.size))
    for i in range(m_grid.size):
        for j in range(ls_grid.size):
            out[i, j] = _inner(k, W, wt, m_grid[i], math.exp(ls_grid[j]), a_hi)[0]
    return out


@njit(cache=True)
def _nelder_mead(k, W, wt, a_hi, x0, step, lo, hi, strict, gk, moff, margin, maxiter, xtol, ftol):
    """2-D Nelder–Mead over (m, log σ), clamped to the box [lo, hi]. Returns (m, ls, f, nfev)."""
    P = np.empty((3, 2))
    F = np.empty(3)
    P[0, 0], P[0, 1] = x0[0], x0[1]
    P[1, 0], P[1, 1] = x0[0] + step[0], x0[1]
    P[2, 0], P[2, 1] = x0[0], x0[1] + step[1]
    for i in range(3):
        for d in range(2):
            P[i, d] = min(max(P[i, d], lo[d]), hi[d])
        F[i] = _objective(k, W, wt, a_hi, P[i, 0], P[i, 1], strict, gk, moff, margin)[0]
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
        fr = _objective(k, W, wt, a_hi, xr[0], xr[1], strict, gk, moff, margin)[0]
        nfev += 1
        if fr < F[0]:
            xe[0] = min(max(cx + 2.0 * (cx - P[2, 0]), lo[0]), hi[0])
            xe[1] = min(max(cy + 2.0 * (cy - P[2, 1]), lo[1]), hi[1])
            fe = _objective(k, W, wt, a_hi, xe[0], xe[1], strict, gk, moff, margin)[0]
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
            fc = _objective(k, W, wt, a_hi, xc[0], xc[1], strict, gk, moff, margin)[0]
            nfev += 1
            if fc < min(fr, F[2]):
                P[2, 0], P[2, 1], F[2] = xc[0], xc[1], fc
            else:  # shrink towards the best vertex
                for i in range(1, 3):
                    for d in range(2):
                        P[i, d] = P[0, d] + 0.5 * (P[i, d] - P[0, d])
                    F[i] = _objective(k, W, wt, a_hi, P[i, 0], P[i, 1], strict, gk, moff, margin)[0]
                nfev += 2
    ib = 0
    for i in range(1, 3):
        if F[i] < F[ib]:
            ib = i
    return P[ib, 0], P[ib, 1], F[ib], nfev


# ------------------------------------------------------------------------- fitting


def _check_grid(k: np.ndarray, n_near: int = 241, n_wing: int = 480) -> np.ndarray:
    """Fixed part of the butterfly check grid: quoted range ± padding, and far wings."""
    k_lo, k_hi = float(k.min()), float(k.max())
    span = max(k_hi - k_lo, 1e-3)
    pad = max(0.5 * span, 0.1)
    near = np.linspace(k_lo - pad, k_hi + pad, n_near)
    # far wings: g's asymptote is approached slowly, and with ρ → ±1 a shallow dip can sit
    # tens of units out; 2 % spacing keeps such a dip between refinable neighbours
    wings = _wings(n_wing)
    return np.unique(np.concatenate([near, -wings + min(k_lo - pad, 0.0), wings + max(k_hi + pad, 0.0)]))


@functools.lru_cache(maxsize=4)
def _wings(n_wing: int) -> np.ndarray:
    wings = np.geomspace(0.05, 1000.0, n_wing)
    wings.flags.writeable = False  # shared between fits
    return wings


def _params_tuple(obj: Any) -> Optional[SviParams]:
    if obj is None:
        return None
    return as_params(obj)


def _validate(k: np.ndarray, w: np.ndarray, name_w: str = "total_variance") -> None:
    if k.ndim != 1 or w.shape != k.shape:
        raise ValueError(f"fit_svi: k has shape {k.shape} and {name_w} {w.shape}; pass two 1-D arrays of equal length")


def fit_svi(k, total_variance, weights=None, prev=None, *, t_years: Optional[float] = None,
            w_bid=None, w_ask=None, n_m: int = 17, n_sigma: int = 13, n_starts: int = 2,
            maxiter: int = 300, a_cap: bool = True, g_margin: float = 0.0) -> SviFit:
    """Fit raw SVI to total variances w_i at log-moneyness k_i (arbitrage-free output).

    weights: relative weights on each quote's squared *vol* error (default equal); they are
    converted to total-variance space as weight / (4 w_i T) so the minimised error is, to
    first order, the weighted mean squared vol error. prev: a previous SviFit / params to
    warm-start from (the outer search then starts at its (m, σ), with a coarse-grid guard
    against a stale basin). t_years: for vol-point RMSE (else T = 1). w_bid, w_ask: optional
    bid/ask total variances (NaN where missing) for the band report. Non-finite or
    non-positive w_i are dropped. Raises ValueError on malformed input or < 3 usable quotes.
    """
    t0 = time.perf_counter()
    k = np.ascontiguousarray(k, dtype=float)
    W = np.ascontiguousarray(total_variance, dtype=float)
    _validate(k, W)
    if t_years is not None and not (math.isfinite(t_years) and t_years > 0):
        raise ValueError(f"fit_svi: t_years={t_years!r}; pass a positive year fraction (ACT/365) or None")
    wts = np.ones_like(k) if weights is None else np.ascontiguousarray(weights, dtype=float)
    if wts.shape != k.shape:
        raise ValueError(f"fit_svi: weights has shape {wts.shape}, k {k.shape}; pass one weight per quote")
    use = np.isfinite(k) & np.isfinite(W) & (W > 0) & np.isfinite(wts) & (wts > 0)
    n = int(use.sum())
    if n < 3:
        raise ValueError(f"fit_svi: only {n} usable quotes (finite k, w > 0, weight > 0); an SVI fit needs at least 3")
    idx = np.flatnonzero(use)
    kk, WW = k[use], W[use]
    T = 1.0 if t_years is None else float(t_years)
    wt = wts[use] / (4.0 * WW * T)
    wt = wt / wts[use].sum()
    a_hi = float(WW.max()) if a_cap else np.inf
    k_lo, k_hi = float(kk.min()), float(kk.max())
    span = max(k_hi - k_lo, 1e-3)
    lo = np.array([k_lo - 2.0 * span, math.log(span * 1e-4)])
    hi = np.array([k_hi + 2.0 * span, math.log(span * 10.0)])
    gk = _check_grid(kk)
    xtol, ftol = 1e-7, 1e-12
    prev_p = _params_tuple(prev)
    warm = prev_p is not None and prev_p.sigma > 0 and math.isfinite(prev_p.m)

    cands: list[tuple[float, float, float]] = []  # (f, m, ls)
    if warm:
        x0 = np.array([min(max(prev_p.m, lo[0]), hi[0]), min(max(math.log(prev_p.sigma), lo[1]), hi[1])])
        step = np.array([0.05 * span, 0.1])
        m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, a_hi, x0, step, lo, hi, False, gk, _M_OFFSETS, g_margin,
                                      maxiter, xtol, ftol)
        cands.append((f_, m_, ls_))
        # guard: a coarse grid; any point better than the warm result means the basin moved
        m_grid = np.linspace(k_lo - 0.25 * span, k_hi + 0.25 * span, 7)
        ls_grid = np.linspace(math.log(span * 3e-3), math.log(span * 3.0), 5)
        grid = _grid_scan(kk, WW, wt, a_hi, m_grid, ls_grid)
        i, j = np.unravel_index(int(np.argmin(grid)), grid.shape)
        if grid[i, j] < f_ * (1.0 - 1e-6):
            x0 = np.array([m_grid[i], ls_grid[j]])
            step = np.array([(m_grid[1] - m_grid[0]) * 0.5, (ls_grid[1] - ls_grid[0]) * 0.5])
            m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, a_hi, x0, step, lo, hi, False, gk, _M_OFFSETS,
                                          g_margin, maxiter, xtol, ftol)
            cands.append((f_, m_, ls_))
    else:
        m_grid = np.linspace(k_lo - 0.5 * span, k_hi + 0.5 * span, n_m)
        ls_grid = np.linspace(math.log(span * 1e-3), math.log(span * 4.0), n_sigma)
        grid = _grid_scan(kk, WW, wt, a_hi, m_grid, ls_grid)
        for (i, j) in _local_minima(grid, n_starts):
            x0 = np.array([m_grid[i], ls_grid[j]])
            step = np.array([(m_grid[1] - m_grid[0]) * 0.5, (ls_grid[1] - ls_grid[0]) * 0.5])
            m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, a_hi, x0, step, lo, hi, False, gk, _M_OFFSETS,
                                          g_margin, maxiter, xtol, ftol)
            cands.append((f_, m_, ls_))
    f_best, m_best, ls_best = min(cands)
    f_best, a, u, v = _inner(kk, WW, wt, m_best, math.exp(ls_best), a_hi)
    params = SviParams(*_raw(a, u, v, m_best, math.exp(ls_best)))
    gmin, gk_at = _min_g(*params, gk, _M_OFFSETS)
    repaired = False
    if not gmin >= g_margin:
        repaired = True
        starts = [(prev_p.m, math.log(prev_p.sigma))] if warm else []
        params, f_best = _repair(kk, WW, wt, a_hi, params, lo, hi, gk, g_margin, maxiter, xtol, ftol, starts)
        gmin, gk_at = _min_g(*params, gk, _M_OFFSETS)
    return _finish(params, k, W, idx, kk, WW, wts[use], T, t_years, w_bid, w_ask, gmin, gk_at, repaired,
                   warm, f_best, t0)


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


def _repair(kk, WW, wt, a_hi, params, lo, hi, gk, g_margin, maxiter, xtol, ftol, starts=()):
    """Arbitrage-constrained refit: feasibility-first Nelder–Mead, then wing shrinking.

    Returns (params, objective). Starts: the caller's (e.g. the previous fit), the
    unconstrained optimum (its basin is usually right, only a wing needs bending), then two
    more; later starts run only when the earlier ones lose more than 2 % of the objective.
    Nelder–Mead stalls on constraint boundaries, so each start is restarted while it gains.
    """
    span = max(float(kk.max() - kk.min()), 1e-3)
    gk_coarse = _check_grid(kk, 81, 120)
    margin = max(g_margin, 0.0) + _SEARCH_MARGIN
    f_free = _inner(kk, WW, wt, params.m, params.sigma, a_hi)[0]
    all_starts = list(starts) + [(params.m, math.log(params.sigma)), (params.m, math.log(params.sigma) + 1.0),
                                 (float(np.average(kk, weights=wt)), math.log(0.5 * span))]
    best: Optional[tuple[float, SviParams]] = None
    for m0, ls0 in all_starts:
        x = np.array([min(max(m0, lo[0]), hi[0]), min(max(ls0, lo[1]), hi[1])])
        f_last = np.inf
        for _ in range(4):
            m_, ls_, f_, _ = _nelder_mead(kk, WW, wt, a_hi, x, np.array([0.1 * span, 0.5]), lo, hi, True,
                                          gk_coarse, _M_OFFSETS_COARSE, margin, maxiter, xtol, ftol)
            x = np.array([m_, ls_])
            if f_ >= _BIG or f_ >= f_last * (1.0 - 1e-7):
                break
            f_last = f_
        if f_last >= _BIG:
            continue
        f2, a, u, v = _inner(kk, WW, wt, x[0], math.exp(x[1]), a_hi)
        p = SviParams(*_raw(a, u, v, x[0], math.exp(x[1])))
        if _min_g(*p, gk, _M_OFFSETS)[0] < g_margin:  # the dense grid saw a dip the coarse one missed
            p = _shrink(kk, wt, p, gk, g_margin)
            res = WW - total_variance(p, kk)
            f2 = float(np.sum(wt * res * res))
        if best is None or f2 < best[0]:
            best = (f2, p)
        if best[0] <= 1.02 * f_free + 1e-300:
            break
    if best is not None:
        return best[1], best[0]
    p = _shrink(kk, wt, params, gk, g_margin)
    res = WW - total_variance(p, kk)
    return p, float(np.sum(wt * res * res))


def _shrink(kk, wt, params, gk, g_margin) -> SviParams:
    """Wing shrink: b → λb keeping w at the data's weighted centre; λ = 0 is flat (g ≡ 1)."""
    a, b, rho, m, sig = params
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
    return SviFit(params=SviParams(*(float(x) for x in params)), rmse_vol_pts=rmse, n=int(kk.size),
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
    """prepare_slice + fit_svi for one expiry; None when fewer than MIN_QUOTES usable quotes.

    SviFit.outside_idx indexes the prepared (sorted OTM) quotes; map back with
    prepare_slice(...).idx when needed.
    """
    s = prepare_slice(strikes, forward, t_years, bid_iv, ask_iv, is_call)
    if s.k.size < MIN_QUOTES:
        return None
    return fit_svi(s.k, s.total_variance, s.weights, prev, t_years=t_years, w_bid=s.w_bid, w_ask=s.w_ask,
                   **opts)


def warm_up() -> None:
    """Compile (or load cached) numba kernels on a tiny slice, so the first real fit is fast."""
    p = SviParams(0.02, 0.1, -0.3, 0.05, 0.2)
    k = np.linspace(-0.5, 0.5, 9)
    w = total_variance(p, k)
    f = fit_svi(k, w, t_years=0.5)
    fit_svi(k, w * 1.01, prev=f, t_years=0.5)
    _repair(k, w, np.ones_like(k), float(w.max()), SviParams(-0.041, 0.1331, 0.306, 0.3586, 0.4153),
            np.array([-2.0, -9.0]), np.array([2.0, 2.0]), _check_grid(k), 0.0, 20, 1e-6, 1e-10)


__all__ = ["SviParams", "SviFit", "SliceInputs", "as_params", "total_variance", "butterfly_g", "lee_ok",
           "min_variance", "fit_svi", "prepare_slice", "fit_slice", "warm_up", "MIN_QUOTES"]
