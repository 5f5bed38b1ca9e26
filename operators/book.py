"""Order-book state per instrument: L2 levels from snapshots and changes, gap detection,
and the top-N Quote view of it.

The chain step keeps one OrderBook per option of its expiry. Pure state logic: no I/O,
no sockets, no numerics beyond sorting. A sequence gap or a crossed book makes the book stale: its Quote says so and the chain
withholds that strike until a fresh snapshot arrives (the connector resubscribes).
"""

from __future__ import annotations

from typing import Optional

from operators.events import BookUpdate, FeedError, Instrument, Quote


class OrderBook:
    """One instrument's book. Levels are absolute sizes; size 0 deletes a level."""

    __slots__ = ("instrument", "bids", "asks", "last_seq", "stale", "depth")

    def __init__(self, depth: int, instrument: Optional[Instrument] = None):
        self.instrument = instrument
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.last_seq: Optional[int] = None
        self.stale = True  # until the first snapshot
        self.depth = depth

    def apply(self, update: BookUpdate) -> Optional[FeedError]:
        """Apply a snapshot or change; returns a FeedError when the chain broke or the book is bad."""
        if update.kind == "snapshot":
            self.bids = {px: sz for px, sz in update.bids if sz > 0}
            self.asks = {px: sz for px, sz in update.asks if sz > 0}
            self.last_seq = update.seq
            self.stale = False
        else:
            if self.last_seq is None or update.prev_seq != self.last_seq:
                was_stale, self.stale = self.stale, True
                if was_stale:
                    return None  # already waiting for a snapshot: one error per gap
                return FeedError(update.venue, "seq_gap",
                                 f"prev_change_id {update.prev_seq} != last change_id {self.last_seq}",
                                 update.ts_recv_ms, update.instrument)
            for px, sz in update.bids:
                if sz > 0:
                    self.bids[px] = sz
                else:
                    self.bids.pop(px, None)
            for px, sz in update.asks:
                if sz > 0:
                    self.asks[px] = sz
                else:
                    self.asks.pop(px, None)
            self.last_seq = update.seq
        if self.bids and self.asks and max(self.bids) >= min(self.asks):
            self.stale = True
            return FeedError(update.venue, "crossed_book",
                             f"best bid {max(self.bids)} >= best ask {min(self.asks)}",
                             update.ts_recv_ms, update.instrument)
        return None

    def quote(self, update: BookUpdate) -> Optional[Quote]:
        inst = self.instrument
        if inst is None or inst.kind != "option":
            return None
        bids = tuple(sorted(self.bids.items(), reverse=True)[: self.depth])
        asks = tuple(sorted(self.asks.items())[: self.depth])
        return Quote(update.venue, inst.instrument, inst.underlying, inst.expiry_ms, float(inst.strike),
                     inst.option_type, update.ts_exchange_ms, update.ts_recv_ms, bids, asks, self.stale)
