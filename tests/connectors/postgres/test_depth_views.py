"""Vol at size in PostgreSQL against a real server (pgserver): table depth_views holds one row per
patch view carrying ladders (the books as arrays, the ladders books × levels), view
depth_vol_books gives one row per book per fit time with depth_vols' columns, from depth_views
and from the rows a database upgraded from 008 kept in depth_vols (deploy/sql/009_depth_views.sql).
Expected rows are built from the Ladders themselves, one per book, as 008's writer built them."""

from __future__ import annotations

import msgspec

from connectors import postgres as pg
from connectors.postgres.rows import DEPTH_ARRAYS, DEPTH_COLS
from operators.events import Ladders, level_matrix, no_levels
from tests.connectors.postgres.test_postgres import RUN, migrated, run_info

BOOKS_SQL = "SELECT * FROM depth_vol_books WHERE run_id = %s ORDER BY venue, underlying, expiry_ms, instrument, ts_exchange_ms"


def ladders(names, depth: int = 3, sizes=(1.0, 10.0), seed: int = 0) -> Ladders:
    """Deterministic ladders of books `names`: book i's sides end after depth - i % 2 levels (NULL
    past the end), its walks to the last size fail on odd books (NULL), book 2 is stale."""
    def side(base: float, sign: float, width: int) -> tuple:
        return tuple(tuple(round(base + sign * (j + 1) * 0.001 * (seed + 1), 6) if j < width - i % 2 else None
                           for j in range(width)) for i in range(len(names)))

    n = len(names)
    matrix = lambda rows: level_matrix(rows) if n else no_levels()  # noqa: E731  (as the chain makes them)
    return Ladders(
        level_depth=depth, sizes_contracts=tuple(sizes), instrument=tuple(names),
        venue=tuple("deribit" if i % 3 else "okx" for i in range(n)),
        strike=tuple(float(name.split("-")[2]) for name in names), option_type=tuple(name[-1] for name in names),
        contract_size=tuple(1.0 if i % 2 else 0.1 for i in range(n)), stale=tuple(i == 2 for i in range(n)),
        bid_px=matrix(side(0.05, -1, depth)), bid_size_contracts=matrix(side(3.0 + seed, 1, depth)),
        bid_iv=matrix(side(0.50, -1, depth)), ask_px=matrix(side(0.06, 1, depth)),
        ask_size_contracts=matrix(side(2.0 + seed, 1, depth)), ask_iv=matrix(side(0.55, 1, depth)),
        bid_exec_px=matrix(side(0.049, -1, len(sizes))), bid_exec_iv=matrix(side(0.49, -1, len(sizes))),
        ask_exec_px=matrix(side(0.061, 1, len(sizes))), ask_exec_iv=matrix(side(0.56, 1, len(sizes))))


def row(matrix, i: int) -> list:
    """Book i's row of a ladder matrix as PostgreSQL returns it: NaN is NULL (None)."""
    return [None if v != v else v for v in matrix[i].tolist()]


def names(*strikes, kind: str = "C") -> list[str]:
    return [f"BTC-26DEC26-{k}-{kind}" for k in strikes]


def with_ladders(patch, by_index: dict):
    """`patch` with view i carrying ladders by_index[i] (the others none)."""
    return msgspec.structs.replace(patch, expiries=tuple(
        msgspec.structs.replace(v, ladders=by_index.get(i)) for i, v in enumerate(patch.expiries)))


def book_rows(run: str, patch, view, lad: Ladders) -> list[tuple]:
    """The rows 008 wrote to depth_vols for `view` of `patch`: one per book, DEPTH_COLS' order."""
    return [(run, patch.venue, patch.underlying, view.expiry_ms, name, view.fit.ts_exchange_ms, patch.epoch,
             lad.venue[i], lad.strike[i], lad.option_type[i], lad.contract_size[i], lad.stale[i], lad.level_depth,
             list(lad.sizes_contracts), *(row(getattr(lad, a), i) for a in DEPTH_ARRAYS))
            for i, name in enumerate(lad.instrument)]


def columns(conn, relation: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s"
                                       " ORDER BY ordinal_position", (relation,))]


def test_one_row_per_view_and_depth_vol_books_gives_each_book(pg_db, surface_factory):
    f = surface_factory()
    lad0, lad1 = ladders(names(80000, 82500, 85000)), ladders(names(90000, 92500, 95000, 97500, kind="P"), seed=1)
    patch = with_ladders(f.patch(100, changed=[0, 1, 2]), {0: lad0, 1: lad1})  # view 2 carries none
    assert len(pg.rows_for([patch], RUN)["depth_views"]) == 2  # views carrying ladders, not 7 books
    with pg.connect(pg_db) as conn:
        migrated(conn)
        first = pg.write_events(conn, [patch], RUN)
        again = pg.write_events(conn, [patch], RUN)  # a resent batch: last write wins, the same rows
        assert first["depth_views"] == again["depth_views"] == 2
        assert conn.execute("SELECT count(*) FROM depth_views").fetchone()[0] == 2
        assert conn.execute("SELECT count(*) FROM depth_vols").fetchone()[0] == 0  # no longer written
        # the 2-D ladders as stored: books × levels, NULL past a side's end; books × sizes
        bid_px, exec_iv, dims = conn.execute(
            "SELECT bid_px, ask_exec_iv, array_dims(bid_px) FROM depth_views WHERE expiry_ms = %s",
            (f.expiry(1),)).fetchone()
        assert bid_px == [row(lad1.bid_px, i) for i in range(4)] and exec_iv == [row(lad1.ask_exec_iv, i) for i in range(4)]
        assert dims == "[1:4][1:3]" and bid_px[1][2] is None
        assert columns(conn, "depth_vol_books") == columns(conn, "depth_vols") == list(DEPTH_COLS)
        books = conn.execute(BOOKS_SQL, (RUN,)).fetchall()
    v0, v1 = patch.expiries[0], patch.expiries[1]
    assert books == sorted(book_rows(RUN, patch, v0, lad0) + book_rows(RUN, patch, v1, lad1),
                           key=lambda r: (r[3], r[4], r[5]))


def test_rows_008_wrote_are_returned_beside_new_ones(pg_db, surface_factory, tmp_path):
    """A database at 008 with depth_vols rows, upgraded: depth_vol_books returns them unchanged
    beside the new depth_views books, and "a book as of T" picks old or new by fit time."""
    for version, path in pg.sql_files():
        if version <= 8:
            (tmp_path / path.name).write_text(path.read_text())
    f = surface_factory()
    old_patch = with_ladders(f.patch(100, changed=[0]), {})
    old_lad = ladders(names(80000, 82500, 85000), seed=2)
    old = book_rows(RUN, old_patch, old_patch.expiries[0], old_lad)
    new_lad = ladders(names(80000, 87500), seed=3)  # book 80000 again, later; a new book 87500
    new_patch = with_ladders(f.patch(140, changed=[0]), {0: new_lad})
    new = book_rows(RUN, new_patch, new_patch.expiries[0], new_lad)
    with pg.connect(pg_db) as conn:
        assert pg.migrate(conn, tmp_path) == list(range(1, 9))
        pg.register_run(conn, run_info())
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO depth_vols ({', '.join(DEPTH_COLS)})"
                            f" VALUES ({', '.join(['%s'] * len(DEPTH_COLS))})", old)
        conn.commit()
        assert pg.migrate(conn) == [v for v, _ in pg.sql_files() if v > 8]
        pg.write_events(conn, [new_patch], RUN)
        assert conn.execute("SELECT count(*) FROM depth_vols").fetchone()[0] == 3  # kept, not written
        assert conn.execute("SELECT count(*) FROM depth_views").fetchone()[0] == 1
        books = conn.execute(BOOKS_SQL, (RUN,)).fetchall()
        as_of = {}
        for t in (old[0][5], new[0][5] - 1, new[0][5]):
            as_of[t] = conn.execute(
                "SELECT DISTINCT ON (instrument) instrument, ts_exchange_ms, epoch, bid_iv FROM depth_vol_books"
                " WHERE run_id = %s AND venue = 'deribit' AND underlying = 'BTC' AND expiry_ms = %s"
                " AND strike = 80000 AND ts_exchange_ms <= %s ORDER BY instrument, ts_exchange_ms DESC",
                (RUN, f.expiry(0), t)).fetchall()
    assert books == sorted(old + new, key=lambda r: (r[4], r[5]))
    assert old[0][5] < new[0][5]
    assert as_of[old[0][5]] == as_of[new[0][5] - 1] == [(old[0][4], old[0][5], 100, old[0][16])]
    assert as_of[new[0][5]] == [(new[0][4], new[0][5], 140, new[0][16])]


def test_ladders_sent_between_fits_keep_their_own_row(pg_db, surface_factory):
    """A ladders-only patch re-sends a view with its fit (the same fit time) and only the books that
    moved: a row of its own (its epoch), so the fit's other books stay; per book and fit time
    depth_vol_books keeps the later epoch's, as depth_vols' last write did. In one batch or two."""
    f = surface_factory()
    fit_lad = ladders(names(80000, 82500, 85000), seed=4)
    first = with_ladders(f.patch(100, changed=[0]), {0: fit_lad})
    moved = ladders(names(82500), seed=5)
    resent = msgspec.structs.replace(f.patch(101), expiries=(msgspec.structs.replace(first.expiries[0], ladders=moved),))
    view = first.expiries[0]
    want = {r[4]: r for r in book_rows(RUN, first, view, fit_lad)}
    want[moved.instrument[0]] = book_rows(RUN, resent, view, moved)[0]
    with pg.connect(pg_db) as conn:
        migrated(conn)
        pg.register_run(conn, run_info("two-batches"))
        pg.write_events(conn, [first, resent], RUN)
        pg.write_events(conn, [first], "two-batches")
        pg.write_events(conn, [resent], "two-batches")
        for run in (RUN, "two-batches"):
            assert conn.execute("SELECT array_agg(epoch ORDER BY epoch), count(DISTINCT ts_exchange_ms)"
                                " FROM depth_views WHERE run_id = %s", (run,)).fetchone() == ([100, 101], 1)
            books = conn.execute(BOOKS_SQL, (run,)).fetchall()
            assert books == [(run, *r[1:]) for _, r in sorted(want.items())], run


def test_a_ladder_with_no_levels_reads_back_as_008_stored_it(pg_db, surface_factory):
    """level_depth 0 (walks only): the level arrays have no columns, stored '{}' (a book's: '{}', as
    in depth_vols); the walks as usual, NULL where a side is thinner than the size."""
    f = surface_factory()
    walks_only = ladders(names(80000, 82500), depth=0)
    assert walks_only.bid_px.shape == (2, 0)
    patch = with_ladders(f.patch(100, changed=[0]), {0: walks_only})
    with pg.connect(pg_db) as conn:
        migrated(conn)
        pg.write_events(conn, [patch], RUN)
        assert conn.execute("SELECT bid_px, bid_exec_px FROM depth_views WHERE expiry_ms = %s",
                            (f.expiry(0),)).fetchone() == ([], [row(walks_only.bid_exec_px, i) for i in range(2)])
        books = conn.execute(BOOKS_SQL, (RUN,)).fetchall()
    assert books == book_rows(RUN, patch, patch.expiries[0], walks_only)
    assert list(books[0][14:20]) == [[]] * 6 and books[0][20] == row(walks_only.bid_exec_px, 0)
    assert books[1][20][-1] is None  # book 1's walk to the last size fails
