"""The bytewax sink: each worker's partition owns a PostgresWriter (its own thread and connection).

Stores SmileFit, SurfacePatch and SurfaceSnapshot events and counts the others as ignored.
flush_ms, batch_rows and spill_dir are required keywords: their defaults live in graph.toml
([sinks.postgres], runtime.data_dir) and nowhere else. The only module here that imports bytewax.
"""

from __future__ import annotations

import os
import re
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.postgres.writer import PostgresWriter
from operators.events import SmileFit, SurfacePatch


class _PostgresPartition(StatelessSinkPartition):
    def __init__(self, writer: PostgresWriter, close_timeout_s: float) -> None:
        self.writer = writer
        self.close_timeout_s = close_timeout_s

    def write_batch(self, items: list) -> None:
        submit = self.writer.submit
        for item in items:
            submit(item)

    def close(self) -> None:
        self.writer.close(self.close_timeout_s)


class PostgresSink(DynamicSink):
    """Each worker's partition owns a PostgresWriter (its own thread and connection);
    stores SmileFit, SurfacePatch and SurfaceSnapshot events, ignores others (counted).
    The flow hands it only what it `consumes` (flows/surface.py)."""

    consumes = (SmileFit, SurfacePatch)

    def __init__(
        self,
        dsn: str,
        *,
        spill_dir: str | os.PathLike,
        flush_ms: float,
        batch_rows: int,
        close_timeout_s: float = 10.0,
        **writer_options: Any,
    ) -> None:
        self.dsn = dsn
        self.options = dict(spill_dir=spill_dir, flush_ms=flush_ms, batch_rows=batch_rows, **writer_options)
        self.close_timeout_s = close_timeout_s
        self.writers: list[PostgresWriter] = []  # for status and tests

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PostgresPartition:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{step_id}-w{worker_index}")
        writer = PostgresWriter(self.dsn, name=name, **self.options)
        self.writers.append(writer)
        return _PostgresPartition(writer, self.close_timeout_s)
