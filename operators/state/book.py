"""Order-book state: L2 levels from snapshots and changes, and the integrity checks (a change
must chain from the last sequence number; the top must not be crossed).

  BookStore   many books as arrays — a chain's options, one store per expiry — updated a batch
              at a time by one compiled call (operators/kernels/books.py, whose docstring states
              the rules); the touch and any ladder are read with no sort.
  OrderBook   one book as price → size dicts, for whoever holds books one update at a time: the
              venue clients' integrity checks, replay folding, the naive baseline, tests.

Two implementations of one rule set, held equal by tests/operators/kernels/test_books.py (a batch
equals OrderBook one update at a time, and both equal a plain dict model). Why two: one 1-level
change to a 20-level book (timeit, 2026-12-06, a loaded machine) takes OrderBook.apply 1.9 µs and
a one-update BookStore batch ~60 µs — a dozen numpy calls of a few µs each, which a batch of
hundreds shares but a single update pays alone.

Pure state logic: no I/O, never imports connectors or flows, no numerics beyond the kernel.
Who acts on a failed check (the rule, connectors/venues/base.py): the venue client keeps an
OrderBook per book it reads and, on a gap or a crossed book, withholds that book (seq_gap
downstream) and resubscribes it for a fresh snapshot; nothing gapped or crossed is forwarded.
The chain step keeps its expiry's books in a BookStore and trusts that feed; its own apply finds
something only where no client stands in front (a replayed recording), and then the book stays
stale (withheld) until the next snapshot of it.

Why arrays for the chain (measured, bench/bench_engine.py --levels, docs/benchmarks.md): with level
vols on, reading each dirty book's ladder from dicts (a sort per side per read) and building
per-level Python tuples cost more than the level solves themselves.

Levels (OrderBook): every level a snapshot or change carries is kept (a change can uncover any of
them); `top(n)` reads the best n per side, `sides()` every live level of both, best first.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from operators.events import BookBatch, BookUpdate, FeedError, Instrument
from operators.kernels import books as kernel
from operators.kernels.books import CHANGE, NO_SEQ, REACH_ANY, SEQ_GAP, SNAPSHOT


class BookStore:
    """Books as rows of arrays (layout: operators/kernels/books.py). Rows are added in listing
    order and never move; `instruments[row]` says whose book a row is."""

    def __init__(self, levels_on: bool = False):
        self.instruments: list[Optional[Instrument]] = []
        self.levels_on = levels_on
        self._alloc(4, 16)

    def _alloc(self, rows_cap: int, levels_cap: int) -> None:
        n = len(self.instruments)
        old = getattr(self, "px", None)
        px, sz = np.full((2, rows_cap, levels_cap), math.nan), np.zeros((2, rows_cap, levels_cap))
        count = np.zeros((2, rows_cap), np.int64)
        last_seq = np.full(rows_cap, NO_SEQ, np.int64)
        stale = np.ones(rows_cap, bool)
        reach = np.zeros((2, rows_cap), np.int64)
        ladder = np.zeros(rows_cap, bool)
        if old is not None:
            cols = self.px.shape[2]
            px[:, :n, :cols], sz[:, :n, :cols] = self.px[:, :n], self.sz[:, :n]
            count[:, :n], last_seq[:n], stale[:n] = self.count[:, :n], self.last_seq[:n], self.stale[:n]
            reach[:, :n], ladder[:n] = self.reach[:, :n], self.ladder[:n]
        self.px, self.sz, self.count, self.last_seq, self.stale = px, sz, count, last_seq, stale
        self.reach, self.ladder = reach, ladder

    def __len__(self) -> int:
        return len(self.instruments)

    def add(self, instrument: Optional[Instrument]) -> int:
        """A new, empty, stale book (until its first snapshot); returns its row."""
        row = len(self.instruments)
        if row == self.px.shape[1]:
            self._alloc(2 * row, self.px.shape[2])
        self.instruments.append(instrument)
        self.reach[:, row] = REACH_ANY if self.levels_on else 0
        self.ladder[row] = self.levels_on
        return row

    @classmethod
    def of(cls, books) -> "BookStore":
        """One store holding OrderBooks' books, a row each in the order given (state migration:
        a chain snapshotted before the store resumes with its books' levels, seqs and staleness)."""
        store = cls()
        for book in books:
            row = store.add(book.instrument)
            if book.last_seq is not None:
                bids, asks = book.sides()
                store.apply([BookUpdate("", "", 0, 0, book.last_seq, None, "snapshot", bids, asks)], [row])
            store.stale[row] = book.stale
        return store

    def track_levels(self, on: bool) -> None:
        """Raise `ladder[row]` on what can move a chain's level vols (on), or never (off)."""
        n = len(self.instruments)
        self.levels_on = on
        self.reach[:, :n] = REACH_ANY if on else 0
        self.ladder[:n] = on

    def apply(self, updates: Sequence[BookUpdate], rows: Sequence[int], levels: Optional[list] = None
              ) -> tuple[list[FeedError], np.ndarray]:
        """Apply `updates` in order, update i to book `rows[i]`; returns the FeedErrors ("seq_gap":
        not applied; "crossed_book": applied; either leaves the book stale until its next
        snapshot) and the rows whose touch (best bid, best ask, staleness) changed.
        `levels`: the updates' bids and asks arrays in order (bids₀, asks₀, bids₁, …) when the
        caller has already gathered them."""
        n = len(updates)
        if levels is None:
            levels = []
            for u in updates:
                levels.append(u.bids)
                levels.append(u.asks)
        sides = np.fromiter(map(len, levels), np.int64, 2 * n)
        flat = np.concatenate(levels)  # the sides are levels × 2 arrays already (BookUpdate)
        kinds = np.fromiter((SNAPSHOT if u.kind == "snapshot" else CHANGE for u in updates), np.int64, n)
        seqs = np.fromiter((u.seq for u in updates), np.int64, n)
        prevs = np.fromiter((NO_SEQ if u.prev_seq is None else u.prev_seq for u in updates), np.int64, n)
        return self._apply(np.fromiter(rows, np.int64, n), kinds, seqs, prevs, sides, flat[:, 0], flat[:, 1],
                           lambda i: (updates[i].venue, updates[i].instrument, updates[i].ts_recv_ms))

    def apply_columns(self, batch: BookBatch, rows: np.ndarray) -> tuple[list[FeedError], np.ndarray]:
        """`apply` for a BookBatch, row i to book `rows[i]`: its columns go to the kernel as they are."""
        return self._apply(rows, batch.kind, batch.seq, batch.prev_seq, batch.sides, batch.px, batch.size,
                           lambda i: (batch.venue, batch.instruments[i], int(batch.ts_recv_ms[i])))

    def _apply(self, row_arr, kinds, seqs, prevs, sides, level_px, level_size, who) -> tuple[list[FeedError], np.ndarray]:
        """The compiled apply of n updates given as columns; who(i) → (venue, instrument,
        ts_recv_ms) of update i, asked only for the errors."""
        n = row_arr.shape[0]
        outcome, said_seq, said_px = np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 2))
        touched = np.empty(n, np.int64)
        # The offsets, the sums and the cheap bound on room are the kernel's (as numpy calls here they
        # were ~4 of the 14 µs an apply of one change took, 2026-12-07); when that bound does not fit,
        # the exact one per book, and more room if even that does not fit
        for room_checked in (False, True):
            k, n_errors = kernel.apply_batch(row_arr, kinds, seqs, prevs, sides, level_px, level_size, self.px,
                                             self.sz, self.count, self.last_seq, self.stale, self.reach, self.ladder,
                                             self.levels_on, outcome, said_seq, said_px, touched, room_checked)
            if k >= 0:
                break
            nrows, cap = self.count.shape[1], self.px.shape[2]
            grow = max(int((self.count[0] + np.bincount(row_arr, sides[0::2], nrows)).max(initial=0)),
                       int((self.count[1] + np.bincount(row_arr, sides[1::2], nrows)).max(initial=0)))
            if grow > cap:
                self._alloc(self.px.shape[1], max(grow, 2 * cap))
        errors = []
        if n_errors:
            for i in np.flatnonzero(outcome).tolist():
                venue, instrument, ts_recv_ms = who(i)
                if outcome[i] == SEQ_GAP:
                    errors.append(FeedError(venue, "seq_gap", f"prev_seq {_seq(int(prevs[i]))} != last seq "
                                            f"{_seq(int(said_seq[i]))}", ts_recv_ms, instrument))
                else:
                    errors.append(FeedError(venue, "crossed_book", f"best bid {said_px[i, 0]} >= best ask "
                                            f"{said_px[i, 1]}", ts_recv_ms, instrument))
        return errors, touched[:k]

    # ---------------------------------------------------------------- reading one book
    def best_bid(self, row: int) -> float:
        return float(self.px[0, row, 0]) if self.count[0, row] else math.nan

    def best_ask(self, row: int) -> float:
        return float(self.px[1, row, 0]) if self.count[1, row] else math.nan

    def side(self, row: int, side: int) -> list[tuple[float, float]]:
        """One side's live levels best first, as (price, size)."""
        c = int(self.count[side, row])
        return list(zip(self.px[side, row, :c].tolist(), self.sz[side, row, :c].tolist()))

    def mark_stale(self, row: int) -> None:
        """Withhold a book until its next snapshot (the venue client said it gapped)."""
        self.stale[row] = True
        if self.levels_on:
            self.ladder[row] = True


def _seq(value: int) -> Optional[int]:
    return None if value == NO_SEQ else value


def _best_live(levels: list, pick) -> float:
    """The best price among levels with a size (NaN if none): the slow way, for a snapshot
    whose best level has size 0."""
    live = [px for px, sz in levels if sz > 0]
    return pick(live) if live else math.nan


class OrderBook:
    """One instrument's book. Levels are absolute sizes; size 0 deletes a level.

    The best bid and ask are kept up to date as levels change (NaN on an empty side), so
    reading them costs nothing; only deleting the best level rescans that side. A snapshot is
    kept as the venue's levels ([price, size] lists) and turned into price → size dicts only
    when a change arrives (a grouped channel sends nothing but snapshots: a shock re-quoting thousands of
    books then costs one max and one min per book).
    """

    __slots__ = ("instrument", "_bids", "_asks", "_snap_bids", "_snap_asks", "last_seq", "stale",
                 "best_bid", "best_ask")

    def __init__(self, instrument: Optional[Instrument] = None):
        self.instrument = instrument
        self._bids: Optional[dict[float, float]] = {}
        self._asks: Optional[dict[float, float]] = {}
        self._snap_bids: list = []  # the last snapshot's [price, size] levels, while _bids is None
        self._snap_asks: list = []
        self.last_seq: Optional[int] = None
        self.stale = True  # until the first snapshot
        self.best_bid = math.nan
        self.best_ask = math.nan

    def __setstate__(self, state) -> None:
        """A book pickled with the ladder-tracking slots it once had resumes without them."""
        slots = state[1] if isinstance(state, tuple) else state
        for name, value in (slots or {}).items():
            if name in OrderBook.__slots__:
                setattr(self, name, value)

    @property
    def bids(self) -> dict[float, float]:
        if self._bids is None:
            self._materialise()
        return self._bids

    @property
    def asks(self) -> dict[float, float]:
        if self._asks is None:
            self._materialise()
        return self._asks

    def _materialise(self) -> None:
        # a snapshot holds live levels only (a size-0 level in one is simply absent)
        self._bids = {px: sz for px, sz in self._snap_bids if sz > 0}
        self._asks = {px: sz for px, sz in self._snap_asks if sz > 0}
        self._snap_bids = self._snap_asks = []

    def apply(self, update: BookUpdate) -> Optional[FeedError]:
        """Apply a snapshot or change; a FeedError ("seq_gap": not applied; "crossed_book":
        applied) leaves the book stale until its next snapshot."""
        if update.kind == "snapshot":
            bids, asks = update.bids.tolist(), update.asks.tolist()  # Python floats: the levels are read one by one
            self._bids = self._asks = None
            self._snap_bids, self._snap_asks = bids, asks
            if bids:
                top = max(bids)  # the highest price (levels compare by price first)
                self.best_bid = top[0] if top[1] > 0 else _best_live(bids, max)
            else:
                self.best_bid = math.nan
            if asks:
                top = min(asks)
                self.best_ask = top[0] if top[1] > 0 else _best_live(asks, min)
            else:
                self.best_ask = math.nan
            self.last_seq = update.seq
            self.stale = False
        else:
            if self.last_seq is None or update.prev_seq != self.last_seq:
                was_stale, self.stale = self.stale, True
                if was_stale:
                    return None  # already waiting for a snapshot: one error per gap
                return FeedError(update.venue, "seq_gap",
                                 f"prev_seq {update.prev_seq} != last seq {self.last_seq}",
                                 update.ts_recv_ms, update.instrument)
            if self._bids is None:
                self._materialise()
            bids, asks = self._bids, self._asks
            best_bid, best_ask = self.best_bid, self.best_ask
            rescan_bids = rescan_asks = False
            for px, sz in update.bids.tolist():
                if sz > 0:
                    bids[px] = sz
                    if not px <= best_bid:  # also when the side was empty (NaN)
                        best_bid = px
                elif bids.pop(px, None) is not None and px == best_bid:
                    rescan_bids = True
            for px, sz in update.asks.tolist():
                if sz > 0:
                    asks[px] = sz
                    if not px >= best_ask:
                        best_ask = px
                elif asks.pop(px, None) is not None and px == best_ask:
                    rescan_asks = True
            self.best_bid = (max(bids) if bids else math.nan) if rescan_bids else best_bid
            self.best_ask = (min(asks) if asks else math.nan) if rescan_asks else best_ask
            self.last_seq = update.seq
        if self.best_bid >= self.best_ask:  # False when a side is empty (NaN)
            self.stale = True
            return FeedError(update.venue, "crossed_book", f"best bid {self.best_bid} >= best ask {self.best_ask}",
                             update.ts_recv_ms, update.instrument)
        return None

    def top(self, n: int) -> tuple[tuple[tuple[float, float], ...], tuple[tuple[float, float], ...]]:
        """The best `n` levels per side, best first: (bids, asks) of (price, size)."""
        return (tuple(sorted(self.bids.items(), reverse=True)[:n]), tuple(sorted(self.asks.items())[:n]))

    def sides(self) -> tuple[list, list]:
        """Every live level, best first: (bids high → low, asks low → high) of (price, size).
        A book holding only its last snapshot is read from it, not turned into dicts."""
        if self._bids is None:
            return (sorted(((px, sz) for px, sz in self._snap_bids if sz > 0), reverse=True),
                    sorted((px, sz) for px, sz in self._snap_asks if sz > 0))
        return sorted(self._bids.items(), reverse=True), sorted(self._asks.items())
