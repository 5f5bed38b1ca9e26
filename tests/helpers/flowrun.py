"""Running the real dataflow on live (socket) sources until something holds, never for a fixed
wall-clock window: this machine's speed drifts by a third, so "after 8 s" is sometimes too
early and always too long. Test support only: no fixtures, no sleeps as synchronisation
(the watcher polls a condition with a generous deadline and fails naming what it waited for).
Also the one way the flow tests run the recorded market into PostgreSQL with a graph.toml
override (market_flow_to_postgres).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import run_main

DEADLINE_S = 120.0  # generous: a condition that holds in 5 s here holds well inside this on a slow box


class StoppableSource(FixedPartitionedSource):
    """Wraps a venue source (DeribitSource, OkxSource): ends its input (EOF, so the flow flushes
    every owed fit) once `stop` is set, and keeps the partitions built (`parts`, for their clients)."""

    def __init__(self, inner: FixedPartitionedSource, stop: threading.Event):
        self.inner, self.stop, self.parts = inner, stop, []

    def list_parts(self):
        return self.inner.list_parts()

    def build_part(self, step_id, for_part, resume_state):
        part = self.inner.build_part(step_id, for_part, resume_state)
        self.parts.append(part)
        outer = self

        class _Part(StatefulSourcePartition):
            def next_batch(self):
                if outer.stop.is_set():
                    part.close()
                    raise StopIteration()
                return part.next_batch()

            def next_awake(self):
                return part.next_awake()

            def snapshot(self):
                return None

            def close(self):
                part.close()

        return _Part()


def holds(check: Callable[[], object]) -> bool:
    """check() as a condition: True unless it returns something false or raises AssertionError
    (so a test's own assertion block can be the condition it runs until)."""
    try:
        return check() is not False
    except AssertionError:
        return False


def run_until(flow, stop: threading.Event, condition: Callable[[], bool], *, what: str,
              timeout_s: float = DEADLINE_S, poll_s: float = 0.2, entry_point=run_main) -> float:
    """Run `flow` (whose live sources are StoppableSources on `stop`) until condition() holds,
    then end it; return the seconds it took. A watcher thread polls the condition (it must be
    safe to call while the flow runs); if it does not hold within timeout_s the flow is ended
    too and this fails naming `what`."""
    met = threading.Event()
    started = time.monotonic()

    def watch():
        deadline = started + timeout_s
        try:
            while not stop.is_set():
                if condition():
                    met.set()
                    return
                if time.monotonic() > deadline:
                    return
                stop.wait(poll_s)  # the poll interval; returns at once when the flow is stopped
        finally:
            stop.set()

    watcher = threading.Thread(target=watch, name="run_until", daemon=True)
    watcher.start()
    try:
        entry_point(flow)
    finally:
        stop.set()
        watcher.join(timeout_s)
    if not (met.is_set() or condition()):  # the flow may also have ended on its own
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
    return time.monotonic() - started


def market_flow_to_postgres(pg_db: str, tmp_path, toml: str, *, run_id: str = "test-run"):
    """The flow over tests.helpers.market's recorded market to its end (run_main: a finite source,
    so no watcher), with graph.toml overridden by `toml` (written to tmp_path/graph.toml) and a
    PostgreSQL sink into `pg_db` (migrated first) under `run_id`. Returns (config, the flow's
    SurfacePatches in order); every row is stored when it returns (the sink's close hands off)."""
    from bytewax.testing import TestingSource

    from connectors.postgres import connect, migrate
    from flows.config import load_config
    from flows.surface import build_flow
    from operators.events import SurfacePatch
    from tests.helpers.config import postgres_sink
    from tests.helpers.market import NOW, market
    from tests.helpers.sinks import CallbackSink

    graph = tmp_path / "graph.toml"
    graph.write_text(toml)
    config = load_config(graph)
    with connect(pg_db) as conn:
        migrate(conn)
    out: list = []
    sink = postgres_sink(pg_db, tmp_path / "spill", config=config, run_id=run_id, flush_ms=20)
    run_main(build_flow(config, TestingSource(market()), [CallbackSink(out.append), sink], now_ms=lambda: NOW))
    return config, [o for o in out if isinstance(o, SurfacePatch)]
