"""Health tells the truth: the gateway's /healthz, /status and /metrics report each dependency
(the publisher, the feeds, the database) with its state and age; a taken port ends
`volgraph gateway` with a message naming the port and the fix.

The dependency states come from what really reaches the gateway: StatusReports sent over a
real /publish websocket, and — in the last test — a real flow (simulator over loopback,
PostgresSink on a dead DSN or on the session's PostgreSQL) publishing its own.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import orjson
import pytest
from prometheus_client import generate_latest

from connectors.gateway.server import Gateway, main
from operators.events import StatusReport, to_json
from tests.connectors.gateway.test_gateway import http_get, publisher
from tests.helpers.config import gateway_kwargs, postgres_sink
from tests.helpers.resources import free_port


@pytest.fixture
def gw():
    g = Gateway(**gateway_kwargs(host="127.0.0.1", port=0, publish_token=None))
    g.start()
    yield g
    g.stop()


def report(source: str, **counters: float) -> bytes:
    now = int(time.time() * 1000)
    return to_json(StatusReport(source=source, ts_ms=now, started_ms=now - 1000, counters=counters))


def health(g: Gateway) -> tuple[int, dict]:
    code, _headers, body = http_get(g.http_url + "/healthz")
    return code, orjson.loads(body)


def test_healthz_and_status_follow_each_dependency(gw):
    assert health(gw)[0] == 503  # nothing has published yet: nothing is known to be up
    with publisher(gw) as pub:
        pub.send(report("w0", **{"dependency.feeds.up": 1.0, "dependency.feeds.age_s": 0.2,
                                 "dependency.database.up": 1.0, "dependency.database.age_s": 30.0}), text=True)
        assert gw.wait_until(lambda g: "w0" in g.workers, 10)
        code, doc = health(gw)
        assert code == 200 and doc["ok"] is True, doc
        deps = doc["dependencies"]
        assert {k: v["state"] for k, v in deps.items()} == {"publisher": "up", "feeds": "up", "database": "up"}
        assert 30.0 <= deps["database"]["age_s"] < 40.0 and deps["feeds"]["age_s"] < 10.0

        # one worker of two loses the database: down, /status ok false, the metric 0
        pub.send(report("w1", **{"dependency.feeds.up": 1.0, "dependency.feeds.age_s": 0.1,
                                 "dependency.database.up": 0.0, "dependency.database.age_s": 2.0}), text=True)
        assert gw.wait_until(lambda g: "w1" in g.workers, 10)
        code, doc = health(gw)
        assert code == 503 and doc["ok"] is False
        assert doc["dependencies"]["database"]["state"] == "down"
        assert doc["dependencies"]["database"]["detail"] == "1 of 2 workers up"
        status = orjson.loads(http_get(gw.http_url + "/status")[2])
        assert status["ok"] is False and status["dependencies"]["database"]["state"] == "down"
        metrics = http_get(gw.http_url + "/metrics")[2].decode()
        assert 'volgraph_dependency_up{dependency="database"} 0.0' in metrics
        assert 'volgraph_dependency_up{dependency="feeds"} 1.0' in metrics
        assert 'volgraph_dependency_up{dependency="publisher"} 1.0' in metrics

        # a flow without PostgreSQL: the database is "off", which is healthy
        pub.send(report("w1", **{"dependency.feeds.up": 1.0, "dependency.feeds.age_s": 0.1}), text=True)
        pub.send(report("w0", **{"dependency.feeds.up": 1.0, "dependency.feeds.age_s": 0.1}), text=True)
        assert gw.wait_until(lambda g: all("dependency.database.up" not in r.counters for r in g.workers.values()), 10)
        code, doc = health(gw)
        assert code == 200 and doc["dependencies"]["database"]["state"] == "off", doc
    assert gw.wait_until(lambda g: g.publishers == 0, 10)
    code, doc = health(gw)
    assert code == 503 and doc["dependencies"]["publisher"]["state"] == "down"


def test_a_taken_port_ends_the_gateway_with_the_port_and_the_fix(capsys):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        code = main(["--host", "127.0.0.1", "--port", str(port)],
                    defaults=gateway_kwargs())  # what `volgraph gateway` hands over: every [sinks.gateway] key
    finally:
        holder.close()
    assert code == 1
    err = capsys.readouterr().err
    assert f"port {port} is in use by another process; pass --port N" in err, err


@pytest.mark.parametrize("database", ["dead DSN", "live"])
def test_status_is_not_ok_while_postgresql_is_down(database, request, tmp_path, gw):
    """A real flow with a PostgresSink: on a DSN where nothing listens the gateway's /status says
    "ok": false with the database down (and the flow's own metric says 0); on the session's
    PostgreSQL everything is up and ok."""
    from connectors.gateway.publisher import GatewaySink
    from connectors.sim.deribit import Simulator
    from connectors.venues.deribit import DeribitSource
    from flows.config import load_config
    from flows.metrics import REGISTRY
    from flows.surface import build_flow
    from operators.state import chain
    from tests.helpers.config import deribit_kwargs, sim_kwargs
    from tests.helpers.flowrun import StoppableSource, run_until

    dsn = (f"postgresql://postgres@127.0.0.1:{free_port()}/postgres" if database == "dead DSN"
           else request.getfixturevalue("pg_db"))
    want = "down" if database == "dead DSN" else "up"
    sim = Simulator(**sim_kwargs(seed=3, rate=1000, currencies=("BTC",), scale="small"))
    sim_url = sim.start()
    chain.warm_up()
    config = load_config(overrides={"runtime": {"status_interval_ms": 200}})
    stop = threading.Event()
    source = DeribitSource(**deribit_kwargs(DeribitSource, url=sim_url, currencies=["BTC"]))
    sinks = [GatewaySink(gw.publish_url),
             postgres_sink(dsn, tmp_path / "spill", config=config, flush_ms=100, batch_rows=100, connect_timeout_s=1.0,
                           close_timeout_s=1.0)]
    flow = build_flow(config, StoppableSource(source, stop), sinks)
    seen = {}

    def told() -> bool:
        status = gw.status()
        seen["status"] = status
        seen["metrics"] = generate_latest(REGISTRY).decode()
        return (status["dependencies"]["database"]["state"] == want
                and status["dependencies"]["feeds"]["state"] == "up"
                and f'volgraph_dependency_up{{dependency="database"}} {1.0 if want == "up" else 0.0}' in seen["metrics"])

    try:
        run_until(flow, stop, told, what=f"the gateway's /status to say the database is {want}")
    finally:
        sim.stop()
    status = seen["status"]
    assert status["ok"] is (want == "up"), status["dependencies"]
    assert status["dependencies"]["publisher"]["state"] == "up"
    assert re.search(r'volgraph_dependency_up\{dependency="feeds"\} 1\.0', seen["metrics"])


def test_the_gateway_serves_exactly_its_names_of_the_one_metric_list(gw):
    """flows/metrics.py METRICS is the one list Grafana's queries are written from: the gateway
    serves every name marked for it, and no other volgraph_ name."""
    from flows.metrics import METRICS

    with publisher(gw) as pub:
        pub.send(report("w0", **{"dependency.feeds.up": 1.0, "dependency.feeds.age_s": 0.2}), text=True)
        assert gw.wait_until(lambda g: "w0" in g.workers, 10)
        body = http_get(gw.http_url + "/metrics")[2].decode()
    exposed = dict(re.findall(r"^# TYPE (volgraph_\w+) (\w+)", body, re.M))
    listed = {name: kind for name, (kind, where, _help) in METRICS.items() if "gateway" in where}
    assert exposed == listed
