"""Runs in PostgreSQL (issue #15 parts 3 and 6, deploy/sql/003_runs.sql) against a real server
(pgserver): every row says its run, a run never touches another's rows, a resend within a run
is a no-op, migration 003 keeps older rows under 'legacy', the surface as of a time equals
the fold of the patches emitted by then, node series read back what was written, and RunInfo
refuses bad input with a message naming the field."""

from __future__ import annotations

import re
import uuid

import msgspec
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import postgres as pg
from connectors.postgres.runs import RUN_ID_PATTERN, check_run_id
from tests.helpers.patches import surface_ops
from operators.events import SmileFit

TABLE_KEYS = {t: ", ".join(spec["cols"][: spec["key"]]) for t, spec in pg.TABLES.items()}


def run_info(run_id: str, started_ms: int = 1_000, **overrides) -> pg.RunInfo:
    values = dict(run_id=run_id, config_hash="cfg-a", code_version="v1",
                  methods={"iv": "iv-1", "forward": "fwd-1", "svi": "svi-1"}, started_ms=started_ms,
                  source="file", detail="tests/connectors/postgres/test_runs.py")
    values.update(overrides)
    return pg.RunInfo(**values)


def fresh(conn, *runs: pg.RunInfo) -> None:
    pg.migrate(conn)
    for run in runs:
        pg.register_run(conn, run)


def with_values(event, **analytics):
    """The event with the given node values in every view (another run's different results)."""
    views = tuple(msgspec.structs.replace(v, analytics={**v.analytics, **analytics}) for v in event.expiries)
    return msgspec.structs.replace(event, expiries=views)


def differing_rows(conn, table: str, saved: str, run_id: str) -> int:
    """Rows in `saved` or in `table`'s rows of `run_id`, but not in both (compared in SQL)."""
    return conn.execute(
        f"SELECT (SELECT count(*) FROM (TABLE {saved} EXCEPT ALL SELECT * FROM {table} WHERE run_id = %s) a)"
        f" + (SELECT count(*) FROM (SELECT * FROM {table} WHERE run_id = %s EXCEPT ALL TABLE {saved}) b)",
        (run_id, run_id)).fetchone()[0]


def save_run(conn, run_id: str, prefix: str) -> dict[str, str]:
    saved = {}
    for table in pg.TABLES:
        name = f"{prefix}_{table}"
        conn.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM {table} WHERE run_id = %s", (run_id,))
        saved[table] = name
    conn.commit()  # write_plan's transaction must be the outermost: its stage tables empty on commit
    return saved


# ---------------------------------------------------------------- runs never touch each other


def test_two_runs_writing_the_same_keys_keep_separate_rows(pg_db, surface_factory):
    f = surface_factory()
    first = [f.fit(f.expiry(0), 100), f.patch(100, changed=[0, 1, 2]), f.patch(101, changed=[1], removed=[2]),
             f.patch(102, changed=[0, 3], index_px=None)]
    # The second run: same keys, other results; a snapshot at epoch 101 (its clean-up deletes
    # that epoch's other views — of this run only) and a removal of expiry 0 at epoch 102.
    second = [with_values(first[1], rr25=-0.5), f.snapshot(101, expiries=[1], index_px=None),
              f.patch(102, changed=[3], removed=[0])]
    with pg.connect(pg_db) as conn:
        fresh(conn, run_info("r1", 1_000), run_info("r2", 2_000, config_hash="cfg-b"))
        pg.write_events(conn, first, "r1")
        saved = save_run(conn, "r1", "r1_before")
        written = pg.write_events(conn, second, "r2")
        pg.write_events(conn, second, "r2")  # and once more: a resend
        changed = {t: differing_rows(conn, t, saved[t], "r1") for t in pg.TABLES}
        counts = dict(conn.execute("SELECT run_id, count(*) FROM expiry_views GROUP BY run_id").fetchall())
        surfaces = {run: pg.latest_surface(conn, "deribit", "BTC", run_id=run) for run in ("r1", "r2")}
        latest = pg.latest_surface(conn, "deribit", "BTC")
        rr25 = conn.execute("SELECT DISTINCT value FROM expiry_nodes WHERE run_id = 'r2' AND epoch = 100"
                            " AND node = 'rr25'").fetchall()
        r1_rr25 = conn.execute("SELECT count(*) FROM expiry_nodes WHERE run_id = 'r1' AND node = 'rr25'"
                               " AND value = -0.5").fetchone()[0]
    assert changed == {t: 0 for t in pg.TABLES}  # r1's rows, compared in SQL: not one changed
    assert written["expiry_views"] == 3 + 1 + 2 and counts == {"r1": 3 + 2 + 2, "r2": 6}
    assert surfaces["r1"] == f.fold(first[1:])
    assert surfaces["r2"] == f.fold(second)
    assert latest == surfaces["r2"]  # the run started last
    assert rr25 == [(-0.5,)] and r1_rr25 == 0


def test_the_latest_run_is_by_start_then_epoch(pg_db, surface_factory):
    f = surface_factory(underlying="ETH")
    early, late = [f.patch(2, changed=[0]), f.patch(10, changed=[4])], [f.patch(5, changed=[1])]
    with pg.connect(pg_db) as conn:
        # "b" started later but wrote older epochs than a's last: start decides; "c" ties with "b" on start
        fresh(conn, run_info("a", 1_000), run_info("b", 3_000), run_info("c", 3_000))
        pg.write_events(conn, early, "a")
        pg.write_events(conn, late, "b")
        assert pg.latest_surface(conn, "deribit", "ETH") == f.fold(late)
        pg.write_events(conn, [f.patch(4, changed=[2])], "c")  # same start as b, older epoch
        assert pg.latest_surface(conn, "deribit", "ETH") == f.fold(late)
        pg.write_events(conn, [f.patch(6, changed=[3])], "c")  # now c's epoch is the later
        assert pg.latest_surface(conn, "deribit", "ETH").expiries[-1].expiry_ms == f.expiry(3)
        # as of a time before b and c emitted anything, only a had written (epoch 2, emitted at 105)
        assert pg.surface_as_of(conn, "deribit", "ETH", 150) == f.fold(early[:1])
        assert pg.surface_as_of(conn, "deribit", "ETH", 104) is None
        # at 255 b's epoch 5 is out, c's latest is epoch 4: same start, b's later epoch decides
        assert pg.surface_as_of(conn, "deribit", "ETH", 255) == f.fold(late)
        assert conn.execute("SELECT surface_run('deribit', 'ETH')").fetchone()[0] == "c"
        assert pg.latest_surface(conn, "deribit", "ETH", run_id="nobody") is None


def test_a_resent_batch_within_a_run_changes_nothing(pg_db, surface_factory):
    f = surface_factory()
    b1 = [f.patch(300, changed=[0, 1], index_px=7.0), f.fit(f.expiry(5), 300)]
    b2 = [f.patch(301, changed=[1], removed=[0], index_px=None), f.snapshot(302, expiries=[1, 2])]
    with pg.connect(pg_db) as conn:
        fresh(conn, run_info("r1"))
        pg.write_events(conn, b1, "r1")
        pg.write_events(conn, b2, "r1")
        saved = save_run(conn, "r1", "after")
        again = [pg.write_events(conn, b1, "r1"), pg.write_events(conn, b2, "r1")]
        changed = {t: differing_rows(conn, t, saved[t], "r1") for t in pg.TABLES}
        assert pg.latest_surface(conn, "deribit", "BTC", "r1") == f.fold(b1[:1] + b2)
    assert changed == {t: 0 for t in pg.TABLES}
    assert [c["smile_fits"] for c in again] == [0, 0]  # fits are immutable: DO NOTHING


def test_rows_of_an_unregistered_run_are_refused(pg_db, surface_factory):
    f = surface_factory()
    with pg.connect(pg_db) as conn:
        fresh(conn)
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="violates foreign key constraint"):
            pg.write_events(conn, [f.patch(1, changed=[0])], "never-registered")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM surface_state").fetchone()[0] == 0
    with pytest.raises(ValueError, match=re.escape(RUN_ID_PATTERN)):
        pg.BatchPlan("has space")
    with pytest.raises(ValueError, match="run_id"):
        pg.rows_for([f.patch(1, changed=[0])], "")


# ---------------------------------------------------------------- migration 003 on old rows


def test_migration_3_keeps_pre_run_rows_under_legacy(pg_db, tmp_path, surface_factory):
    f = surface_factory()
    events = [f.fit(f.expiry(4), 50), f.patch(50, changed=[0, 1, 2]), f.patch(51, changed=[1], removed=[2]),
              f.snapshot(52, expiries=[0, 1, 3], index_px=None), f.patch(53, changed=[3])]
    old = pg.rows_for(events, "x")  # what the pre-003 writer wrote: the same rows without the run
    for name in ("001_init.sql", "002_expiry_nodes.sql"):
        (tmp_path / name).write_text((pg.SQL_DIR / name).read_text())
    with pg.connect(pg_db) as conn:
        assert pg.migrate(conn, tmp_path) == [1, 2]
        # the columns of the pre-003 schema (later migrations add some the writer now fills)
        old_cols = {t: [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE "
                                                   "table_name = %s ORDER BY ordinal_position", (t,)).fetchall()]
                    for t in pg.TABLES}
        # the tables of the pre-003 schema (later migrations add tables too, e.g. 006's node tables)
        old_tables = [t for t in pg.TABLES if old_cols[t]]
        for table in old_tables:
            spec = pg.TABLES[table]
            keep = [i for i, c in enumerate(spec["cols"][1:]) if c in old_cols[table]]
            cols = ", ".join(spec["cols"][1:][i] for i in keep)
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                for row in old[table]:
                    copy.write_row([row[1:][i] for i in keep])
        conn.commit()
        before = {t: conn.execute(f"SELECT {', '.join(old_cols[t])} FROM {t} "
                                  f"ORDER BY {TABLE_KEYS[t].replace('run_id, ', '')}").fetchall() for t in old_tables}
        assert pg.migrate(conn) == [v for v, _ in pg.sql_files() if v >= 3]  # 003 and any later
        after = {t: conn.execute(f"SELECT {', '.join(old_cols[t])}, run_id FROM {t} ORDER BY {TABLE_KEYS[t]}")
                 .fetchall() for t in old_tables}
        runs = pg.list_runs(conn)
        legacy = pg.latest_surface(conn, "deribit", "BTC")
        # the run column has no default left: a writer that forgets the run fails loudly
        with pytest.raises(psycopg.errors.NotNullViolation), conn.transaction():
            conn.execute("INSERT INTO surface_state (venue, underlying, epoch, ts_exchange_ms, ts_emit_ms)"
                         " VALUES ('deribit', 'BTC', 1, 1, 1)")
        # a new run writes the same events beside them; the legacy rows stay as they were
        pg.register_run(conn, run_info("new"))
        pg.write_events(conn, events, "new")
        legacy_after = {t: conn.execute(f"SELECT {', '.join(old_cols[t])}, run_id FROM {t} WHERE run_id = 'legacy' "
                                        f"ORDER BY {TABLE_KEYS[t]}").fetchall() for t in old_tables}
        assert pg.latest_surface(conn, "deribit", "BTC", run_id="legacy") == legacy
        assert pg.latest_surface(conn, "deribit", "BTC") == legacy  # same rows, newer run
    for table in old_tables:
        assert len(before[table]) == len(old[table]) > 0, table
        assert after[table] == [(*row, "legacy") for row in before[table]], table  # run_id: the new last column
        assert legacy_after[table] == after[table], table
    assert [(r.run_id, r.started_ms, r.source, r.ended_ms) for r in runs] == [("legacy", 0, "live", None)]
    assert legacy == f.fold([e for e in events if not isinstance(e, SmileFit)])


def test_migration_3_on_a_fresh_database_adds_no_legacy_run(pg_db):
    with pg.connect(pg_db) as conn:
        assert pg.migrate(conn) == [v for v, _ in pg.sql_files()]
        assert pg.list_runs(conn) == []
        keys = dict(conn.execute(
            "SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
            " WHERE k.contype = 'p' AND c.relname = ANY(%s)", (list(pg.TABLES),)).fetchall())
    assert {t: d for t, d in keys.items()} == {t: f"PRIMARY KEY ({TABLE_KEYS[t]})" for t in pg.TABLES}


# ---------------------------------------------------------------- as-of and series


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=surface_ops(2), batch_size=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_surface_as_of_is_the_fold_of_the_patches_emitted_by_then(pg_db, surface_factory, ops, batch_size, seed):
    f = surface_factory(underlying=f"U{uuid.uuid4().hex[:8]}", seed=seed)
    events, epoch = [], 1000
    for kind, step, changed, removed, has_index in ops:
        epoch += step
        index_px = 90_000.0 + seed if has_index else None
        if kind == "snapshot":
            events.append(f.snapshot(epoch, expiries=changed, index_px=index_px))
        else:
            events.append(f.patch(epoch, changed=sorted(changed), removed=sorted(removed), index_px=index_px))
    # another run writes other results for the same surface, and started later
    other = [with_values(e, atm_vol=-1.0) for e in events]
    times = sorted({e.ts_emit_ms + d for e in events for d in (-1, 0, 1)} | {0, 10**13})
    with pg.connect(pg_db) as conn:
        fresh(conn, run_info("first", 1), run_info("second", 2))
        for i in range(0, len(events), batch_size):
            pg.write_events(conn, events[i : i + batch_size], "first")
            pg.write_events(conn, other[i : i + batch_size], "second")
        for t in times:
            by_then = [e for e in events if e.ts_emit_ms <= t]
            assert pg.surface_as_of(conn, f.venue, f.underlying, t, run_id="first") == f.fold(by_then), t
            expected_other = f.fold([e for e in other if e.ts_emit_ms <= t])
            assert pg.surface_as_of(conn, f.venue, f.underlying, t) == expected_other, t  # default: latest run
        assert pg.surface_as_of(conn, f.venue, f.underlying, 10**13, "first") == pg.latest_surface(
            conn, f.venue, f.underlying, "first")


def test_node_series_returns_the_values_written(pg_db, surface_factory):
    f = surface_factory(underlying="SOL")
    patches = [f.patch(200 + i, changed=[i % 3, 3]) for i in range(8)]
    patches.append(f.patch(208, changed=[0], removed=[3]))  # a removal: no values at 208 for expiry 3
    replay = [with_values(p, rr25=float(i)) for i, p in enumerate(patches)]
    with pg.connect(pg_db) as conn:
        fresh(conn, run_info("live-1", 10, source="live"), run_info("replay-1", 20, source="database"))
        pg.write_events(conn, patches[:4], "live-1")
        pg.write_events(conn, patches[4:], "live-1")
        pg.write_events(conn, replay, "replay-1")
        start, end = patches[2].ts_emit_ms, patches[6].ts_emit_ms
        one = pg.node_series(conn, "deribit", "SOL", "rr25", start, end, expiry_ms=f.expiry(3), run_id="live-1")
        every = pg.node_series(conn, "deribit", "SOL", "rr25", 0, 10**13, run_id="live-1")
        default = pg.node_series(conn, "deribit", "SOL", "rr25", start, end, expiry_ms=f.expiry(3))
        failed = pg.node_series(conn, "deribit", "SOL", "missing", 0, 10**13, expiry_ms=f.expiry(3), run_id="live-1")
        none = pg.node_series(conn, "deribit", "XRP", "rr25", 0, 10**13)
        side_by_side = conn.execute(
            "SELECT a.epoch, a.expiry_ms, a.value, b.value FROM node_history a JOIN node_history b"
            " USING (venue, underlying, expiry_ms, epoch, node) WHERE a.run_id = 'live-1' AND b.run_id = 'replay-1'"
            " AND node = 'rr25' AND venue = 'deribit' AND underlying = 'SOL' ORDER BY 1, 2").fetchall()
        tenors = conn.execute("SELECT ts_ms, tenor_days, atm_vol FROM tenor_history WHERE run_id = 'live-1'"
                              " AND underlying = 'SOL' ORDER BY ts_ms, tenor_days").fetchall()
    assert one == [(p.ts_emit_ms, f.expiry(3), p.expiries[-1].analytics["rr25"]) for p in patches[2:7]]
    assert every == [(p.ts_emit_ms, v.expiry_ms, v.analytics["rr25"]) for p in patches for v in p.expiries]
    assert default == [(p.ts_emit_ms, f.expiry(3), float(i)) for i, p in enumerate(replay) if 2 <= i <= 6]
    assert failed == [(p.ts_emit_ms, f.expiry(3), None) for p in patches[:8]]
    assert none == []
    assert side_by_side == [(p.epoch, v.expiry_ms, v.analytics["rr25"], float(i))
                            for i, p in enumerate(patches) for v in p.expiries]
    assert tenors == [(p.ts_emit_ms, t.tenor_days, t.atm_vol) for p in patches for t in p.tenors]


# ---------------------------------------------------------------- runs: register, end, validate


def test_register_is_idempotent_and_refuses_another_run_under_the_same_id(pg_db):
    run = run_info("live-2026", 5_000, source="live", detail="deribit+okx")
    with pg.connect(pg_db) as conn:
        fresh(conn, run)
        pg.register_run(conn, run)  # a resumed run registers again
        pg.register_run(conn, run_info("live-2026", 9_999, source="live", detail="deribit+okx"))  # start stands
        with pytest.raises(ValueError, match=r"config_hash: registered 'cfg-a', this run 'cfg-b'.*new run id"):
            pg.register_run(conn, run_info("live-2026", 5_000, source="live", detail="deribit+okx",
                                           config_hash="cfg-b"))
        with pytest.raises(ValueError, match="methods"):
            pg.register_run(conn, run_info("live-2026", 5_000, source="live", detail="deribit+okx",
                                           methods={"iv": "iv-2", "forward": "fwd-1", "svi": "svi-1"}))
        pg.end_run(conn, "live-2026", 6_000)
        pg.register_run(conn, run_info("replay.1", 7_000, source="database", detail="2026-01-01T00:00Z..01:00Z"))
        runs = pg.list_runs(conn)
        with pytest.raises(ValueError, match="register_run before end_run"):
            pg.end_run(conn, "unknown", 1)
        with pytest.raises(ValueError, match="before its started_ms"):
            pg.end_run(conn, "replay.1", 6_999)
        stored = conn.execute("SELECT run_id, methods, ended_ms FROM runs ORDER BY run_id").fetchall()
    assert runs == [pg.RunRecord(**{**vars(run), "ended_ms": 6_000}),
                    pg.RunRecord(**{**vars(run_info("replay.1", 7_000, source="database",
                                                    detail="2026-01-01T00:00Z..01:00Z")), "ended_ms": None})]
    assert stored == [("live-2026", run.methods, 6_000), ("replay.1", run.methods, None)]


@pytest.mark.parametrize("field, value, message", [
    ("run_id", "a b", r"run_id 'a b' must match"),
    ("run_id", "x" * 65, r"must match \[A-Za-z0-9_.:-\]\{1,64\}"),
    ("run_id", "legacy", r"reserved for rows written before runs existed"),
    ("run_id", 7, r"run_id 7 must match"),
    ("source", "replay", r"RunInfo.source must be one of live, file, database, got 'replay'"),
    ("config_hash", "", r"RunInfo.config_hash must be a non-empty string"),
    ("code_version", None, r"RunInfo.code_version must be a non-empty string"),
    ("detail", "a\x00b", r"RunInfo.detail .* NUL character"),
    ("methods", {"iv": 1}, r"RunInfo.methods must be a dict"),
    ("methods", [("iv", "1")], r"RunInfo.methods must be a dict"),
    ("started_ms", 1.5, r"RunInfo.started_ms must be UTC epoch milliseconds"),
    ("started_ms", True, r"RunInfo.started_ms"),
    ("started_ms", -1, r"RunInfo.started_ms"),
])
def test_run_info_names_the_bad_field_and_the_fix(field, value, message):
    with pytest.raises(ValueError, match=message):
        run_info("ok", **{field: value}) if field != "run_id" else run_info(value)


# ---------------------------------------------------------------- properties of the validators

VALID_ID = st.from_regex(re.compile(RUN_ID_PATTERN), fullmatch=True)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=70)


@given(run_id=VALID_ID)
def test_every_id_of_the_pattern_is_accepted(run_id):
    assert check_run_id(run_id) == run_id
    assert pg.BatchPlan(run_id).run_id == run_id


@given(text=ANY_TEXT)
def test_an_id_is_accepted_exactly_when_all_its_characters_are_allowed_and_it_is_1_to_64_long(text):
    ok = 1 <= len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "_.:-") for c in text)
    if ok:
        assert check_run_id(text) == text
    else:
        with pytest.raises(ValueError, match=r"run_id .* must match .*: choose one"):
            check_run_id(text)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=ANY_TEXT)
def test_the_databases_check_agrees_with_the_python_rule(pg_db, text):
    with pg.connect(pg_db) as conn:
        db_ok = conn.execute("SELECT %s ~ '^[A-Za-z0-9_.:-]{1,64}$'", (text,)).fetchone()[0]
    try:
        check_run_id(text)
        py_ok = True
    except ValueError:
        py_ok = False
    assert db_ok == py_ok


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run_id=VALID_ID, config_hash=st.text(max_size=20), code_version=st.text(max_size=20),
       methods=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4),
       started_ms=st.integers(-5, 2**63), source=st.sampled_from(["live", "file", "database", "other", ""]),
       detail=st.text(max_size=30))
def test_a_run_info_is_refused_with_a_value_error_or_round_trips_through_the_table(
        pg_db, run_id, config_hash, code_version, methods, started_ms, source, detail):
    try:
        run = pg.RunInfo(run_id=run_id, config_hash=config_hash, code_version=code_version, methods=methods,
                         started_ms=started_ms, source=source, detail=detail)
    except ValueError as exc:
        assert re.search(r"run_id|RunInfo\.(config_hash|code_version|methods|started_ms|source|detail)", str(exc))
        return
    with pg.connect(pg_db) as conn:
        pg.migrate(conn)
        conn.execute("DELETE FROM runs WHERE run_id = %s", (run.run_id,))
        pg.register_run(conn, run)
        pg.register_run(conn, run)
        (stored,) = [r for r in pg.list_runs(conn) if r.run_id == run.run_id]
    assert stored == pg.RunRecord(**vars(run))


def test_a_resumed_run_registering_again_is_running_again(pg_db):
    """end_run records a stop; the same run registering again (a resume) clears it."""
    run = pg.RunInfo(run_id="resumed", config_hash="c", code_version="v", methods={"svi": "1"}, started_ms=10,
                     source="live", detail="d")
    with pg.connect(pg_db) as conn:
        pg.migrate(conn)
        pg.register_run(conn, run)
        pg.end_run(conn, "resumed", 20)
        assert [(r.run_id, r.ended_ms) for r in pg.list_runs(conn)] == [("resumed", 20)]
        pg.register_run(conn, run)
        assert [(r.run_id, r.started_ms, r.ended_ms) for r in pg.list_runs(conn)] == [("resumed", 10, None)]


def test_a_fits_provenance_is_stored(pg_db, surface_factory):
    """smile_fits keeps how each fit was made (deploy/sql/005_fit_provenance.sql)."""
    f = surface_factory()
    fits = [f.fit(f.expiry(0), 40, forward_method="parity", repaired=True),
            f.fit(f.expiry(1), 40, forward_method="future")]
    with pg.connect(pg_db) as conn:
        pg.migrate(conn)
        pg.register_run(conn, pg.RunInfo(run_id="prov", config_hash="c", code_version="v", methods={}, started_ms=1,
                                         source="file", detail="d"))
        pg.write_events(conn, fits, "prov")
        rows = conn.execute("SELECT expiry_ms, forward_method, repaired FROM smile_fits ORDER BY expiry_ms").fetchall()
    assert rows == [(f.expiry(0), "parity", True), (f.expiry(1), "future", False)]
