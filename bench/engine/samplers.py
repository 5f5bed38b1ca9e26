"""Samplers for the processes of a bytewax cluster, read after the run: CpuSampler (process CPU
seconds against wall time, so any window's CPU can be read once every process has reported) and
StackSampler with SampledSink (a sampling profiler of the bytewax worker thread, which
pyinstrument cannot profile).

Daemon threads of the child process that measure; they never touch the flow's data.
"""

from __future__ import annotations

import bisect
import sys
import time
from pathlib import Path
from typing import Optional

from bench.engine.common import now_wall_ms


class CpuSampler:
    """(wall ms, process CPU s) every `period_s` on a daemon thread, so the CPU a process spent
    inside any wall-clock window can be read afterwards (the window is only known once every
    process of the cluster has reported)."""

    def __init__(self, period_s: float = 0.02):
        import threading

        self.samples: list[tuple[float, float]] = [(now_wall_ms(), time.process_time())]
        self._stop = threading.Event()
        self._period_s = period_s
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self.samples.append((now_wall_ms(), time.process_time()))

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        self.samples.append((now_wall_ms(), time.process_time()))
        return self.samples


def cpu_at(samples: list, wall_ms: float) -> float:
    """Process CPU seconds at a wall time, interpolated between samples."""
    walls = [w for w, _ in samples]
    i = bisect.bisect_right(walls, wall_ms)
    if i == 0:
        return samples[0][1]
    if i >= len(samples):
        return samples[-1][1]
    (w0, c0), (w1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * ((wall_ms - w0) / (w1 - w0) if w1 > w0 else 0.0)


class StackSampler:
    """A sampling profiler for the bytewax worker thread of a cluster process (pyinstrument only
    profiles the thread that starts it, and started on the worker thread it crashed the
    process): every `interval_s`, the worker's Python stack from sys._current_frames(). Samples
    with no Python frame are time in bytewax's Rust core (timely progress, exchange, routing —
    pickling shows as the Python frames it calls, e.g. dataclasses' __getstate__)."""

    def __init__(self, interval_s: float = 0.002):
        import threading

        self.interval_s = interval_s
        self.worker_ident: Optional[int] = None
        self.samples = 0
        self.self_counts: dict[str, int] = {}
        self.cum_counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def attach_here(self) -> None:
        if self.worker_ident is None:
            import threading

            self.worker_ident = threading.get_ident()
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self.worker_ident)
            self.samples += 1
            if frame is None:
                self.self_counts["(no Python frame: bytewax Rust core)"] = \
                    self.self_counts.get("(no Python frame: bytewax Rust core)", 0) + 1
                continue
            top = True
            seen = set()
            while frame is not None:
                code = frame.f_code
                name = f"{code.co_name}  {Path(code.co_filename).name}:{code.co_firstlineno}"
                if top:
                    self.self_counts[name] = self.self_counts.get(name, 0) + 1
                    top = False
                if name not in seen:
                    seen.add(name)
                    self.cum_counts[name] = self.cum_counts.get(name, 0) + 1
                frame = frame.f_back

    def report(self, top: int = 25) -> str:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        n = max(self.samples, 1)
        lines = [f"worker-thread stack samples: {self.samples:,} every {self.interval_s * 1000:g} ms",
                 "  self time (innermost Python frame):"]
        for name, c in sorted(self.self_counts.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {100.0 * c / n:5.1f} %  {name}")
        lines.append("  inclusive time (frame anywhere on the stack):")
        for name, c in sorted(self.cum_counts.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"    {100.0 * c / n:5.1f} %  {name}")
        return "\n".join(lines)


def SampledSink(fn, sampler: StackSampler):
    """A CallbackSink whose build (on the worker thread) points the sampler at that thread."""
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    class _Part(StatelessSinkPartition):
        def write_batch(self, items):
            for item in items:
                fn(item)

    class _Sink(DynamicSink):
        def build(self, step_id, worker_index, worker_count):
            sampler.attach_here()
            return _Part()

    return _Sink()
