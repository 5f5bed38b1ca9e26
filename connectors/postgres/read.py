"""Reading back: one run's surface of one (venue, underlying) rebuilt from stored rows, now or
as of a time, and one graph.toml node's values over time.

The SQL lives in deploy/sql/003_runs.sql as documented functions and views (surface_run,
surface_head_as_of, surface_views_as_of, node_history), so Grafana reads exactly what these
functions read. The rebuild reads each view's stored JSON, which carries every graph.toml node
by name, so it needs no node name; rows written before nodes became data (their views also had
fixed atm_vol/rr25/... fields) still load. Time is the epoch's emit time on the flow's clock
(surface_state.ts_emit_ms), at the resolution of one epoch. Read-only SQL; never imports flows
or bytewax.
"""

from __future__ import annotations

from typing import Optional

import psycopg

from connectors.postgres.runs import check_run_id
from operators.events import SurfaceSnapshot, from_dict


def _surface(conn: psycopg.Connection, venue: str, underlying: str, ts_ms: Optional[int],
             run_id: Optional[str]) -> Optional[SurfaceSnapshot]:
    if run_id is not None:
        check_run_id(run_id)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "SELECT run_id, epoch, ts_exchange_ms, ts_ms, index_px, tenors, calendar"
            " FROM surface_head_as_of(%s, %s, %s, %s)",
            (venue, underlying, ts_ms, run_id),
        )
        head = cur.fetchone()
        if head is None:
            return None
        run, epoch, ts_exchange_ms, ts_emit_ms, index_px, tenors, calendar = head
        cur.execute("SELECT view FROM surface_views_as_of(%s, %s, %s, %s)", (venue, underlying, ts_ms, run))
        views = [row[0] for row in cur.fetchall()]  # ordered by expiry_ms, as apply_patch does
        # level = "underlying" nodes: the latest value of each since the snapshot (006_level_nodes.sql)
        cur.execute("SELECT node, value, unit FROM underlying_nodes_as_of(%s, %s, %s, %s)",
                    (venue, underlying, ts_ms, run))
        und_rows = cur.fetchall()
    return from_dict({
        "type": "SurfaceSnapshot",
        "venue": venue,
        "underlying": underlying,
        "epoch": epoch,
        "ts_exchange_ms": ts_exchange_ms,
        "ts_emit_ms": ts_emit_ms,
        "expiries": views,
        "tenors": tenors,
        "calendar": calendar,
        "index_px": index_px,
        "underlying_analytics": {node: value for node, value, _ in und_rows},
        "underlying_units": {node: unit for node, _, unit in und_rows if unit},
    })


def latest_surface(conn: psycopg.Connection, venue: str, underlying: str,
                   run_id: Optional[str] = None) -> Optional[SurfaceSnapshot]:
    """The current surface of (venue, underlying) written by run `run_id` (None: the run that
    most recently wrote that surface, by runs.started_ms, then epoch), rebuilt from stored
    rows and equal to folding apply_patch over the run's written patches (given they were
    written in epoch order): the latest view per expiry since the latest snapshot, minus
    expiries whose latest row is a removal, with the latest epoch's tenors and calendar
    checks. None when that run wrote nothing there."""
    return _surface(conn, venue, underlying, None, run_id)


def surface_as_of(conn: psycopg.Connection, venue: str, underlying: str, ts_ms: int,
                  run_id: Optional[str] = None) -> Optional[SurfaceSnapshot]:
    """The surface of (venue, underlying) as it stood at `ts_ms` (UTC epoch ms, the flow's
    clock): the fold of the run's patches emitted at or before ts_ms, i.e. the latest
    snapshot at or before then, and the views after it up to then. run_id None: the run that
    most recently wrote that surface at or before ts_ms (latest runs.started_ms, then epoch).
    None when nothing had been emitted by then."""
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise ValueError(f"ts_ms must be UTC epoch milliseconds as an int, got {ts_ms!r}")
    return _surface(conn, venue, underlying, ts_ms, run_id)


def node_series(conn: psycopg.Connection, venue: str, underlying: str, node: str, start_ms: int, end_ms: int,
                expiry_ms: Optional[int] = None, run_id: Optional[str] = None) -> list[tuple[int, int, Optional[float]]]:
    """The values of graph.toml node `node` (atm_vol, rr25, bf25, ... by name) for one expiry
    (or every expiry when expiry_ms is None) emitted between start_ms and end_ms inclusive,
    as (ts_ms, expiry_ms, value) rows ordered by time then expiry; a None value is a node that
    ran and failed. run_id None: the run that most recently wrote that surface at or before
    end_ms. Reads the node_history view (deploy/sql/003_runs.sql)."""
    _check_window(start_ms, end_ms, run_id)
    with conn.transaction(), conn.cursor() as cur:
        run_id = run_id or _surface_run(cur, venue, underlying, end_ms)
        if run_id is None:
            return []
        # The epoch bounds hold for every row whose time is in range (whatever the order of
        # times and epochs) and turn the node index (expiry_nodes_by_node) into a range scan
        # instead of a read of the run's whole history of that node.
        cur.execute(
            "SELECT ts_ms, expiry_ms, value FROM node_history"
            " WHERE run_id = %(run)s AND venue = %(venue)s AND underlying = %(und)s AND node = %(node)s"
            " AND ts_ms BETWEEN %(start)s AND %(end)s"
            " AND epoch >= (SELECT min(epoch) FROM surface_state WHERE run_id = %(run)s AND venue = %(venue)s"
            "               AND underlying = %(und)s AND ts_emit_ms >= %(start)s)"
            " AND epoch <= (SELECT max(epoch) FROM surface_state WHERE run_id = %(run)s AND venue = %(venue)s"
            "               AND underlying = %(und)s AND ts_emit_ms <= %(end)s)"
            " AND (%(expiry)s::bigint IS NULL OR expiry_ms = %(expiry)s::bigint)"
            " ORDER BY ts_ms, expiry_ms",
            {"run": run_id, "venue": venue, "und": underlying, "node": node, "start": start_ms, "end": end_ms,
             "expiry": expiry_ms},
        )
        return [tuple(row) for row in cur.fetchall()]


def underlying_series(conn: psycopg.Connection, venue: str, underlying: str, node: str, start_ms: int,
                      end_ms: int, run_id: Optional[str] = None) -> list[tuple[int, Optional[float]]]:
    """A level = "underlying" node's values (underlying_node_history, deploy/sql/006_level_nodes.sql)
    as (ts_ms, value) rows ordered by time: the value in effect at start_ms (the last stored at or
    before it: rows are written only when the value changes), then every change up to end_ms.
    run_id None: the run that most recently wrote that surface at or before end_ms."""
    _check_window(start_ms, end_ms, run_id)
    with conn.transaction(), conn.cursor() as cur:
        run_id = run_id or _surface_run(cur, venue, underlying, end_ms)
        if run_id is None:
            return []
        where = "run_id = %(run)s AND venue = %(venue)s AND underlying = %(und)s AND node = %(node)s"
        cur.execute(
            f"(SELECT ts_ms, value, epoch FROM underlying_node_history WHERE {where} AND ts_ms <= %(start)s"
            "  ORDER BY ts_ms DESC, epoch DESC LIMIT 1)"
            f" UNION ALL (SELECT ts_ms, value, epoch FROM underlying_node_history WHERE {where}"
            "  AND ts_ms > %(start)s AND ts_ms <= %(end)s)"
            " ORDER BY ts_ms, epoch",
            {"run": run_id, "venue": venue, "und": underlying, "node": node, "start": start_ms, "end": end_ms})
        return [(ts_ms, value) for ts_ms, value, _ in cur.fetchall()]


def _check_window(start_ms: int, end_ms: int, run_id: Optional[str]) -> None:
    for name, value in (("start_ms", start_ms), ("end_ms", end_ms)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be UTC epoch milliseconds as an int, got {value!r}")
    if run_id is not None:
        check_run_id(run_id)


def _surface_run(cur, venue: str, underlying: str, end_ms: int) -> Optional[str]:
    """The run that most recently wrote the surface at or before end_ms (None: none did)."""
    cur.execute("SELECT surface_run(%s, %s, %s)", (venue, underlying, end_ms))
    return cur.fetchone()[0]
