"""Market events stored for replay (issue #15 part 4; deploy/sql/004_market_events.sql): events
<-> rows of market_events, the day partitions they need, retention, and the writer that stores
them (a PostgresWriter with other hooks: same buffer, spill and retry machinery, never blocking
the flow).

What is stored is the normalised events the sources emit (MARKET_EVENTS), as msgpack arrays of one
source batch of one surface per row (004_market_events.sql says why a row per batch; 007 why msgpack
and how the body is stored), not the raw websocket frames. Measured on this 2-core box with
bench/bench_events.py on the seed-scale workload (docs/benchmarks.md "Market events"): on
2026-12-05 raw frames COPYed faster in isolation (502,000 frames/s against 351,000 events/s: no
encode); since 2026-12-06 (rows of 500 events, msgpack, binary COPY) events COPY at 564,000-659,000
a second against 281,000-286,000 frames, at 214 bytes per event sent against a frame's 348, and 224
on disk uncompressed against 441; and a replay of frames would need the venue's parser on the
replay side, where stored events replay through any venue's path alike and are already grouped by
surface. Encoding them is still most of what storage costs the flow (encode_row): a tap of raw
frames in the venue clients was not measured.

Only translates: no volatility maths, no threads of its own (the PostgresWriter's), never imports
flows or bytewax (connectors/postgres/market_sink.py is the bytewax side).
"""

from __future__ import annotations

import logging
import operator
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import msgspec
import psycopg

from connectors.postgres.runs import check_run_id
from connectors.postgres.writer import PostgresWriter
from operators.events import (BookUpdate, ContractError, FeedError, FuturePrice, IndexPrice, Instrument, Ticker,
                              checked, contract_error, dec_hook, decoder, enc_hook)

log = logging.getLogger("volgraph.postgres")

MARKET_EVENTS = (Instrument, BookUpdate, Ticker, IndexPrice, FuturePrice, FeedError)
DAY_MS = 86_400_000
COLUMNS = ("run_id", "venue", "underlying", "seg", "ord", "ts_ms", "ts_last_ms", "n", "kinds", "body")
_decode_market = decoder(*MARKET_EVENTS).decode


class MarketBatch(msgspec.Struct, frozen=True, array_like=True):
    """A run of one surface's market events, a row of market_events: the surface (venue,
    underlying) and the position (seg, ord) of its first event in the order the event sink
    accepted them; the i-th event is at (seg, ord + i) (004_market_events.sql). One row per
    source batch of a surface (at most connectors/postgres/market_sink.py ROW_EVENTS events), not
    per event: the flow's side costs per item, and the events are encoded as one msgpack array
    (measured in bench/bench_events.py, see MarketPlan). The event sink hands the writer
    MarketRows (the same, encoded); a MarketBatch is what a spill line reads back as, and what
    tests and the benchmark write."""

    venue: str
    underlying: str
    seg: int
    ord: int
    events: list


class MarketRow(msgspec.Struct, frozen=True):
    """A MarketBatch encoded by encode_row: its row's columns, the events one msgpack array
    (`body`: msgspec.msgpack of the list, each event a map with its `type` tag first, as
    operators.events.to_json has it in JSON; 007_market_events_storage.sql)."""

    venue: str
    underlying: str
    seg: int
    ord: int
    ts_ms: int  # the first and last receive time of its events
    ts_last_ms: int
    n: int
    kinds: int  # KIND_BITS of its event types
    body: bytes


def encode_row(venue: str, underlying: str, seg: int, ord_: int, events: list) -> MarketRow:
    """The row of these events (at least one) at position (seg, ord_); TypeError or ValueError,
    naming what, if one is not a market event or its ts_recv_ms is not UTC epoch ms.

    Per event, only C runs here (msgspec encodes the list; map/set/min/max read the types and
    times). It runs in the flow's thread, in the event sink (market_sink.py), not in the writer's:
    measured on the seed-scale workload (2 cores, bench/bench_events.py, 2026-12-06), the same
    work in the writer thread took it 1.26 s of CPU per run against ~0.75 s here, for the same cost
    to the flow's throughput within the benchmark's noise. The encode is most of what storage costs
    the flow, and most of it is memory, not the encoder: on 300,000 parsed events in a loop
    (2026-12-06 02:27 UTC) a JSON encode took 0.45 us an event, 0.70 after a 64 MB cache flush,
    and in the flow ~1.7 us (the events it reaches were made a whole source batch earlier, among
    the flow's other allocations; re-encoding them at once took a third of that). Not the cyclic
    GC: with storage on the flow's collector time rose 0.13 -> 0.15 s a run (gc.callbacks, 2 rounds).
    So the body is msgpack (binary floats: no shortest-repr formatting): 0.22 us an event hot
    against JSON's 0.45; in the flow 0.47-0.52 s a run against 0.75-0.79 s, and storage's cost
    to the flow's throughput 15.6 % against 19.3 % (5 interleaved rounds, 2026-12-06 02:41 UTC;
    docs/benchmarks.md "Market events")."""
    types = set(map(type, events))
    if not _MARKET_SET.issuperset(types):
        bad = next(t.__name__ for t in types if t not in _MARKET_SET)
        raise TypeError(f"market_events stores {', '.join(c.__name__ for c in MARKET_EVENTS)}; got {bad}")
    stamps = list(map(_recv_ms, events))
    low, high = min(stamps), max(stamps)
    if set(map(type, stamps)) != _INT or not (0 <= low and high < 2**53):
        raise ValueError(f"a ts_recv_ms of {venue}|{underlying} (from {low!r} to {high!r}) is not UTC epoch ms")
    if type(seg) is not int or type(ord_) is not int:
        raise ValueError(f"position ({seg!r}, {ord_!r}) is not two integers")
    kinds = 0
    for t in types:
        kinds |= KIND_BITS[t]
    return MarketRow(venue, underlying, seg, ord_, low, high, len(events), kinds, _pack(events))


class _SpillBatch(msgspec.Struct, array_like=True):
    venue: str
    underlying: str
    seg: int
    ord: int
    events: list[Union[MARKET_EVENTS]]  # type: ignore[valid-type]


# the hooks: a book side is a levels × 2 array in memory, [[price, size], …] in a body (events.py)
_spill_decode = msgspec.json.Decoder(_SpillBatch, dec_hook=dec_hook).decode
_encode = msgspec.json.Encoder(enc_hook=enc_hook).encode  # spill lines
_pack = msgspec.msgpack.Encoder(enc_hook=enc_hook).encode  # row bodies


def decode_event(body: bytes | str) -> Any:
    """A stored body back into its event; ContractError (naming type and field) if it is not a
    market event of this schema."""
    try:
        return checked(_decode_market(body))
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise contract_error(body, exc) from None


_decode_list = msgspec.json.Decoder(list[Union[MARKET_EVENTS]], dec_hook=dec_hook).decode  # type: ignore[valid-type]
_unpack_list = msgspec.msgpack.Decoder(list[Union[MARKET_EVENTS]], dec_hook=dec_hook).decode  # type: ignore[valid-type]


def decode_events(body: bytes | memoryview | str) -> list:
    """A stored row's body back into its events: a msgpack array (since 007_market_events_storage.sql)
    or a JSON one (rows stored before it, text made bytea; a msgpack array never starts with `[`,
    0x5b, which msgpack reads as the integer 91); ContractError (naming the type and field) if it is
    not one."""
    try:
        if isinstance(body, str) or body[:1] == b"[":
            return [checked(e) for e in _decode_list(body)]
        return [checked(e) for e in _unpack_list(body)]
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise ContractError(f"not an array of market events: {exc}") from None


def _copy_text(value: str) -> str:
    """A text value for COPY's binary format: NUL, which PostgreSQL text cannot hold, dropped (the
    body keeps the exact value)."""
    return value.replace("\x00", "") if "\x00" in value else value


# COPY's binary format (PostgreSQL docs, "COPY", Binary Format): a header, per tuple its field count and
# each field as a length and its bytes (bigint 8 bytes, integer 4, smallint 2, big-endian), a trailer
_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_TRAILER = struct.pack(">h", -1)
_FIELDS = struct.Struct(">h")
_LEN = struct.Struct(">i")
_TAIL = struct.Struct(">iqiqiqiqiiihi")  # seg, ord, ts_ms, ts_last_ms, n, kinds, then the body's length


KIND_BITS = {Instrument: 1, FuturePrice: 2, IndexPrice: 4, BookUpdate: 8, Ticker: 16, FeedError: 32}


class MarketPlan:
    """The market_events rows of one batch of run `run_id`: one COPY line per MarketRow (or
    MarketBatch, encoded here) in COPY's binary format, its events as one msgpack array (the bytea
    as is: COPY's text format wants bytea as hex, which doubled what the server reads and cost the
    writer 0.19 s of binascii.hexlify a run under the GIL; with it the flow lost more throughput with
    msgpack bodies than with JSON ones: 2026-12-06 02:31 UTC, 5 interleaved rounds, loaded machine) (004_market_events.sql says why a
    row per batch). add() fails on a bad item before it changes anything (the writer sets it
    aside and keeps the rest).

    Per event, only C runs here: the writer shares the flow's GIL, and per-event Python is what
    storage costs the flow. Measured on the seed-scale workload (2 cores, bench/bench_events.py,
    2026-12-05): a COPY line built per event in Python took 1.3-1.9 us per event (plus 0.9 us for
    a per-event item in the sink) and storage cost the flow 64 % of its throughput; a msgspec
    encode per row, 29 % (see encode_row for where the encoding runs since 2026-12-06)."""

    def __init__(self, run_id: str) -> None:
        run = _copy_text(check_run_id(run_id)).encode()
        self.run_id = _FIELDS.pack(10) + _LEN.pack(len(run)) + run  # every tuple starts so
        self.lines: list[bytes] = []
        self.days: set[int] = set()
        self.events = 0
        self.newest_ms = -1

    def add(self, item: Union[MarketRow, MarketBatch]) -> None:
        kind = type(item)
        if kind is MarketBatch:
            if not item.events:
                return
            row = encode_row(item.venue, item.underlying, item.seg, item.ord, item.events)
        elif kind is MarketRow:
            row = item
            if not (type(row.ts_ms) is int and type(row.ts_last_ms) is int and 0 <= row.ts_ms <= row.ts_last_ms < 2**53
                    and type(row.n) is int and row.n > 0 and type(row.seg) is int and type(row.ord) is int
                    and type(row.body) is bytes):
                raise ValueError(f"not a row encode_row makes: {row!r:.200}")
        else:
            raise TypeError(f"the market-event writer stores MarketRow and MarketBatch items; got {kind.__name__}")
        venue, underlying = _copy_text(row.venue).encode(), _copy_text(row.underlying).encode()
        self.lines.append(b"".join((
            self.run_id, _LEN.pack(len(venue)), venue, _LEN.pack(len(underlying)), underlying,
            _TAIL.pack(8, row.seg, 8, row.ord, 8, row.ts_ms, 8, row.ts_last_ms, 4, row.n, 2, row.kinds,
                       len(row.body)), row.body)))
        self.days.add(row.ts_ms // DAY_MS)
        self.events += row.n
        if row.ts_last_ms > self.newest_ms:
            self.newest_ms = row.ts_last_ms


_MARKET_SET = frozenset(MARKET_EVENTS)
_INT = {int}
_recv_ms = operator.attrgetter("ts_recv_ms")
_COLS = ", ".join(COLUMNS)


def ensure_days(conn: psycopg.Connection, days: Iterable[int]) -> int:
    """The day partitions of these UTC day numbers (ts_ms // DAY_MS) exist afterwards; returns how
    many were created. Call inside a transaction or in autocommit."""
    made = 0
    for d in sorted(set(days)):
        made += conn.execute("SELECT market_events_ensure(%s, %s)", (d * DAY_MS, d * DAY_MS)).fetchone()[0]
    return made


def retain(conn: psycopg.Connection, days: int, newest_ms: int) -> list[str]:
    """Drop the day partitions that end `days` days or more before newest_ms's day (0: none);
    returns the partitions dropped."""
    with conn.transaction():
        return [r[0] for r in conn.execute("SELECT market_events_retain(%s, %s)", (days, newest_ms)).fetchall()]


def write_market_plan(conn: psycopg.Connection, plan: MarketPlan, known_days: set[int]) -> int:
    """Write one batch in one transaction; returns the events in the rows inserted. Fast path:
    COPY straight into market_events. A batch that meets rows already stored (spilled rows
    written again: a writer killed between a segment's COPY and the segment's removal) is rolled
    back and written again through a staging table, keeping the longer of two rows that start at
    one position (rows that overlap are read once by position: connectors/capture/db_replay.py).
    A resumed flow's events after its snapshot never meet the killed life's: the writer removed
    those first (MarketEventWriter rollback). known_days: the days known to have a
    partition (updated; the day after the newest is made ahead, so midnight never waits on DDL)."""
    if not plan.lines:
        return 0
    need = plan.days | {max(plan.days) + 1}
    data = b"".join((_HEADER, *plan.lines, _TRAILER))
    try:
        with conn.transaction(), conn.cursor() as cur:
            if not need <= known_days:
                ensure_days(conn, need - known_days)
            with cur.copy(f"COPY market_events ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(data)
            n = plan.events
    except psycopg.errors.UniqueViolation:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS stage_market_events"
                        " (LIKE market_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY stage_market_events ({_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(data)
            # a position below a resumed life's snapshot holds the same event in every write, so of
            # two rows starting at one position the longer holds the other: it stays
            cur.execute(f"INSERT INTO market_events ({_COLS}) SELECT {_COLS} FROM stage_market_events"
                        " ON CONFLICT (run_id, venue, underlying, seg, ord, ts_ms) DO UPDATE SET"
                        " ts_last_ms = EXCLUDED.ts_last_ms, n = EXCLUDED.n, kinds = EXCLUDED.kinds, body = EXCLUDED.body"
                        " WHERE EXCLUDED.n > market_events.n RETURNING n")
            n = sum(r[0] for r in cur.fetchall())
    known_days.update(need)
    return n


class _SpillHead(msgspec.Struct, array_like=True):
    venue: str
    underlying: str
    seg: int
    ord: int
    events: msgspec.Raw  # not decoded: only the position is read


_spill_head = msgspec.json.Decoder(_SpillHead).decode


def _drop_spilled_beyond(folder: Path, name: str, seg: int, ord_: int) -> int:
    """Remove from writer `name`'s spill segments in `folder` the lines of life `seg` at
    positions ord_ and beyond; returns the events removed. Each changed segment is rewritten
    (fsync'd, then renamed over); a line that does not read as a spill line stays for the
    writer to set aside, counted (spill_corrupt)."""
    removed = 0
    for path in sorted(folder.glob(f"{name}.spill.*.jsonl")) if folder.is_dir() else ():
        keep, drop = [], 0
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    head = _spill_head(line)
                except (msgspec.DecodeError, UnicodeError):
                    keep.append(line)
                    continue
                if head.seg == seg and head.ord >= ord_:
                    drop += len(msgspec.json.decode(head.events))
                else:
                    keep.append(line)
        if drop and not keep:
            path.unlink()
        elif drop:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.writelines(keep)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        removed += drop
    return removed


def write_market_events(conn: psycopg.Connection, items: Iterable[MarketBatch], run_id: str) -> int:
    """Synchronous write of market-event batches as run `run_id` (registered first): for tests
    and the benchmark."""
    plan = MarketPlan(run_id)
    for item in items:
        plan.add(item)
    return write_market_plan(conn, plan, set())


class MarketEventWriter(PostgresWriter):
    """A PostgresWriter of MarketBatch items into market_events: the same buffering, spill
    segments (one JSON line per item), retries and durable hand-off; its counts (submitted,
    pending, batch_rows, max_buffer_rows) are in items, its rows_written in events.
    retention_days: after a batch whose newest event starts a new day, the day partitions older
    than that many days before it are dropped (0: never)."""

    supported = (MarketRow, MarketBatch)

    def __init__(self, dsn: str, *, retention_days: int, rollback: Optional[tuple[int, int]] = None,
                 **options: Any) -> None:
        """rollback=(seg, ord): this writer continues a sink partition's life `seg` from a recovery
        snapshot taken at position `ord`, and its sources send every event after the snapshot
        again. What the killed life stored or spilled at positions ord and beyond is removed first
        (the spill lines here, before the thread starts; the rows on the first connection, before
        any write), so each position holds the event the resumed flow hands it."""
        if isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 0:
            raise ValueError(f"retention_days={retention_days!r}: give an integer >= 0 (graph.toml [sinks.postgres]"
                             " market_retention_days; 0 keeps every day)")
        self.retention_days = retention_days
        self._known_days: set[int] = set()
        self._retained_day = -1
        self.dropped_partitions: list[str] = []
        self._rollback = rollback
        self.rolled_back = {"spilled": 0, "stored": 0}  # events removed beyond the snapshot (tests, logs)
        super().__init__(dsn, **options)

    def _recover_segments(self) -> int:
        # the killed life's spilled lines beyond the snapshot go before the segments are counted
        # (PostgresWriter.__init__ calls this once, before its thread starts)
        if self._rollback is not None:
            self.rolled_back["spilled"] = _drop_spilled_beyond(self.spill_dir, self.name, *self._rollback)
        return super()._recover_segments()

    def new_plan(self) -> MarketPlan:
        return MarketPlan(self.run.run_id)

    def prepare(self, conn: psycopg.Connection) -> None:
        self._known_days = set()  # a new connection: partitions may have been dropped meanwhile
        if self._rollback is not None:
            seg, ord_ = self._rollback
            with conn.transaction():
                n = sum(r[0] for r in conn.execute(
                    "DELETE FROM market_events WHERE run_id = %s AND seg = %s AND ord >= %s RETURNING n",
                    (self.run.run_id, seg, ord_)).fetchall())
            self._rollback = None
            self.rolled_back["stored"] = n
            if n or self.rolled_back["spilled"]:
                log.info("writer %s: resumed at position %d of seg %d: removed %d stored and %d spilled events the"
                         " killed flow had handed over after its last snapshot (its sources send them again)",
                         self.name, ord_, seg, n, self.rolled_back["spilled"])

    def write(self, conn: psycopg.Connection, plan: MarketPlan) -> dict[str, int]:
        n = write_market_plan(conn, plan, self._known_days)
        day = plan.newest_ms // DAY_MS
        if self.retention_days and day > self._retained_day:
            dropped = retain(conn, self.retention_days, plan.newest_ms)
            self._retained_day = day
            if dropped:
                self._known_days.clear()
                self.dropped_partitions.extend(dropped)
                log.info("writer %s: retention (%d days) dropped %s", self.name, self.retention_days, ", ".join(dropped))
        return {"market_events": n}

    @staticmethod
    def encode(item: Any) -> bytes:
        if type(item) is MarketRow:  # the spill line of the MarketBatch it was encoded from (rare: the database away)
            return _encode((item.venue, item.underlying, item.seg, item.ord, _unpack_list(item.body)))
        if not isinstance(item, MarketBatch):
            raise TypeError(f"not a MarketBatch of market events: {type(item).__name__}")
        return _encode(item)

    @staticmethod
    def decode(line: bytes) -> MarketBatch:
        try:
            row = _spill_decode(line)
        except (msgspec.DecodeError, UnicodeError) as exc:
            raise ContractError(f"not a market-event spill line: {exc}") from None
        return MarketBatch(row.venue, row.underlying, row.seg, row.ord, [checked(e) for e in row.events])
