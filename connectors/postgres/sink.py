"""The bytewax sink: a fixed set of partitions, each owning a PostgresWriter (its own thread
and connection), keyed by surface so one surface's rows are written in order by one writer.

Stores SmileFit, SurfacePatch and SurfaceSnapshot events and counts the others as ignored;
a patch's vol-at-size ladders (ExpiryView.ladders) go to table depth_views (a row per view, the
books as arrays; SQL view depth_vol_books: a row per book) only with depth_vols (graph.toml
[sinks.postgres] depth_vols), else they are dropped here.
Every row is written under the sink's run (connectors/postgres/runs.py RunInfo), registered in
the `runs` table when a writer first connects. flush_ms, batch_rows, handoff_timeout_s, depth_vols, spill_dir and
partitions are required keywords: their defaults live in graph.toml ([sinks.postgres],
runtime.data_dir, runtime.processes × runtime.workers) and nowhere else.

The durable hand-off: a partition's snapshot() — which bytewax takes when it closes an epoch,
before it records that epoch as done — returns only once every row handed to it is in
PostgreSQL or in an fsync'd spill file (PostgresWriter.durable). With idempotent writes that
makes the rows exactly-once after any kill: what the resumed flow emits again is either
already stored (a no-op) or was never accepted. The only module here that imports bytewax.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Callable, Optional

import msgspec
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.postgres.runs import RunInfo
from connectors.postgres.writer import PostgresWriter, orphan_runs
from operators.events import SmileFit, SurfacePatch, surface_key

log = logging.getLogger("volgraph.postgres")


class _PostgresPartition(StatefulSinkPartition):
    def __init__(self, writer: PostgresWriter, close_timeout_s: float, handoff_timeout_s: float,
                 orphans: list[PostgresWriter], on_handoff: Optional[Callable[[float], None]],
                 depth_vols: bool) -> None:
        self.on_handoff = on_handoff
        self.depth_vols = depth_vols
        self.writer = writer
        self.close_timeout_s = close_timeout_s
        self.handoff_timeout_s = handoff_timeout_s
        self.orphans = orphans  # writers draining earlier runs' spill files of this partition

    def write_batch(self, items: list) -> None:
        submit = self.writer.submit
        for item in items:
            if not self.depth_vols and type(item) is SurfacePatch:
                item = _without_ladders(item)
            submit(item)

    def snapshot(self) -> None:
        started = time.monotonic()
        done = self.writer.durable(self.handoff_timeout_s)
        if self.on_handoff is not None:
            self.on_handoff(time.monotonic() - started)
        if not done:
            self.writer.errors["handoff_timeout"] += 1
            log.error("writer %s: rows of this epoch not yet stored or spilled after %.0f s; the snapshot goes "
                      "ahead (a kill now could lose them): check the database and the spill folder's disk",
                      self.writer.name, self.handoff_timeout_s)
        return None  # nothing to resume: the writer's own spill files carry what is not yet written

    def close(self) -> None:
        for w in self.orphans:
            w.close(self.close_timeout_s)
        self.writer.close(self.close_timeout_s)


def _without_ladders(patch: SurfacePatch) -> SurfacePatch:
    """The patch without its views' ladders (the same object when it has none)."""
    if all(v.ladders is None for v in patch.expiries):
        return patch
    return msgspec.structs.replace(patch, expiries=tuple(
        v if v.ladders is None else msgspec.structs.replace(v, ladders=None) for v in patch.expiries))


class PostgresSink(FixedPartitionedSink):
    """`partitions` partitions (pg-0 …), each a PostgresWriter; an item goes to the partition
    of its surface (key_of). Stores SmileFit, SurfacePatch and SurfaceSnapshot events, ignores
    others (counted). The flow hands it only what it `consumes`, keyed by key_of
    (flows/surface.py)."""

    consumes = (SmileFit, SurfacePatch)

    def __init__(
        self,
        dsn: str,
        *,
        run: RunInfo,
        partitions: int,
        spill_dir: str | os.PathLike,
        flush_ms: float,
        batch_rows: int,
        handoff_timeout_s: float,
        close_timeout_s: float = 10.0,
        on_handoff: Optional[Callable[[float], None]] = None,
        depth_vols: bool,
        **writer_options: Any,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"PostgresSink partitions={partitions}: give ≥ 1 (runtime.processes × runtime.workers)")
        self.dsn = dsn
        self.run = run
        self.partitions = partitions
        self.options = dict(spill_dir=spill_dir, flush_ms=flush_ms, batch_rows=batch_rows, **writer_options)
        self.close_timeout_s = close_timeout_s
        self.handoff_timeout_s = handoff_timeout_s
        self.on_handoff = on_handoff  # seconds each hand-off took (the flow's histogram)
        # graph.toml [sinks.postgres] depth_vols
        self.depth_vols = depth_vols
        self.writers: list[PostgresWriter] = []  # for status and tests

    @staticmethod
    def key_of(item) -> str:
        return surface_key(item.venue, item.underlying)

    def list_parts(self) -> list[str]:
        return [f"pg-{i}" for i in range(self.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[None]) -> _PostgresPartition:
        # named by partition, not worker: a partition's spill files go with it to whichever
        # worker owns it next
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{step_id}-{for_part}")
        writer = PostgresWriter(self.dsn, name=name, run=self.run, **self.options)
        # an earlier run stopped during an outage left spill files: written under that run
        orphans = [PostgresWriter(self.dsn, name=name, run=other, **self.options)
                   for other in orphan_runs(self.options["spill_dir"], name, self.run.run_id)]
        self.writers.extend([writer, *orphans])
        return _PostgresPartition(writer, self.close_timeout_s, self.handoff_timeout_s, orphans, self.on_handoff,
                                  self.depth_vols)
