"""`volgraph watch` (connectors/gateway/watch.py), the protocol's reference client, against a
real gateway on 127.0.0.1: the table it prints holds the gateway's values, filters pick
streams, a stop (Ctrl-C / SIGTERM / the stop event) ends it with 0, an unreachable gateway
with 1 and the fix."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from connectors.gateway.watch import main, render
from operators.events import to_json
from tests.connectors.gateway.test_gateway import publisher  # noqa: F401 (fixture)
from tests.helpers.resources import free_port

ROOT = Path(__file__).resolve().parents[3]


def expected_rows(snapshot) -> list[str]:
    """Each expiry's ATM vol, RR25, BF25 as the table prints them (vol points, 2 decimals)."""
    out = []
    for v in snapshot.expiries:
        cells = ["–" if v.analytics.get(n) is None else f"{100 * v.analytics[n]:.2f}" for n in ("atm_vol", "rr25", "bf25")]
        out.append(cells)
    return out


def printed_rows(text: str, stream: str) -> list[list[str]]:
    """The ATM / RR25 / BF25 cells of one stream's block of the table."""
    block = text.split(stream + "  ", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [line.split()[3:6] for line in block]


def test_once_prints_the_gateways_surface(gateway, surface_factory):
    g = gateway()
    btc, eth = surface_factory(underlying="BTC"), surface_factory(underlying="ETH", seed=5)
    with publisher(g) as pub:
        pub.send(to_json(btc.snapshot(1, expiries=[0, 1, 2])), text=True)
        pub.send(to_json(eth.patch(1, changed=[0, 3])), text=True)
        pub.send(to_json(btc.patch(2, changed=[1], removed=[2])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 2 and g.seq("deribit", "ETH") == 1, 10)
    out = io.StringIO()
    assert main(["--url", g.ws_url, "--once"], out=out) == 0
    text = out.getvalue()
    for underlying in ("BTC", "ETH"):
        state = g.state("deribit", underlying)
        assert printed_rows(text, f"deribit:{underlying}") == expected_rows(state), text
        assert len(state.expiries) == 2
    assert "ATM vol (pts)" in text and "RR25 (pts)" in text and "BF25 (pts)" in text
    assert text == render({k: g.state(*k) for k in g.surfaces})


def test_filters_pick_the_streams(gateway, surface_factory):
    g = gateway()
    with publisher(g) as pub:
        for venue, underlying in (("deribit", "BTC"), ("deribit", "ETH"), ("okx", "BTC")):
            pub.send(to_json(surface_factory(venue=venue, underlying=underlying).snapshot(1, expiries=[0])), text=True)
        assert g.wait_until(lambda g: len(g.surfaces) == 3, 10)
    out = io.StringIO()
    assert main(["--url", g.ws_url, "--once", "--underlying", "BTC", "--venue", "okx,deribit"], out=out) == 0
    text = out.getvalue()
    assert "deribit:BTC" in text and "okx:BTC" in text and "deribit:ETH" not in text


class Screen(io.StringIO):
    """A terminal stand-in that wakes waiters on every write."""

    def __init__(self) -> None:
        super().__init__()
        self.cond = threading.Condition()

    def write(self, text: str) -> int:
        with self.cond:
            n = super().write(text)
            self.cond.notify_all()
            return n

    def wait_for(self, predicate, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.getvalue()), timeout)


def test_a_stop_ends_the_live_view_with_zero(gateway, surface_factory):
    g = gateway()
    f = surface_factory()
    stop = threading.Event()
    out = Screen()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", main(["--url", g.ws_url, "--refresh-s", "0"],
                                                                             out=out, stop=stop)))
    thread.start()
    assert g.wait_until(lambda g: len(g.clients) == 1, 10)
    with publisher(g) as pub:
        for i in range(5):
            pub.send(to_json(f.patch(1 + i, changed=[i % 3])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 5, 10)
    state = g.state("deribit", "BTC")
    want = expected_rows(state)
    assert out.wait_for(lambda text: f"epoch {state.epoch}" in text, 10)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and result["code"] == 0
    last = out.getvalue().rsplit("deribit:BTC  ", 1)[1]
    assert printed_rows("deribit:BTC  " + last, "deribit:BTC") == want


def test_sigterm_ends_the_program_cleanly(gateway, surface_factory):
    g = gateway()
    with publisher(g) as pub:
        pub.send(to_json(surface_factory().snapshot(1, expiries=[0, 1])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 1, 10)
    proc = subprocess.Popen([sys.executable, "-m", "connectors.gateway.watch", "--url", g.ws_url, "--refresh-s", "0"],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # it draws the table: it is connected and running
            if line.startswith("deribit:BTC"):
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_unreachable_gateway_exits_one_with_the_fix(capsys):
    url = f"ws://127.0.0.1:{free_port('127.0.0.1')}/ws"
    assert main(["--url", url, "--once", "--open-timeout-s", "5"]) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to {url}" in err and "--url ws://HOST:PORT/ws" in err
    assert main(["--url", "http://x/ws"]) == 2
