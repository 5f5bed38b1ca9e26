"""Market events stored for replay (issue #15 part 4, deploy/sql/004_market_events.sql) against a
real PostgreSQL (pgserver): every event type round-trips exactly (event -> COPY row -> body ->
event, and through a spill line), a resend of the same positions is a no-op, day partitions
are made as needed, retention drops whole old days, and bad input is set aside with a counter."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import postgres as pg
from connectors.capture.db_replay import DbReplaySource
from connectors.postgres.market_events import (DAY_MS, MARKET_EVENTS, MarketBatch, MarketEventWriter, decode_event,
                                               decode_events, encode_row, retain, write_market_events)
from operators.events import BookUpdate, FeedError, FuturePrice, IndexPrice, Instrument, Ticker, to_json

DAY0_MS = 1_767_225_600_000  # 2026-01-01T00:00Z

# any text (tabs, backslashes, quotes, non-ASCII) but NUL, which the market_event_rows view cannot turn into
# jsonb text (the stored row keeps it exactly: test_bad_items_are_set_aside_with_a_counter_and_the_rest_stored)
chars = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
names = st.text(chars, min_size=1, max_size=12)
prices = st.floats(allow_nan=False, allow_infinity=False)
opt_prices = st.none() | prices
ts = st.integers(DAY0_MS, DAY0_MS + 3 * DAY_MS)
levels = st.lists(st.tuples(prices, prices), max_size=4).map(tuple)

EVENTS = st.one_of(
    st.builds(Instrument, venue=names, instrument=names, underlying=names, kind=names, expiry_ms=st.integers(0, 2**53),
              strike=opt_prices, option_type=st.none() | st.sampled_from(["C", "P"]), tick_size=prices,
              contract_size=prices, quote_currency=names, ts_recv_ms=ts),
    st.builds(BookUpdate, venue=names, instrument=names, ts_exchange_ms=ts, ts_recv_ms=ts,
              seq=st.integers(-2**63, 2**63 - 1), prev_seq=st.none() | st.integers(0, 2**62),
              kind=st.sampled_from(["snapshot", "change"]), bids=levels, asks=levels),
    st.builds(Ticker, venue=names, instrument=names, ts_exchange_ms=ts, ts_recv_ms=ts, state=names,
              best_bid_px=opt_prices, best_bid_size=prices, best_ask_px=opt_prices, best_ask_size=prices,
              mark_px=opt_prices, underlying_px=opt_prices, underlying_index=names, index_px=opt_prices,
              bid_iv=opt_prices, ask_iv=opt_prices, mark_iv=opt_prices),
    st.builds(IndexPrice, venue=names, underlying=names, ts_exchange_ms=ts, ts_recv_ms=ts, price=prices),
    st.builds(FuturePrice, venue=names, instrument=names, underlying=names, expiry_ms=st.integers(0, 2**53),
              ts_exchange_ms=ts, ts_recv_ms=ts, bid=opt_prices, ask=opt_prices, mark=opt_prices),
    st.builds(FeedError, venue=names, reason=names, detail=st.text(chars, max_size=40), ts_recv_ms=ts, instrument=names),
)


def run(run_id: str) -> pg.RunInfo:
    return pg.RunInfo(run_id=run_id, config_hash="cfg", code_version="v1", methods={"svi": "1"}, started_ms=1,
                      source="live", detail="test_events")


def positioned(events, seg: int = 1, size: int = 3, venue: str = "deribit", underlying: str = "BTC",
               first: int = 0) -> list[MarketBatch]:
    """The events as the event sink hands them over: runs of `size`, each at its first event's position."""
    return [MarketBatch(venue, underlying, seg, first + i, list(events[i:i + size])) for i in range(0, len(events), size)]


@pytest.fixture
def db(pg_db):
    with pg.connect(pg_db) as conn:
        pg.migrate(conn)
        pg.register_run(conn, run("r1"))
        conn.commit()
    return pg_db


def stored(conn, run_id: str = "r1") -> list:
    """The run's events, one row each (the market_event_rows view expands the stored batches)."""
    return [decode_event(r[0]) for r in conn.execute(
        "SELECT body FROM market_event_rows WHERE run_id = %s ORDER BY venue, underlying, seg, ord", (run_id,))]


def test_every_market_event_type_is_covered():
    drawn = {Instrument, BookUpdate, Ticker, IndexPrice, FuturePrice, FeedError}
    assert drawn == set(MARKET_EVENTS)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=st.lists(EVENTS, min_size=1, max_size=20))
def test_stored_events_round_trip_exactly(db, events):
    with pg.connect(db) as conn:
        conn.execute("TRUNCATE market_events")
        conn.commit()
        assert write_market_events(conn, positioned(events), "r1") == len(events)
        back = stored(conn)
        cols = conn.execute("SELECT type, ts_recv_ms FROM market_event_rows ORDER BY ord").fetchall()
        batches = [decode_events(r[0]) for r in conn.execute("SELECT body FROM market_events ORDER BY ord")]
    assert back == events
    assert cols == [(type(e).__name__, e.ts_recv_ms) for e in events]
    assert [e for b in batches for e in b] == events


@given(events=st.lists(EVENTS, max_size=5), seg=st.integers(0, 2**62), ord_=st.integers(0, 2**62))
def test_spill_lines_round_trip_exactly(events, seg, ord_):
    item = MarketBatch("deribit", "BTC", seg, ord_, events)
    assert MarketEventWriter.decode(MarketEventWriter.encode(item)) == item
    if events:  # the row the event sink encodes spills as the same line
        row = encode_row("deribit", "BTC", seg, ord_, events)
        assert (row.n, row.ts_ms, row.ts_last_ms) == (len(events), min(e.ts_recv_ms for e in events),
                                                      max(e.ts_recv_ms for e in events))
        assert MarketEventWriter.encode(row) == MarketEventWriter.encode(item)


def test_resend_of_the_same_positions_is_a_no_op_and_a_replay_reads_each_position_once(db):
    events = [IndexPrice("deribit", "BTC", DAY0_MS + i, DAY0_MS + i, 90_000.0 + i) for i in range(10)]
    new = [IndexPrice("deribit", "BTC", DAY0_MS + 100 + i, DAY0_MS + 100 + i, 1.0) for i in range(3)]
    with pg.connect(db) as conn:
        assert write_market_events(conn, positioned(events), "r1") == 10  # rows at 0, 3, 6, 9
        # a resumed flow hands the same batches again (a no-op), then 3 new events
        assert write_market_events(conn, positioned(events[6:], first=6) + positioned(new, first=10), "r1") == 3
        assert stored(conn) == events + new
        # a resend that grouped them otherwise (rows at 6 and 8, two events each): stored beside them
        write_market_events(conn, positioned(events[6:], first=6, size=2), "r1")
        conn.commit()
    source = DbReplaySource(db, run_id="r1", start_ms=DAY0_MS, end_ms=DAY0_MS + DAY_MS)
    part = source.build_part("in", "deribit|BTC", None)
    read = []
    try:
        while True:
            read.extend(part.next_batch())
    except StopIteration:
        pass
    finally:
        part.close()
    assert read == events + new  # each position once, in order


def test_day_partitions_are_made_as_needed_and_retention_drops_old_days(db, tmp_path):
    # five days of events, written by the writer thread with 2 days of retention
    events = [IndexPrice("deribit", "BTC", DAY0_MS + d * DAY_MS + 1, DAY0_MS + d * DAY_MS + 1, 1.0 + d)
              for d in range(5)]
    w = MarketEventWriter(db, run=run("r1"), name="ev-t", flush_ms=10, batch_rows=2, spill_dir=tmp_path,
                          retention_days=2)
    try:
        for item in positioned(events, size=1):
            w.submit(item)
        assert w.flush(timeout=60)
    finally:
        w.close(timeout=10)
    assert w.stats()["rows_written"] == {"market_events": 5} and w.stats()["rejected"] == 0
    with pg.connect(db) as conn:
        parts = sorted(r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'market_events'::regclass"))
        days = [r[0] for r in conn.execute("SELECT ts_ms FROM market_events ORDER BY ts_ms")]
    # newest day 2026-01-05, 2 days kept before it: 01-03, 01-04, 01-05 (and 01-06, made ahead)
    assert parts == ["market_events_20260103", "market_events_20260104", "market_events_20260105",
                     "market_events_20260106"]
    assert days == [e.ts_recv_ms for e in events[2:]]
    assert set(w.dropped_partitions) == {"market_events_20260101", "market_events_20260102"}
    with pg.connect(db) as conn:
        assert retain(conn, 0, DAY0_MS + 10 * DAY_MS) == []  # 0 keeps every day
        assert sorted(retain(conn, 1, DAY0_MS + 5 * DAY_MS)) == ["market_events_20260103", "market_events_20260104"]
        assert conn.execute("SELECT count(*) FROM market_events").fetchone()[0] == 1  # 01-05's event


def test_bad_items_are_set_aside_with_a_counter_and_the_rest_stored(db, tmp_path):
    good = [IndexPrice("deribit", "BTC", DAY0_MS, DAY0_MS, 1.0), IndexPrice("deribit", "BTC", DAY0_MS + 1,
                                                                             DAY0_MS + 1, 2.0)]
    w = MarketEventWriter(db, run=run("r1"), name="ev-bad", flush_ms=10, batch_rows=10, spill_dir=tmp_path,
                          retention_days=0)
    try:
        w.submit(MarketBatch("deribit", "BTC", 1, 0, [good[0]]))
        w.submit(MarketBatch("deribit", "BTC", 1, 1, [IndexPrice("deribit", "BTC", 0, -5, 1.0)]))  # before 1970
        w.submit(MarketBatch("deribit", "BTC", 1, 2, ["not an event"]))
        w.submit(MarketBatch("deribit", "BTC", 1, 3, [good[1]]))
        w.submit(MarketBatch("deribit", "BTC", 1, 4, [FeedError("deribit", "x", "NUL \x00 here", DAY0_MS)]))
        w.submit(good[0])  # not in a MarketBatch: ignored, counted
        assert w.flush(timeout=60)
    finally:
        w.close(timeout=10)
    s = w.stats()
    assert s["rejected"] == 2 and s["ignored_types"] == {"IndexPrice": 1}
    assert s["errors"] == {"rejected.bad_event": 2}
    with pg.connect(db) as conn:
        rows = [e for r in conn.execute("SELECT body FROM market_events ORDER BY ord") for e in decode_events(r[0])]
    assert rows == [good[0], good[1], FeedError("deribit", "x", "NUL \x00 here", DAY0_MS)]  # NUL kept exactly
    assert (tmp_path / "r1" / "ev-bad.rejected.jsonl").read_text().count("\n") == 2


def test_rows_stored_as_json_before_msgpack_still_read_back(db):
    """Rows written before 007_market_events_storage.sql hold a JSON array (text made bytea): the
    readers (decode_events, the market_event_rows view) tell them from msgpack by the first byte."""
    old = [Ticker("deribit", "BTC-X", DAY0_MS, DAY0_MS + 1, best_bid_px=0.0425, mark_iv=0.61),
           BookUpdate("deribit", "BTC-X", DAY0_MS, DAY0_MS + 2, 7, 6, "change", ((0.04, 1.5),), ((0.045, 0.0),))]
    new = [IndexPrice("deribit", "BTC", DAY0_MS, DAY0_MS + 3, 87_123.45)]
    json_body = b"[" + b",".join(to_json(e) for e in old) + b"]"
    with pg.connect(db) as conn:
        conn.execute("TRUNCATE market_events")
        conn.execute("SELECT market_events_ensure(%s, %s)", (DAY0_MS, DAY0_MS))
        conn.execute("INSERT INTO market_events (run_id, venue, underlying, seg, ord, ts_ms, ts_last_ms, n, kinds, body)"
                     " VALUES ('r1', 'deribit', 'BTC', 1, 0, %s, %s, 2, 24, %s)", (DAY0_MS + 1, DAY0_MS + 2, json_body))
        conn.commit()
        write_market_events(conn, [MarketBatch("deribit", "BTC", 1, 2, new)], "r1")
        bodies = [r[0] for r in conn.execute("SELECT body FROM market_events ORDER BY ord")]
        back = stored(conn)
    assert bodies[0][:1] == b"[" and bodies[1][:1] != b"["
    assert [e for b in bodies for e in decode_events(b)] == old + new
    assert back == old + new


def test_the_migration_to_msgpack_bodies_keeps_the_json_rows_of_a_schema_6_database(pg_db, tmp_path):
    """007_market_events_storage.sql on a database that stored JSON text bodies (schema 6): the rows
    stay, as their UTF-8 bytes, and read back through decode_events and the view."""
    from connectors.postgres.schema import SQL_DIR
    old_dir = tmp_path / "sql6"
    old_dir.mkdir()
    for f in sorted(Path(SQL_DIR).glob("*.sql")):
        if int(f.name.split("_", 1)[0]) < 7:
            (old_dir / f.name).write_text(f.read_text())
    old = [IndexPrice("deribit", "BTC", DAY0_MS, DAY0_MS + 3, 87_123.45)]
    with pg.connect(pg_db) as conn:
        pg.migrate(conn, old_dir)
        conn.execute("SELECT market_events_ensure(%s, %s)", (DAY0_MS, DAY0_MS))
        conn.execute("INSERT INTO market_events (run_id, venue, underlying, seg, ord, ts_ms, ts_last_ms, n, kinds, body)"
                     " VALUES ('r1', 'deribit', 'BTC', 1, 0, %s, %s, 1, 4, %s)",
                     (DAY0_MS + 3, DAY0_MS + 3, "[" + to_json(old[0]).decode() + "]"))
        conn.commit()
        assert 7 in pg.migrate(conn)
        body = conn.execute("SELECT body FROM market_events").fetchone()[0]
        assert decode_events(body) == old
        assert stored(conn) == old


def test_the_migration_refuses_nonsense_ranges(db):
    with pg.connect(db) as conn, pytest.raises(psycopg.Error, match="ten years"):
        conn.execute("SELECT market_events_ensure(0, %s)", (DAY0_MS,))


def test_events_spilled_while_the_database_is_away_are_stored_in_order_when_it_returns(db, tmp_path):
    from tests.helpers.resources import free_port

    events = [IndexPrice("deribit", "BTC", DAY0_MS + i, DAY0_MS + i, float(i)) for i in range(20)]
    away = f"postgresql://127.0.0.1:{free_port()}/none"
    w = MarketEventWriter(away, run=run("r1"), name="ev-spill", flush_ms=10, batch_rows=5, spill_dir=tmp_path,
                          retry_min_ms=10, retry_max_ms=50, connect_timeout_s=0.5, retention_days=0)
    for item in positioned(events, size=4):
        w.submit(item)
    assert w.durable(timeout=60)  # on disk (fsync'd), the database being away
    w.close(timeout=1)
    assert w.stats()["spilled"] >= 5 and w.stats()["rows_written"] == {} and sorted((tmp_path / "r1").glob("ev-spill.spill.*.jsonl"))
    drain = MarketEventWriter(db, run=run("r1"), name="ev-spill", flush_ms=10, batch_rows=5, spill_dir=tmp_path,
                              retention_days=0)
    try:
        assert drain.flush(timeout=60)
    finally:
        drain.close(timeout=10)
    with pg.connect(db) as conn:
        assert stored(conn) == events
    assert sorted((tmp_path / "r1").glob("ev-spill.spill.*.jsonl")) == []


def test_a_database_replay_resumes_after_the_last_row_it_read(db):
    events = [IndexPrice("deribit", "BTC", DAY0_MS + i, DAY0_MS + i, float(i)) for i in range(30)]
    with pg.connect(db) as conn:
        write_market_events(conn, positioned(events, size=4), "r1")
        conn.commit()
    source = DbReplaySource(db, run_id="r1", start_ms=DAY0_MS + 5, end_ms=DAY0_MS + 25, batch_max=6)

    def drain(part, limit=None):
        out = []
        try:
            while limit is None or len(out) < limit:
                out.extend(part.next_batch())
        except StopIteration:
            pass
        return out

    first = source.build_part("in", "deribit|BTC", None)
    head = drain(first, 6)
    state = first.snapshot()
    first.close()
    again = source.build_part("in", "deribit|BTC", state)  # a resumed flow: no preamble, after the last row read
    tail = drain(again)
    again.close()
    window = [e for e in events if DAY0_MS + 5 <= e.ts_recv_ms < DAY0_MS + 25]
    assert head[0] == events[4]  # the preamble: the newest index price before the window
    assert head[1:] + tail == window
    assert source.clock_ms() == DAY0_MS + 24  # the newest receive time emitted


def sink(dsn: str, spill_dir, resends: bool):
    from connectors.postgres.market_sink import MarketEventSink

    s = MarketEventSink(dsn, run=run("r1"), partitions=1, spill_dir=spill_dir, flush_ms=10, batch_rows=50,
                        handoff_timeout_s=30, retention_days=0)
    s.resends = resends
    return s


def killed_life(db, tmp_path, seg: int, events: list) -> None:
    """What a life `seg` of event-sink partition ev-0 left when SIGKILLed after a snapshot at
    position 6: rows stored at 0–2 and 6–9, and spill lines at 3–5 (below the snapshot: handed
    off durably while the database was away) and 10–11 (after it)."""
    from tests.helpers.resources import free_port

    with pg.connect(db) as conn:
        write_market_events(conn, [MarketBatch("deribit", "BTC", seg, 0, events[0:3]),
                                   MarketBatch("deribit", "BTC", seg, 6, events[6:10])], "r1")
        conn.commit()
    away = MarketEventWriter(f"postgresql://127.0.0.1:{free_port()}/none", run=run("r1"), name="ev-ev-0",
                             flush_ms=10, batch_rows=50, spill_dir=tmp_path, retry_min_ms=10, retry_max_ms=50,
                             connect_timeout_s=0.5, retention_days=0)
    away.submit(MarketBatch("deribit", "BTC", seg, 3, events[3:6]))
    away.submit(MarketBatch("deribit", "BTC", seg, 10, events[10:12]))
    assert away.durable(timeout=60)
    away.close(timeout=1)


def positions(conn) -> list:
    return conn.execute("SELECT seg, ord FROM market_event_rows WHERE run_id = 'r1' ORDER BY seg, ord").fetchall()


def test_a_resumed_partition_whose_sources_send_again_replaces_what_the_killed_life_stored_after_its_snapshot(
        db, tmp_path):
    # a resumed replay sends the events after the snapshot again, cut into other batches and in another order
    # than the killed life had them (flows/routing.py joins a surface's events per chain key per batch)
    events = [IndexPrice("deribit", "BTC", DAY0_MS + i, DAY0_MS + i, float(i)) for i in range(12)]
    seg = 7 * 1024
    killed_life(db, tmp_path, seg, events)
    again = events[6:][::-1]
    part = sink(db, tmp_path, resends=True).build_part("ev", "ev-0", (seg, 6))
    try:
        part.write_batch([("deribit|BTC", again[:2]), ("deribit|BTC", again[2:])])
        assert part.snapshot() == (seg, 12)  # the same life, on from the snapshot
        assert part.writer.flush(timeout=60)
    finally:
        part.close()
    assert part.writer.rolled_back == {"stored": 4, "spilled": 2}
    with pg.connect(db) as conn:
        assert stored(conn) == events[:6] + again  # below the snapshot kept (spilled ones too), after it replaced
        assert positions(conn) == [(seg, i) for i in range(12)]  # each position once
    assert list((tmp_path / "r1").glob("ev-ev-0.spill.*")) == []


def test_a_resumed_partition_of_live_sources_starts_a_new_life_and_keeps_what_the_killed_one_stored(db, tmp_path):
    # live sources subscribe afresh: the killed life's events after its snapshot are what the venue sent, and
    # the resumed flow's events are new ones
    events = [IndexPrice("deribit", "BTC", DAY0_MS + i, DAY0_MS + i, float(i)) for i in range(12)]
    new = [IndexPrice("deribit", "BTC", DAY0_MS + 100 + i, DAY0_MS + 100 + i, 1.0) for i in range(3)]
    seg = 7 * 1024
    killed_life(db, tmp_path, seg, events)
    part = sink(db, tmp_path, resends=False).build_part("ev", "ev-0", (seg, 6))
    try:
        part.write_batch([("deribit|BTC", new)])
        new_seg, n = part.snapshot()
        assert new_seg > seg and n == 3
        assert part.writer.flush(timeout=60)
    finally:
        part.close()
    assert part.writer.rolled_back == {"stored": 0, "spilled": 0}
    with pg.connect(db) as conn:
        assert stored(conn) == events + new
        assert positions(conn) == [(seg, i) for i in range(12)] + [(new_seg, i) for i in range(3)]
