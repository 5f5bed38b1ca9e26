"""The durable hand-off (issue #15): PostgresWriter.durable() returns only once every event
submitted so far is in PostgreSQL or in an fsync'd spill file — what the sink's snapshot()
waits for before bytewax may record an epoch as done. Real PostgreSQL (pgserver) and a
database that is away (a DSN to a port nothing listens on); no sleeps.

- database up: after durable(), every row is in the tables;
- database away: durable() returns without waiting for memory to fill — everything is on disk
  in the run's spill folder, oldest first — and a later writer (the resumed process) stores
  it under its run; the writer that spilled is then killed without close(), as a SIGKILL does;
- spill files of another run (a run stopped during an outage, then a fresh one started) are
  written under that run, by the sink's orphan writers.
"""

from __future__ import annotations

import psycopg
import pytest

import connectors.postgres as pg
from connectors.postgres.runs import RunInfo
from connectors.postgres.writer import orphan_runs
from tests.helpers.resources import free_port


def run(run_id: str) -> RunInfo:
    return RunInfo(run_id=run_id, config_hash="c0ffee", code_version="test", methods={"svi": "test"},
                   started_ms=1, source="file", detail="test_handoff")


def rows_of(dsn: str, run_id: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM expiry_views WHERE run_id = %s", (run_id,)).fetchone()[0]


def test_with_the_database_up_durable_means_written(pg_db, surface_factory, tmp_path):
    f = surface_factory()
    writer = pg.PostgresWriter(pg_db, run=run("up"), name="h1", flush_ms=60_000, batch_rows=10_000,
                               spill_dir=tmp_path)
    try:
        events = [f.patch(100 + i, changed=[i % 3]) for i in range(7)]
        for ev in events:
            writer.submit(ev)
        assert writer.durable(timeout=60)  # flush_ms is a minute: only the hand-off writes them now
        assert rows_of(pg_db, "up") == 7
        with pg.connect(pg_db) as conn:
            assert pg.latest_surface(conn, "deribit", "BTC", run_id="up") == f.fold(events)
    finally:
        writer.close(timeout=10)


@pytest.mark.parametrize("n_events", [1, 7, 40])
def test_with_the_database_away_durable_means_spilled_and_a_later_writer_stores_it(pg_db, surface_factory, tmp_path,
                                                                                      n_events):
    f = surface_factory()
    away = f"postgresql://127.0.0.1:{free_port()}/none"
    events = [f.patch(200 + i, changed=[i % 3], removed=[(i + 1) % 3] if i % 4 == 3 else []) for i in range(n_events)]
    first = pg.PostgresWriter(away, run=run("away"), name="h2", flush_ms=10, batch_rows=10_000,
                              max_buffer_rows=100_000, spill_dir=tmp_path, retry_min_ms=10, retry_max_ms=50,
                              connect_timeout_s=0.5)
    half = n_events // 2
    for ev in events[:half]:
        first.submit(ev)
    assert first.durable(timeout=60), first.stats()
    for ev in events[half:]:
        first.submit(ev)
    assert first.durable(timeout=60), first.stats()  # memory held them: the hand-off spilled them
    folder = tmp_path / "away"
    spilled = sorted(folder.glob("h2.spill.*.jsonl"))
    assert sum(len(p.read_bytes().splitlines()) for p in spilled) == n_events
    assert (folder / "run.json").is_file()
    # `first` is never closed: a SIGKILL leaves only what is on disk
    second = pg.PostgresWriter(pg_db, run=run("away"), name="h2", flush_ms=10, batch_rows=500, spill_dir=tmp_path)
    try:
        assert second.pending() == n_events
        assert second.flush(timeout=60), second.stats()
    finally:
        second.close(timeout=10)
    with pg.connect(pg_db) as conn:
        assert pg.latest_surface(conn, "deribit", "BTC", run_id="away") == f.fold(events)
    assert sorted(folder.glob("h2.spill.*.jsonl")) == []


def test_spill_files_of_another_run_are_stored_under_that_run(pg_db, surface_factory, tmp_path):
    f = surface_factory()
    old_events = [f.patch(300 + i, changed=[i % 3]) for i in range(5)]
    away = f"postgresql://127.0.0.1:{free_port()}/none"
    old = pg.PostgresWriter(away, run=run("old-run"), name="h3", flush_ms=10, batch_rows=500, spill_dir=tmp_path,
                            retry_min_ms=10, retry_max_ms=50, connect_timeout_s=0.5)
    for ev in old_events:
        old.submit(ev)
    assert old.durable(timeout=60)
    assert [r.run_id for r in orphan_runs(tmp_path, "h3", "new-run")] == ["old-run"]
    assert orphan_runs(tmp_path, "h3", "old-run") == []

    found = orphan_runs(tmp_path, "h3", "new-run")
    drain = pg.PostgresWriter(pg_db, run=found[0], name="h3", flush_ms=10, batch_rows=500, spill_dir=tmp_path)
    try:
        assert drain.flush(timeout=60)
    finally:
        drain.close(timeout=10)
    assert rows_of(pg_db, "old-run") == 5 and rows_of(pg_db, "new-run") == 0
    with pg.connect(pg_db) as conn:
        assert conn.execute("SELECT source, detail FROM runs WHERE run_id = 'old-run'").fetchone() == \
            ("file", "test_handoff")
