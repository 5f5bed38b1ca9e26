"""A deliberately slow graph.toml node for tests/connectors/venues/test_starvation.py: it burns pure-Python CPU
(holding the GIL the way a heavy analytic does) for `ms` milliseconds per call.

Test helper only: never use it in a real graph.toml.
"""

from __future__ import annotations

import threading
import time

CALLS = 0
BURNED_S = 0.0
_lock = threading.Lock()


def burn(params, t_years: float, ms: float = 30.0) -> float:
    """graph.toml node fn (inputs = ["fit"]): spin for `ms` ms of pure-Python arithmetic and
    return a harmless value (the fitted a parameter)."""
    global CALLS, BURNED_S
    start = time.perf_counter()
    end = start + ms / 1000.0
    x = 0.0
    while time.perf_counter() < end:
        for i in range(200):  # bytecode, not a C call: the GIL is held and only yielded on request
            x += i * 1e-9
    with _lock:
        CALLS += 1
        BURNED_S += time.perf_counter() - start
    return float(params[0]) + x * 0.0


def burn_event(_event, ms: float = 5.0) -> None:
    """The same work per market event, for the naive design that runs it on the socket loop."""
    end = time.perf_counter() + ms / 1000.0
    x = 0.0
    while time.perf_counter() < end:
        for i in range(200):
            x += i * 1e-9
