"""The bare dataflow as waxctl and `python -m bytewax.run` start it: `flows.surface:flow`, all
parts external and configured by the environment (VOLGRAPH_CONFIG, VOLGRAPH_URL,
VOLGRAPH_GATEWAY_URL). A Deribit simulator and a gateway run in this process over loopback;
the flow in a child process must put a fitted surface of every simulated expiry on the gateway."""

import os
import subprocess
import sys
import time
from pathlib import Path

from connectors.gateway.server import Gateway
from connectors.sim.deribit import Simulator
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.venues import monday_noon_ms
from tests.helpers.config import gateway_kwargs, sim_kwargs

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_bytewax_run_flows_surface_flow_publishes_every_expiry(tmp_path):
    sim = Simulator(**sim_kwargs(seed=5, rate=2000, currencies=("BTC",), scale="small", now_ms=monday_noon_ms(),
                                 plan={"daily": 0, "weekly": 1, "monthly": 1, "quarterly": 0}, n_strikes=12))
    sim_url = sim.start()
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=0))
    gw.start()
    config = tmp_path / "graph.toml"
    config.write_text('[runtime]\nmetrics_port = 0\n\n[sources.deribit]\ncurrencies = ["BTC"]\n\n'
                      '[sources.okx]\nenabled = false\n\n[sinks.postgres]\nenabled = false\n')
    env = dict(os.environ, VOLGRAPH_CONFIG=str(config), VOLGRAPH_URL=sim_url, VOLGRAPH_GATEWAY_URL=gw.publish_url)
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.surface:flow"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + DEADLINE_S
        published = False
        while not published and time.monotonic() < deadline:
            epoch = gw.epoch("deribit", "BTC")  # a plain read: safe inside wait_until
            snap = gw.state("deribit", "BTC")
            published = snap is not None and {v.expiry_ms for v in snap.expiries} == set(sim.expiries("BTC"))
            if not published:
                gw.wait_until(lambda g: g.epoch("deribit", "BTC") != epoch, timeout=max(0.0, deadline - time.monotonic()))
        alive = proc.poll() is None
    finally:
        proc.kill()
        output = proc.communicate(timeout=30)[0]
        gw.stop()
        sim.stop()
    assert alive, f"the flow exited early:\n{output[-3000:]}"
    assert published, f"no fitted surface of every expiry reached the gateway within {DEADLINE_S} s:\n{output[-3000:]}"
    snap = gw.state("deribit", "BTC")
    assert all(v.fit.butterfly_ok and v.analytics["atm_vol"] is not None for v in snap.expiries)
