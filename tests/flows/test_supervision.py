"""`volgraph run` supervises its children (flows/services.py Supervisor, Restart): real `volgraph
run` processes over loopback.

- The gateway child SIGKILLed: a line reports it, a new gateway (a new pid, a child of the
  run) answers /status on the same port, and a websocket client gets a snapshot again (the
  flow's publisher reconnected with the run's token and sent every surface whole).
- A second `volgraph run` on the same port does not join the first one's gateway: it stops
  at its port check (exit 3, naming the port), and even a publisher that got as far as the
  first run's gateway with its own per-run token is refused (401, `rejected.token`) and
  changes nothing a client sees.
- A simulator child SIGKILLed is restarted on its port; the venue source reconnects and
  fits with exchange times after the restart reach clients.
- The Supervisor alone: a child with a Restart policy is restarted with backoff and reported;
  one without a policy is not; stop() restarts nothing.

Every wait is on a line appearing or a message arriving, with a deadline; process trees are
read from /proc (flows/services.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from websockets.sync.client import connect

from connectors.gateway.auth import new_publish_token
from connectors.gateway.publisher import GatewayPublisher
from connectors.gateway.watch import StreamClient
from flows.services import Restart, Supervisor, descendants, exited
from tests.flows.test_services import wait_gone
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.resources import free_port
from tests.helpers.volgraph_run import Run, small_config

BTC = ("deribit", "BTC")


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
        return json.loads(r.read())


def first_snapshot(port: int, timeout_s: float = DEADLINE_S):
    """Connect as a client; return the deribit:BTC surface once it holds expiries (the first
    snapshot, merged with the patches after it if the flow has not fitted any yet)."""
    deadline = time.monotonic() + timeout_s
    with connect(f"ws://127.0.0.1:{port}/ws", max_size=None, open_timeout=timeout_s) as ws:
        client = StreamClient(lambda raw: ws.send(raw, text=True))
        while BTC not in client.surfaces or not client.surfaces[BTC].expiries:
            client.on_message(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        return client.surfaces[BTC]


def start_run(tmp_path) -> tuple[Run, int]:
    run = Run("--config", str(small_config(tmp_path)), "--port", "0", "--no-postgres")
    try:
        port = int(run.wait_line(r"dashboard http://127\.0\.0\.1:(\d+)/").group(1))
        run.wait_line(r"first patch of deribit:BTC", stream="err")
    except BaseException:
        run.kill()
        raise
    return run, port


def stop_run(run: Run) -> None:
    pids = descendants(run.proc.pid)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0, run.text()
    assert wait_gone(pids) == set(), run.text()


def test_a_killed_gateway_is_reported_restarted_on_its_port_and_clients_resync(tmp_path):
    run, port = start_run(tmp_path)
    try:
        old = int(run.wait_line(r"children .*gateway=(\d+)").group(1))
        assert old in descendants(run.proc.pid) and status(port)["pid"] == old
        before = first_snapshot(port)
        assert before.expiries

        os.kill(old, signal.SIGKILL)
        run.wait_line(rf"gateway \(pid {old}\) died \(killed by SIGKILL\); restarting it in [\d.]+ s \(restart 1\)")
        new = int(run.wait_line(rf"gateway restarted \(pid (\d+)\), answering on 127\.0\.0\.1:{port}$").group(1))
        assert new != old and exited(old)
        assert new in descendants(run.proc.pid)  # the run's child, so it dies with the run
        assert status(port)["pid"] == new  # the same port, the new process
        after = first_snapshot(port)  # the publisher came back with every surface whole
        assert after.expiries and after.epoch >= before.epoch
        # every expiry the old gateway had (the flow may have fitted more since: `before` can be
        # taken when only the first expiry's patch is out)
        assert {v.expiry_ms for v in after.expiries} >= {v.expiry_ms for v in before.expiries}
        assert status(port)["published"].get("SurfaceSnapshot", 0) >= 1
    except BaseException:
        run.kill()
        raise
    stop_run(run)


def test_a_killed_simulator_is_restarted_on_its_port_and_the_surface_moves_again(tmp_path):
    run, port = start_run(tmp_path)
    try:
        m = run.wait_line(r"children .*?(\w+ simulator)=(\d+)")
        name, old = m.group(1), int(m.group(2))
        os.kill(old, signal.SIGKILL)
        run.wait_line(rf"{name} \(pid {old}\) died \(killed by SIGKILL\); restarting it")
        new = int(run.wait_line(rf"{name} restarted \(pid (\d+)\), answering on").group(1))
        assert new != old and new in descendants(run.proc.pid)
        back_ms = time.time() * 1000
        # the venue source reconnects to the same port and resubscribes: fits flow again
        deadline = time.monotonic() + DEADLINE_S
        fresh = []
        with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            client = StreamClient(lambda raw: ws.send(raw, text=True))
            while not fresh:
                changed = client.on_message(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
                if changed == BTC:
                    fresh = [v for v in client.surfaces[BTC].expiries if v.fit.ts_exchange_ms > back_ms]
        assert fresh
    except BaseException:
        run.kill()
        raise
    stop_run(run)


def test_a_second_run_on_the_same_port_does_not_join_the_first_ones_gateway(tmp_path):
    run, port = start_run(tmp_path)
    try:
        first = status(port)
        (tmp_path / "second").mkdir()
        second = Run("--config", str(small_config(tmp_path / "second")), "--port", str(port), "--no-postgres")
        assert second.finish() == 3, second.text()
        message = "\n".join(second.err)
        assert f"gateway: port {port} is in use by another process" in message, message
        assert "dashboard http://" not in "\n".join(second.out)
        now = status(port)
        assert now["pid"] == first["pid"] and now["publishers"] == 1 and now["rejected"].get("token", 0) == 0

        # had it got as far as publishing, its own per-run token would be refused
        from operators.events import SurfaceSnapshot

        forged = SurfaceSnapshot(venue="deribit", underlying="BTC", epoch=1, ts_exchange_ms=1, ts_emit_ms=1,
                                 index_px=12345.0)
        intruder = GatewayPublisher(f"ws://127.0.0.1:{port}/publish", new_publish_token(), retry_min_ms=1)
        intruder.write_batch([forged])
        assert intruder.counters["connect_failures"] == 1 and intruder.counters["sent"] == 0
        assert "HTTP 401" in intruder.last_error
        assert status(port)["rejected"]["token"] == 1
        seen = first_snapshot(port)
        assert seen.expiries and seen.index_px != 12345.0  # the first run's surface, untouched
    except BaseException:
        run.kill()
        raise
    stop_run(run)


def test_the_supervisor_restarts_a_child_with_a_policy_with_backoff_and_only_that_one(tmp_path):
    port = free_port()
    server = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
              f"s.bind(('127.0.0.1', {port})); s.listen()\nwhile True: s.accept()[0].close()")
    events: list[str] = []
    changed = threading.Condition()

    def on_event(text: str) -> None:
        with changed:
            events.append(text)
            changed.notify_all()

    def seen(pattern: str, n: int = 1) -> list[str]:
        with changed:
            changed.wait_for(lambda: sum(bool(re.search(pattern, e)) for e in events) >= n, DEADLINE_S)
            return [e for e in events if re.search(pattern, e)]

    sup = Supervisor(stop_timeout_s=2.0)
    try:
        served = sup.spawn("server", [sys.executable, "-c", server], stdout=subprocess.DEVNULL,
                           restart=Restart("127.0.0.1", port, min_s=0.05, max_s=0.2))
        plain = sup.spawn("plain", [sys.executable, "-c", "import sys; sys.exit(7)"])
        sup.wait_listening("server", served, "127.0.0.1", port, timeout_s=DEADLINE_S)
        sup.supervise(on_event)
        for round_ in (1, 2):
            pid = sup.pids()["server"]
            os.kill(pid, signal.SIGKILL)
            assert seen(rf"server \(pid {pid}\) died \(killed by SIGKILL\); restarting it in [\d.]+ s "
                        rf"\(restart {round_}\)")
            assert seen(r"server restarted \(pid \d+\), answering on 127\.0\.0\.1:", round_)
        delays = [float(m) for m in re.findall(r"restarting it in ([\d.]+) s", "\n".join(events))]
        assert delays == [0.05, 0.1]  # doubled after a quick second death
        assert sup.restarts() == {"server": 2}
        assert plain.wait(timeout=DEADLINE_S) == 7 and sup.pids()["plain"] == plain.pid  # no policy: left dead
        assert not any("plain" in e for e in events)
    finally:
        codes = sup.stop()
    assert codes["server"] == -signal.SIGTERM and codes["plain"] == 7
    assert sup.restarts() == {"server": 2}  # stop() restarted nothing
