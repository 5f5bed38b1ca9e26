"""Vol at size stored, end to end on the real bytewax flow and a real PostgreSQL (pgserver): with
a copy of graph.toml setting [chain] level_depth and sizes_contracts, table depth_views gets one
row per patch view that carried ladders (run_id first in the key; not one per book), each holding
exactly that view's ladders; view depth_vol_books unnests them to one row per book per fit, and
each book's latest row equals that book in the fold of the patches; the views' JSON in
expiry_views holds no ladders (the surface rebuilt from the rows is the fold without them).
graph.toml's default (level_depth 0, no sizes) sends no ladders, so no row
(deploy/sql/009_depth_views.sql)."""

from __future__ import annotations

import msgspec

from connectors.postgres import connect, latest_surface
from connectors.postgres.rows import DEPTH_ARRAYS, DEPTH_BOOK_FIELDS, rows_for
from flows.config import load_config
from operators.merge import apply_patch
from tests.helpers.flowrun import market_flow_to_postgres
from tests.helpers.market import SPOT

DEPTH_TOML = """
[chain]
level_depth = 3
sizes_contracts = [1.0, 10.0]

[sinks.postgres]
depth_vols = true
"""


def test_depth_vols_rows_equal_the_folded_ladders(pg_db, tmp_path):
    config, patches = market_flow_to_postgres(pg_db, tmp_path, DEPTH_TOML)
    assert config.chain.level_depth == 3
    folded: dict = {}
    for p in patches:
        folded[p.underlying] = apply_patch(folded.get(p.underlying), p)
    assert set(folded) == set(SPOT)
    sent = {(p.underlying, v.expiry_ms, name, v.fit.ts_exchange_ms)
            for p in patches for v in p.expiries if v.ladders is not None for name in v.ladders.instrument}
    assert sent, "the market's books carry no ladders"
    # (underlying, expiry, fit time, epoch) -> the ladders that patch view carried
    carried = {(p.underlying, v.expiry_ms, v.fit.ts_exchange_ms, p.epoch): v.ladders
               for p in patches for v in p.expiries if v.ladders is not None}
    n_views = sum(v.ladders is not None for p in patches for v in p.expiries)
    with connect(pg_db) as conn:
        stored = conn.execute(
            "SELECT underlying, expiry_ms, ts_exchange_ms, epoch, venue, level_depth, sizes_contracts, "
            + ", ".join(DEPTH_BOOK_FIELDS.values()) + ", " + ", ".join(DEPTH_ARRAYS) +
            " FROM depth_views WHERE run_id = 'test-run'").fetchall()
        rows = conn.execute(
            "SELECT underlying, expiry_ms, instrument, ts_exchange_ms, venue, book_venue, strike, option_type, stale,"
            " level_depth, sizes_contracts, " + ", ".join(DEPTH_ARRAYS) +
            " FROM depth_vol_books WHERE run_id = 'test-run' ORDER BY ts_exchange_ms, epoch").fetchall()
        for und, snap in folded.items():  # the views' JSON has no ladders
            bare = msgspec.structs.replace(snap, expiries=tuple(msgspec.structs.replace(v, ladders=None)
                                                                for v in snap.expiries))
            assert latest_surface(conn, "deribit", und, run_id="test-run") == bare, und
    # one depth_views row per view that carried ladders, not per book, holding exactly its ladders
    assert len(stored) == n_views == len(carried) < sum(len(lad.instrument) for lad in carried.values())
    for row in stored:
        lad = carried[row[:4]]
        assert row[4:7] == ("deribit", 3, [1.0, 10.0])
        assert list(row[7:13]) == [list(getattr(lad, f)) for f in DEPTH_BOOK_FIELDS], row[:4]
        assert list(row[13:]) == [[_nulls(book) for book in getattr(lad, a)] for a in DEPTH_ARRAYS], row[:4]
    assert {(r[0], r[1], r[2], r[3]) for r in rows} == sent  # one row per book per fit that carried it
    assert len(rows) == len(sent)
    latest = {(r[0], r[1], r[2]): r for r in rows}  # ordered by fit time: the last one stands
    books = 0
    for und, snap in folded.items():
        for v in snap.expiries:
            lad = v.ladders
            assert lad is not None and lad.level_depth == 3 and lad.sizes_contracts == (1.0, 10.0)
            for i, name in enumerate(lad.instrument):
                row = latest[(und, v.expiry_ms, name)]
                assert row[4:11] == ("deribit", lad.venue[i], lad.strike[i], lad.option_type[i], lad.stale[i], 3,
                                     [1.0, 10.0])
                assert list(row[11:]) == [_nulls(getattr(lad, a)[i]) for a in DEPTH_ARRAYS], name
                assert len(row[11]) == 3 and len(row[17]) == 2
                books += 1
    assert books == len(latest)  # every stored book is a live one of the fold
    # a view without ladders plans no row; graph.toml's default computes none
    with_ladders = next(p for p in patches if any(v.ladders is not None for v in p.expiries))
    bare = msgspec.structs.replace(with_ladders, expiries=tuple(msgspec.structs.replace(v, ladders=None)
                                                                for v in with_ladders.expiries))
    assert len(rows_for([with_ladders], "test-run")["depth_views"]) == sum(
        v.ladders is not None for v in with_ladders.expiries)
    assert rows_for([bare], "test-run")["depth_views"] == []
    default = load_config().chain
    assert default.level_depth == 0 and default.sizes_contracts == []


def test_without_depth_vols_the_ladders_reach_patches_but_not_postgresql(pg_db, tmp_path):
    """[sinks.postgres] depth_vols = false (graph.toml's default) with level vols on: the patches
    carry ladders, tables depth_views and depth_vols stay empty (so depth_vol_books does too)."""
    config, patches = market_flow_to_postgres(pg_db, tmp_path, DEPTH_TOML.replace("depth_vols = true", "depth_vols = false"),
                                              run_id="no-depth")
    assert config.chain.level_depth == 3 and not config.sinks.postgres.depth_vols
    assert not load_config().sinks.postgres.depth_vols
    assert any(v.ladders is not None for p in patches for v in p.expiries)
    with connect(pg_db) as conn:
        for table in ("depth_views", "depth_vols", "depth_vol_books"):
            assert conn.execute(f"SELECT count(*) FROM {table} WHERE run_id = 'no-depth'").fetchone()[0] == 0, table
        assert conn.execute("SELECT count(*) FROM smile_fits WHERE run_id = 'no-depth'").fetchone()[0] > 0


def _nulls(values) -> list:
    """A ladder matrix's row as PostgreSQL returns it: NaN is NULL (None)."""
    return [None if v != v else v for v in values.tolist()]
