"""A bytewax sink that hands every item to a function: tests and benchmarks observe a flow's
output with it. Test support only (production sinks live in connectors/)."""

from __future__ import annotations

from typing import Callable, Optional

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
