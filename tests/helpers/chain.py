"""One expiry's market as the feeds deliver it, for the chain, step and kernel tests: an
injected clock, a known SVI smile priced with Black-76, and the events production feeds a
chain (Instrument listings, then BookUpdate snapshots; a sequence gap for a stale book) —
never a shortcut the connectors do not take. Test support only: no fixtures, no I/O.
"""

from __future__ import annotations

import math

import numpy as np

from flows.config import load_config
from flows.steps import chain_settings
from operators.events import BookUpdate, Instrument, Ticker
from operators.kernels.black import black_price
from operators.kernels.svi import total_variance
from operators.state.chain import MS_PER_YEAR, ChainLogic, ChainState, FitBudget

T0 = 1_900_000_000_000
EXPIRY = T0 + int(0.25 * MS_PER_YEAR)
FORWARD = 60_000.0
TRUE = (0.01, 0.06, -0.35, 0.02, 0.15)  # raw SVI, T = 0.25
STRIKES = np.arange(40_000.0, 90_001.0, 2_500.0)


class Clock:
    """An injected `now_ms`: tests move `ms` by hand."""

    def __init__(self, ms: int):
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def option_name(strike: float, cp: str, prefix: str = "X") -> str:
    return f"{prefix}-{float(strike)}-{cp}"


def listing(venue: str = "deribit", prefix: str = "X", expiry_ms: int = EXPIRY, strikes=STRIKES) -> list:
    """The Instrument events discovery emits for every call and put of the expiry."""
    return [Instrument(venue, option_name(k, cp, prefix), "BTC", "option", expiry_ms, float(k), cp, 0.0001, 1.0,
                       "BTC") for k in strikes for cp in "CP"]


def prices_coin(forward: float = FORWARD, half_spread_vol: float = 0.004) -> dict:
    """(strike, "C"/"P") → (bid, ask) coin prices of the TRUE smile at ±half_spread_vol."""
    t = (EXPIRY - T0) / MS_PER_YEAR
    out = {}
    for strike in STRIKES:
        vol = math.sqrt(total_variance(TRUE, math.log(strike / forward)) / t)
        for cp in "CP":
            bid = float(black_price(forward, strike, t, vol - half_spread_vol, cp == "C")) / forward
            ask = float(black_price(forward, strike, t, vol + half_spread_vol, cp == "C")) / forward
            out[(float(strike), cp)] = (bid, ask)
    return out


def snapshot(name: str, bid: float, ask: float, ts_ms: int = T0, venue: str = "deribit", seq: int = 1) -> BookUpdate:
    return BookUpdate(venue, name, ts_ms, ts_ms, seq, None, "snapshot", ((bid, 1.0),), ((ask, 1.0),))


def gap(name: str, ts_ms: int = T0, venue: str = "deribit") -> BookUpdate:
    """A change whose prev_seq is not the book's last seq (snapshots carry seq 1): the book
    detects the missed message itself and is withheld until its next snapshot."""
    return BookUpdate(venue, name, ts_ms, ts_ms, 3, 2, "change", (), ())


def quotes(forward: float = FORWARD, half_spread_vol: float = 0.004, stale=(), only=None, ts_ms: int = T0) -> list:
    """The expiry's listing, then one snapshot per option book (`only`: a set of (strike, cp)
    to restrict to), then a sequence gap on both books of each strike in `stale`.

    The listing comes every time: the chain ignores options it already holds, as it does when
    a connector rediscovers after a reconnect."""
    events = listing()
    for (strike, cp), (bid, ask) in prices_coin(forward, half_spread_vol).items():
        if only is None or (strike, cp) in only:
            events.append(snapshot(option_name(strike, cp), bid, ask, ts_ms))
    events += [gap(option_name(k, cp), ts_ms) for k in stale for cp in "CP"]
    return events


def ticker(forward: float = FORWARD, ts_ms: int = T0) -> Ticker:
    return Ticker("deribit", "X", ts_ms, ts_ms, underlying_px=forward)


def chain_kwargs(**over) -> dict:
    """ChainLogic's settings as graph.toml gives them (flows.steps.chain_settings), with `over`
    replacing some: ChainLogic itself has no defaults."""
    return {**chain_settings(load_config()), **over}


def logic(clock, **kw) -> ChainLogic:
    opts = chain_kwargs(fit_interval_ms=200, budget=FitBudget(8))
    opts.update(kw)
    return ChainLogic(ChainState("deribit", "BTC", EXPIRY), now_ms=clock, **opts)
