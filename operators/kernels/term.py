"""Across one underlying's expiries: term-structure analytics for graph.toml's level = "underlying" nodes.

Pure numerics over numpy arrays: no I/O, no bytewax, never imports connectors, flows or
operators.state.

Conventions (docs/architecture.md §6): k = ln(K/F), total variance w = σ²T, T in ACT/365 years,
vols decimal (0.05 = 5 vol pts). A tenor T between two expiries takes total variance linear in T
at fixed k between them (the fixed-tenor rule of operators/kernels/calendar.py); before the
first expiry and after the last the vol at each k is held flat (w scales with T). A tenor is
given in days (days/365 years).

Every node function has the level = "underlying" signature fn(*inputs, **node_params) → float:
the built-in input "fits" is a TermFits (every live expiry's fit, in expiry order), and an
expiry-level node named as an input arrives as an array aligned with TermFits (NaN where that
expiry's node had no value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from operators.kernels import analytics, calendar
from operators.kernels.svi import as_params

MS_PER_DAY = 86_400_000


@dataclass(frozen=True, slots=True)
class TermFits:
    """Every live expiry's SVI fit of one underlying, sorted by expiry: t_years (n,) strictly
    increasing, params (n,) their SviParams (raw SVI and any spline) and expiry_ms (n,)."""

    t_years: np.ndarray
    params: tuple
    expiry_ms: tuple[int, ...]

    @classmethod
    def of(cls, slices) -> "TermFits":
        """From (t_years, params, expiry_ms) triples in expiry order."""
        slices = list(slices)
        t = np.array([float(s[0]) for s in slices], float)
        p = tuple(as_params(s[1]) for s in slices)
        return cls(t, p, tuple(int(s[2]) for s in slices))

    def __len__(self) -> int:
        return int(self.t_years.size)


def _days(name: str, days) -> float:
    d = float(days)
    if not (math.isfinite(d) and d > 0):
        raise ValueError(f"{name}={days!r}; give a positive number of days, e.g. {name} = 30")
    return d / 365.0


def tenor_smile(fits: TermFits, t_years: float) -> analytics.BlendSmile:
    """The smile at tenor t_years as a blend of the bracketing fits (module docstring)."""
    ts = fits.t_years
    if ts.size == 0:
        raise ValueError("no live expiry: an underlying-level node needs at least one fit")
    if np.any(np.diff(ts) <= 0):
        raise ValueError(f"t_years not strictly increasing: {ts.tolist()}; pass the fits in expiry order")
    wts, idx, _, _ = calendar.bracket(ts, t_years)  # the fixed tenors' rule (operators/kernels/calendar.py)
    return analytics.BlendSmile(wts, tuple(fits.params[n] for n in idx))


def atm_total_variance(fits: TermFits, t_years: float) -> float:
    """w(0, T) at tenor t_years."""
    return float(tenor_smile(fits, t_years).total_variance(0.0))


def atm_vol_at(fits: TermFits, days: float = 30) -> float:
    """ATM-forward vol (decimal) at a fixed tenor of `days`."""
    t = _days("days", days)
    return analytics.atm_vol(tenor_smile(fits, t), t)


def atm_term_slope(fits: TermFits, t1_days: float = 30, t2_days: float = 90) -> float:
    """ATM term-structure slope: (σ_ATM(T₂) − σ_ATM(T₁)) / (T₂ − T₁), decimal vol per year
    (positive = contango, vol rising with maturity)."""
    t1, t2 = _days("t1_days", t1_days), _days("t2_days", t2_days)
    if not t2 > t1:
        raise ValueError(f"t1_days={t1_days!r}, t2_days={t2_days!r}; give t2_days > t1_days")
    return (analytics.atm_vol(tenor_smile(fits, t2), t2) - analytics.atm_vol(tenor_smile(fits, t1), t1)) / (t2 - t1)


def forward_vol(fits: TermFits, t1_days: float = 30, t2_days: float = 90) -> float:
    """ATM forward vol between two tenors: √((w(0,T₂) − w(0,T₁)) / (T₂ − T₁)), decimal; NaN
    when the ATM total variance falls between them (a calendar arbitrage at the money)."""
    t1, t2 = _days("t1_days", t1_days), _days("t2_days", t2_days)
    if not t2 > t1:
        raise ValueError(f"t1_days={t1_days!r}, t2_days={t2_days!r}; give t2_days > t1_days")
    dw = atm_total_variance(fits, t2) - atm_total_variance(fits, t1)
    return math.sqrt(dw / (t2 - t1)) if dw >= 0 else math.nan


def rr_term_slope(fits: TermFits, t1_days: float = 30, t2_days: float = 90, delta: float = 0.25) -> float:
    """Skew term structure: (RR(Δ, T₂) − RR(Δ, T₁)) / (T₂ − T₁), decimal vol per year, with
    RR = σ(Δ call) − σ(Δ put) on each tenor's blended smile (operators/kernels/analytics.py)."""
    t1, t2 = _days("t1_days", t1_days), _days("t2_days", t2_days)
    if not t2 > t1:
        raise ValueError(f"t1_days={t1_days!r}, t2_days={t2_days!r}; give t2_days > t1_days")
    return (analytics.risk_reversal(tenor_smile(fits, t2), t2, delta)
            - analytics.risk_reversal(tenor_smile(fits, t1), t1, delta)) / (t2 - t1)


def front_back_slope(fits: TermFits, values) -> float:
    """Slope of an expiry-level node across the term: (value at the last expiry with one −
    value at the first with one) / (their T difference), per year; NaN with fewer than two."""
    v = np.asarray(values, float)
    if v.shape != fits.t_years.shape:
        raise ValueError(f"values has shape {v.shape}, fits {fits.t_years.shape}: pass an expiry-level node")
    ok = np.flatnonzero(np.isfinite(v))
    if ok.size < 2:
        return math.nan
    i, j = ok[0], ok[-1]
    return float((v[j] - v[i]) / (fits.t_years[j] - fits.t_years[i]))


__all__ = ["TermFits", "tenor_smile", "atm_total_variance", "atm_vol_at", "atm_term_slope", "forward_vol",
           "rr_term_slope", "front_back_slope"]
