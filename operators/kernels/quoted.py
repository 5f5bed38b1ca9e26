"""Risk reversals and butterflies of the bid and the ask smiles, beside the fitted (mid) ones.

Pure numerics over numpy arrays: no I/O, no bytewax, never imports connectors, flows or
operators.state.

The definition (docs/architecture.md §6 conventions: forward deltas, k = ln(K/F), decimals):
  1. the Δ-call, Δ-put and ATM strikes are the fitted mid smile's (analytics.k_at_delta, k = 0):
     the bid and ask figures are read at the same strikes as the mid ones, so
     RR_bid ≤ … comparisons are like for like and a wide or one-sided wing cannot move the strike;
  2. the side's smile σ_side(k) is the quoted bid (or ask) IVs, linear in k between the two
     nearest quoted strikes that have that side; a strike outside the quoted range of that side
     has no value (no extrapolation: a wing nobody bids has no bid vol; the node then raises
     NoValue: its value is None and counted as node_no_value.<node>, not as an error);
  3. RR_side(Δ) = σ_side(k_Δc) − σ_side(k_Δp),  BF_side(Δ) = (σ_side(k_Δc) + σ_side(k_Δp))/2 − σ_side(0).
These describe the bid (ask) smile's shape. They are not the price at which the RR or BF
structure trades: buying a risk reversal pays the call's ask and receives the put's bid.
The quotes are one IV per strike (the chain's out-of-the-money side, operators/state/chain.py).

Node functions have the level = "expiry" signature fn(fit, quotes, t_years, **params), quotes
the built-in input "quotes" (an operators.kernels.strike.StrikeData of the expiry's quotes).
"""

from __future__ import annotations

import math

import numpy as np

from operators.kernels import analytics
from operators.kernels.novalue import NoValue
from operators.kernels.strike import StrikeData


def side_vol_at(quotes: StrikeData, k: float, side: str) -> float:
    """σ_side(k): the side's quoted IVs, linear in k between the nearest quoted strikes; NaN
    outside their range or with fewer than two quotes on that side."""
    if side not in ("bid", "ask"):
        raise ValueError(f"side={side!r}; use side = \"bid\" or side = \"ask\"")
    iv = quotes.bid_iv if side == "bid" else quotes.ask_iv
    ks = np.asarray(quotes.k, float)
    ok = np.isfinite(iv) & np.isfinite(ks) & (iv > 0)
    if int(ok.sum()) < 2 or not math.isfinite(k):
        return math.nan
    x, y = ks[ok], np.asarray(iv, float)[ok]
    order = np.argsort(x)
    x, y = x[order], y[order]
    if not x[0] <= k <= x[-1]:
        return math.nan
    return float(np.interp(k, x, y))


def _wings(fit, quotes: StrikeData, t_years: float, delta: float, side: str) -> tuple[float, float, float]:
    kc = analytics.k_at_delta(fit, t_years, delta, True)
    kp = analytics.k_at_delta(fit, t_years, delta, False)
    return side_vol_at(quotes, kc, side), side_vol_at(quotes, kp, side), side_vol_at(quotes, 0.0, side)


def side_risk_reversal(fit, quotes: StrikeData, t_years: float, delta: float = 0.25, side: str = "bid") -> float:
    """RR_side(Δ) = σ_side(k_Δc) − σ_side(k_Δp), decimal (module docstring)."""
    c, p, _ = _wings(fit, quotes, t_years, delta, side)
    return _value(c - p, side, delta)


def side_butterfly(fit, quotes: StrikeData, t_years: float, delta: float = 0.25, side: str = "bid") -> float:
    """BF_side(Δ) = (σ_side(k_Δc) + σ_side(k_Δp))/2 − σ_side(0), decimal (module docstring)."""
    c, p, atm = _wings(fit, quotes, t_years, delta, side)
    return _value(0.5 * (c + p) - atm, side, delta)


def _value(x: float, side: str, delta: float) -> float:
    if math.isnan(x):
        raise NoValue(f"no {side} quotes around the {delta:g}Δ or ATM strike: that smile has no value there")
    return x


__all__ = ["side_vol_at", "side_risk_reversal", "side_butterfly"]
