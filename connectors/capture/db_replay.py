"""Replay from the database (issue #15 part 5): a bytewax source that reads the market events one
run stored (connectors/postgres/market_events.py, deploy/sql/004_market_events.sql) in a window
of receive time [start_ms, end_ms), and emits them again, so the flow re-runs them, perhaps with
another graph.toml, as a new run.

One partition per surface (venue|underlying) stored in the window: a surface's events are read in
the order the flow accepted them, (seg, ord), so every chain key's books are rebuilt in order, and
the index prices reach the expiries of the same partition (flows/routing.py routes an index
price to the expiries its partition has seen). Before the window, each partition emits the
newest Instrument, FuturePrice and IndexPrice of each instrument stored before start_ms, so a
window that begins after discovery still knows its instruments, then every book as it stood at
start_ms (issue #15: an incremental channel, Deribit book.X.100ms, sends one snapshot at
subscribe and then changes for hours, so a window starting mid-stream holds no snapshot of most
books and its chains would withhold them all as gapped). See _read_books: per option book, its
newest snapshot stored before start_ms in the sink partition's life (seg) that holds the window's
start, folded forward with operators/state/book.py OrderBook through its stored changes (and the
venue's seq_gap FeedErrors) up to start_ms into one synthetic snapshot (stamped at the last folded
event's times, seq = its change_id, so the window's first change chains onto it). A book the
original run had withheld at start_ms (gap, crossed) is left to its next snapshot, as it was
then; one with no stored snapshot before start_ms is named in one log line with the fix.

The resume state is the position of the last row and of the last event read; rows that overlap
(a resumed flow may regroup the events it hands over again) give each position once. The
preamble is emitted only while no row has been read (resume state None); a recovery resumed from
such a snapshot emits it again, which is idempotent: Instruments and prices are replaced by the
same values, and a snapshot replaces a book with the same levels (no event of the window has
reached it yet).

The flow clock is the events' own (clock_ms: the newest receive time emitted), as
connectors/capture/replay.py ReplaySource does for files; `speed` paces by the stored receive
times with bytewax's next_awake, never by sleeping. A stored body that no longer decodes becomes a
FeedError (reason `bad_stored_event`, counted by the flow), never a crash.

Reads only: never writes, never imports flows; no volatility maths.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any, Optional, Union

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.postgres.embedded import connect
from connectors.postgres.market_events import decode_events
from operators.events import BookUpdate, ContractError, FeedError, FuturePrice, IndexPrice, Instrument
from operators.state.book import OrderBook

log = logging.getLogger("volgraph.replay")

# rows per query: one index range scan each, resumed after the last position. A row holds up to 500 events
# since 2026-12-06 (connectors/postgres/market_sink.py ROW_EVENTS; ~10 before): 40 rows, at most 20,000 events
# (a few MB of msgpack) read at once
PAGE_ROWS = 40
SPAN_MS = 3_600_000  # a stored row's events span far less (one source batch): bounds the partitions read
PRICE_LOOKBACK_MS = 600_000  # the preamble's future and index prices: the newest within this before the window
FOLD_PROGRESS_EVENTS = 200_000  # a book fold reading more stored events than this says so on stderr first
# rows holding a book snapshot: `kinds` has one bit for BookUpdate, snapshot or change alike (a bit per
# kind would cost encode_row a Python test per event, on the flow's thread), so the server looks for the
# kind's value in the body, the same bytes in msgpack and in JSON (a false hit only costs a decode).
# Measured on 500,000 stored book events of 1,000 books (1,004 rows, pgserver, 2 cores, 2026-12-06):
# finding the rows with a snapshot so took 0.08 s, reading and decoding every row 0.87 s; the whole
# rebuild (both reads and the fold) 1.2 s
SNAPSHOT_BYTES = b"snapshot"


class EmptyWindow(ValueError):
    """No stored market events in the window (or no such run)."""


_PREAMBLE = (Instrument, FuturePrice, IndexPrice)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def stored_runs(dsn: str, start_ms: int, end_ms: int) -> list[tuple[str, int]]:
    """(run_id, events) of every run with market events in [start_ms, end_ms), the most recently
    started run first."""
    with connect(dsn) as conn:
        return [(r, int(n)) for r, n in conn.execute(
            "SELECT e.run_id, sum(e.n) FROM market_events e LEFT JOIN runs r USING (run_id)"
            " WHERE e.ts_ms >= %s AND e.ts_ms < %s AND e.ts_last_ms >= %s GROUP BY e.run_id, r.started_ms"
            " ORDER BY r.started_ms DESC NULLS LAST, e.run_id DESC", (start_ms - SPAN_MS, end_ms, start_ms)).fetchall()]


class DbReplaySource(FixedPartitionedSource):
    """The market events run `run_id` stored in [start_ms, end_ms), one partition per surface.
    speed: "max", or a positive factor of the events' real time (1 = as they came).
    Raises EmptyWindow, naming the runs that do have events there, when the window holds none."""

    # a resumed partition sends every event after the last row its snapshot read again
    # (connectors/postgres/market_sink.py needs to know)
    resends_after_resume = True

    def __init__(self, dsn: str, *, run_id: str, start_ms: int, end_ms: int, speed: Union[str, float] = "max",
                 batch_max: int = 1000, run_seconds: Optional[float] = None):
        if not (isinstance(start_ms, int) and isinstance(end_ms, int)) or end_ms <= start_ms:
            raise ValueError(f"window [{start_ms}, {end_ms}): give integer UTC epoch ms with start before end")
        if speed != "max" and (isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0):
            raise ValueError(f"speed={speed!r}: use \"max\" or a positive number (1 = real time)")
        if batch_max < 1:
            raise ValueError(f"batch_max={batch_max}: must be >= 1")
        self.dsn, self.run_id, self.start_ms, self.end_ms = dsn, run_id, start_ms, end_ms
        self.speed, self.batch_max, self.run_seconds = speed, batch_max, run_seconds
        with connect(dsn) as conn:
            rows = conn.execute(
                "SELECT venue, underlying, greatest(min(ts_ms), %s), sum(n) FROM market_events WHERE run_id = %s"
                " AND ts_ms >= %s AND ts_ms < %s AND ts_last_ms >= %s GROUP BY venue, underlying"
                " ORDER BY venue, underlying", (start_ms, run_id, start_ms - SPAN_MS, end_ms, start_ms)).fetchall()
        if not rows:
            others = stored_runs(dsn, start_ms, end_ms)
            raise EmptyWindow(
                f"run {run_id!r} stored no market events between {_iso(start_ms)} and {_iso(end_ms)}"
                + (f"; runs with events there: {', '.join(f'{r} ({n:,})' for r, n in others)}: pass one with --run"
                   if others else "; no run did: widen the window (--start/--end), or store events with"
                                  " graph.toml [sinks.postgres] market_events = true"))
        self.parts = {f"{v}|{u}": (v, u) for v, u, _, _ in rows}
        self.events = int(sum(n for *_, n in rows))  # about: rows straddling an edge count whole
        self._clock_ms = min(first for _, _, first, _ in rows)

    def clock_ms(self) -> int:
        """The replay's flow clock: the newest stored receive time emitted so far (before the first
        batch, the window's first event's)."""
        return self._clock_ms

    def list_parts(self) -> list[str]:
        return list(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[tuple]) -> "DbReplayPartition":
        if for_part not in self.parts:
            raise ValueError(f"database replay partition {for_part!r} is not a surface of this window"
                             f" ({', '.join(self.parts)})")
        return DbReplayPartition(self, *self.parts[for_part], resume_state)


class DbReplayPartition(StatefulSourcePartition):
    def __init__(self, src: DbReplaySource, venue: str, underlying: str, position: Optional[tuple]):
        self.src, self.venue, self.underlying = src, venue, underlying
        # resume state: (seg, ord) of the last row read (its start) and of the last event read
        self.cursor, self.position = (tuple(position[0]), tuple(position[1])) if position is not None else (None, None)
        self.conn = connect(src.dsn, autocommit=True)
        self._rows: list = []  # (seg, ord, ts_ms, body) read, not yet emitted
        self._eof = False
        self._awake: Optional[datetime] = None
        self.started_wall_ms: Optional[int] = None
        self.first_ts_ms: Optional[int] = None
        self._deadline_s = time.monotonic() + src.run_seconds if src.run_seconds is not None else None
        self.books_rebuilt = self.books_withheld = self.books_missing = 0  # the preamble's books (_read_books)
        self._preamble: list = [] if self.cursor is not None else self._read_preamble()

    def _read_preamble(self) -> list:
        """The newest Instrument of each instrument before the window, then the newest FuturePrice
        and IndexPrice of each within PRICE_LOOKBACK_MS before it (the rows' `kinds` bits)."""
        src = self.src
        rows = self.conn.execute(
            "SELECT seg, ord, body FROM market_events WHERE run_id = %s AND venue = %s AND underlying = %s"
            " AND ts_ms < %s AND (kinds & 1 <> 0 OR (kinds & 6 <> 0 AND ts_last_ms >= %s)) ORDER BY seg, ord",
            (src.run_id, self.venue, self.underlying, src.start_ms, src.start_ms - PRICE_LOOKBACK_MS)).fetchall()
        newest: dict[tuple, Any] = {}
        for _, _, body in rows:  # in order: a later event of the same instrument replaces an earlier one
            for ev in self._events(body):
                kind = type(ev)
                if ev.ts_recv_ms < src.start_ms and kind in _PREAMBLE:
                    newest[(kind.__name__, getattr(ev, "instrument", ""))] = ev
        preamble = sorted(newest.values(), key=lambda e: type(e) is not Instrument)
        options = {e.instrument for e in preamble
                   if type(e) is Instrument and e.kind == "option" and e.expiry_ms > src.start_ms}
        return preamble + self._read_books(options)

    def _read_books(self, options: set[str]) -> list:
        """Every book of this surface as it stood at start_ms, as one snapshot BookUpdate each.

        Reads only the sink partition life (seg) of the newest row before start_ms: a new seg is a
        new flow, whose books started empty and filled from fresh snapshots. Two bounded reads:
        (1) backwards over the rows holding a snapshot (SNAPSHOT_BYTES) until every live option
        of the preamble (`options`) has its newest one (or the seg's start); (2) forwards from the
        oldest of those positions to start_ms over the rows holding book updates or feed errors,
        folding each book with OrderBook from its newest snapshot on."""
        src, conn = self.src, self.conn
        key = (src.run_id, self.venue, self.underlying)
        row = conn.execute(
            "SELECT seg FROM market_events WHERE run_id = %s AND venue = %s AND underlying = %s AND ts_ms < %s"
            " AND kinds & 8 <> 0 ORDER BY seg DESC, ord DESC LIMIT 1", (*key, src.start_ms)).fetchone()
        if row is None:
            return []
        seg = row[0]
        snap_at: dict[str, int] = {}  # instrument -> position (ord) of its newest snapshot before start_ms
        snap_row = 2**63 - 1
        upper = 2**63 - 1
        while True:
            rows = conn.execute(
                "SELECT ord, body FROM market_events WHERE run_id = %s AND venue = %s AND underlying = %s"
                " AND seg = %s AND ord < %s AND ts_ms < %s AND kinds & 8 <> 0 AND position(%s::bytea in body) > 0"
                " ORDER BY ord DESC LIMIT %s", (*key, seg, upper, src.start_ms, SNAPSHOT_BYTES, PAGE_ROWS)).fetchall()
            for ord_, body in rows:
                found = False
                for i, ev in enumerate(self._events(body)):
                    if (type(ev) is BookUpdate and ev.kind == "snapshot" and ev.ts_recv_ms < src.start_ms
                            and snap_at.get(ev.instrument, -1) < ord_ + i):
                        snap_at[ev.instrument] = ord_ + i
                        found = True
                if found:
                    snap_row = min(snap_row, ord_)
            exhausted = len(rows) < PAGE_ROWS  # read back to the seg's start
            if exhausted or options <= snap_at.keys():
                break
            upper = rows[-1][0]
        if not snap_at:
            self._report_missing(options, seg)
            return []
        n_events = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM market_events WHERE run_id = %s AND venue = %s AND underlying = %s"
            " AND seg = %s AND ord >= %s AND ts_ms < %s AND kinds & 40 <> 0",
            (*key, seg, snap_row, src.start_ms)).fetchone()[0]
        if n_events > FOLD_PROGRESS_EVENTS:
            first = min(snap_at.values())
            print(f"replay --from-db: rebuilding {len(snap_at):,} books of {self.venue}|{self.underlying} at"
                  f" {_iso(src.start_ms)} from their newest snapshots (the oldest at position {first:,} of seg"
                  f" {seg}; {n_events / 1e6:.1f} M events) …", file=sys.stderr, flush=True)
        books: dict[str, OrderBook] = {}
        last: dict[str, BookUpdate] = {}
        no_snapshot: set[str] = set()
        done = snap_row - 1  # the last position folded: overlapping rows give each position once
        lower = snap_row - 1
        while True:
            rows = conn.execute(
                "SELECT ord, body FROM market_events WHERE run_id = %s AND venue = %s AND underlying = %s"
                " AND seg = %s AND ord > %s AND ts_ms < %s AND kinds & 40 <> 0 ORDER BY ord LIMIT %s",
                (*key, seg, lower, src.start_ms, PAGE_ROWS)).fetchall()
            for ord_, body in rows:
                for i, ev in enumerate(self._events(body)):
                    pos = ord_ + i
                    if pos <= done:
                        continue
                    done = pos
                    kind = type(ev)
                    if kind is BookUpdate:
                        name = ev.instrument
                        at = snap_at.get(name)
                        if at is None:
                            if ev.ts_recv_ms < src.start_ms:
                                no_snapshot.add(name)
                        elif pos >= at and ev.ts_recv_ms < src.start_ms:
                            book = books.get(name)
                            if book is None:
                                book = books[name] = OrderBook()
                            book.apply(ev)
                            last[name] = ev
                    elif (kind is FeedError and ev.reason == "seq_gap" and ev.ts_recv_ms < src.start_ms
                          and ev.instrument in books and pos > snap_at[ev.instrument]):
                        books[ev.instrument].stale = True  # the venue client withheld it (operators/state/chain.py)
            if len(rows) < PAGE_ROWS:
                break
            lower = rows[-1][0]
        out = []
        withheld = []
        for name in sorted(books):
            book, ev = books[name], last[name]
            if book.stale:
                withheld.append(name)
                continue
            bids, asks = book.sides()
            out.append(BookUpdate(ev.venue, name, ev.ts_exchange_ms, ev.ts_recv_ms, book.last_seq, None, "snapshot",
                                  tuple(bids), tuple(asks)))
        if withheld:
            log.info("replay --from-db: %d books of %s|%s were withheld at %s in run %s (a gap or a crossed book:"
                     " %s); they fill from their next snapshot, as they did then", len(withheld), self.venue,
                     self.underlying, _iso(src.start_ms), src.run_id, _names(withheld))
        # a book outside `options` (not a live option) may have a snapshot before the part read back
        self._report_missing((options - snap_at.keys()) | (no_snapshot if exhausted else set()), seg)
        self.books_rebuilt, self.books_withheld = len(out), len(withheld)
        return out

    def _report_missing(self, names: set[str], seg: int) -> None:
        """One log line naming the books with no snapshot stored before the window (and the fix)."""
        self.books_missing = len(names)
        if names:
            log.warning("replay --from-db: %d books of %s|%s have no snapshot stored in run %s before %s (sink"
                        " seg %d): they start empty and fill from their next snapshot in the window, if any (%s);"
                        " to replay them from the window's start, start the window after the run's first snapshots"
                        " of them (after its subscribe)", len(names), self.venue, self.underlying, self.src.run_id,
                        _iso(self.src.start_ms), seg, _names(sorted(names)))

    def _fill(self) -> None:
        if self._rows or self._eof:
            return
        src = self.src
        seg, ord_ = self.cursor if self.cursor is not None else (-2**63, -2**63)
        self._rows = self.conn.execute(
            "SELECT seg, ord, ts_ms, body FROM market_events WHERE run_id = %s AND venue = %s AND underlying = %s"
            " AND ts_ms >= %s AND ts_ms < %s AND ts_last_ms >= %s AND (seg, ord) > (%s, %s) ORDER BY seg, ord LIMIT %s",
            (src.run_id, self.venue, self.underlying, src.start_ms - SPAN_MS, src.end_ms, src.start_ms, seg, ord_,
             PAGE_ROWS)).fetchall()
        self._rows.reverse()  # pop() from the end
        if not self._rows:
            self._eof = True

    def _events(self, body: bytes, ts_ms: int = 0) -> list:
        try:
            return decode_events(body)
        except ContractError as exc:
            return [FeedError(self.venue, "bad_stored_event", f"market_events row of run {self.src.run_id}: {exc}",
                              ts_ms)]

    def next_batch(self) -> list:
        src = self.src
        if self._deadline_s is not None and time.monotonic() >= self._deadline_s:
            raise StopIteration
        if self._preamble:
            out, self._preamble = self._preamble, []
            return out
        self._fill()
        if self._eof:
            raise StopIteration
        now = _wall_ms()
        if self.started_wall_ms is None:
            self.started_wall_ms, self.first_ts_ms = now, self._rows[-1][2]
        due_ts = None if src.speed == "max" else self.first_ts_ms + (now - self.started_wall_ms) * float(src.speed)
        out: list = []
        rows = self._rows
        while len(out) < src.batch_max:
            if not rows:
                self._fill()
                if self._eof:
                    break
            seg, ord_, ts, body = rows[-1]
            if due_ts is not None and ts > due_ts:
                break
            rows.pop()
            self.cursor = (seg, ord_)
            events = self._events(body, ts)
            # a resend may have grouped the same positions otherwise: read each position once
            done = self.position[1] - ord_ + 1 if self.position is not None and self.position[0] == seg else 0
            if done >= len(events):
                continue
            self.position = (seg, ord_ + len(events) - 1)  # the last position read
            for ev in events[max(done, 0):]:
                t = ev.ts_recv_ms
                if src.start_ms <= t < src.end_ms or type(ev) is FeedError:
                    out.append(ev)
                    if t > src._clock_ms:
                        src._clock_ms = t
        self._awake = None
        if due_ts is not None and rows and rows[-1][2] > due_ts:
            wake_ms = self.started_wall_ms + (rows[-1][2] - self.first_ts_ms) / float(src.speed)
            self._awake = datetime.fromtimestamp(wake_ms / 1000.0, tz=timezone.utc)
        return out

    def next_awake(self) -> Optional[datetime]:
        return self._awake

    def snapshot(self) -> Optional[tuple]:
        return None if self.cursor is None else (self.cursor, self.position)

    def close(self) -> None:
        self.conn.close()


def _names(names: list[str], most: int = 10) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most:,} more" if len(names) > most else "")


def _iso(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms // 1000, tz=timezone.utc):%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def db_replay_detail(run_id: str, start_ms: int, end_ms: int) -> str:
    """The runs.detail of a database replay: the window and the run whose events it re-ran."""
    return f"market events of run {run_id} from {_iso(start_ms)} to {_iso(end_ms)}"
