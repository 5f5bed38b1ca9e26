"""The forward per expiry: the future's mid, else put-call parity near the money, else the
exchange's underlying (or index) price — and which method was used.

Pure numerics over numpy arrays: no I/O, no bytewax, never imports connectors or flows.

Parity for undiscounted options: C − P = F − K in USD. Deribit quotes premiums in coin
(USD = coin × F), so (C_coin − P_coin)·F = F − K  ⇒  F = K / (1 − (C_coin − P_coin)).
Both maps are increasing in D = C − P, so the bid/ask quotes bound the forward per strike:
D_low = C_bid − P_ask, D_high = C_ask − P_bid. A missing bid is a bid of 0 (a premium is
never negative, so the bound stays valid, only wider); a missing ask leaves the pair out.
Each pair gives an interval [F_low, F_high] and a mid (parity at the mid of the C − P
bounds); the estimate is the weighted median of those mids over the strikes nearest the money (weights 1/width²), refined once
around the first estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Stored with every run (runs.methods, flows/runs.py): bump it whenever a change alters the forwards
# this module computes, so rows made before and after say which method made them.
METHOD_VERSION = "forward/future-parity-median/1"

METHOD_FUTURE = "future"
METHOD_PARITY = "parity"
METHOD_UNDERLYING = "underlying"
METHOD_INDEX = "index"
METHOD_NONE = "none"  # nothing usable was given: forward is NaN


@dataclass(frozen=True, slots=True)
class ForwardEstimate:
    forward: float  # USD
    method: str  # one of the METHOD_* names
    n_pairs: int  # put-call pairs used (0 unless method == "parity")
    spread: float  # USD: width of the uncertainty band (future: ask − bid; parity: see below)


def _positive_finite(v) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) \
        and math.isfinite(float(v)) and float(v) > 0.0


def parity_bounds(strikes, call_bid, call_ask, put_bid, put_ask, *, prices_in_coin=True):
    """Per-strike forward bounds (f_low, f_high) in USD from put-call parity; NaN where unusable.

    Vectorised over strikes; bids that are NaN or ≤ 0 count as 0, asks that are NaN or ≤ 0
    make the pair unusable, as do a crossed side (bid > ask) and a non-positive strike.
    """
    f_low, _, f_high = parity_forwards(strikes, call_bid, call_ask, put_bid, put_ask,
                                       prices_in_coin=prices_in_coin)
    return f_low, f_high


def parity_forwards(strikes, call_bid, call_ask, put_bid, put_ask, *, prices_in_coin=True):
    """(f_low, f_mid, f_high) per strike: f_mid is parity at the mid of the C − P bounds."""
    k = np.asarray(strikes, dtype=np.float64)
    cb, ca, pb, pa = (np.asarray(a, dtype=np.float64) for a in (call_bid, call_ask, put_bid, put_ask))
    k, cb, ca, pb, pa = np.broadcast_arrays(k, cb, ca, pb, pa)
    with np.errstate(invalid="ignore"):
        cb = np.where(np.isfinite(cb) & (cb > 0.0), cb, 0.0)
        pb = np.where(np.isfinite(pb) & (pb > 0.0), pb, 0.0)
        usable = (np.isfinite(k) & (k > 0.0) & np.isfinite(ca) & (ca > 0.0)
                  & np.isfinite(pa) & (pa > 0.0) & (cb <= ca) & (pb <= pa))
    with np.errstate(all="ignore"):
        d_low = cb - pa
        d_high = ca - pb
        d_mid = 0.5 * (d_low + d_high)
        if prices_in_coin:
            usable &= d_high < 1.0  # at D ≥ 1 the coin parity puts no upper bound on F
            f_low, f_mid, f_high = k / (1.0 - d_low), k / (1.0 - d_mid), k / (1.0 - d_high)
        else:
            f_low, f_mid, f_high = k + d_low, k + d_mid, k + d_high
        usable &= (f_low > 0.0) & np.isfinite(f_low) & np.isfinite(f_high) & np.isfinite(f_mid)
    nan = np.full(k.shape, np.nan)
    return np.where(usable, f_low, nan), np.where(usable, f_mid, nan), np.where(usable, f_high, nan)


def _weighted_median(values, weights):
    order = np.argsort(values)
    v, w = values[order], weights[order]
    c = np.cumsum(w)
    return float(v[np.searchsorted(c, 0.5 * c[-1])])


def _parity_estimate(k, f_low, f_mid, f_high, f_ref, n_near):
    """(forward, n_pairs, spread) from the n_near usable strikes closest to f_ref."""
    ok = np.isfinite(f_low)
    k, f_low, f_mid, f_high = k[ok], f_low[ok], f_mid[ok], f_high[ok]
    if k.size == 0:
        return math.nan, 0, math.nan
    with np.errstate(all="ignore"):
        near = np.argsort(np.abs(np.log(k / f_ref)), kind="stable")[:n_near]
    lo, mid, hi = f_low[near], f_mid[near], f_high[near]
    width = hi - lo
    # a zero-width pair (bid = ask on both legs) must not take all the weight by itself
    floor = max(1e-12 * float(np.max(mid)), float(np.min(width[width > 0.0])) if np.any(width > 0.0) else 0.0)
    with np.errstate(all="ignore"):
        weights = 1.0 / np.maximum(width, floor) ** 2
    if not np.all(np.isfinite(weights)) or not np.any(weights > 0.0):
        weights = np.ones_like(mid)
    forward = _weighted_median(mid, weights)
    lo_max, hi_min = float(np.max(lo)), float(np.min(hi))
    # spread: the band every pair agrees on if they do, else how far the pairs disagree
    spread = hi_min - lo_max if hi_min >= lo_max else float(np.max(mid) - np.min(mid))
    return forward, int(near.size), spread


def estimate_forward(strikes, call_bid, call_ask, put_bid, put_ask, *, future_bid=None,
                     future_ask=None, underlying_px=None, index_px=None, prices_in_coin=True,
                     n_near=6) -> ForwardEstimate:
    """Forward for one expiry, in USD.

    strikes and the four quote arrays are per strike (one call and one put each; NaN for a
    missing quote). Option prices are coin premiums if prices_in_coin (Deribit), else USD.
    future_bid/ask (USD) win when both are positive and not crossed; then parity over the
    n_near usable strikes nearest the money; then underlying_px; then index_px; else a
    NaN forward with method "none". Never raises on bad numbers.
    """
    if _positive_finite(future_bid) and _positive_finite(future_ask) and future_bid <= future_ask:
        fb, fa = float(future_bid), float(future_ask)
        return ForwardEstimate(fb + 0.5 * (fa - fb), METHOD_FUTURE, 0, fa - fb)  # no overflow near max float

    k = np.asarray(strikes, dtype=np.float64).reshape(-1)
    if k.size:
        f_low, f_mid, f_high = (a.reshape(-1) for a in parity_forwards(
            k, call_bid, call_ask, put_bid, put_ask, prices_in_coin=prices_in_coin))
        if np.any(np.isfinite(f_low)):
            if _positive_finite(underlying_px):
                f_ref = float(underlying_px)
            elif _positive_finite(index_px):
                f_ref = float(index_px)
            else:
                f_ref = float(np.nanmedian(f_mid))
            forward, n, spread = _parity_estimate(k, f_low, f_mid, f_high, f_ref, n_near)
            # refine once: the strikes nearest the money are the ones nearest this estimate
            if math.isfinite(forward) and forward > 0.0:
                forward, n, spread = _parity_estimate(k, f_low, f_mid, f_high, forward, n_near)
            if math.isfinite(forward) and forward > 0.0:
                return ForwardEstimate(forward, METHOD_PARITY, n, spread)

    if _positive_finite(underlying_px):
        return ForwardEstimate(float(underlying_px), METHOD_UNDERLYING, 0, math.nan)
    if _positive_finite(index_px):
        return ForwardEstimate(float(index_px), METHOD_INDEX, 0, math.nan)
    return ForwardEstimate(math.nan, METHOD_NONE, 0, math.nan)
