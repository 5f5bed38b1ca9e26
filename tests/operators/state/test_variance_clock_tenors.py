"""operators/state/surface.py with [surface] weekend_weight: the fixed tenors interpolate in the
variance clock τ (weekends weighted), against a hand computation; weight 1 is calendar time,
the same tenors as operators.kernels.calendar.tenor_points."""

from __future__ import annotations

import calendar as cal
import math

import pytest

from operators.events import ChainUpdate, SmileFit
from operators.items import ExpiryFit
from operators.kernels import calendar
from operators.state.surface import SurfaceLogic, SurfaceState

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
THU = cal.timegm((2026, 12, 3, 8, 0, 0)) * 1000  # a Thursday, 08:00 UTC
FRI, MON = THU + DAY_MS, THU + 4 * DAY_MS  # the next Friday and Monday, 08:00 UTC


def item(expiry_ms, atm_w):
    t = (expiry_ms - THU) / YEAR_MS
    p = (atm_w - 0.01 * 0.1, 0.01, 0.0, 0.0, 0.1)  # w(0) = atm_w, a nearly flat smile
    fit = SmileFit("deribit", "BTC", expiry_ms, 1, THU, THU, t, 100.0, *p, 0.2, 20, True, 0.05, 1.0)
    return ExpiryFit(fit, ChainUpdate("deribit", "BTC", expiry_ms, 1, THU, THU, t, 100.0, "future"))


def tenors(weight):
    surface = SurfaceLogic(SurfaceState("deribit", "BTC"), nodes=(), tenors_days=[1, 2, 3, 4],
                           drop_calendar_violators=False, repair_calendar=False, weekend_weight=weight, epoch_ms=50,
                           now_ms=lambda: THU)
    surface.on_items([item(FRI, 0.0004), item(MON, 0.0010)])
    return {p.tenor_days: p for p in surface.on_epoch().tenors}


def test_weekend_days_count_for_less_between_friday_and_monday():
    w = 0.6
    clock = tenors(w)
    # τ from Thursday 08:00: Fri 08:00 → 1 day, Sat 08:00 → 1 + 16/24 + 8/24·w (Saturday 00:00-08:00), Mon 08:00 → 2 + 2w
    tau = {1: 1.0, 2: 1 + 16 / 24 + w * 8 / 24, 3: 1 + 16 / 24 + w * 32 / 24, 4: 2 + 2 * w}
    for days, point in clock.items():
        lam = (tau[days] - 1.0) / (tau[4] - 1.0)
        w_atm = (1 - lam) * 0.0004 + lam * 0.0010
        assert point.atm_vol == pytest.approx(math.sqrt(w_atm / (days / 365)), rel=1e-9), days
    # calendar time puts Saturday 08:00 a third of the way from Friday to Monday; the clock further
    # (Friday's remaining weekday hours count in full, the weekend's less)
    flat = tenors(1.0)
    assert clock[2].atm_vol > flat[2].atm_vol
    assert clock[1].atm_vol == pytest.approx(flat[1].atm_vol) and clock[4].atm_vol == pytest.approx(flat[4].atm_vol)


def test_weight_one_is_the_calendar_kernel():
    points = calendar.tenor_points([((FRI - THU) / YEAR_MS, (0.0004 - 0.001, 0.01, 0.0, 0.0, 0.1)),
                                    ((MON - THU) / YEAR_MS, (0.0010 - 0.001, 0.01, 0.0, 0.0, 0.1))], [1, 2, 3, 4])
    flat = tenors(1.0)
    assert [flat[p.tenor_days].atm_vol for p in points] == [pytest.approx(p.atm_vol, rel=1e-12) for p in points]
