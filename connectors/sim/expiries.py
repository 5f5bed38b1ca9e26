"""The simulators' listing calendar: which expiries exist at a given time (Deribit's rules, which
the OKX simulator reuses: 08:00 UTC dailies, Friday weeklies, last-Friday monthlies and
quarterlies), what kind of expiry one is, and the year convention the market model prices with.

Pure date arithmetic on epoch milliseconds: no market, no venue frames. Like every module of
connectors/sim it must never import the venue parsers (connectors/venues/*) or flows: the tests
compare the simulators against those parsers, so the two must not share code.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone

DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS  # ACT/365: time to expiry in years, as the engine measures it (docs/architecture.md)


def at_0800(d: datetime) -> int:
    """08:00 UTC on the day of `d`, in epoch ms (the hour every Deribit option expires)."""
    return calendar.timegm((d.year, d.month, d.day, 8, 0, 0)) * 1000


def last_friday(year: int, month: int) -> datetime:
    last = calendar.monthrange(year, month)[1]
    d = datetime(year, month, last, tzinfo=timezone.utc)
    return d - timedelta(days=(d.weekday() - 4) % 7)


def deribit_expiries(now_ms: int, daily: int = 2, weekly: int = 2, monthly: int = 3, quarterly: int = 2,
                     min_life_ms: int = 30 * 60_000) -> list[int]:
    """Deribit-like expiries at 08:00 UTC after now (+min_life): the next `daily` days, then
    Fridays, last Fridays of months, last Fridays of quarter months, without duplicates."""
    cutoff = now_ms + min_life_ms
    today = datetime.fromtimestamp(now_ms / 1000.0, tz=timezone.utc).replace(hour=0, minute=0, second=0,
                                                                             microsecond=0)
    chosen: list[int] = []

    def take(candidates, n):
        got = 0
        for ts in candidates:
            if got >= n:
                break
            if ts > cutoff and ts not in chosen:
                chosen.append(ts)
                got += 1

    days = (today + timedelta(days=i) for i in range(0, 4000))
    take((at_0800(d) for d in days), daily)
    take((at_0800(today + timedelta(days=i)) for i in range(0, 4000) if (today + timedelta(days=i)).weekday() == 4),
         weekly)

    def month_ends(quarter_only: bool):
        y, m = today.year, today.month
        for _ in range(240):
            if not quarter_only or m in (3, 6, 9, 12):
                yield at_0800(last_friday(y, m))
            m += 1
            if m == 13:
                y, m = y + 1, 1

    take(month_ends(False), monthly)
    take(month_ends(True), quarterly)
    return sorted(chosen)


def expiry_period(expiry_ms: int, now_ms: int) -> str:
    """The kind of an expiry as Deribit's settlement_period names it: "day" (within 1.5 days
    and not a Friday), "month" (a month's last Friday) or "week"."""
    days = (expiry_ms - now_ms) / DAY_MS
    d = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    if days <= 1.5 and d.weekday() != 4:
        return "day"
    if at_0800(last_friday(d.year, d.month)) == expiry_ms:
        return "month"
    return "week"
