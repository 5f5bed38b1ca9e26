"""Deribit's vocabulary for the Deribit simulator: instrument names (BTC-27DEC24-100000-C,
BTC-27DEC24, BTC-PERPETUAL) over the shared market (`DeribitMarket`), option ticks, channel
names and the subscription envelope (docs/protocols.md §A).

Split from connectors/sim/deribit.py (the server) so that connectors/sim/deribit_faults.py can
write frames without importing the server. Like every module of connectors/sim it must never
import the venue parsers (connectors/venues/*) or flows: the tests compare the simulators with
those parsers, so a name written here is checked against the parser's reading of it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional, Sequence

import orjson

from connectors.sim.books import TickBands
from connectors.sim.expiries import YEAR_MS
from connectors.sim.market import Market

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

# Deribit option ticks (coin): 0.0001 below 0.005, 0.0005 from 0.005 up.
OPT_TICK_SMALL = 0.0001
OPT_TICK_LARGE = 0.0005
OPT_TICK_ABOVE = 0.005
OPTION_TICKS = TickBands(small=OPT_TICK_SMALL, large=OPT_TICK_LARGE, above=OPT_TICK_ABOVE)

GROUPED_DEPTHS = ("1", "10", "20")  # Deribit's depths for book.{instrument}.{group}.{depth}.{interval}


def expiry_code(expiry_ms: int) -> str:
    """1735286400000 → "27DEC24" (Deribit's expiry in instrument names)."""
    dt = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    return f"{dt.day}{_MONTHS[dt.month - 1]}{dt.year % 100:02d}"


def strike_txt(k: float) -> str:
    """100000.0 → "100000", 2.5 → "2d5" (Deribit writes a strike's decimal point as d)."""
    return str(int(k)) if k == int(k) else repr(k).replace(".", "d")


def book_channel(channel: str) -> tuple[str, Optional[int]]:
    """book.X.100ms → (X, None); book.X.none.10.100ms → (X, 10). Names contain no dots."""
    parts = channel.split(".")
    return parts[1], (int(parts[3]) if len(parts) == 5 else None)


def notification(channel: str, data: dict) -> bytes:
    """A subscription notification frame of `channel` carrying `data`."""
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}})


class DeribitMarket(Market):
    """The market of one currency with Deribit's instrument names: `names[i]` of option i,
    `index_of` name → i, `futures` expiry → future name (weeklies and longer, not dailies), the
    perpetual, and `future_expiry` future name → expiry (0 for the perpetual)."""

    def __init__(self, name: str, *args, **kwargs):
        self.futures: dict[int, str] = {}
        self.perpetual = f"{name}-PERPETUAL"
        super().__init__(name, *args, **kwargs)
        self.names = [self._option_name(self.expiry_of(i), float(k), bool(c))
                      for i, (k, c) in enumerate(zip(self.strike.tolist(), self.is_call.tolist()))]
        self.index_of = {n: i for i, n in enumerate(self.names)}
        for expiry in self.expiries:
            t = max((expiry - self.created_ms) / YEAR_MS, 1e-6)
            if t * 365 > 1.5:  # Deribit lists futures for weeklies and longer, not dailies
                self.futures[expiry] = f"{self.name}-{expiry_code(expiry)}"
        self.future_expiry = {name: e for e, name in self.futures.items()}
        self.future_expiry[self.perpetual] = 0

    def _option_name(self, expiry: int, strike: float, call: bool) -> str:
        return f"{self.name}-{expiry_code(expiry)}-{strike_txt(strike)}-{'C' if call else 'P'}"

    def add_options(self, expiry: int, strikes: Sequence[float], taken=None) -> list[str]:
        """List calls and puts at new (expiry, strike) pairs intraday; returns the new names.
        A strike whose name is taken (an expiry on the same day) is never listed twice."""
        added = super().add_options(expiry, strikes,
                                    lambda k: self._option_name(expiry, k, True) in self.index_of)
        new = []
        for k in added:
            for call in (True, False):
                name = self._option_name(expiry, k, call)
                self.index_of[name] = len(self.names)
                self.names.append(name)
                new.append(name)
        return new

    def underlying_index(self, expiry: int) -> str:
        return self.futures.get(expiry) or f"SYN.{self.name}-{expiry_code(expiry)}"
