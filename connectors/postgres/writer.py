"""The background writer: batched, idempotent, non-blocking writes with a memory buffer and
on-disk spill segments for database outages.

submit() only appends to a queue; one thread per writer turns batches into rows
(connectors/postgres/rows.py) and writes them. Every tunable that graph.toml holds
(flush_ms, batch_rows, the spill folder under runtime.data_dir) is a required keyword here:
the config layer (flows/config.py) is the one place with defaults. Never imports flows;
no volatility maths.

One piece of ~600 lines: the buffer, the spill segments, the durable hand-off and the retry loop share the
writer thread's ordering invariant (events are written in submit order across memory and
disk), which is easier to check in one class than across modules.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import itertools
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Optional

import orjson
import psycopg

from connectors.postgres.embedded import connect
from connectors.postgres.rows import SUPPORTED_EVENTS, BatchPlan, prepare_stage, write_plan
from connectors.postgres.runs import RunInfo, register_run
from connectors.postgres.schema import migrate
from operators.events import ContractError, from_json, to_json

log = logging.getLogger("volgraph.postgres")


class PostgresWriter:
    """Batched, idempotent, non-blocking writes on a background thread.

    submit(event) only appends to a queue. The thread writes every `flush_ms`, or sooner
    when `batch_rows` events wait. If the database is unreachable, events stay in memory
    up to `max_buffer_rows`, beyond that they are appended to JSON-lines segments in
    `spill_dir` (oldest first is preserved), and everything is written when the database
    returns, with retries backing off up to `retry_max_ms`. Segments left by a previous
    run with the same `name` are written first. Events the database rejects as data
    (not connectivity) go to `<name>.rejected.jsonl`, counted by reason: nothing is lost.

    Every row is written under `run` (its run_id in each table's key; the run registered in
    `runs` on each connect, idempotently). Spill files live in `spill_dir/<run_id>/` beside the
    run's description (run.json), so a later writer of another run writes them under theirs
    (orphan_runs).

    What it stores is four hooks a subclass may change (connectors/postgres/market_events.py
    does): `supported` (the event types; others are counted as ignored), new_plan(), prepare()
    (per connection) and write() (one plan in one transaction), plus encode()/decode() of a
    spill line.
    """

    supported: tuple = SUPPORTED_EVENTS

    def new_plan(self) -> Any:
        return BatchPlan(self.run.run_id)

    def prepare(self, conn: psycopg.Connection) -> None:
        prepare_stage(conn)

    def write(self, conn: psycopg.Connection, plan: Any) -> dict[str, int]:
        return write_plan(conn, plan)

    @staticmethod
    def encode(event: Any) -> bytes:
        return to_json(event)

    @staticmethod
    def decode(line: bytes) -> Any:
        return from_json(line)

    def __init__(
        self,
        dsn: str,
        *,
        run: RunInfo,
        name: str = "pg",
        flush_ms: float,
        batch_rows: int,
        spill_dir: str | os.PathLike,
        max_buffer_rows: int = 50_000,
        spill_segment_rows: Optional[int] = None,
        retry_min_ms: float = 50.0,
        retry_max_ms: float = 5000.0,
        connect_timeout_s: float = 3.0,
        auto_migrate: bool = True,
        exit_timeout_s: float = 2.0,
    ) -> None:
        if flush_ms <= 0 or batch_rows < 1 or max_buffer_rows < 1:
            raise ValueError(
                f"PostgresWriter needs flush_ms > 0, batch_rows >= 1, max_buffer_rows >= 1;"
                f" got {flush_ms}, {batch_rows}, {max_buffer_rows}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"PostgresWriter name {name!r} is used in file names; use letters, digits, '_', '-', '.'")
        self.dsn = dsn
        self.name = name
        self.flush_s = flush_ms / 1000.0
        self.batch_rows = batch_rows
        self.max_buffer_rows = max_buffer_rows
        self.spill_segment_rows = spill_segment_rows or max(1, max_buffer_rows // 2)
        self.run = run
        self.spill_root = Path(spill_dir)
        self.spill_dir = self.spill_root / run.run_id
        self.retry_min_s = retry_min_ms / 1000.0
        self.retry_max_s = retry_max_ms / 1000.0
        self.connect_timeout_s = connect_timeout_s
        self.auto_migrate = auto_migrate

        self._inbox: collections.deque = collections.deque()  # appended by submit() only
        self._submitted = itertools.count(1)  # next() is atomic under the GIL
        self._n_submitted = 0
        self._mem: collections.deque = collections.deque()  # writer thread only
        self._mem_from_segment = 0  # leading events of _mem that came from _loaded_segment
        self._loaded_segment: Optional[Path] = None
        self._segments: collections.deque[Path] = collections.deque()
        self._segment_rows: dict[Path, int] = {}
        self._spill_fh = None
        self._spill_path: Optional[Path] = None
        self._conn: Optional[psycopg.Connection] = None

        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._stop_deadline = float("inf")
        # the durable hand-off (durable()): the submit count asked for, and the count known to
        # be on disk (fsync'd spill segments) when the database could not take it
        self._barrier = 0
        self._on_disk = 0
        self.stats_counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.rows_written: collections.Counter = collections.Counter()
        self.ignored_types: collections.Counter = collections.Counter()  # events this writer does not store
        self.last_error = ""
        self.db_up = False
        self.db_since_s: Optional[float] = None  # when db_up last changed (None: not tried yet)

        # _done counts events written, rejected or ignored, in submit order. Spilled events
        # of a previous run are written first; counting them as already submitted keeps
        # pending() and flush() honest.
        self._done = -self._recover_segments()
        self._thread = threading.Thread(target=self._run, name=f"pgwriter-{name}", daemon=True)
        self._thread.start()
        # bytewax only calls a sink's close() when a flow ends normally: at interpreter exit,
        # write what the database takes within exit_timeout_s and spill the rest to disk.
        self.exit_timeout_s = exit_timeout_s
        atexit.register(self._close_at_exit)

    # -- producer side (any thread) --------------------------------------------

    def submit(self, event: Any) -> None:
        """Queue one event for writing; never blocks on the database."""
        if self._closed:
            raise RuntimeError(f"PostgresWriter {self.name} is closed; create a new one to write {type(event).__name__}")
        self._inbox.append(event)
        self._n_submitted = next(self._submitted)
        if len(self._inbox) >= self.batch_rows:
            self._wake.set()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Write everything submitted so far; True when done, False on timeout."""
        target = self._n_submitted
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout) and self._done >= target

    def durable(self, timeout: Optional[float] = None) -> bool:
        """Block until every event submitted so far is in PostgreSQL or in an fsync'd spill
        segment: the hand-off the sink makes before bytewax may close an epoch (with
        idempotent writes, exactly-once rows after any kill). With the database away the
        writer thread spills its memory at once instead of waiting for it to fill. True when
        done, False on timeout."""
        target = self._n_submitted
        with self._cond:
            self._barrier = max(self._barrier, target)
        self._wake.set()
        with self._cond:
            self._cond.wait_for(lambda: self._is_durable(target) or not self._thread.is_alive(), timeout)
            return self._is_durable(target)

    def _is_durable(self, target: int) -> bool:
        return self._done >= target or self._on_disk >= target

    def close(self, timeout: Optional[float] = 10.0) -> bool:
        """Flush (up to `timeout`), then stop; whatever the database has not taken by then
        is spilled to disk for the next writer with this name. True if all was written."""
        if self._closed:
            return self.pending() == 0
        started = time.monotonic()
        ok = self.flush(timeout)
        self._closed = True
        atexit.unregister(self._close_at_exit)
        # The thread gets what is left of `timeout` to write the rest, then spills it.
        self._stop_deadline = started + (timeout if timeout is not None else 3600.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=max(0.0, self._stop_deadline - time.monotonic()) + self.connect_timeout_s + 5.0)
        return ok and self.pending() == 0

    def wait_until(self, predicate, timeout: Optional[float] = None) -> bool:
        """Block until predicate(self.stats()) holds (re-checked on each writer step) or the
        timeout passes; for tests and shutdown logic, instead of sleeping."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.stats()), timeout)

    def _close_at_exit(self) -> None:
        if not self._closed:
            self.close(self.exit_timeout_s)

    def pending(self) -> int:
        return self._n_submitted - self._done

    def stats(self) -> dict:
        """Counters for tests and metrics: rows by table, batches, retries, buffered, spilled, errors."""
        return {
            "submitted": self._n_submitted,
            "written_events": self.stats_counts["written_events"],
            "rows_written": dict(self.rows_written),
            "batches": self.stats_counts["batches"],
            "retries": self.stats_counts["retries"],
            "buffered": len(self._mem) + len(self._inbox),
            "spilled": self.stats_counts["spilled"],
            "spill_pending": sum(list(self._segment_rows.values())),  # list(): atomic copy under the GIL
            "rejected": self.stats_counts["rejected"],
            "ignored": self.stats_counts["ignored"],
            "ignored_types": dict(self.ignored_types),
            "errors": dict(self.errors),
            "pending": self.pending(),
            "db_up": self.db_up,
            "db_since_s": self.db_since_s,
            "last_error": self.last_error,
        }

    # -- writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        delay = self.flush_s
        while True:
            if delay:
                self._wake.wait(timeout=delay)
            self._wake.clear()
            delay = self.flush_s
            self._drain_inbox()
            try:
                while self._has_pending():
                    if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                        raise _DatabaseDown("shutdown", TimeoutError("close() timeout reached"))
                    self._write_some()
                    self._drain_inbox()
                backoff = 0.0
            except _DatabaseDown as exc:
                self._note_down(exc)
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    self._spill_memory()  # persist what is left for the next writer of this name
                    break
                backoff = min(self.retry_max_s, max(self.retry_min_s, backoff * 2))
                self._backoff_wait(backoff)
                delay = 0.0
                continue
            except Exception as exc:  # a bug or a full disk must not kill the writer silently
                log.exception("writer %s: unexpected error; retrying", self.name)
                self.errors[f"internal.{type(exc).__name__}"] += 1
                self.last_error = repr(exc)
                if self._stop.is_set() and time.monotonic() > self._stop_deadline:
                    break
                backoff = min(self.retry_max_s, max(self.retry_min_s, backoff * 2))
                self._backoff_wait(backoff)
                delay = 0.0
                continue
            finally:
                with self._cond:
                    self._cond.notify_all()
            if self._stop.is_set() and not self._inbox:
                break
        self._close_spill()
        self._drop_conn()
        with self._cond:
            self._cond.notify_all()

    def _backoff_wait(self, backoff_s: float) -> None:
        """Wait before retrying, still moving the inbox to memory/spill every flush period
        so memory stays bounded while the database is away. Waits on the stop event, not
        on _wake: submits set _wake constantly and would turn the retry into a busy loop."""
        deadline = time.monotonic() + backoff_s
        while True:
            self._honour_barrier()
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.wait(min(left, self.flush_s)):
                break
            self._drain_inbox()
        self._drain_inbox()
        self._honour_barrier()

    def _honour_barrier(self) -> None:
        """With the database away: if durable() waits, put every event submitted so far on
        disk (memory before the segments, the inbox after them, all fsync'd)."""
        with self._cond:
            target = self._barrier
        if self._is_durable(target):
            return
        n = self._n_submitted  # read first: all of these are in memory, the inbox or segments
        self._spill_memory()
        with self._cond:
            self._on_disk = max(self._on_disk, n)
            self._cond.notify_all()

    def _has_pending(self) -> bool:
        return bool(self._mem) or bool(self._segments)

    def _drain_inbox(self) -> None:
        """Inbox → memory, or → spill once memory is full or older events are spilled
        (so the write order stays the submit order)."""
        inbox = self._inbox
        while inbox:
            if self._segments or len(self._mem) >= self.max_buffer_rows:
                self._spill_from_inbox()
                return
            self._mem.append(inbox.popleft())
        with self._cond:
            self._cond.notify_all()

    def _spill_from_inbox(self) -> None:
        inbox = self._inbox
        while inbox:
            self._spill_one(inbox.popleft())
        with self._cond:
            self._cond.notify_all()

    def _spill_one(self, event: Any) -> None:
        if self._spill_fh is None or self._segment_rows.get(self._spill_path, 0) >= self.spill_segment_rows:
            self._open_segment()
        try:
            line = self.encode(event) + b"\n"
        except TypeError as exc:
            self._reject([event], f"unserialisable: {exc}", "unserialisable")
            self._mark_done(1)
            return
        self._spill_fh.write(line)
        self._segment_rows[self._spill_path] += 1
        self.stats_counts["spilled"] += 1

    def _spill_memory(self) -> None:
        """Memory → an fsync'd segment numbered before every other (memory is older than the
        segments), then the inbox → the newest segment (it is newer than them), all fsync'd:
        on shutdown with the database down, and for durable() while it is away. A segment
        loaded into memory is replaced by the new file only once that file is on disk."""
        events = list(self._mem)
        self._mem.clear()
        loaded, self._loaded_segment = self._loaded_segment, None
        self._mem_from_segment = 0
        if events:
            self._close_spill()
            seqs = [self._segment_seq(p) for p in self._segments]
            if loaded is not None:
                seqs.append(self._segment_seq(loaded))
            seq = min(seqs) - 1 if seqs else self._next_seq()
            path = self.spill_dir / f"{self.name}.spill.{seq:012d}.jsonl"
            self._make_spill_dir()  # the outage may end the run before any spill
            with open(path, "wb") as fh:
                for ev in events:
                    fh.write(self.encode(ev) + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._fsync_dir()
            self._segments.appendleft(path)
            self._segment_rows[path] = len(events)
            self.stats_counts["spilled"] += len(events)
        if loaded is not None:  # its events are all in the new file (they were in memory)
            self._segment_rows.pop(loaded, None)
            loaded.unlink(missing_ok=True)
        self._spill_from_inbox()
        self._close_spill()

    def _make_spill_dir(self) -> None:
        """spill_dir/<run_id>/ with the run's description, which a writer of a later run
        reads to write these files under this run (orphan_runs)."""
        if not (self.spill_dir / RUN_FILE).exists():
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.spill_dir / (RUN_FILE + ".tmp")
            tmp.write_bytes(orjson.dumps(dataclasses.asdict(self.run)))
            os.replace(tmp, self.spill_dir / RUN_FILE)

    def _fsync_dir(self) -> None:
        """A new file's name is durable once its folder is fsync'd."""
        fd = os.open(self.spill_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open_segment(self) -> None:
        self._close_spill()
        self._make_spill_dir()
        path = self.spill_dir / f"{self.name}.spill.{self._next_seq():012d}.jsonl"
        self._spill_fh = open(path, "ab")
        self._fsync_dir()
        self._spill_path = path
        self._segments.append(path)
        self._segment_rows[path] = 0

    def _close_spill(self) -> None:
        if self._spill_fh is not None:
            self._spill_fh.flush()
            os.fsync(self._spill_fh.fileno())
            self._spill_fh.close()
            self._spill_fh = None
            self._spill_path = None

    @staticmethod
    def _segment_seq(path: Path) -> int:
        return int(path.name.rsplit(".", 2)[-2])

    def _next_seq(self) -> int:
        seqs = [self._segment_seq(p) for p in self._segments]
        if self._loaded_segment is not None:
            seqs.append(self._segment_seq(self._loaded_segment))
        return max(seqs, default=10**9) + 1  # room below for shutdown spills

    def _recover_segments(self) -> int:
        if not self.spill_dir.is_dir():
            return 0
        for path in sorted(self.spill_dir.glob(f"{self.name}.spill.*.jsonl"), key=self._segment_seq):
            with open(path, "rb") as fh:
                n = sum(1 for _ in fh)
            self._segments.append(path)
            self._segment_rows[path] = n
        if self._segments:
            log.info("writer %s: %d spilled events from a previous run will be written first", self.name, sum(self._segment_rows.values()))
        return sum(self._segment_rows.values())

    def _load_segment(self) -> None:
        """Oldest segment → memory (only when memory is empty, to keep the order)."""
        path = self._segments.popleft()
        if path == self._spill_path:
            self._close_spill()
        events = []
        skipped = 0
        with open(path, "rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    skipped += 1
                    continue
                try:
                    events.append(self.decode(line))
                except ContractError as exc:  # e.g. a line cut short by a crash
                    self._reject_line(line, f"{path.name}:{n}: {exc}", "spill_corrupt")
                    skipped += 1
        self._segment_rows.pop(path, None)
        self._mark_done(skipped)
        if not events:
            path.unlink(missing_ok=True)
            return
        self._mem.extend(events)
        self._loaded_segment = path
        self._mem_from_segment = len(events)

    def _write_some(self) -> None:
        if not self._mem:
            self._load_segment()
            return
        n = min(self.batch_rows, len(self._mem))
        batch = [self._mem[i] for i in range(n)]
        self._write_batch(batch)
        for _ in range(n):
            self._mem.popleft()
        if self._loaded_segment is not None:
            self._mem_from_segment -= n
            if self._mem_from_segment <= 0:
                self._loaded_segment.unlink(missing_ok=True)
                self._loaded_segment = None
                self._mem_from_segment = 0
        self._mark_done(n)

    def _mark_done(self, n: int) -> None:
        with self._cond:
            self._done += n
            self._cond.notify_all()

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = connect(self.dsn, connect_timeout_s=self.connect_timeout_s)
            if self.auto_migrate:
                migrate(conn)
            register_run(conn, self.run)
            self.prepare(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _DatabaseDown("connect", exc) from exc
        self._conn = conn
        if not self.db_up:
            log.info("writer %s: database up", self.name)
            self.db_since_s = time.time()
        self.db_up = True
        return conn

    def _write_batch(self, batch: list) -> None:
        plan = self.new_plan()
        good = []
        for ev in batch:
            if not isinstance(ev, self.supported):
                self.stats_counts["ignored"] += 1
                self.ignored_types[type(ev).__name__] += 1
                continue
            try:
                plan.add(ev)
                good.append(ev)
            except Exception as exc:  # a malformed event must not stop the writer
                self._reject([ev], f"bad_event: {exc!r}", "bad_event")
        if not good:
            return
        conn = self._connection()
        try:
            counts = self.write(conn, plan)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop_conn()
            raise _DatabaseDown("write", exc) from exc
        except psycopg.Error as exc:
            # The database refused the data itself: isolate the bad events so the rest go in.
            if len(good) == 1:
                self._reject(good, str(exc).strip(), type(exc).__name__)
                return
            mid = len(good) // 2
            self._write_batch(good[:mid])
            self._write_batch(good[mid:])
            return
        self.stats_counts["batches"] += 1
        self.stats_counts["written_events"] += len(good)
        self.rows_written.update(counts)

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # already broken: closing is best effort
                pass
        self._conn = None

    def _note_down(self, exc: "_DatabaseDown") -> None:
        # state first, counters last: whoever sees the retry counted also sees the database down
        was_up, self.db_up = self.db_up, False
        if was_up or self.db_since_s is None:
            self.db_since_s = time.time()
        self.last_error = str(exc.__cause__).strip().splitlines()[0] if exc.__cause__ else exc.stage
        self.errors[f"db_down.{exc.stage}"] += 1
        self.stats_counts["retries"] += 1
        if was_up:
            log.warning("writer %s: database unreachable (%s); buffering", self.name, self.last_error)

    def _reject(self, events: list, reason: str, label: str) -> None:
        self._make_spill_dir()
        with open(self.spill_dir / f"{self.name}.rejected.jsonl", "ab") as fh:
            for ev in events:
                try:
                    body = self.encode(ev).decode()
                except TypeError:
                    body = repr(ev)
                fh.write(orjson.dumps({"reason": reason, "event": body}) + b"\n")
        self.stats_counts["rejected"] += len(events)
        self.errors[f"rejected.{label}"] += len(events)
        self.last_error = reason

    def _reject_line(self, line: bytes, reason: str, label: str) -> None:
        self._make_spill_dir()
        with open(self.spill_dir / f"{self.name}.rejected.jsonl", "ab") as fh:
            fh.write(orjson.dumps({"reason": reason, "event": line.decode(errors="replace").strip()}) + b"\n")
        self.errors[f"rejected.{label}"] += 1


RUN_FILE = "run.json"


def orphan_runs(spill_root: str | os.PathLike, name: str, run_id: str) -> list[RunInfo]:
    """Runs other than run_id that left spill segments of writer `name` under spill_root
    (a run stopped during an outage, then a fresh one started): a writer per such run
    writes them under their own run."""
    out = []
    root = Path(spill_root)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != run_id):
        if any(d.glob(f"{name}.spill.*.jsonl")) and (d / RUN_FILE).is_file():
            try:
                out.append(RunInfo(**orjson.loads((d / RUN_FILE).read_bytes())))
            except (ValueError, TypeError, KeyError) as exc:
                log.error("spill folder %s: unreadable %s (%s); its files are left for a person to look at",
                          d, RUN_FILE, exc)
    return out


class _DatabaseDown(Exception):
    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage


