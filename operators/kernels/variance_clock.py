"""A variance clock: time to expiry with weekend days weighted, for measuring whether it
interpolates the front of the term structure better than calendar time (bench/variance_clock.py).

Pure numpy: no I/O, no bytewax, never imports connectors, flows or operators.state.

τ(start, end) = (calendar ms − (1 − weekend_weight) × weekend ms) / (365 × 86 400 000), where
weekend ms are the milliseconds of [start, end) falling on a Saturday or Sunday, UTC. With
weekend_weight = 1 it is ACT/365 (docs/architecture.md §6). Total variance is unchanged by the
clock; what changes is where a tenor sits between two expiries, and so the interpolation.
"""

from __future__ import annotations

import numpy as np

MS_PER_DAY = 86_400_000
MS_PER_YEAR = 365 * MS_PER_DAY


def weekend_ms_before(t_ms):
    """Milliseconds of [1970-01-01, t_ms) on Saturdays and Sundays (UTC); 1970-01-01 was a Thursday."""
    t = np.asarray(t_ms, dtype=np.int64)
    d = t // MS_PER_DAY
    r = d % 7  # 0 Thu, 1 Fri, 2 Sat, 3 Sun, 4 Mon, ...
    whole = 2 * (d // 7) + np.clip(r - 2, 0, 2)  # weekend days fully before day d
    part = np.where((r == 2) | (r == 3), t - d * MS_PER_DAY, 0)
    return whole * MS_PER_DAY + part


def weighted_years(start_ms, end_ms, weekend_weight: float):
    """τ in years (module docstring); arrays broadcast. weekend_weight in [0, 1]."""
    if not 0.0 <= float(weekend_weight) <= 1.0:
        raise ValueError(f"weekend_weight={weekend_weight!r}; give a weight from 0 to 1 (1 = calendar time)")
    start = np.asarray(start_ms, dtype=np.int64)
    end = np.asarray(end_ms, dtype=np.int64)
    weekend = weekend_ms_before(end) - weekend_ms_before(start)
    return ((end - start) - (1.0 - float(weekend_weight)) * weekend) / MS_PER_YEAR


def leave_one_out_atm(tau, w_atm) -> np.ndarray:
    """Each expiry's ATM total variance predicted from its neighbours, linear in the clock τ
    (τ sorted increasing, the first expiry's lower neighbour is (0, 0)); NaN for the last."""
    tau = np.asarray(tau, float)
    w = np.asarray(w_atm, float)
    t_lo = np.concatenate([[0.0], tau[:-2]])
    w_lo = np.concatenate([[0.0], w[:-2]])
    t_hi, w_hi = tau[1:], w[1:]
    pred = w_lo + (w_hi - w_lo) * (tau[:-1] - t_lo) / (t_hi - t_lo)
    return np.concatenate([pred, [np.nan]])


__all__ = ["weighted_years", "weekend_ms_before", "leave_one_out_atm", "MS_PER_YEAR"]
