"""The reference system's design, as a benchmark baseline: every message handled on arrival,
end to end, with volgraph's own kernels (operators.kernels.iv, forward, svi, book, graph nodes).

- a book change: apply it to the L2 book, re-estimate that expiry's forward, solve the IVs of
  every kept level of that instrument (all IVs of the expiry when its forward moved) — with level
  vols on ([chain] level_depth / sizes_contracts) exactly the prices volgraph solves: the best
  level_depth levels a side and the walks to each size (operators.kernels.levels) — refit
  the expiry's SVI smile (fit_slice, warm-started), evaluate its analytics and build a patch;
- a forward tick (future ticker, an option ticker's underlying price) or an index tick: all
  forwards and all level IVs of the underlying, again;
- no batching across messages, no dirty tracking, no skipping, no epochs.

Each unit of work is one vectorised kernel call (an instrument's levels, an expiry's levels),
which is kinder to the baseline than a per-option loop. Its published vols are exact by
construction (always solved from the current prices at the current forward).

Benchmark code only: it never opens a socket and never writes anywhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from operators.kernels import forward as fwd
from operators.kernels import iv, levels, svi
from operators.state.book import OrderBook
from operators.state.chain import MS_PER_YEAR
from operators.events import (BookUpdate, ExpiryView, FuturePrice, IndexPrice, Instrument, SmileFit,
                              SurfacePatch, Ticker)
from flows.config import Config
from operators.state.nodes import evaluate_nodes


def _depth(config: Config) -> int:
    # book levels kept per side, as the engine keeps them (the config layout moved once already)
    sources = getattr(config, "sources", None)
    return sources.deribit.depth if sources is not None else config.source.depth


@dataclass
class _Option:
    name: str
    strike: float
    is_call: bool
    slot: int
    book: OrderBook
    level_px: np.ndarray = field(default_factory=lambda: np.zeros(0))  # bids then asks, coin (NaN: none)
    n_bids: int = 0  # where the asks start
    level_iv: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class _Expiry:
    underlying: str
    expiry_ms: int
    strikes: list[float] = field(default_factory=list)
    slot: dict[float, int] = field(default_factory=dict)
    options: list[_Option] = field(default_factory=list)
    future_bid: Optional[float] = None
    future_ask: Optional[float] = None
    underlying_px: Optional[float] = None
    forward: Optional[float] = None
    ts_exchange_ms: int = 0
    last_fit: Optional[tuple] = None


class NaiveEngine:
    """Feed parsed events to `handle`; patches go to `on_patch(patch, event)`."""

    def __init__(self, config: Config, on_patch: Optional[Callable] = None,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)):
        self.depth = _depth(config)
        # level vols on: the same prices as volgraph's chain (its level_depth levels and walks)
        self.level_depth = max(1, config.chain.level_depth)  # the touch first: the forward and the fit read it
        self.sizes = np.array(config.chain.sizes_contracts, np.float64)
        self.levels_on = bool(config.chain.level_depth or self.sizes.size)
        self.nodes = config.nodes
        self.min_quotes = config.chain.min_quotes
        self.max_rel_spread = config.chain.max_rel_spread
        self.on_patch = on_patch
        self.now_ms = now_ms
        self.options: dict[str, tuple[_Expiry, _Option]] = {}
        self.future_expiry: dict[str, tuple[str, int]] = {}
        self.expiries: dict[tuple[str, int], _Expiry] = {}
        self.by_underlying: dict[str, list[_Expiry]] = {}
        self.index_px: dict[str, float] = {}
        self.counters = {"messages_in": 0, "iv_solves": 0, "fits": 0, "patches": 0, "full_recomputes": 0}

    # ------------------------------------------------------------------ events
    def handle(self, event) -> None:
        self.counters["messages_in"] += 1
        kind = type(event)
        if kind is BookUpdate:
            self._book(event)
        elif kind is Ticker:
            hit = self.options.get(event.instrument)
            if hit is not None:
                exp = hit[0]
                exp.ts_exchange_ms = max(exp.ts_exchange_ms, event.ts_exchange_ms)
                if event.underlying_px is not None and event.underlying_px != exp.underlying_px:
                    exp.underlying_px = event.underlying_px
                    self._all_ivs(exp.underlying)
        elif kind is FuturePrice:
            key = (event.underlying, event.expiry_ms)
            exp = self.expiries.get(key)
            if exp is not None:
                exp.future_bid, exp.future_ask = event.bid, event.ask
                exp.ts_exchange_ms = max(exp.ts_exchange_ms, event.ts_exchange_ms)
            self._all_ivs(event.underlying)  # the reference recomputed on every forward tick
        elif kind is IndexPrice:
            self.index_px[event.underlying] = event.price
            self._all_ivs(event.underlying)
        elif kind is Instrument:
            self._listing(event)

    def _listing(self, inst: Instrument) -> None:
        if inst.kind != "option":
            return
        key = (inst.underlying, inst.expiry_ms)
        exp = self.expiries.get(key)
        if exp is None:
            exp = self.expiries[key] = _Expiry(inst.underlying, inst.expiry_ms)
            self.by_underlying.setdefault(inst.underlying, []).append(exp)
        slot = exp.slot.get(inst.strike)
        if slot is None:
            slot = exp.slot[inst.strike] = len(exp.strikes)
            exp.strikes.append(float(inst.strike))
        opt = _Option(inst.instrument, float(inst.strike), inst.option_type == "C", slot, OrderBook(inst))
        exp.options.append(opt)
        self.options[inst.instrument] = (exp, opt)

    def _apply_book(self, update: BookUpdate):
        """The book change alone: (expiry, option) it touched, or None for an unknown name."""
        hit = self.options.get(update.instrument)
        if hit is None:
            return None
        exp, opt = hit
        opt.book.apply(update)
        if opt.book.stale:
            opt.level_px, opt.n_bids = np.zeros(0), 0
        elif self.levels_on:
            bids, asks = opt.book.sides()
            lv = np.array(bids + asks, np.float64).reshape(-1, 2)
            px, _, _, _ = levels.walk_sides(lv[:, 0], lv[:, 1], np.array([0, len(bids)]),
                                            np.array([len(bids), len(asks)]), self.level_depth, self.sizes)
            opt.level_px, opt.n_bids = px.reshape(-1), px.shape[1]
        else:
            bids, asks = opt.book.top(self.depth)
            opt.level_px = np.array([p for p, _ in bids] + [p for p, _ in asks], float)
            opt.n_bids = len(bids)
        exp.ts_exchange_ms = max(exp.ts_exchange_ms, update.ts_exchange_ms)
        return hit

    def _book(self, update: BookUpdate) -> None:
        hit = self._apply_book(update)
        if hit is None:
            return
        exp, opt = hit
        if self._forward(exp):
            self._expiry_ivs(exp)
        else:
            self._option_ivs(exp, opt)
        self._refit(exp, update)

    # ------------------------------------------------------------------ the work
    def _forward(self, exp: _Expiry) -> bool:
        """Re-estimate the forward from the current inputs; True when it moved."""
        n = len(exp.strikes)
        cb, ca, pb, pa = (np.full(n, math.nan) for _ in range(4))
        for o in exp.options:
            if o.level_px.size:
                bid = o.level_px[0] if o.n_bids else math.nan
                ask = o.level_px[o.n_bids] if o.level_px.size > o.n_bids else math.nan
                if o.is_call:
                    cb[o.slot], ca[o.slot] = bid, ask
                else:
                    pb[o.slot], pa[o.slot] = bid, ask
        est = fwd.estimate_forward(np.asarray(exp.strikes), cb, ca, pb, pa, future_bid=exp.future_bid,
                                   future_ask=exp.future_ask, underlying_px=exp.underlying_px,
                                   index_px=self.index_px.get(exp.underlying), prices_in_coin=True)
        if not (math.isfinite(est.forward) and est.forward > 0):
            return False
        moved = exp.forward is None or est.forward != exp.forward
        exp.forward = float(est.forward)
        return moved

    def _t_years(self, exp: _Expiry) -> float:
        return (exp.expiry_ms - exp.ts_exchange_ms) / MS_PER_YEAR

    def _option_ivs(self, exp: _Expiry, opt: _Option) -> None:
        t = self._t_years(exp)
        if exp.forward is None or t <= 0 or not opt.level_px.size:
            opt.level_iv = np.full(opt.level_px.size, math.nan)
            return
        opt.level_iv = iv.implied_vol_coin(opt.level_px, exp.forward, np.full(opt.level_px.size, opt.strike), t,
                                           np.full(opt.level_px.size, opt.is_call))
        self.counters["iv_solves"] += int(np.count_nonzero(opt.level_px == opt.level_px))  # prices, not NaN

    def _expiry_ivs(self, exp: _Expiry) -> None:
        t = self._t_years(exp)
        live = [o for o in exp.options if o.level_px.size]
        if exp.forward is None or t <= 0 or not live:
            return
        px = np.concatenate([o.level_px for o in live])
        k = np.concatenate([np.full(o.level_px.size, o.strike) for o in live])
        call = np.concatenate([np.full(o.level_px.size, o.is_call) for o in live])
        vols = iv.implied_vol_coin(px, exp.forward, k, t, call)
        self.counters["iv_solves"] += int(np.count_nonzero(px == px))
        at = 0
        for o in live:
            o.level_iv = vols[at:at + o.level_px.size]
            at += o.level_px.size

    def _all_ivs(self, underlying: str) -> None:
        self.counters["full_recomputes"] += 1
        for exp in self.by_underlying.get(underlying, ()):
            self._forward(exp)
            self._expiry_ivs(exp)

    def _refit(self, exp: _Expiry, cause) -> None:
        if exp.forward is None:
            return
        t = self._t_years(exp)
        if t <= 0:
            return
        n = len(exp.strikes)
        bid_iv, ask_iv = np.full(n, math.nan), np.full(n, math.nan)
        for o in exp.options:
            # the out-of-the-money option of each strike: calls at and above the forward
            if o.is_call != (o.strike >= exp.forward) or o.level_iv.size != o.level_px.size:
                continue
            if o.n_bids:
                bid_iv[o.slot] = o.level_iv[0]
            if o.level_px.size > o.n_bids:
                ask_iv[o.slot] = o.level_iv[o.n_bids]
        with np.errstate(invalid="ignore", divide="ignore"):
            mid = 0.5 * (bid_iv + ask_iv)
            usable = (np.isfinite(bid_iv) & np.isfinite(ask_iv) & (ask_iv >= bid_iv)
                      & ((ask_iv - bid_iv) / mid <= self.max_rel_spread))
        if usable.sum() < self.min_quotes:
            return
        strikes = np.asarray(exp.strikes)
        order = np.argsort(strikes[usable])
        started = time.perf_counter()
        fit = svi.fit_slice(strikes[usable][order], exp.forward, t, bid_iv[usable][order], ask_iv[usable][order],
                            prev=exp.last_fit)
        fit_ms = (time.perf_counter() - started) * 1000.0
        if fit is None:
            return
        self.counters["fits"] += 1
        params = fit.params  # SviParams, or SplineSvi where the fit took a spline (svi.py)
        exp.last_fit = params
        analytics = evaluate_nodes(self.nodes, params, t)
        now = self.now_ms()
        smile = SmileFit("deribit", exp.underlying, exp.expiry_ms, 0, exp.ts_exchange_ms, now, t, exp.forward,
                         *params[:5], rmse_vol_pts=float(fit.rmse_vol_pts), n_quotes=int(usable.sum()),
                         spline_lo_k=params.spline_lo_k, spline_hi_k=params.spline_hi_k, spline_w=params.spline_w,
                         butterfly_ok=bool(fit.butterfly_ok), min_g=float(fit.min_g), fit_ms=fit_ms)
        view = ExpiryView(expiry_ms=exp.expiry_ms, fit=smile, analytics=analytics)
        patch = SurfacePatch("deribit", exp.underlying, 0, exp.ts_exchange_ms, now, expiries=(view,),
                             index_px=self.index_px.get(exp.underlying))
        self.counters["patches"] += 1
        if self.on_patch is not None:
            self.on_patch(patch, cause)

    # ------------------------------------------------------------------ untimed set-up
    def load(self, event) -> None:
        """Apply an event's data without any of the per-message work (to reach a starting state
        quickly; the benchmark times what follows). Call recompute_all() after the last one."""
        kind = type(event)
        if kind is Instrument:
            self._listing(event)
        elif kind is BookUpdate:
            self._apply_book(event)
        elif kind is Ticker:
            hit = self.options.get(event.instrument)
            if hit is not None and event.underlying_px is not None:
                hit[0].underlying_px = event.underlying_px
        elif kind is FuturePrice:
            exp = self.expiries.get((event.underlying, event.expiry_ms))
            if exp is not None:
                exp.future_bid, exp.future_ask = event.bid, event.ask
        elif kind is IndexPrice:
            self.index_px[event.underlying] = event.price

    def recompute_all(self) -> None:
        """Every forward, every level IV and every fit, once."""
        for und, exps in self.by_underlying.items():
            self._all_ivs(und)
            for exp in exps:
                self._refit(exp, None)
