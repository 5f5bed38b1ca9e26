"""End to end, all real: simulator (Deribit protocol over loopback) → DeribitSource →
the bytewax flow → gateway (websockets) and PostgreSQL (pgserver).

Every simulated expiry gets an SVI fit close to the simulator's true surface, the same
fits are in PostgreSQL, and a dashboard client's snapshot + patches merge to exactly the
latest surface in PostgreSQL.
"""

import threading

import pytest
from websockets.sync.client import connect as ws_connect

from connectors.venues.deribit import DeribitSource
from connectors.gateway.publisher import GatewaySink
from connectors.postgres import connect, latest_surface, migrate
from connectors.sim.deribit import Simulator
from flows.surface import build_flow
from operators.state import chain
from operators.events import SurfacePatch, SurfaceSnapshot
from operators.merge import apply_patch
from flows.config import load_config
from tests.helpers.flowrun import DEADLINE_S, StoppableSource, holds, run_until
from tests.helpers.venues import check_smile_against_truth, monday_noon_ms
from tests.helpers.config import RR15_NODE_TOML, deribit_kwargs, postgres_sink, sim_kwargs
from tests.helpers.gateway import serve_gateway, surface_event

CURRENCIES = ("BTC", "ETH")


class DashboardClient:
    """A websocket client of the gateway that merges snapshot + patches per underlying."""

    def __init__(self, url):
        self.ws = ws_connect(url, max_size=None, legacy=True)  # long-lived, closed in close()
        self.surfaces: dict[str, SurfaceSnapshot] = {}
        self.kinds: list[str] = []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for raw in self.ws:
                event = surface_event(raw)
                if event is None:
                    continue
                with self.changed:
                    self.kinds.append(type(event).__name__)
                    if isinstance(event, SurfaceSnapshot):
                        self.surfaces[event.underlying] = event
                    elif isinstance(event, SurfacePatch):
                        self.surfaces[event.underlying] = apply_patch(self.surfaces.get(event.underlying), event)
                    self.changed.notify_all()
        except Exception:  # noqa: BLE001 — the socket closing ends the reader
            pass

    def wait_until(self, predicate, timeout):
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def close(self):
        self.ws.close()
        self.thread.join(timeout=5)


@pytest.fixture
def simulator():
    # No daily: its wings are quoted a tick or two wide (real Deribit ticks), so its quotes pin
    # the smile only to ~1 vol point; the model clock is pinned for the same reason.
    sim = Simulator(**sim_kwargs(seed=11, rate=3000, currencies=CURRENCIES, scale="small", now_ms=monday_noon_ms(),
                                 plan={"daily": 0, "weekly": 2, "monthly": 1, "quarterly": 1}, n_strikes=15))
    url = sim.start()
    yield sim, url
    sim.stop()


@pytest.fixture
def gateway():
    yield from serve_gateway("e2e-token")


def test_simulator_to_gateway_and_postgres(simulator, gateway, pg_db, tmp_path):
    sim, sim_url = simulator
    gw, http_url = gateway
    ws_base = http_url.replace("http://", "ws://").rstrip("/")
    with connect(pg_db) as conn:
        migrate(conn)
    chain.warm_up()

    client = DashboardClient(f"{ws_base}/ws")
    # an analytic added in graph.toml alone must reach the gateway and PostgreSQL
    graph = tmp_path / "graph.toml"
    graph.write_text("[chain]\nfit_interval_ms = 200\n" + RR15_NODE_TOML)
    config = load_config(graph)
    source = DeribitSource(**deribit_kwargs(DeribitSource, url=sim_url, currencies=CURRENCIES, depth=5,
                                            interval="100ms", heartbeat_s=10, queue_max=100_000,
                                            max_frame_bytes=1 << 20))
    pg_sink = postgres_sink(pg_db, tmp_path / "spill", config=config, flush_ms=100)
    stop = threading.Event()
    flow = build_flow(config, StoppableSource(source, stop),
                      [GatewaySink(f"{ws_base}/publish", token="e2e-token"), pg_sink])

    def stored_surfaces():
        with connect(pg_db) as conn:
            stored = {u: latest_surface(conn, "deribit", u) for u in CURRENCIES}
            n_fits = conn.execute("SELECT count(*) FROM smile_fits").fetchone()[0]
            rr15_rows = conn.execute("SELECT count(*) FROM expiry_nodes WHERE node = 'rr15'").fetchone()[0]
        check_stored(sim, stored, n_fits, rr15_rows)
        return stored

    # runs until PostgreSQL holds what the checks below want; the source's EOF then flushes every owed fit
    run_until(flow, stop, lambda: holds(stored_surfaces), what="every expiry fitted in PostgreSQL, near the truth")
    stored = stored_surfaces()  # the final rows pass too

    # 2. the dashboard client's merged snapshot + patches equal the latest rows in PostgreSQL
    same = client.wait_until(lambda: all(client.surfaces.get(u) == stored[u] for u in CURRENCIES), timeout=DEADLINE_S)
    client.close()
    assert client.kinds and client.kinds[0] in ("SurfaceSnapshot", "SurfacePatch")
    assert "SurfacePatch" in client.kinds
    for u in CURRENCIES:
        assert client.surfaces.get(u) == stored[u], u
    assert same


def check_stored(sim, stored, n_fits, rr15_rows):
    """What PostgreSQL must hold: raises AssertionError naming what is missing or wrong."""
    assert rr15_rows > 0
    assert n_fits >= sum(len(sim.expiries(u)) for u in CURRENCIES)

    # 1. every simulated expiry is fitted, close to the true smile at the quoted strikes
    for u in CURRENCIES:
        snap = stored[u]
        assert snap is not None, f"no surface for {u} in PostgreSQL"
        by_expiry = {v.expiry_ms: v for v in snap.expiries}
        assert set(by_expiry) == set(sim.expiries(u)), (u, sorted(by_expiry), sim.expiries(u))
        for expiry_ms, view in by_expiry.items():
            assert len(view.strikes) >= 6 and view.fit.butterfly_ok
            check_smile_against_truth(view, lambda K, f: sim.true_vol(u, expiry_ms, K, forward=f), (u, expiry_ms))
            assert view.analytics["atm_vol"] is not None and view.analytics["rr25"] is not None
            assert view.analytics["rr15"] < view.analytics["rr25"] < 0  # further in the put wing: more negative
