"""The bytewax sink of market events (issue #15 part 4): a fixed set of partitions keyed by
surface (venue|underlying), each owning a MarketEventWriter (connectors/postgres/market_events.py)
that COPYs the rows into market_events on its own thread: the flow encodes each row's events
(one msgspec call, encode_row) and appends the row to a queue.

Items are (surface key, events) pairs, one per source batch of a surface (flows/routing.py
MarketEvents; flows/surface.py build_flow wires them here when graph.toml [sinks.postgres]
market_events is on), cut into rows of at most ROW_EVENTS events. Each partition numbers the
events it accepts, (seg, ord): seg is the partition's life (its start, wall ms x 1024 + its
index), ord counts; a replay reads a surface's events back in that order. Both are the
partition's recovery snapshot, which also waits for the durable hand-off
(PostgresWriter.durable), as connectors/postgres/sink.py does.

What a resumed partition does depends on its sources (build_flow sets `resends`):
- sources that send every event after their snapshot again (a replay of a recording or of the
  database): the life goes on at the snapshot's position, and what the killed life stored beyond
  it is removed first (MarketEventWriter rollback). The events come again, but not in the same
  order: routing joins a surface's events per chain key within a source batch, and a resumed
  source cuts its batches (and interleaves the surfaces of one partition) as the clock lets it, so
  numbering them again over the killed life's rows put other events at stored positions
  (tests/flows/test_kill_resume.py: 42 clashing positions in a CI run, 2026-12-07);
- live sources, which subscribe afresh and never send an event twice: a new life (seg). The
  killed life's events after its snapshot stay stored: they are what the venue sent.
Never imports flows.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Optional

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.postgres.market_events import MarketBatch, MarketEventWriter, encode_row
from connectors.postgres.runs import RunInfo
from connectors.postgres.writer import orphan_runs

log = logging.getLogger("volgraph.postgres")

# events per row of market_events (and per writer item) at most: a source batch of a surface (up to
# SOURCE_BATCH_MAX = 5,000 frames at full speed, a handful live) is cut into rows of this many. Measured
# 2026-12-06 with COPY of 300,000 seed-scale events (rows built, COPY, commit): rows of 500 cost the
# writer 0.67 us of CPU an event against 1.5 for rows of 10, and the largest row stays ~110 kB of msgpack (a
# database replay reads 40 a query: connectors/capture/db_replay.py PAGE_ROWS)
ROW_EVENTS = 500
# writer items buffered in memory while the database is away before they spill to disk (up to
# ROW_EVENTS each: at most 500,000 events, as 50,000 rows of ~10 events were before 2026-12-06)
MAX_BUFFER_ITEMS = 1_000


class _MarketPartition(StatefulSinkPartition):
    def __init__(self, writer: MarketEventWriter, seg: int, ord_: int, close_timeout_s: float,
                 handoff_timeout_s: float, orphans: list) -> None:
        self.writer = writer
        self.seg = seg
        self.ord = ord_
        self.close_timeout_s = close_timeout_s
        self.handoff_timeout_s = handoff_timeout_s
        self.orphans = orphans

    def write_batch(self, items: list) -> None:
        submit, seg, n, size = self.writer.submit, self.seg, self.ord, ROW_EVENTS
        for skey, events in items:  # one item per source batch of a surface, never one per event
            venue, underlying = skey.split("|", 1)
            for i in range(0, len(events), size):  # a row holds at most ROW_EVENTS
                chunk = events if len(events) <= size else events[i:i + size]
                try:  # encoded here, in the flow's thread (encode_row says why)
                    row = encode_row(venue, underlying, seg, n + i, chunk)
                except (TypeError, ValueError):  # not market events: the writer sets them aside, counted
                    row = MarketBatch(venue, underlying, seg, n + i, chunk)
                submit(row)
            n += len(events)
        self.ord = n

    def snapshot(self) -> tuple[int, int]:
        if not self.writer.durable(self.handoff_timeout_s):
            self.writer.errors["handoff_timeout"] += 1
            log.error("writer %s: market events of this epoch not yet stored or spilled after %.0f s; the snapshot "
                      "goes ahead (a kill now could lose them): check the database and the spill folder's disk",
                      self.writer.name, self.handoff_timeout_s)
        return (self.seg, self.ord)

    def close(self) -> None:
        for w in self.orphans:
            w.close(self.close_timeout_s)
        self.writer.close(self.close_timeout_s)


class MarketEventSink(FixedPartitionedSink):
    """`partitions` partitions (ev-0 …), each a MarketEventWriter. build_flow recognises it by
    `stores_market_events` and feeds it the sources' events, keyed by key_of."""

    stores_market_events = True
    consumes = ()  # none of the flow's outputs: build_flow wires the sources' events instead

    def __init__(self, dsn: str, *, run: RunInfo, partitions: int, spill_dir: str | os.PathLike, flush_ms: float,
                 batch_rows: int, handoff_timeout_s: float, retention_days: int, close_timeout_s: float = 10.0,
                 **writer_options: Any) -> None:
        if partitions < 1:
            raise ValueError(f"MarketEventSink partitions={partitions}: give ≥ 1 (runtime.processes × runtime.workers)")
        self.dsn = dsn
        self.run = run
        self.partitions = partitions
        self.options = dict(spill_dir=spill_dir, flush_ms=flush_ms, batch_rows=batch_rows,
                            retention_days=retention_days, **{"max_buffer_rows": MAX_BUFFER_ITEMS, **writer_options})
        self.close_timeout_s = close_timeout_s
        self.handoff_timeout_s = handoff_timeout_s
        self.writers: list[MarketEventWriter] = []  # for status, metrics (backlog) and tests
        # do the flow's sources send the events after their snapshot again on a resume? (build_flow
        # sets it from the sources' resends_after_resume; the module header says what it changes)
        self.resends = False

    @staticmethod
    def key_of(item) -> str:
        return item[0]

    def list_parts(self) -> list[str]:
        return [f"ev-{i}" for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[tuple]) -> _MarketPartition:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{step_id}-{for_part}")
        rollback = resume_state if resume_state is not None and self.resends else None
        if rollback is not None:  # the same life, from the snapshot's position
            seg, ord_ = rollback
        else:  # a new life of this partition: its own seg, after every earlier one of the run
            seg, ord_ = int(time.time() * 1000) * 1024 + int(for_part.rsplit("-", 1)[1]) % 1024, 0
        writer = MarketEventWriter(self.dsn, name=name, run=self.run, rollback=rollback, **self.options)
        orphans = [MarketEventWriter(self.dsn, name=name, run=other, **self.options)
                   for other in orphan_runs(self.options["spill_dir"], name, self.run.run_id)]
        self.writers.extend([writer, *orphans])
        return _MarketPartition(writer, seg, ord_, self.close_timeout_s, self.handoff_timeout_s, orphans)
