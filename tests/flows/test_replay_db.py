"""Replay from the database (issue #15 parts 4 and 5): a recorded run stores its market events
(graph.toml [sinks.postgres] market_events = true), and `DbReplaySource` re-runs a window of
them through the same flow as a new run (source "database").

Runs use tests/helpers/scaleout.py's recorded BTC and ETH market and its frozen flow clock (no
epoch closes before the end of input; every expiry is fitted cold from its final books), so two
runs are comparable row for row: a window replayed with the same graph.toml gives the original
run's fits exactly; with another method parameter (chain.min_quotes) the fits differ only where
that parameter decides, and the original run's rows stay as they were (compared in SQL)."""

from __future__ import annotations

import calendar

import pytest
from bytewax.testing import run_main

from connectors.capture.db_replay import DbReplaySource, EmptyWindow, db_replay_detail, stored_runs
from connectors.postgres import connect, list_runs
from flows.config import load_config
from flows.runs import run_info
from flows.surface import build_flow, market_event_sink, postgres_sink
from tests.helpers.scaleout import FIT_COLUMNS, FROZEN_RATE, record_deribit

START_MS = calendar.timegm((2026, 1, 5, 9, 0, 0)) * 1000
END_MS = START_MS + 3_600_000
STORE = {"sinks": {"postgres": {"market_events": True, "market_retention_days": 0}}}
TABLES = ("smile_fits", "expiry_views", "expiry_nodes", "surface_state")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[str]:
    return [str(p) for p in record_deribit(tmp_path_factory.mktemp("rec"), START_MS, ticks=6)]


def run_file(files, dsn, spill, run_id="orig"):
    """The original run: the recordings replayed (frozen clock), fits and market events stored."""
    from connectors.capture.replay import ReplaySource

    config = load_config(overrides=STORE)
    run = run_info(config, source="file", detail=",".join(files), run_id=run_id)
    sinks = [postgres_sink(config, dsn, run, spill), market_event_sink(config, dsn, run, spill)]
    run_main(build_flow(config, ReplaySource(list(files)), sinks, now_ms=lambda: START_MS, clock_rate=FROZEN_RATE))
    return sinks


def run_db(dsn, spill, run_id, overrides=None, source_run="orig", start_ms=START_MS, end_ms=END_MS):
    """A window of the stored events re-run as a new run (what `volgraph replay --from-db` builds)."""
    config = load_config(overrides=overrides)
    source = DbReplaySource(dsn, run_id=source_run, start_ms=start_ms, end_ms=end_ms)
    run = run_info(config, source="database", detail=db_replay_detail(source_run, start_ms, end_ms), run_id=run_id)
    run_main(build_flow(config, source, [postgres_sink(config, dsn, run, spill)], now_ms=lambda: START_MS,
                        clock_rate=FROZEN_RATE))
    return source


def differing(conn, table: str, cols: str, a: str, b: str, where: str = "") -> int:
    """Rows of run a's `table` not in run b's, plus b's not in a's (the columns given, in SQL)."""
    q = f"SELECT {cols} FROM {table} WHERE run_id = %s {where}"
    return conn.execute(f"SELECT (SELECT count(*) FROM ({q} EXCEPT ALL {q}) x) + (SELECT count(*) FROM ({q} EXCEPT ALL {q}) y)",
                        (a, b, b, a)).fetchone()[0]


def test_stored_window_replays_to_the_original_fits_and_another_method_writes_a_second_run(
        pg_db, recordings, tmp_path):
    sinks = run_file(recordings, pg_db, str(tmp_path / "spill"))
    events = sinks[1].writers
    assert sum(w.stats()["rows_written"].get("market_events", 0) for w in events) > 1000
    assert all(w.stats()["rejected"] == 0 and w.stats()["pending"] == 0 for w in events)
    with connect(pg_db) as conn:
        kinds = dict(conn.execute("SELECT type, count(*) FROM market_event_rows GROUP BY type").fetchall())
        assert {"Instrument", "BookUpdate", "Ticker", "IndexPrice", "FuturePrice"} <= set(kinds), kinds
        n_fits = conn.execute("SELECT count(*) FROM smile_fits WHERE run_id = 'orig'").fetchone()[0]
        assert n_fits >= 4
        # the original run's rows, kept aside to check that no replay touches them
        for t in TABLES:
            conn.execute(f"CREATE TABLE saved_{t} AS SELECT * FROM {t} WHERE run_id = 'orig'")
        conn.commit()
        quotes = sorted(r[0] for r in conn.execute("SELECT n_quotes FROM smile_fits WHERE run_id = 'orig'"))
    assert stored_runs(pg_db, START_MS, END_MS) == [("orig", sum(kinds.values()))]

    # the same graph.toml: the window replays to the original fits, row for row
    source = run_db(pg_db, str(tmp_path / "spill"), "same")
    assert source.clock_ms() > START_MS  # the events' own clock advanced
    with connect(pg_db) as conn:
        assert differing(conn, "smile_fits", FIT_COLUMNS, "orig", "same") == 0
        assert differing(conn, "expiry_nodes", "venue, underlying, expiry_ms, epoch, node, value", "orig", "same") == 0

    # another method: fewer expiries qualify for a fit (chain.min_quotes); every other fit is unchanged
    min_quotes = quotes[len(quotes) // 2] + 1
    assert quotes[0] < min_quotes <= quotes[-1], quotes
    run_db(pg_db, str(tmp_path / "spill"), "strict", overrides={"chain": {"min_quotes": min_quotes}})
    with connect(pg_db) as conn:
        strict = conn.execute("SELECT count(*) FROM smile_fits WHERE run_id = 'strict'").fetchone()[0]
        assert 0 < strict < n_fits
        assert differing(conn, "smile_fits", FIT_COLUMNS, "orig", "strict",
                         where=f"AND n_quotes >= {min_quotes}") == 0
        assert conn.execute("SELECT count(*) FROM smile_fits WHERE run_id = 'strict' AND n_quotes < %s",
                            (min_quotes,)).fetchone()[0] == 0
        # the first run's rows are unchanged, compared in SQL
        for t in TABLES:
            assert conn.execute(f"SELECT (SELECT count(*) FROM (TABLE saved_{t} EXCEPT ALL SELECT * FROM {t} WHERE"
                                f" run_id = 'orig') a) + (SELECT count(*) FROM (SELECT * FROM {t} WHERE run_id = 'orig'"
                                f" EXCEPT ALL TABLE saved_{t}) b)").fetchone()[0] == 0, t
        # the replays stored no market events of their own
        assert conn.execute("SELECT DISTINCT run_id FROM market_events").fetchall() == [("orig",)]
        runs = {r.run_id: r for r in list_runs(conn)}
    assert runs["strict"].source == runs["same"].source == "database"
    assert "orig" in runs["strict"].detail and "2026-01-05T09:00:00.000Z" in runs["strict"].detail
    assert runs["strict"].config_hash != runs["orig"].config_hash


def test_a_window_after_discovery_still_knows_its_instruments_and_an_empty_window_names_the_fix(
        pg_db, recordings, tmp_path):
    run_file(recordings[:1], pg_db, str(tmp_path / "spill"))
    with connect(pg_db) as conn:
        # just after the first stored index price: discovery and that index price lie before the window
        start = conn.execute("SELECT min(ts_recv_ms) + 1 FROM market_event_rows WHERE type = 'IndexPrice'").fetchone()[0]
    assert start > START_MS
    source = DbReplaySource(pg_db, run_id="orig", start_ms=start, end_ms=END_MS)
    part = source.build_part("in", source.list_parts()[0], None)
    try:
        first = part.next_batch()
    finally:
        part.close()
    kinds = [type(e).__name__ for e in first]
    assert "Instrument" in kinds and kinds.index("Instrument") == 0
    assert {"Instrument", "FuturePrice", "IndexPrice"} <= set(kinds)
    with pytest.raises(EmptyWindow, match=r"runs with events there: orig .*--run"):
        DbReplaySource(pg_db, run_id="nope", start_ms=START_MS, end_ms=END_MS)
    with pytest.raises(EmptyWindow, match="widen the window"):
        DbReplaySource(pg_db, run_id="orig", start_ms=END_MS, end_ms=END_MS + 1)
