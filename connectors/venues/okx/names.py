"""OKX instrument ids and expiry codes: `BTC-USD-241013-70000-P` <-> (underlying, expiry_ms,
strike, type), instrument families, and the venue's constants (docs/protocols.md §B).

Pure string work: never imports the parser, the client or bytewax, never does I/O. Parsing an id
raises InstIdError naming the input (the frame parser turns that into a FeedError).
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Optional

VENUE = "okx"
DEFAULT_REST_URL = "https://www.okx.com"
EXPIRY_HOUR_UTC = 8  # OKX options and futures expire at 08:00 UTC
INSTRUMENTS_PATH = "/api/v5/public/instruments"
INDEX_TICKERS_PATH = "/api/v5/market/index-tickers"
DEPTH_CHANNELS = ("books", "books5", "bbo-tbt", "books50-l2-tbt", "books-l2-tbt")
INCREMENTAL_BOOKS = ("books", "books50-l2-tbt", "books-l2-tbt")  # seqId-chained updates
# BTC-USD-241013-70000-P; futures BTC-USD-241227; swaps BTC-USD-SWAP. Strikes may be decimal.
_OPTION_RE = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)-(\d{2})(\d{2})(\d{2})-(\d+(?:\.\d+)?)-([CP])$")
_FUTURE_RE = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)-(\d{2})(\d{2})(\d{2})$")
_SWAP_RE = re.compile(r"^([A-Z0-9]+)-([A-Z0-9]+)-SWAP$")


class InstIdError(ValueError):
    """An instrument id that is not an OKX option, future or swap."""


# ---------------------------------------------------------------- instrument ids


def _expiry_ms(inst_id: str, yy: str, mm: str, dd: str) -> int:
    year, month, day = 2000 + int(yy), int(mm), int(dd)
    if not 1 <= month <= 12:
        raise InstIdError(f"instrument {inst_id!r}: month {month} in the YYMMDD expiry is not 01..12")
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise InstIdError(f"instrument {inst_id!r}: day {day} does not exist in {year}-{month:02d}")
    return calendar.timegm((year, month, day, EXPIRY_HOUR_UTC, 0, 0)) * 1000


@lru_cache(maxsize=65536)
def parse_inst_id(inst_id: str) -> tuple[str, int, Optional[float], Optional[str]]:
    """`BTC-USD-241013-70000-P` → ("BTC", expiry_ms at 08:00 UTC, 70000.0, "P").

    Futures `BTC-USD-241227` give (underlying, expiry_ms, None, None); swaps `BTC-USD-SWAP`
    (underlying, 0, None, None). Raises InstIdError naming the input for anything else.
    """
    if not isinstance(inst_id, str):
        raise InstIdError(f"instrument id must be a string, got {type(inst_id).__name__}")
    m = _OPTION_RE.match(inst_id)
    if m:
        base, _quote, yy, mm, dd, strike_txt, cp = m.groups()
        strike = float(strike_txt)
        if not strike > 0:
            raise InstIdError(f"instrument {inst_id!r}: strike must be positive")
        return base, _expiry_ms(inst_id, yy, mm, dd), strike, cp
    m = _FUTURE_RE.match(inst_id)
    if m:
        base, _quote, yy, mm, dd = m.groups()
        return base, _expiry_ms(inst_id, yy, mm, dd), None, None
    m = _SWAP_RE.match(inst_id)
    if m:
        return m.group(1), 0, None, None
    raise InstIdError(
        f"instrument {inst_id!r} is not an OKX id; expected an option BTC-USD-241013-70000-P, "
        "a future BTC-USD-241227 or a swap BTC-USD-SWAP")


def inst_family(inst_id: str) -> str:
    """`BTC-USD-241013-70000-P` → "BTC-USD" (the instFamily/uly); raises InstIdError."""
    parse_inst_id(inst_id)
    base, quote = inst_id.split("-", 2)[:2]
    return f"{base}-{quote}"


def family_coin(family: str) -> str:
    """"BTC-USD" → "BTC"; raises ValueError naming the input for anything else."""
    if not isinstance(family, str) or not re.fullmatch(r"[A-Z0-9]+-[A-Z0-9]+", family):
        raise ValueError(f"instrument family {family!r}: expected an upper-case pair such as 'BTC-USD'")
    return family.split("-", 1)[0]


def format_expiry(expiry_ms: int) -> str:
    """1735286400000 → "241227" (YYMMDD, UTC)."""
    dt = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    return f"{dt.year % 100:02d}{dt.month:02d}{dt.day:02d}"


def format_strike(strike: float) -> str:
    """70000 → "70000"; 0.5 → "0.5"."""
    return str(int(strike)) if float(strike).is_integer() else repr(float(strike))


def format_inst_id(family: str, expiry_ms: int, strike: Optional[float] = None,
                   option_type: Optional[str] = None) -> str:
    """The inverse of parse_inst_id: expiry_ms 0 = swap; strike None = future."""
    family_coin(family)
    if expiry_ms == 0:
        return f"{family}-SWAP"
    if strike is None:
        return f"{family}-{format_expiry(expiry_ms)}"
    if option_type not in ("C", "P"):
        raise ValueError(f"option_type must be 'C' or 'P', got {option_type!r}")
    return f"{family}-{format_expiry(expiry_ms)}-{format_strike(strike)}-{option_type}"

