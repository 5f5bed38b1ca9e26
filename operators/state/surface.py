"""Surface state per underlying: fits in, analytics + calendar checks + tenors, patches out.

Keyed by underlying. Each epoch the changed expiries get their graph.toml analytics
evaluated (every node, by name: level = "expiry" into ExpiryView.analytics, level = "instrument"
into ExpiryView.strike_analytics, one value per strike of the view; nothing here knows a node's
name), then, when any expiry changed or went, the level = "underlying" nodes once across every
live expiry (SurfacePatch.underlying_analytics carries only the values that changed); the
calendar check and fixed tenors are redone across all live expiries (the tenors in the variance
clock of [surface] weekend_weight), and one SurfacePatch carries only what changed. With repair_calendar an expiry whose fit crosses a
neighbour's is refitted between the two from its own quotes (svi.fit_svi_band with floor and
ceiling; only the crossing ones: the whole-surface fit_surface took ~4 ms per epoch per surface
even with one slice moved, measured 2026-12-05 on tests/data's chains), so the published
surface is calendar-free on the check grid wherever the neighbours allow; the chain's own fit
stays in smile_fits (its refit is marked calendar_repaired). Vol at size: the ladders each
ChainUpdate carries (only the books that changed) go into that expiry's view in the next patch
only, merged by instrument when several fits arrive in one epoch (operators/merge.py
merge_ladders); the views kept here hold none, so a view re-sent for another reason (its
calendar flag, a repair) carries no ladders, and the publisher's merge keeps the current ones.
Ladders that changed between fits (ExpiryLadders: the touch stood still, deeper levels moved)
re-send that expiry's current view with them in the next patch; its fit, analytics and calendar
flag are unchanged, so nothing is recomputed for it.
A node that fails is counted in `counters` (`node_errors.<node>.<reason>`, read by the flow)
and logged once. Fits of one expiry from two chain steps (two worker slots placed it: the case
connectors/venues/placement.py leaves unguarded) are counted (`errors.placement_conflict`) and
logged once with the fix. State logic only: no I/O, never imports flows or connectors.
"""

from __future__ import annotations

import logging

from dataclasses import MISSING, dataclass, field, fields
from typing import Callable, Optional

import msgspec
import numpy as np

from operators.kernels import calendar, svi
from operators.kernels.variance_clock import MS_PER_DAY, MS_PER_YEAR, weighted_years
from operators.events import (CalendarCheck, ChainUpdate, ExpiryView, IndexPrice, SmileFit,
                              SurfacePatch, TenorPoint)
from operators.items import ExpiryFit, ExpiryGone, ExpiryLadders
from operators.kernels.strike import StrikeData
from operators.merge import merge_ladders
from operators.kernels.term import TermFits
from operators.state.nodes import (Node, NodeFailures, evaluate_nodes, evaluate_strike_nodes,
                                   evaluate_underlying_nodes)

log = logging.getLogger(__name__)


@dataclass
class SurfaceState:
    venue: str
    underlying: str
    views: dict[int, ExpiryView] = field(default_factory=dict)
    pending: dict[int, tuple[SmileFit, ChainUpdate]] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    index_px: Optional[float] = None
    index_changed: bool = False
    ts_exchange_ms: int = 0  # the newest exchange time behind the surface: patches never go backwards
    calendar: tuple[CalendarCheck, ...] = ()
    tenors: tuple[TenorPoint, ...] = ()
    underlying_values: dict[str, Optional[float]] = field(default_factory=dict)  # last sent, by node
    ladders: dict[int, object] = field(default_factory=dict)  # expiry_ms -> Ladders for the next patch

    def __setstate__(self, state: dict) -> None:
        """A state snapshotted before a field existed resumes with that field's default (before
        `ladders`, a pending fit held its ladders in its ChainUpdate: they move there)."""
        if "ladders" not in state:
            state["ladders"] = {e: chain.ladders for e, (_fit, chain) in state.get("pending", {}).items()
                                if chain.ladders is not None}
        for f in fields(self):
            if f.name not in state:
                state[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
        self.__dict__.update(state)


class SurfaceLogic:
    def __init__(self, state: SurfaceState, *, nodes: tuple[Node, ...], tenors_days: list[int],
                 drop_calendar_violators: bool, repair_calendar: bool, weekend_weight: float, epoch_ms: int,
                 now_ms: Callable[[], int]):
        self.state = state
        self.nodes = nodes  # every level, as loaded (flows/config.py orders each level topologically)
        self.levels = _Levels(tuple(n for n in nodes if n.level == "expiry"),
                              tuple(n for n in nodes if n.level == "instrument"))
        self.underlying_nodes = tuple(n for n in nodes if n.level == "underlying")
        self.tenors_days = tuple(tenors_days)
        self.drop_calendar_violators = drop_calendar_violators
        self.repair_calendar = repair_calendar
        self.weekend_weight = float(weekend_weight)  # the fixed tenors' variance clock (1 = ACT/365)
        self.repairs = 0  # expiries refitted between their neighbours so far (only grows)
        self.epoch_ms = epoch_ms
        self.now_ms = now_ms
        self.failures = NodeFailures()
        # derived from the views, not state: each view's fit as svi params (as_params once per fit),
        # and each neighbouring pair's calendar check while neither fit changed
        self._smiles: dict[int, tuple[SmileFit, svi.Smile]] = {}
        self._pairs: dict[tuple[int, int], tuple[SmileFit, SmileFit, CalendarCheck]] = {}
        # node name -> unit for the nodes graph.toml gives one; one dict shared by every view
        self.units = {n.name: n.unit for n in nodes if n.unit and n.level != "underlying"}
        self.underlying_units = {n.name: n.unit for n in self.underlying_nodes if n.unit}
        self._fitted_by: dict[int, str] = {}  # expiry → the chain key its fits come from (this life)
        self.conflicts = 0  # fits from a second chain key of an expiry (only grows)
        self._conflicted: set[int] = set()  # expiries logged

    @property
    def counters(self):
        """`node_errors.<node>.<reason>` -> failed evaluations so far, and `calendar_repairs`
        (only grow)."""
        out = self.failures.counts
        if self.repairs or self.conflicts:
            out = {**out, "calendar_repairs": self.repairs}
            if self.conflicts:
                out["errors.placement_conflict"] = self.conflicts
        return out

    def _check_origin(self, expiry_ms: int, chain_key: str) -> None:
        """Every fit of an expiry comes from one chain step; another one means two worker slots
        read the expiry (two chain states fit it): counted each time, logged once per expiry."""
        first = self._fitted_by.setdefault(expiry_ms, chain_key)
        if first != chain_key:
            self.conflicts += 1
            if expiry_ms not in self._conflicted:
                self._conflicted.add(expiry_ms)
                s = self.state
                log.error("%s %s expiry %d is fitted by two chain steps (%s and %s): two worker slots placed it "
                          "(connectors/venues/placement.py: slots whose first discoveries straddled a round). "
                          "Restart the flow without recovery to place every expiry again", s.venue, s.underlying,
                          expiry_ms, first, chain_key)

    def on_items(self, items) -> None:
        s = self.state
        for item in items:
            kind = type(item)
            if kind is ExpiryFit:
                fit, chain = item.fit, item.chain
                if item.chain_key:
                    self._check_origin(fit.expiry_ms, item.chain_key)
                if chain.ladders is not None:
                    self._add_ladders(fit.expiry_ms, chain.ladders)
                s.pending[fit.expiry_ms] = (fit, chain)  # stays in `removed` if it went first: the patch
                # then drops the old view (and its ladders) before it sends this one
            elif kind is ExpiryLadders:
                self._add_ladders(item.expiry_ms, item.ladders)
                # book data newer than the fits: a ladders-only patch is as new as it (never backwards)
                s.ts_exchange_ms = max(s.ts_exchange_ms, item.ts_exchange_ms)
            elif kind is ExpiryGone:
                self._fitted_by.pop(item.expiry_ms, None)
                s.removed.add(item.expiry_ms)
                s.pending.pop(item.expiry_ms, None)
                s.ladders.pop(item.expiry_ms, None)
            elif kind is IndexPrice:
                if item.price != s.index_px:
                    s.index_px, s.index_changed = item.price, True
                    s.ts_exchange_ms = max(s.ts_exchange_ms, item.ts_exchange_ms)

    def _add_ladders(self, expiry_ms: int, ladders) -> None:
        """Ladders for the next patch, merged by instrument in arrival order (several fits, or
        ladders between fits, in one epoch: the newest row of each book wins)."""
        before = self.state.ladders.get(expiry_ms)
        self.state.ladders[expiry_ms] = ladders if before is None else merge_ladders(before, ladders)

    def has_work(self) -> bool:
        s = self.state
        return bool(s.pending or s.removed or s.ladders)

    def on_epoch(self) -> Optional[SurfacePatch]:
        s = self.state
        if not (s.pending or s.removed or s.ladders):
            return None
        now = self.now_ms()
        if not (s.pending or s.removed):
            return self._ladders_patch(now)
        gone = tuple(sorted(e for e in s.removed if e in s.views))
        for e in s.removed:
            s.views.pop(e, None)
            self._smiles.pop(e, None)
        s.removed.clear()
        changed: dict[int, ExpiryView] = {}
        # expiry_ms -> the ladders that changed, for this patch only (with fits or between them)
        ladders = {e: lad for e, lad in s.ladders.items() if e in s.views or e in s.pending}
        s.ladders.clear()
        for expiry_ms, (fit, chain) in s.pending.items():
            params = self._smile(fit)  # raw SVI and its spline, if the fit took one
            analytics, per_strike = self.levels.evaluate(params, fit.t_years, fit.forward, chain.strikes,
                                                         chain.bid_iv, chain.ask_iv, self.failures)
            changed[expiry_ms] = ExpiryView(expiry_ms=expiry_ms, fit=fit, analytics=analytics,
                                            units=self.units, strikes=chain.strikes, bid_iv=chain.bid_iv,
                                            ask_iv=chain.ask_iv, bid_venue=chain.bid_venue,
                                            ask_venue=chain.ask_venue, strike_analytics=per_strike)
        s.pending.clear()
        s.views.update(changed)
        if self.repair_calendar:
            self._repair_crossings(changed)
        checks = self._calendar()
        bad = {c.expiry_ms_2 for c in checks if not c.ok}
        for expiry_ms, view in list(s.views.items()):
            ok = expiry_ms not in bad
            if view.calendar_ok != ok:
                view = ExpiryView(**{**_fields(view), "calendar_ok": ok})
                s.views[expiry_ms] = changed[expiry_ms] = view
        s.calendar = checks
        s.tenors = self._tenors(bad)
        underlying = self._underlying()
        # The newest exchange time behind the surface, never backwards: on the combined surface the
        # venues' clocks interleave (older OKX fits after newer Deribit ones went back ~64 times per
        # 10 s, issue #14). A patch with no new exchange data (a removal, a recomputed tenor) carries
        # the last one, never the flow's clock. (Until 2026-12-06 such a patch carried the flow clock:
        # that flattered bench_engine's paced exchange-to-patch p50 to 0.0 ms; the bench now measures
        # patches that carry fits, from their newest fit.)
        newest = max((v.fit.ts_exchange_ms for v in changed.values()), default=0)
        s.ts_exchange_ms = max(newest, s.ts_exchange_ms)
        ts_exchange = s.ts_exchange_ms or now  # the flow clock only before the surface has any data
        for e in ladders:  # ladders between fits: the view as it stands, re-sent to carry them
            if e not in changed:
                changed[e] = s.views[e]
        patch = SurfacePatch(
            venue=s.venue, underlying=s.underlying, epoch=now // self.epoch_ms,
            ts_exchange_ms=ts_exchange, ts_emit_ms=now,
            expiries=tuple(changed[e] if e not in ladders else msgspec.structs.replace(changed[e], ladders=ladders[e])
                           for e in sorted(changed)), removed=gone,
            tenors=s.tenors, calendar=s.calendar, index_px=s.index_px, underlying_analytics=underlying,
            underlying_units={n: u for n, u in self.underlying_units.items() if n in underlying})
        s.index_changed = False
        return patch

    def _ladders_patch(self, now: int) -> Optional[SurfacePatch]:
        """Only ladders changed between fits: their views re-sent as they stand, with them; the
        calendar, tenors and underlying values are unchanged (sent whole, as every patch does)."""
        s = self.state
        ladders = {e: lad for e, lad in s.ladders.items() if e in s.views}
        s.ladders.clear()
        if not ladders:
            return None
        return SurfacePatch(
            venue=s.venue, underlying=s.underlying, epoch=now // self.epoch_ms,
            ts_exchange_ms=s.ts_exchange_ms or now, ts_emit_ms=now,
            expiries=tuple(msgspec.structs.replace(s.views[e], ladders=ladders[e]) for e in sorted(ladders)),
            removed=(), tenors=s.tenors, calendar=s.calendar, index_px=s.index_px, underlying_analytics={},
            underlying_units={})

    def _underlying(self) -> dict[str, Optional[float]]:
        """The underlying-level values that changed since the last patch (all of them the first
        time; a node whose value went away is sent as None)."""
        if not self.underlying_nodes:
            return {}
        s = self.state
        views = [v for _, v in sorted(s.views.items())]
        if views:
            fits = TermFits.of((v.fit.t_years, self._smile(v.fit), v.expiry_ms) for v in views)
            by_node = {n.name: np.array([np.nan if v.analytics.get(n.name) is None else v.analytics[n.name]
                                         for v in views], float) for n in self.levels.expiry}
            values = evaluate_underlying_nodes(self.underlying_nodes, fits, by_node,
                                               f"underlying {s.venue}|{s.underlying}", self.failures)
        else:
            values = {n.name: None for n in self.underlying_nodes}
        changed = {k: v for k, v in values.items() if k not in s.underlying_values or s.underlying_values[k] != v}
        s.underlying_values.update(changed)
        return changed

    def _ordered_fits(self) -> list[SmileFit]:
        return [v.fit for _, v in sorted(self.state.views.items())]

    def _repair_crossings(self, changed: dict[int, ExpiryView]) -> None:
        """Refit each expiry whose fit crosses a neighbour's between its two neighbours
        (svi.fit_svi_band with floor and ceiling: band-aware, butterfly-free), from the quotes
        in its view; the one that moved this epoch, else the later of the pair. Two passes: a
        repaired slice's other neighbour is checked again. A slice that cannot be repaired (too
        few two-sided quotes, or its neighbours cross each other) keeps its fit and its flag."""
        s = self.state
        tried: set[int] = set()
        for _ in range(2):
            bad = [c for c in self._calendar() if not c.ok]
            if not bad:
                return
            order = sorted(s.views)
            for c in bad:
                e = c.expiry_ms_2 if (c.expiry_ms_2 in changed or c.expiry_ms_1 not in changed) else c.expiry_ms_1
                if e in tried:
                    continue
                tried.add(e)
                i = order.index(e)
                floor = s.views[order[i - 1]].fit if i > 0 else None
                ceiling = s.views[order[i + 1]].fit if i + 1 < len(order) else None
                view = _refitted(s.views[e], floor, ceiling, self.levels, self.failures)
                if view is not None:
                    s.views[e] = changed[e] = view
                    self.repairs += 1

    def _smile(self, fit: SmileFit) -> svi.Smile:
        """The fit as svi params (raw SVI and its spline), converted once per fit."""
        hit = self._smiles.get(fit.expiry_ms)
        if hit is None or hit[0] is not fit:
            hit = self._smiles[fit.expiry_ms] = (fit, svi.as_params(fit))
        return hit[1]

    def _calendar(self) -> tuple[CalendarCheck, ...]:
        """Each neighbouring pair's check (calendar.calendar_check on the fitted curves, splines
        included: until 2026-12-07 it read raw SVI's five numbers alone). A pair whose two fits
        did not change keeps its check, so a patch with one new fit checks two pairs, not all
        (a one-fit patch of the seed's 12 BTC expiries: 1.2 → 0.4 ms under cProfile, 2026-12-07)."""
        fits = self._ordered_fits()
        pairs: dict[tuple[int, int], tuple[SmileFit, SmileFit, CalendarCheck]] = {}
        for f1, f2 in zip(fits, fits[1:]):
            key = (f1.expiry_ms, f2.expiry_ms)
            hit = self._pairs.get(key)
            if hit is None or hit[0] is not f1 or hit[1] is not f2:
                (p,) = calendar.calendar_check([(f.t_years, self._smile(f)) for f in (f1, f2)])
                hit = (f1, f2, CalendarCheck(f1.expiry_ms, f2.expiry_ms, bool(p.ok), float(p.worst)))
            pairs[key] = hit
        self._pairs = pairs
        return tuple(hit[2] for hit in pairs.values())

    def _tenors(self, bad: set[int]) -> tuple[TenorPoint, ...]:
        """The fixed tenors (calendar.tenor_points), on the variance clock of [surface] weekend_weight:
        linear in τ (weekend days weighted weekend_weight: operators/kernels/variance_clock.py)
        instead of ACT/365 T, vols still √(w/T) at the tenor's calendar T. Each fit's τ runs from
        its own clock origin (expiry_ms − t_years); the tenors' from the newest one. The calendar
        checks just made (state.calendar) are reused unless violators were dropped."""
        all_fits = self._ordered_fits()
        fits = [f for f in all_fits if f.expiry_ms not in bad] if self.drop_calendar_violators else all_fits
        if not fits:
            return ()
        pair_ok = [c.ok for c in self.state.calendar] if len(fits) == len(all_fits) else None
        clock = None
        if self.weekend_weight != 1.0:
            expiries = np.array([f.expiry_ms for f in fits], np.int64)
            starts = expiries - np.round(np.array([f.t_years for f in fits]) * MS_PER_YEAR).astype(np.int64)
            tau = np.asarray(weighted_years(starts, expiries, self.weekend_weight), float)
            if np.any(np.diff(tau) <= 0) or tau[0] <= 0:
                return ()
            origin = int(starts.max())
            ends = origin + np.asarray(self.tenors_days) * MS_PER_DAY
            clock = (tau, np.asarray(weighted_years(origin, ends, self.weekend_weight), float).tolist())
        points = calendar.tenor_points([(f.t_years, self._smile(f)) for f in fits], tenors_days=self.tenors_days,
                                       clock=clock, pair_ok=pair_ok)
        return tuple(TenorPoint(tenor_days=p.tenor_days, atm_vol=_opt(p.atm_vol), rr25=_opt(p.rr25),
                                bf25=_opt(p.bf25), calendar_flag=bool(p.calendar_flag))
                     for p in points if p is not None)


def _params(fit: SmileFit) -> svi.SviParams:
    return svi.as_params(fit)


@dataclass(frozen=True)
class _Levels:
    """The per-expiry levels: expiry nodes, then instrument nodes at the view's strikes."""

    expiry: tuple[Node, ...]
    instrument: tuple[Node, ...]

    def evaluate(self, params: tuple, t_years: float, forward: float, strikes, bid_iv, ask_iv,
                 failures: NodeFailures) -> tuple[dict, dict]:
        quotes = StrikeData.of(strikes, forward, bid_iv, ask_iv) if forward > 0 else None
        analytics = evaluate_nodes(self.expiry, params, t_years, failures, quotes=quotes)
        if not self.instrument or quotes is None:
            return analytics, {}
        return analytics, evaluate_strike_nodes(self.instrument, params, t_years, quotes, analytics, failures)


def _refitted(view: ExpiryView, floor: Optional[SmileFit], ceiling: Optional[SmileFit], levels: _Levels, failures
              ) -> Optional[ExpiryView]:
    """`view` with its fit redone between floor and ceiling from its own two-sided quotes
    (weights 1/half-spread² on the vol error), checked on the surface's calendar grid; None
    when that cannot be done."""
    f = view.fit
    K = np.asarray(view.strikes, float)
    bid = np.array([np.nan if x is None else x for x in view.bid_iv], float)
    ask = np.array([np.nan if x is None else x for x in view.ask_iv], float)
    if not (K.size == bid.size == ask.size) or f.forward <= 0 or f.t_years <= 0:
        return None
    two = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask >= bid) & (K > 0)
    if int(two.sum()) < svi.MIN_QUOTES:
        return None
    t = f.t_years
    k = np.log(K[two] / f.forward)
    b, a = bid[two], ask[two]
    half = np.maximum(0.5 * (a - b), 1e-4)
    bounds = [_params(x) for x in (floor, ceiling) if x is not None]
    try:
        res = svi.fit_svi_band(k, (0.5 * (a + b)) ** 2 * t, b * b * t, a * a * t, 1.0 / half ** 2, _params(f),
                               t_years=t, floor=_params(floor) if floor is not None else None,
                               ceiling=_params(ceiling) if ceiling is not None else None,
                               calendar_k=calendar.DEFAULT_K_GRID)
    except ValueError:
        return None
    p = res.params
    if not res.butterfly_ok or not bounds or not svi.within_calendar_bounds(
            p, _params(floor) if floor is not None else None, _params(ceiling) if ceiling is not None else None,
            calendar.DEFAULT_K_GRID):
        return None
    fit = msgspec.structs.replace(f, a=p.a, b=p.b, rho=p.rho, m=p.m, sigma=p.sigma, spline_lo_k=p.spline_lo_k,
                                  spline_hi_k=p.spline_hi_k, spline_w=p.spline_w, rmse_vol_pts=float(res.rmse_vol_pts),
                                  butterfly_ok=True, min_g=float(res.min_g), repaired=bool(res.repaired),
                                  inside_band_frac=(None if res.inside_band_frac is None
                                                    else float(res.inside_band_frac)),
                                  calendar_repaired=True)
    analytics, per_strike = levels.evaluate(p, t, f.forward, view.strikes, view.bid_iv, view.ask_iv, failures)
    return msgspec.structs.replace(view, fit=fit, analytics=analytics, strike_analytics=per_strike)


def _fields(view: ExpiryView) -> dict:
    return {name: getattr(view, name) for name in view.__struct_fields__}


def _opt(x) -> Optional[float]:
    return None if x is None or x != x else float(x)
