"""Chain state per (underlying, expiry): quotes in, forward and implied vols, SVI fits out.

Keyed by `chain_key(underlying, expiry_ms)`. Items only mark strikes dirty; once per epoch
(`epoch_ms`) the step solves the dirty strikes' IVs in one vectorised call (all strikes
when the forward moved), and refits SVI when the smile changed, at most once per
`fit_interval_ms`, warm-started from the last fit and within a per-worker fit budget.

State logic only: no I/O, no sockets, no SQL. Time is injected (`now_ms`) so tests drive
epochs without sleeping.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional

import numpy as np

from operators import forward as fwd
from operators import iv, small_moves, svi
from operators.events import ChainUpdate, FuturePrice, Quote, SmileFit, Ticker

MS_PER_YEAR = 365.0 * 86_400_000.0  # ACT/365, to the millisecond


def now_wall_ms() -> int:
    return int(time.time() * 1000)


def t_years(expiry_ms: int, ts_ms: int) -> float:
    return (expiry_ms - ts_ms) / MS_PER_YEAR


@dataclass
class FitBudget:
    """Fits allowed per epoch on one worker, shared by all its chain keys."""

    per_epoch: int
    epoch: int = -1
    used: int = 0

    def take(self, epoch: int) -> bool:
        if epoch != self.epoch:
            self.epoch, self.used = epoch, 0
        if self.used >= self.per_epoch:
            return False
        self.used += 1
        return True


@dataclass
class ChainState:
    """Everything needed to resume an expiry: current quotes, forward inputs, last fit."""

    venue: str
    underlying: str
    expiry_ms: int
    strikes: list[float] = field(default_factory=list)
    slot: dict[float, int] = field(default_factory=dict)
    # coin prices per slot; NaN = no quote / stale
    call_bid: list[float] = field(default_factory=list)
    call_ask: list[float] = field(default_factory=list)
    put_bid: list[float] = field(default_factory=list)
    put_ask: list[float] = field(default_factory=list)
    dirty: set[int] = field(default_factory=set)
    future_bid: Optional[float] = None
    future_ask: Optional[float] = None
    underlying_px: Optional[float] = None
    forward: Optional[float] = None
    forward_method: str = ""
    forward_dirty: bool = False
    ts_exchange_ms: int = 0
    last_fit: Optional[SmileFit] = None
    last_fit_ms: int = 0
    smile_changed: bool = False
    # Solve state per slot, in normalised Black space (see operators/small_moves.py):
    # side: the OTM option used (True = call); x0: ln(F/K) at the last exact solve;
    # s0/s1/s2: total std σ√T there and its first/second x-derivatives, [bid, ask];
    # s: the published total std (NaN = no vol). Published σ = s/√T, exact in T.
    side: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    x0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s0: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s1: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s2: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))

    def slot_of(self, strike: float) -> int:
        idx = self.slot.get(strike)
        if idx is None:
            idx = self.slot[strike] = len(self.strikes)
            self.strikes.append(strike)
            for arr in (self.call_bid, self.call_ask, self.put_bid, self.put_ask):
                arr.append(math.nan)
            self.side = np.append(self.side, False)
            self.x0 = np.append(self.x0, math.nan)
            nan2 = np.full((2, 1), math.nan)
            self.s0, self.s1, self.s2, self.s = (np.concatenate([a, nan2], axis=1)
                                                 for a in (self.s0, self.s1, self.s2, self.s))
        return idx

    def prices_coin(self, side: np.ndarray) -> np.ndarray:
        """[bid, ask] coin prices of the OTM option per slot (NaN = no quote)."""
        return np.stack([np.where(side, self.call_bid, self.put_bid), np.where(side, self.call_ask, self.put_ask)])


def _best(levels) -> float:
    return levels[0][0] if levels else math.nan


class ChainLogic:
    """The per-expiry logic; `on_items` marks dirty, `on_epoch` recomputes."""

    def __init__(self, state: ChainState, *, epoch_ms: int, fit_interval_ms: int, min_quotes: int,
                 max_rel_spread: float, budget: FitBudget, now_ms: Callable[[], int] = now_wall_ms,
                 skip_bp: float = 0.25, approx_bp: float = 50.0, taylor2_bp: float = 2.0,
                 change_bp: float = 0.05):
        self.state = state
        self.epoch_ms = epoch_ms
        self.fit_interval_ms = fit_interval_ms
        self.min_quotes = min_quotes
        self.max_rel_spread = max_rel_spread
        self.budget = budget
        self.now_ms = now_ms
        self.skip_bp, self.approx_bp, self.taylor2_bp = skip_bp, approx_bp, taylor2_bp
        self.change_bp = change_bp  # a published vol moving less than this does not dirty the fit
        self.counters = {"items": 0, "iv_solves": 0, "iv_full": 0, "iv_taylor": 0, "iv_skipped": 0,
                         "fits": 0, "fits_deferred": 0}

    # ------------------------------------------------------------------ items: mark dirty
    def on_items(self, items: Iterable) -> None:
        s = self.state
        for item in items:
            self.counters["items"] += 1
            if isinstance(item, Quote):
                idx = s.slot_of(item.strike)
                bid = math.nan if item.stale else _best(item.bids)
                ask = math.nan if item.stale else _best(item.asks)
                if item.option_type == "C":
                    s.call_bid[idx], s.call_ask[idx] = bid, ask
                else:
                    s.put_bid[idx], s.put_ask[idx] = bid, ask
                s.dirty.add(idx)
                s.ts_exchange_ms = max(s.ts_exchange_ms, item.ts_exchange_ms)
            elif isinstance(item, Ticker):
                if item.underlying_px is not None and item.underlying_px != s.underlying_px:
                    s.underlying_px = item.underlying_px
                    s.forward_dirty = True
                s.ts_exchange_ms = max(s.ts_exchange_ms, item.ts_exchange_ms)
            elif isinstance(item, FuturePrice):
                if (item.bid, item.ask) != (s.future_bid, s.future_ask):
                    s.future_bid, s.future_ask = item.bid, item.ask
                    s.forward_dirty = True
                s.ts_exchange_ms = max(s.ts_exchange_ms, item.ts_exchange_ms)

    def pending(self) -> bool:
        s = self.state
        return bool(s.dirty) or s.forward_dirty or s.smile_changed

    def next_epoch_ms(self) -> int:
        now = self.now_ms()
        return (now // self.epoch_ms + 1) * self.epoch_ms

    def expired(self) -> bool:
        return self.now_ms() >= self.state.expiry_ms

    # ------------------------------------------------------------------ epoch: recompute
    def on_epoch(self, flush: bool = False) -> list:
        """Recompute what is dirty; returns [(SmileFit, ChainUpdate)] when a fit ran.

        flush=True (end of a finite input) fits an owed smile regardless of interval and budget.
        """
        s = self.state
        now = self.now_ms()
        epoch = now // self.epoch_ms
        ts = s.ts_exchange_ms or now
        t = t_years(s.expiry_ms, ts)
        if t <= 0 or not s.strikes:
            s.dirty.clear()
            return []
        if s.forward_dirty or s.forward is None or s.dirty:
            self._update_forward()
        if s.forward is None:
            return []
        if s.dirty or s.forward_dirty:
            self._solve(t)
            s.dirty.clear()
            s.forward_dirty = False
        if not s.smile_changed:
            return []
        if flush:
            return self._fit(epoch, ts, now, t)
        if now - s.last_fit_ms < self.fit_interval_ms:
            return []
        if not self.budget.take(epoch):
            self.counters["fits_deferred"] += 1
            return []
        return self._fit(epoch, ts, now, t)

    def _update_forward(self) -> None:
        s = self.state
        est = fwd.estimate_forward(
            np.asarray(s.strikes), np.asarray(s.call_bid), np.asarray(s.call_ask),
            np.asarray(s.put_bid), np.asarray(s.put_ask),
            future_bid=s.future_bid, future_ask=s.future_ask, underlying_px=s.underlying_px,
            prices_in_coin=True)
        if est is None or not math.isfinite(est.forward) or est.forward <= 0:
            return
        if s.forward is None or abs(est.forward - s.forward) > 1e-12 * s.forward:
            s.forward = float(est.forward)
            s.forward_dirty = True
        s.forward_method = est.method

    def _solve(self, t: float) -> None:
        """Bring every slot's published vol to within 1 bp of an exact solve.

        Dirty quotes, side flips (the forward crossed the strike) and unsolved slots get a
        full solve; after a forward move the others skip or take a Taylor step from their
        last exact point when the move is small enough (operators/small_moves.py).
        """
        s = self.state
        n = len(s.strikes)
        strikes = np.asarray(s.strikes)
        side = strikes >= s.forward
        x = np.log(s.forward / strikes)
        full = np.zeros(n, bool)
        full[list(s.dirty)] = True
        full |= (side != s.side) | ~np.isfinite(s.x0)
        old = s.s.copy()
        prices = s.prices_coin(side)
        # every slot not solved now is re-planned from its exact point (x back at x0 gives s0)
        moved = ~full
        if moved.any():
            sqrt_t = math.sqrt(t)
            dx = x[moved] - s.x0[moved]
            plan = []
            for j in (0, 1):
                action, ds = small_moves.plan_moves(dx, s.s1[j, moved], s.s2[j, moved], sqrt_t,
                                                    self.skip_bp, self.approx_bp, self.taylor2_bp)
                # a put's coin price must stay below K/F (its upper bound) for a vol to exist
                bound_ok = side[moved] | (prices[j, moved] < strikes[moved] / s.forward)
                has_vol = np.isfinite(s.s0[j, moved])
                action = np.where(has_vol & bound_ok, action, small_moves.FULL)
                plan.append((action, ds))
            needs_full = (plan[0][0] == small_moves.FULL) | (plan[1][0] == small_moves.FULL)
            idx = np.flatnonzero(moved)
            keep = idx[~needs_full]
            for j in (0, 1):
                action, ds = plan[j]
                s.s[j, keep] = s.s0[j, keep] + ds[~needs_full]
                self.counters["iv_skipped"] += int((action[~needs_full] == small_moves.SKIP).sum())
                self.counters["iv_taylor"] += int((action[~needs_full] == small_moves.TAYLOR).sum())
            full[idx[needs_full]] = True
        sel = np.flatnonzero(full)
        if sel.size:
            k = strikes[sel]
            vols = iv.implied_vol_coin(prices[:, sel].reshape(-1), s.forward, np.concatenate([k, k]), t,
                                       np.concatenate([side[sel], side[sel]])).reshape(2, -1)
            total_std = vols * math.sqrt(t)
            s.side[sel] = side[sel]
            s.x0[sel] = x[sel]
            s.s0[:, sel] = s.s[:, sel] = total_std
            for j in (0, 1):
                s.s1[j, sel], s.s2[j, sel] = small_moves.s_derivatives(x[sel], total_std[j], side[sel])
            self.counters["iv_full"] += 2 * sel.size
            self.counters["iv_solves"] += 2 * sel.size
        with np.errstate(invalid="ignore"):
            delta_bp = np.abs(s.s - old) / math.sqrt(t) * 1e4
        if np.any(delta_bp > self.change_bp) or np.any(np.isnan(s.s) != np.isnan(old)):
            s.smile_changed = True

    def published_vols(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(bid_iv, ask_iv) per slot as published now: decimals, NaN = none."""
        sqrt_t = math.sqrt(t)
        return self.state.s[0] / sqrt_t, self.state.s[1] / sqrt_t

    def _fit(self, epoch: int, ts: int, now: int, t: float) -> list:
        s = self.state
        strikes = np.asarray(s.strikes)
        bid_iv, ask_iv = self.published_vols(t)
        two_sided = np.isfinite(bid_iv) & np.isfinite(ask_iv) & (ask_iv >= bid_iv)
        mid = 0.5 * (bid_iv + ask_iv)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_spread = (ask_iv - bid_iv) / mid
        usable = two_sided & (rel_spread <= self.max_rel_spread)
        s.smile_changed = False
        if usable.sum() < self.min_quotes:
            return []
        order = np.argsort(strikes[usable])
        k_strikes = strikes[usable][order]
        started = time.perf_counter()
        prev = None
        if s.last_fit is not None:
            lf = s.last_fit
            prev = (lf.a, lf.b, lf.rho, lf.m, lf.sigma)
        fit = svi.fit_slice(k_strikes, s.forward, t, bid_iv[usable][order], ask_iv[usable][order], prev=prev)
        fit_ms = (time.perf_counter() - started) * 1000.0
        if fit is None:
            return []
        self.counters["fits"] += 1
        a, b, rho, m, sigma = (float(x) for x in fit.params)
        smile = SmileFit(
            venue=s.venue, underlying=s.underlying, expiry_ms=s.expiry_ms, epoch=epoch,
            ts_exchange_ms=ts, ts_emit_ms=now, t_years=t, forward=s.forward,
            a=a, b=b, rho=rho, m=m, sigma=sigma, rmse_vol_pts=_finite(fit.rmse_vol_pts),
            n_quotes=int(usable.sum()), butterfly_ok=bool(fit.butterfly_ok), min_g=_finite(fit.min_g),
            fit_ms=fit_ms, inside_band_frac=_opt(fit.inside_band_frac), warm=prev is not None)
        s.last_fit, s.last_fit_ms = smile, now
        chain = ChainUpdate(
            venue=s.venue, underlying=s.underlying, expiry_ms=s.expiry_ms, epoch=epoch,
            ts_exchange_ms=ts, ts_emit_ms=now, t_years=t, forward=s.forward,
            forward_method=s.forward_method, strikes=tuple(float(x) for x in k_strikes),
            bid_iv=tuple(_opt(x) for x in bid_iv[usable][order]),
            ask_iv=tuple(_opt(x) for x in ask_iv[usable][order]),
            mid_iv=tuple(_opt(x) for x in mid[usable][order]))
        return [(smile, chain)]


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _opt(x) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else -1.0


def epoch_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)
