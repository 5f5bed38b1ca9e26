"""A calendar-free surface across one underlying's expiries: band-aware SVI slices, each
fitted between its already-fitted neighbours in T.

Pure numerics over numpy arrays: no I/O, no bytewax, never imports connectors, flows or
operators.state.

Method (chosen by measurement, bench/bench_surface.py): per-slice raw SVI keeps real crypto
smiles inside their bid/ask band where an (e)SSVI surface is too rigid (~60 % in band per
issue #17), so the surface is per-slice SVI with calendar constraints between neighbours.
Slices are fitted widest quoted k range first. Each is fitted by svi.fit_svi_band with
floor / ceiling = the nearest already-fitted shorter / longer expiry: their total variance
on a k-grid enters the loss as one-sided bands with a heavy weight, then a is moved just
enough that floor ≤ w ≤ ceiling on a dense grid; if no such move keeps the slice
butterfly-free, the calendar points are made 100× and 10⁴× heavier and, as a last resort,
the slice becomes a copy of its better bound. The calendar range of a fit is every quote of
every slice whose T lies between its bounds' — so a slice inserted later between two fitted
ones finds them consistent on its own range. Each slice is butterfly-free, so the surface
is free of static arbitrage in strike and, between neighbouring expiries, in time on (at
least) the union of their quoted k (operators.kernels.calendar.pair_grid).

Measured 2026-12-05 on the 291 slices of tests/data's 12 real chains (share of quotes in
band / worst slice / crossing neighbour pairs of 267):
  widest range first, bounds on quoted ranges (this)     96.6 % / 59 % / 0
  longest T first (ceilings only), range ±1 ∪ all k      95.4 % /  7 % / 10
  shortest T first (floors, wing slopes bounded)         62.9 % /  0 % / 50
  widest first with ±1 always in the calendar range      95.5 % /  0 % / 0  (short slices
      squeezed to copies by their neighbours' extrapolated wings at |k| = 1)
The order matters because an expiry's smile beyond its quotes is extrapolation: fitting the
widest-quoted slices first makes the bounds the thinly quoted ones must respect data, not
extrapolation.
"""

from __future__ import annotations

import bisect
import math
from typing import Optional

import numpy as np

from operators.kernels.svi import SviFit, as_params, evaluate_fit, fit_svi_band, within_calendar_bounds


def _per_slice(name: str, value, n: int) -> list:
    """None → n Nones; else a sequence of exactly n items."""
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(f"fit_surface: {name} is a {type(value).__name__}; pass a sequence with one entry per "
                         "slice (or None)")
    if len(value) != n:
        raise ValueError(f"fit_surface: {name} has {len(value)} entries for {n} slices; pass one per slice "
                         "in the order of t_years")
    return list(value)


def _t(x) -> Optional[float]:
    try:
        t = float(x)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and t > 0 else None


def fit_surface(t_years, ks, total_variances, weights=None, prev=None, *, w_bids=None, w_asks=None,
                unchanged=None, **fit_opts) -> list[Optional[SviFit]]:
    """Fit every expiry of one underlying; one SviFit per slice in input order.

    t_years: one positive year fraction (ACT/365) per slice, any order; ks and
    total_variances: per slice, 1-D arrays of log-moneyness ln(K/F) and mid total variance;
    weights: per slice, weights on squared vol errors (None = equal); prev: per slice, the
    previous fit of that expiry to warm-start from (or None); w_bids, w_asks: per slice,
    bid/ask total variances (NaN where missing; None = fit to mid only). fit_opts go to
    svi.fit_svi_band. unchanged: per slice, True when its quotes are the ones its prev was
    fitted to — then prev is kept (not refitted) wherever it still lies between its fitted
    neighbours (how a live flow refits only what moved). An entry is None where its slice
    cannot be fitted (T not positive, fewer than 3 usable quotes, arrays of mismatched
    shapes); the fitted slices are free of butterfly arbitrage and no two neighbours in T
    cross: w(k) of the longer ≥ the shorter over the union of their quoted k
    (calendar.pair_grid) and beyond, up to the quotes of every slice between the two bounds
    each was fitted against. Raises ValueError only for arguments that are not one entry
    per slice.
    """
    if isinstance(t_years, (str, bytes)) or not hasattr(t_years, "__len__"):
        raise ValueError(f"fit_surface: t_years is a {type(t_years).__name__}; pass a sequence of year fractions, "
                         "one per slice")
    n = len(t_years)
    ks = _per_slice("ks", ks, n)
    tvs = _per_slice("total_variances", total_variances, n)
    wts = _per_slice("weights", weights, n)
    prevs = _per_slice("prev", prev, n)
    bids = _per_slice("w_bids", w_bids, n)
    asks = _per_slice("w_asks", w_asks, n)
    same = [bool(x) for x in _per_slice("unchanged", unchanged, n)]
    ts = [_t(x) for x in t_years]
    spans = [_span(ks[i]) for i in range(n)]
    k_fin = [_floats(k) for k in ks]
    k_fin = [k[np.isfinite(k)] for k in k_fin]
    order = sorted((i for i in range(n) if ts[i] is not None), key=lambda i: (-spans[i][0], -spans[i][1], -ts[i]))
    out: list[Optional[SviFit]] = [None] * n
    done: list[tuple[float, int]] = []  # fitted slices, sorted by T
    for i in order:
        t = ts[i]
        pos = bisect.bisect_left(done, (t, -1))
        below = pos - 1
        above = bisect.bisect_right(done, (t, n))
        floor = out[done[below][1]] if below >= 0 else None
        ceiling = out[done[above][1]] if above < len(done) else None
        # the calendar range: every quote of every slice from the floor's T to the ceiling's
        # (fitted or not yet), so that a slice inserted later between two fitted ones finds
        # them consistent wherever it is checked
        t_lo = done[below][0] if below >= 0 else -math.inf
        t_hi = done[above][0] if above < len(done) else math.inf
        k_cal = np.concatenate([k_fin[j] for j in range(n) if ts[j] is not None and t_lo <= ts[j] <= t_hi])
        k_cal = k_cal if k_cal.size >= 2 else None
        fit = None
        if same[i] and prevs[i] is not None:
            fit = _keep(ks[i], tvs[i], wts[i], prevs[i], bids[i], asks[i], t, floor, ceiling, k_cal)
        if fit is None:
            fit = _fit_one(ks[i], tvs[i], wts[i], prevs[i], bids[i], asks[i], t, floor, ceiling, k_cal, fit_opts)
        out[i] = fit
        if fit is not None:
            bisect.insort(done, (t, i))
    return out


def _span(k) -> tuple[float, int]:
    """(quoted k range, number of finite k) of one slice's input; (0, 0) for garbage."""
    k = _floats(k)
    k = k[np.isfinite(k)]
    return (float(k.max() - k.min()), int(k.size)) if k.size else (0.0, 0)


def _floats(x) -> np.ndarray:
    try:
        return np.asarray(x, float).ravel()
    except (TypeError, ValueError):
        return np.zeros(0)


def _fit_one(k, w, wt, prev, w_bid, w_ask, t: float, floor, ceiling, k_cal, fit_opts) -> Optional[SviFit]:
    try:
        k = np.asarray(k, float)
        w = np.asarray(w, float)
        wb = np.full(k.shape, np.nan) if w_bid is None else np.asarray(w_bid, float)
        wa = np.full(k.shape, np.nan) if w_ask is None else np.asarray(w_ask, float)
        wt = None if wt is None else np.asarray(wt, float)
    except (TypeError, ValueError):
        return None  # not numbers: the slice cannot be fitted
    try:
        prev = None if prev is None else as_params(prev)
    except (TypeError, ValueError):
        prev = None  # an unusable warm start is no warm start
    try:
        return fit_svi_band(k, w, wb, wa, wt, prev, t_years=t, floor=floor, ceiling=ceiling, calendar_k=k_cal,
                            **fit_opts)
    except ValueError:
        return None  # too few usable quotes or mismatched shapes


def _keep(k, w, wt, prev, w_bid, w_ask, t: float, floor, ceiling, k_cal) -> Optional[SviFit]:
    """prev as this slice's fit when it lies between floor and ceiling; None to refit."""
    try:
        k = np.asarray(k, float)
        p = as_params(prev)
        if (floor is not None or ceiling is not None) and not within_calendar_bounds(
                p, floor, ceiling, k if k_cal is None else np.concatenate([k_cal, k[np.isfinite(k)]])):
            return None
        fit = evaluate_fit(p, k, w, wt, t_years=t, w_bid=w_bid, w_ask=w_ask)
        return fit if fit.butterfly_ok else None
    except (TypeError, ValueError):
        return None
