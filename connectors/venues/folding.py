"""FoldingQueue: the bounded queue between a venue's socket thread and a slower dataflow.

Pending events for the same key FOLD into one exact event instead of piling up, so a slow
consumer gets fewer, larger updates and never a wrong book:

- book changes of one instrument merge into one change (later price levels override earlier
  ones; size 0 stays a delete) spanning the first prev_seq to the last seq; a snapshot followed
  by changes merges into one snapshot; a snapshot replaces whatever was pending;
- tickers and future prices keep the latest per instrument, index prices the latest per
  underlying;
- everything else (Instrument, FeedError, …) is kept, in order.

Applying the folded stream to an order book gives exactly the book the unfolded stream gives
(tests/connectors/venues/test_deribit_client.py checks it with hypothesis). A folded event keeps its queue
position (the first pending one's), so it is never later than without folding. Ordering that
matters is kept: a FeedError about an instrument seals its pending book, so a snapshot pushed
after the error is delivered after it.

Bounds: at most `max_slots` pending events and `max_levels` price levels per folded book.
Past them, push() answers "overflow" and keeps nothing of that book: the caller must resync
the instrument from a fresh snapshot. Folds, drops and overflows are counted, never silent.

Pure data structure: no I/O, no threads, no locks (the owner serialises access).
"""

from __future__ import annotations

import collections
from typing import Any, Optional

from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Ticker

APPENDED = "appended"
FOLDED = "folded"
OVERFLOW = "overflow"  # a book could not be kept: resync it from a fresh snapshot
DROPPED = "dropped"  # a ticker/index/future price beyond max_slots (the next one replaces it)


class _BookAcc:
    """A book event being folded: absolute sizes by price, insertion-ordered."""

    __slots__ = ("first", "kind", "seq", "prev_seq", "ts_exchange_ms", "ts_recv_ms", "bids", "asks")

    def __init__(self, ev: BookUpdate):
        self.first = ev
        self.kind = ev.kind
        self.seq = ev.seq
        self.prev_seq = ev.prev_seq
        self.ts_exchange_ms = ev.ts_exchange_ms
        self.ts_recv_ms = ev.ts_recv_ms
        if ev.kind == "snapshot":  # a snapshot holds only live levels
            self.bids = {px: sz for px, sz in ev.bids.tolist() if sz > 0}
            self.asks = {px: sz for px, sz in ev.asks.tolist() if sz > 0}
        else:
            self.bids = dict(ev.bids.tolist())
            self.asks = dict(ev.asks.tolist())

    def add(self, ev: BookUpdate) -> None:
        snapshot = self.kind == "snapshot"
        for side, levels in ((self.bids, ev.bids), (self.asks, ev.asks)):
            for px, sz in levels.tolist():
                if sz > 0 or not snapshot:
                    side[px] = sz  # a change keeps its deletes (size 0)
                else:
                    side.pop(px, None)  # deleting from a snapshot: the level is simply gone
        self.seq = ev.seq
        self.ts_exchange_ms = max(self.ts_exchange_ms, ev.ts_exchange_ms)
        self.ts_recv_ms = max(self.ts_recv_ms, ev.ts_recv_ms)

    def levels(self) -> int:
        return len(self.bids) + len(self.asks)

    def event(self) -> BookUpdate:
        f = self.first
        if self.kind == "snapshot":
            bids = tuple(sorted(self.bids.items(), reverse=True))
            asks = tuple(sorted(self.asks.items()))
        else:
            bids, asks = tuple(self.bids.items()), tuple(self.asks.items())
        return BookUpdate(f.venue, f.instrument, self.ts_exchange_ms, self.ts_recv_ms, self.seq, self.prev_seq,
                          self.kind, bids, asks)


class _Slot:
    __slots__ = ("ev", "acc", "key", "n")

    def __init__(self, ev: Any, key: Optional[tuple]):
        self.ev = ev  # None once discarded
        self.acc: Optional[_BookAcc] = None  # set when a book event has been folded into
        self.key = key
        self.n = 1  # source events represented


def _key(ev: Any) -> Optional[tuple]:
    t = type(ev)
    if t is BookUpdate:
        return ("B", ev.instrument)
    if t is Ticker:
        return ("T", ev.instrument)
    if t is FuturePrice:
        return ("F", ev.instrument)
    if t is IndexPrice:
        return ("I", ev.venue, ev.underlying)
    return None


class FoldingQueue:
    """FIFO of events with per-key folding (see the module docstring). Not thread-safe."""

    def __init__(self, max_slots: int = 200_000, max_levels: int = 2_000):
        if max_slots < 1 or max_levels < 1:
            raise ValueError(f"FoldingQueue(max_slots={max_slots}, max_levels={max_levels}): both must be >= 1")
        self.max_slots = max_slots
        self.max_levels = max_levels
        self._slots: collections.deque[_Slot] = collections.deque()
        self._open: dict[tuple, _Slot] = {}  # key → its pending slot, while foldable
        self._live = 0  # slots with an event
        self.counters: collections.Counter = collections.Counter()

    def __len__(self) -> int:
        return self._live

    def push(self, ev: Any) -> str:
        """Add one event; returns APPENDED, FOLDED, OVERFLOW (books) or DROPPED (prices)."""
        c = self.counters
        c["pushed"] += 1
        key = _key(ev)
        if key is None:
            if type(ev) is FeedError and ev.instrument:
                self._open.pop(("B", ev.instrument), None)  # later book events go after the error
            return self._append(ev, None, force=True)
        slot = self._open.get(key)
        if slot is None:
            return self._append(ev, key)
        if key[0] != "B":
            slot.ev = ev  # latest wins
            slot.n += 1
            c["folded"] += 1
            c["folded." + type(ev).__name__] += 1
            return FOLDED
        if ev.kind == "snapshot":  # a snapshot makes everything pending before it moot
            slot.ev, slot.acc = ev, None
        else:
            pending = slot.acc if slot.acc is not None else slot.ev
            if ev.prev_seq != pending.seq:
                # Not a continuation (the caller did not check the chain): keep both, so the
                # consumer sees the same gap it would have seen unfolded.
                del self._open[key]
                return self._append(ev, key)
            if slot.acc is None:
                slot.acc = _BookAcc(slot.ev)
            slot.acc.add(ev)
            if slot.acc.levels() > self.max_levels:
                self._discard(slot)
                c["overflow"] += 1
                c["overflow.levels"] += 1
                return OVERFLOW
        slot.n += 1
        c["folded"] += 1
        c["folded.BookUpdate"] += 1
        return FOLDED

    def _append(self, ev: Any, key: Optional[tuple], force: bool = False) -> str:
        if self._live >= self.max_slots and not force:
            if key is not None and key[0] == "B":
                self.counters["overflow"] += 1
                self.counters["overflow.slots"] += 1
                return OVERFLOW
            self.counters["dropped"] += 1
            return DROPPED
        slot = _Slot(ev, key)
        self._slots.append(slot)
        self._live += 1
        if key is not None:
            self._open[key] = slot
        return APPENDED

    def _discard(self, slot: _Slot) -> None:
        if slot.ev is not None:
            slot.ev = slot.acc = None
            self._live -= 1
        if slot.key is not None and self._open.get(slot.key) is slot:
            del self._open[slot.key]

    def discard(self, instrument: str, kinds: str = "BTF") -> int:
        """Drop the pending events of `instrument` (kinds: B book, T ticker, F future price),
        e.g. a book about to be resynced or an instrument that expired. Returns how many."""
        n = 0
        for k in kinds:
            slot = self._open.get((k, instrument))
            if slot is not None and slot.ev is not None:
                n += slot.n
                self._discard(slot)
        self.counters["discarded"] += n
        return n

    def drain(self, max_items: int = 10_000) -> list:
        """Up to max_items events, oldest first; folded books are materialised here."""
        out: list = []
        slots = self._slots
        opened = self._open
        while slots and len(out) < max_items:
            slot = slots.popleft()
            if slot.ev is None:
                continue
            out.append(slot.acc.event() if slot.acc is not None else slot.ev)
            self._live -= 1
            if slot.key is not None and opened.get(slot.key) is slot:
                del opened[slot.key]
        self.counters["drained"] += len(out)
        return out

    def fold_ratio(self) -> float:
        """Events pushed per event drained so far (1.0 = no folding)."""
        drained = self.counters["drained"]
        return self.counters["pushed"] / drained if drained else 1.0
