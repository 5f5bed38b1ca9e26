"""`volgraph replay --from-db --start T0 --end T1 [--config other.toml]` (issue #15 part 5): the
flags' errors name the fix (exit 2, before anything starts), and a real `volgraph replay FILE`
that stores its market events is re-run from the database as a second run (source "database",
the window and the source run in its detail), on the events' own clock, with a summary."""

from __future__ import annotations

import re

import pytest

from connectors.capture.replay import write_frames
from connectors.postgres import connect, list_runs
from flows.cli import main
from tests.helpers.recordings import START_MS, record
from tests.helpers.volgraph_run import Run, small_config


@pytest.mark.parametrize("argv, message", [
    ([], "give a recording FILE, or --from-db"),
    (["f.gz", "--from-db", "--start", "1", "--end", "2"], "--from-db reads the database, not a FILE"),
    (["--from-db", "--end", "2026-01-05"], "--from-db needs --start"),
    (["--from-db", "--start", "2026-01-05"], "--from-db needs --end"),
    (["--from-db", "--start", "yesterday", "--end", "2026-01-05"], "--start 'yesterday': not a time; give ISO 8601 UTC"),
    (["--from-db", "--start", "2026-01-05T10:00Z", "--end", "2026-01-05T09:00Z"], "is not after --start"),
    (["--from-db", "--start", "1", "--end", "2", "--no-postgres"], "drop --no-postgres"),
    (["f.gz", "--start", "1"], "--start goes with --from-db"),
])
def test_bad_replay_flags_exit_2_naming_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["replay", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def iso(ms: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def replay(*args: str) -> Run:
    return Run.to_the_end(*args, "--speed", "max", "--port", "0", command="replay")


def test_replay_from_db_writes_a_second_run_beside_the_stored_one(pg_db, tmp_path):
    frames = record(n_ticks=6)
    path = tmp_path / "btc.jsonl.gz"
    write_frames(path, frames)
    store = small_config(tmp_path)
    store.write_text(store.read_text() + "\n[sinks.postgres]\nmarket_events = true\nmarket_retention_days = 0\n")
    first = replay(str(path), "--pg", pg_db, "--config", str(store))
    original = first.wait_line(r", run (file-\S+)$").group(1)
    first.wait_line(r"market events stored [\d,]+ pending 0 rows, rejected 0$")

    other = tmp_path / "other.toml"
    other.write_text(store.read_text().replace("[chain]", "") + "\n[chain]\nmin_quotes = 7\n")
    t0, t1 = START_MS, max(ts for ts, _ in frames) + 1
    second = replay("--from-db", "--start", iso(t0), "--end", str(t1), "--pg", pg_db, "--config", str(other))
    done = second.wait_line(r"replay done in [\d.]+ s: ([\d,]+) events read, recording clock at (\S+ \S+) UTC, "
                            r"([\d,]+) fits of (\d+) expiries \((.*)\), run (database-\S+)$")
    assert done.group(5) == "deribit:BTC" and int(done.group(4)) > 0
    with connect(pg_db) as conn:
        runs = {r.run_id: r for r in list_runs(conn)}
        fits = dict(conn.execute("SELECT run_id, count(*) FROM smile_fits GROUP BY run_id").fetchall())
        stored = conn.execute("SELECT sum(n) FROM market_events").fetchone()[0]
        owners = conn.execute("SELECT DISTINCT run_id FROM market_events").fetchall()
    new = runs[done.group(6)]
    assert new.source == "database" and re.search(rf"run {original} from 2026-01-05T09:00:00.000Z to ", new.detail)
    assert fits[original] > 0 and fits[new.run_id] > 0
    assert int(done.group(1).replace(",", "")) == stored and owners == [(original,)]

    # an empty window: exit 3, naming the runs that have events and the fix
    empty = Run("--from-db", "--start", "2020-01-01", "--end", "2020-01-02", "--pg", pg_db, "--port", "0",
                "--config", str(other), command="replay")
    assert empty.finish() == 3
    assert "no market events are stored between --start 2020-01-01 and --end 2020-01-02: widen" in empty.text()
