"""Deribit instrument names and expiry codes: `BTC-27DEC24-100000-C` <-> (underlying, expiry_ms,
strike, type), and the venue's constants (docs/protocols.md §A.1).

Pure string work: never imports the parser, the client or bytewax, never does I/O. Parsing a
name raises InstrumentNameError naming the input (the frame parser turns that into a FeedError).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Optional

VENUE = "deribit"
EXPIRY_HOUR_UTC = 8  # Deribit expiries settle at 08:00 UTC

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NUM = {m: i + 1 for i, m in enumerate(_MONTHS)}

# Options: BTC-27DEC24-100000-C. Linear altcoin options (SOL_USDC-…) may have decimal strikes,
# which Deribit writes with a "d" for the decimal point (XRP_USDC-30AUG24-0d625-C); a "." is
# accepted too. Futures: BTC-27DEC24. Perpetuals: BTC-PERPETUAL, SOL_USDC-PERPETUAL.
_OPTION_RE = re.compile(r"^([A-Z0-9]+(?:_[A-Z0-9]+)?)-(\d{1,2})([A-Z]{3})(\d{2})-(\d+(?:[.d]\d+)?)-([CP])$")
_FUTURE_RE = re.compile(r"^([A-Z0-9]+(?:_[A-Z0-9]+)?)-(\d{1,2})([A-Z]{3})(\d{2})$")
_PERP_RE = re.compile(r"^([A-Z0-9]+(?:_[A-Z0-9]+)?)-PERPETUAL$")


class InstrumentNameError(ValueError):
    """An instrument name that is not a Deribit option, future or perpetual."""


# ---------------------------------------------------------------- instrument names


def _expiry_ms(name: str, day: str, mon: str, yy: str) -> int:
    month = _MONTH_NUM.get(mon)
    if month is None:
        raise InstrumentNameError(f"instrument {name!r}: unknown month {mon!r}; expected one of {', '.join(_MONTHS)}")
    year = 2000 + int(yy)
    d = int(day)
    if not 1 <= d <= calendar.monthrange(year, month)[1]:
        raise InstrumentNameError(f"instrument {name!r}: day {d} does not exist in {mon} {year}")
    return calendar.timegm((year, month, d, EXPIRY_HOUR_UTC, 0, 0)) * 1000


@lru_cache(maxsize=65536)
def parse_instrument_name(name: str) -> tuple[str, int, Optional[float], Optional[str]]:
    """`BTC-27DEC24-100000-C` → ("BTC", expiry_ms at 08:00 UTC, 100000.0, "C").

    Futures give (underlying, expiry_ms, None, None); perpetuals (underlying, 0, None, None).
    Raises InstrumentNameError naming the input for anything else. The authoritative expiry is
    `expiration_timestamp` from public/get_instruments; this one agrees with it on Deribit.
    """
    if not isinstance(name, str):
        raise InstrumentNameError(f"instrument name must be a string, got {type(name).__name__}")
    m = _OPTION_RE.match(name)
    if m:
        underlying, day, mon, yy, strike_txt, cp = m.groups()
        strike = float(strike_txt.replace("d", "."))
        if not strike > 0:
            raise InstrumentNameError(f"instrument {name!r}: strike must be positive")
        return underlying, _expiry_ms(name, day, mon, yy), strike, cp
    m = _FUTURE_RE.match(name)
    if m:
        underlying, day, mon, yy = m.groups()
        return underlying, _expiry_ms(name, day, mon, yy), None, None
    m = _PERP_RE.match(name)
    if m:
        return m.group(1), 0, None, None
    raise InstrumentNameError(
        f"instrument {name!r} is not a Deribit name; expected an option BTC-27DEC24-100000-C, "
        "a future BTC-27DEC24 or a perpetual BTC-PERPETUAL")


def instrument_kind(name: str) -> str:
    """"option" | "future" | "perpetual"; raises InstrumentNameError for unknown forms."""
    _, expiry_ms, strike, _ = parse_instrument_name(name)
    if strike is not None:
        return "option"
    return "perpetual" if expiry_ms == 0 else "future"


def format_strike(strike: float) -> str:
    """100000 → "100000"; 0.625 → "0d625" (Deribit's decimal-point convention)."""
    if strike == int(strike):
        return str(int(strike))
    return repr(float(strike)).replace(".", "d")


def format_expiry(expiry_ms: int) -> str:
    """1735286400000 → "27DEC24" (day without zero padding)."""
    dt = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    return f"{dt.day}{_MONTHS[dt.month - 1]}{dt.year % 100:02d}"


def format_instrument_name(underlying: str, expiry_ms: int, strike: Optional[float] = None,
                           option_type: Optional[str] = None) -> str:
    """The inverse of parse_instrument_name (expiry_ms 0 = perpetual)."""
    if expiry_ms == 0:
        return f"{underlying}-PERPETUAL"
    if strike is None:
        return f"{underlying}-{format_expiry(expiry_ms)}"
    if option_type not in ("C", "P"):
        raise ValueError(f"option_type must be 'C' or 'P', got {option_type!r}")
    return f"{underlying}-{format_expiry(expiry_ms)}-{format_strike(strike)}-{option_type}"

