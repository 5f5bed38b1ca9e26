"""Black-76 on the forward, undiscounted (coin-margined options): prices and greeks.

Pure numerics over numpy arrays (scalars broadcast): no I/O, no bytewax.
Conventions (docs/architecture.md §6): k = ln(K/F), total variance w = σ²T, T in ACT/365 years.
Deltas are forward deltas: N(d1) for calls, N(d1) − 1 for puts.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def black_price(forward, strike, t_years, vol, is_call):
    """Undiscounted Black-76 price in the forward's unit (USD for USD forwards)."""
    forward, strike, t_years, vol, is_call = np.broadcast_arrays(
        np.asarray(forward, float), np.asarray(strike, float), np.asarray(t_years, float),
        np.asarray(vol, float), np.asarray(is_call, bool))
    s = vol * np.sqrt(t_years)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = np.log(forward / strike) / s + 0.5 * s
    d2 = d1 - s
    call = forward * ndtr(d1) - strike * ndtr(d2)
    put = strike * ndtr(-d2) - forward * ndtr(-d1)
    out = np.where(is_call, call, put)
    intrinsic = np.where(is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0))
    return np.where(s > 0, out, intrinsic)


def coin_to_usd(price_coin, forward):
    """Deribit quotes option premiums in coin: price_usd = price_coin × forward."""
    return np.asarray(price_coin, float) * np.asarray(forward, float)


def d1_d2(forward, strike, t_years, vol):
    s = np.asarray(vol, float) * np.sqrt(np.asarray(t_years, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = np.log(np.asarray(forward, float) / np.asarray(strike, float)) / s + 0.5 * s
    return d1, d1 - s


def greeks(forward, strike, t_years, vol, is_call):
    """Forward delta, vega (per unit vol), gamma (per unit forward), vanna, volga.

    Returns a dict of arrays (broadcast shape). Vega, vanna and volga are per 1.00 of vol
    (not per vol point): vega = ∂P/∂σ, gamma = ∂²P/∂F², vanna = ∂²P/∂F∂σ = ∂delta/∂σ,
    volga = ∂²P/∂σ². Gamma, vega, vanna and volga are the same for calls and puts.
    NaN wherever the inputs are not finite or forward, strike, t_years or vol is ≤ 0.
    """
    forward, strike, t_years, vol, is_call = np.broadcast_arrays(
        np.asarray(forward, float), np.asarray(strike, float), np.asarray(t_years, float),
        np.asarray(vol, float), np.asarray(is_call, bool))
    with np.errstate(all="ignore"):
        valid = ((forward > 0) & (strike > 0) & (t_years > 0) & (vol > 0) & np.isfinite(forward)
                 & np.isfinite(strike) & np.isfinite(t_years) & np.isfinite(vol))
        d1, d2 = d1_d2(forward, strike, t_years, vol)
        sqrt_t = np.sqrt(t_years)
        pdf = np.exp(-0.5 * d1 * d1) / np.sqrt(2.0 * np.pi)
        delta = np.where(is_call, ndtr(d1), -ndtr(-d1))  # N(d1) − 1 without cancellation
        vega = forward * pdf * sqrt_t
        gamma = pdf / (forward * vol * sqrt_t)
        vanna = -pdf * d2 / vol
        volga = vega * d1 * d2 / vol
    out = {"delta": delta, "vega": vega, "gamma": gamma, "vanna": vanna, "volga": volga}
    return {name: np.where(valid, v, np.nan) for name, v in out.items()}
