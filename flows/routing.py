"""The source side of the dataflow: each venue source's events grouped per chain key.

`BatchingSource` wraps a venue source (connectors/venues/) or a replay (connectors/capture/):
each batch it reads becomes one `ChainBatch` per expiry key (operators/items.py) — one bytewax
item per expiry per batch instead of one per message, since bytewax costs microseconds per
item per step — plus the index prices and StatusReports that go elsewhere. A BookBatch (a run of
book notifications in columns, operators/events.py) is split by expiry into one BookBatch per
ChainBatch, with no object per notification. It owns the instrument → chain-key routing built
from Instrument events. With market-event storage on
(`market=True`), the same loop also makes one `MarketEvents` item per surface per batch: the
events it routed (BookBatches as their BookUpdates), for connectors/postgres/market_sink.py. Which worker reads which
instruments is connectors/venues/placement.py's rule: a partition split per worker slot
(`deribit-BTC.w1of2`) salts its venue's chain keys so that bytewax runs each on the slot's own
worker (placement.routed_key). This module never parses and never computes anything about
volatility.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from itertools import repeat
from typing import Callable, Optional

import msgspec
import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.venues.placement import routed_key, slot_of_name
from flows.metrics import COUNTERS, STOP
from operators.events import (BookBatch, BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, StatusReport,
                              Ticker, CONSOLIDATED, ORDER_FREE, chain_key, expand_books, surface_key)
from operators.items import ChainBatch

_COMBINED = CONSOLIDATED + "|"


class MarketEvents(tuple):
    """(surface key, events): the market events one source batch routed to one surface
    (venue|underlying), in the order read per expiry key, each once (not the combined
    surface's copies), and the batch's index price of that surface last. What
    connectors/postgres/market_sink.py stores (its key_of reads item[0])."""

    __slots__ = ()


class BatchingSource(FixedPartitionedSource):
    """Wraps a source of events: groups each batch per expiry key, stamped with the flow time
    reading it began (the epoch it entered in), interleaves a StatusReport every interval,
    counts events in and feed errors by reason. market: also emit a MarketEvents item per
    surface per batch (graph.toml [sinks.postgres] market_events)."""

    def __init__(self, inner: FixedPartitionedSource, *, interval_ms: int, consolidate: bool,
                 now_ms: Callable[[], int], index_venue: str = "", market: bool = False):
        self.inner = inner
        self.interval_ms = interval_ms
        self.consolidate = consolidate
        self.index_venue = index_venue  # whose index the combined surface takes (consolidation.index_venue)
        self.now_ms = now_ms
        self.market = market

    def list_parts(self):
        return self.inner.list_parts()

    def build_part(self, step_id, for_part, resume_state):
        inner_state, routing = resume_state if isinstance(resume_state, _Resume) else (resume_state, None)
        part = _BatchingPartition(self.inner.build_part(step_id, for_part, inner_state), self.interval_ms,
                                  self.consolidate, self.now_ms, self.index_venue, self.market,
                                  slot_of_name(for_part))
        if routing is not None:
            part.route, part.expiries = routing
            part.route_group = {name: part.group_of(keys) for name, keys in part.route.items()}
        return part


class _Resume(tuple):
    """A partition's snapshot: (the wrapped source's own, (route, expiries)). The routing is
    built from Instrument events that a resumed source does not send again (they came before
    the snapshot), so without it every later book would be dropped as unknown_instrument."""

    __slots__ = ()


class _BatchingPartition(StatefulSourcePartition):
    def __init__(self, inner: StatefulSourcePartition, interval_ms: int, consolidate: bool,
                 now_ms: Callable[[], int], index_venue: str = "", market: bool = False,
                 slot: Optional[tuple[int, int]] = None):
        self.inner = inner
        self.slot = slot  # (worker slot, workers) this partition is read on, or None: keys unsalted
        self.consolidate = consolidate
        self.index_venue = index_venue
        self.market = market
        self.now_ms = now_ms
        # one report per process: the counters are process-wide, whatever the partition
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.interval_ms = interval_ms
        self.next_report_ms = 0
        # option instrument → its chain keys (its venue's, and the combined one), from Instrument events
        self.route: dict[str, tuple[str, ...]] = {}
        # the same as a small int per distinct keys, which a BookBatch's rows are split by
        self.route_group: dict[str, int] = {}
        self.group_keys: list[tuple[str, ...]] = []
        self._group_ids: dict[tuple[str, ...], int] = {}
        self.expiries: dict[tuple[str, str], set[str]] = {}  # (venue, underlying) → chain keys

    def next_batch(self):
        if STOP.is_set():
            raise StopIteration
        entered_ms = self.now_ms()
        events = self.inner.next_batch()
        out: list = []
        if events:
            # messages: a BookBatch is one per row
            COUNTERS.add("messages_in", len(events) + sum(len(e) - 1 for e in events if type(e) is BookBatch))
            groups: dict[str, list] = {}
            route = self.route
            index: dict[tuple[str, str], IndexPrice] = {}
            # BookBatches a chain may take as one (only order-free events between them); with storage
            # on, each on its own, so each instrument's stored events keep the order they came in
            books: list = []
            join = not self.market
            for e in events:
                kind = type(e)
                if kind is Ticker:  # the bulk: no list made per event
                    keys = route.get(e.instrument)
                    if keys is not None:
                        for key in keys:
                            group = groups.get(key)
                            if group is None:
                                groups[key] = [e]
                            else:
                                group.append(e)
                    continue
                if kind is BookBatch:  # a run of book notifications in columns
                    books.append(e)
                    if join:
                        continue
                if books and kind not in ORDER_FREE:
                    self._route_books(books, groups)
                    books = []
                    if kind is BookBatch:
                        continue
                if kind is BookUpdate:
                    keys = route.get(e.instrument)
                    if keys is not None:
                        for key in keys:
                            groups.setdefault(key, []).append(e)
                    else:
                        COUNTERS.add("errors.unknown_instrument")
                elif kind is Instrument:
                    if e.kind == "option":
                        keys = route[e.instrument] = self._keys(e.venue, e.underlying, e.expiry_ms)
                        self.route_group[e.instrument] = self.group_of(keys)
                        for key in keys:
                            groups.setdefault(key, []).append(e)
                elif kind is FuturePrice:
                    for key in self._keys(e.venue, e.underlying, e.expiry_ms):
                        groups.setdefault(key, []).append(e)
                elif kind is IndexPrice:
                    index[(e.venue, e.underlying)] = e  # the latest per batch is all that matters
                elif kind is FeedError:
                    COUNTERS.add(f"errors.{e.reason}")
                    for key in route.get(e.instrument, ()):
                        groups.setdefault(key, []).append(e)
                else:
                    out.append(e)
            if books:
                self._route_books(books, groups)
            # market events to store: each surface's expiry groups joined (list.extend: C, no Python per
            # event), copied before the index prices are appended. One item per surface per batch instead of
            # one per ChainBatch through two filter_maps and a merge (until 2026-12-05): on the seed-scale
            # workload (bench/bench_events.py, 2026-12-06) the writer gets 939 rows a run instead of ~43,000,
            # and these steps with the items dropped at the sink cost the flow no measurable throughput
            market = {} if self.market else None
            if market is not None:
                for key, evs in groups.items():
                    skey = key[:key.rindex("|")]
                    if skey.startswith(_COMBINED):
                        continue  # the combined surface's copies of the same events
                    stored = market.get(skey)
                    if stored is None:  # a copy: the group gets the index price after this
                        market[skey] = list(expand_books(evs))
                    else:
                        stored.extend(expand_books(evs))
            for (venue, underlying), e in index.items():
                out.append(e)
                if market is not None:
                    market.setdefault(surface_key(venue, underlying), []).append(e)
                for key in self.expiries.get((venue, underlying), ()):
                    groups.setdefault(key, []).append(e)
                # one venue's index for the combined surface and its chains: both venues' interleaved
                # made its index jump by > 5 bp ~100 times per 10 s (issue #14)
                if self.consolidate and venue == self.index_venue:
                    out.append(msgspec.structs.replace(e, venue=CONSOLIDATED))
                    for key in self.expiries.get((CONSOLIDATED, underlying), ()):
                        groups.setdefault(key, []).append(e)
            out.extend(ChainBatch(key, evs, entered_ms) for key, evs in groups.items())
            if market:
                out.extend(MarketEvents(item) for item in market.items())
        now = int(time.time() * 1000)
        if now >= self.next_report_ms:
            self.next_report_ms = now + self.interval_ms
            out.append(StatusReport(self.name, now, COUNTERS.started_ms, COUNTERS.snapshot()))
        return out

    def _route_books(self, books: list, groups: dict[str, list]) -> None:
        """BookBatches, joined into one, split by expiry: a BookBatch per chain key, appended to its group."""
        batch = books[0] if len(books) == 1 else BookBatch.concat(books)
        group = np.fromiter(map(self.route_group.get, batch.instruments, repeat(-1)), np.int64, len(batch))
        unknown = int(np.count_nonzero(group < 0))
        if unknown:
            COUNTERS.add("errors.unknown_instrument", unknown)
        for g, part in batch.split(group):
            for key in self.group_keys[g]:
                listed = groups.get(key)
                if listed is None:
                    groups[key] = [part]
                else:
                    listed.append(part)

    def group_of(self, keys: tuple[str, ...]) -> int:
        """The small int standing for these chain keys (route_group's values)."""
        group = self._group_ids.get(keys)
        if group is None:
            group = self._group_ids[keys] = len(self.group_keys)
            self.group_keys.append(keys)
        return group

    def _keys(self, venue: str, underlying: str, expiry_ms: int) -> tuple[str, ...]:
        # an expiry this slot reads runs on this slot's worker (it reads all of that expiry, by
        # placement); perpetuals (expiry 0, read by every slot) and the combined surface (fed by
        # every venue's slots) keep bytewax's hash routing
        key = chain_key(venue, underlying, expiry_ms)
        keys = [routed_key(key, *self.slot) if self.slot is not None and expiry_ms != 0 else key]
        self.expiries.setdefault((venue, underlying), set()).add(keys[0])
        if self.consolidate:
            keys.append(chain_key(CONSOLIDATED, underlying, expiry_ms))
            self.expiries.setdefault((CONSOLIDATED, underlying), set()).add(keys[1])
        return tuple(keys)

    def next_awake(self):
        inner = self.inner.next_awake()
        report = datetime.fromtimestamp(self.next_report_ms / 1000.0, tz=timezone.utc)
        # None means "poll again at once": keep it, or the report timer would throttle the feed
        return None if inner is None else min(inner, report)

    def snapshot(self):
        # copies: the maps keep growing after the snapshot is handed over (~6,000 entries: ~0.1 ms)
        expiries = {k: set(v) for k, v in self.expiries.items()}
        return _Resume((self.inner.snapshot(), (dict(self.route), expiries)))

    def close(self):
        self.inner.close()
