"""`volgraph sim`: a local Deribit look-alike (JSON-RPC v2 over websocket) driven by a known,
arbitrage-free "true" volatility surface, for tests and benchmarks.

It speaks the subset of Deribit that volgraph uses (PROTOCOLS.md §A) with the real frame shapes:
public/get_instruments, public/subscribe, public/unsubscribe, public/set_heartbeat (then
heartbeat and test_request frames, closing sessions that do not answer), public/test,
public/get_time, public/get_index_price; channels book.{instrument}.{interval} (incremental),
book.{instrument}.none.{depth}.{interval} (grouped: whole top-of-book snapshots),
ticker.{instrument}.{interval}, deribit_price_index.{index} and
instrument.state.{kind}.{currency} (sent on listings and expiries). One book per instrument
moves for every book channel of it: an incremental subscriber sees the change, a grouped one
the new top levels, at the same moment.

Faults, on command (`Simulator.inject`, or scheduled by market tick with `faults=` / `--faults`):
dropped connections, stalls, stopped heartbeats, change_id gaps, malformed, oversized, crossed
and badly priced frames, intraday listings and delistings. Their random choices come from a
generator seeded by `seed`, so a schedule replays the same scenario.

The market: per currency a seeded spot process (GBM with jumps) and an SSVI surface
(θ(T) from an ATM term structure, power-law φ with η(1+|ρ|) ≤ 2, so butterfly- and
calendar-free by construction); raw SVI slices follow from it. Option prices are Black-76
(operators.kernels.black) at the true vol on each expiry's forward (spot × e^{basis·T}), in coin.
Book bids are rounded down and asks up to Deribit's option ticks (0.0001 coin, 0.0005 at
0.005 and above), so every best bid ≤ true price ≤ best ask. The sequence of market states
is a function of the seed and the tick count; frame timestamps are wall clock.

It must never be used as a source of truth about Deribit's behaviour beyond PROTOCOLS.md, and
it never imports flows or the parser in connectors/venues/deribit/__init__.py (the tests compare the two).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, Sequence

import numpy as np
import orjson

from connectors.sim.server import YEAR_MS, SimConn, SimServer, add_common_args, add_size_args, serve_until_stopped
from operators.kernels.black import black_price, d1_d2, greeks

log = logging.getLogger(__name__)

VERSION = "1.2.26-volgraph-sim"
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
PERPETUAL_EXPIRATION_MS = 32_503_708_800_000  # what Deribit lists for perpetuals (year 3000)

# Deribit option ticks (coin): 0.0001 below 0.005, 0.0005 from 0.005 up.
OPT_TICK_SMALL = 0.0001
OPT_TICK_LARGE = 0.0005
OPT_TICK_ABOVE = 0.005


@dataclass(frozen=True)
class CurrencyModel:
    """The true market of one currency. Vols are decimals; times in years."""

    spot_usd: float
    spot_vol: float  # GBM diffusion vol of the spot
    jump_per_year: float  # Poisson intensity of spot jumps
    jump_mean: float  # mean log-jump
    jump_sd: float
    atm_vol_short: float  # ATM vol as T → 0
    atm_vol_long: float  # ATM vol as T → ∞
    term_tau_years: float  # decay of the ATM term structure
    rho: float  # SSVI skew
    eta: float  # SSVI power-law φ(θ) = η / (θ^γ (1+θ)^(1−γ)); η(1+|ρ|) ≤ 2 keeps it arb-free
    gamma: float
    basis_per_year: float  # forward = spot × e^{basis·T}
    strike_step_min: float  # smallest "nice" strike step in USD
    future_tick_usd: float
    option_min_amount: float  # contracts (coin)
    future_contract_usd: float
    level_vol: float = 0.3  # vol-of-vol of the level multiplier λ (per √year)
    level_kappa: float = 2.0  # its mean reversion per year


MODELS: dict[str, CurrencyModel] = {
    "BTC": CurrencyModel(100_000.0, 0.50, 20.0, 0.0, 0.02, 0.55, 0.50, 0.25, -0.10, 1.0, 0.4, 0.03,
                         50.0, 2.5, 0.1, 10.0),
    "ETH": CurrencyModel(3_500.0, 0.65, 20.0, 0.0, 0.03, 0.70, 0.62, 0.25, -0.15, 1.0, 0.4, 0.03,
                         5.0, 0.05, 1.0, 1.0),
}

# How many expiries of each Deribit kind, and strikes per expiry.
SCALES: dict[str, dict[str, Any]] = {
    "small": {"plan": {"daily": 1, "weekly": 1, "monthly": 0, "quarterly": 0}, "n_strikes": 12,
              "n_sd": 2.5, "depth": 5},
    "medium": {"plan": {"daily": 1, "weekly": 2, "monthly": 3, "quarterly": 2}, "n_strikes": 25,
               "n_sd": 3.0, "depth": 5},
    "seed": {"plan": {"daily": 2, "weekly": 3, "monthly": 4, "quarterly": 3},
             "n_strikes": {"BTC": 167, "ETH": 84}, "n_sd": 4.0, "depth": 8},
}


# ---------------------------------------------------------------- calendar


def _at_0800(d: datetime) -> int:
    return calendar.timegm((d.year, d.month, d.day, 8, 0, 0)) * 1000


def _last_friday(year: int, month: int) -> datetime:
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
    take((_at_0800(d) for d in days), daily)
    take((_at_0800(today + timedelta(days=i)) for i in range(0, 4000) if (today + timedelta(days=i)).weekday() == 4),
         weekly)

    def month_ends(quarter_only: bool):
        y, m = today.year, today.month
        for _ in range(240):
            if not quarter_only or m in (3, 6, 9, 12):
                yield _at_0800(_last_friday(y, m))
            m += 1
            if m == 13:
                y, m = y + 1, 1

    take(month_ends(False), monthly)
    take(month_ends(True), quarterly)
    return sorted(chosen)


def expiry_code(expiry_ms: int) -> str:
    dt = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    return f"{dt.day}{_MONTHS[dt.month - 1]}{dt.year % 100:02d}"


def _nice_step(raw: float, minimum: float) -> float:
    raw = max(raw, minimum)
    mag = 10.0 ** math.floor(math.log10(raw))
    for mult in (1.0, 2.0, 2.5, 5.0, 10.0):
        if mult * mag >= raw - 1e-12:
            return mult * mag
    return 10.0 * mag


def _strike_txt(k: float) -> str:
    return str(int(k)) if k == int(k) else repr(k).replace(".", "d")


# ---------------------------------------------------------------- ticks


def floor_tick(price_coin: float) -> float:
    """Round a bid down to Deribit's option tick for its price."""
    if price_coin >= OPT_TICK_ABOVE:
        return round(math.floor(price_coin / OPT_TICK_LARGE + 1e-9) * OPT_TICK_LARGE, 4)
    return round(math.floor(price_coin / OPT_TICK_SMALL + 1e-9) * OPT_TICK_SMALL, 4)


def ceil_tick(price_coin: float) -> float:
    """Round an ask up to Deribit's option tick for its price (at least one small tick)."""
    p = max(price_coin, OPT_TICK_SMALL)
    if p > OPT_TICK_ABOVE:
        return round(math.ceil(p / OPT_TICK_LARGE - 1e-9) * OPT_TICK_LARGE, 4)
    return round(math.ceil(p / OPT_TICK_SMALL - 1e-9) * OPT_TICK_SMALL, 4)


def floor_ticks(price_coin: np.ndarray) -> np.ndarray:
    """floor_tick over an array (same results, one numpy pass per tick instead of per message)."""
    tick = np.where(price_coin >= OPT_TICK_ABOVE, OPT_TICK_LARGE, OPT_TICK_SMALL)
    return np.round(np.floor(price_coin / tick + 1e-9) * tick, 4)


def ceil_ticks(price_coin: np.ndarray) -> np.ndarray:
    p = np.maximum(price_coin, OPT_TICK_SMALL)
    tick = np.where(p > OPT_TICK_ABOVE, OPT_TICK_LARGE, OPT_TICK_SMALL)
    return np.round(np.ceil(p / tick - 1e-9) * tick, 4)


def tick_sizes(price_coin: np.ndarray) -> np.ndarray:
    """Deribit's option tick at each price (coin)."""
    return np.where(price_coin >= OPT_TICK_ABOVE, OPT_TICK_LARGE, OPT_TICK_SMALL)


def book_levels(bid_coin: np.ndarray, ask_coin: np.ndarray, depth: int,
                floor: Callable[[np.ndarray], np.ndarray] = floor_ticks,
                ceil: Callable[[np.ndarray], np.ndarray] = ceil_ticks,
                tick_of: Callable[[np.ndarray], np.ndarray] = tick_sizes) -> tuple[list, list]:
    """Tick-aligned book prices for many options at once: bids floored, asks ceiled, deeper
    levels half a spread apart (at least one tick). Returns per-option lists, best first;
    bids stop before reaching zero. The tick functions default to Deribit's (a venue with
    other ticks passes its own)."""
    min_tick = float(np.min(tick_of(np.zeros(1))))
    bid0 = floor(bid_coin)
    ask0 = ceil(ask_coin)
    ask0 = np.where(ask0 <= bid0, ceil(bid0 + min_tick), ask0)
    step = np.maximum(floor((ask0 - bid0) / 2), tick_of(bid0))
    bids = np.empty((len(bid0), depth))
    asks = np.empty((len(ask0), depth))
    bids[:, 0], asks[:, 0] = bid0, ask0
    for j in range(1, depth):
        prev = bids[:, j - 1]
        bids[:, j] = np.where(prev > 0, floor(np.maximum(prev - step, 0.0)), 0.0)
        asks[:, j] = ceil(asks[:, j - 1] + step)
    bid_lists = [[p for p in row if p > 0] for row in bids.tolist()]
    return bid_lists, asks.tolist()


def move_book(bids: dict, asks: dict, bids_target: list, asks_target: list, new_size: Callable[[], float],
              other_size: Callable[[float], float], rng: random.Random) -> tuple[list, list]:
    """Move a book (price → size per side, changed in place) to the target prices: levels off
    the target are deleted, new target prices get new_size(); when no price moved, one random
    level is re-sized instead (the common case on a real book; other_size(size) when new_size()
    drew the size it already had). Returns per side the changes [(action, price, size)] with
    action "delete" (size 0), "new" or "change", in the order they were made."""
    out = []
    for side, target in ((bids, bids_target), (asks, asks_target)):
        changes = []
        tset = set(target)
        for px in [p for p in side if p not in tset]:
            del side[px]
            changes.append(("delete", px, 0))
        for px in target:
            if px not in side:
                side[px] = new_size()
                changes.append(("new", px, side[px]))
        out.append(changes)
    if not out[0] and not out[1]:
        sides = [s for s in (0, 1) if (bids, asks)[s]]
        if sides:
            s = rng.choice(sides)
            side = (bids, asks)[s]
            px = rng.choice(list(side))
            size = new_size()
            if size == side[px]:
                size = other_size(size)
            side[px] = size
            out[s].append(("change", px, size))
    return out[0], out[1]


def _ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _implied_vol(price_usd: float, forward: float, strike: float, t_years: float, is_call: bool) -> Optional[float]:
    """Scalar Black-76 IV by safeguarded Newton/bisection, for ticker bid_iv/ask_iv only.
    None when the price is outside the no-arbitrage band (the ticker then sends a sentinel)."""
    intrinsic = max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    upper = forward if is_call else strike
    if not intrinsic < price_usd < upper or t_years <= 0:
        return None
    sqrt_t = math.sqrt(t_years)
    lo, hi, vol = 1e-4, 20.0, 0.6
    for _ in range(60):
        s = vol * sqrt_t
        d1 = math.log(forward / strike) / s + 0.5 * s
        d2 = d1 - s
        px = forward * _ncdf(d1) - strike * _ncdf(d2) if is_call else strike * _ncdf(-d2) - forward * _ncdf(-d1)
        diff = px - price_usd
        if diff == 0.0:
            return vol
        if diff > 0:
            hi = vol
        else:
            lo = vol
        vega = forward * math.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi) * sqrt_t
        nxt = vol - diff / vega if vega > 1e-300 else 0.5 * (lo + hi)
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        if abs(nxt - vol) < 1e-12 or hi - lo < 1e-12:  # converged in vol, not in price
            return nxt
        vol = nxt
    return vol


# ---------------------------------------------------------------- the market


class _Currency:
    """Instruments, state and current prices of one currency (vectorised over options)."""

    def __init__(self, name: str, model: CurrencyModel, expiries: list[int], n_strikes: int, n_sd: float,
                 seed: int, index: int, created_ms: int):
        self.name = name
        self.model = model
        self.rng = np.random.default_rng([seed, index])  # the market path: seed and tick count only
        self.spot = model.spot_usd
        self.level = 1.0  # multiplier on all ATM vols (uniform in T keeps θ(T) increasing)
        self.expiries = expiries
        self.created_ms = created_ms
        self.n_strikes = n_strikes
        self.n_sd = n_sd
        self.futures: dict[int, str] = {}  # expiry → future name (not for dailies)
        self.perpetual = f"{name}-PERPETUAL"
        self.price_version = -1
        self._build_instruments(created_ms)

    # SSVI -------------------------------------------------------------------------------------
    def atm_vol(self, t_years):
        m = self.model
        t = np.asarray(t_years, float)
        return self.level * (m.atm_vol_long + (m.atm_vol_short - m.atm_vol_long) * np.exp(-t / m.term_tau_years))

    def theta(self, t_years):
        t = np.asarray(t_years, float)
        return self.atm_vol(t) ** 2 * t

    def phi(self, theta):
        m = self.model
        return m.eta / (theta ** m.gamma * (1.0 + theta) ** (1.0 - m.gamma))

    def total_variance(self, k, t_years):
        th = self.theta(t_years)
        ph = self.phi(th)
        rho = self.model.rho
        return 0.5 * th * (1.0 + rho * ph * k + np.sqrt((ph * k + rho) ** 2 + 1.0 - rho * rho))

    def raw_svi(self, t_years: float) -> tuple[float, float, float, float, float]:
        """SSVI slice → raw SVI (a, b, ρ, m, σ) (Gatheral–Jacquier 2014, lemma 3.3)."""
        th = float(self.theta(t_years))
        ph = float(self.phi(th))
        rho = self.model.rho
        return (0.5 * th * (1.0 - rho * rho), 0.5 * th * ph, rho, -rho / ph, math.sqrt(1.0 - rho * rho) / ph)

    def forward(self, t_years):
        return self.spot * np.exp(self.model.basis_per_year * np.asarray(t_years, float))

    # instruments ------------------------------------------------------------------------------
    def _build_instruments(self, now_ms: int) -> None:
        names, strikes, exp_idx, calls = [], [], [], []
        self.strikes_by_expiry: dict[int, list[float]] = {}
        for e_i, expiry in enumerate(self.expiries):
            t = max((expiry - now_ms) / YEAR_MS, 1e-6)
            fwd = float(self.forward(t))
            sd = float(self.atm_vol(t)) * math.sqrt(t)
            lo, hi = fwd * math.exp(-self.n_sd * sd), fwd * math.exp(self.n_sd * sd)
            step = _nice_step((hi - lo) / max(self.n_strikes - 1, 1), self.model.strike_step_min)
            # centre the grid on the forward so the money is always covered
            first = max(step, round(fwd / step) * step - step * ((self.n_strikes - 1) // 2))
            ks = [first + i * step for i in range(self.n_strikes)]
            self.strikes_by_expiry[expiry] = ks
            code = expiry_code(expiry)
            for k in ks:
                for cp in ("C", "P"):
                    names.append(f"{self.name}-{code}-{_strike_txt(k)}-{cp}")
                    strikes.append(k)
                    exp_idx.append(e_i)
                    calls.append(cp == "C")
            if t * 365 > 1.5:  # Deribit lists futures for weeklies and longer, not dailies
                self.futures[expiry] = f"{self.name}-{code}"
        self.names = names
        self.index_of = {n: i for i, n in enumerate(names)}
        self.strike = np.array(strikes, float)
        self.exp_idx = np.array(exp_idx, np.int64)
        self.is_call = np.array(calls, bool)
        self.future_expiry = {name: e for e, name in self.futures.items()}
        self.future_expiry[self.perpetual] = 0
        rng = random.Random(f"{self.name}-static")
        self.open_interest = [round(rng.uniform(0, 2000), 1) for _ in names]

    def add_options(self, expiry: int, strikes: Sequence[float]) -> list[str]:
        """List calls and puts at new (expiry, strike) pairs intraday; returns the new names.
        Existing options keep their positions (the arrays are extended, never reordered)."""
        expiry_of = [self.expiries[i] for i in self.exp_idx.tolist()]  # before the list changes
        if expiry not in self.expiries:
            self.expiries = sorted(self.expiries + [expiry])
            self.strikes_by_expiry[expiry] = []
        code = expiry_code(expiry)
        new = []
        for k in strikes:
            k = float(k)
            if k in self.strikes_by_expiry[expiry]:
                continue
            if f"{self.name}-{code}-{_strike_txt(k)}-C" in self.index_of:
                continue  # the name is taken (an expiry on the same day): never list it twice
            self.strikes_by_expiry[expiry] = sorted(self.strikes_by_expiry[expiry] + [k])
            for cp in ("C", "P"):
                name = f"{self.name}-{code}-{_strike_txt(k)}-{cp}"
                self.index_of[name] = len(self.names)
                self.names.append(name)
                new.append(name)
                expiry_of.append(expiry)
                self.open_interest.append(100.0)
            self.strike = np.append(self.strike, [k, k])
            self.is_call = np.append(self.is_call, [True, False])
        self.exp_idx = np.array([self.expiries.index(e) for e in expiry_of], np.int64)
        return new

    def underlying_index(self, expiry: int) -> str:
        return self.futures.get(expiry) or f"SYN.{self.name}-{expiry_code(expiry)}"

    # dynamics ---------------------------------------------------------------------------------
    def step(self, dt_years: float) -> None:
        """One tick of the spot (GBM + compound Poisson jumps) and the vol level (OU)."""
        m = self.model
        z, z_level = self.rng.standard_normal(2)
        n_jumps = self.rng.poisson(m.jump_per_year * dt_years)
        jump = float(self.rng.normal(m.jump_mean, m.jump_sd, n_jumps).sum()) if n_jumps else 0.0
        comp = m.jump_per_year * (math.exp(m.jump_mean + 0.5 * m.jump_sd ** 2) - 1.0)  # keeps E[S] driftless
        self.spot *= math.exp((-0.5 * m.spot_vol ** 2 - comp) * dt_years + m.spot_vol * math.sqrt(dt_years) * z + jump)
        self.level += m.level_kappa * (1.0 - self.level) * dt_years + m.level_vol * math.sqrt(dt_years) * z_level
        self.level = min(max(self.level, 0.5), 2.0)

    def reprice(self, now_ms: int) -> None:
        """All option prices at the current state (vectorised: 3 Black-76 calls per tick)."""
        exp = np.array(self.expiries, np.int64)
        self.t_e = np.maximum((exp - now_ms) / YEAR_MS, 1e-6)
        self.fwd_e = self.forward(self.t_e)
        t = self.t_e[self.exp_idx]
        f = self.fwd_e[self.exp_idx]
        k = np.log(self.strike / f)
        w = self.total_variance(k, t)
        vol = np.sqrt(w / t)
        z = np.abs(k) / (vol * np.sqrt(t))
        half = 0.005 + 0.015 * np.minimum(z, 3.0) / 3.0  # half-spread in vol: 0.5 pt ATM, 2 pts in the wings
        true_usd = black_price(f, self.strike, t, vol, self.is_call)
        bid_usd = black_price(f, self.strike, t, np.maximum(vol - half, 0.01), self.is_call)
        ask_usd = black_price(f, self.strike, t, vol + half, self.is_call)
        g = greeks(f, self.strike, t, vol, self.is_call)
        self.t = t
        self.f = f
        self.vol = vol
        self.true_coin = true_usd / f
        self.bid_coin = np.minimum(bid_usd / f, self.true_coin)
        self.ask_coin = np.maximum(ask_usd / f, self.true_coin)
        self.delta = g["delta"]
        self.gamma = g["gamma"]
        self.vega_usd_pt = g["vega"] / 100.0  # per vol point, as Deribit shows it
        d1, _ = d1_d2(f, self.strike, t, vol)
        pdf = np.exp(-0.5 * d1 * d1) / math.sqrt(2 * math.pi)
        self.theta_usd_day = -f * pdf * vol / (2 * np.sqrt(t)) / 365.0  # undiscounted Black-76 theta per day


class _Book:
    __slots__ = ("bids", "asks", "change_id")

    def __init__(self):
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.change_id = 0


class _Conn(SimConn):
    """A session: its subscriptions are channel names; heartbeat state on top."""

    def __init__(self, ws, queue_max: int):
        super().__init__(ws, queue_max)
        self.heartbeat_task: Optional[asyncio.Task] = None
        self.test_outstanding = False
        self.test_sent = 0.0
        self.heartbeats_off = False  # fault "heartbeat_stop"


# ---------------------------------------------------------------- the server


class Simulator(SimServer):
    """An in-process Deribit simulator. start() → "ws://127.0.0.1:PORT"; stop() shuts it down.

    Thread model: everything runs on the simulator's own thread and asyncio loop once started;
    the inspection methods (true_vol, spot, …) read the current state and are meant for tests.
    advance() steps the market by hand and is only for a simulator that is not started.
    """

    label = "simulator"
    thread_name = "deribit-sim"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, seed: int = 7, rate: float = 2000.0,
                 currencies: Sequence[str] = ("BTC", "ETH"), scale: str = "small",
                 n_expiries: Optional[int] = None, n_strikes: Optional[int] = None,
                 plan: Optional[dict[str, int]] = None, depth: Optional[int] = None,
                 tick_ms: float = 100.0, now_ms: Optional[int] = None, book_share: float = 0.9,
                 min_heartbeat_s: float = 10.0, conn_queue_max: int = 100_000,
                 max_message_bytes: int = 1 << 20, faults: Sequence[dict] = ()):
        if scale not in SCALES:
            raise ValueError(f"scale={scale!r}: use one of {', '.join(SCALES)}")
        unknown = [c for c in currencies if c.upper() not in MODELS]
        if unknown:
            raise ValueError(f"currencies {unknown}: the simulator models {', '.join(MODELS)}")
        self._init_server(host=host, port=port, seed=seed, rate=rate, tick_ms=tick_ms, conn_queue_max=conn_queue_max,
                          max_message_bytes=max_message_bytes, now_ms=now_ms, counter_keys=(
            "connections", "connections_open", "requests", "messages_sent", "book_messages", "ticker_messages",
            "index_messages", "snapshots", "test_requests_sent", "test_answers", "heartbeats_sent",
            "heartbeat_closes", "slow_closes", "gaps_injected", "drops_injected", "subscribe_calls",
            "unsubscribe_calls", "rpc_errors", "ticks", "test_answer_ms_max", "faults_injected",
            "faults_applied", "late_frames_sent", "state_notifications"))
        cfg = SCALES[scale]
        self.book_share = book_share
        self.min_heartbeat_s = min_heartbeat_s
        self.depth = depth or cfg["depth"]
        plan = plan or cfg["plan"]
        self._cur: dict[str, _Currency] = {}
        for i, c in enumerate(currencies):
            c = c.upper()
            exps = deribit_expiries(self._start_ms, **plan)
            if n_expiries is not None:
                exps = exps[:n_expiries]
            ns = n_strikes or (cfg["n_strikes"][c] if isinstance(cfg["n_strikes"], dict) else cfg["n_strikes"])
            self._cur[c] = _Currency(c, MODELS[c], exps, ns, cfg["n_sd"], seed, i, self._start_ms)
        self._by_option: dict[str, tuple[_Currency, int]] = {}
        self._by_future: dict[str, _Currency] = {}
        for cur in self._cur.values():
            for n, i in cur.index_of.items():
                self._by_option[n] = (cur, i)
            for n in cur.future_expiry:
                self._by_future[n] = cur
        self._index_names = {f"{c.lower()}_usd": cur for c, cur in self._cur.items()}
        self._rng = random.Random(seed)  # message choices (which channel, amounts)
        self._change_ids = itertools.count(10_000_000 + 1_000 * (seed % 1000))
        self._books: dict[str, _Book] = {}
        self._reprice_all()
        self._instrument_cache: dict[tuple[str, str], list] = {}
        self._sub_lists: Optional[tuple[list, list, list]] = None
        self._book_variants: dict[str, list[str]] = {}  # instrument → its book channels, when several
        self._gap_next: set[str] = set()
        self._rate_limit_next = 0
        # Faults (see inject): per-instrument corruptions of the next message, a schedule by
        # market tick (the same schedule and seed replay the same scenario), and a log.
        self._msg_faults: dict[str, list[tuple[str, dict]]] = {}
        self._fault_rng = random.Random(f"{seed}-faults")
        self._schedule: list[tuple[int, str, Optional[str], dict]] = []
        for f in faults:
            f = dict(f)
            at_s = float(f.pop("at_s", 0.0))
            kind = f.pop("kind")
            self._check_fault(kind, f.get("instrument"))
            self._schedule.append((round(at_s * 1000.0 / self.tick_ms), kind, f.pop("instrument", None), f))
        self._schedule.sort(key=lambda x: x[0])
        self._delisted: set[str] = set()
        self._paused = False
        self.fault_log: list[dict] = []

    # ------------------------------------------------ inspection (tests)

    def instrument_names(self, underlying: str, kind: str = "option") -> list[str]:
        cur = self._currency(underlying)
        if kind == "option":
            names = cur.names
        else:
            names = [cur.futures[e] for e in cur.expiries if e in cur.futures] + [cur.perpetual]
        return [n for n in names if n not in self._delisted]

    def true_price_coin(self, instrument: str) -> float:
        cur, i = self._by_option[instrument]
        return float(cur.true_coin[i])

    FAULTS = ("gap", "drop", "rate_limit", "stall", "heartbeat_stop", "malformed", "oversized", "crossed",
              "bad_price", "listing", "expire")

    def inject(self, kind: str, instrument: Optional[str] = None, **params: Any) -> Any:
        """Inject a fault now; returns once it is in effect (its result, for listing/expire).

        Connection faults: "drop" (abort every connection, no close handshake); "stall"
        (seconds=N: send nothing, heartbeats included, for N s but keep the socket);
        "heartbeat_stop" (current sessions get no more heartbeats or test_requests);
        "rate_limit" (the next request gets error 10028 and the session is closed).
        Message faults on the next book change of `instrument` (None: any book;
        channel="ticker" for its next ticker instead): "gap" (a change_id is skipped);
        "malformed" (variant = truncated | nan_literal | garbage | not_object | wrong_type);
        "oversized" (bytes=N of padding in a real change); "crossed" (the change also carries a
        bid above the best ask that the book never had); "bad_price" (value = -0.001, 1e308,
        "0.05", "NaN", "Infinity", None, … in place of the first level's price, or of
        `field` of a ticker). Listings: "listing" (underlying=, new_expiry=False: a new strike
        above the first expiry's grid, or True: a new expiry a week after the last one;
        n_strikes=) lists calls and puts at once and sends instrument.state "created";
        "expire" (`instrument`, or underlying= and expiry_ms= for a whole expiry) delists them:
        instrument.state "settled", then `late` more frames (default 1) before they stop.
        Choices are drawn from a seeded generator: the same faults at the same ticks replay.
        """
        self._check_fault(kind, instrument)
        return self._call_on_loop(lambda: self._inject(kind, instrument, params), f"inject({kind!r})")

    def _check_fault(self, kind: str, instrument: Optional[str]) -> None:
        if kind not in self.FAULTS:
            raise ValueError(f"inject({kind!r}): known faults are {', '.join(self.FAULTS)}")
        if instrument is not None and instrument not in self._by_option and instrument not in self._by_future:
            raise ValueError(f"inject({kind!r}, {instrument!r}): unknown instrument")

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) market messages; heartbeats and requests go on. Tests pause the
        market to compare books once everything sent has been read."""
        self._call_on_loop(lambda: setattr(self, "_paused", paused), "pause()")

    def books(self) -> dict[str, tuple[dict[float, float], dict[float, float], int]]:
        """book() of every instrument with a book, at one instant (delisted ones left out)."""
        def read():
            return {n: (dict(b.bids), dict(b.asks), b.change_id) for n, b in self._books.items()
                    if n not in self._delisted}
        return self._call_on_loop(read, "books()")

    def book(self, instrument: str) -> tuple[dict[float, float], dict[float, float], int]:
        """(bids, asks, change_id) of the book as last sent (copies, read on the loop thread)."""
        def read():
            b = self._books.get(instrument)
            return (dict(b.bids), dict(b.asks), b.change_id) if b is not None else ({}, {}, 0)
        return self._call_on_loop(read, "book()")

    def _currency(self, underlying: str) -> _Currency:
        try:
            return self._cur[underlying.upper()]
        except KeyError:
            raise ValueError(f"underlying {underlying!r}: this simulator runs {', '.join(self._cur)}") from None

    _model = _currency

    def _models(self):
        return self._cur.values()

    # ------------------------------------------------ market

    def _reprice_all(self) -> None:
        for cur in self._cur.values():
            cur.reprice(self._model_ms)
            cur.bid_levels, cur.ask_levels = book_levels(cur.bid_coin, cur.ask_coin, self.depth)

    def _target_prices(self, instrument: str) -> tuple[list[float], list[float]]:
        hit = self._by_option.get(instrument)
        depth = self.depth
        if hit is not None:
            cur, i = hit
            return list(cur.bid_levels[i]), list(cur.ask_levels[i])
        cur = self._by_future[instrument]
        fwd = self._future_price(cur, instrument)
        tick = cur.model.future_tick_usd
        bid0 = math.floor(fwd / tick - 0.5) * tick
        bids = [round(bid0 - j * tick, 2) for j in range(depth)]
        asks = [round(bid0 + (j + 2) * tick, 2) for j in range(depth)]
        return bids, asks

    def _future_price(self, cur: _Currency, instrument: str) -> float:
        expiry = cur.future_expiry[instrument]
        if expiry == 0:
            return cur.spot * 1.0001  # a perpetual trades a hair above the index
        return float(cur.forward(self._t_years(expiry)))

    def _amount(self, instrument: str) -> float:
        # random() scaled, not randint(): this runs for every level of every message
        hit = self._by_option.get(instrument)
        if hit is not None:
            return round(hit[0].model.option_min_amount * (int(self._rng.random() * 500) + 1), 1)
        cur = self._by_future[instrument]
        return float(cur.model.future_contract_usd * (int(self._rng.random() * 5000) + 1))

    def _book_state(self, instrument: str) -> _Book:
        book = self._books.get(instrument)
        if book is None:
            book = _Book()
            bids, asks = self._target_prices(instrument)
            book.bids = {px: self._amount(instrument) for px in bids}
            book.asks = {px: self._amount(instrument) for px in asks}
            book.change_id = next(self._change_ids)
            self._books[instrument] = book
        return book

    def _snapshot_data(self, instrument: str, ts: int) -> dict:
        book = self._book_state(instrument)
        return {"type": "snapshot", "timestamp": ts, "instrument_name": instrument, "change_id": book.change_id,
                "bids": [["new", px, amt] for px, amt in sorted(book.bids.items(), reverse=True)],
                "asks": [["new", px, amt] for px, amt in sorted(book.asks.items())]}

    def _diff(self, instrument: str, book: _Book) -> tuple[list, list]:
        """Move the book to the target prices; the changed levels as [action, price, amount]."""
        step = self._by_option[instrument][0].model.option_min_amount if instrument in self._by_option else 10.0
        bids, asks = move_book(book.bids, book.asks, *self._target_prices(instrument),
                               lambda: self._amount(instrument), lambda amt: round(amt + step, 1), self._rng)
        return [[a, px, float(amt)] for a, px, amt in bids], [[a, px, float(amt)] for a, px, amt in asks]

    def _grouped_data(self, instrument: str, ts: int, depth: int) -> dict:
        """A grouped book notification: the top `depth` levels per side as [price, amount]."""
        book = self._book_state(instrument)
        return {"timestamp": ts, "instrument_name": instrument, "change_id": book.change_id,
                "bids": [[px, amt] for px, amt in sorted(book.bids.items(), reverse=True)[:depth]],
                "asks": [[px, amt] for px, amt in sorted(book.asks.items())[:depth]]}

    def _change_data(self, instrument: str, ts: int) -> Optional[dict]:
        book = self._book_state(instrument)
        if instrument in self._gap_next or "*" in self._gap_next:
            self._gap_next.discard(instrument)
            self._gap_next.discard("*")
            self._diff(instrument, book)  # a change that is never sent: subscribers see a gap
            book.change_id = next(self._change_ids)
            self._bump("gaps_injected", notify=True)
        bids, asks = self._diff(instrument, book)
        if not bids and not asks:
            return None
        prev = book.change_id
        book.change_id = next(self._change_ids)
        return {"type": "change", "timestamp": ts, "prev_change_id": prev, "instrument_name": instrument,
                "change_id": book.change_id, "bids": bids, "asks": asks}

    def _ticker_data(self, instrument: str, ts: int) -> dict:
        hit = self._by_option.get(instrument)
        book = self._books.get(instrument)
        if book is None:
            bids_t, asks_t = self._target_prices(instrument)
            best_bid, best_ask = (bids_t[0] if bids_t else 0.0), (asks_t[0] if asks_t else 0.0)
            bid_amt = ask_amt = 0.0
        else:
            best_bid = max(book.bids) if book.bids else 0.0
            best_ask = min(book.asks) if book.asks else 0.0
            bid_amt = book.bids.get(best_bid, 0.0)
            ask_amt = book.asks.get(best_ask, 0.0)
        if hit is None:
            return self._future_ticker(instrument, ts, best_bid, bid_amt, best_ask, ask_amt)
        cur, i = hit
        f = float(cur.f[i])
        k = float(cur.strike[i])
        t = float(cur.t[i])
        call = bool(cur.is_call[i])
        mark = float(cur.true_coin[i])
        bid_iv = _implied_vol(best_bid * f, f, k, t, call) if best_bid > 0 else None
        ask_iv = _implied_vol(best_ask * f, f, k, t, call) if best_ask > 0 else None
        expiry = cur.expiries[int(cur.exp_idx[i])]
        return {
            "timestamp": ts,
            "stats": {"volume_usd": 0.0, "volume": 0.0, "price_change": None, "low": None, "high": None},
            "state": "open",
            "settlement_price": round(mark, 8),
            "open_interest": cur.open_interest[i],
            "min_price": OPT_TICK_SMALL,
            "max_price": ceil_tick(mark + 0.05 + 0.1 * mark),
            "mark_price": round(mark, 8),
            "mark_iv": round(float(cur.vol[i]) * 100.0, 2),
            "last_price": None,
            "interest_rate": 0.0,
            "instrument_name": instrument,
            "index_price": round(cur.spot, 2),
            "greeks": {"vega": round(float(cur.vega_usd_pt[i]), 5), "theta": round(float(cur.theta_usd_day[i]), 5),
                       "rho": 0.0, "gamma": round(float(cur.gamma[i]), 8), "delta": round(float(cur.delta[i]), 5)},
            "estimated_delivery_price": round(cur.spot, 2),
            "bid_iv": round(bid_iv * 100.0, 2) if bid_iv is not None else 0.0,
            "best_bid_price": best_bid,
            "best_bid_amount": bid_amt,
            "best_ask_price": best_ask,
            "best_ask_amount": ask_amt,
            "ask_iv": round(ask_iv * 100.0, 2) if ask_iv is not None else (500.0 if best_ask > 0 else 0.0),
            "underlying_price": round(f, 4),
            "underlying_index": cur.underlying_index(expiry),
        }

    def _future_ticker(self, instrument: str, ts: int, best_bid: float, bid_amt: float, best_ask: float,
                       ask_amt: float) -> dict:
        cur = self._by_future[instrument]
        mark = round(self._future_price(cur, instrument), 2)
        data = {
            "timestamp": ts,
            "stats": {"volume_usd": 0.0, "volume": 0.0, "price_change": 0.0, "low": mark, "high": mark},
            "state": "open",
            "settlement_price": mark,
            "open_interest": 1_000_000.0,
            "min_price": round(mark * 0.97, 2),
            "max_price": round(mark * 1.03, 2),
            "mark_price": mark,
            "last_price": mark,
            "instrument_name": instrument,
            "index_price": round(cur.spot, 2),
            "estimated_delivery_price": round(cur.spot, 2),
            "best_bid_price": best_bid,
            "best_bid_amount": bid_amt,
            "best_ask_price": best_ask,
            "best_ask_amount": ask_amt,
        }
        if cur.future_expiry[instrument] == 0:
            data["interest_value"] = 0.0
            data["funding_8h"] = 0.0001
            data["current_funding"] = 0.0
        return data

    # ------------------------------------------------ JSON-RPC

    def _instrument_rows(self, currency: str, kind: Optional[str]) -> list:
        key = (currency, kind or "any")
        rows = self._instrument_cache.get(key)
        if rows is not None:
            return rows
        cur = self._cur[currency]
        lower = currency.lower()
        rows = []
        created = cur.created_ms - 86_400_000
        if kind in (None, "option"):
            for i, name in enumerate(cur.names):
                expiry = cur.expiries[int(cur.exp_idx[i])]
                rows.append({
                    "tick_size": OPT_TICK_SMALL, "tick_size_steps": [{"above_price": OPT_TICK_ABOVE,
                                                                      "tick_size": OPT_TICK_LARGE}],
                    "taker_commission": 0.0003, "strike": float(cur.strike[i]),
                    "settlement_period": _period(expiry, cur.created_ms), "settlement_currency": currency,
                    "rfq": False, "quote_currency": currency, "price_index": f"{lower}_usd",
                    "option_type": "call" if cur.is_call[i] else "put",
                    "min_trade_amount": cur.model.option_min_amount, "maker_commission": 0.0003, "kind": "option",
                    "is_active": True, "instrument_name": name, "instrument_id": 100_000 + i,
                    "expiration_timestamp": expiry, "creation_timestamp": created, "counter_currency": "USD",
                    "contract_size": 1.0, "block_trade_tick_size": OPT_TICK_SMALL,
                    "block_trade_min_trade_amount": 25, "block_trade_commission": 0.0003, "base_currency": currency})
        if kind in (None, "future"):
            for j, (name, expiry) in enumerate(sorted(cur.future_expiry.items(), key=lambda kv: kv[1] or 1 << 62)):
                rows.append({
                    "tick_size": cur.model.future_tick_usd, "tick_size_steps": [], "taker_commission": 0.0005,
                    "settlement_period": "perpetual" if expiry == 0 else _period(expiry, cur.created_ms),
                    "settlement_currency": currency, "rfq": False, "quote_currency": "USD",
                    "price_index": f"{lower}_usd", "min_trade_amount": cur.model.future_contract_usd,
                    "max_liquidation_commission": 0.0075, "max_leverage": 50, "maker_commission": 0.0,
                    "kind": "future", "is_active": True, "instrument_name": name, "instrument_id": 200_000 + j,
                    "future_type": "reversed", "instrument_type": "reversed",
                    "expiration_timestamp": PERPETUAL_EXPIRATION_MS if expiry == 0 else expiry,
                    "creation_timestamp": created, "counter_currency": "USD",
                    "contract_size": cur.model.future_contract_usd, "block_trade_tick_size": 0.01,
                    "block_trade_min_trade_amount": 200_000, "block_trade_commission": 0.00025,
                    "base_currency": currency})
        rows = [r for r in rows if r["instrument_name"] not in self._delisted]
        self._instrument_cache[key] = rows
        return rows

    def _valid_channel(self, ch: str) -> bool:
        parts = ch.split(".")
        if len(parts) == 3 and parts[0] in ("book", "ticker") and parts[2] in ("100ms", "agg2", "raw"):
            return (parts[1] in self._by_option or parts[1] in self._by_future) and parts[1] not in self._delisted
        if len(parts) == 5 and parts[0] == "book" and parts[2] == "none" and parts[3] in GROUPED_DEPTHS \
                and parts[4] in ("100ms", "agg2"):
            return (parts[1] in self._by_option or parts[1] in self._by_future) and parts[1] not in self._delisted
        if len(parts) == 4 and parts[:2] == ["instrument", "state"]:
            return parts[2] in ("option", "future", "any") and parts[3].upper() in self._cur
        return len(parts) == 2 and parts[0] == "deribit_price_index" and parts[1] in self._index_names

    def _handle(self, conn: _Conn, raw: Any) -> list[bytes]:
        """One request → the frames to send, in order (the response first)."""
        us_in = int(time.time() * 1_000_000)
        try:
            msg = orjson.loads(raw)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError):
            return [self._error(None, -32700, "Parse error", us_in)]
        self.counters["requests"] += 1
        req_id = msg.get("id")
        method = msg.get("method")
        params = msg.get("params") or {}
        if not isinstance(params, dict):
            return [self._error(req_id, -32602, "Invalid params", us_in, {"reason": "params must be an object"})]
        if self._rate_limit_next:
            self._rate_limit_next -= 1
            conn.close_after = (1008, "too_many_requests")  # Deribit ends the session after this error
            return [self._error(req_id, 10028, "too_many_requests", us_in)]
        after: list[bytes] = []
        if method == "public/test":
            if conn.test_outstanding:
                conn.test_outstanding = False
                waited_ms = int((time.monotonic() - conn.test_sent) * 1000)
                self.counters["test_answer_ms_max"] = max(self.counters["test_answer_ms_max"], waited_ms)
                self._bump("test_answers", notify=True)
            result: Any = {"version": VERSION}
        elif method == "public/hello":
            result = {"version": VERSION}
        elif method == "public/get_time":
            result = self.stamp_ms()
        elif method == "public/set_heartbeat":
            interval = params.get("interval")
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < self.min_heartbeat_s:
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": f"must be a number >= {self.min_heartbeat_s:g}", "param": "interval"})]
            if conn.heartbeat_task is not None:
                conn.heartbeat_task.cancel()
            conn.heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeats(conn, float(interval)))
            conn.tasks.append(conn.heartbeat_task)  # cancelled when the session ends
            result = "ok"
        elif method == "public/disable_heartbeat":
            if conn.heartbeat_task is not None:
                conn.heartbeat_task.cancel()
                conn.heartbeat_task = None
            conn.test_outstanding = False
            result = "ok"
        elif method == "public/get_instruments":
            currency = str(params.get("currency", "")).upper()
            kind = params.get("kind")
            if currency not in self._cur or kind not in (None, "option", "future"):
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": "wrong format", "param": "currency" if currency not in self._cur
                                     else "kind"})]
            result = [] if params.get("expired") is True else self._instrument_rows(currency, kind)
        elif method == "public/get_index_price":
            cur = self._index_names.get(str(params.get("index_name", "")))
            if cur is None:
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": "wrong format", "param": "index_name"})]
            result = {"index_price": round(cur.spot, 2), "estimated_delivery_price": round(cur.spot, 2)}
        elif method in ("public/subscribe", "public/unsubscribe"):
            channels = params.get("channels")
            if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": "must be a list of strings", "param": "channels"})]
            if method == "public/subscribe":
                self.counters["subscribe_calls"] += 1
                result = [c for c in dict.fromkeys(channels) if self._valid_channel(c)]
                ts = self.stamp_ms()
                for ch in result:
                    if self._subscribe(conn, ch):
                        after.extend(self._initial_frames(ch, ts))
                self._bump("subscribed", 0, notify=True)
            else:
                self.counters["unsubscribe_calls"] += 1
                result = [c for c in dict.fromkeys(channels) if c in conn.subs]
                for ch in result:
                    self._unsubscribe(conn, ch)
        elif method == "public/unsubscribe_all":
            for ch in list(conn.subs):
                self._unsubscribe(conn, ch)
            result = "ok"
        else:
            return [self._error(req_id, -32601, "Method not found", us_in)]
        us_out = int(time.time() * 1_000_000)
        resp = orjson.dumps({"jsonrpc": "2.0", "id": req_id, "result": result, "usIn": us_in, "usOut": us_out,
                             "usDiff": us_out - us_in, "testnet": False})
        return [resp, *after]

    def _error(self, req_id: Any, code: int, message: str, us_in: int, data: Optional[dict] = None) -> bytes:
        self.counters["rpc_errors"] += 1
        err: dict[str, Any] = {"message": message, "code": code}
        if data:
            err["data"] = data
        us_out = int(time.time() * 1_000_000)
        return orjson.dumps({"jsonrpc": "2.0", "id": req_id, "error": err, "usIn": us_in, "usOut": us_out,
                             "usDiff": us_out - us_in, "testnet": False})

    def _subscriptions_changed(self) -> None:
        self._sub_lists = None

    def _initial_frames(self, ch: str, ts: int) -> list[bytes]:
        kind, _, rest = ch.partition(".")
        if kind == "instrument":
            return []  # notifications only when something is listed or delisted
        if kind == "book":
            self.counters["snapshots"] += 1
            inst, depth = _book_channel(ch)
            data = self._snapshot_data(inst, ts) if depth is None else self._grouped_data(inst, ts, depth)
            return [_notification(ch, data)]
        if kind == "ticker":
            return [_notification(ch, self._ticker_data(rest.rsplit(".", 1)[0], ts))]
        cur = self._index_names[rest]
        return [_notification(ch, {"index_name": rest, "price": round(cur.spot, 2), "timestamp": ts})]

    # ------------------------------------------------ generation

    def _channel_lists(self) -> tuple[list, list, list]:
        if self._sub_lists is None:
            books, tickers, indices = [], [], []
            variants: dict[str, list[str]] = {}
            for ch in sorted(self._subs):
                if ch.startswith("instrument.state."):
                    continue  # sent on listings and expiries only
                if ch.startswith("book."):
                    # one entry per instrument: its other book channels hear the same move
                    chans = variants.setdefault(_book_channel(ch)[0], [])
                    if not chans:
                        books.append(ch)
                    chans.append(ch)
                    continue
                (tickers if ch.startswith("ticker.") else indices).append(ch)
            self._book_variants = {inst: chans for inst, chans in variants.items() if len(chans) > 1}
            self._sub_lists = (books, tickers, indices)
        return self._sub_lists

    def _message(self, ch: str, ts: int) -> Optional[bytes]:
        kind, _, rest = ch.partition(".")
        if kind == "book":
            inst, depth = _book_channel(ch)
            data = self._change_data(inst, ts)
            if data is None:
                return None
            self.counters["book_messages"] += 1
            if self._sub_lists is None:
                self._channel_lists()  # subscriptions changed: refresh the book variants
            siblings = self._book_variants.get(inst) if self._book_variants else None
            if siblings:
                for other in siblings:  # the same move, in each other book channel's form
                    if other != ch:
                        other_depth = _book_channel(other)[1]
                        self._deliver(other, _notification(other, data if other_depth is None
                                                           else self._grouped_data(inst, ts, other_depth)))
            if depth is not None:
                data = self._grouped_data(inst, ts, depth)
            if self._msg_faults:
                fault = self._take_fault(inst, "book")
                if fault is not None:
                    return self._corrupt(fault[0], fault[1], ch, data, self._books.get(inst))
        elif kind == "ticker":
            inst = rest.rsplit(".", 1)[0]
            data = self._ticker_data(inst, ts)
            self.counters["ticker_messages"] += 1
            if self._msg_faults:
                fault = self._take_fault(inst, "ticker")
                if fault is not None:
                    return self._corrupt(fault[0], fault[1], ch, data, None)
        else:
            cur = self._index_names[rest]
            data = {"index_name": rest, "price": round(cur.spot, 2), "timestamp": ts}
            self.counters["index_messages"] += 1
        return _notification(ch, data)

    async def _emit(self, n: int) -> None:
        books, tickers, indices = self._channel_lists()
        if not (books or tickers or indices):
            return
        ts = self.stamp_ms()
        rng = self._rng
        for ch in indices:
            self._deliver(ch, self._message(ch, ts))
        n -= len(indices)
        for j in range(max(n, 0)):
            books, tickers, _ = self._channel_lists()
            if books and (not tickers or rng.random() < self.book_share):
                ch = books[int(rng.random() * len(books))]
            elif tickers:
                ch = tickers[int(rng.random() * len(tickers))]
            else:
                break
            frame = self._message(ch, ts)
            if frame is not None:
                self._deliver(ch, frame)
            if j % 500 == 499:
                await asyncio.sleep(0)  # let requests and heartbeats through during big bursts

    def _before_tick(self) -> bool:
        while self._schedule and self._schedule[0][0] <= self._ticks:
            _, kind, inst, params = self._schedule.pop(0)
            self._inject(kind, inst, dict(params))
        return not self._paused

    def _inject(self, kind: str, instrument: Optional[str], params: dict) -> Any:
        if kind == "malformed" and "variant" not in params:
            params = {**params, "variant": self._fault_rng.choice(MALFORMED_VARIANTS)}
        self._bump("faults_injected")
        self.counters["faults." + kind] += 1
        self.fault_log.append({"tick": self._ticks, "kind": kind, "instrument": instrument, **params})
        if kind == "gap":
            self._gap_next.add(instrument or "*")
            if instrument is not None:
                self._force_message(instrument, "book")
        elif kind == "drop":
            self._abort_all()
        elif kind == "rate_limit":
            self._rate_limit_next += 1
        elif kind == "stall":
            until = time.monotonic() + float(params.get("seconds", 5.0))
            for conn in self._conns:
                conn.stalled_until = until
        elif kind == "heartbeat_stop":
            for conn in self._conns:
                conn.heartbeats_off = True
        elif kind in ("malformed", "oversized", "crossed", "bad_price"):
            channel = params.get("channel", "book")
            self._msg_faults.setdefault(instrument or "*", []).append((kind, {**params, "channel": channel}))
            if instrument is not None:
                self._force_message(instrument, channel)
        elif kind == "listing":
            return self._list_new(params)
        elif kind == "expire":
            return self._expire(instrument, params)
        self._bump("faults_applied", 0, notify=True)
        return None

    def _force_message(self, instrument: str, channel: str) -> None:
        """Send the next message of `instrument` now (so a targeted fault shows at once)."""
        if self._loop is None:
            return
        prefix = f"{channel}.{instrument}."
        for ch in list(self._subs):
            if ch.startswith(prefix):
                frame = self._message(ch, self.stamp_ms())
                if frame is not None:
                    self._deliver(ch, frame)

    def _take_fault(self, instrument: str, channel: str) -> Optional[tuple[str, dict]]:
        for key in (instrument, "*"):
            queue = self._msg_faults.get(key)
            if queue:
                for i, (kind, params) in enumerate(queue):
                    if params["channel"] == channel:
                        del queue[i]
                        if not queue:
                            del self._msg_faults[key]
                        return kind, params
        return None

    def _corrupt(self, kind: str, params: dict, ch: str, data: dict, book: Optional[_Book]) -> bytes:
        """The frame of `data` on `ch`, broken the way a faulty exchange breaks it."""
        self._bump("faults_applied", notify=True)
        sentinel = None
        grouped = ch.startswith("book.") and _book_channel(ch)[1] is not None  # levels [price, amount]
        if kind == "crossed" and book is not None and book.asks:
            best_ask = min(book.asks)
            crossing = round(best_ask + OPT_TICK_LARGE, 4)
            data["bids"] = list(data["bids"]) + [[crossing, 1.0] if grouped else ["new", crossing, 1.0]]
        elif kind == "bad_price":
            value = params.get("value", -0.001)
            if value in ("NaN", "Infinity", "-Infinity"):  # not JSON; some encoders write them anyway
                sentinel, value = value, 1234567.8912345
            if ch.startswith("book."):
                side = "bids" if data["bids"] else "asks"
                level = list(data[side][0])
                level[0 if grouped else 1] = value
                data[side] = [level] + list(data[side][1:])
            else:
                data[params.get("field", "best_bid_price")] = value
        elif kind == "oversized":
            data["padding"] = "x" * int(params.get("bytes", 2 << 20))
        elif kind == "malformed" and params["variant"] == "wrong_type":
            data["change_id" if ch.startswith("book.") else "timestamp"] = str(data.get("change_id", 0))
        elif kind == "malformed" and params["variant"] == "nan_literal":
            sentinel = "NaN"
            data["bids" if ch.startswith("book.") and data.get("bids") else "timestamp"] = 1234567.8912345
        frame = _notification(ch, data)
        if sentinel is not None:
            frame = frame.replace(b"1234567.8912345", sentinel.encode())
        if kind == "malformed":
            variant = params["variant"]
            if variant == "truncated":
                frame = frame[: len(frame) // 2]
            elif variant == "garbage":
                frame = bytes(self._fault_rng.randrange(256) for _ in range(64))
            elif variant == "not_object":
                frame = b"[" + frame + b"]"
        return frame

    def _list_new(self, params: dict) -> list[str]:
        cur = self._currency(params.get("underlying", next(iter(self._cur))))
        n = int(params.get("n_strikes", 2 if params.get("new_expiry") or "expiry_ms" in params else 1))
        if params.get("new_expiry") or "expiry_ms" in params:
            # expiry_ms: any time, e.g. seconds ahead, for tests of expiry handling (not 08:00)
            expiry = int(params.get("expiry_ms", max(cur.expiries) + 7 * 86_400_000))
            t = max((expiry - self._model_ms) / YEAR_MS, 1e-6)
            fwd = float(cur.forward(t))
            step = _nice_step(fwd * 0.05, cur.model.strike_step_min)
            first = round(fwd / step) * step - step * ((n - 1) // 2)
            strikes = [first + i * step for i in range(n)]
        else:
            expiry = cur.expiries[0]
            ks = cur.strikes_by_expiry[expiry]
            step = ks[1] - ks[0] if len(ks) > 1 else cur.model.strike_step_min
            strikes = [ks[-1] + step * (i + 1) for i in range(n)]
        new = cur.add_options(expiry, strikes)
        for name in new:
            self._by_option[name] = (cur, cur.index_of[name])
        self._instrument_cache.clear()
        self._reprice_all()
        self._state_notify(cur.name, "option", new, "created")
        self._bump("faults_applied", notify=True)
        return new

    def _expire(self, instrument: Optional[str], params: dict) -> list[str]:
        if instrument is not None:
            names = [instrument]
            cur = self._by_option[instrument][0] if instrument in self._by_option else self._by_future[instrument]
        else:
            cur = self._currency(params.get("underlying", next(iter(self._cur))))
            expiry = int(params.get("expiry_ms", cur.expiries[0]))
            names = [n for n in cur.names if cur.expiries[int(cur.exp_idx[cur.index_of[n]])] == expiry]
            if expiry in cur.futures:
                names.append(cur.futures[expiry])
        names = [n for n in names if n not in self._delisted]
        self._delisted.update(names)
        self._instrument_cache.clear()
        for kind in ("option", "future"):
            gone = [n for n in names if (n in self._by_option) == (kind == "option")]
            if gone:
                self._state_notify(cur.name, kind, gone, "settled")
        ts = self.stamp_ms()
        late = int(params.get("late", 1))
        for name in names:
            for ch in [c for c in self._subs if c.split(".")[1:2] == [name]]:
                for _ in range(late):  # what is already in flight still arrives after the notice
                    frame = self._message(ch, ts)
                    if frame is not None:
                        self._deliver(ch, frame)
                        self.counters["late_frames_sent"] += 1
                for conn in list(self._subs.get(ch, ())):
                    self._unsubscribe(conn, ch)
        self._bump("faults_applied", notify=True)
        return names

    def _state_notify(self, currency: str, kind: str, names: list[str], state: str) -> None:
        ts = self.stamp_ms()
        for ch in (f"instrument.state.{kind}.{currency.lower()}", f"instrument.state.any.{currency.lower()}"):
            for name in names:
                self._deliver(ch, _notification(ch, {"timestamp": ts, "state": state, "instrument_name": name}))
                self.counters["state_notifications"] += len(self._subs.get(ch, ()))

    # ------------------------------------------------ connections

    async def _heartbeats(self, conn: _Conn, interval_s: float) -> None:
        hb = orjson.dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "heartbeat"}})
        test = orjson.dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}})
        while not conn.closed:
            await asyncio.sleep(interval_s / 2)
            if conn.heartbeats_off:
                return  # a server whose heartbeat machinery died: the client must notice
            if conn.stalled_until > time.monotonic():
                continue  # stalled: nothing goes out, nothing is expected
            self._send(conn, hb)
            self.counters["heartbeats_sent"] += 1
            await asyncio.sleep(interval_s / 2)
            if conn.heartbeats_off:
                return
            if conn.stalled_until > time.monotonic():
                continue
            if conn.test_outstanding:
                # Like the real server: an unanswered test_request ends the session.
                self._bump("heartbeat_closes", notify=True)
                self._close(conn, 1000, "test_request not answered with public/test")
                return
            conn.test_outstanding = True
            conn.test_sent = time.monotonic()
            self._send(conn, test)
            self._bump("test_requests_sent", notify=True)

    def _new_conn(self, ws) -> _Conn:
        return _Conn(ws, self.conn_queue_max)

    # ------------------------------------------------ lifecycle (start, stop: SimServer)

    def _serve_options(self) -> dict:
        return {"ping_interval": 20, "ping_timeout": 20}

    def _listening(self) -> None:
        self.url = f"ws://{self.host}:{self.port}/ws/api/v2"

    # ------------------------------------------------ offline frames (no socket)
    # For recorded workloads (bench/workload.py) and replay files: the same frames a
    # subscriber would read, produced by the same code, at a timestamp the caller chooses.
    # Only for a simulator that is not started (like advance()).

    def offline_instruments_frame(self, currency: str, kind: Optional[str] = None, req_id: int = 1,
                                  ts_ms: int = 0) -> bytes:
        """The public/get_instruments response frame for `currency` (kind None = options and futures)."""
        self._offline_only("offline_instruments_frame")
        currency = currency.upper()
        if currency not in self._cur or kind not in (None, "option", "future"):
            raise ValueError(f"offline_instruments_frame({currency!r}, kind={kind!r}): currency must be one of "
                             f"{', '.join(self._cur)} and kind None, 'option' or 'future'")
        us = ts_ms * 1000
        return orjson.dumps({"jsonrpc": "2.0", "id": req_id, "result": self._instrument_rows(currency, kind),
                             "usIn": us, "usOut": us, "usDiff": 0, "testnet": False})

    def offline_initial_frame(self, channel: str, ts_ms: int) -> bytes:
        """What a new subscriber of `channel` reads first: book snapshot, ticker or index price."""
        self._offline_check(channel, "offline_initial_frame")
        return self._initial_frames(channel, ts_ms)[0]

    def offline_frame(self, channel: str, ts_ms: int) -> Optional[bytes]:
        """The next notification on `channel` at the current market state: a book change against
        what was last sent (None when nothing differs), a ticker, or an index price."""
        self._offline_check(channel, "offline_frame")
        return self._message(channel, ts_ms)

    def offline_shock(self, underlying: str, rel_move: float) -> None:
        """Move the spot of `underlying` by `rel_move` (0.01 = +1 %) at once and reprice every option."""
        self._offline_only("offline_shock")
        if not -0.5 < rel_move < 1.0:
            raise ValueError(f"offline_shock(rel_move={rel_move}): use a relative move in (-0.5, 1.0), e.g. 0.01")
        self._currency(underlying).spot *= 1.0 + rel_move
        self._reprice_all()

    def _offline_only(self, what: str) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{what}() is for a simulator that is not started; a started one sends its own frames")

    def _offline_check(self, channel: str, what: str) -> None:
        self._offline_only(what)
        if not self._valid_channel(channel):
            raise ValueError(f"{what}({channel!r}): not a channel of this simulator; use book.<instrument>.100ms, "
                             "book.<instrument>.none.<1|10|20>.100ms, ticker.<instrument>.100ms or "
                             "deribit_price_index.<btc_usd|eth_usd>")


def _period(expiry_ms: int, now_ms: int) -> str:
    days = (expiry_ms - now_ms) / 86_400_000
    d = datetime.fromtimestamp(expiry_ms / 1000.0, tz=timezone.utc)
    if days <= 1.5 and d.weekday() != 4:
        return "day"
    if _at_0800(_last_friday(d.year, d.month)) == expiry_ms:
        return "month"
    return "week"


MALFORMED_VARIANTS = ("truncated", "nan_literal", "garbage", "not_object", "wrong_type")
GROUPED_DEPTHS = ("1", "10", "20")  # Deribit's depths for book.{instrument}.{group}.{depth}.{interval}


def _book_channel(channel: str) -> tuple[str, Optional[int]]:
    """book.X.100ms → (X, None); book.X.none.10.100ms → (X, 10). Names contain no dots."""
    parts = channel.split(".")
    return parts[1], (int(parts[3]) if len(parts) == 5 else None)


def _notification(channel: str, data: dict) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}})


# ---------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`volgraph sim`: run the simulator until interrupted; prints its URL."""
    p = argparse.ArgumentParser(prog="volgraph sim", description="Run a local Deribit-like exchange simulator.")
    add_common_args(p, "messages per second across subscribed channels")
    p.add_argument("--currencies", default="BTC,ETH", help="comma-separated, e.g. BTC,ETH")
    add_size_args(p, SCALES)
    p.add_argument("--min-heartbeat", type=float, default=10.0, help="smallest set_heartbeat interval accepted (s)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--faults", default=None,
                   help='a fault schedule, JSON or @file: [{"at_s": 5, "kind": "drop"}, {"at_s": 8, '
                        '"kind": "gap", "instrument": "BTC-27DEC24-100000-C"}, {"at_s": 9, "kind": "stall", '
                        '"seconds": 3}]; kinds: ' + ", ".join(Simulator.FAULTS))
    args = p.parse_args(argv)
    faults: list = []
    if args.faults:
        text = open(args.faults[1:]).read() if args.faults.startswith("@") else args.faults
        try:
            faults = orjson.loads(text)
            if not isinstance(faults, list) or not all(isinstance(f, dict) and "kind" in f for f in faults):
                raise ValueError("expected a list of objects with a 'kind'")
        except ValueError as exc:
            p.error(f"--faults {args.faults[:80]!r}: {exc}; e.g. '[{{\"at_s\": 5, \"kind\": \"drop\"}}]'")
    sim = Simulator(host=args.host, port=args.port, seed=args.seed, rate=args.rate,
                    currencies=[c.strip() for c in args.currencies.split(",") if c.strip()], scale=args.scale,
                    n_expiries=args.n_expiries, n_strikes=args.n_strikes, min_heartbeat_s=args.min_heartbeat,
                    faults=faults)
    n_opts = sum(len(c.names) for c in sim._cur.values())
    return serve_until_stopped(sim, args.seconds, lambda url: f"volgraph sim: {url}  ({n_opts} options, seed "
                               f"{args.seed}, {args.rate:g} msg/s)", "volgraph sim")


if __name__ == "__main__":
    raise SystemExit(main())
