"""Risk reversals and butterflies of the bid and the ask smiles, beside the fitted (mid) ones.

Pure numerics over numpy arrays (a numba kernel reads a side, cache=True): no I/O, no
bytewax, never imports connectors, flows or operators.state.

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
from numba import njit

from operators.kernels import analytics
from operators.kernels.novalue import NoValue
from operators.kernels.strike import StrikeData


@njit(cache=True)
def _side_vols(k, iv, targets):
    """The quotes (k, iv) with a finite k and a positive IV, in k order, read linearly at each
    target; NaN outside their range, at a target that is not finite, or with fewer than two."""
    xs, ys = np.empty(k.size), np.empty(k.size)
    n = 0
    for i in range(k.size):
        if np.isfinite(k[i]) and np.isfinite(iv[i]) and iv[i] > 0.0:
            xs[n], ys[n] = k[i], iv[i]
            n += 1
    out = np.full(targets.size, np.nan)
    if n < 2:
        return out
    xs, ys = xs[:n], ys[:n]
    for i in range(1, n):
        if xs[i] < xs[i - 1]:  # a view's strikes come sorted; any other order is sorted here
            order = np.argsort(xs, kind="mergesort")
            xs, ys = xs[order], ys[order]
            break
    for j in range(targets.size):
        x = targets[j]
        if np.isfinite(x) and xs[0] <= x <= xs[n - 1]:
            out[j] = np.interp(x, xs, ys)
    return out


def side_vols_at(quotes: StrikeData, ks, side: str) -> np.ndarray:
    """σ_side at each k of `ks`: the side's quoted IVs, linear in k between the nearest quoted
    strikes; NaN outside their range, at a k that is not finite, or everywhere with fewer than
    two quotes on that side. (Compiled: the same in numpy was 28 µs a call, 3 calls per node,
    measured 2026-12-07.)"""
    if side not in ("bid", "ask"):
        raise ValueError(f"side={side!r}; use side = \"bid\" or side = \"ask\"")
    iv = quotes.bid_iv if side == "bid" else quotes.ask_iv
    return _side_vols(np.asarray(quotes.k, np.float64), np.asarray(iv, np.float64), np.asarray(ks, np.float64))


def side_vol_at(quotes: StrikeData, k: float, side: str) -> float:
    """σ_side(k) of one k (side_vols_at)."""
    return float(side_vols_at(quotes, (k,), side)[0])


def _wings(fit, quotes: StrikeData, t_years: float, delta: float, side: str) -> tuple[float, float, float]:
    kc = analytics.k_at_delta(fit, t_years, delta, True)
    kp = analytics.k_at_delta(fit, t_years, delta, False)
    c, p, atm = side_vols_at(quotes, (kc, kp, 0.0), side).tolist()
    return c, p, atm


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


def warm_up() -> None:
    """Compile (or load cached) the side-vol kernel."""
    _side_vols(np.array([-0.1, 0.0, 0.1]), np.array([0.5, 0.45, 0.5]), np.array([0.05]))


__all__ = ["warm_up", "side_vols_at", "side_vol_at", "side_risk_reversal", "side_butterfly"]
