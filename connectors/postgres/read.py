"""Reading back: the latest surface of one (venue, underlying) rebuilt from stored rows.

The rebuild reads each view's stored JSON, which carries every graph.toml node by name, so
it needs no node name; rows written before nodes became data (their views also had fixed
atm_vol/rr25/... fields) still load. Read-only SQL; never imports flows or bytewax.
"""

from __future__ import annotations

from typing import Optional

import psycopg

from operators.events import SurfaceSnapshot, from_dict


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
