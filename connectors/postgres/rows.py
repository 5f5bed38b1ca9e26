"""Events -> rows: the table layouts, the plan of one batch, and its write in one transaction.

SmileFit, SurfacePatch and SurfaceSnapshot become rows of smile_fits, expiry_views,
expiry_nodes (one row per level = "expiry" graph.toml node per view, by node name: no node
name is known here), instrument_nodes (one per level = "instrument" node per view: the view's
strikes and the node's values as two aligned arrays),
underlying_nodes (one per level = "underlying" value an event carries), surface_state and
depth_views (one per SurfacePatch view carrying vol-at-size ladders: only the changed books travel,
as arrays aligned by book, the ladders books × levels; none unless graph.toml [chain] level_depth /
sizes_contracts) (deploy/sql/001_init.sql, 002_expiry_nodes.sql, 003_runs.sql, 006_level_nodes.sql,
009_depth_views.sql, 010_fit_spline.sql: a fit's spline). Table depth_vols (008_depth_vols.sql, a row per book) is no longer written:
SQL view depth_vol_books gives a row per book over both.
Every row carries the run that wrote it (a BatchPlan is one run's) as the first column of
its natural key, so one run never touches another's rows; the run must be registered first
(connectors/postgres/runs.py register_run; foreign keys check it). Within a batch, the
surface events of one (venue, underlying, epoch) are folded with the one patch-merge rule,
operators/merge.py `coalesce`; across batches of the same run the ON CONFLICT clauses below
apply the same rule in SQL. Only translates: no volatility maths, no threads
(connectors/postgres/writer.py). Never imports flows or bytewax.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable, Union

import msgspec
import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from connectors.postgres.runs import check_run_id
from operators.events import Ladders, SmileFit, SurfacePatch, SurfaceSnapshot, dumps, level_matrix, to_json
from operators.merge import coalesce, merge_ladders

# The ladders (the Ladders fields of the same names): per book, one element per level or per size
DEPTH_ARRAYS = ("bid_px", "bid_size_contracts", "bid_iv", "ask_px", "ask_size_contracts", "ask_iv",
                "bid_exec_px", "bid_exec_iv", "ask_exec_px", "ask_exec_iv")
# A row per book (depth_vols, 008; SQL view depth_vol_books, 009): the key, then the book, then its ladders
DEPTH_COLS = ("run_id", "venue", "underlying", "expiry_ms", "instrument", "ts_exchange_ms", "epoch", "book_venue",
              "strike", "option_type", "contract_size", "stale", "level_depth", "sizes_contracts", *DEPTH_ARRAYS)
# Ladders' per-book fields -> depth_views' 1-D array columns (the book's venue is `book_venue`)
DEPTH_BOOK_FIELDS = {"instrument": "instrument", "venue": "book_venue", "strike": "strike",
                     "option_type": "option_type", "contract_size": "contract_size", "stale": "stale"}
# A row per view (depth_views, 009): the key, then the per-book 1-D arrays, then the ladders books × levels/sizes
DEPTH_VIEW_COLS = ("run_id", "venue", "underlying", "expiry_ms", "ts_exchange_ms", "epoch", "level_depth",
                   "sizes_contracts", *DEPTH_BOOK_FIELDS.values(), *DEPTH_ARRAYS)

# Column order of each table's staged COPY; the first `key` columns are the natural key,
# run_id first (deploy/sql/003_runs.sql).
TABLES: dict[str, dict[str, Any]] = {
    "smile_fits": {
        "cols": (
            "run_id", "venue", "underlying", "expiry_ms", "epoch", "ts_exchange_ms", "ts_emit_ms", "t_years",
            "forward", "a", "b", "rho", "m", "sigma", "rmse_vol_pts", "n_quotes", "butterfly_ok",
            "min_g", "fit_ms", "inside_band_frac", "warm", "forward_method", "repaired", "spline_lo_k",
            "spline_hi_k", "spline_w",
        ),
        "key": 5,
        # A fit is immutable history: the first write of a key stands.
        "conflict": "DO NOTHING",
    },
    "expiry_views": {
        "cols": ("run_id", "venue", "underlying", "expiry_ms", "epoch", "ts_emit_ms", "removed", "calendar_ok",
                 "view"),
        "key": 5,
        # Last write wins within an epoch, as apply_patch does for in-order patches.
        "conflict": "DO UPDATE SET ts_emit_ms = EXCLUDED.ts_emit_ms, removed = EXCLUDED.removed,"
        " calendar_ok = EXCLUDED.calendar_ok, view = EXCLUDED.view",
    },
    "expiry_nodes": {
        "cols": ("run_id", "venue", "underlying", "expiry_ms", "epoch", "node", "value"),
        "key": 6,
        # The node values of the view row with the same first five key columns: last write wins.
        "conflict": "DO UPDATE SET value = EXCLUDED.value",
    },
    "instrument_nodes": {
        "cols": ("run_id", "venue", "underlying", "expiry_ms", "epoch", "node", "strikes", "vals"),
        "key": 6,
        # The per-strike values (float8[] aligned with strikes) of the view row with the same first
        # five key columns: last write wins.
        "conflict": "DO UPDATE SET strikes = EXCLUDED.strikes, vals = EXCLUDED.vals",
    },
    "underlying_nodes": {
        "cols": ("run_id", "venue", "underlying", "epoch", "node", "value", "unit"),
        "key": 5,
        # The values the epoch's events carried (a patch: the changed ones), folded by merge.coalesce.
        "conflict": "DO UPDATE SET value = EXCLUDED.value, unit = EXCLUDED.unit",
    },
    "surface_state": {
        "cols": (
            "run_id", "venue", "underlying", "epoch", "ts_exchange_ms", "ts_emit_ms", "is_snapshot", "index_px",
            "n_changed", "n_removed", "tenors", "calendar",
        ),
        "key": 4,
        # merge.coalesce in SQL: a snapshot row stays a snapshot; a patch keeps the previous
        # index price when it has none; a snapshot sets it outright.
        "conflict": "DO UPDATE SET ts_exchange_ms = EXCLUDED.ts_exchange_ms,"
        " ts_emit_ms = EXCLUDED.ts_emit_ms,"
        " is_snapshot = surface_state.is_snapshot OR EXCLUDED.is_snapshot,"
        " index_px = CASE WHEN EXCLUDED.is_snapshot THEN EXCLUDED.index_px"
        " ELSE COALESCE(EXCLUDED.index_px, surface_state.index_px) END,"
        " n_changed = EXCLUDED.n_changed, n_removed = EXCLUDED.n_removed,"
        " tenors = EXCLUDED.tenors, calendar = EXCLUDED.calendar",
    },
    "depth_views": {
        "cols": DEPTH_VIEW_COLS,
        # binary COPY (the ladders are ~70 floats a book: text COPY spent 3x as long formatting them)
        "types": ("text", "text", "text", "int8", "int8", "int8", "int4", "float8[]", "text[]", "text[]", "float8[]",
                  "text[]", "float8[]", "bool[]", *("float8[]",) * len(DEPTH_ARRAYS)),
        "key": 6,
        # One patch's books of one view: last write wins (a resent batch rewrites the same values).
        "conflict": "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in DEPTH_VIEW_COLS[6:]),
    },
}

SUPPORTED_EVENTS = (SmileFit, SurfacePatch, SurfaceSnapshot)

Surface = Union[SurfacePatch, SurfaceSnapshot]


def _json_text(value: Any) -> str:
    return dumps(value).decode()


def _fit_row(fit: SmileFit) -> tuple:
    """A smile_fits row without its run (BatchPlan.tables() puts the run first)."""
    return (
        fit.venue, fit.underlying, fit.expiry_ms, fit.epoch, fit.ts_exchange_ms, fit.ts_emit_ms,
        fit.t_years, fit.forward, fit.a, fit.b, fit.rho, fit.m, fit.sigma, fit.rmse_vol_pts,
        fit.n_quotes, fit.butterfly_ok, fit.min_g, fit.fit_ms, fit.inside_band_frac, fit.warm,
        fit.forward_method, fit.repaired, fit.spline_lo_k, fit.spline_hi_k, list(fit.spline_w),
    )


class BatchPlan:
    """The rows of one batch of run `run_id`. add() takes events in order and fails on a bad
    one before it changes anything (the writer sets that event aside and keeps the rest);
    tables() then gives each table's rows, run_id first, one per natural key (a statement may
    not touch a row twice). A bad run_id fails here, naming the rule (runs.check_run_id)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = check_run_id(run_id)
        self.fits: dict[tuple, tuple] = {}
        # (venue, underlying, epoch) -> the batch's events of that key folded by merge.coalesce
        self.surfaces: dict[tuple[str, str, int], Surface] = {}
        # (venue, underlying, expiry_ms, epoch) -> the view's JSON, encoded once in add()
        self._view_json: dict[tuple, str] = {}
        # (venue, underlying, epoch) -> (tenors, calendar) JSON of the latest event (coalesce keeps its)
        self._global_json: dict[tuple, tuple[str, str]] = {}
        # depth_views key without the run (venue, underlying, expiry_ms, fit ts_exchange_ms, epoch) ->
        # that view's ladders, merged by instrument in arrival order (merge.merge_ladders) if sent twice
        self.depth: dict[tuple, Ladders] = {}

    def add(self, event: Any) -> None:
        if isinstance(event, SmileFit):
            self.fits.setdefault(_fit_row(event)[:4], _fit_row(event))  # DO NOTHING: the first stands
            return
        if not isinstance(event, (SurfacePatch, SurfaceSnapshot)):
            raise TypeError(f"PostgresWriter stores {', '.join(c.__name__ for c in SUPPORTED_EVENTS)};"
                            f" got {type(event).__name__}")
        venue, und, epoch = event.venue, event.underlying, event.epoch
        # everything that can fail first: a bad event must leave the plan as it was
        # every chain fit is history; a view's fit the surface step refitted between its neighbours
        # (calendar_repaired) lives in the view only: it shares its chain fit's key, and either
        # could reach the writer first
        fit_rows = [_fit_row(v.fit) for v in event.expiries if not v.fit.calendar_repaired]
        # a view's vol-at-size ladders are not kept in its JSON (they are sparse in a patch)
        texts = {(venue, und, v.expiry_ms, epoch): to_json(v if v.ladders is None else
                                                           msgspec.structs.replace(v, ladders=None)).decode()
                 for v in event.expiries}
        global_json = (_json_text(event.tenors), _json_text(event.calendar))
        # a patch's ladders are the books that changed at its fits; a snapshot's restate them all
        depth = [] if isinstance(event, SurfaceSnapshot) else \
            [((venue, und, v.expiry_ms, v.fit.ts_exchange_ms, epoch), v.ladders) for v in event.expiries
             if v.ladders is not None and v.ladders.instrument]
        surface = coalesce(self.surfaces.get((venue, und, epoch)), event)
        for row in fit_rows:  # every fit is history, even of a view a later patch replaces
            self.fits.setdefault(row[:4], row)
        self._view_json.update(texts)
        for key, ladders in depth:
            self.depth[key] = merge_ladders(self.depth.get(key), ladders)
        self._global_json[(venue, und, epoch)] = global_json
        self.surfaces[(venue, und, epoch)] = surface

    def snapshot_keeps(self) -> list[tuple[str, str, int, list[int], list[str]]]:
        """(venue, underlying, epoch, expiries kept, underlying nodes kept) per snapshot: that
        epoch's other rows go."""
        return [(v, u, e, sorted(x.expiry_ms for x in s.expiries), sorted(s.underlying_analytics))
                for (v, u, e), s in self.surfaces.items() if isinstance(s, SurfaceSnapshot)]

    def tables(self) -> dict[str, list[tuple]]:
        run = self.run_id
        views: list[tuple] = []
        nodes: list[tuple] = []
        strike_nodes: list[tuple] = []
        und_nodes: list[tuple] = []
        states: list[tuple] = []
        for (venue, und, epoch), s in self.surfaces.items():
            is_snapshot = isinstance(s, SurfaceSnapshot)
            for view in s.expiries:
                e = view.expiry_ms
                views.append((run, venue, und, e, epoch, s.ts_emit_ms, False, view.calendar_ok,
                              self._view_json[(venue, und, e, epoch)]))
                nodes.extend((run, venue, und, e, epoch, name, value) for name, value in view.analytics.items())
                for name, values in view.strike_analytics.items():
                    # one row per node per view: the strikes and values as arrays (lists: psycopg
                    # sends a tuple as a record), a None value a NULL element
                    n = min(len(view.strikes), len(values))
                    strike_nodes.append((run, venue, und, e, epoch, name, [float(k) for k in view.strikes[:n]],
                                         [None if x is None else float(x) for x in values[:n]]))
            und_nodes.extend((run, venue, und, epoch, name, value, s.underlying_units.get(name, ""))
                             for name, value in s.underlying_analytics.items())
            # apply_patch drops the removed first, then adds the views: a view sent and removed
            # in one patch stays (merge.fold_patches makes the same cut)
            present = {view.expiry_ms for view in s.expiries}
            removed = () if is_snapshot else sorted(set(s.removed).difference(present))
            views.extend((run, venue, und, e, epoch, s.ts_emit_ms, True, None, None) for e in removed)
            states.append((run, venue, und, epoch, s.ts_exchange_ms, s.ts_emit_ms, is_snapshot, s.index_px,
                           len(s.expiries), len(removed), *self._global_json[(venue, und, epoch)]))
        return {"smile_fits": [(run, *row) for row in self.fits.values()], "expiry_views": views,
                "expiry_nodes": nodes, "instrument_nodes": strike_nodes, "underlying_nodes": und_nodes,
                "surface_state": states,
                "depth_views": [(run, *key, *depth_view_row(lad)) for key, lad in self.depth.items()]}


def depth_view_row(lad: Ladders) -> tuple:
    """A depth_views row after its key: level_depth, sizes, the books' 1-D arrays (lists: psycopg
    sends a tuple as a record), the ladders' matrices as they are (NaN sent as NULL)."""
    return (lad.level_depth, list(lad.sizes_contracts), *(list(getattr(lad, f)) for f in DEPTH_BOOK_FIELDS),
            *(level_matrix(getattr(lad, name)) for name in DEPTH_ARRAYS))


class Float8ArrayBinaryDumper(Dumper):
    """float8[] in PostgreSQL's binary array format, from a float array (numpy, any number of
    dimensions) or a list: NaN and None are NULL (the ladders' "no value": never a value of its
    own there); no elements: an empty array. Registered only on the cursor of a binary COPY
    (stage_rows: depth_views' float8[] columns), so no other table's values are sent this way."""

    format = Format.BINARY
    oid = psycopg.postgres.types["float8"].array_oid
    _elem_oid = psycopg.postgres.types["float8"].oid

    def dump(self, obj: Any) -> bytes:
        a = np.asarray(obj, dtype=np.float64)
        if not a.size:
            return struct.pack(">iii", 0, 0, self._elem_oid)
        null = np.isnan(a).ravel()
        cells = np.empty(a.size, dtype=[("len", ">i4"), ("val", ">f8")])
        cells["len"] = np.where(null, -1, 8)
        cells["val"] = a.ravel()
        raw = cells.view(np.uint8).reshape(a.size, 12)
        has_null = bool(null.any())
        if has_null:  # a NULL element is its length (-1) alone
            keep = np.ones(raw.shape, dtype=bool)
            keep[null, 4:] = False
            body = raw[keep].tobytes()
        else:
            body = raw.tobytes()
        dims = [x for n in a.shape for x in (n, 1)]  # each dimension: its length, lower bound 1
        return struct.pack(f">iii{len(dims)}i", a.ndim, has_null, self._elem_oid, *dims) + body


def stage_rows(conn: psycopg.Connection, table: str, rows: list[tuple]) -> None:
    """COPY `rows` into stage_<table> (prepare_stage), in the caller's transaction: text, or
    binary for a table whose TABLES entry names its column types."""
    spec = TABLES[table]
    cols = ", ".join(spec["cols"])
    with conn.cursor() as cur:
        if "types" not in spec:
            with cur.copy(f"COPY stage_{table} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        cur.adapters.register_dumper(None, Float8ArrayBinaryDumper)  # this cursor's float8[] only
        with cur.copy(f"COPY stage_{table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(spec["types"])
            for row in rows:
                copy.write_row(row)


def rows_for(events: Iterable[Any], run_id: str) -> dict[str, list[tuple]]:
    """The rows a sequence of events writes as run `run_id`, per table (for inspection and tests)."""
    plan = BatchPlan(run_id)
    for ev in events:
        plan.add(ev)
    return plan.tables()


def prepare_stage(conn: psycopg.Connection) -> None:
    """Per-connection temp tables that COPY fills before INSERT ... ON CONFLICT."""
    with conn.transaction():
        for table in TABLES:
            conn.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )


def write_plan(conn: psycopg.Connection, plan: BatchPlan) -> dict[str, int]:
    """Write one batch in one transaction; returns rows inserted or updated per table.

    Staged COPY then one INSERT ... SELECT ... ON CONFLICT per table: COPY is the fast
    path for volume and the conflict clause makes a resent batch a no-op. Node rows go
    with their view row: a snapshot's clean-up and a removal delete them too. (A view
    rewritten at the same key keeps node rows its new version lacks: only a graph.toml
    change inside one epoch of one process could do that, and epochs are wall-clock.)
    Every statement is limited to the plan's run: another run's rows are never touched.
    Call it outside any open transaction: its stage tables empty only when it commits."""
    counts: dict[str, int] = {}
    tables = plan.tables()
    with conn.transaction(), conn.cursor() as cur:
        for venue, und, epoch, keep, keep_nodes in plan.snapshot_keeps():
            for table in ("expiry_views", "expiry_nodes", "instrument_nodes"):
                cur.execute(
                    f"DELETE FROM {table} WHERE run_id = %s AND venue = %s AND underlying = %s AND epoch = %s"
                    " AND NOT (expiry_ms = ANY(%s))",
                    (plan.run_id, venue, und, epoch, keep),
                )
            cur.execute(
                "DELETE FROM underlying_nodes WHERE run_id = %s AND venue = %s AND underlying = %s AND epoch = %s"
                " AND NOT (node = ANY(%s))",
                (plan.run_id, venue, und, epoch, keep_nodes),
            )
        for table, spec in TABLES.items():
            rows = tables[table]
            if not rows:
                counts[table] = 0
                continue
            cols = ", ".join(spec["cols"])
            stage_rows(conn, table, rows)
            key = ", ".join(spec["cols"][: spec["key"]])
            if table == "expiry_views" and any(r[6] for r in rows):  # tombstones (column `removed`)
                for nodes_table in ("expiry_nodes", "instrument_nodes"):
                    cur.execute(
                        f"DELETE FROM {nodes_table} n USING stage_expiry_views s WHERE s.removed"
                        " AND n.run_id = s.run_id AND n.venue = s.venue AND n.underlying = s.underlying"
                        " AND n.expiry_ms = s.expiry_ms AND n.epoch = s.epoch"
                    )
            cur.execute(
                f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table}"
                f" ON CONFLICT ({key}) {spec['conflict']}"
            )
            counts[table] = max(cur.rowcount, 0)
    return counts


def write_events(conn: psycopg.Connection, events: Iterable[Any], run_id: str) -> dict[str, int]:
    """Synchronous, idempotent write of events as run `run_id`, which must be registered
    (connectors/postgres/runs.py register_run): the writer thread's unit of work."""
    plan = BatchPlan(run_id)
    for ev in events:
        plan.add(ev)
    prepare_stage(conn)
    return write_plan(conn, plan)
