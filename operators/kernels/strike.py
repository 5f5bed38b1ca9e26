"""Per strike, from a fitted smile: surface greeks for graph.toml's level = "instrument" nodes.

Pure numerics over numpy arrays: no I/O, no bytewax, never imports connectors, flows or
operators.state.

Conventions (docs/architecture.md §6): Black-76 on the forward, undiscounted (coin-margined);
k = ln(K/F), w = σ²T, T in ACT/365 years, vols decimal. Deltas are forward deltas (N(d₁) for
calls, N(d₁) − 1 for puts), d₁ = −k/√w + √w/2, with σ the fitted vol at the strike (sticky
strike: the smile's own slope is not in the delta). Vega is per 1.00 of vol in coin per coin of
notional: ∂(P/F)/∂σ = φ(d₁)√T (a Deribit premium is P/F coin; multiply by F for USD).

Every node function has the level = "instrument" signature fn(*inputs, t_years, **params): the
built-in input "strike" is a StrikeData whose fields hold one entry per strike of the expiry
(elementwise numpy: the same function takes one strike's floats), "fit" the raw SVI params, and
an instrument-level input arrives as an array aligned with the strikes. It returns one value
per strike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from operators.kernels import bspline
from operators.kernels.svi import as_params

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclass(frozen=True, slots=True)
class StrikeData:
    """One expiry's strikes as arrays (n,): strike (quote unit), k = ln(K/F), forward (the
    fit's), bid_iv / ask_iv (decimal, NaN where that side has no quote)."""

    strike: np.ndarray
    k: np.ndarray
    forward: float
    bid_iv: np.ndarray
    ask_iv: np.ndarray

    @classmethod
    def of(cls, strikes, forward: float, bid_iv=(), ask_iv=()) -> "StrikeData":
        K = np.asarray(strikes, float)
        n = K.size

        def side(x):
            a = np.array([np.nan if v is None else v for v in x], float) if len(x) else np.full(n, np.nan)
            return a if a.size == n else np.full(n, np.nan)

        with np.errstate(divide="ignore", invalid="ignore"):
            k = np.log(K / float(forward))
        return cls(K, k, float(forward), side(bid_iv), side(ask_iv))


def _w_and_slope(params, k):
    p = as_params(params)
    a, b, rho, m, sigma = p[:5]
    x = np.asarray(k, float) - m
    r = np.sqrt(x * x + sigma * sigma)
    w, dw = a + b * (rho * x + r), b * (rho + x / r)
    if p.spline_w:  # the slice's spline (svi.SviParams): zero beyond its support
        w = w + bspline.value(p.spline_lo_k, p.spline_hi_k, p.spline_w, k)
        dw = dw + bspline.value(p.spline_lo_k, p.spline_hi_k, p.spline_w, k, 1)
    return w, dw


def fitted_vol(params, strike: StrikeData, t_years: float):
    """σ(k) = √(w(k)/T) on the fit at each strike, decimal; NaN where w ≤ 0."""
    w, _ = _w_and_slope(params, strike.k)
    with np.errstate(invalid="ignore"):
        return np.where(w > 0, np.sqrt(np.maximum(w, 0.0) / t_years), np.nan)


def skew_slope(params, strike: StrikeData, t_years: float):
    """dσ/dk at each strike on the fit: w′(k) / (2√(w(k)·T)), decimal vol per unit of ln(K/F)."""
    w, dw = _w_and_slope(params, strike.k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(w > 0, dw / (2.0 * np.sqrt(np.maximum(w, 0.0) * t_years)), np.nan)


def _d1(params, strike: StrikeData):
    w, _ = _w_and_slope(params, strike.k)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(w > 0, np.sqrt(np.maximum(w, 0.0)), np.nan)
        return -strike.k / s + 0.5 * s


def delta(params, strike: StrikeData, t_years: float, is_call: bool = True):
    """Black forward delta at each strike with the fitted vol: N(d₁) (call) or N(d₁) − 1 (put)."""
    d1 = _d1(params, strike)
    return ndtr(d1) if is_call else -ndtr(-d1)


def vega(params, strike: StrikeData, t_years: float):
    """Black vega at each strike with the fitted vol, coin per 1.00 of vol per coin of notional:
    φ(d₁)·√T (see the module docstring)."""
    d1 = _d1(params, strike)
    return _INV_SQRT_2PI * np.exp(-0.5 * d1 * d1) * np.sqrt(t_years)


def mid_minus_fit(params, strike: StrikeData, t_years: float):
    """Quoted mid IV minus the fitted vol at each strike, decimal (NaN without a two-sided quote)."""
    return 0.5 * (strike.bid_iv + strike.ask_iv) - fitted_vol(params, strike, t_years)


__all__ = ["StrikeData", "fitted_vol", "skew_slope", "delta", "vega", "mid_minus_fit"]
