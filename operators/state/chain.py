"""Chain state per (underlying, expiry): quotes in, forward and implied vols, SVI fits out.

Keyed by `chain_key(venue, underlying, expiry_ms)`. Items only mark strikes dirty; once per epoch
(`epoch_ms`) the step solves the dirty strikes' IVs in one vectorised call (all strikes
when the forward moved), and refits SVI when the smile changed, at most once per
`fit_interval_ms`, warm-started from the last fit and within a per-worker fit budget.

Vol at size ([chain] level_depth, sizes_contracts; off when both are empty): every book's best
levels per side and its walks to each size are solved too, on the book's own side (call or
put), with the touch's machinery: a change that can move a book's ladder dirties that book only
(BookStore.ladder), its changed prices are solved in one batched call per epoch, and a
forward move re-plans every level through skip / Taylor / solve (docs/architecture.md §4.3).

State logic only: no I/O, no sockets, no SQL. Time is injected (`now_ms`) so tests drive
epochs without sleeping.
"""

from __future__ import annotations

import math
import time
from dataclasses import MISSING, dataclass, field, fields
from itertools import repeat
from typing import Callable, Iterable, Optional

import numpy as np

from operators.kernels import forward as fwd
from operators.kernels import iv, levels, small_moves, svi
from operators.state.book import BookStore
from operators.kernels.books import REACH_ANY
from operators.events import (BookBatch, BookUpdate, ChainUpdate, FeedError, FuturePrice, IndexPrice, Instrument,
                              SmileFit, Ladders, Ticker, chain_key)

MS_PER_YEAR = 365.0 * 86_400_000.0  # ACT/365, to the millisecond
_VENUE_FIELDS = ("call_bid_venue", "call_ask_venue", "put_bid_venue", "put_ask_venue")
# From this many books touched in one apply, their quotes are set in one vectorised pass (_apply_books),
# below it one by one (_touch_one_by_one): the pass costs ~90 µs of numpy calls whatever its size. One
# on_items of n snapshots on a 1,522-book chain (2026-12-07 18:40 UTC, min of 5 × 40, two rounds each):
# 16 books 107 µs one by one / 199 vectorised, 32: 134 / 131, 64: 216 / 179, 1,500: 4,184 / 1,980.
TOUCHES_VECTORISED = 32


def warm_up() -> None:
    """Compile (or load from the numba cache) every kernel an epoch runs, before market data:
    a JIT compile holds the GIL for long (the feed's heartbeats must not wait on it)."""
    from operators.kernels import analytics, books, quoted

    books.warm_up()
    iv.warm_up()
    levels.warm_up()
    small_moves.warm_up()
    svi.warm_up()
    analytics.warm_up()
    quoted.warm_up()


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
    # option instrument → (slot, is_call); the L2 books, a row each (book_slot, book_names below).
    # A consolidated chain holds the same (strike, type) from several venues: `legs` lists them,
    # and the best fresh quote wins.
    options: dict[str, tuple[int, bool]] = field(default_factory=dict)
    store: BookStore = field(default_factory=BookStore)
    legs: dict[tuple[int, bool], list[str]] = field(default_factory=dict)
    venue_seen_ms: dict[str, int] = field(default_factory=dict)  # last event per venue (freshness)
    stale_venues: frozenset = frozenset()
    # venue giving the best bid / ask per slot, calls and puts ("" = none)
    # (object arrays of str, so a batch of touches sets them in one indexing each)
    call_bid_venue: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    call_ask_venue: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    put_bid_venue: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    put_ask_venue: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
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
    # Level vols (vol at size). Books in listing order (book_slot: option → its store row). Per [bid, ask],
    # row and column: the first level_depth columns are level prices, then one per size the
    # price of walking the side to it (operators/kernels/levels.py); NaN = none. Their solve
    # state is the touch's (x0, s0, s1, s2, s above), on the book's own side. lv_config: the
    # (level_depth, sizes) the arrays are laid out for.
    book_names: list[str] = field(default_factory=list)
    book_slot: dict[str, int] = field(default_factory=dict)
    lv_config: tuple = (0, ())
    lv_changed: set[int] = field(default_factory=set)  # rows whose levels changed since the last ChainUpdate
    lv_solved_forward: Optional[float] = None
    lv_sent_ms: int = 0  # flow time ladders were last sent (with a fit or alone)
    lv_strike: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lv_call: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    lv_stale: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # per row, what a ladder says of its book besides the levels: instrument, venue, "C"/"P"
    # (object arrays) and contract size, so a ladder takes its rows' in one indexing each
    lv_name: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    lv_venue: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    lv_type: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    lv_contract: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lv_px: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))
    lv_size: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))  # level sizes, contracts
    lv_x0: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))
    lv_s0: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))
    lv_s1: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))
    lv_s2: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))
    lv_s: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))
    lv_iv_sent: np.ndarray = field(default_factory=lambda: np.zeros((2, 0, 0)))  # vols in the last ChainUpdate

    def __setstate__(self, state: dict) -> None:
        """A state snapshotted before a field existed resumes with that field's default; one
        snapshotted with a dict of OrderBooks (before the BookStore) with those books as rows."""
        state.pop("lv_dirty", None)  # now the store's ladder flags
        old = state.pop("books", None)
        if old is not None and "store" not in state:
            names = state.get("book_names") or []
            names = names if sorted(names) == sorted(old) else list(old)
            state["store"] = BookStore.of(old[name] for name in names)
            state["book_names"], state["book_slot"] = names, {name: row for row, name in enumerate(names)}
            state["lv_config"] = None  # rows may have moved: lay the level arrays out again
        for f in fields(self):
            if f.name not in state:
                state[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
        for name in _VENUE_FIELDS:  # lists of str until 2026-12-07
            if isinstance(state[name], list):
                state[name] = np.array(state[name], object)
        self.__dict__.update(state)

    def slot_of(self, strike: float) -> int:
        idx = self.slot.get(strike)
        if idx is None:
            idx = self.slot[strike] = len(self.strikes)
            self.strikes.append(strike)
            self.strike_arr = np.append(self.strike_arr, strike)
            self.call_bid, self.call_ask, self.put_bid, self.put_ask = (
                np.append(a, math.nan) for a in (self.call_bid, self.call_ask, self.put_bid, self.put_ask))
            for name in _VENUE_FIELDS:
                setattr(self, name, np.append(getattr(self, name), np.array([""], object)))
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
                 refit_forward_bp: float, audit_every: int, venue_stale_ms: int, level_depth: int,
                 sizes_contracts: Iterable[float]):
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
        self.level_depth = int(level_depth)  # vol at size: levels per side, and the sizes walked
        self.sizes_contracts = tuple(float(q) for q in sizes_contracts)
        self.sizes_arr = np.array(self.sizes_contracts, np.float64)
        self.lv_width = self.level_depth + len(self.sizes_contracts)  # 0 = level vols off
        self.errors: list[FeedError] = []
        self.between: list[Ladders] = []  # ladders taken between fits, for the step to send
        self._solo: Optional[tuple] = None  # see _solo_legs; rebuilt when options are added
        self.epochs = 0
        self.counters = {"items": 0, "dirty": 0, "iv_solves": 0, "iv_full": 0, "iv_taylor": 0, "iv_skipped": 0,
                         "fits": 0, "fits_deferred": 0, "epoch_us": 0, "audits": 0, "audit_max_err_bp": 0.0,
                         "lv_books": 0, "lv_full": 0, "lv_taylor": 0, "lv_skipped": 0, "audit_level_max_err_bp": 0.0}
        self._configure_levels()

    def _configure_levels(self) -> None:
        """Lay the level arrays out for this logic's (level_depth, sizes); a state resumed under
        another layout (or none) starts its level vols over: every book is read again."""
        s = self.state
        config = (self.level_depth, self.sizes_contracts)
        on = self.lv_width > 0
        if s.lv_config != config:
            s.lv_config = config
            s.lv_strike, s.lv_call = np.zeros(0), np.zeros(0, bool)
            s.lv_name, s.lv_venue, s.lv_type = (np.zeros(0, object) for _ in range(3))
            s.lv_contract = np.zeros(0)
            s.lv_stale = np.zeros(0, bool)
            s.lv_px = s.lv_size = s.lv_x0 = s.lv_s0 = s.lv_s1 = s.lv_s2 = s.lv_s = s.lv_iv_sent = None
            s.lv_solved_forward = None
            s.lv_changed = set()
            s.store.track_levels(on)  # on: every book is read again
        self._grow_levels()

    def _grow_levels(self) -> None:
        """Rows for books listed since the arrays were last laid out (NaN: nothing solved)."""
        s = self.state
        n, have = len(s.book_names), s.lv_strike.size
        if not self.lv_width:
            return
        if s.lv_name.size < n:  # the books' static columns (a state from before them: from row 0)
            books = s.store.instruments[s.lv_name.size:n]
            s.lv_name, s.lv_venue, s.lv_type = (
                np.append(a, np.array(vals, object)) for a, vals in
                ((s.lv_name, s.book_names[s.lv_name.size:n]), (s.lv_venue, [i.venue for i in books]),
                 (s.lv_type, [i.option_type for i in books])))
            s.lv_contract = np.append(s.lv_contract, [float(i.contract_size) for i in books])
        if s.lv_px is not None and n == have:
            return
        add = n - have
        books = s.store.instruments[have:n]
        s.lv_strike = np.append(s.lv_strike, [float(i.strike) for i in books])
        s.lv_call = np.append(s.lv_call, np.array([i.option_type == "C" for i in books], bool))
        s.lv_stale = np.append(s.lv_stale, np.ones(add, bool))
        width, depth = self.lv_width, self.level_depth

        def grown(a, cols, fill):
            new = np.full((2, add, cols), fill)
            return new if a is None else np.concatenate([a, new], axis=1)

        s.lv_px, s.lv_x0, s.lv_s0, s.lv_s1, s.lv_s2, s.lv_s, s.lv_iv_sent = (
            grown(a, width, math.nan) for a in (s.lv_px, s.lv_x0, s.lv_s0, s.lv_s1, s.lv_s2, s.lv_s, s.lv_iv_sent))
        s.lv_size = grown(s.lv_size, depth, 0.0)

    # ------------------------------------------------------------------ items: mark dirty
    def on_items(self, items: Iterable) -> None:
        """Apply events to the books and forward inputs; only marks what is dirty. Book updates
        are gathered and applied in one compiled call (operators/state/book.py), in arrival
        order; an item that acts on a book otherwise (a listing, a client's gap) applies the
        ones gathered before it first."""
        s = self.state
        slot, seen = s.book_slot, s.venue_seen_ms
        updates: list = []
        rows: list = []
        sides: list = []  # the updates' bids and asks tuples, in order
        n = 0
        for item in items:
            n += 1
            kind = type(item)
            if kind is BookUpdate:  # ~90 % of the traffic: keep this branch lean
                row = slot.get(item.instrument)
                if row is None:
                    self.errors.append(_unlisted(item.venue, item.ts_recv_ms, item.instrument))
                    continue
                updates.append(item)
                rows.append(row)
                sides.append(item.bids)
                sides.append(item.asks)
                if item.ts_recv_ms > seen.get(item.venue, 0):
                    seen[item.venue] = item.ts_recv_ms
                if item.ts_exchange_ms > s.ts_exchange_ms:
                    s.ts_exchange_ms = item.ts_exchange_ms
            elif kind is BookBatch:  # a run of book updates in columns, from a batch parser
                if updates:
                    self._apply_books(updates, rows, sides)
                    updates, rows, sides = [], [], []
                self._apply_columns(item)
            elif kind is Ticker:
                if item.underlying_px is not None and item.underlying_px != s.underlying_px:
                    s.underlying_px = item.underlying_px
                    s.forward_dirty = True
                if item.ts_exchange_ms > s.ts_exchange_ms:
                    s.ts_exchange_ms = item.ts_exchange_ms
            elif kind is Instrument:
                if item.kind == "option" and item.instrument not in s.options:
                    if updates:
                        self._apply_books(updates, rows, sides)
                        updates, rows, sides = [], [], []
                    leg = (s.slot_of(float(item.strike)), item.option_type == "C")
                    s.options[item.instrument] = leg
                    self._solo = None
                    s.book_slot[item.instrument] = s.store.add(item)
                    s.book_names.append(item.instrument)
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
                    if updates:
                        self._apply_books(updates, rows, sides)
                        updates, rows, sides = [], [], []
                    s.store.mark_stale(slot[item.instrument])
                    self._requote(*entry)
        if updates:
            self._apply_books(updates, rows, sides)
        self.counters["items"] += n

    def _apply_columns(self, batch: BookBatch) -> None:
        """on_items' rule for BookUpdates, for a BookBatch's rows: no object per row."""
        s = self.state
        rows = np.fromiter(map(s.book_slot.get, batch.instruments, repeat(-1)), np.int64, len(batch))
        if rows.min(initial=0) < 0:  # a book before its listing: said per book, the rest applied
            for i in np.flatnonzero(rows < 0).tolist():
                self.errors.append(_unlisted(batch.venue, int(batch.ts_recv_ms[i]), batch.instruments[i]))
            known = rows >= 0
            parts = batch.split(np.where(known, 0, -1))
            if not parts:
                return
            batch, rows = parts[0][1], rows[known]
        seen = int(batch.ts_recv_ms.max())
        if seen > s.venue_seen_ms.get(batch.venue, 0):
            s.venue_seen_ms[batch.venue] = seen
        newest = int(batch.ts_exchange_ms.max())
        if newest > s.ts_exchange_ms:
            s.ts_exchange_ms = newest
        self._touched(*s.store.apply_columns(batch, rows))

    def _apply_books(self, updates: list, rows: list, sides: list) -> None:
        """Apply gathered book updates; requote the strikes whose book's touch moved (most
        changes are below the touch: nothing to requote)."""
        self._touched(*self.state.store.apply(updates, rows, sides))

    def _touched(self, errors: list, touched: np.ndarray) -> None:
        """After an apply: keep its errors, requote the strikes whose book's touch moved."""
        s = self.state
        store = s.store
        if errors:
            self.errors += errors
        if not touched.size:
            return
        if self._solo is None:
            self._solo_legs()
        if touched.size < TOUCHES_VECTORISED:
            self._touch_one_by_one(touched.tolist())
            return
        slots = self._solo[0][touched]
        if s.stale_venues:
            slots[:] = -1  # a silent venue is left out: every strike's venues compared again
        solo = slots >= 0
        if not solo.all():
            names, options, requote = s.book_names, s.options, self._requote
            for row in touched[~solo].tolist():
                requote(*options[names[row]])
        if not solo.any():
            return
        # a book that is its (strike, type)'s only one: its top is the quote (a stale one quotes
        # nothing), set for all such books of the batch at once — a shock touches every book, and
        # per book in Python this cost ~3 µs each (2026-12-07)
        rows_arr, idx = touched[solo], slots[solo]
        live = ~store.stale[rows_arr]
        bid = np.where(live & (store.count[0, rows_arr] > 0), store.px[0, rows_arr, 0], math.nan)
        ask = np.where(live & (store.count[1, rows_arr] > 0), store.px[1, rows_arr, 0], math.nan)
        venue = self._solo[2][rows_arr]
        bid_venue, ask_venue = np.where(np.isnan(bid), "", venue), np.where(np.isnan(ask), "", venue)
        call = self._solo[1][rows_arr]
        for pick, bids, asks, bid_venues, ask_venues in (
                (call, s.call_bid, s.call_ask, s.call_bid_venue, s.call_ask_venue),
                (~call, s.put_bid, s.put_ask, s.put_bid_venue, s.put_ask_venue)):
            at = idx[pick]
            bids[at], asks[at], bid_venues[at], ask_venues[at] = bid[pick], ask[pick], bid_venue[pick], ask_venue[pick]
        s.dirty.update(idx.tolist())

    def _touch_one_by_one(self, rows: list) -> None:
        """_apply_books' rule for a few touched books, one at a time: below TOUCHES_VECTORISED its
        vectorised pass costs more than it saves."""
        s, store = self.state, self.state.store
        slots, calls, venues = self._solo
        for row in rows:
            idx = int(slots[row])
            if idx < 0 or s.stale_venues:
                self._requote(*s.options[s.book_names[row]])
                continue
            if store.stale[row]:
                bid = ask = math.nan
            else:
                bid, ask = store.best_bid(row), store.best_ask(row)
            venue = venues[row]
            if calls[row]:
                s.call_bid[idx], s.call_ask[idx] = bid, ask
                s.call_bid_venue[idx] = venue if bid == bid else ""
                s.call_ask_venue[idx] = venue if ask == ask else ""
            else:
                s.put_bid[idx], s.put_ask[idx] = bid, ask
                s.put_bid_venue[idx] = venue if bid == bid else ""
                s.put_ask_venue[idx] = venue if ask == ask else ""
            s.dirty.add(idx)

    def _solo_legs(self) -> None:
        """Per book row: its strike's slot when it is its (strike, type)'s only book (else -1),
        whether it is a call, and its venue."""
        s = self.state
        n = len(s.store)
        slots = np.full(n, -1, np.int64)
        for (idx, _), names in s.legs.items():
            if len(names) == 1:
                slots[s.book_slot[names[0]]] = idx
        calls = np.array([s.options[name][1] for name in s.book_names], bool)
        venues = np.array([i.venue for i in s.store.instruments], object)
        self._solo = (slots, calls, venues)

    def _requote(self, idx: int, is_call: bool) -> None:
        """Best bid and ask of one (strike, type) across its venues' books; a stale, crossed
        or silent venue is left out, never averaged in."""
        s = self.state
        store, slot = s.store, s.book_slot
        bid = ask = math.nan
        bid_venue = ask_venue = ""
        for name in s.legs[(idx, is_call)]:
            row = slot[name]
            venue = store.instruments[row].venue
            if store.stale[row] or venue in s.stale_venues:
                continue
            b, a = store.best_bid(row), store.best_ask(row)
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
            if self.lv_width:  # a silent venue's ladders are withheld too (and return with it)
                s.store.ladder[:len(s.store)] = True

    def take_errors(self) -> list:
        errors, self.errors = self.errors, []
        return errors

    def pending(self) -> bool:
        """Work owed: dirty quotes or forward, a smile owed a fit, or ladders changed since last
        sent (taken between fits within fit_interval_ms)."""
        s = self.state
        return (bool(s.dirty) or s.forward_dirty or s.smile_changed
                or bool(self.lv_width and s.lv_changed and s.last_fit is not None))

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
            out = self._epoch(flush)
            if not out and self.lv_width:
                self._ladders_between_fits()
            return out
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
            s.store.ladder[:] = False
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
        if self.lv_width and (s.store.ladder.any() or s.forward != s.lv_solved_forward):
            self._solve_levels(t)
        if self.audit_every and self.epochs % self.audit_every == 0:
            self._audit(t)
            self.counters["audits"] += 1
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

    def _ladders_between_fits(self) -> None:
        """The touch may stand still while deeper levels move: with no fit this epoch, the ladders
        that changed are taken on their own (`take_between`), at most once per fit_interval_ms
        since ladders were last sent — and only once the expiry has had a fit (its first fit
        carries every ladder, so a surface never sees ladders for a view it does not hold)."""
        s = self.state
        now = self.now_ms()
        if s.last_fit is None or s.forward is None or now - s.lv_sent_ms < self.fit_interval_ms:
            return
        t = t_years(s.expiry_ms, s.ts_exchange_ms or now)
        if t <= 0:
            return
        ladders = self.take_ladders(t)
        if ladders is not None:
            s.lv_sent_ms = now
            self.between.append(ladders)

    def take_between(self) -> list:
        """Ladders taken between fits since the last call (see _ladders_between_fits)."""
        out, self.between = self.between, []
        return out

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
        if self.lv_width and s.lv_px is not None and s.lv_px.size and s.lv_solved_forward == s.forward:
            exact, published = self.exact_level_vols(t), s.lv_s / math.sqrt(t)
            both = np.isfinite(exact) & np.isfinite(published)
            if both.any():
                err = float(np.max(np.abs(published[both] - exact[both]))) * 1e4
                for name in ("audit_level_max_err_bp", "audit_max_err_bp"):  # every published vol, levels too
                    self.counters[name] = max(self.counters[name], err)
            self.counters["audit_level_mismatch"] = self.counters.get("audit_level_mismatch", 0) + int(
                np.sum(np.isfinite(exact) != np.isfinite(published)))

    def exact_level_vols(self, t: float) -> np.ndarray:
        """An exact solve of every level and walk price (2, books, width), from the same prices
        and forward: what the published level vols must stay within 1 bp of."""
        s = self.state
        shape = s.lv_px.shape
        strikes = np.broadcast_to(s.lv_strike[None, :, None], shape).reshape(-1)
        calls = np.broadcast_to(s.lv_call[None, :, None], shape).reshape(-1)
        return iv.implied_vol_coin_flat(s.lv_px.reshape(-1), s.forward, np.ascontiguousarray(strikes), t,
                                        np.ascontiguousarray(calls)).reshape(shape)

    def published_level_vols(self, t: float) -> np.ndarray:
        """The level and walk vols as published now (2, books, width): decimals, NaN = none.
        Columns: level_depth levels best first, then one per size in sizes_contracts."""
        return self.state.lv_s / math.sqrt(t)

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
        strikes = s.strike_arr
        side = strikes >= s.forward
        dirty = np.zeros(strikes.size, bool)
        dirty[list(s.dirty)] = True
        # with the forward where it was, a clean slot's published vol stands as it is
        forward_moved = s.forward != s.solved_forward
        s.solved_forward = s.forward
        # one compiled pass (small_moves.solve_touch): as numpy steps it cost ~75 µs a tick (2026-12-07)
        solved, skipped, stepped, changed = small_moves.solve_touch(
            s.prices_coin(side), strikes, s.forward, np.log(s.forward / strikes), side, dirty, forward_moved, s.side,
            s.x0, s.s0, s.s1, s.s2, s.s, t, self.skip_bp, self.approx_bp, self.taylor2_bp, self.change_bp)
        self.counters["iv_skipped"] += skipped
        self.counters["iv_taylor"] += stepped
        self.counters["iv_full"] += solved
        self.counters["iv_solves"] += solved
        if changed:
            s.smile_changed = True

    def _read_books(self) -> np.ndarray:
        """Read the books whose ladders may have moved (BookStore.ladder): their level prices and
        walks straight from the store's arrays, how many levels each side's prices depend on (so
        the store flags only changes that matter) and which prices changed, in one compiled pass
        (levels.read_books; as numpy steps around a compiled walk it cost ~70 µs a tick, 2026-12-07);
        returns the changed prices' mask over (2, books, width)."""
        s = self.state
        store = s.store
        n = len(store)
        if s.lv_px.shape[1] < n:
            raise RuntimeError(f"chain {self.key}: {n} books in the store but level arrays for {s.lv_px.shape[1]}; "
                               "_grow_levels must run before _read_books (a bug in operators/state/chain.py)")
        stale = store.stale
        if s.stale_venues:
            stale = stale[:n] | np.isin(s.lv_venue[:n], list(s.stale_venues))
        full = np.zeros(s.lv_px.shape, bool)
        read, moved = levels.read_books(store.ladder, n, stale, store.px, store.sz, store.count, self.sizes_arr,
                                        s.lv_px, s.lv_size, s.lv_stale, store.reach, full, REACH_ANY)
        self.counters["lv_books"] += read
        s.lv_changed.update(moved.tolist())
        return full

    def _solve_levels(self, t: float) -> None:
        """Bring every published level and walk vol to within 1 bp of an exact solve: changed
        prices and prices with no vol yet are solved (one batched call); after a forward move
        the rest skip or take a Taylor step from their last exact point (as _solve)."""
        s = self.state
        self._grow_levels()
        full = self._read_books() if s.store.ladder.any() else np.zeros(s.lv_px.shape, bool)
        forward = s.forward
        forward_moved = forward != s.lv_solved_forward
        s.lv_solved_forward = forward
        shape = s.lv_px.shape
        x = np.log(forward / s.lv_strike)
        pxf, s0f, sf, x0f, s1f, s2f = (a.reshape(-1) for a in (s.lv_px, s.lv_s0, s.lv_s, s.lv_x0, s.lv_s1, s.lv_s2))
        fullf = full.reshape(-1)
        width = shape[2]
        if forward_moved:  # every level not solved now is re-planned from its exact point, in one pass
            skipped, stepped = small_moves.replan_levels(pxf, x0f, s0f, s1f, s2f, sf, fullf, x, s.lv_call, width,
                                                         math.sqrt(t), self.skip_bp, self.approx_bp, self.taylor2_bp)
            self.counters["lv_skipped"] += skipped
            self.counters["lv_taylor"] += stepped
        # the marked: solved exactly, or no vol where the price went (a level gone, a side thinner than a size)
        self.counters["lv_full"] += levels.solve_marked(pxf, fullf, forward, t, x, s.lv_strike, s.lv_call, width,
                                                        x0f, s0f, sf, s1f, s2f)

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
        # the last fit whole (its spline too: a warm spline rescue starts from it, svi.py SPLINE_BELOW)
        prev = s.last_fit
        fit = svi.fit_slice(k_strikes, s.forward, t, bid_iv[usable][order], ask_iv[usable][order], prev=prev)
        fit_ms = (time.perf_counter() - started) * 1000.0
        if fit is None:
            return []
        self.counters["fits"] += 1
        a, b, rho, m, sigma = fit.params[:5]
        smile = SmileFit(
            venue=s.venue, underlying=s.underlying, expiry_ms=s.expiry_ms, epoch=epoch,
            ts_exchange_ms=ts, ts_emit_ms=now, t_years=t, forward=s.forward,
            a=a, b=b, rho=rho, m=m, sigma=sigma, spline_lo_k=fit.params.spline_lo_k,
            spline_hi_k=fit.params.spline_hi_k, spline_w=fit.params.spline_w, rmse_vol_pts=_finite(fit.rmse_vol_pts),
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
            ask_venue=self._venues(s.call_ask_venue, s.put_ask_venue, usable, order),
            ladders=self.take_ladders(t) if self.lv_width else None)
        if chain.ladders is not None:
            s.lv_sent_ms = now
        return [(smile, chain)]

    def take_ladders(self, t: float) -> Optional[Ladders]:
        """The ladders that changed since the last taken (all on the first): a vol moved by
        change_bp or appeared or went, a level's price or size changed, or the book went stale or
        came back. Every fit's ChainUpdate carries them; a step that publishes ladders between
        fits (the touch may stand still while deeper levels move) takes them each epoch instead."""
        s = self.state
        if s.lv_px is None or not s.lv_px.size:
            return None
        changed = np.zeros(s.lv_px.shape[1], bool)
        if s.lv_changed:
            changed[np.fromiter(s.lv_changed, np.int64, len(s.lv_changed))] = True
            s.lv_changed.clear()
        # σ as shown (s / √T: passing time moves it too), compared and gathered in one compiled pass:
        # as numpy steps over the whole (2, books, width) arrays this was a sixth of a tick's time
        # (docs/benchmarks.md, "A chain tick's steps as compiled passes")
        rows, matrices = levels.ladder_rows(s.lv_px, s.lv_size, s.lv_s, s.lv_iv_sent, changed, math.sqrt(t),
                                            self.change_bp)
        if not rows.size:
            return None
        (bid_px, bid_size, bid_iv, ask_px, ask_size, ask_iv, bid_exec_px, bid_exec_iv, ask_exec_px,
         ask_exec_iv) = matrices
        return Ladders(
            level_depth=self.level_depth, sizes_contracts=self.sizes_contracts,
            instrument=tuple(s.lv_name[rows].tolist()), venue=tuple(s.lv_venue[rows].tolist()),
            strike=tuple(s.lv_strike[rows].tolist()), option_type=tuple(s.lv_type[rows].tolist()),
            contract_size=tuple(s.lv_contract[rows].tolist()), stale=tuple(s.lv_stale[rows].tolist()),
            bid_px=bid_px, bid_size_contracts=bid_size, bid_iv=bid_iv, ask_px=ask_px, ask_size_contracts=ask_size,
            ask_iv=ask_iv, bid_exec_px=bid_exec_px, bid_exec_iv=bid_exec_iv, ask_exec_px=ask_exec_px,
            ask_exec_iv=ask_exec_iv)

    def _venues(self, calls: np.ndarray, puts: np.ndarray, usable: np.ndarray, order: np.ndarray) -> tuple[str, ...]:
        # one indexing of the object arrays: 15–26 µs a call on 340 strikes, against 29–48 µs picking per
        # strike in Python (2026-12-07, timeit, interleaved; two calls a fit)
        idx = np.flatnonzero(usable)[order]
        return tuple(np.where(self.state.side[idx], calls[idx], puts[idx]).tolist())


def _unlisted(venue: str, ts_recv_ms: int, instrument: str) -> FeedError:
    return FeedError(venue, "unknown_instrument", "book update before the instrument was listed", ts_recv_ms,
                     instrument)


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _opt_tuple(a: np.ndarray) -> tuple:
    """Floats, None where not finite: the contract's "a value that does not exist"."""
    return tuple(np.where(np.isfinite(a), a, None).tolist())


def _opt(x) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(x) else None


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else -1.0
