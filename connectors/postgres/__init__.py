"""PostgreSQL persistence: schema migrations, a batched idempotent writer, a bytewax sink,
and the rebuild of the latest surface from stored rows (DESIGN.md §7).

Only translates events <-> rows: no volatility maths here. The writer never blocks the
dataflow's hot path: `submit()` appends to a queue and a background thread writes; when
the database is down rows are buffered in memory, then spilled to JSON-lines files, and
written when it returns. Every table has a natural key, so writing the same event twice
is a no-op (ON CONFLICT).
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import orjson
import psycopg
import psycopg.types.json
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.events import (
    ContractError,
    SmileFit,
    SurfacePatch,
    SurfaceSnapshot,
    dumps,
    from_dict,
    from_json,
    to_json,
)

log = logging.getLogger("volgraph.postgres")

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"
DEFAULT_DATA_DIR = Path(".data/pg")
DEFAULT_SPILL_DIR = Path(".data/spill")
_MIGRATION_LOCK_ID = 0x766F6C67  # "volg": serialises migrate() across workers
_SQL_FILE = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.sql$")

# ---------------------------------------------------------------- connections


_servers: dict[Path, Any] = {}  # keep pgserver handles alive for the process lifetime


def embedded_server(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, *, cleanup_mode: Optional[str] = "stop"):
    """Start (or attach to) a real PostgreSQL in `data_dir` with pgserver; returns its handle.

    cleanup_mode: "stop" stops the server when this process exits, "delete" also removes
    the data folder, None leaves it running."""
    import pgserver  # imported here: only the embedded mode needs it

    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(path, cleanup_mode=cleanup_mode)
    _servers[path] = server
    return server


def embedded_postgres(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, *, cleanup_mode: Optional[str] = "stop") -> str:
    """Start (or attach to) an embedded PostgreSQL under `data_dir`; returns its DSN."""
    return embedded_server(data_dir, cleanup_mode=cleanup_mode).get_uri()


def connect(dsn: str, *, autocommit: bool = False, connect_timeout_s: float = 5.0) -> psycopg.Connection:
    """A psycopg connection whose jsonb columns decode with orjson (exact float round trip)."""
    conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, int(round(connect_timeout_s))))
    psycopg.types.json.set_json_loads(orjson.loads, conn)
    return conn


# ---------------------------------------------------------------- migrations


def sql_files(sql_dir: str | os.PathLike = SQL_DIR) -> list[tuple[int, Path]]:
    """The numbered migration files in `sql_dir`, in version order."""
    found: dict[int, Path] = {}
    for path in sorted(Path(sql_dir).glob("*.sql")):
        match = _SQL_FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} is not named NNN_name.sql; rename it (e.g. 002_add_table.sql)")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"migration version {version} appears twice: {found[version].name} and {path.name}; renumber one")
        found[version] = path
    return sorted(found.items())


def migrate(conn: psycopg.Connection, sql_dir: str | os.PathLike = SQL_DIR) -> list[int]:
    """Apply each numbered SQL file in `sql_dir` once, in order; returns the versions applied now.

    Idempotent and safe to call from several workers at once (an advisory lock serialises
    them); a failing file rolls back and raises naming the file."""
    files = sql_files(sql_dir)
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
        for version, path in files:
            if version in done:
                continue
            try:
                with conn.transaction():  # a savepoint, so the error names this file
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, path.name))
            except psycopg.Error as exc:
                raise RuntimeError(f"migration {path} failed: {exc}; fix the SQL and rerun") from exc
            applied_now.append(version)
    return applied_now


# ---------------------------------------------------------------- events -> rows

# Column order of each table's staged COPY; the first `key` columns are the natural key.
TABLES: dict[str, dict[str, Any]] = {
    "smile_fits": {
        "cols": (
            "venue", "underlying", "expiry_ms", "epoch", "ts_exchange_ms", "ts_emit_ms", "t_years",
            "forward", "a", "b", "rho", "m", "sigma", "rmse_vol_pts", "n_quotes", "butterfly_ok",
            "min_g", "fit_ms", "inside_band_frac", "warm",
        ),
        "key": 4,
        # A fit is immutable history: the first write of a key stands.
        "conflict": "DO NOTHING",
    },
    "expiry_views": {
        "cols": (
            "venue", "underlying", "expiry_ms", "epoch", "ts_emit_ms", "removed", "atm_vol", "rr25",
            "bf25", "rr10", "bf10", "calendar_ok", "analytics", "view",
        ),
        "key": 4,
        # Last write wins within an epoch, as apply_patch does for in-order patches.
        "conflict": "DO UPDATE SET ts_emit_ms = EXCLUDED.ts_emit_ms, removed = EXCLUDED.removed,"
        " atm_vol = EXCLUDED.atm_vol, rr25 = EXCLUDED.rr25, bf25 = EXCLUDED.bf25,"
        " rr10 = EXCLUDED.rr10, bf10 = EXCLUDED.bf10, calendar_ok = EXCLUDED.calendar_ok,"
        " analytics = EXCLUDED.analytics, view = EXCLUDED.view",
    },
    "surface_state": {
        "cols": (
            "venue", "underlying", "epoch", "ts_exchange_ms", "ts_emit_ms", "is_snapshot", "index_px",
            "n_changed", "n_removed", "tenors", "calendar",
        ),
        "key": 3,
        # A snapshot row stays a snapshot; a patch keeps the previous index price when it
        # has none (apply_patch semantics); a snapshot sets it outright.
        "conflict": "DO UPDATE SET ts_exchange_ms = EXCLUDED.ts_exchange_ms,"
        " ts_emit_ms = EXCLUDED.ts_emit_ms,"
        " is_snapshot = surface_state.is_snapshot OR EXCLUDED.is_snapshot,"
        " index_px = CASE WHEN EXCLUDED.is_snapshot THEN EXCLUDED.index_px"
        " ELSE COALESCE(EXCLUDED.index_px, surface_state.index_px) END,"
        " n_changed = EXCLUDED.n_changed, n_removed = EXCLUDED.n_removed,"
        " tenors = EXCLUDED.tenors, calendar = EXCLUDED.calendar",
    },
}

_COL_INDEX = {table: {c: i for i, c in enumerate(spec["cols"])} for table, spec in TABLES.items()}

SUPPORTED_EVENTS = (SmileFit, SurfacePatch, SurfaceSnapshot)


def _json_text(value: Any) -> str:
    return dumps(value).decode()


def _fit_row(fit: SmileFit) -> tuple:
    return (
        fit.venue, fit.underlying, fit.expiry_ms, fit.epoch, fit.ts_exchange_ms, fit.ts_emit_ms,
        fit.t_years, fit.forward, fit.a, fit.b, fit.rho, fit.m, fit.sigma, fit.rmse_vol_pts,
        fit.n_quotes, fit.butterfly_ok, fit.min_g, fit.fit_ms, fit.inside_band_frac, fit.warm,
    )


class _BatchPlan:
    """Rows of one batch per table, de-duplicated by natural key in event order (a
    statement may not touch a row twice), plus the snapshot clean-ups to run first."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple, tuple]] = {t: {} for t in TABLES}
        # (venue, underlying, epoch, expiries kept): older rows of that epoch not kept go.
        self.snapshot_deletes: list[tuple[str, str, int, list[int]]] = []

    def add(self, event: Any) -> None:
        if isinstance(event, SmileFit):
            self._put_fit(event)
        elif isinstance(event, SurfacePatch):
            self._add_surface(event, is_snapshot=False, removed=event.removed)
        elif isinstance(event, SurfaceSnapshot):
            self._add_surface(event, is_snapshot=True, removed=())
        else:
            raise TypeError(f"PostgresWriter stores {', '.join(c.__name__ for c in SUPPORTED_EVENTS)}; got {type(event).__name__}")

    def _put_fit(self, fit: SmileFit) -> None:
        row = _fit_row(fit)
        self.rows["smile_fits"].setdefault(row[:4], row)  # DO NOTHING: the first one stands

    def _add_surface(self, ev: SurfacePatch | SurfaceSnapshot, *, is_snapshot: bool, removed: Iterable[int]) -> None:
        venue, und, epoch = ev.venue, ev.underlying, ev.epoch
        views = self.rows["expiry_views"]
        changed = {v.expiry_ms for v in ev.expiries}
        if is_snapshot:
            keep = sorted(changed)
            self.snapshot_deletes.append((venue, und, epoch, keep))
            for key in [k for k in views if (k[0], k[1], k[3]) == (venue, und, epoch) and k[2] not in changed]:
                del views[key]
        for view in ev.expiries:
            self._put_fit(view.fit)
            key = (venue, und, view.expiry_ms, epoch)
            views.pop(key, None)  # re-insert so dict order is the write order
            views[key] = (
                venue, und, view.expiry_ms, epoch, ev.ts_emit_ms, False, view.atm_vol, view.rr25,
                view.bf25, view.rr10, view.bf10, view.calendar_ok, _json_text(view.analytics),
                to_json(view).decode(),
            )
        for expiry_ms in removed:
            if expiry_ms in changed:  # apply_patch removes first, then adds: the view wins
                continue
            key = (venue, und, expiry_ms, epoch)
            views.pop(key, None)
            views[key] = (venue, und, expiry_ms, epoch, ev.ts_emit_ms, True) + (None,) * 8
        states = self.rows["surface_state"]
        key = (venue, und, epoch)
        row = [
            venue, und, epoch, ev.ts_exchange_ms, ev.ts_emit_ms, is_snapshot, ev.index_px,
            len(ev.expiries), len(tuple(removed)), _json_text(ev.tenors), _json_text(ev.calendar),
        ]
        prev = states.pop(key, None)
        if prev is not None and not is_snapshot:  # mirror the SQL ON CONFLICT merge
            row[5] = prev[5]
            if row[6] is None:
                row[6] = prev[6]
        states[key] = tuple(row)


def rows_for(events: Iterable[Any]) -> dict[str, list[tuple]]:
    """The rows a sequence of events writes, per table (for inspection and tests)."""
    plan = _BatchPlan()
    for ev in events:
        plan.add(ev)
    return {t: list(r.values()) for t, r in plan.rows.items()}


def _prepare_stage(conn: psycopg.Connection) -> None:
    """Per-connection temp tables that COPY fills before INSERT ... ON CONFLICT."""
    with conn.transaction():
        for table in TABLES:
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )


def write_plan(conn: psycopg.Connection, plan: _BatchPlan) -> dict[str, int]:
    """Write one batch in one transaction; returns rows inserted or updated per table.

    Staged COPY then one INSERT ... SELECT ... ON CONFLICT per table: COPY is the fast
    path for volume and the conflict clause makes a resent batch a no-op."""
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        for venue, und, epoch, keep in plan.snapshot_deletes:
            cur.execute(
                "DELETE FROM expiry_views WHERE venue = %s AND underlying = %s AND epoch = %s"
                " AND NOT (expiry_ms = ANY(%s))",
                (venue, und, epoch, keep),
            )
        for table, spec in TABLES.items():
            rows = plan.rows[table]
            if not rows:
                counts[table] = 0
                continue
            cols = ", ".join(spec["cols"])
            with cur.copy(f"COPY stage_{table} ({cols}) FROM STDIN") as copy:
                for row in rows.values():
                    copy.write_row(row)
            key = ", ".join(spec["cols"][: spec["key"]])
            cur.execute(
                f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table}"
                f" ON CONFLICT ({key}) {spec['conflict']}"
            )
            counts[table] = max(cur.rowcount, 0)
    return counts


def write_events(conn: psycopg.Connection, events: Iterable[Any]) -> dict[str, int]:
    """Synchronous, idempotent write of events (the writer thread's unit of work)."""
    plan = _BatchPlan()
    for ev in events:
        plan.add(ev)
    _prepare_stage(conn)
    return write_plan(conn, plan)


# ---------------------------------------------------------------- rebuild


def latest_surface(conn: psycopg.Connection, venue: str, underlying: str) -> Optional[SurfaceSnapshot]:
    """The current surface of (venue, underlying) rebuilt from stored rows, equal to
    folding apply_patch over the written patches (given they were written in epoch order):
    the latest view per expiry since the latest snapshot, minus expiries whose latest row
    is a removal, with the latest epoch's tenors and calendar checks."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT max(epoch) FROM surface_state WHERE venue = %s AND underlying = %s AND is_snapshot",
            (venue, underlying),
        )
        since = cur.fetchone()[0]
        since = -(2**62) if since is None else since
        cur.execute(
            "SELECT epoch, ts_exchange_ms, ts_emit_ms, tenors, calendar FROM surface_state"
            " WHERE venue = %s AND underlying = %s AND epoch >= %s ORDER BY epoch DESC LIMIT 1",
            (venue, underlying, since),
        )
        latest = cur.fetchone()
        if latest is None:
            return None
        # apply_patch keeps the previous index price when a patch has none; a snapshot sets it.
        cur.execute(
            "SELECT index_px FROM surface_state WHERE venue = %s AND underlying = %s AND epoch >= %s"
            " AND (is_snapshot OR index_px IS NOT NULL) ORDER BY epoch DESC LIMIT 1",
            (venue, underlying, since),
        )
        row = cur.fetchone()
        index_px = row[0] if row else None
        # Distinct expiries from the key index, then the latest row of each: reads one
        # view per expiry instead of detoasting the whole history (DISTINCT ON would).
        cur.execute(
            "SELECT e.expiry_ms, v.removed, v.view"
            " FROM (SELECT DISTINCT expiry_ms FROM expiry_views"
            "       WHERE venue = %(venue)s AND underlying = %(und)s AND epoch >= %(since)s) e"
            " CROSS JOIN LATERAL (SELECT removed, view FROM expiry_views x"
            "       WHERE x.venue = %(venue)s AND x.underlying = %(und)s AND x.expiry_ms = e.expiry_ms"
            "       AND x.epoch >= %(since)s ORDER BY x.epoch DESC LIMIT 1) v"
            " ORDER BY e.expiry_ms",
            {"venue": venue, "und": underlying, "since": since},
        )
        views = [view for _, removed, view in cur.fetchall() if not removed]
    epoch, ts_exchange_ms, ts_emit_ms, tenors, calendar = latest
    return from_dict({
        "type": "SurfaceSnapshot",
        "venue": venue,
        "underlying": underlying,
        "epoch": epoch,
        "ts_exchange_ms": ts_exchange_ms,
        "ts_emit_ms": ts_emit_ms,
        "expiries": views,  # ordered by expiry_ms, as apply_patch does
        "tenors": tenors,
        "calendar": calendar,
        "index_px": index_px,
    })


# ---------------------------------------------------------------- the writer


class PostgresWriter:
    """Batched, idempotent, non-blocking writes on a background thread.

    submit(event) only appends to a queue. The thread writes every `flush_ms`, or sooner
    when `batch_rows` events wait. If the database is unreachable, events stay in memory
    up to `max_buffer_rows`, beyond that they are appended to JSON-lines segments in
    `spill_dir` (oldest first is preserved), and everything is written when the database
    returns, with retries backing off up to `retry_max_ms`. Segments left by a previous
    run with the same `name` are written first. Events the database rejects as data
    (not connectivity) go to `<name>.rejected.jsonl`, counted by reason: nothing is lost.
    """

    def __init__(
        self,
        dsn: str,
        *,
        name: str = "pg",
        flush_ms: float = 200.0,
        batch_rows: int = 2000,
        max_buffer_rows: int = 50_000,
        spill_dir: str | os.PathLike = DEFAULT_SPILL_DIR,
        spill_segment_rows: Optional[int] = None,
        retry_min_ms: float = 50.0,
        retry_max_ms: float = 5000.0,
        connect_timeout_s: float = 3.0,
        auto_migrate: bool = True,
        exit_timeout_s: float = 2.0,
    ) -> None:
        if flush_ms <= 0 or batch_rows < 1 or max_buffer_rows < 1:
            raise ValueError(
                f"PostgresWriter needs flush_ms > 0, batch_rows >= 1, max_buffer_rows >= 1;"
                f" got {flush_ms}, {batch_rows}, {max_buffer_rows}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"PostgresWriter name {name!r} is used in file names; use letters, digits, '_', '-', '.'")
        self.dsn = dsn
        self.name = name
        self.flush_s = flush_ms / 1000.0
        self.batch_rows = batch_rows
        self.max_buffer_rows = max_buffer_rows
        self.spill_segment_rows = spill_segment_rows or max(1, max_buffer_rows // 2)
        self.spill_dir = Path(spill_dir)
        self.retry_min_s = retry_min_ms / 1000.0
        self.retry_max_s = retry_max_ms / 1000.0
        self.connect_timeout_s = connect_timeout_s
        self.auto_migrate = auto_migrate

        self._inbox: collections.deque = collections.deque()  # appended by submit() only
        self._submitted = itertools.count(1)  # next() is atomic under the GIL
        self._n_submitted = 0
        self._mem: collections.deque = collections.deque()  # writer thread only
        self._mem_from_segment = 0  # leading events of _mem that came from _loaded_segment
        self._loaded_segment: Optional[Path] = None
        self._segments: collections.deque[Path] = collections.deque()
        self._segment_rows: dict[Path, int] = {}
        self._spill_fh = None
        self._spill_path: Optional[Path] = None
        self._conn: Optional[psycopg.Connection] = None

        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._stop_deadline = float("inf")
        self.stats_counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.rows_written: collections.Counter = collections.Counter()
        self.ignored_types: collections.Counter = collections.Counter()  # events this writer does not store
        self.last_error = ""
        self.db_up = False

        # _done counts events written, rejected or ignored, in submit order. Spilled events
        # of a previous run are written first; counting them as already submitted keeps
        # pending() and flush() honest.
        self._done = -self._recover_segments()
        self._thread = threading.Thread(target=self._run, name=f"pgwriter-{name}", daemon=True)
        self._thread.start()
        # bytewax only calls a sink's close() when a flow ends normally: at interpreter exit,
        # write what the database takes within exit_timeout_s and spill the rest to disk.
        self.exit_timeout_s = exit_timeout_s
        atexit.register(self._close_at_exit)

    # -- producer side (any thread) --------------------------------------------

    def submit(self, event: Any) -> None:
        """Queue one event for writing; never blocks on the database."""
        if self._closed:
            raise RuntimeError(f"PostgresWriter {self.name} is closed; create a new one to write {type(event).__name__}")
        self._inbox.append(event)
        self._n_submitted = next(self._submitted)
        if len(self._inbox) >= self.batch_rows:
            self._wake.set()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Write everything submitted so far; True when done, False on timeout."""
        target = self._n_submitted
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout) and self._done >= target

    def close(self, timeout: Optional[float] = 10.0) -> bool:
        """Flush (up to `timeout`), then stop; whatever the database has not taken by then
        is spilled to disk for the next writer with this name. True if all was written."""
        if self._closed:
            return self.pending() == 0
        started = time.monotonic()
        ok = self.flush(timeout)
        self._closed = True
        atexit.unregister(self._close_at_exit)
        # The thread gets what is left of `timeout` to write the rest, then spills it.
        self._stop_deadline = started + (timeout if timeout is not None else 3600.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(0.0, self._stop_deadline - time.monotonic()) + self.connect_timeout_s + 5.0)
        return ok and self.pending() == 0

    def wait_until(self, predicate, timeout: Optional[float] = None) -> bool:
        """Block until predicate(self.stats()) holds (re-checked on each writer step) or the
        timeout passes; for tests and shutdown logic, instead of sleeping."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.stats()), timeout)

    def _close_at_exit(self) -> None:
        if not self._closed:
            self.close(self.exit_timeout_s)

    def pending(self) -> int:
        return self._n_submitted - self._done

    def stats(self) -> dict:
        """Counters for tests and metrics: rows by table, batches, retries, buffered, spilled, errors."""
        return {
            "submitted": self._n_submitted,
            "written_events": self.stats_counts["written_events"],
            "rows_written": dict(self.rows_written),
            "batches": self.stats_counts["batches"],
            "retries": self.stats_counts["retries"],
            "buffered": len(self._mem) + len(self._inbox),
            "spilled": self.stats_counts["spilled"],
            "spill_pending": sum(list(self._segment_rows.values())),  # list(): atomic copy under the GIL
            "rejected": self.stats_counts["rejected"],
            "ignored": self.stats_counts["ignored"],
            "ignored_types": dict(self.ignored_types),
            "errors": dict(self.errors),
            "pending": self.pending(),
            "db_up": self.db_up,
            "last_error": self.last_error,
        }

    # -- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        delay = self.flush_s
        while True:
            if delay:
                self._wake.wait(timeout=delay)
            self._wake.clear()
            delay = self.flush_s
            self._drain_inbox()
            try:
                while self._has_pending():
                    if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                        raise _DatabaseDown("shutdown", TimeoutError("close() timeout reached"))
                    self._write_some()
                    self._drain_inbox()
                backoff = 0.0
            except _DatabaseDown as exc:
                self._note_down(exc)
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    self._spill_memory()  # persist what is left for the next writer of this name
                    break
                backoff = min(self.retry_max_s, max(self.retry_min_s, backoff * 2))
                self._backoff_wait(backoff)
                delay = 0.0
                continue
            except Exception as exc:  # a bug or a full disk must not kill the writer silently
                log.exception("writer %s: unexpected error; retrying", self.name)
                self.errors[f"internal.{type(exc).__name__}"] += 1
                self.last_error = repr(exc)
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    break
                backoff = min(self.retry_max_s, max(self.retry_min_s, backoff * 2))
                self._backoff_wait(backoff)
                delay = 0.0
                continue
            finally:
                with self._cond:
                    self._cond.notify_all()
            if self._stop.is_set() and not self._inbox:
                break
        self._close_spill()
        self._drop_conn()
        with self._cond:
            self._cond.notify_all()

    def _backoff_wait(self, backoff_s: float) -> None:
        """Wait before retrying, still moving the inbox to memory/spill every flush period
        so memory stays bounded while the database is away. Waits on the stop event, not
        on _wake: submits set _wake constantly and would turn the retry into a busy loop."""
        deadline = time.monotonic() + backoff_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(left, self.flush_s)):
                break
            self._drain_inbox()
        self._drain_inbox()

    def _has_pending(self) -> bool:
        return bool(self._mem) or bool(self._segments)

    def _drain_inbox(self) -> None:
        """Inbox → memory, or → spill once memory is full or older events are spilled
        (so the write order stays the submit order)."""
        inbox = self._inbox
        while inbox:
            if self._segments or len(self._mem) >= self.max_buffer_rows:
                self._spill_from_inbox()
                return
            self._mem.append(inbox.popleft())
        with self._cond:
            self._cond.notify_all()

    def _spill_from_inbox(self) -> None:
        inbox = self._inbox
        while inbox:
            self._spill_one(inbox.popleft())
        with self._cond:
            self._cond.notify_all()

    def _spill_one(self, event: Any) -> None:
        if self._spill_fh is None or self._segment_rows.get(self._spill_path, 0) >= self.spill_segment_rows:
            self._open_segment()
        try:
            line = to_json(event) + b"\n"
        except TypeError as exc:
            self._reject([event], f"unserialisable: {exc}", "unserialisable")
            self._mark_done(1)
            return
        self._spill_fh.write(line)
        self._segment_rows[self._spill_path] += 1
        self.stats_counts["spilled"] += 1

    def _spill_memory(self) -> None:
        """On shutdown with the database down: memory and inbox → spill, after the segments
        already there (memory is older than them, so it goes into a segment numbered first)."""
        events = list(self._mem) + list(self._inbox)
        self._mem.clear()
        self._inbox.clear()
        if self._loaded_segment is not None:
            # Its events are all in `events` (it was loaded into memory): rewrite rather than
            # keep two copies on disk.
            self._segment_rows.pop(self._loaded_segment, None)
            self._loaded_segment.unlink(missing_ok=True)
            self._loaded_segment = None
            self._mem_from_segment = 0
        if not events:
            return
        self._close_spill()
        first = self._segments[0] if self._segments else None
        seq = self._segment_seq(first) - 1 if first else self._next_seq()
        path = self.spill_dir / f"{self.name}.spill.{seq:012d}.jsonl"
        with open(path, "wb") as fh:
            for ev in events:
                fh.write(to_json(ev) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._segments.appendleft(path)
        self._segment_rows[path] = len(events)
        self.stats_counts["spilled"] += len(events)

    def _open_segment(self) -> None:
        self._close_spill()
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"{self.name}.spill.{self._next_seq():012d}.jsonl"
        self._spill_fh = open(path, "ab")
        self._spill_path = path
        self._segments.append(path)
        self._segment_rows[path] = 0

    def _close_spill(self) -> None:
        if self._spill_fh is not None:
            self._spill_fh.flush()
            os.fsync(self._spill_fh.fileno())
            self._spill_fh.close()
            self._spill_fh = None
            self._spill_path = None

    @staticmethod
    def _segment_seq(path: Path) -> int:
        return int(path.name.rsplit(".", 2)[-2])

    def _next_seq(self) -> int:
        seqs = [self._segment_seq(p) for p in self._segments]
        if self._loaded_segment is not None:
            seqs.append(self._segment_seq(self._loaded_segment))
        return max(seqs, default=10**9) + 1  # room below for shutdown spills

    def _recover_segments(self) -> int:
        if not self.spill_dir.is_dir():
            return 0
        for path in sorted(self.spill_dir.glob(f"{self.name}.spill.*.jsonl"), key=self._segment_seq):
            with open(path, "rb") as fh:
                n = sum(1 for _ in fh)
            self._segments.append(path)
            self._segment_rows[path] = n
        if self._segments:
            log.info("writer %s: %d spilled events from a previous run will be written first", self.name, sum(self._segment_rows.values()))
        return sum(self._segment_rows.values())

    def _load_segment(self) -> None:
        """Oldest segment → memory (only when memory is empty, to keep the order)."""
        path = self._segments.popleft()
        if path == self._spill_path:
            self._close_spill()
        events = []
        skipped = 0
        with open(path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    skipped += 1
                    continue
                try:
                    events.append(from_json(line))
                except ContractError as exc:  # e.g. a line cut short by a crash
                    self._reject_line(line, f"{path.name}:{n}: {exc}", "spill_corrupt")
                    skipped += 1
        self._segment_rows.pop(path, None)
        self._mark_done(skipped)
        if not events:
            path.unlink(missing_ok=True)
            return
        self._mem.extend(events)
        self._loaded_segment = path
        self._mem_from_segment = len(events)

    def _write_some(self) -> None:
        if not self._mem:
            self._load_segment()
            return
        n = min(self.batch_rows, len(self._mem))
        batch = [self._mem[i] for i in range(n)]
        self._write_batch(batch)
        for _ in range(n):
            self._mem.popleft()
        if self._loaded_segment is not None:
            self._mem_from_segment -= n
            if self._mem_from_segment <= 0:
                self._loaded_segment.unlink(missing_ok=True)
                self._loaded_segment = None
                self._mem_from_segment = 0
        self._mark_done(n)

    def _mark_done(self, n: int) -> None:
        with self._cond:
            self._done += n
            self._cond.notify_all()

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = connect(self.dsn, connect_timeout_s=self.connect_timeout_s)
            if self.auto_migrate:
                migrate(conn)
            _prepare_stage(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _DatabaseDown("connect", exc) from exc
        self._conn = conn
        if not self.db_up:
            log.info("writer %s: database up", self.name)
        self.db_up = True
        return conn

    def _write_batch(self, batch: list) -> None:
        plan = _BatchPlan()
        good = []
        for ev in batch:
            if not isinstance(ev, SUPPORTED_EVENTS):
                self.stats_counts["ignored"] += 1
                self.ignored_types[type(ev).__name__] += 1
                continue
            try:
                plan.add(ev)
                good.append(ev)
            except Exception as exc:  # a malformed event must not stop the writer
                self._reject([ev], f"bad_event: {exc!r}", "bad_event")
        if not good:
            return
        conn = self._connection()
        try:
            counts = write_plan(conn, plan)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop_conn()
            raise _DatabaseDown("write", exc) from exc
        except psycopg.Error as exc:
            # The database refused the data itself: isolate the bad events so the rest go in.
            if len(good) == 1:
                self._reject(good, str(exc).strip(), type(exc).__name__)
                return
            mid = len(good) // 2
            self._write_batch(good[:mid])
            self._write_batch(good[mid:])
            return
        self.stats_counts["batches"] += 1
        self.stats_counts["written_events"] += len(good)
        self.rows_written.update(counts)

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: closing is best effort
                pass
        self._conn = None

    def _note_down(self, exc: "_DatabaseDown") -> None:
        # state first, counters last: whoever sees the retry counted also sees the database down
        was_up, self.db_up = self.db_up, False
        self.last_error = str(exc.__cause__).strip().splitlines()[0] if exc.__cause__ else exc.stage
        self.errors[f"db_down.{exc.stage}"] += 1
        self.stats_counts["retries"] += 1
        if was_up:
            log.warning("writer %s: database unreachable (%s); buffering", self.name, self.last_error)

    def _reject(self, events: list, reason: str, label: str) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        with open(self.spill_dir / f"{self.name}.rejected.jsonl", "ab") as fh:
            for ev in events:
                try:
                    body = to_json(ev).decode()
                except TypeError:
                    body = repr(ev)
                fh.write(orjson.dumps({"reason": reason, "event": body}) + b"\n")
        self.stats_counts["rejected"] += len(events)
        self.errors[f"rejected.{label}"] += len(events)
        self.last_error = reason

    def _reject_line(self, line: bytes, reason: str, label: str) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        with open(self.spill_dir / f"{self.name}.rejected.jsonl", "ab") as fh:
            fh.write(orjson.dumps({"reason": reason, "event": line.decode(errors="replace").strip()}) + b"\n")
        self.errors[f"rejected.{label}"] += 1


class _DatabaseDown(Exception):
    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage


# ---------------------------------------------------------------- bytewax sink


class _PostgresPartition(StatelessSinkPartition):
    def __init__(self, writer: PostgresWriter, close_timeout_s: float) -> None:
        self.writer = writer
        self.close_timeout_s = close_timeout_s

    def write_batch(self, items: list) -> None:
        submit = self.writer.submit
        for item in items:
            # Accept keyed (key, event) pairs as well as bare events.
            submit(item[1] if isinstance(item, tuple) and len(item) == 2 else item)

    def close(self) -> None:
        self.writer.close(self.close_timeout_s)


class PostgresSink(DynamicSink):
    """Each worker's partition owns a PostgresWriter (its own thread and connection);
    stores SmileFit, SurfacePatch and SurfaceSnapshot events, ignores others (counted)."""

    def __init__(
        self,
        dsn: str,
        *,
        spill_dir: str | os.PathLike = DEFAULT_SPILL_DIR,
        flush_ms: float = 200.0,
        batch_rows: int = 2000,
        max_buffer_rows: int = 50_000,
        close_timeout_s: float = 10.0,
        **writer_options: Any,
    ) -> None:
        self.dsn = dsn
        self.options = dict(
            spill_dir=spill_dir, flush_ms=flush_ms, batch_rows=batch_rows,
            max_buffer_rows=max_buffer_rows, **writer_options,
        )
        self.close_timeout_s = close_timeout_s
        self.writers: list[PostgresWriter] = []  # for status and tests

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PostgresPartition:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{step_id}-w{worker_index}")
        writer = PostgresWriter(self.dsn, name=name, **self.options)
        self.writers.append(writer)
        return _PostgresPartition(writer, self.close_timeout_s)
