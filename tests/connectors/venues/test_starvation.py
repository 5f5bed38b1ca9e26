"""Heartbeats under a saturated CPU: a graph.toml node burning pure-Python CPU keeps the
dataflow busy, yet the connector answers every test_request in time and never drops, because
its socket loop runs on its own thread. The contrast: the same kind of work done ON the socket
loop (the client's inline_work option, the naive design) makes the server close the session.

Waits are conditions with timeouts; nothing here asserts a duration.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from bytewax.testing import run_main

from connectors.venues.deribit import DeribitClient, DeribitSource
from flows.surface import build_flow
from tests.helpers.sinks import CallbackSink
from operators.state import chain
from operators.events import SurfacePatch
from flows.config import load_config
from tests.helpers import slow_nodes
from tests.helpers.flowrun import StoppableSource
from tests.helpers.config import deribit_kwargs

HEARTBEAT_S = 0.5  # test_request every 0.5 s (Deribit: >= 10 s); the simulator closes a session missing one


def _sim_process():
    """The simulator in its own process (`volgraph sim`): in this process it would compete for
    the same GIL and its heartbeat deadline checks would be starved too, hiding late answers."""
    proc = subprocess.Popen([sys.executable, "-m", "connectors.sim.deribit", "--host", "127.0.0.1", "--port", "0",
                             "--seed", "3", "--rate", "2000", "--scale", "medium", "--currencies", "BTC", "--n-strikes", "12", "--n-expiries", "4",
                             "--min-heartbeat", "0.1"],
                            stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[3]))
    line = proc.stdout.readline()  # "volgraph sim: ws://127.0.0.1:PORT/ws/api/v2  (…)"
    match = re.search(r"(ws://\S+)", line)
    if not match:
        proc.kill()
        raise AssertionError(f"simulator did not start: {line!r}")
    return proc, match.group(1)


def _final_counters(proc) -> dict[str, int]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    return {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", out)}


def test_saturated_flow_never_starves_heartbeats(tmp_path):
    graph = tmp_path / "graph.toml"
    graph.write_text(textwrap.dedent("""
        [chain]
        fit_interval_ms = 0
        fit_change_bp = 0

        [nodes.slow]
        fn = "tests.helpers.slow_nodes:burn"
        inputs = ["fit"]
        level = "expiry"
        ms = 120
    """))
    config = load_config(graph)
    chain.warm_up()  # as `volgraph run` does: JIT compiles hold the GIL for long, before any feed
    proc, url = _sim_process()
    stop = threading.Event()
    source = StoppableSource(DeribitSource(**deribit_kwargs(DeribitSource, url=url, currencies=["BTC"],
                                                            heartbeat_s=HEARTBEAT_S, reconnect_min_s=0.05,
                                                            subscribe_per_s=1000.0)), stop)
    patches = []
    calls_before = slow_nodes.CALLS
    started = {}

    def watch():
        try:
            deadline = time.monotonic() + 30
            while not (patches and source.parts) and time.monotonic() < deadline:
                threading.Event().wait(0.05)  # poll for the flow to be fitting (not a sync sleep)
            client = source.parts[0].client
            started["t"], started["answered"] = time.monotonic(), client.counters().get("heartbeats_answered", 0)
            started["burned"] = slow_nodes.BURNED_S
            client.wait_for(lambda k: k.get("heartbeats_answered", 0) >= started["answered"] + 12
                            or k.get("reconnects", 0) > 0, 30)
            started["elapsed"] = time.monotonic() - started["t"]
            started["burned_during"] = slow_nodes.BURNED_S - started["burned"]
        finally:
            stop.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        flow = build_flow(config, source, [CallbackSink(lambda x: patches.append(x) if isinstance(x, SurfacePatch)
                                                        else None)])
        run_main(flow)
        watcher.join(30)
        c = source.parts[0].client.counters()
        sim = _final_counters(proc)
        assert c["heartbeats_answered"] - started["answered"] >= 12, "too few test_requests during the run"
        assert sim["heartbeat_closes"] == 0 and sim["connections"] == 1
        assert sim["test_answers"] >= sim["test_requests_sent"] - 1  # the last may be in flight at the end
        assert c.get("reconnects", 0) == 0 and c.get("errors.silence", 0) == 0
        assert c.get("errors.heartbeat_silence", 0) == 0
        # the CPU really was saturated by the slow node while the heartbeats went on
        assert slow_nodes.CALLS - calls_before > 10
        busy = started["burned_during"] / started["elapsed"]
        assert busy > 0.5, f"the slow node used only {busy:.0%} of the wall time; the test proves nothing"
        print(f"\nsaturated: slow node busy {busy:.0%} of {started['elapsed']:.1f} s; simulator: "
              f"{sim['test_answers']}/{sim['test_requests_sent']} test_requests answered, worst answer "
              f"{sim['test_answer_ms_max']} ms (closes after {HEARTBEAT_S * 500:.0f} ms), 0 closes")
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_same_work_on_the_socket_loop_misses_test_requests():  # noqa: D103
    # The naive design: ~5 ms of consumer work per market event run inline on the socket loop.
    # At 2,000 events/s that is 10 s of work per second: frames, test_requests among them, queue
    # up behind it and the server closes the session for an unanswered test_request. The
    # simulator runs in its own process: in this one its deadline checks would starve on the
    # GIL as much as the client and sometimes see each late answer arrive just before them.
    proc, url = _sim_process()
    client = DeribitClient(**deribit_kwargs(url=url, currencies=("BTC",), heartbeat_s=HEARTBEAT_S,
                                            reconnect_min_s=0.05, seed=1, subscribe_per_s=1000.0,
                                            inline_work=slow_nodes.burn_event))
    client.start()
    try:
        assert client.wait_for(lambda k: k.get("reconnects", 0) >= 1, 30), client.counters()
        client.stop()
        sim = _final_counters(proc)
        assert sim["heartbeat_closes"] >= 1, sim
        print(f"\ninline work: the server closed {sim['heartbeat_closes']} session(s) for unanswered "
              f"test_requests ({sim['test_answers']}/{sim['test_requests_sent']} answered)")
    finally:
        client.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
