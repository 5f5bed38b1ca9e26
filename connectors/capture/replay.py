"""Replay of recorded raw websocket frames: a bytewax source that turns a recording back into
events through the venue's real parser (docs/architecture.md §4, "replay file").

File format: gzip-compressed JSON lines, one line per frame received,
    {"ts_recv_ms": <int, UTC epoch ms when the frame was read>, "frame": "<raw text frame>"}
A recording starts with the public/get_instruments responses (they become Instrument events),
then the subscriptions' first frames (book snapshots), then the live frames.

Several files make several partitions (one per currency, say), which a bytewax cluster spreads
over its workers. Decompression runs on a reader thread per partition (PrefetchReader).

Translation only: bytes in, events out. It never computes anything about volatility and
never sleeps: pacing (`speed`) is done with bytewax's `next_awake`.
"""

from __future__ import annotations

import gzip
import os
import queue
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import orjson
from orjson import loads
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.venues.deribit.parse import parse_columns
from connectors.venues.base import SOURCE_BATCH_MAX, SOURCE_GATHER_MS
from operators.events import EVENT_TYPES, BookBatch

_EVENTS = frozenset((*EVENT_TYPES.values(), BookBatch))

# Discovery responses are large (Deribit's BTC option listing is several MB); the live client
# allows 64 MiB for them, so a replay of its recording must too.
DEFAULT_MAX_FRAME_BYTES = 64 << 20


class ReplayFormatError(ValueError):
    """A recording line that is not {"ts_recv_ms": int, "frame": str}."""


def recording_line(ts_recv_ms: int, frame: Union[str, bytes]) -> bytes:
    """One recording line, newline included: {"ts_recv_ms": <int>, "frame": "<raw frame>"}."""
    if isinstance(frame, (bytes, bytearray)):
        frame = frame.decode()
    return orjson.dumps({"ts_recv_ms": int(ts_recv_ms), "frame": frame}) + b"\n"


def write_frames(path: Union[str, Path], frames: Iterable[tuple[int, Union[str, bytes]]],
                 compresslevel: int = 3) -> int:
    """Write (ts_recv_ms, frame) pairs as a gzip JSON-lines recording; returns the frame count.

    Written to a temporary name and renamed, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    n = 0
    with gzip.open(tmp, "wb", compresslevel=compresslevel) as fh:
        for ts_recv_ms, frame in frames:
            fh.write(recording_line(ts_recv_ms, frame))
            n += 1
    os.replace(tmp, path)
    return n


def _decode_line(line: bytes, path: Path, lineno: int) -> tuple[int, str]:
    try:
        row = orjson.loads(line)
        ts, frame = row["ts_recv_ms"], row["frame"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ReplayFormatError(f"{path}:{lineno}: not a recording line ({exc}); expected "
                                '{"ts_recv_ms": <int>, "frame": "<raw frame>"} per line') from None
    if type(ts) is not int or type(frame) is not str:
        raise ReplayFormatError(f"{path}:{lineno}: ts_recv_ms must be an integer and frame a string, "
                                f"got {ts!r:.40} and {type(frame).__name__}")
    return ts, frame


_CHUNK_BYTES = 1 << 22
_RAW_BLOCK_BYTES = 1 << 18  # compressed bytes per zlib call on the reader thread (~2 MB of text)


def read_frames(path: Union[str, Path], skip: int = 0) -> Iterator[tuple[int, str]]:
    """Yield (ts_recv_ms, frame) from a recording, after skipping the first `skip` frames
    (skipped lines are not decoded)."""
    for stamps, frames in read_blocks(path, skip):
        yield from zip(stamps, frames)


def read_blocks(path: Union[str, Path], skip: int = 0) -> Iterator[tuple[list[int], list[str]]]:
    """read_frames a block at a time: (ts_recv_ms list, frame list) per decompressed chunk."""
    path = Path(path)
    # Big decompressed chunks split on newlines: ~5x cheaper per line than GzipFile.readline.
    with gzip.open(path, "rb") as fh:
        yield from blocks_in_chunks(iter(lambda: fh.read(_CHUNK_BYTES), b""), path, skip)


def frames_in_chunks(chunks: Iterator[bytes], path: Path, skip: int) -> Iterator[tuple[int, str]]:
    """Recording lines from decompressed chunks cut anywhere; the first `skip` are not decoded."""
    for stamps, frames in blocks_in_chunks(chunks, path, skip):
        yield from zip(stamps, frames)


def blocks_in_chunks(chunks: Iterator[bytes], path: Path, skip: int) -> Iterator[tuple[list[int], list[str]]]:
    """frames_in_chunks a block at a time: (ts_recv_ms list, frame list) of each chunk's whole
    lines (a block may be empty). A block's lines are decoded in list comprehensions, and a
    partition hands on slices of blocks: no Python call or generator step per line. Draining
    600,000 seed-workload frames with no parse took 1.35–1.37 µs of CPU a frame against 1.45–1.49
    one line at a time (interleaved, 2026-12-07 22:25 UTC; decompression included). A line the
    comprehensions cannot take is decoded again one by one, which names it as before."""
    tail = b""
    lineno = 0
    for chunk in chunks:
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        first = lineno + 1
        lineno += len(lines)
        if lineno <= skip:
            continue
        if first <= skip:
            lines, first = lines[skip - first + 1:], skip + 1
        yield from _decode_block(lines, path, first)
    if tail.strip():
        lineno += 1
        if lineno > skip:
            yield from _decode_block([tail], path, lineno)


def _decode_block(lines: list, path: Path, first: int) -> Iterator[tuple[list[int], list[str]]]:
    """Lines numbered from `first` → one (ts_recv_ms list, frame list); blank lines give nothing.
    At a bad line: the lines before it, then its ReplayFormatError."""
    try:
        rows = [loads(line) for line in lines if line and not line.isspace()]
        stamps = [row["ts_recv_ms"] for row in rows]
        frames = [row["frame"] for row in rows]
        if all(type(ts) is int for ts in stamps) and all(type(frame) is str for frame in frames):
            yield stamps, frames
            return
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    # a line the comprehensions could not take: one by one, to name it
    stamps, frames = [], []
    for i, line in enumerate(lines):
        if line.strip():
            try:
                ts, frame = _decode_line(line, path, first + i)
            except ReplayFormatError:
                yield stamps, frames
                raise
            stamps.append(ts)
            frames.append(frame)
    yield stamps, frames


def first_ts_ms(path: Union[str, Path]) -> int:
    """The recorded receive time of a recording's first frame (0 for an empty one)."""
    frames = read_frames(path)
    try:
        first = next(frames, None)
    finally:
        frames.close()
    return first[0] if first is not None else 0


def count_frames(path: Union[str, Path]) -> int:
    with gzip.open(Path(path), "rb") as fh:
        return sum(1 for line in fh if line.strip())


class _End:
    """The reader thread's last item: the file is done."""


_END = _End()


class PrefetchReader:
    """(ts_recv_ms, frame) from a recording, like read_frames(path, skip), with the gzip
    decompression on a background thread that stays at most `depth` blocks (~2 MB of text
    each) ahead through a bounded queue. zlib releases the GIL, so on a second core reading
    overlaps the flow's work (it was 6–11 % of volgraph's time inline; draining the seed
    recording through the parser measured ~7 % less wall time this way). Line splitting and
    the JSON decode of each line stay on the caller's thread: they hold the GIL either way.

    Iterate it; close() stops the thread. An error on the thread (bad gzip, I/O) is raised to
    the caller at the point it happened in the stream."""

    def __init__(self, path: Union[str, Path], skip: int = 0, depth: int = 4):
        if depth < 1:
            raise ValueError(f"depth={depth}: the read-ahead queue needs at least 1 chunk")
        self.path = Path(path)
        self.skip = skip
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"replay-read:{self.path.name}", daemon=True)
        self._thread.start()
        self._blocks = blocks_in_chunks(self._chunks(), self.path, self.skip)
        self._gen = (pair for stamps, frames in self._blocks for pair in zip(stamps, frames))

    def __iter__(self) -> "PrefetchReader":
        return self

    def __next__(self) -> tuple[int, str]:
        return next(self._gen)

    def blocks(self) -> Iterator[tuple[list[int], list[str]]]:
        """The same frames a block at a time (read_blocks); iterate either this or the reader."""
        return self._blocks

    def _put(self, item) -> bool:
        # a bounded wait, re-checked, so close() always frees a reader blocked on a full queue
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        # Raw reads and one zlib call per block: the thread holds the GIL only between calls
        # (GzipFile.read's Python loop and a line split here held it long enough to slow the
        # consumer down more than the decompression saved).
        try:
            with open(self.path, "rb") as fh:
                d = zlib.decompressobj(wbits=31)  # gzip framing
                fed = False  # the current member has had input
                while not self._stop.is_set():
                    raw = fh.read(_RAW_BLOCK_BYTES)
                    if not raw:
                        if fed and not d.eof:
                            raise EOFError(f"{self.path}: the gzip stream ends early (a truncated recording?)")
                        break
                    while raw:
                        fed = True
                        text = d.decompress(raw)
                        if text and not self._put(text):
                            return
                        raw = b""
                        if d.eof:  # another gzip member may follow (concatenated files)
                            raw, d, fed = d.unused_data, zlib.decompressobj(wbits=31), False
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _chunks(self) -> Iterator[bytes]:
        get = self._q.get
        while True:
            item = get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._gen.close()
        self._blocks.close()
        while True:  # free the queue (and a put waiting on it) at once
            try:
                self._q.get_nowait()
            except queue.Empty:
                break


def _wall_ms() -> int:
    return int(time.time() * 1000)


class ReplaySource(FixedPartitionedSource):
    """One partition per recording file (`list_parts()` → the file names, in the given order).

    path: one recording, or several (e.g. one per currency, each with its own discovery
    preamble) — on a bytewax cluster each partition runs on one worker, like a live source's
    per-currency partitions. File names must differ (they are the partition keys).
    speed: "max" emits as fast as the flow accepts; a number paces the frames by their
    recorded ts_recv_ms gaps (1 = real time, 10 = ten times faster).
    parse: the venue's batch parser (connectors/venues/registry.py Venue.parse_frames), called
    once per batch as parse(frames, ts_recv_ms per frame, max_frame_bytes) → events in order.
    Anything that is not an event (either venue's session frames: heartbeats, acks, pongs) is dropped.
    stamp_recv: "recorded" keeps the recorded ts_recv_ms; "wall" stamps the wall clock at
    replay time (latency measured in processing terms).
    run_seconds / max_frames end this run early (an EOF to the flow), per partition; the
    resume state is the count of frames consumed, so a restarted flow continues after them.
    prefetch: decompress on a background thread (PrefetchReader) instead of inline.
    preload: decompress the whole file when the partition is built (before the run), so no
    decompression runs during it — for short recordings replayed to time a burst (a
    background thread's decompression took a core from the other process of a 2-process
    run mid-burst). Each line is still decoded as it is read. Overrides prefetch.
    start_wall_ms: paced runs: the wall time (epoch ms) the first frame is due, so partitions
    in several processes pace against one clock; default: when each partition starts.
    gather_ms: paced runs: after a part batch, read again no sooner than this (frames gather
    into batches as they do in a live partition's queue).
    """

    # a resumed partition sends every frame after its snapshot's offset again (what the market-event
    # sink needs to know: connectors/postgres/market_sink.py)
    resends_after_resume = True

    def __init__(self, path: Union[str, Path, Sequence[Union[str, Path]]], *, speed: Union[str, float] = "max",
                 parse: Callable[..., list] = parse_columns, batch_max: int = SOURCE_BATCH_MAX,
                 run_seconds: Optional[float] = None, max_frames: Optional[int] = None,
                 stamp_recv: str = "recorded", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 prefetch: bool = True, start_wall_ms: Optional[float] = None,
                 gather_ms: float = SOURCE_GATHER_MS, preload: bool = False):
        paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
        if not paths:
            raise ValueError("path=[]: give at least one recording file")
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"replay file {p} does not exist; record one with "
                                        "connectors.capture.replay.write_frames or `bench/workload.py`")
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"replay files {[str(p) for p in paths]}: file names are the partition keys and "
                             "must differ; rename or copy one of them")
        if speed != "max" and (isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0):
            raise ValueError(f"speed={speed!r}: use \"max\" or a positive number (1 = real time)")
        if batch_max < 1:
            raise ValueError(f"batch_max={batch_max}: must be >= 1")
        if stamp_recv not in ("recorded", "wall"):
            raise ValueError(f"stamp_recv={stamp_recv!r}: use \"recorded\" or \"wall\"")
        self.paths = paths
        self.path = paths[0]  # the single-file case, as before
        self.speed = speed
        self.parse = parse
        self.batch_max = batch_max
        self.run_seconds = run_seconds
        self.max_frames = max_frames
        self.stamp_recv = stamp_recv
        self.max_frame_bytes = max_frame_bytes
        self.prefetch = prefetch
        self.preload = preload
        self.start_wall_ms = start_wall_ms
        self.gather_ms = gather_ms
        # the recording's clock: the newest recorded ts_recv_ms handed to the flow (before the
        # first batch, the earliest first frame), for build_flow(now_ms=source.clock_ms)
        self._clock_ms = min((first_ts_ms(p) for p in paths), default=0)

    def clock_ms(self) -> int:
        """The replay's flow clock: the newest recorded receive time emitted so far (a recording
        of last month runs on last month's clock, so its expiries are not in the past)."""
        return self._clock_ms

    def list_parts(self) -> list[str]:
        return [p.name for p in self.paths]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> "ReplayPartition":
        for p in self.paths:
            if p.name == for_part:
                return ReplayPartition(self, int(resume_state or 0), p)
        raise ValueError(f"replay partition {for_part!r} is not this source's file "
                         f"({', '.join(repr(p.name) for p in self.paths)})")


class ReplayPartition(StatefulSourcePartition):
    def __init__(self, source: ReplaySource, offset: int, path: Optional[Path] = None):
        self.src = source
        self.path = path or source.path
        self.offset = offset  # frames consumed so far, this run and earlier ones
        self.started_offset = offset
        self._reader: Optional[PrefetchReader] = None
        if source.preload:
            self._blocks = blocks_in_chunks(iter([gzip.decompress(self.path.read_bytes())]), self.path, offset)
        elif source.prefetch:
            self._reader = PrefetchReader(self.path, skip=offset)
            self._blocks = self._reader.blocks()
        else:
            self._blocks = read_blocks(self.path, skip=offset)
        # the block being read: its stamps and frames, and the first not yet handed on
        self._stamps: list[int] = []
        self._raws: list[str] = []
        self._at = 0
        self._eof = False
        self.started_wall_ms: Optional[int] = None
        self.first_ts_ms: Optional[int] = None
        self._awake: Optional[datetime] = None
        # run_seconds counts from the start of pacing (a shared start may lie ahead)
        ahead_s = max(0.0, (source.start_wall_ms - _wall_ms()) / 1000.0) if source.start_wall_ms else 0.0
        self._deadline_s = (time.monotonic() + ahead_s + source.run_seconds) if source.run_seconds is not None else None

    def _fill(self) -> bool:
        """Frames are at hand (the block has some left, or the next one with any); False at the end."""
        while self._at >= len(self._stamps):
            if self._eof:
                return False
            block = next(self._blocks, None)
            if block is None:
                self._eof = True
                return False
            (self._stamps, self._raws), self._at = block, 0
        return True

    def next_batch(self) -> list:
        src = self.src
        if self._deadline_s is not None and time.monotonic() >= self._deadline_s:
            raise StopIteration
        if src.max_frames is not None and self.offset - self.started_offset >= src.max_frames:
            raise StopIteration
        if not self._fill():
            raise StopIteration
        now = _wall_ms()
        if self.started_wall_ms is None:
            self.started_wall_ms, self.first_ts_ms = src.start_wall_ms or now, self._stamps[self._at]
        limit = src.batch_max
        if src.max_frames is not None:
            limit = min(limit, src.max_frames - (self.offset - self.started_offset))
        due_ts = None
        if src.speed != "max":
            # frames whose recorded time, scaled, has come
            due_ts = self.first_ts_ms + (now - self.started_wall_ms) * float(src.speed)
        raws: list = []
        stamps: list = []
        clock = src._clock_ms
        n = 0
        # whole slices of the blocks, not a Python step per frame (blocks_in_chunks says what it saves)
        while n < limit and self._fill():
            at, block_stamps = self._at, self._stamps
            end = min(len(block_stamps), at + limit - n)
            if due_ts is not None:
                due = at
                while due < end and block_stamps[due] <= due_ts:
                    due += 1
                end = due
            if end == at:
                break  # the next frame is not due yet: it waits for a later batch
            taken = block_stamps[at:end]
            newest = max(taken)
            if newest > clock:
                clock = newest
            raws += self._raws[at:end]
            stamps += [now] * (end - at) if src.stamp_recv == "wall" else taken
            n += end - at
            self._at = end
        src._clock_ms = clock
        # session frames (each venue's Control: heartbeats, acks, pongs) are not events
        out = [ev for ev in src.parse(raws, stamps, src.max_frame_bytes) if type(ev) in _EVENTS] if n else []
        self.offset += n
        self._awake = None
        if due_ts is not None and self._fill():
            next_ts = self._stamps[self._at]
            if next_ts > due_ts:
                wake_ms = self.started_wall_ms + (next_ts - self.first_ts_ms) / float(src.speed)
                if n:  # a part batch: let the next frames gather, as a live partition does
                    wake_ms = max(wake_ms, now + src.gather_ms)
                self._awake = datetime.fromtimestamp(wake_ms / 1000.0, tz=timezone.utc)
        return out

    def next_awake(self) -> Optional[datetime]:
        return self._awake

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self._blocks.close()
        if self._reader is not None:
            self._reader.close()  # stops its thread
