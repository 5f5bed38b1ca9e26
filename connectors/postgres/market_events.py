"""Market events stored for replay (issue #15 part 4; deploy/sql/004_market_events.sql): events
<-> rows of market_events, the day partitions they need, retention, and the writer that stores
them (a PostgresWriter with other hooks: same buffer, spill and retry machinery, never blocking
the flow).

What is stored is the normalised events the sources emit (MARKET_EVENTS), as JSON arrays of one
source batch of one surface per row (004_market_events.sql says why a row per batch), not the raw
websocket frames. Measured on this 2-core box with bench/bench_events.py on the seed-scale
workload (2026-12-05, docs/benchmarks.md "Market events"): raw frames COPY faster in isolation
(502,000 frames/s against 351,000 events/s: no encode), but they are 348 bytes per event on the
wire against 255, and 441 bytes per event on disk against 93 (the batched JSON arrays compress in
TOAST; single frames are too small to); and a replay of frames would need the venue's parser and
its session state (subscriptions, change ids) on the replay side, where stored events replay
through any venue's path alike and are already grouped by surface. Events it is.

Only translates: no volatility maths, no threads of its own (the PostgresWriter's), never imports
flows or bytewax (connectors/postgres/market_sink.py is the bytewax side).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Union

import msgspec
import psycopg

from connectors.postgres.runs import check_run_id
from connectors.postgres.writer import PostgresWriter
from operators.events import (BookUpdate, ContractError, FeedError, FuturePrice, IndexPrice, Instrument, Ticker,
                              checked, contract_error, decoder)

log = logging.getLogger("volgraph.postgres")

MARKET_EVENTS = (Instrument, BookUpdate, Ticker, IndexPrice, FuturePrice, FeedError)
DAY_MS = 86_400_000
COLUMNS = ("run_id", "venue", "underlying", "seg", "ord", "ts_ms", "ts_last_ms", "n", "kinds", "body")
_decode_market = decoder(*MARKET_EVENTS).decode


class MarketBatch(msgspec.Struct, frozen=True, array_like=True):
    """A run of one surface's market events as the event sink hands it to the writer: the
    surface (venue, underlying) and the position (seg, ord) of its first event in the order the
    sink accepted them; the i-th event is at (seg, ord + i) (004_market_events.sql). One item per
    source batch of a surface, not per event: the flow's side costs per item, and the events are
    encoded as one JSON array (measured in bench/bench_events.py, see MarketPlan)."""

    venue: str
    underlying: str
    seg: int
    ord: int
    events: list


class _SpillBatch(msgspec.Struct, array_like=True):
    venue: str
    underlying: str
    seg: int
    ord: int
    events: list[Union[MARKET_EVENTS]]  # type: ignore[valid-type]


_spill_decode = msgspec.json.Decoder(_SpillBatch).decode
_encode = msgspec.json.Encoder().encode


def decode_event(body: bytes | str) -> Any:
    """A stored body back into its event; ContractError (naming type and field) if it is not a
    market event of this schema."""
    try:
        return checked(_decode_market(body))
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise contract_error(body, exc) from None


_decode_list = msgspec.json.Decoder(list[Union[MARKET_EVENTS]]).decode  # type: ignore[valid-type]


def decode_events(body: bytes | str) -> list:
    """A stored row's body (a JSON array of market events) back into its events; ContractError
    (naming the type and field) if it is not one."""
    try:
        return [checked(e) for e in _decode_list(body)]
    except (msgspec.DecodeError, UnicodeError) as exc:
        raise ContractError(f"not a JSON array of market events: {exc}") from None


def _copy_text(value: str) -> str:
    """A text value in COPY's text format (backslash, tab, newline, carriage return escaped; NUL,
    which PostgreSQL text cannot hold, dropped: the body keeps the exact value)."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


KIND_BITS = {Instrument: 1, FuturePrice: 2, IndexPrice: 4, BookUpdate: 8, Ticker: 16, FeedError: 32}


class MarketPlan:
    """The market_events rows of one batch of run `run_id`: one COPY line per MarketBatch, its
    events as one JSON array (004_market_events.sql says why a row per batch). add() fails on a
    bad item before it changes anything (the writer sets it aside and keeps the rest).

    Per event, only C runs here (msgspec encodes the list, map/min/max read the types and
    times): the writer shares the flow's GIL, and per-event Python is what storage costs the
    flow. Measured on the seed-scale workload (2 cores, bench/bench_events.py, 2026-12-05): a COPY
    line built per event in Python took 1.3-1.9 us per event (plus 0.9 us for a per-event item in
    the sink) and storage cost the flow 64 % of its throughput; this way, 29 %."""

    def __init__(self, run_id: str) -> None:
        self.run_id = _copy_text(check_run_id(run_id))
        self.lines: list[bytes] = []
        self.days: set[int] = set()
        self.events = 0
        self.newest_ms = -1

    def add(self, item: MarketBatch) -> None:
        if type(item) is not MarketBatch:
            raise TypeError(f"the market-event writer stores MarketBatch items; got {type(item).__name__}")
        events = item.events
        if not events:
            return
        types = set(map(type, events))
        if not _MARKET_SET.issuperset(types):
            bad = next(t.__name__ for t in types if t not in _MARKET_SET)
            raise TypeError(f"market_events stores {', '.join(c.__name__ for c in MARKET_EVENTS)}; got {bad}")
        stamps = [e.ts_recv_ms for e in events]
        low, high = min(stamps), max(stamps)
        if not (type(low) is int and type(high) is int and 0 <= low and high < 2**53) or \
                not all(type(t) is int for t in stamps):
            raise ValueError(f"a ts_recv_ms of {item.venue}|{item.underlying} (from {low!r} to {high!r}) is not"
                             " UTC epoch ms")
        if type(item.seg) is not int or type(item.ord) is not int:
            raise ValueError(f"position ({item.seg!r}, {item.ord!r}) is not two integers")
        kinds = 0
        for t in types:
            kinds |= KIND_BITS[t]
        # JSON never holds a raw tab or newline; only its backslashes need doubling for COPY
        body = _encode(events).replace(b"\\", b"\\\\")
        self.lines.append(f"{self.run_id}\t{_copy_text(item.venue)}\t{_copy_text(item.underlying)}\t{item.seg}\t"
                          f"{item.ord}\t{low}\t{high}\t{len(events)}\t{kinds}\t"
                          .encode() + body + b"\n")
        self.days.add(low // DAY_MS)
        self.events += len(events)
        if high > self.newest_ms:
            self.newest_ms = high


_MARKET_SET = frozenset(MARKET_EVENTS)
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
    COPY straight into market_events. A batch that meets rows already stored (a resumed flow
    handing the same events to the same positions again) is rolled back and written again
    through a staging table, keeping the longer of two rows that start at one position (a resend
    may group the events otherwise; rows that then overlap are read once by position:
    connectors/capture/db_replay.py). known_days: the days known to have a
    partition (updated; the day after the newest is made ahead, so midnight never waits on DDL)."""
    if not plan.lines:
        return 0
    need = plan.days | {max(plan.days) + 1}
    data = b"".join(plan.lines)
    try:
        with conn.transaction(), conn.cursor() as cur:
            if not need <= known_days:
                ensure_days(conn, need - known_days)
            with cur.copy(f"COPY market_events ({_COLS}) FROM STDIN") as copy:
                copy.write(data)
            n = plan.events
    except psycopg.errors.UniqueViolation:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS stage_market_events"
                        " (LIKE market_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY stage_market_events ({_COLS}) FROM STDIN") as copy:
                copy.write(data)
            # the same position holds the same event in every resend (the sink numbers them), so of
            # two rows starting at one position the longer holds the other: it stays
            cur.execute(f"INSERT INTO market_events ({_COLS}) SELECT {_COLS} FROM stage_market_events"
                        " ON CONFLICT (run_id, venue, underlying, seg, ord, ts_ms) DO UPDATE SET"
                        " ts_last_ms = EXCLUDED.ts_last_ms, n = EXCLUDED.n, kinds = EXCLUDED.kinds, body = EXCLUDED.body"
                        " WHERE EXCLUDED.n > market_events.n RETURNING n")
            n = sum(r[0] for r in cur.fetchall())
    known_days.update(need)
    return n


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

    supported = (MarketBatch,)

    def __init__(self, dsn: str, *, retention_days: int, **options: Any) -> None:
        if isinstance(retention_days, bool) or not isinstance(retention_days, int) or retention_days < 0:
            raise ValueError(f"retention_days={retention_days!r}: give an integer >= 0 (graph.toml [sinks.postgres]"
                             " market_retention_days; 0 keeps every day)")
        self.retention_days = retention_days
        self._known_days: set[int] = set()
        self._retained_day = -1
        self.dropped_partitions: list[str] = []
        super().__init__(dsn, **options)

    def new_plan(self) -> MarketPlan:
        return MarketPlan(self.run.run_id)

    def prepare(self, conn: psycopg.Connection) -> None:
        self._known_days = set()  # a new connection: partitions may have been dropped meanwhile

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
