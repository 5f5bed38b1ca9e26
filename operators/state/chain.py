"""Chain state per (underlying, expiry): quotes in, forward and implied vols, SVI fits out.

Keyed by `chain_key(venue, underlying, expiry_ms)`. Items only mark strikes dirty; once per epoch
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
from typing import Callable, Iterable, Optional

import numpy as np

from operators.kernels import forward as fwd
from operators.kernels import iv, small_moves, svi
from operators.state.book import OrderBook
from operators.events import (BookUpdate, ChainUpdate, FeedError, FuturePrice, IndexPrice, Instrument, SmileFit,
                              Ticker, chain_key)

MS_PER_YEAR = 365.0 * 86_400_000.0  # ACT/365, to the millisecond


def warm_up() -> None:
    """Compile (or load from the numba cache) every kernel an epoch runs, before market data:
    a JIT compile holds the GIL for long (the feed's heartbeats must not wait on it)."""
    from operators.kernels import analytics

    iv.warm_up()
    small_moves.warm_up()
    svi.warm_up()
    analytics.warm_up()


def now_wall_ms() -> int:
    return int(time.time() * 1000)


def t_years(expiry_ms: int, ts_ms: int) -> float:
    return (expiry_ms - ts_ms) / MS_PER_YEAR


class FitBudget:
    """Fits allowed per epoch on one worker, shared by all its chain keys, stalest first.

    A key asking for a fit registers when its fit became owed; within an epoch a key is
    only granted a fit when fewer keys that have waited longer are still waiting than
    there are fits left, so no expiry starves: with K keys owed fits and B fits per epoch,
    every key is fitted within ceil(K / B) epochs of asking.
    """

    def __init__(self, per_epoch: int):
        self.per_epoch = per_epoch
        self.epoch = -1
        self.used = 0
        self.waiting: dict[str, int] = {}  # key → ms its fit became owed

    def take(self, epoch: int, key: str = "", owed_since_ms: int = 0) -> bool:
        if epoch != self.epoch:
            self.epoch, self.used = epoch, 0
        since = self.waiting.setdefault(key, owed_since_ms)
        left = self.per_epoch - self.used
        if left <= 0:
            return False
        older = sum(1 for k, t in self.waiting.items() if (t, k) < (since, key))
        if older >= left:
            return False
        self.used += 1
        del self.waiting[key]
        return True

    def forget(self, key: str) -> None:
        self.waiting.pop(key, None)


@dataclass
class ChainState:
    """Everything needed to resume an expiry: books, forward inputs, solve state, last fit."""

    venue: str
    underlying: str
    expiry_ms: int
    strikes: list[float] = field(default_factory=list)
    strike_arr: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the same, for the kernels
    slot: dict[float, int] = field(default_factory=dict)
    # option instrument → (slot, is_call); its L2 book. A consolidated chain holds the same
    # (strike, type) from several venues: `legs` lists them, and the best fresh quote wins.
    options: dict[str, tuple[int, bool]] = field(default_factory=dict)
    books: dict[str, OrderBook] = field(default_factory=dict)
    legs: dict[tuple[int, bool], list[str]] = field(default_factory=dict)
    venue_seen_ms: dict[str, int] = field(default_factory=dict)  # last event per venue (freshness)
    stale_venues: frozenset = frozenset()
    # venue giving the best bid / ask per slot, calls and puts ("" = none)
    call_bid_venue: list[str] = field(default_factory=list)
    call_ask_venue: list[str] = field(default_factory=list)
    put_bid_venue: list[str] = field(default_factory=list)
    put_ask_venue: list[str] = field(default_factory=list)
    # best coin prices per slot; NaN = no quote / stale
    call_bid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    call_ask: np.ndarray = field(default_factory=lambda: np.zeros(0))
    put_bid: np.ndarray = field(default_factory=lambda: np.zeros(0))
    put_ask: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dirty: set[int] = field(default_factory=set)
    future_bid: Optional[float] = None
    future_ask: Optional[float] = None
    underlying_px: Optional[float] = None
    index_px: Optional[float] = None
    forward: Optional[float] = None
    forward_method: str = ""
    forward_dirty: bool = False
    solved_forward: Optional[float] = None  # the forward of the last _solve
    ts_exchange_ms: int = 0
    last_fit: Optional[SmileFit] = None
    last_fit_ms: int = 0
    smile_changed: bool = False
    fit_owed_since_ms: int = 0
    moving_until_ms: int = 0  # a market move lifted the fit interval until then
    # Solve state per slot, in normalised Black space (see operators/kernels/small_moves.py):
    # side: the OTM option used (True = call); x0: ln(F/K) at the last exact solve;
    # s0/s1/s2: total std σ√T there and its first/second x-derivatives, [bid, ask];
    # s: the published total std (NaN = no vol). Published σ = s/√T, exact in T.
    side: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    x0: np.ndarray = field(default_factory=lambda: np.zeros(0))
    s0: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s1: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s2: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    s_at_fit: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))  # published s at the last fit

    def slot_of(self, strike: float) -> int:
        idx = self.slot.get(strike)
        if idx is None:
            idx = self.slot[strike] = len(self.strikes)
            self.strikes.append(strike)
            self.strike_arr = np.append(self.strike_arr, strike)
            self.call_bid, self.call_ask, self.put_bid, self.put_ask = (
                np.append(a, math.nan) for a in (self.call_bid, self.call_ask, self.put_bid, self.put_ask))
            for arr in (self.call_bid_venue, self.call_ask_venue, self.put_bid_venue, self.put_ask_venue):
                arr.append("")
            self.side = np.append(self.side, False)
            self.x0 = np.append(self.x0, math.nan)
            nan2 = np.full((2, 1), math.nan)
            self.s0, self.s1, self.s2, self.s = (np.concatenate([a, nan2], axis=1)
                                                 for a in (self.s0, self.s1, self.s2, self.s))
        return idx

    def prices_coin(self, side: np.ndarray) -> np.ndarray:
        """[bid, ask] coin prices of the OTM option per slot (NaN = no quote)."""
        return np.stack([np.where(side, self.call_bid, self.put_bid), np.where(side, self.call_ask, self.put_ask)])




class ChainLogic:
    """The per-expiry logic; `on_items` marks dirty, `on_epoch` recomputes."""

    def __init__(self, state: ChainState, *, epoch_ms: int, fit_interval_ms: int, min_quotes: int,
                 max_rel_spread: float, budget: FitBudget, now_ms: Callable[[], int], skip_bp: float,
                 approx_bp: float, taylor2_bp: float, change_bp: float, fit_change_bp: float,
                 refit_forward_bp: float, audit_every: int, venue_stale_ms: int):
        """Every setting is graph.toml's ([runtime], [chain], [consolidation]);
        flows.steps.chain_settings reads them — no default is repeated here."""
        self.state = state
        self.key = chain_key(state.venue, state.underlying, state.expiry_ms)
        self.epoch_ms = epoch_ms
        self.fit_interval_ms = fit_interval_ms
        self.min_quotes = min_quotes
        self.max_rel_spread = max_rel_spread
        self.budget = budget
        self.now_ms = now_ms
        self.skip_bp, self.approx_bp, self.taylor2_bp = skip_bp, approx_bp, taylor2_bp
        self.change_bp = change_bp  # a published vol moving less than this is not a change
        self.fit_change_bp = fit_change_bp  # the smile must move this much (max over strikes) to refit
        self.refit_forward_bp = refit_forward_bp  # a market move this large lifts the fit interval
        self.audit_every = audit_every  # every N epochs compare published vols to an exact solve
        self.venue_stale_ms = venue_stale_ms
        self.errors: list[FeedError] = []
        self._solo: Optional[dict[str, str]] = None  # see _solo_legs; rebuilt when options are added
        self.epochs = 0
        self.counters = {"items": 0, "dirty": 0, "iv_solves": 0, "iv_full": 0, "iv_taylor": 0, "iv_skipped": 0,
                         "fits": 0, "fits_deferred": 0, "epoch_us": 0, "audit_max_err_bp": 0.0}

    # ------------------------------------------------------------------ items: mark dirty
    def on_items(self, items: Iterable) -> None:
        """Apply events to the books and forward inputs; only marks what is dirty."""
        s = self.state
        options, books, seen, requote = s.options, s.books, s.venue_seen_ms, self._requote
        solo = self._solo if self._solo is not None else self._solo_legs()
        n = 0
        for item in items:
            n += 1
            kind = type(item)
            if kind is BookUpdate:  # ~90 % of the traffic: keep this branch lean
                name = item.instrument
                entry = options.get(name)
                if entry is None:
                    self.errors.append(FeedError(item.venue, "unknown_instrument",
                                                 "book update before the instrument was listed",
                                                 item.ts_recv_ms, name))
                    continue
                book = books[name]
                top = (book.best_bid, book.best_ask, book.stale)
                error = book.apply(item)
                if error is not None:
                    self.errors.append(error)
                # most changes are below the top of the book: nothing to requote (an unchanged
                # top holds the same float objects, so even an empty side compares equal)
                if (book.best_bid, book.best_ask, book.stale) != top:
                    venue = solo.get(name)
                    if venue is None or s.stale_venues:
                        requote(*entry)
                    else:  # its strike's only book (a stale one quotes nothing): its top is the quote
                        idx, is_call = entry
                        bid, ask = (math.nan, math.nan) if book.stale else (book.best_bid, book.best_ask)
                        if is_call:
                            s.call_bid[idx], s.call_ask[idx] = bid, ask
                            s.call_bid_venue[idx] = venue if bid == bid else ""
                            s.call_ask_venue[idx] = venue if ask == ask else ""
                        else:
                            s.put_bid[idx], s.put_ask[idx] = bid, ask
                            s.put_bid_venue[idx] = venue if bid == bid else ""
                            s.put_ask_venue[idx] = venue if ask == ask else ""
                        s.dirty.add(idx)
                if item.ts_recv_ms > seen.get(item.venue, 0):
                    seen[item.venue] = item.ts_recv_ms
                if item.ts_exchange_ms > s.ts_exchange_ms:
                    s.ts_exchange_ms = item.ts_exchange_ms
            elif kind is Ticker:
                if item.underlying_px is not None and item.underlying_px != s.underlying_px:
                    s.underlying_px = item.underlying_px
                    s.forward_dirty = True
                if item.ts_exchange_ms > s.ts_exchange_ms:
                    s.ts_exchange_ms = item.ts_exchange_ms
            elif kind is Instrument:
                if item.kind == "option" and item.instrument not in s.options:
                    leg = (s.slot_of(float(item.strike)), item.option_type == "C")
                    s.options[item.instrument] = leg
                    self._solo = None
                    s.books[item.instrument] = OrderBook(item)
                    s.legs.setdefault(leg, []).append(item.instrument)
            elif kind is FuturePrice:
                if (item.bid, item.ask) != (s.future_bid, s.future_ask):
                    s.future_bid, s.future_ask = item.bid, item.ask
                    s.forward_dirty = True
                if item.ts_exchange_ms > s.ts_exchange_ms:
                    s.ts_exchange_ms = item.ts_exchange_ms
            elif kind is IndexPrice:
                s.index_px = item.price
                # only an expiry whose forward comes from the index is moved by it
                if s.forward_method in ("index", "none", ""):
                    s.forward_dirty = True
            elif kind is FeedError:
                # the venue client found a gap or a crossed book, or lost its session (the rule:
                # connectors/venues/base.py): withhold that book until the fresh snapshot it asked for
                entry = s.options.get(item.instrument)
                if entry is not None and item.reason == "seq_gap":
                    s.books[item.instrument].stale = True
                    self._requote(*entry)
        self.counters["items"] += n

    def _solo_legs(self) -> dict[str, str]:
        """Option → its venue, for the options that are their (strike, type)'s only book."""
        s = self.state
        self._solo = {names[0]: s.books[names[0]].instrument.venue for names in s.legs.values() if len(names) == 1}
        return self._solo

    def _requote(self, idx: int, is_call: bool) -> None:
        """Best bid and ask of one (strike, type) across its venues' books; a stale, crossed
        or silent venue is left out, never averaged in."""
        s = self.state
        bid = ask = math.nan
        bid_venue = ask_venue = ""
        for name in s.legs[(idx, is_call)]:
            book = s.books[name]
            venue = book.instrument.venue
            if book.stale or venue in s.stale_venues:
                continue
            b, a = book.best_bid, book.best_ask
            if b == b and not b <= bid:  # a bid (not NaN) above the best so far (or the first)
                bid, bid_venue = b, venue
            if a == a and not a >= ask:
                ask, ask_venue = a, venue
        if bid >= ask:  # venues crossing each other: no trustworthy quote for this strike
            bid = ask = math.nan
            bid_venue = ask_venue = ""
        self._set_quote(idx, is_call, bid, ask)
        if is_call:
            s.call_bid_venue[idx], s.call_ask_venue[idx] = bid_venue, ask_venue
        else:
            s.put_bid_venue[idx], s.put_ask_venue[idx] = bid_venue, ask_venue

    def _set_quote(self, idx: int, is_call: bool, bid: float, ask: float) -> None:
        s = self.state
        bids, asks = (s.call_bid, s.call_ask) if is_call else (s.put_bid, s.put_ask)
        if not (_same(bids[idx], bid) and _same(asks[idx], ask)):
            bids[idx], asks[idx] = bid, ask
            s.dirty.add(idx)

    def _check_venues(self, now: int) -> None:
        """A venue silent for venue_stale_ms is excluded until it speaks again."""
        s = self.state
        if len(s.venue_seen_ms) < 2:
            return  # a single-venue chain: staleness is per book (gaps), not per venue
        stale = frozenset(v for v, seen in s.venue_seen_ms.items() if now - seen > self.venue_stale_ms)
        if stale != s.stale_venues:
            s.stale_venues = stale
            for leg in s.legs:
                self._requote(*leg)

    def take_errors(self) -> list:
        errors, self.errors = self.errors, []
        return errors

    def pending(self) -> bool:
        s = self.state
        return bool(s.dirty) or s.forward_dirty or s.smile_changed

    def next_epoch_ms(self, at_ms: Optional[int] = None) -> int:
        """The epoch boundary after `at_ms` (default: now)."""
        at = self.now_ms() if at_ms is None else at_ms
        return (at // self.epoch_ms + 1) * self.epoch_ms

    def expired(self) -> bool:
        return self.now_ms() >= self.state.expiry_ms

    # ------------------------------------------------------------------ epoch: recompute
    def on_epoch(self, flush: bool = False) -> list:
        """Recompute what is dirty; returns [(SmileFit, ChainUpdate)] when a fit ran.

        flush=True (end of a finite input) fits an owed smile regardless of interval and budget.
        """
        started = time.perf_counter()
        try:
            return self._epoch(flush)
        finally:
            self.counters["epoch_us"] += int((time.perf_counter() - started) * 1e6)

    def _epoch(self, flush: bool) -> list:
        s = self.state
        now = self.now_ms()
        epoch = now // self.epoch_ms
        self.epochs += 1
        ts = s.ts_exchange_ms or now
        t = t_years(s.expiry_ms, ts)
        if t <= 0 or not s.strikes:
            s.dirty.clear()
            return []
        self._check_venues(now)
        self.counters["dirty"] += len(s.dirty) + (1 if s.forward_dirty else 0)
        if s.forward_dirty or s.forward is None or s.dirty:
            self._update_forward()
        if s.forward is None:
            return []
        if s.dirty or s.forward_dirty:
            self._solve(t)
            s.dirty.clear()
            s.forward_dirty = False
        if self.audit_every and self.epochs % self.audit_every == 0:
            self._audit(t)
        if not s.smile_changed:
            return []
        if not flush and not self._moved_materially(t):
            s.smile_changed = False
            s.fit_owed_since_ms = 0
            self.budget.forget(self.key)
            return []
        if not s.fit_owed_since_ms:
            s.fit_owed_since_ms = now
        if flush:
            return self._fit(epoch, ts, now, t)
        if now >= s.moving_until_ms and self._last_fit_stale(t):
            # a market move: refit each epoch it keeps changing the smile, for one interval
            # (its books may arrive over several batches; the first fit sees only some)
            s.moving_until_ms = now + self.fit_interval_ms
        if now - s.last_fit_ms < self.fit_interval_ms and now >= s.moving_until_ms:
            return []
        if not self.budget.take(epoch, self.key, s.fit_owed_since_ms):
            self.counters["fits_deferred"] += 1
            return []
        return self._fit(epoch, ts, now, t)

    def _moved_materially(self, t: float) -> bool:
        """Has any published vol moved by fit_change_bp since the last fit (or appeared/gone)?"""
        s = self.state
        if s.last_fit is None or s.s_at_fit.shape != s.s.shape:
            return True
        if not np.array_equal(np.isnan(s.s), np.isnan(s.s_at_fit)):
            return True
        with np.errstate(invalid="ignore"):
            moved = np.nanmax(np.abs(s.s - s.s_at_fit), initial=0.0) / math.sqrt(t) * 1e4
        return bool(moved >= self.fit_change_bp)

    def _last_fit_stale(self, t: float) -> bool:
        """Is the last fit out of date beyond waiting for the interval: the forward left its
        by refit_forward_bp, or a quarter of the smile moved by as much (a market move, not
        one noisy wing quote)?"""
        s = self.state
        fit = s.last_fit
        if fit is None or s.s_at_fit.shape != s.s.shape:
            return False  # a first fit, or new strikes: the interval rules as usual
        if abs(math.log(s.forward / fit.forward)) * 1e4 >= self.refit_forward_bp:
            return True
        with np.errstate(invalid="ignore"):
            moved = np.abs(s.s - s.s_at_fit) / math.sqrt(t) * 1e4 >= self.refit_forward_bp
        return bool(4 * np.count_nonzero(moved) >= np.count_nonzero(np.isfinite(s.s)))

    def _audit(self, t: float) -> None:
        """Compare every published vol with an exact solve from the same quotes and forward."""
        s = self.state
        strikes = s.strike_arr
        side = strikes >= s.forward
        prices = s.prices_coin(side)
        exact = iv.implied_vol_coin(prices.reshape(-1), s.forward, np.concatenate([strikes, strikes]), t,
                                    np.concatenate([side, side])).reshape(2, -1)
        published = s.s / math.sqrt(t)
        both = np.isfinite(exact) & np.isfinite(published)
        if both.any():
            err = float(np.max(np.abs(published[both] - exact[both]))) * 1e4
            self.counters["audit_max_err_bp"] = max(self.counters["audit_max_err_bp"], err)
        self.counters["audit_mismatch"] = self.counters.get("audit_mismatch", 0) + int(
            np.sum(np.isfinite(exact) != np.isfinite(published)))

    def _update_forward(self) -> None:
        s = self.state
        est = fwd.estimate_forward(
            s.strike_arr, s.call_bid, s.call_ask, s.put_bid, s.put_ask,
            future_bid=s.future_bid, future_ask=s.future_ask, underlying_px=s.underlying_px, index_px=s.index_px,
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
        last exact point when the move is small enough (operators/kernels/small_moves.py).
        """
        s = self.state
        n = len(s.strikes)
        strikes = s.strike_arr
        side = strikes >= s.forward
        x = np.log(s.forward / strikes)
        full = np.zeros(n, bool)
        full[list(s.dirty)] = True
        # with the forward where it was, a clean slot's published vol stands as it is
        forward_moved = s.forward != s.solved_forward
        s.solved_forward = s.forward
        if forward_moved:
            full |= (side != s.side) | ~np.isfinite(s.x0)
        old = s.s.copy()
        prices = s.prices_coin(side)
        # every slot not solved now is re-planned from its exact point (x back at x0 gives s0)
        moved = ~full if forward_moved else np.zeros(n, bool)
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
            vols = iv.implied_vol_coin_flat(prices[:, sel].reshape(-1), s.forward, np.concatenate([k, k]), t,
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
        strikes = s.strike_arr
        bid_iv, ask_iv = self.published_vols(t)
        two_sided = np.isfinite(bid_iv) & np.isfinite(ask_iv) & (ask_iv >= bid_iv)
        mid = 0.5 * (bid_iv + ask_iv)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel_spread = (ask_iv - bid_iv) / mid
        usable = two_sided & (rel_spread <= self.max_rel_spread)
        s.smile_changed = False
        s.fit_owed_since_ms = 0
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
            fit_ms=fit_ms, inside_band_frac=_opt(fit.inside_band_frac), warm=prev is not None,
            forward_method=s.forward_method, repaired=bool(fit.repaired))
        s.last_fit, s.last_fit_ms = smile, now
        s.s_at_fit = s.s.copy()
        s.fit_owed_since_ms = 0
        chain = ChainUpdate(
            venue=s.venue, underlying=s.underlying, expiry_ms=s.expiry_ms, epoch=epoch,
            ts_exchange_ms=ts, ts_emit_ms=now, t_years=t, forward=s.forward,
            forward_method=s.forward_method, strikes=tuple(k_strikes.tolist()),
            bid_iv=_opt_tuple(bid_iv[usable][order]), ask_iv=_opt_tuple(ask_iv[usable][order]),
            mid_iv=_opt_tuple(mid[usable][order]),
            bid_venue=self._venues(s.call_bid_venue, s.put_bid_venue, usable, order),
            ask_venue=self._venues(s.call_ask_venue, s.put_ask_venue, usable, order))
        return [(smile, chain)]


    def _venues(self, calls: list[str], puts: list[str], usable: np.ndarray, order: np.ndarray) -> tuple[str, ...]:
        side = self.state.side
        picked = [calls[i] if side[i] else puts[i] for i in np.flatnonzero(usable)]
        return tuple(picked[j] for j in order)


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _opt_tuple(a: np.ndarray) -> tuple:
    """Floats, None where not finite: the contract's "a value that does not exist"."""
    return tuple(np.where(np.isfinite(a), a, None).tolist())


def _opt(x) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else -1.0
