"""Replay from the database starting mid-stream (issue #15): on an incremental book channel
(Deribit book.X.100ms: one snapshot at subscribe, then changes chained by change_id) a window that
starts after the snapshots begins with every book as it stood at its start
(connectors/capture/db_replay.py _read_books): one synthetic snapshot per book, the fold of its
stored snapshot and changes, whose change_id the window's first change chains onto.

The original run is tests/helpers/scaleout.py's recorded BTC and ETH market on its frozen flow clock
(every expiry fitted cold from its final books, at the end of input), so a window replayed from the
middle of the stream fits every expiry exactly as the original run did: without the books carried
in, its chains would hold only the changes after the window's start, gapped."""

from __future__ import annotations

import pytest

from connectors.capture.db_replay import DbReplaySource
from connectors.postgres import connect
from connectors.postgres.market_events import MarketBatch, decode_events, write_market_events
from operators.events import BookUpdate, Instrument
from operators.state.book import OrderBook
from tests.flows.test_replay_db import END_MS, START_MS, differing, run_db, run_file
from tests.helpers.scaleout import FIT_COLUMNS, record_deribit
from tests.helpers.levels import pairs


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[str]:
    return [str(p) for p in record_deribit(tmp_path_factory.mktemp("rec"), START_MS, ticks=6)]


def stored(dsn: str) -> dict[str, list]:
    """Every stored event of run orig per surface, in the order the flow accepted them."""
    out: dict[str, list] = {}
    with connect(dsn) as conn:
        for venue, underlying, body in conn.execute(
                "SELECT venue, underlying, body FROM market_events WHERE run_id = 'orig' ORDER BY venue, underlying,"
                " seg, ord"):
            out.setdefault(f"{venue}|{underlying}", []).extend(decode_events(body))
    return out


def preamble(source: DbReplaySource, part: str) -> tuple[list, object]:
    p = source.build_part("in", part, None)
    try:
        return p.next_batch(), p
    finally:
        p.close()


def test_a_window_starting_mid_stream_begins_with_every_book_as_it_stood_and_fits_as_the_original(
        pg_db, recordings, tmp_path):
    run_file(recordings, pg_db, str(tmp_path / "spill"))
    events = stored(pg_db)
    changes = sorted(e.ts_recv_ms for evs in events.values() for e in evs
                     if type(e) is BookUpdate and e.kind == "change")
    start = changes[len(changes) // 2]  # mid-stream: half the changes lie before the window
    for evs in events.values():  # every stored snapshot lies well before it (one per book, at subscribe)
        assert max(e.ts_recv_ms for e in evs if type(e) is BookUpdate and e.kind == "snapshot") < start

    source = DbReplaySource(pg_db, run_id="orig", start_ms=start, end_ms=END_MS)
    assert sorted(source.list_parts()) == sorted(events)
    for part, evs in events.items():
        first, p = preamble(source, part)
        # the books the original run held at `start`: its stored events before it, folded
        truth: dict[str, OrderBook] = {}
        for e in evs:
            if type(e) is BookUpdate and e.ts_recv_ms < start:
                assert truth.setdefault(e.instrument, OrderBook()).apply(e) is None
        snaps = {e.instrument: e for e in first if type(e) is BookUpdate}
        assert snaps.keys() == truth.keys() and len(snaps) > 20, part
        assert (p.books_rebuilt, p.books_withheld, p.books_missing) == (len(truth), 0, 0)
        kinds = [type(e) for e in first]
        assert kinds.index(BookUpdate) > max(i for i, k in enumerate(kinds) if k is Instrument)
        for name, snap in snaps.items():
            assert snap.kind == "snapshot" and snap.prev_seq is None and snap.ts_recv_ms < start
            assert snap.seq == truth[name].last_seq
            assert (list(pairs(snap.bids)), list(pairs(snap.asks))) == truth[name].sides(), name
        # the window's books chain from the preamble's: no book of it is withheld as gapped
        books: dict[str, OrderBook] = {}
        window = [e for e in evs if type(e) is BookUpdate and start <= e.ts_recv_ms < END_MS]
        assert sum(e.kind == "change" for e in window) > 100
        for e in [*snaps.values(), *window]:
            assert books.setdefault(e.instrument, OrderBook()).apply(e) is None, (part, e.instrument)
        # and end where the original run's ended
        for e in evs:
            if type(e) is BookUpdate and e.ts_recv_ms >= END_MS:
                truth[e.instrument].apply(e)
        for e in window:
            truth.setdefault(e.instrument, OrderBook()).apply(e)
        assert {n: b.sides() for n, b in books.items()} == {n: b.sides() for n, b in truth.items()}

    # the window, through the flow: every expiry fitted as the original run fitted it
    run_db(pg_db, str(tmp_path / "spill"), "window", start_ms=start)
    with connect(pg_db) as conn:
        n_orig = conn.execute("SELECT count(*) FROM smile_fits WHERE run_id = 'orig'").fetchone()[0]
        assert n_orig >= 4
        assert differing(conn, "smile_fits", FIT_COLUMNS, "orig", "window") == 0
        assert differing(conn, "expiry_views", "venue, underlying, expiry_ms, epoch", "orig", "window") == 0


def test_a_book_with_no_snapshot_before_the_window_is_named_with_the_fix_not_a_crash(
        pg_db, recordings, tmp_path, caplog):
    run_file(recordings[:1], pg_db, str(tmp_path / "spill"))
    (part, evs), = stored(pg_db).items()
    # the run stored again without its snapshots (as if storage had been switched on after the subscribe)
    kept = [e for e in evs if not (type(e) is BookUpdate and e.kind == "snapshot")]
    assert len(kept) < len(evs)
    with connect(pg_db) as conn:
        write_market_events(conn, [MarketBatch(*part.split("|"), 1, i, kept[i:i + 500])
                                   for i in range(0, len(kept), 500)], "nosnap")
    start = sorted(e.ts_recv_ms for e in kept if type(e) is BookUpdate)[-50]
    source = DbReplaySource(pg_db, run_id="nosnap", start_ms=start, end_ms=END_MS)
    with caplog.at_level("WARNING", logger="volgraph.replay"):
        first, p = preamble(source, part)
    assert p.books_rebuilt == 0 and p.books_missing > 0
    assert not [e for e in first if type(e) is BookUpdate]
    lines = [r.getMessage() for r in caplog.records if "no snapshot stored" in r.getMessage()]
    assert len(lines) == 1 and f"{p.books_missing} books of {part}" in lines[0] and "start the window" in lines[0]


def test_a_partition_resumed_mid_window_does_not_carry_the_books_in_again(pg_db, recordings, tmp_path):
    run_file(recordings[:1], pg_db, str(tmp_path / "spill"))
    (part, evs), = stored(pg_db).items()
    start = sorted(e.ts_recv_ms for e in evs if type(e) is BookUpdate and e.kind == "change")[100]
    source = DbReplaySource(pg_db, run_id="orig", start_ms=start, end_ms=END_MS, batch_max=50)
    p = source.build_part("in", part, None)
    try:
        carried = [e for e in p.next_batch() if type(e) is BookUpdate]
        assert carried and all(e.ts_recv_ms < start for e in carried)
        assert p.snapshot() is None  # no row read yet: a resume from here carries them in again (idempotent)
        window = p.next_batch()
        state = p.snapshot()
    finally:
        p.close()
    assert state is not None and window and all(e.ts_recv_ms >= start for e in window)
    resumed = source.build_part("in", part, state)
    try:
        after = resumed.next_batch()
    finally:
        resumed.close()
    assert after and all(e.ts_recv_ms >= start for e in after)
    assert [e for e in after if type(e) is BookUpdate and e.kind == "snapshot"] == []
