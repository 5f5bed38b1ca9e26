"""PostgreSQL persistence against a real server (pgserver): migrations, idempotent writes,
the surface rebuild, buffering and spilling through a database outage, the bytewax sink."""

from __future__ import annotations

import uuid

import msgspec
import numpy as np
import psycopg
import pytest

from tests.helpers.patches import surface_ops
from tests.helpers.resources import private_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import postgres as pg
from operators.events import SmileFit, StatusReport, SurfacePatch
from operators.kernels import svi


def count(dsn: str, table: str, where: str = "TRUE") -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table} WHERE {where}").fetchone()[0]


def table_rows(dsn: str, table: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()


RUN = "test-run"


def run_info(run_id: str = RUN):
    return pg.RunInfo(run_id=run_id, config_hash="cfg", code_version="test", methods={"iv": "1", "forward": "1", "svi": "1"},
                      started_ms=1, source="file", detail="tests/connectors/postgres")


RUN_INFO = run_info()


def migrated(conn, run_id: str = RUN) -> None:
    """Migrate and register `run_id`, as the writer does on connect (rows name a registered run)."""
    pg.migrate(conn)
    pg.register_run(conn, run_info(run_id))


# ---------------------------------------------------------------- migrations

SHIPPED = [v for v, _ in pg.sql_files()]  # 1, 2, 3, … (a new migration must not break these tests)


def test_migrate_applies_each_file_once(pg_db):
    with pg.connect(pg_db) as conn:
        assert pg.migrate(conn) == SHIPPED  # every file in deploy/sql, in order
        assert pg.migrate(conn) == []
        versions = conn.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert versions[:3] == [(1, "001_init.sql"), (2, "002_expiry_nodes.sql"), (3, "003_runs.sql")]
    assert versions == [(v, path.name) for v, path in pg.sql_files()]
    assert {"smile_fits", "expiry_views", "expiry_nodes", "surface_state", "runs", "schema_version"} <= tables


def test_migration_2_moves_a_v1_databases_node_values_into_expiry_nodes(pg_db, tmp_path):
    """A database that ran 001 only (fixed atm_vol.. columns, an analytics JSON per view)
    keeps every stored node value, now one row per node, and loses the fixed columns."""
    (tmp_path / "001_init.sql").write_text((pg.SQL_DIR / "001_init.sql").read_text())
    with pg.connect(pg_db) as conn:
        assert pg.migrate(conn, tmp_path) == [1]
        conn.execute(
            "INSERT INTO expiry_views (venue, underlying, expiry_ms, epoch, ts_emit_ms, removed, atm_vol, analytics, view)"
            " VALUES ('deribit', 'BTC', 7, 1, 0, false, 0.5, '{\"atm_vol\": 0.5, \"rr15\": -0.02, \"gone\": null}',"
            " '{}'), ('deribit', 'BTC', 8, 1, 0, true, NULL, NULL, NULL)")
        conn.commit()
        assert pg.migrate(conn) == SHIPPED[1:]
        rows = conn.execute("SELECT expiry_ms, epoch, node, value FROM expiry_nodes ORDER BY node").fetchall()
        cols = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'expiry_views'")}
    assert rows == [(7, 1, "atm_vol", 0.5), (7, 1, "gone", None), (7, 1, "rr15", -0.02)]
    assert not cols & {"atm_vol", "rr25", "bf25", "rr10", "bf10", "analytics"}
    assert {"view", "calendar_ok", "removed"} <= cols


def test_migrate_runs_new_files_in_order_and_names_a_bad_one(pg_db, tmp_path):
    (tmp_path / "001_a.sql").write_text("CREATE TABLE a (x int);")
    (tmp_path / "002_b.sql").write_text("INSERT INTO a VALUES (2);")
    with pg.connect(pg_db) as conn:
        assert pg.migrate(conn, tmp_path) == [1, 2]
        (tmp_path / "003_c.sql").write_text("INSERT INTO a VALUES (3);")
        (tmp_path / "004_bad.sql").write_text("INSERT INTO no_such_table VALUES (1);")
        with pytest.raises(RuntimeError, match="004_bad.sql"):
            pg.migrate(conn, tmp_path)
        # The failed run rolled back whole: 003 is not half-applied.
        assert conn.execute("SELECT array_agg(x ORDER BY x) FROM a").fetchone()[0] == [2]
        assert [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")] == [1, 2]
        (tmp_path / "004_bad.sql").write_text("INSERT INTO a VALUES (4);")
        assert pg.migrate(conn, tmp_path) == [3, 4]
        assert conn.execute("SELECT array_agg(x ORDER BY x) FROM a").fetchone()[0] == [2, 3, 4]


def test_migration_files_must_be_numbered(tmp_path):
    (tmp_path / "init.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="NNN_name.sql"):
        pg.sql_files(tmp_path)


# ---------------------------------------------------------------- writes and rebuild


def test_writes_are_idempotent(pg_db, surface_factory):
    f = surface_factory()
    events = [
        f.fit(f.expiry(0), 100),
        f.patch(100, changed=[0, 1, 2]),
        f.patch(101, changed=[1], removed=[2], index_px=None),
    ]
    with pg.connect(pg_db) as conn:
        migrated(conn)
        first = pg.write_events(conn, events, RUN)
        before = {t: table_rows(pg_db, t) for t in pg.TABLES}
        second = pg.write_events(conn, events, RUN)
        after = {t: table_rows(pg_db, t) for t in pg.TABLES}
    # 1 fit event + 4 fits inside views (the first patch's expiry-0 fit has epoch 100 like the
    # standalone fit: same key, written once).
    assert first["smile_fits"] == 4
    assert second["smile_fits"] == 0
    assert first["expiry_views"] == 5  # 3 views + 1 view + 1 tombstone
    assert first["expiry_nodes"] == 4 * 7  # the factory's views carry 7 nodes each
    assert first["surface_state"] == 2
    assert before == after
    assert count(pg_db, "expiry_views", "removed") == 1


def test_latest_surface_matches_apply_patch_with_snapshots_and_removals(pg_db, surface_factory):
    f = surface_factory(underlying="ETH")
    events = [
        f.patch(10, changed=[0, 1, 2, 3]),
        f.patch(11, changed=[1], removed=[3], index_px=None),
        f.patch(12, changed=[3], removed=[0]),  # 3 comes back
        f.snapshot(13, expiries=[1, 2, 4], index_px=None),  # older views no longer count
        f.patch(14, changed=[5], index_px=None),  # keeps the snapshot's (absent) index
        f.patch(14, changed=[2], removed=[5]),  # same epoch twice: last write wins
    ]
    with pg.connect(pg_db) as conn:
        migrated(conn)
        for ev in events:
            pg.write_events(conn, [ev], RUN)
        assert pg.latest_surface(conn, "deribit", "ETH") == f.fold(events)
        assert pg.latest_surface(conn, "deribit", "SOL") is None
        assert [e.expiry_ms for e in f.fold(events).expiries] == [f.expiry(i) for i in (1, 2, 4)]


def test_smile_fit_columns_round_trip(pg_db, surface_factory):
    """Every stored field of a fit comes back as it went in, its spline too (010_fit_spline.sql),
    and the stored spline evaluates to the kernels' curve."""
    f = surface_factory()
    fit = f.fit(f.expiry(3), 77, inside_band_frac=None, rho=-0.123456789012345678)
    spline = msgspec.structs.replace(f.fit(f.expiry(4), 78), spline_lo_k=-0.31, spline_hi_k=0.27,
                                     spline_w=(1e-4, -3.5e-4, 2.25e-4, 0.0, 1.5e-5, -6e-5))
    cols = pg.TABLES["smile_fits"]["cols"]
    with pg.connect(pg_db) as conn:
        migrated(conn)
        pg.write_events(conn, [fit, spline], RUN)
        rows = conn.execute("SELECT " + ", ".join(cols) + " FROM smile_fits ORDER BY expiry_ms").fetchall()
    back = []
    for row in rows:
        stored = dict(zip(cols, row))
        assert stored.pop("run_id") == RUN
        back.append(SmileFit(**{**stored, "spline_w": tuple(stored["spline_w"])}))
    assert back == [fit, spline]
    assert rows[0][cols.index("spline_w")] == []  # raw SVI: no spline
    k = np.linspace(-0.5, 0.5, 101)
    assert np.array_equal(svi.total_variance(back[1], k), svi.total_variance(spline, k))
    assert not np.array_equal(svi.total_variance(back[1], k), svi.total_variance(svi.as_params(back[1]).raw(), k))


def test_instrument_nodes_are_one_row_per_node_per_view_with_arrays(pg_db, surface_factory):
    """level = "instrument" nodes: one instrument_nodes row per node per view, the strikes and the
    values as aligned float8[] (None: NULL), rewritten idempotently, gone with their view (a removal,
    a snapshot's clean-up); instrument_node_history gives one row per strike."""
    f = surface_factory(underlying="SOL")

    def with_strike_nodes(ev):
        views = tuple(msgspec.structs.replace(v, strike_analytics={
            "iv_fit": tuple(0.5 + 0.01 * i for i in range(len(v.strikes))),
            "gap": tuple(None if i % 2 else -0.25 * i for i in range(len(v.strikes)))}) for v in ev.expiries)
        return msgspec.structs.replace(ev, expiries=views)

    p1 = with_strike_nodes(f.patch(300, changed=[0, 1]))
    p2 = with_strike_nodes(f.patch(301, changed=[1], removed=[0]))
    assert len(pg.rows_for([p1], RUN)["instrument_nodes"]) == 2 * 2  # 2 views x 2 nodes, not x 5 strikes
    with pg.connect(pg_db) as conn:
        migrated(conn)
        first = pg.write_events(conn, [p1], RUN)
        again = pg.write_events(conn, [p1], RUN)
        assert first["instrument_nodes"] == again["instrument_nodes"] == 4  # last write wins: same rows
        v0 = p1.expiries[0]
        stored = conn.execute("SELECT strikes, vals FROM instrument_nodes WHERE underlying = 'SOL' AND node = 'gap'"
                              " AND expiry_ms = %s AND epoch = 300", (v0.expiry_ms,)).fetchone()
        assert stored == (list(v0.strikes), list(v0.strike_analytics["gap"]))
        hist = conn.execute("SELECT strike, value, strike_index, ts_ms FROM instrument_node_history"
                            " WHERE underlying = 'SOL' AND node = 'gap' AND expiry_ms = %s ORDER BY strike_index",
                            (v0.expiry_ms,)).fetchall()
        assert hist == [(k, x, i + 1, p1.ts_emit_ms)
                        for i, (k, x) in enumerate(zip(v0.strikes, v0.strike_analytics["gap"]))]
        conn.commit()  # write_events runs outside any open transaction (its stage tables empty on commit)
        pg.write_events(conn, [p2], RUN)  # expiry 0 removed at 301: its rows of 300 stay (history)
        assert conn.execute("SELECT epoch, count(*) FROM instrument_nodes WHERE underlying = 'SOL' GROUP BY 1"
                            " ORDER BY 1").fetchall() == [(300, 4), (301, 2)]
        conn.commit()
        pg.write_events(conn, [with_strike_nodes(f.snapshot(301, expiries=[2]))], RUN)  # clean-up of 301
        assert conn.execute("SELECT DISTINCT expiry_ms FROM instrument_nodes WHERE underlying = 'SOL'"
                            " AND epoch = 301").fetchall() == [(f.expiry(2),)]


FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=surface_ops(1), batch_size=st.integers(1, 5), atm=FLOATS, seed=st.integers(0, 2**16))
def test_latest_surface_is_the_fold_of_written_events(pg_db, surface_factory, ops, batch_size, atm, seed):
    f = surface_factory(underlying=f"U{uuid.uuid4().hex[:8]}", seed=seed)
    events, epoch = [], 1000
    for kind, step, changed, removed, has_index in ops:
        epoch += step
        index_px = 90_000.0 + seed if has_index else None
        if kind == "snapshot":
            events.append(f.snapshot(epoch, expiries=changed, index_px=index_px))
        else:
            ev = f.patch(epoch, changed=sorted(changed), removed=sorted(removed), index_px=index_px)
            # Arbitrary finite doubles must survive jsonb exactly (the rebuild compares floats).
            views = tuple(msgspec.structs.replace(v, analytics={**v.analytics, "atm_vol": atm}) for v in ev.expiries)
            events.append(msgspec.structs.replace(ev, expiries=views))
    with pg.connect(pg_db) as conn:
        migrated(conn)
        for i in range(0, len(events), batch_size):
            pg.write_events(conn, events[i : i + batch_size], RUN)
        assert pg.latest_surface(conn, f.venue, f.underlying) == f.fold(events)
        # expiry_nodes holds, by node name, the nodes of the latest view row of each expiry
        nodes = conn.execute(
            "SELECT n.expiry_ms, n.node, n.value FROM expiry_nodes n JOIN expiry_views v USING"
            " (venue, underlying, expiry_ms, epoch) WHERE n.venue = %s AND n.underlying = %s AND NOT v.removed"
            " AND v.epoch = (SELECT max(epoch) FROM expiry_views w WHERE (w.venue, w.underlying, w.expiry_ms)"
            " = (v.venue, v.underlying, v.expiry_ms) AND w.epoch >= %s)",
            (f.venue, f.underlying, _since(conn, f.venue, f.underlying))).fetchall()
    expected = {(v.expiry_ms, name, value) for v in f.fold(events).expiries for name, value in v.analytics.items()}
    assert set(nodes) == expected


def _since(conn, venue, underlying) -> int:
    row = conn.execute("SELECT max(epoch) FROM surface_state WHERE venue = %s AND underlying = %s AND is_snapshot",
                       (venue, underlying)).fetchone()
    return -(2**62) if row[0] is None else row[0]


def test_rows_fold_same_epoch_events_with_the_merge_rule(surface_factory):
    """Within one batch the surface events of one epoch become the rows of their
    operators.merge.coalesce: one row per key, the later view and index price winning."""
    from operators.merge import coalesce

    f = surface_factory()
    a = f.patch(40, changed=[0, 1], index_px=5.0)
    b = f.patch(40, changed=[1], removed=[0], index_px=None)
    merged = coalesce(a, b)
    rows = pg.rows_for([a, b], "r1")
    for table in ("expiry_views", "expiry_nodes", "surface_state"):
        assert rows[table] == pg.rows_for([merged], "r1")[table], table
    assert [r[:7] for r in rows["expiry_views"]] == [
        ("r1", "deribit", "BTC", f.expiry(1), 40, b.ts_emit_ms, False),
        ("r1", "deribit", "BTC", f.expiry(0), 40, b.ts_emit_ms, True)]
    assert rows["surface_state"][0][7] == 5.0  # b has no index price: a's stands
    # every fit is history, the one of a's replaced view included
    assert {r[:5] for r in rows["smile_fits"]} == {r[:5] for r in pg.rows_for([a], "r1")["smile_fits"]} | {
        r[:5] for r in pg.rows_for([b], "r1")["smile_fits"]}


# ---------------------------------------------------------------- the writer


def test_writer_writes_in_batches_and_ignores_other_events(pg_db, surface_factory, tmp_path):
    f = surface_factory()
    writer = pg.PostgresWriter(pg_db, run=RUN_INFO, name="w1", flush_ms=20, batch_rows=4, spill_dir=tmp_path)
    try:
        patches = [f.patch(200 + i, changed=[i % 3]) for i in range(10)]
        for p in patches:
            writer.submit(p)
        writer.submit(StatusReport(source="worker-0", ts_ms=1, started_ms=0))
        assert writer.flush(timeout=30)
        stats = writer.stats()
    finally:
        assert writer.close(timeout=10)
    assert stats["written_events"] == 10
    assert stats["ignored"] == 1 and stats["ignored_types"] == {"StatusReport": 1} and stats["errors"] == {}
    assert stats["batches"] >= 3  # batch_rows = 4
    assert stats["rows_written"]["surface_state"] == 10
    assert stats["pending"] == 0 and stats["spilled"] == 0
    with pg.connect(pg_db) as conn:
        assert pg.latest_surface(conn, "deribit", "BTC") == f.fold(patches)


def test_writer_rejects_only_the_event_the_database_refuses(pg_db, surface_factory, tmp_path):
    f = surface_factory()
    good = [f.fit(f.expiry(i), 300) for i in range(5)]
    bad = f.fit(f.expiry(9), 300, n_quotes=2**40)  # does not fit the integer column
    writer = pg.PostgresWriter(pg_db, run=RUN_INFO, name="w2", flush_ms=20, batch_rows=500, spill_dir=tmp_path)
    try:
        for ev in good[:2] + [bad] + good[2:]:
            writer.submit(ev)
        assert writer.flush(timeout=30)
        stats = writer.stats()
    finally:
        writer.close(timeout=10)
    assert stats["rejected"] == 1
    assert stats["errors"] == {"rejected.NumericValueOutOfRange": 1}
    assert count(pg_db, "smile_fits") == 5
    rejected = (tmp_path / RUN / "w2.rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 1 and str(2**40) in rejected[0]


def test_writer_refuses_bad_options(pg_db):
    with pytest.raises(ValueError, match="batch_rows"):
        pg.PostgresWriter(pg_db, run=RUN_INFO, batch_rows=0, flush_ms=10, spill_dir="unused")
    with pytest.raises(ValueError, match="file names"):
        pg.PostgresWriter(pg_db, run=RUN_INFO, name="a/b", batch_rows=10, flush_ms=10, spill_dir="unused")
    with pytest.raises(TypeError, match="batch_rows"):  # no default: graph.toml holds it
        pg.PostgresWriter(pg_db, run=RUN_INFO, flush_ms=10, spill_dir="unused")


# ---------------------------------------------------------------- outages (own server)


class Outage:
    """A dedicated pgserver instance this module may stop and start."""

    def __init__(self, server) -> None:
        self.server = server

    @property
    def dsn(self) -> str:
        return self.server.get_uri()

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()


@pytest.fixture(scope="module")
def outage_server():
    for base in private_dir("volgraph-pg-outage-"):
        server = pg.embedded_server(base / "data", cleanup_mode="delete")
        yield server
        server.cleanup()


@pytest.fixture
def outage(outage_server):
    ctl = Outage(outage_server)
    yield ctl
    ctl.start()  # leave it running for the next test and the session cleanup
    with psycopg.connect(ctl.dsn, autocommit=True) as conn:
        # every table, view, function and partition the migrations made, so the next test migrates
        # from nothing (a list of tables went stale: 007's bytea market_events outlived it and 004's
        # JSON view then failed on the next test's fresh migration)
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def test_writer_buffers_spills_and_recovers_when_the_database_returns(outage, surface_factory, tmp_path):
    f = surface_factory()
    writer = pg.PostgresWriter(
        outage.dsn, run=RUN_INFO, name="w3", flush_ms=10, batch_rows=8, max_buffer_rows=5, spill_segment_rows=4,
        spill_dir=tmp_path, retry_min_ms=10, retry_max_ms=200,
    )
    try:
        before = [f.patch(500 + i, changed=[i % 4]) for i in range(3)]
        for ev in before:
            writer.submit(ev)
        assert writer.flush(timeout=30)

        outage.stop()
        during = [f.patch(503 + i, changed=[i % 4], removed=[(i + 1) % 4] if i % 5 == 0 else []) for i in range(20)]
        during += [f.fit(f.expiry(7), 600 + i) for i in range(5)]
        for ev in during:
            writer.submit(ev)
        # 25 events, 5 fit in memory, the rest go to disk while the database is away.
        assert writer.wait_until(lambda s: s["spilled"] == 20 and s["retries"] >= 1, timeout=30), writer.stats()
        assert writer.stats()["buffered"] == 5
        assert len(list((tmp_path / RUN).glob("w3.spill.*.jsonl"))) == 5  # 20 rows / 4 per segment
        assert not writer.db_up

        outage.start()
        assert writer.flush(timeout=60), writer.stats()
        stats = writer.stats()
    finally:
        writer.close(timeout=10)
    assert stats["written_events"] == 28 and stats["pending"] == 0 and stats["spill_pending"] == 0
    assert stats["errors"].get("db_down.write", 0) + stats["errors"].get("db_down.connect", 0) == stats["retries"]
    assert list((tmp_path / RUN).glob("w3.spill.*.jsonl")) == []
    with pg.connect(outage.dsn) as conn:
        patches = [ev for ev in before + during if isinstance(ev, SurfacePatch)]
        assert pg.latest_surface(conn, "deribit", "BTC") == f.fold(patches)
    assert count(outage.dsn, "smile_fits", "epoch >= 600") == 5


def test_unwritten_events_survive_a_writer_restart_on_disk(outage, surface_factory, tmp_path):
    f = surface_factory()
    events = [f.patch(700 + i, changed=[i % 3]) for i in range(6)]
    outage.stop()
    first = pg.PostgresWriter(
        outage.dsn, run=RUN_INFO, name="w4", flush_ms=10, batch_rows=500, max_buffer_rows=100, spill_dir=tmp_path, retry_min_ms=10, retry_max_ms=50
    )
    for ev in events:
        first.submit(ev)
    assert first.wait_until(lambda s: s["buffered"] == 6 and s["retries"] >= 1, timeout=30)
    assert not first.close(timeout=0.2)  # the database is down: everything goes to disk
    assert sum(1 for p in (tmp_path / RUN).glob("w4.spill.*.jsonl") for _ in p.open()) == 6

    outage.start()
    second = pg.PostgresWriter(outage.dsn, run=RUN_INFO, name="w4", flush_ms=10, batch_rows=500, spill_dir=tmp_path)
    assert second.pending() == 6
    assert second.flush(timeout=60)
    assert second.close(timeout=10)
    assert list((tmp_path / RUN).glob("w4.spill.*.jsonl")) == []
    with pg.connect(outage.dsn) as conn:
        assert pg.latest_surface(conn, "deribit", "BTC") == f.fold(events)


def test_a_stop_during_an_outage_before_any_spill_keeps_every_row(outage, surface_factory, tmp_path):
    """The spill folder does not exist yet (nothing has spilled): the stop creates it and
    writes memory there, and a later writer delivers every row. It once lost them all: the
    writer thread died with FileNotFoundError."""
    f = surface_factory()
    events = [f.patch(800 + i, changed=[i % 3]) for i in range(4)]
    spill = tmp_path / "not-yet" / "spill"
    outage.stop()
    first = pg.PostgresWriter(outage.dsn, run=RUN_INFO, name="w5", flush_ms=10, batch_rows=500, max_buffer_rows=100,
                              spill_dir=spill, retry_min_ms=10, retry_max_ms=50)
    for ev in events:
        first.submit(ev)
    assert first.wait_until(lambda s: s["buffered"] == 4 and s["retries"] >= 1, timeout=30)
    assert not first.close(timeout=0.2)
    assert sum(1 for p in (spill / RUN).glob("w5.spill.*.jsonl") for _ in p.open()) == 4

    outage.start()
    second = pg.PostgresWriter(outage.dsn, run=RUN_INFO, name="w5", flush_ms=10, batch_rows=500, spill_dir=spill)
    assert second.flush(timeout=60) and second.close(timeout=10)
    with pg.connect(outage.dsn) as conn:
        assert pg.latest_surface(conn, "deribit", "BTC") == f.fold(events)


def test_a_corrupt_spill_line_is_set_aside_and_the_rest_written(pg_db, surface_factory, tmp_path):
    from operators.events import to_json

    f = surface_factory()
    good = [f.patch(750 + i, changed=[i]) for i in range(3)]
    lines = [to_json(good[0]), to_json(good[1])[:40], to_json(good[2])]  # a line cut by a crash
    (tmp_path / RUN).mkdir()
    (tmp_path / RUN / "w5.spill.000000000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    writer = pg.PostgresWriter(pg_db, run=RUN_INFO, name="w5", flush_ms=10, batch_rows=500, spill_dir=tmp_path)
    assert writer.pending() == 3
    assert writer.flush(timeout=30) and writer.close(timeout=10)
    assert writer.stats()["errors"] == {"rejected.spill_corrupt": 1}
    assert len((tmp_path / RUN / "w5.rejected.jsonl").read_text().splitlines()) == 1
    assert list((tmp_path / RUN).glob("w5.spill.*")) == []
    with pg.connect(pg_db) as conn:
        assert pg.latest_surface(conn, "deribit", "BTC") == f.fold([good[0], good[2]])


# ---------------------------------------------------------------- bytewax sink


def test_postgres_sink_in_a_dataflow(pg_db, surface_factory, tmp_path):
    from bytewax.dataflow import Dataflow
    from bytewax.operators import input as bw_input
    from bytewax.operators import output as bw_output
    import bytewax.operators as op
    from bytewax.testing import TestingSource, run_main

    f = surface_factory(underlying="ETH")
    events = [f.patch(800 + i, changed=[i % 4], removed=[3] if i == 5 else []) for i in range(12)]
    events += [f.fit(f.expiry(1), 900), StatusReport(source="w", ts_ms=0, started_ms=0)]
    sink = pg.PostgresSink(pg_db, run=RUN_INFO, partitions=1, spill_dir=tmp_path, flush_ms=20, batch_rows=5,
                           handoff_timeout_s=30, depth_vols=False)
    flow = Dataflow("pg_sink_test")
    stream = bw_input("inp", flow, TestingSource(events, batch_size=3))
    bw_output("pg", op.key_on("key", stream, lambda e: "one"), sink)
    run_main(flow)

    (writer,) = sink.writers
    stats = writer.stats()
    assert stats["written_events"] == 13 and stats["ignored"] == 1 and stats["pending"] == 0
    with pg.connect(pg_db) as conn:
        assert pg.latest_surface(conn, "deribit", "ETH") == f.fold(events[:12])
    assert count(pg_db, "smile_fits", "epoch = 900") == 1
