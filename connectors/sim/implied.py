"""Black-76 implied vols for the simulators' cross-check fields only: Deribit's ticker bid_iv /
ask_iv (`implied_vol`, one option) and OKX's opt-summary bidVol / askVol (`implied_vols`, a
family at once). Deliberately plain and separate from operators.kernels.iv: the engine's solver
is what the tests check, and these only fill the exchange's fields.

It must never import the venue parsers (connectors/venues/*) or flows: the tests compare the
simulators against those parsers.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from operators.kernels.black import black_price


def _ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def implied_vol(price_usd: float, forward: float, strike: float, t_years: float, is_call: bool) -> Optional[float]:
    """Scalar Black-76 IV by safeguarded Newton/bisection. None when the price is outside the
    no-arbitrage band (the Deribit ticker then sends a sentinel)."""
    intrinsic = max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    upper = forward if is_call else strike
    if not intrinsic < price_usd < upper or t_years <= 0:
        return None
    sqrt_t = math.sqrt(t_years)
    lo, hi, vol = 1e-4, 20.0, 0.6
    for _ in range(60):
        s = vol * sqrt_t
        d1 = math.log(forward / strike) / s + 0.5 * s
        d2 = d1 - s
        px = forward * _ncdf(d1) - strike * _ncdf(d2) if is_call else strike * _ncdf(-d2) - forward * _ncdf(-d1)
        diff = px - price_usd
        if diff == 0.0:
            return vol
        if diff > 0:
            hi = vol
        else:
            lo = vol
        vega = forward * math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi) * sqrt_t
        nxt = vol - diff / vega if vega > 1e-300 else 0.5 * (lo + hi)
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - vol) < 1e-12 or hi - lo < 1e-12:  # converged in vol, not in price
            return nxt
        vol = nxt
    return vol


def implied_vols(price_usd: np.ndarray, forward: np.ndarray, strike: np.ndarray, t_years: np.ndarray,
                 is_call: np.ndarray) -> np.ndarray:
    """Black-76 vols by vectorised bisection (60 halvings of [1e-4, 10]); NaN where the price is
    outside the no-arbitrage band."""
    price_usd, forward, strike, t_years = (np.asarray(a, float) for a in (price_usd, forward, strike, t_years))
    is_call = np.asarray(is_call, bool)
    intrinsic = np.where(is_call, np.maximum(forward - strike, 0.0), np.maximum(strike - forward, 0.0))
    upper = np.where(is_call, forward, strike)
    ok = (price_usd > intrinsic) & (price_usd < upper) & (t_years > 0)
    lo = np.full(price_usd.shape, 1e-4)
    hi = np.full(price_usd.shape, 10.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        too_high = black_price(forward, strike, t_years, mid, is_call) > price_usd
        hi = np.where(too_high, mid, hi)
        lo = np.where(too_high, lo, mid)
    return np.where(ok, 0.5 * (lo + hi), np.nan)
