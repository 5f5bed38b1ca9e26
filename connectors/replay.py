"""Replay of recorded raw websocket frames: a bytewax source that turns a recording back into
events through the venue's real parser (DESIGN.md §4, "replay file").

File format: gzip-compressed JSON lines, one line per frame received,
    {"ts_recv_ms": <int, UTC epoch ms when the frame was read>, "frame": "<raw text frame>"}
A recording starts with the public/get_instruments responses (they become Instrument events),
then the subscriptions' first frames (book snapshots), then the live frames.

Translation only: bytes in, events out. It never computes anything about volatility and
never sleeps: pacing (`speed`) is done with bytewax's `next_awake`.
"""

from __future__ import annotations

import gzip
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.deribit import Control, parse_frame

# Discovery responses are large (Deribit's BTC option listing is several MB); the live client
# allows 64 MiB for them, so a replay of its recording must too.
DEFAULT_MAX_FRAME_BYTES = 64 << 20


class ReplayFormatError(ValueError):
    """A recording line that is not {"ts_recv_ms": int, "frame": str}."""


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
            if isinstance(frame, (bytes, bytearray)):
                frame = frame.decode()
            fh.write(orjson.dumps({"ts_recv_ms": int(ts_recv_ms), "frame": frame}))
            fh.write(b"\n")
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


def read_frames(path: Union[str, Path], skip: int = 0) -> Iterator[tuple[int, str]]:
    """Yield (ts_recv_ms, frame) from a recording, after skipping the first `skip` frames
    (skipped lines are not decoded)."""
    path = Path(path)
    lineno = 0
    # Big decompressed chunks split on newlines: ~5x cheaper per line than GzipFile.readline.
    with gzip.open(path, "rb") as fh:
        tail = b""
        while True:
            chunk = fh.read(_CHUNK_BYTES)
            if not chunk:
                break
            lines = (tail + chunk).split(b"\n")
            tail = lines.pop()
            for line in lines:
                lineno += 1
                if lineno <= skip or not line.strip():
                    continue
                yield _decode_line(line, path, lineno)
        if tail.strip():
            lineno += 1
            if lineno > skip:
                yield _decode_line(tail, path, lineno)


def count_frames(path: Union[str, Path]) -> int:
    with gzip.open(Path(path), "rb") as fh:
        return sum(1 for line in fh if line.strip())


def _wall_ms() -> int:
    return int(time.time() * 1000)


class ReplaySource(FixedPartitionedSource):
    """One partition per recording file (`list_parts()` → [file name]).

    speed: "max" emits as fast as the flow accepts; a number paces the frames by their
    recorded ts_recv_ms gaps (1 = real time, 10 = ten times faster).
    parse: the venue parser, called as parse(frame, ts_recv_ms, max_frame_bytes) → events;
    Control objects (heartbeats, responses) are dropped.
    stamp_recv: "recorded" keeps the recorded ts_recv_ms; "wall" stamps the wall clock at
    replay time (latency measured in processing terms).
    run_seconds / max_frames end this run early (an EOF to the flow); the resume state is
    the count of frames consumed, so a restarted flow continues after them.
    """

    def __init__(self, path: Union[str, Path], *, speed: Union[str, float] = "max",
                 parse: Callable[..., list] = parse_frame, batch_max: int = 2000,
                 run_seconds: Optional[float] = None, max_frames: Optional[int] = None,
                 stamp_recv: str = "recorded", max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"replay file {self.path} does not exist; record one with "
                                    "connectors.replay.write_frames or `bench/workload.py`")
        if speed != "max" and (isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0):
            raise ValueError(f"speed={speed!r}: use \"max\" or a positive number (1 = real time)")
        if batch_max < 1:
            raise ValueError(f"batch_max={batch_max}: must be >= 1")
        if stamp_recv not in ("recorded", "wall"):
            raise ValueError(f"stamp_recv={stamp_recv!r}: use \"recorded\" or \"wall\"")
        self.speed = speed
        self.parse = parse
        self.batch_max = batch_max
        self.run_seconds = run_seconds
        self.max_frames = max_frames
        self.stamp_recv = stamp_recv
        self.max_frame_bytes = max_frame_bytes

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: Optional[int]) -> "ReplayPartition":
        if for_part != self.path.name:
            raise ValueError(f"replay partition {for_part!r} is not this source's file {self.path.name!r}")
        return ReplayPartition(self, int(resume_state or 0))


class ReplayPartition(StatefulSourcePartition):
    def __init__(self, source: ReplaySource, offset: int):
        self.src = source
        self.offset = offset  # frames consumed so far, this run and earlier ones
        self.started_offset = offset
        self._frames = read_frames(source.path, skip=offset)
        self._next: Optional[tuple[int, str]] = None  # a frame read ahead, not yet due
        self._eof = False
        self.started_wall_ms: Optional[int] = None
        self.first_ts_ms: Optional[int] = None
        self._awake: Optional[datetime] = None
        self._deadline_s = (time.monotonic() + source.run_seconds) if source.run_seconds is not None else None

    def _peek(self) -> Optional[tuple[int, str]]:
        if self._next is None and not self._eof:
            self._next = next(self._frames, None)
            if self._next is None:
                self._eof = True
        return self._next

    def next_batch(self) -> list:
        src = self.src
        if self._deadline_s is not None and time.monotonic() >= self._deadline_s:
            raise StopIteration
        if src.max_frames is not None and self.offset - self.started_offset >= src.max_frames:
            raise StopIteration
        if self._peek() is None:
            raise StopIteration
        now = _wall_ms()
        if self.started_wall_ms is None:
            self.started_wall_ms, self.first_ts_ms = now, self._next[0]
        limit = src.batch_max
        if src.max_frames is not None:
            limit = min(limit, src.max_frames - (self.offset - self.started_offset))
        due_ts = None
        if src.speed != "max":
            # frames whose recorded time, scaled, has come
            due_ts = self.first_ts_ms + (now - self.started_wall_ms) * float(src.speed)
        out: list = []
        append = out.append
        parse, max_bytes, wall = src.parse, src.max_frame_bytes, src.stamp_recv == "wall"
        frames = self._frames
        n = 0
        while n < limit:
            item = self._next
            if item is None:
                item = next(frames, None)
                if item is None:
                    self._eof = True
                    break
            else:
                self._next = None
            if due_ts is not None and item[0] > due_ts:
                self._next = item  # not due yet: keep it for a later batch
                break
            n += 1
            events = parse(item[1], now if wall else item[0], max_bytes)
            if len(events) == 1 and type(events[0]) is not Control:
                append(events[0])
            else:
                out.extend(ev for ev in events if type(ev) is not Control)
        self.offset += n
        self._awake = None
        if due_ts is not None:
            item = self._peek()
            if item is not None and item[0] > due_ts:
                wake_ms = self.started_wall_ms + (item[0] - self.first_ts_ms) / float(src.speed)
                self._awake = datetime.fromtimestamp(wake_ms / 1000.0, tz=timezone.utc)
        return out

    def next_awake(self) -> Optional[datetime]:
        return self._awake

    def snapshot(self) -> int:
        return self.offset

    def close(self) -> None:
        self._frames.close()
