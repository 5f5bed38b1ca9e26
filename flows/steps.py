"""bytewax adapters for the keyed steps: they own the epoch timer and the snapshots, and
delegate every decision to the pure state logic in operators/state/ (chain, surface). The
items they take and emit are typed (operators/items.py)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from bytewax.operators import StatefulBatchLogic

from flows.metrics import COUNTERS
from operators.state.chain import ChainLogic, ChainState, FitBudget, now_wall_ms
from operators.events import split_chain_key
from operators.items import ExpiryFit, ExpiryGone, ExpiryLadders
from flows.config import Config
from operators.state.surface import SurfaceLogic, SurfaceState


class FlowClock:
    """The flow's clock (`now_ms`: the wall clock live, the recording's in a replay, advancing
    `rate` flow ms per wall ms) and bytewax's: bytewax wakes a step when the SYSTEM clock
    reaches its notify_at, so a flow-clock due time is handed over as the wall time it falls
    at. (Handed over as is, a replay's due times — months in the past — woke every step on
    every activation: no epoch batching at all.)"""

    def __init__(self, now_ms: Callable[[], int], rate: float = 1.0, wall_ms: Callable[[], float] = now_wall_ms):
        if not rate > 0:
            raise ValueError(f"clock rate {rate!r}: flow-clock ms per wall ms must be > 0")
        self.now_ms = now_ms
        self.rate = rate
        self.wall_ms = wall_ms  # the system clock bytewax reads (tests pin it)

    def wall_at(self, due_ms: float) -> datetime:
        wall = self.wall_ms() + (due_ms - self.now_ms()) / self.rate
        return datetime.fromtimestamp(wall / 1000.0, tz=timezone.utc)


class _KeyedStep(StatefulBatchLogic):
    """What both keyed steps share: the logic is made on the first value (bytewax's builder is
    not told the key) or from the snapshot on resume; `_due` is the next epoch tick owed; the
    logic's counters reach COUNTERS as deltas since the last report."""

    def __init__(self, make: Callable, resume: Optional[Any], clock: FlowClock):
        self.make = make
        self.clock = clock
        self.logic: Optional[Any] = make(resume) if resume is not None else None
        self._due: Optional[int] = None
        self._reported: dict[str, float] = {}

    def snapshot(self):
        return self.logic.state if self.logic is not None else None

    def _add_deltas(self, counts, names) -> None:
        for name in names:
            delta = counts[name] - self._reported.get(name, 0)
            if delta:
                COUNTERS.add(name, delta)
                self._reported[name] = counts[name]


class ChainStep(_KeyedStep):
    """Marks dirty on each batch; recomputes on the epoch notification.

    Values arrive as ChainBatches (operators/items.py); bytewax's builder is not told the key,
    so the logic is made on the first batch (or from the snapshot on resume). Emits ExpiryFit,
    ExpiryLadders (vol at size between fits), ExpiryGone and FeedError items."""

    def __init__(self, make: Callable[[ChainState], ChainLogic], resume: Optional[ChainState], clock: FlowClock):
        self.make = make
        self.clock = clock
        self.logic: Optional[ChainLogic] = make(resume) if resume is not None else None
        self.key = ""  # as routed: the surface step tells two chains of one expiry apart by it
        self._due: Optional[int] = None
        self._reported: dict[str, int] = {}

    def on_batch(self, values):
        if self.logic is None:
            self.logic = self.make(ChainState(*split_chain_key(values[0].key)))
        if not self.key:
            self.key = values[0].key
        due = self._due
        for batch in values:  # each value is one source batch of this expiry's events
            self.logic.on_items(batch.events)
            # the tick of the epoch they entered in: when reading and applying a burst outlasted
            # that epoch the tick is overdue and runs at once, holding all of the burst
            entered_due = self.logic.next_epoch_ms(batch.entered_ms)
            due = entered_due if due is None else min(due, entered_due)
        self._due = due
        self._report()
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self):
        self._due = None
        if self.logic.expired():
            self.logic.budget.forget(self.logic.key)
            s = self.logic.state
            return [ExpiryGone(s.venue, s.underlying, s.expiry_ms)], StatefulBatchLogic.DISCARD
        out: list = [ExpiryFit(fit, chain, self.key) for fit, chain in self.logic.on_epoch()]
        s = self.logic.state
        out.extend(ExpiryLadders(s.venue, s.underlying, s.expiry_ms, lad, s.ts_exchange_ms)
                   for lad in self.logic.take_between())
        out.extend(self.logic.take_errors())
        self._report()
        if self.logic.pending():  # deferred by the fit interval or the budget
            self._due = self.logic.next_epoch_ms()
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self):
        # A finite input (replay, --seconds) ends: publish what is owed instead of dropping it.
        if self.logic is None:
            return [], StatefulBatchLogic.RETAIN
        out: list = [ExpiryFit(fit, chain, self.key) for fit, chain in self.logic.on_epoch(flush=True)]
        out.extend(self.logic.take_errors())
        self._report()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self):
        if self.logic is None:
            return None
        # wake at expiry even with no traffic, so the expiry leaves the surface on time
        due = self.logic.state.expiry_ms if self._due is None else min(self._due, self.logic.state.expiry_ms)
        return self.clock.wall_at(due)

    def _report(self) -> None:
        counts = self.logic.counters
        self._add_deltas(counts, ("items", "dirty", "iv_solves", "iv_full", "iv_taylor", "iv_skipped", "fits",
                                  "fits_deferred", "epoch_us", "lv_books", "lv_full", "lv_taylor", "lv_skipped",
                                  "audits"))
        COUNTERS.max("audit_max_err_bp", counts["audit_max_err_bp"])
        COUNTERS.max("audit_level_max_err_bp", counts["audit_level_max_err_bp"])


class SurfaceStep(_KeyedStep):
    """Collects fits per underlying; one patch per epoch. Values are ExpiryFit, ExpiryGone
    and IndexPrice items, all of one venue and underlying."""

    logic: Optional[SurfaceLogic]

    def on_batch(self, values):
        if self.logic is None:
            first = values[0]
            venue, underlying = (first.fit.venue, first.fit.underlying) if type(first) is ExpiryFit \
                else (first.venue, first.underlying)  # ExpiryLadders, ExpiryGone, IndexPrice
            self.logic = self.make(SurfaceState(venue, underlying))
        self.logic.on_items(values)
        if self._due is None and self.logic.has_work():
            # fits come batched by the chain's epoch already: patch them at once rather than
            # an epoch later (that cost a whole epoch of latency)
            self._due = self.logic.now_ms()
        return [], StatefulBatchLogic.RETAIN

    def on_notify(self):
        self._due = None
        patch = self.logic.on_epoch()
        self._add_deltas(self.logic.counters, list(self.logic.counters))  # node_errors.<node>.<reason>: a few
        return ([patch] if patch is not None else []), StatefulBatchLogic.RETAIN

    def on_eof(self):
        return self.on_notify() if self.logic is not None else ([], StatefulBatchLogic.RETAIN)

    def notify_at(self):
        return self.clock.wall_at(self._due) if self._due is not None else None


def chain_settings(config: Config) -> dict:
    """ChainLogic's keyword arguments from graph.toml (all but the budget and the clock)."""
    c = config.chain
    return dict(epoch_ms=config.runtime.epoch_ms, fit_interval_ms=c.fit_interval_ms, min_quotes=c.min_quotes,
                max_rel_spread=c.max_rel_spread, skip_bp=c.skip_bp,
                approx_bp=c.approx_bp, taylor2_bp=c.taylor2_bp, change_bp=c.change_bp,
                fit_change_bp=c.fit_change_bp, refit_forward_bp=c.refit_forward_bp, audit_every=c.audit_every,
                venue_stale_ms=config.consolidation.venue_stale_ms, level_depth=c.level_depth,
                sizes_contracts=c.sizes_contracts)


def chain_builder(config: Config, clock: FlowClock):
    settings = chain_settings(config)
    now_ms = clock.now_ms
    # The fit budget is per worker, as graph.toml documents: bytewax runs each worker of a
    # process on its own thread and builds a key's logic on the worker that owns the key.
    budgets = threading.local()

    def make(state: ChainState) -> ChainLogic:
        budget = getattr(budgets, "budget", None)
        if budget is None:
            budget = budgets.budget = FitBudget(config.chain.fits_per_epoch)
        return ChainLogic(state, budget=budget, now_ms=now_ms, **settings)

    def build(resume: Optional[ChainState]) -> ChainStep:
        return ChainStep(make, resume, clock)

    return build


def surface_builder(config: Config, clock: FlowClock):
    now_ms = clock.now_ms

    def make(state: SurfaceState) -> SurfaceLogic:
        return SurfaceLogic(state, nodes=config.nodes, tenors_days=config.surface.tenors_days,
                            drop_calendar_violators=config.surface.drop_calendar_violators,
                            repair_calendar=config.surface.repair_calendar, weekend_weight=config.surface.weekend_weight,
                            epoch_ms=config.runtime.epoch_ms, now_ms=now_ms)

    def build(resume: Optional[SurfaceState]) -> SurfaceStep:
        return SurfaceStep(make, resume, clock)

    return build
