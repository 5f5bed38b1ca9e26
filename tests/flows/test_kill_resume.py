"""Kill the flow at random points and resume it on the same recovery folder (issue #15): the
persisted rows equal an uninterrupted run's, none lost, none doubled.

The flow is the scale-out one (tests/helpers/scaleout.py: the recorded BTC and ETH market, a
PostgreSQL sink on pgserver, the frozen flow clock whose fits all come at the end of input, so
two runs are comparable row for row), run as `python -m bytewax.run … -r DIR -s 1 -b 0` — what a
StatefulSet pod runs — with the replay paced so a run lasts a few seconds. Ten times, it is
SIGKILLed once a random number (1–2) of new recovery snapshots has been taken; then it runs to
the end. Every resume must restore the books and the sources' routing from the snapshots (a
book routed nowhere — `unknown_instrument` — or a frame read twice or never would change the
final fits), and the sink's durable hand-off must leave nothing half-written.

The flow stores market events too (graph.toml [sinks.postgres] market_events = true): the fit
and view rows go through the same sink as with them off, and the events are written before
every kill, as they are read (the frozen clock writes every row at the end:
tests/connectors/postgres/test_handoff.py checks the hand-off itself against a database that
goes away). Each kill waits until some events are stored after the snapshot the resume starts
from. The market_events table must hold what the uninterrupted run's holds: every event of every
instrument once, in the order read, each position (seg, ord) of the event sink once
(connectors/postgres/market_sink.py numbers them and keeps the count in its snapshot; a resumed
replay sends the events after the snapshot again, in other batches and so in another order, and
the resumed sink first removes what the killed one stored beyond its snapshot).
"""

from __future__ import annotations

import calendar
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import init_db_dir
from bytewax.testing import run_main

from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.scaleout import ENV, build, persisted, record_deribit

ROOT = Path(__file__).resolve().parents[2]
START_MS = calendar.timegm((2026, 1, 5, 9, 0, 0)) * 1000
SPEED = 0.1  # the recording (2 s of market) replays in 20 s: ten kills 1–2 snapshots (s) apart land inside it
KILLS = 10


def fresh_db(pg_server) -> str:
    import psycopg

    name = f"kr_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.get_uri(database=name)


def snapshots(recovery: Path) -> int:
    """The epoch of the last snapshot bytewax committed (it advances once per -s interval)."""
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        return db.execute("SELECT coalesce(max(commit_epoch), 0) FROM commits").fetchone()[0]


def start(files, dsn, spill, recovery) -> subprocess.Popen:
    env = dict(os.environ, **{ENV: orjson.dumps({"files": files, "dsn": dsn, "clock_ms": START_MS,
                                                  "spill_dir": str(spill), "speed": SPEED, "market": True}).decode()})
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", "tests.helpers.scaleout:flow",
                             "-r", str(recovery), "-s", "1", "-b", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[str]:
    return [str(p) for p in record_deribit(tmp_path_factory.mktemp("rec"), START_MS, ticks=20)]


def events_stored(dsn: str) -> int:
    """How many market events the run has stored so far (0 before the table exists)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            return conn.execute("SELECT coalesce(sum(n), 0) FROM market_events").fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0


def stored_events(dsn: str) -> dict:
    """The market events a run stored: per (venue, underlying, instrument), the event bodies in
    position order — every event but the index prices, which the source folds to the newest per
    batch, so how many are stored follows the batching (flows/routing.py) — and per surface the
    index prices' bodies and the newest one; the positions per seg (a life of an event-sink
    partition, which numbers the events of all its surfaces in one count); and the positions
    stored twice with different events (rows a resumed flow regrouped overlap: a position must
    hold one event, connectors/capture/db_replay.py reads it once)."""
    from connectors.postgres import connect

    with connect(dsn) as conn:
        rows = conn.execute("SELECT venue, underlying, seg, ord, type, instrument, body FROM market_event_rows"
                            " ORDER BY venue, underlying, seg, ord").fetchall()
    events, index, newest_index, positions, clashes, seen = {}, {}, {}, {}, [], {}
    for venue, underlying, seg, ord_, kind, instrument, body in rows:
        pos = (venue, underlying, seg, ord_)
        if pos in seen:
            if seen[pos] != body:
                clashes.append(pos)
            continue  # overlapping rows: each position once
        seen[pos] = body
        positions.setdefault(seg, []).append(ord_)
        if kind == "IndexPrice":
            index.setdefault((venue, underlying), []).append(body)
            newest_index[(venue, underlying)] = body
        else:
            events.setdefault((venue, underlying, instrument), []).append(body)
    return dict(events=events, index=index, newest_index=newest_index, positions=positions, clashes=clashes)


def test_ten_kills_and_resumes_leave_the_rows_and_market_events_of_an_uninterrupted_run(pg_server, recordings,
                                                                                       tmp_path):
    # one variant since 2026-12-07: a run with market events off took 40 s of CI's 15 minutes to check the
    # same rows through the same sink
    reference_dsn = fresh_db(pg_server)
    run_main(build(recordings, reference_dsn, START_MS, str(tmp_path / "spill-ref"), market=True))
    reference = persisted(reference_dsn)
    assert reference["smile_fits"], "the uninterrupted run stored nothing"

    dsn = fresh_db(pg_server)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    spill = tmp_path / "spill"
    rng = random.Random(15)
    killed = 0
    outputs = []
    while killed < KILLS:
        before = snapshots(recovery)
        want = before + rng.randint(1, 2)
        proc = start(recordings, dsn, spill, recovery)
        deadline = time.monotonic() + DEADLINE_S
        while proc.poll() is None and snapshots(recovery) < want and time.monotonic() < deadline:
            time.sleep(0.01)  # polling another process's sqlite file, which offers nothing to wait on
        if proc.poll() is None:  # kill once it has stored events after that snapshot: the resume must replace them
            stored = events_stored(dsn)
            while proc.poll() is None and events_stored(dsn) == stored and time.monotonic() < deadline:
                time.sleep(0.01)  # polling another process's rows, which offers nothing to wait on
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        out, _ = proc.communicate(timeout=DEADLINE_S)
        outputs.append(out)
        if proc.returncode == 0:
            break  # it reached the end of input before the kill point: nothing left to kill
        assert proc.returncode == -signal.SIGKILL, out[-3000:]
    assert killed == KILLS, f"only {killed} kills landed before the end of input: slow the replay (SPEED)"
    last = start(recordings, dsn, spill, recovery)
    out, _ = last.communicate(timeout=DEADLINE_S)
    assert last.returncode == 0, out[-3000:]
    assert "unknown_instrument" not in out and not any("unknown_instrument" in o for o in outputs)

    rows = persisted(dsn)
    for table in reference:
        assert rows[table] == reference[table], (table, killed)
    want, got = stored_events(reference_dsn), stored_events(dsn)
    assert want["events"], "the uninterrupted run stored no market events"
    assert got["clashes"] == [] and want["clashes"] == []
    # one life of the event sink's one partition (seg) — every resume continued it — and its positions 0, 1, 2, …
    # each once
    for positions in (want["positions"], got["positions"]):
        assert len(positions) == 1, sorted(positions)
        for seg, ords in positions.items():
            missing = sorted(set(range(max(ords) + 1)) - set(ords))[:10]
            assert len(ords) == max(ords) + 1, f"seg {seg}: {len(ords)} positions up to {max(ords)}; missing {missing}"
    assert got["events"].keys() == want["events"].keys()
    for key, bodies in want["events"].items():
        assert got["events"][key] == bodies, key  # none lost, none doubled, in the order read
    assert got["newest_index"] == want["newest_index"]
    for bodies in got["index"].values():
        assert len(set(bodies)) == len(bodies)  # no index price stored twice
