"""Bytewax sinks that hand every item to a function, or record which worker wrote it: tests and
benchmarks observe a flow's output with them. Test support only (production sinks live in
connectors/)."""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from bytewax.outputs import DynamicSink, StatelessSinkPartition


class CallbackSink(DynamicSink):
    """Hands every output item to a function. With `consumes` (a tuple of output types) the
    flow hands it only those, as it does the production sinks."""

    def __init__(self, fn: Callable[[object], None], consumes: Optional[tuple] = None):
        self.fn = fn
        if consumes is not None:
            self.consumes = consumes

    def build(self, step_id, worker_index, worker_count):
        fn = self.fn

        class _Part(StatelessSinkPartition):
            def write_batch(self, items):
                for item in items:
                    fn(item)

        return _Part()


class WorkerSink(DynamicSink):
    """Records (what(item), index of the worker that wrote it) in `seen`: a dynamic sink writes
    on the worker that produced the item, with no exchange before it, so this tells where a
    keyed step ran. `consumes` as CallbackSink's."""

    def __init__(self, what: Callable[[Any], Any] = lambda item: item, consumes: Optional[tuple] = None):
        self.what = what
        self.seen: list[tuple[Any, int]] = []
        self.lock = threading.Lock()
        if consumes is not None:
            self.consumes = consumes

    def build(self, step_id, worker_index, worker_count):
        sink = self

        class _Part(StatelessSinkPartition):
            def write_batch(self, items):
                with sink.lock:
                    sink.seen.extend((sink.what(item), worker_index) for item in items)

        return _Part()
