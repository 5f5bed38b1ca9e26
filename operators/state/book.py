"""Order-book state per instrument: L2 levels from snapshots and changes, the one
implementation of the integrity checks (a change must chain from the last sequence number; the
top must not be crossed), and its top-N levels.

Pure state logic: no I/O, no sockets, never imports connectors, no numerics beyond sorting.
Who acts on a failed check (the rule, connectors/venues/base.py): the venue client keeps an
OrderBook per book it reads and, on a gap or a crossed book, withholds that book (seq_gap
downstream) and resubscribes it for a fresh snapshot; nothing gapped or crossed is forwarded.
The chain step keeps one OrderBook per option of its expiry and trusts that feed; its own
apply() finds something only where no client stands in front (a replayed recording), and then
the book stays stale (withheld) until the next snapshot of it.

Levels: every level a snapshot or change carries is kept (a change can uncover any of them);
`top(n)` reads the best n per side, `sides()` every live level of both, best first.

Ladder tracking (the chain's level vols, docs/architecture.md §4.3): when `levels_on`, the book
raises `ladder_dirty` on a snapshot, on turning stale, and on a change at a price that can move
the chain's ladder or walks — a bid at or above `bid_floor`, an ask at or below `ask_cap` (the
last level the chain read; ±inf: any level). Off, the floors are ±inf the other way and never match.
"""

from __future__ import annotations

import math
from typing import Optional

from operators.events import BookUpdate, FeedError, Instrument


def _best_live(levels: tuple, pick) -> float:
    """The best price among levels with a size (NaN if none): the slow way, for a snapshot
    whose best level has size 0."""
    live = [px for px, sz in levels if sz > 0]
    return pick(live) if live else math.nan


class OrderBook:
    """One instrument's book. Levels are absolute sizes; size 0 deletes a level.

    The best bid and ask are kept up to date as levels change (NaN on an empty side), so
    reading them costs nothing; only deleting the best level rescans that side. A snapshot is
    kept as the venue's level tuples and turned into price → size dicts only when a change
    arrives (a grouped channel sends nothing but snapshots: a shock re-quoting thousands of
    books then costs one max and one min per book).
    """

    __slots__ = ("instrument", "_bids", "_asks", "_snap_bids", "_snap_asks", "last_seq", "stale",
                 "best_bid", "best_ask", "levels_on", "ladder_dirty", "bid_floor", "ask_cap")

    def __init__(self, instrument: Optional[Instrument] = None):
        self.instrument = instrument
        self._bids: Optional[dict[float, float]] = {}
        self._asks: Optional[dict[float, float]] = {}
        self._snap_bids: tuple = ()  # the last snapshot's levels, while _bids is None
        self._snap_asks: tuple = ()
        self.last_seq: Optional[int] = None
        self.stale = True  # until the first snapshot
        self.best_bid = math.nan
        self.best_ask = math.nan
        self.track_levels(False)

    def track_levels(self, on: bool) -> None:
        """Raise `ladder_dirty` on what can move the chain's level vols (on), or never (off)."""
        self.levels_on = on
        self.ladder_dirty = on
        self.bid_floor = -math.inf if on else math.inf  # until the chain has read the book: any level
        self.ask_cap = math.inf if on else -math.inf

    def __setstate__(self, state) -> None:
        """A book pickled before ladder tracking existed resumes with it off."""
        self.track_levels(False)
        slots = state[1] if isinstance(state, tuple) else state
        for name, value in (slots or {}).items():
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
        self._snap_bids = self._snap_asks = ()

    def apply(self, update: BookUpdate) -> Optional[FeedError]:
        """Apply a snapshot or change; a FeedError ("seq_gap": not applied; "crossed_book":
        applied) leaves the book stale until its next snapshot."""
        if update.kind == "snapshot":
            bids, asks = update.bids, update.asks
            self._bids = self._asks = None
            self._snap_bids, self._snap_asks = bids, asks
            if bids:
                top = max(bids)  # the highest price (tuples compare by price first)
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
            self.ladder_dirty = self.levels_on
        else:
            if self.last_seq is None or update.prev_seq != self.last_seq:
                was_stale, self.stale = self.stale, True
                if was_stale:
                    return None  # already waiting for a snapshot: one error per gap
                self.ladder_dirty = self.levels_on
                return FeedError(update.venue, "seq_gap",
                                 f"prev_seq {update.prev_seq} != last seq {self.last_seq}",
                                 update.ts_recv_ms, update.instrument)
            if self._bids is None:
                self._materialise()
            bids, asks = self._bids, self._asks
            best_bid, best_ask = self.best_bid, self.best_ask
            rescan_bids = rescan_asks = False
            # one comparison per level: a change beyond the ladder's last level moves no level vol
            floor, cap = self.bid_floor, self.ask_cap
            ladder = False
            for px, sz in update.bids:
                if px >= floor:
                    ladder = True
                if sz > 0:
                    bids[px] = sz
                    if not px <= best_bid:  # also when the side was empty (NaN)
                        best_bid = px
                elif bids.pop(px, None) is not None and px == best_bid:
                    rescan_bids = True
            for px, sz in update.asks:
                if px <= cap:
                    ladder = True
                if sz > 0:
                    asks[px] = sz
                    if not px >= best_ask:
                        best_ask = px
                elif asks.pop(px, None) is not None and px == best_ask:
                    rescan_asks = True
            self.best_bid = (max(bids) if bids else math.nan) if rescan_bids else best_bid
            self.best_ask = (min(asks) if asks else math.nan) if rescan_asks else best_ask
            self.last_seq = update.seq
            if ladder:
                self.ladder_dirty = True
        if self.best_bid >= self.best_ask:  # False when a side is empty (NaN)
            self.stale = True
            self.ladder_dirty = self.levels_on
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
            return (sorted((lv for lv in self._snap_bids if lv[1] > 0), reverse=True),
                    sorted(lv for lv in self._snap_asks if lv[1] > 0))
        return sorted(self._bids.items(), reverse=True), sorted(self._asks.items())
