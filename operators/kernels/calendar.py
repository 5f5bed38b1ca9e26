"""Across expiries: calendar-arbitrage checks and fixed-tenor smiles from SVI slices.

Pure numerics over numpy arrays: no I/O, no bytewax, never imports connectors or flows.

Conventions (docs/architecture.md §6): k = ln(K/F), total variance w = σ²T, T in ACT/365 years.
Calendar-free iff w(k, T₂) ≥ w(k, T₁) for T₂ > T₁ at every fixed k; checked on a k-grid.
Fixed tenors (days/365) interpolate total variance linearly in T at fixed k between the
two bracketing expiries. Outside the expiries the vol at each k is held flat:
before the first expiry w(k, T) = w₁(k)·T/T₁, after the last w(k, T) = w_N(k)·T/T_N
(with extrapolate=False those tenors are None instead). A tenor whose bracketing pair has
a calendar arbitrage is still computed but flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from operators.kernels import analytics
from operators.kernels.svi import SviParams, as_params, total_variance

DEFAULT_K_GRID = np.linspace(-1.0, 1.0, 201)  # ±1 in ln(K/F): e^±1 covers every listed strike
CALENDAR_TOL = 1e-10  # total variance; below this a "violation" is rounding
PAIR_GRID_N = 4001


@dataclass(frozen=True, slots=True)
class PairCheck:
    """One pair of consecutive expiries: ok iff min_k (w₂ − w₁) ≥ −tol; worst is that min
    (negative = arbitrage) and worst_k where it occurs."""

    t1_years: float
    t2_years: float
    ok: bool
    worst: float
    worst_k: float


def _sorted_slices(params_by_t: Sequence[tuple]) -> list[tuple[float, SviParams]]:
    out = []
    for i, item in enumerate(params_by_t):
        if len(item) not in (2, 3):
            raise ValueError(f"slice #{i}: got {item!r}; pass (t_years, params) or (t_years, forward, params)")
        t = float(item[0])
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"slice #{i}: t_years={item[0]!r}; pass a positive year fraction (ACT/365)")
        out.append((t, as_params(item[-1])))
    return out


def _grid(k_grid) -> np.ndarray:
    g = DEFAULT_K_GRID if k_grid is None else np.asarray(k_grid, float)
    if g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g)):
        raise ValueError(f"k_grid: got shape {g.shape}; pass a non-empty 1-D array of finite log-moneyness")
    return g


def pair_grid(k1, k2, n: int = PAIR_GRID_N) -> np.ndarray:
    """The grid a pair of expiries is checked on when their quotes are known: n points over
    the union of their quoted log-moneyness (where either has market data; beyond both, both
    curves are extrapolation). The one rule for it: operators.svi.fit_surface holds its
    slices calendar-free on at least this range."""
    k = np.concatenate([np.asarray(k1, float).ravel(), np.asarray(k2, float).ravel()])
    k = k[np.isfinite(k)]
    if k.size == 0:
        raise ValueError("pair_grid: no finite quoted log-moneyness in either expiry; pass their ln(K/F)")
    return np.linspace(float(k.min()), float(k.max()), n)


def calendar_check(params_by_t: Sequence[tuple], k_grid=None, tol: float = CALENDAR_TOL,
                   k_ranges: Optional[Sequence] = None) -> list[PairCheck]:
    """Check each consecutive pair (in the order given, which should be increasing T).

    params_by_t: sequence of (t_years, params) or (t_years, forward, params); params as
    accepted by svi.as_params. k_ranges: optional, per slice its quoted log-moneyness; then
    each pair is checked on pair_grid(its two slices' k) instead of k_grid. Returns len − 1
    PairChecks.
    """
    slices = _sorted_slices(params_by_t)
    g = _grid(k_grid)
    if k_ranges is not None and len(k_ranges) != len(slices):
        raise ValueError(f"calendar_check: k_ranges has {len(k_ranges)} entries for {len(slices)} slices; "
                         "pass one array of quoted ln(K/F) per slice")
    out = []
    for i, ((t1, p1), (t2, p2)) in enumerate(zip(slices, slices[1:])):
        if t2 <= t1:
            raise ValueError(f"calendar_check: expiries not increasing (t={t1} then t={t2}); sort by t_years")
        gi = g if k_ranges is None else pair_grid(k_ranges[i], k_ranges[i + 1])
        diff = total_variance(p2, gi) - total_variance(p1, gi)
        j = int(np.argmin(diff))
        worst = float(diff[j])
        out.append(PairCheck(t1, t2, bool(worst >= -tol), worst, float(gi[j])))
    return out


def drop_calendar_violators(params_by_t: Sequence[tuple], k_grid=None,
                            tol: float = CALENDAR_TOL) -> tuple[list, list[int]]:
    """Drop expiries, one at a time, until no consecutive pair has a calendar arbitrage.

    Each step removes, among the expiries of violating pairs, the one whose removal leaves
    the smallest total violation (sum of negative parts of w₂ − w₁ over the grid and all
    remaining pairs); ties go to the expiry furthest from what its neighbours imply
    (linear in T between them, flat vol at the ends). At least one expiry is always kept. Returns (kept items in the
    input form, dropped input indices sorted).
    """
    items = list(params_by_t)
    slices = _sorted_slices(items)
    g = _grid(k_grid)
    w = [total_variance(p, g) for _, p in slices]
    alive = list(range(len(items)))

    def violation(idx: list[int]) -> float:
        return float(sum(np.maximum(w[i] - w[j], 0.0).sum() for i, j in zip(idx, idx[1:])
                         if np.min(w[j] - w[i]) < -tol))

    def oddness(x: int, idx: list[int]) -> float:
        """How far slice x sits from what its neighbours imply (linear in T, flat vol at ends)."""
        pos = idx.index(x)
        lo = idx[pos - 1] if pos > 0 else None
        hi = idx[pos + 1] if pos + 1 < len(idx) else None
        tx = slices[x][0]
        if lo is not None and hi is not None:
            lam = (tx - slices[lo][0]) / (slices[hi][0] - slices[lo][0])
            ref = (1 - lam) * w[lo] + lam * w[hi]
        else:
            nb = lo if lo is not None else hi
            ref = w[nb] * tx / slices[nb][0]
        return float(np.abs(w[x] - ref).sum())

    dropped: list[int] = []
    while len(alive) > 1 and violation(alive) > 0:
        bad = {x for i, j in zip(alive, alive[1:]) if np.min(w[j] - w[i]) < -tol for x in (i, j)}
        best = min(sorted(bad), key=lambda x: (violation([y for y in alive if y != x]), -oddness(x, alive)))
        alive.remove(best)
        dropped.append(best)
    return [items[i] for i in alive], sorted(dropped)


@dataclass(frozen=True, slots=True)
class TenorSmile:
    """A fixed-tenor smile: total variance on the k-grid, and its analytics (decimals).

    weights/params: w(k) = Σ weightᵢ·w_SVI(paramsᵢ, k) exactly (one or two slices), so
    analytics solve deltas on the exact interpolated smile, not on the grid.
    extrapolated: 'before' / 'after' the listed expiries, or '' when bracketed.
    """

    tenor_days: int
    t_years: float
    k: np.ndarray
    total_variance: np.ndarray
    calendar_flag: bool
    extrapolated: str
    weights: tuple[float, ...]
    params: tuple[SviParams, ...]
    atm_vol: Optional[float]
    rr25: Optional[float]
    bf25: Optional[float]


def bracket(xs: np.ndarray, x: float) -> tuple[tuple[float, ...], tuple[int, ...], str, int]:
    """The fixed-tenor rule on one time axis: the smile at x (years, or any clock) blends the total
    variances of the slices at strictly increasing xs, linearly between the bracketing two and at
    flat vol beyond them. Returns (weights, slice indices, "" | "before" | "after", j) with
    j = searchsorted(xs, x)."""
    j = int(np.searchsorted(xs, x))  # xs[j-1] < x <= xs[j]
    if j < len(xs) and xs[j] == x:
        return (1.0,), (j,), "", j
    if j == 0:
        return (x / xs[0],), (0,), "before", j
    if j == len(xs):
        return (x / xs[-1],), (len(xs) - 1,), "after", j
    lam = (x - xs[j - 1]) / (xs[j] - xs[j - 1])
    return (1.0 - lam, lam), (j - 1, j), "", j


def tenor_points(params_by_t: Sequence[tuple], tenors_days: Sequence[int],
                 k_grid=None, extrapolate: bool = True, tol: float = CALENDAR_TOL,
                 k_ranges: Optional[Sequence] = None, clock: Optional[tuple[Sequence[float], Sequence[float]]] = None,
                 pair_ok: Optional[Sequence[bool]] = None) -> list[Optional[TenorSmile]]:
    """Fixed-tenor smiles from expiry slices sorted by t_years (see module docstring).

    Returns one entry per tenor (None when outside the expiries and extrapolate=False, or
    when no slice is given). calendar_flag is set when the bracketing pair (or, when
    extrapolating, the nearest pair) fails calendar_check (with k_ranges as given there), or
    `pair_ok[i]` is False for slices i, i+1 when the caller has those checks already.
    clock = (one value per slice, one per tenor): interpolate on that time axis (a variance
    clock, operators/kernels/variance_clock.py) instead of t_years; the analytics are still at
    the tenor's calendar t = days/365.
    """
    slices = _sorted_slices(params_by_t)
    g = _grid(k_grid)
    if not slices:
        return [None for _ in tenors_days]
    ts = np.array([t for t, _ in slices])
    if np.any(np.diff(ts) <= 0):
        raise ValueError(f"tenor_points: t_years not strictly increasing: {ts.tolist()}; sort and de-duplicate")
    xs = ts if clock is None else np.asarray(clock[0], float)
    if clock is not None and (xs.shape != ts.shape or np.any(np.diff(xs) <= 0) or xs[0] <= 0):
        raise ValueError(f"tenor_points: clock {xs.tolist()} must be positive, strictly increasing, one per slice")
    if pair_ok is None:
        pair_ok = [c.ok for c in calendar_check(slices, g, tol, k_ranges)] if len(slices) > 1 else []
    out: list[Optional[TenorSmile]] = []
    for i, days in enumerate(tenors_days):
        if not (isinstance(days, (int, np.integer)) and days > 0):
            raise ValueError(f"tenors_days: got {days!r}; pass positive whole days")
        t = days / 365.0
        wts, idx, extra, j = bracket(xs, t if clock is None else float(clock[1][i]))
        if len(idx) == 2:
            flag = not pair_ok[j - 1]
        elif extra == "before":
            flag = bool(pair_ok) and not pair_ok[0]
        elif extra == "after":
            flag = bool(pair_ok) and not pair_ok[-1]
        else:
            flag = (j > 0 and not pair_ok[j - 1]) or (j < len(pair_ok) and not pair_ok[j])
        if extra and not extrapolate:
            out.append(None)
            continue
        ps = tuple(slices[n][1] for n in idx)
        wgrid = sum(c * total_variance(p, g) for c, p in zip(wts, ps))
        smile = analytics.BlendSmile(wts, ps)
        a = analytics.blend_analytics(smile, t, deltas=(0.25,))
        out.append(TenorSmile(tenor_days=int(days), t_years=t, k=g, total_variance=wgrid,
                              calendar_flag=bool(flag), extrapolated=extra, weights=tuple(float(x) for x in wts),
                              params=ps, atm_vol=a["atm_vol"], rr25=a["rr25"], bf25=a["bf25"]))
    return out


__all__ = ["PairCheck", "TenorSmile", "bracket", "calendar_check", "drop_calendar_violators", "pair_grid", "tenor_points",
           "DEFAULT_K_GRID", "CALENDAR_TOL"]
