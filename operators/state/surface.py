"""Surface state per underlying: fits in, analytics + calendar checks + tenors, patches out.

Keyed by underlying. Each epoch the changed expiries get their graph.toml analytics
evaluated (every node, by name, into ExpiryView.analytics: nothing here knows a node's
name), the calendar check and fixed tenors are redone across all live expiries, and one
SurfacePatch carries only what changed. A node that fails is counted in `counters`
(`node_errors.<node>.<reason>`, read by the flow) and logged once. State logic only: no
I/O, never imports flows or connectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from operators.kernels import calendar
from operators.events import (CalendarCheck, ChainUpdate, ExpiryView, IndexPrice, SmileFit,
                              SurfacePatch, TenorPoint)
from operators.items import ExpiryFit, ExpiryGone
from operators.state.nodes import Node, NodeFailures, evaluate_nodes


@dataclass
class SurfaceState:
    venue: str
    underlying: str
    views: dict[int, ExpiryView] = field(default_factory=dict)
    pending: dict[int, tuple[SmileFit, ChainUpdate]] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    index_px: Optional[float] = None
    index_changed: bool = False
    calendar: tuple[CalendarCheck, ...] = ()
    tenors: tuple[TenorPoint, ...] = ()
    ts_exchange_ms: int = 0  # the last patch's: patches' exchange times never go backwards


class SurfaceLogic:
    def __init__(self, state: SurfaceState, *, nodes: tuple[Node, ...], tenors_days: list[int],
                 drop_calendar_violators: bool, epoch_ms: int, now_ms: Callable[[], int]):
        self.state = state
        self.nodes = nodes
        self.tenors_days = tuple(tenors_days)
        self.drop_calendar_violators = drop_calendar_violators
        self.epoch_ms = epoch_ms
        self.now_ms = now_ms
        self.failures = NodeFailures()
        # node name -> unit for the nodes graph.toml gives one; one dict shared by every view
        self.units = {n.name: n.unit for n in nodes if n.unit}

    @property
    def counters(self):
        """`node_errors.<node>.<reason>` -> failed evaluations so far (only grows)."""
        return self.failures.counts

    def on_items(self, items) -> None:
        s = self.state
        for item in items:
            kind = type(item)
            if kind is ExpiryFit:
                fit = item.fit
                s.pending[fit.expiry_ms] = (fit, item.chain)
                s.removed.discard(fit.expiry_ms)
            elif kind is ExpiryGone:
                s.removed.add(item.expiry_ms)
                s.pending.pop(item.expiry_ms, None)
            elif kind is IndexPrice:
                if item.price != s.index_px:
                    s.index_px, s.index_changed = item.price, True

    def has_work(self) -> bool:
        s = self.state
        return bool(s.pending or s.removed)

    def on_epoch(self) -> Optional[SurfacePatch]:
        s = self.state
        if not (s.pending or s.removed):
            return None
        now = self.now_ms()
        gone = tuple(sorted(e for e in s.removed if e in s.views))
        for e in s.removed:
            s.views.pop(e, None)
        s.removed.clear()
        changed: dict[int, ExpiryView] = {}
        for expiry_ms, (fit, chain) in s.pending.items():
            params = (fit.a, fit.b, fit.rho, fit.m, fit.sigma)
            analytics = evaluate_nodes(self.nodes, params, fit.t_years, self.failures)
            changed[expiry_ms] = ExpiryView(expiry_ms=expiry_ms, fit=fit, analytics=analytics,
                                            units=self.units, strikes=chain.strikes, bid_iv=chain.bid_iv,
                                            ask_iv=chain.ask_iv, bid_venue=chain.bid_venue,
                                            ask_venue=chain.ask_venue)
        s.pending.clear()
        s.views.update(changed)
        checks = self._calendar()
        bad = {c.expiry_ms_2 for c in checks if not c.ok}
        for expiry_ms, view in list(s.views.items()):
            ok = expiry_ms not in bad
            if view.calendar_ok != ok:
                view = ExpiryView(**{**_fields(view), "calendar_ok": ok})
                s.views[expiry_ms] = changed[expiry_ms] = view
        s.calendar = checks
        s.tenors = self._tenors(bad)
        # the newest exchange time behind the surface, never backwards: on the combined surface the
        # venues' clocks interleave (a patch of older OKX fits after newer Deribit ones went back
        # ~64 times per 10 s, issue #14)
        newest = max((v.fit.ts_exchange_ms for v in changed.values()), default=None)
        ts_exchange = max(newest, s.ts_exchange_ms) if newest is not None else (s.ts_exchange_ms or now)
        s.ts_exchange_ms = ts_exchange
        patch = SurfacePatch(
            venue=s.venue, underlying=s.underlying, epoch=now // self.epoch_ms,
            ts_exchange_ms=ts_exchange, ts_emit_ms=now,
            expiries=tuple(changed[e] for e in sorted(changed)), removed=gone,
            tenors=s.tenors, calendar=s.calendar, index_px=s.index_px)
        s.index_changed = False
        return patch

    def _ordered_fits(self) -> list[SmileFit]:
        return [v.fit for _, v in sorted(self.state.views.items())]

    def _calendar(self) -> tuple[CalendarCheck, ...]:
        fits = self._ordered_fits()
        if len(fits) < 2:
            return ()
        pairs = calendar.calendar_check([(f.t_years, (f.a, f.b, f.rho, f.m, f.sigma)) for f in fits])
        return tuple(CalendarCheck(fits[i].expiry_ms, fits[i + 1].expiry_ms, bool(p.ok), float(p.worst))
                     for i, p in enumerate(pairs))

    def _tenors(self, bad: set[int]) -> tuple[TenorPoint, ...]:
        fits = self._ordered_fits()
        if self.drop_calendar_violators:
            fits = [f for f in fits if f.expiry_ms not in bad]
        if not fits:
            return ()
        points = calendar.tenor_points([(f.t_years, (f.a, f.b, f.rho, f.m, f.sigma)) for f in fits],
                                       tenors_days=self.tenors_days)
        return tuple(TenorPoint(tenor_days=p.tenor_days, atm_vol=_opt(p.atm_vol), rr25=_opt(p.rr25),
                                bf25=_opt(p.bf25), calendar_flag=bool(p.calendar_flag))
                     for p in points if p is not None)


def _fields(view: ExpiryView) -> dict:
    return {name: getattr(view, name) for name in view.__struct_fields__}


def _opt(x) -> Optional[float]:
    return None if x is None or x != x else float(x)
