"""Child-side recording of a volgraph run: Probe (per source partition: when each batch entered,
the frames consumed, the newest exchange timestamp, where the live stream and the shock began),
probe_source (wraps the flow's source so every batch is recorded) and StageTimer (wall spans of
the keyed steps' work once a shock has entered).

Records only; turning the records into figures is bench/engine/figures.py. Imports bytewax and
flows.steps only inside the functions that wrap them.
"""

from __future__ import annotations

import bisect
import time
from typing import Optional

import numpy as np

from bench.engine.common import now_wall_ms


class Probe:
    """What entered the flow and when: per source batch the wall time, the frames consumed and
    the newest exchange timestamp; and where the live stream and the shock began."""

    def __init__(self, preamble_frames: int, shock: Optional[dict]):
        self.preamble_frames = preamble_frames
        self.shock = shock
        self.batch_wall: list[float] = []
        self.batch_max_ts: list[int] = []
        self.live_wall: Optional[float] = None
        self.live_cpu: Optional[float] = None
        self.live_offset = 0
        self.offset = 0
        self.end_wall: Optional[float] = None
        self.shock_first_wall: Optional[float] = None
        self.shock_last_wall: Optional[float] = None
        # expiry_ms → wall time its last shock frame entered (all of its shock is in then)
        self.shock_expiry_in: dict[int, float] = {}
        self._shock_expiry_frames = {int(e): i for e, i in (shock or {}).get("expiry_last_frame", {}).items()}
        self.speed = 1.0
        self.started = False
        self.trace_wall: list[float] = []  # every batch: wall time and frames consumed after it
        self.trace_offset: list[int] = []
        self.read_spans: list[tuple[float, float]] = []  # source batches (read + parse) from the shock on
        self.read_counts = None  # () -> the solve counters (bench/engine/figures.py solve_counts); shock runs
        self.counts_at_shock: Optional[dict] = None  # read as the shock's first frame entered

    def record(self, part, batch: list, started: float) -> None:
        """One source batch: `started` is when reading it began — its frames "enter" then, so
        reading and parsing them count in every latency and in the shock time."""
        now = now_wall_ms()
        before, self.offset = self.offset, part.offset
        self.trace_wall.append(now)
        self.trace_offset.append(self.offset)
        if not self.started and part.started_wall_ms is not None:
            self.started = True
            # exchange clock of the paced run: first_ts + (wall − start) × speed
            self.first_ts, self.start_wall = part.first_ts_ms, part.started_wall_ms
        if self.live_wall is None and self.offset > self.preamble_frames:
            self.live_wall, self.live_cpu, self.live_offset = now, time.process_time(), max(before,
                                                                                              self.preamble_frames)
        if self.shock is not None:
            first = self.shock["first_frame"]
            last = first + self.shock["n_frames"] - 1
            if self.shock_first_wall is None and before <= first < self.offset:
                self.shock_first_wall = started
                if self.read_counts is not None:
                    self.counts_at_shock = self.read_counts()
            if self.shock_last_wall is None and before <= last < self.offset:
                self.shock_last_wall = now
            if before <= last and first < self.offset:
                for expiry_ms, idx in self._shock_expiry_frames.items():
                    if before <= idx < self.offset:
                        self.shock_expiry_in[expiry_ms] = now
            if self.shock_first_wall is not None and len(self.read_spans) < StageTimer.LIMIT:
                self.read_spans.append((started, now))
        newest = 0
        for ev in batch:
            ts = getattr(ev, "ts_exchange_ms", 0)
            if type(ts) is np.ndarray:  # a BookBatch's column
                ts = int(ts.max())
            if ts > newest:
                newest = ts
        if newest:
            if self.batch_max_ts and newest < self.batch_max_ts[-1]:
                newest = self.batch_max_ts[-1]  # keep it monotone for bisect
            self.batch_wall.append(started)
            self.batch_max_ts.append(newest)

    def entered_wall(self, ts_exchange_ms: int, strictly_after: bool) -> Optional[float]:
        """Wall time the first event with ts > (or ≥) the given exchange time entered the flow."""
        fn = bisect.bisect_right if strictly_after else bisect.bisect_left
        i = fn(self.batch_max_ts, ts_exchange_ms)
        return self.batch_wall[i] if i < len(self.batch_wall) else None

    def offset_at(self, wall_ms: float) -> int:
        """Frames this partition had consumed by the given wall time."""
        i = bisect.bisect_right(self.trace_wall, wall_ms)
        return self.trace_offset[i - 1] if i else 0

    def to_json(self) -> dict:
        keys = ("preamble_frames", "batch_wall", "batch_max_ts", "live_wall", "live_offset", "offset", "end_wall",
                "trace_wall", "trace_offset", "shock", "shock_first_wall", "shock_last_wall", "shock_expiry_in",
                "read_spans")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_json(cls, d: dict) -> "Probe":
        probe = cls(d["preamble_frames"], d.get("shock"))
        for k, v in d.items():
            setattr(probe, k, v)
        probe.shock_expiry_in = {int(e): w for e, w in d.get("shock_expiry_in", {}).items()}  # JSON keys are str
        return probe


def probe_source(inner, probe_for):
    """Wraps a source; `probe_for(partition name)` gives the Probe that partition records into
    (a Probe alone: every partition records into it)."""
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

    if isinstance(probe_for, Probe):
        single = probe_for
        probe_for = lambda _name: single  # noqa: E731

    class _Part(StatefulSourcePartition):
        def __init__(self, part, probe):
            self.part = part
            self.probe = probe

        def next_batch(self):
            started = now_wall_ms()
            try:
                batch = self.part.next_batch()
            except StopIteration:
                if self.probe.end_wall is None:
                    self.probe.end_wall = now_wall_ms()
                raise
            self.probe.record(self.part, batch, started)
            return batch

        def next_awake(self):
            return self.part.next_awake()

        def snapshot(self):
            return self.part.snapshot()

        def close(self):
            self.part.close()

    class _Source(FixedPartitionedSource):
        def list_parts(self):
            return inner.list_parts()

        def build_part(self, step_id, for_part, resume_state):
            return _Part(inner.build_part(step_id, for_part, resume_state), probe_for(for_part))

    return _Source()


class StageTimer:
    """Where each process's time goes while a shock is absorbed: wall spans of the keyed steps'
    work — "books" (a chain step's batch: events applied to books, strikes marked dirty),
    "tick" (a chain step's epoch: IV solves and fits) and "surface" (the surface step's batch
    and patch) — recorded once a shock frame has entered (the probes' read spans add "read":
    source batches, reading and parsing frames). It wraps the step classes' methods: the bench
    child is a measuring process of its own."""

    LIMIT = 50_000  # spans kept (steps here, source batches in each probe); a shock run records a few thousand

    def __init__(self, probes):
        self.probes = probes  # the process's Probes: recording starts when one saw the shock
        self.spans: list[tuple[float, float, str]] = []

    def install(self) -> "StageTimer":
        from flows.steps import ChainStep, SurfaceStep

        for cls, name, stage in ((ChainStep, "on_batch", "books"), (ChainStep, "on_notify", "tick"),
                                 (SurfaceStep, "on_batch", "surface"), (SurfaceStep, "on_notify", "surface")):
            self._wrap(cls, name, stage)
        return self

    def _wrap(self, cls, name: str, stage: str) -> None:
        inner, spans, probes = getattr(cls, name), self.spans, self.probes

        def timed(step, *args):
            started = now_wall_ms()
            out = inner(step, *args)
            if len(spans) < self.LIMIT and any(p.shock_first_wall is not None for p in probes()):
                spans.append((started, now_wall_ms(), stage))
            return out

        setattr(cls, name, timed)
