"""Analytics on a fitted smile: ATM vol, risk reversals, butterflies and the SVI-JW view.

Pure numerics (numba kernel for the delta → strike solve, cache=True): no I/O, no
bytewax, never imports connectors or flows.

Conventions, stated once here (docs/architecture.md §6):
- k = ln(K/F), w = σ²T (T in ACT/365 years); vols and RR/BF are decimals (0.05 = 5 vol pts).
- ATM is at-the-money-forward, k = 0: atm_vol = √(w(0)/T).
- Deltas are forward deltas, not premium-adjusted: call Δ = N(d1), put Δ = N(d1) − 1 with
  d1 = −k/√w + √w/2. A "25Δ put" is the strike whose put delta is −0.25.
- RR(Δ) = σ(Δ call) − σ(Δ put)   (negative for a smile skewed to the downside);
  BF(Δ) = (σ(Δ call) + σ(Δ put))/2 − σ(ATM).
- The Δ → k solve works on d1 directly (d1(k) = N⁻¹(Δ) for calls, −N⁻¹(|Δ|) for puts):
  geometric bracketing outward from k = 0 in steps of the ATM standard deviation, then
  bisection to machine precision — no derivative, so kinks, flat wings or a
  non-monotone d1 on an arbitrageable smile cannot make it diverge (it returns the root
  nearest the money it brackets, NaN when there is none within |k| ≤ 50).

Every node function has the graph.toml signature fn(params, t_years, **node_params) → float,
where params is anything svi.as_params accepts: (a, b, rho, m, sigma), SviParams, SviFit,
or an object with those attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from numba import njit
from scipy.special import ndtri

from operators.kernels import bspline
from operators.kernels.svi import SviParams, as_params, min_variance, total_variance


@njit(cache=True)
def _w_blend(coef, P, k):
    w = 0.0
    for i in range(coef.size):
        x = k - P[i, 3]
        wi = P[i, 0] + P[i, 1] * (P[i, 2] * x + math.sqrt(x * x + P[i, 4] * P[i, 4]))
        n = int(P[i, 7])
        if n > 0:
            wi += bspline.value_at(P[i, 5], P[i, 6], P[i, 8:], n, k)
        w += coef[i] * wi
    return w


@njit(cache=True)
def _d1(coef, P, k):
    w = _w_blend(coef, P, k)
    if not w > 0.0:
        return np.nan
    s = math.sqrt(w)
    return -k / s + 0.5 * s


@njit(cache=True)
def _w_at(coef, P, ks):
    out = np.empty(ks.size)
    for j in range(ks.size):
        out[j] = _w_blend(coef, P, ks[j])
    return out


@njit(cache=True)
def _k_for_d1(coef, P, targets):
    """k with d1(k) = target for each target (NaN if not bracketed within |k| ≤ 50)."""
    out = np.full(targets.size, np.nan)
    w0 = _w_blend(coef, P, 0.0)
    if not w0 > 0.0:
        return out
    h = math.sqrt(w0)
    f_at0 = 0.5 * h
    for j in range(targets.size):
        tgt = targets[j]
        if not np.isfinite(tgt):
            continue
        f0 = f_at0 - tgt
        if f0 == 0.0:
            out[j] = 0.0
            continue
        direction = 1.0 if f0 > 0.0 else -1.0  # d1 decreases in k on arbitrage-free smiles
        lo = 0.0
        step = 0.25 * h
        hi = np.nan
        while True:
            k1 = direction * step
            if abs(k1) > 50.0:
                break
            f1 = _d1(coef, P, k1) - tgt
            if f1 != f1:
                break
            if (f1 > 0.0) != (f0 > 0.0) or f1 == 0.0:
                hi = k1
                break
            lo = k1
            step *= 1.6
        if hi != hi:
            continue
        flo = _d1(coef, P, lo) - tgt
        ok = True
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if mid == lo or mid == hi:
                break
            fm = _d1(coef, P, mid) - tgt
            if fm != fm:  # w ≤ 0 inside the bracket: no strike there has the delta (hypothesis found
                ok = False  # a = −0.5, b = 3, m = 2, σ = 0.125 returning k10c where w < 0)
                break
            if (fm > 0.0) == (flo > 0.0):
                lo = mid
                flo = fm
            else:
                hi = mid
        if ok:
            out[j] = 0.5 * (lo + hi)
    return out


@dataclass(frozen=True, slots=True)
class BlendSmile:
    """w(k) = Σ weightᵢ · w(paramsᵢ, k): one slice (raw SVI and its spline, if any), or a
    fixed-tenor blend of two."""

    weights: tuple[float, ...]
    params: tuple[SviParams, ...]

    def __post_init__(self) -> None:
        # floats and SviParams/SplineSvi (tuples): a smile is a value, hashable (the memo below)
        object.__setattr__(self, "weights", tuple(float(c) for c in self.weights))
        object.__setattr__(self, "params", tuple(as_params(p) for p in self.params))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights, P): P's row i is slice i's a, b, ρ, m, σ, spline_lo_k, spline_hi_k, the
        number of spline coefficients n, then the n coefficients (zero-padded to the widest)."""
        ps = self.params
        P = np.zeros((len(ps), 8 + max((len(p.spline_w) for p in ps), default=0)))
        for i, p in enumerate(ps):
            P[i, :5] = p[:5]
            P[i, 5], P[i, 6] = p.spline_lo_k, p.spline_hi_k
            P[i, 7] = len(p.spline_w)
            P[i, 8:8 + len(p.spline_w)] = p.spline_w
        return np.asarray(self.weights, float), P

    def total_variance(self, k) -> np.ndarray:
        k = np.asarray(k, float)
        return sum(c * total_variance(p, k) for c, p in zip(self.weights, self.params))


def _smile(params: Any) -> BlendSmile:
    if isinstance(params, BlendSmile):
        return params
    return BlendSmile((1.0,), (params,))


def _check_t(t_years: float) -> float:
    t = float(t_years)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"t_years={t_years!r}; pass a positive year fraction (ACT/365)")
    return t


# One expiry's nodes ask its smile for the same strikes many times (rr25, bf25, rr25_bid, bf25_ask
# … each need the 25Δ call and put): the solves are memoized per (smile, T, Δ). With graph.toml's
# nodes an expiry made 12 delta solves for 4 distinct strikes and read its ATM vol 5 times; the
# expiry nodes of a 60-strike expiry took 867 µs a fit, 118–132 µs with the memo (2026-12-07).
_MEMO = 512


@lru_cache(maxsize=_MEMO)
def _delta_pair(smile: "BlendSmile", t: float, delta: float) -> tuple[float, float, float, float]:
    """(k of the Δ call, k of the Δ put, their vols) on `smile` at T = t; NaN where none."""
    coef, P = smile.arrays()
    z = float(ndtri(delta))
    ks = _k_for_d1(coef, P, np.array([z, -z]))
    w = _w_at(coef, P, np.where(np.isfinite(ks), ks, 0.0))
    vols = [math.sqrt(max(float(wi), 0.0) / t) if ki == ki else math.nan for ki, wi in zip(ks, w)]
    return float(ks[0]), float(ks[1]), vols[0], vols[1]


@lru_cache(maxsize=_MEMO)
def _atm(smile: "BlendSmile", t: float) -> float:
    coef, P = smile.arrays()
    w0 = float(_w_blend(coef, P, 0.0))
    return math.sqrt(w0 / t) if w0 > 0 else math.nan


def _delta_magnitude(delta: float, is_call: bool) -> tuple[float, bool]:
    d = float(delta)
    if d < 0:  # a put delta given with its sign
        d, is_call = -d, False
    if not 0.0 < d < 1.0:
        raise ValueError(f"delta={delta!r}; pass a delta magnitude strictly between 0 and 1 (e.g. 0.25)")
    return d, is_call


def k_at_delta(params: Any, t_years: float, delta: float = 0.25, is_call: bool = True) -> float:
    """Log-moneyness k = ln(K/F) of the strike with forward delta `delta` (call) or −delta
    (put; a negative delta also means put). NaN when the smile has no such strike."""
    t = _check_t(t_years)
    d, is_call = _delta_magnitude(delta, is_call)
    kc, kp, _, _ = _delta_pair(_smile(params), t, d)
    return kc if is_call else kp


def vol_at_delta(params: Any, t_years: float, delta: float = 0.25, is_call: bool = True) -> float:
    """Implied vol (decimal) on the smile at the given forward delta (see k_at_delta)."""
    t = _check_t(t_years)
    d, is_call = _delta_magnitude(delta, is_call)
    _, _, vc, vp = _delta_pair(_smile(params), t, d)
    return vc if is_call else vp


def atm_vol(params: Any, t_years: float) -> float:
    """ATM-forward vol (k = 0), decimal: √(w(0)/T); NaN if w(0) ≤ 0."""
    return _atm(_smile(params), _check_t(t_years))


def _rr_bf(params: Any, t_years: float, deltas: Sequence[float]) -> dict[str, float]:
    t = _check_t(t_years)
    sm = _smile(params)
    atm = _atm(sm, t)
    out: dict[str, float] = {"atm_vol": atm}
    for d in deltas:
        d, _ = _delta_magnitude(d, True)
        kc, kp, c, p = _delta_pair(sm, t, d)
        tag = f"{round(d * 100):d}"
        out[f"rr{tag}"] = c - p
        out[f"bf{tag}"] = 0.5 * (c + p) - atm
        out[f"k{tag}c"], out[f"k{tag}p"] = kc, kp
        out[f"vol{tag}c"], out[f"vol{tag}p"] = c, p
    return out


def risk_reversal(params: Any, t_years: float, delta: float = 0.25) -> float:
    """RR(Δ) = σ(Δ call) − σ(Δ put), decimal vol; negative when puts are bid over calls."""
    d = abs(float(delta))
    return _rr_bf(params, t_years, (d,))[f"rr{round(d * 100):d}"]


def butterfly(params: Any, t_years: float, delta: float = 0.25) -> float:
    """BF(Δ) = (σ(Δ call) + σ(Δ put))/2 − σ(ATM), decimal vol (smile convexity)."""
    d = abs(float(delta))
    return _rr_bf(params, t_years, (d,))[f"bf{round(d * 100):d}"]


def svi_jw(params: Any, t_years: float) -> dict[str, float]:
    """Gatheral's SVI jump-wings view of raw SVI params at maturity t (variances per year):

    v  = w(0)/t                                    ATM variance
    ψ  = (1/√w₀)·(b/2)·(ρ − m/√(m² + σ²))          ATM skew: ∂√w/∂k at k = 0 (= √t·∂σ/∂k)
    p  = (1/√w₀)·b(1 − ρ)                          put (left) wing slope
    c  = (1/√w₀)·b(1 + ρ)                          call (right) wing slope
    ṽ  = (a + bσ√(1 − ρ²))/t                       minimum implied variance
    with w₀ = v·t. NaN (except ṽ) when w₀ ≤ 0. Of a slice with a spline (svi.SplineSvi) the same
    quantities of the curve itself: w₀ and ψ = w′(0)/(2√w₀) with the spline, ṽ its minimum
    (svi.min_variance), the wing slopes b(1 ∓ ρ) raw SVI's (the spline never reaches the wings)
    over √w₀ — so v stays atm_vol² whatever the curve.
    """
    t = _check_t(t_years)
    p = as_params(params)
    a, b, rho, m, sigma = p[:5]
    w0 = a + b * (-rho * m + math.sqrt(m * m + sigma * sigma))
    dw0 = b * (rho - m / math.sqrt(m * m + sigma * sigma))
    vt = (a + b * sigma * math.sqrt(max(0.0, 1.0 - rho * rho))) / t
    if p.spline_w:
        w0 += float(bspline.value(p.spline_lo_k, p.spline_hi_k, p.spline_w, 0.0))
        dw0 += float(bspline.value(p.spline_lo_k, p.spline_hi_k, p.spline_w, 0.0, 1))
        vt = min_variance(p) / t
    if not w0 > 0:
        return {"jw_v": math.nan, "jw_psi": math.nan, "jw_p": math.nan, "jw_c": math.nan, "jw_vt": vt}
    s = math.sqrt(w0)
    return {"jw_v": w0 / t,
            "jw_psi": 0.5 * dw0 / s,
            "jw_p": b * (1.0 - rho) / s,
            "jw_c": b * (1.0 + rho) / s,
            "jw_vt": vt}


def jw_atm_variance(params: Any, t_years: float) -> float:
    return svi_jw(params, t_years)["jw_v"]


def jw_atm_skew(params: Any, t_years: float) -> float:
    return svi_jw(params, t_years)["jw_psi"]


def jw_put_wing(params: Any, t_years: float) -> float:
    return svi_jw(params, t_years)["jw_p"]


def jw_call_wing(params: Any, t_years: float) -> float:
    return svi_jw(params, t_years)["jw_c"]


def jw_min_variance(params: Any, t_years: float) -> float:
    return svi_jw(params, t_years)["jw_vt"]


def smile_analytics(params: Any, t_years: float) -> dict[str, float]:
    """Everything the flow shows for one expiry: atm_vol, rr25, bf25, rr10, bf10 (decimals),
    the delta strikes k25c, k25p, k10c, k10p, and the JW keys jw_v, jw_psi, jw_p, jw_c, jw_vt."""
    out = _rr_bf(params, t_years, (0.25, 0.10))
    out.update(svi_jw(params, t_years))
    return out


def blend_analytics(smile: BlendSmile, t_years: float, deltas: Sequence[float] = (0.25, 0.10)) -> dict:
    """atm_vol and RR/BF at the given deltas on a blended (fixed-tenor) smile; None if not finite."""
    out = _rr_bf(smile, t_years, deltas)
    return {key: (float(v) if v == v and math.isfinite(v) else None) for key, v in out.items()}


def warm_up() -> None:
    """Compile (or load cached) the numba delta solver."""
    smile_analytics((0.02, 0.1, -0.3, 0.0, 0.2), 0.5)


__all__ = ["BlendSmile", "atm_vol", "risk_reversal", "butterfly", "k_at_delta", "vol_at_delta", "svi_jw",
           "jw_atm_variance", "jw_atm_skew", "jw_put_wing", "jw_call_wing", "jw_min_variance",
           "smile_analytics", "blend_analytics", "warm_up"]
