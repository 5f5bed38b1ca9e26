"""The gateway over real websockets on 127.0.0.1: snapshot-then-patches delivery (with the
stream's contiguous seq), coalescing that converges to the gateway's state, typed decoding
that refuses bad nested values, slow clients dropped at the bound, HTTP endpoints, origin /
token / capacity limits, the CLI, and the dataflow's gateway sink (with healing). The merge
rule itself is tested in tests/operators/test_merge.py, the dashboard's copy in
tests/dashboard/test_merge_js.py; the protocol's own messages in test_protocol.py."""

from __future__ import annotations

import base64
import os
import socket
import threading
import urllib.error
import urllib.request

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from connectors.gateway.publisher import GatewayPublisher, GatewaySink
from connectors.gateway.server import Gateway, build_parser, main
from connectors.gateway.protocol import StreamPatch, StreamSnapshot, decode_server
from connectors.gateway.surfaces import SNAPSHOT, Client, PatchMsg, Surface, Unsupported, decode_frame, encode_queued
from operators.events import ContractError, StatusReport, SurfacePatch, SurfaceSnapshot, to_json
from operators.merge import apply_patch
from tests.helpers.config import gateway_kwargs, postgres_sink



def plain(ev):
    """The operators.events event a StreamSnapshot / StreamPatch carries (seq fields dropped)."""
    cls = SurfaceSnapshot if isinstance(ev, StreamSnapshot) else SurfacePatch
    return cls(**{f: getattr(ev, f) for f in cls.__struct_fields__})


class Watcher:
    """A dashboard-like client on its own thread: merges snapshots and patches per stream,
    checking the seq is contiguous (a gap would be a gateway bug here: nothing is lost on
    loopback)."""

    def __init__(self, url: str, **connect_options) -> None:
        self.ws = connect(url, max_size=None, legacy=True, **connect_options)
        self.state: dict[tuple[str, str], SurfaceSnapshot] = {}
        self.seq: dict[tuple[str, str], int] = {}
        self.gaps = 0
        self.kinds: list[str] = []
        self.other: list = []  # Hello, Ping, Subscribed, Error
        self.closed = threading.Event()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for raw in self.ws:
                assert isinstance(raw, str)  # JSON text frames
                ev = decode_server(raw)
                with self.cond:
                    if isinstance(ev, (StreamSnapshot, StreamPatch)):
                        key = (ev.venue, ev.underlying)
                        if isinstance(ev, StreamSnapshot):
                            self.state[key] = plain(ev)
                        else:
                            if ev.seq_from != self.seq.get(key, 0) + 1:
                                self.gaps += 1
                            self.state[key] = apply_patch(self.state.get(key), plain(ev))
                        self.seq[key] = ev.seq
                        self.kinds.append(type(plain(ev)).__name__)
                    else:
                        self.other.append(ev)
                    self.cond.notify_all()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            with self.cond:
                self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


def publisher(g: Gateway, token: str | None = None):
    """A raw publisher connection; with the gateway's own token unless `token` says ("": none)."""
    token = g.publish_token if token is None else token
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return connect(g.publish_url, additional_headers=headers, max_size=None, legacy=True)


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


# ---------------------------------------------------------------- state and queues (no sockets)


def patch_strategy():
    return st.tuples(st.sets(st.integers(0, 6), max_size=4), st.sets(st.integers(0, 6), max_size=3), st.booleans())


@settings(max_examples=100, deadline=None)
@given(start=st.none() | st.sets(st.integers(0, 6), max_size=5), steps=st.lists(patch_strategy(), min_size=1, max_size=10),
       coalesce_after=st.integers(1, 4), seed=st.integers(0, 99))
def test_a_client_queue_always_converges_to_the_surface(surface_factory, start, steps, coalesce_after, seed):
    """Frames decoded as the gateway does, the surface merged, one client's queue encoded:
    what the client ends with equals apply_patch folded over the frames."""
    f = surface_factory(seed=seed)
    snapshot = None if start is None else f.snapshot(1, expiries=start)
    patches = [
        f.patch(2 + i, changed=sorted(c), removed=sorted(r), index_px=(1000.0 + i if has_px else None))
        for i, (c, r, has_px) in enumerate(steps)
    ]
    surface, client, key = Surface(), Client(ws=None, cid=1), ("deribit", "BTC")
    seen = [snapshot, 0]  # the client's state and seq
    if snapshot is not None:
        surface.replace(decode_frame(to_json(snapshot)))
        client.queue(key, SNAPSHOT, coalesce_after)
    for p in patches:
        raw = to_json(p)
        event = decode_frame(raw)
        assert event == p
        seq = surface.apply(event)
        client.queue(key, PatchMsg(event, seq), coalesce_after)
        if len(client.pending[key]) == 1 and p.epoch % 3 == 0:  # the sender takes the queue now and then
            _receive(seen, encode_queued(surface, client.pending.pop(key))[0])
    if key in client.pending:
        _receive(seen, encode_queued(surface, client.pending.pop(key))[0])
    expected = f.fold(patches, start=snapshot)
    assert surface.snapshot() == expected
    assert plain(decode_server(surface.snapshot_json())) == expected
    assert seen == [expected, surface.seq == len(patches) + (snapshot is not None) and surface.seq]


@given(st.binary(max_size=200) | st.text(max_size=200)
       | st.sampled_from(["SurfacePatch", "StatusReport", "Ticker", "Nope"]).map(lambda t: '{"type":"%s","v":1}' % t))
def test_decode_frame_refuses_anything_with_contract_error_or_unsupported(message):
    try:
        decode_frame(message)
    except (ContractError, Unsupported):
        pass


def _receive(seen: list, raw: bytes) -> None:
    """Take one message into [state, seq] as a client does; a gap fails the test."""
    event = decode_server(raw)
    if isinstance(event, StreamPatch):
        assert event.seq_from == seen[1] + 1, "a gap in the seq"
        seen[0] = apply_patch(seen[0], plain(event))
    else:
        seen[0] = plain(event)
    seen[1] = event.seq


def test_bad_frames_name_the_type_and_field(surface_factory):
    with pytest.raises(ContractError, match=r"bad SurfacePatch: Expected `int`, got `str` - at `SurfacePatch.epoch`"):
        decode_frame(b'{"type":"SurfacePatch","venue":"d","underlying":"BTC","epoch":"8","ts_exchange_ms":1,"ts_emit_ms":1}')
    with pytest.raises(ContractError, match=r"missing required field `venue` - at `SurfaceSnapshot.expiries\[0\].fit`"):
        decode_frame(b'{"type":"SurfaceSnapshot","venue":"d","underlying":"BTC","epoch":1,'
                     b'"ts_exchange_ms":1,"ts_emit_ms":1,"expiries":[{"fit":{}}]}')
    data = orjson.loads(to_json(surface_factory().patch(3, changed=[0, 1])))
    data["expiries"][1]["ask_iv"][2] = "0.55"  # a string where a vol is, deep in the patch
    with pytest.raises(ContractError, match=r"`SurfacePatch.expiries\[1\].ask_iv\[2\]`"):
        decode_frame(orjson.dumps(data))
    with pytest.raises(ContractError, match="schema version 2"):
        decode_frame(to_json(surface_factory().patch(3)).replace(b'"v":1}', b'"v":2}'))
    with pytest.raises(Unsupported) as exc:
        decode_frame(b'{"type":"Ticker"}')
    assert exc.value.kind == "Ticker"


# ---------------------------------------------------------------- delivery


def test_client_gets_snapshot_then_patches_and_converges(gateway, surface_factory):
    g = gateway()
    btc, eth = surface_factory(underlying="BTC"), surface_factory(underlying="ETH", seed=3)
    with publisher(g) as pub:
        btc_start, eth_start = btc.snapshot(10, expiries=[0, 1, 2]), eth.patch(10, changed=[0, 4])
        pub.send(to_json(btc_start), text=True)
        pub.send(to_json(eth_start), text=True)
        assert g.wait_until(lambda g: g.counters["published.SurfacePatch"] == 1 and len(g.surfaces) == 2, 10)

        w = Watcher(g.ws_url)
        assert w.wait_for(lambda w: len(w.kinds) == 2)
        assert w.kinds == ["SurfaceSnapshot", "SurfaceSnapshot"]  # one per known surface
        assert w.state[("deribit", "BTC")] == g.state("deribit", "BTC")

        sent = [btc.patch(11 + i, changed=[i % 4], removed=[2] if i == 3 else []) for i in range(20)]
        sent += [eth.patch(11 + i, changed=[i % 5], index_px=None) for i in range(20)]
        for p in sent:
            pub.send(to_json(p), text=True)
        assert g.wait_until(lambda g: g.counters["published.SurfacePatch"] == 41, 10)
        final_btc, final_eth = g.state("deribit", "BTC"), g.state("deribit", "ETH")
        assert w.wait_for(lambda w: w.state.get(("deribit", "BTC")) == final_btc and w.state.get(("deribit", "ETH")) == final_eth)
    assert final_btc == btc.fold(sent[:20], start=btc_start)
    assert final_eth == eth.fold([eth_start] + sent[20:])
    assert set(w.kinds[2:]) <= {"SurfacePatch", "SurfaceSnapshot"}
    assert w.gaps == 0 and w.seq == {("deribit", "BTC"): 21, ("deribit", "ETH"): 21}
    assert [type(m).__name__ for m in w.other] == ["Hello"]
    status = g.status()
    assert status["clients"] == 1 and status["patches_out"] == len(w.kinds) + len(w.other)
    assert status["underlyings"]["deribit:BTC"]["seq"] == 21
    w.close()
    assert g.wait_until(lambda g: len(g.clients) == 0, 10)


def raw_ws_client(port: int, path: str = "/ws", rcvbuf: int = 4096) -> socket.socket:
    """A websocket client that completes the handshake and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # fill up fast
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "gateway closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_a_client_that_never_reads_is_coalesced_then_dropped_and_others_still_converge(gateway, surface_factory):
    g = gateway(client_queue_max=16, coalesce_after=2)
    f = surface_factory()
    slow = raw_ws_client(g.port)
    good = Watcher(g.ws_url)
    assert g.wait_until(lambda g: len(g.clients) == 2, 10)
    with publisher(g) as pub:
        for i in range(5000):
            # Big patches fill the kernel buffers; after that the slow client's sender blocks
            # and its pending updates pass the bound.
            pub.send(to_json(f.patch(100 + i, changed=range(8), n_strikes=400)), text=True)
            if g.counters["dropped_clients"]:
                break
        assert g.wait_until(lambda g: g.counters["dropped_clients"] == 1 and len(g.clients) == 1, 30)
        pub.send(to_json(f.patch(100_000, changed=[1])), text=True)
        assert g.wait_until(lambda g: g.epoch("deribit", "BTC") == 100_000, 10)
    final = g.state("deribit", "BTC")
    assert good.wait_for(lambda w: w.state.get(("deribit", "BTC")) == final, timeout=30)
    assert not good.closed.is_set()
    status = g.status()
    assert status["dropped_clients"] == 1 and status["clients"] == 1
    assert status["coalesced"] >= 2  # its queued patches became one snapshot before it was dropped
    assert good.gaps == 0
    slow.close()
    good.close()


# ---------------------------------------------------------------- HTTP


def test_healthz_status_and_metrics(gateway, surface_factory):
    g = gateway()
    f = surface_factory()
    with publisher(g) as pub:
        pub.send(to_json(StatusReport(source="worker-0", ts_ms=1, started_ms=0, counters={"messages_in": 1200.0, "fits": 3.0})), text=True)
        pub.send(to_json(StatusReport(source="worker-1", ts_ms=2, started_ms=0, counters={"messages_in": 34.0})), text=True)
        unfitted = f.view(f.expiry(5), 7, fit=f.fit(f.expiry(5), 7, n_quotes=0))
        patch = f.patch(7, changed=[0, 1])
        patch = msgspec.structs.replace(patch, expiries=patch.expiries + (unfitted,))
        pub.send(to_json(patch), text=True)
        pub.send(b"not json", text=True)
        pub.send(b'{"type":"SurfacePatch","venue":"deribit","underlying":"BTC","epoch":"8"}', text=True)
        pub.send(b'{"type":"Ticker"}', text=True)
        nested = orjson.loads(to_json(f.patch(9, changed=[2])))
        nested["expiries"][0]["fit"]["rho"] = "-0.3"  # refused: the surface stays at epoch 7
        pub.send(orjson.dumps(nested), text=True)
        assert g.wait_until(lambda g: g.counters["published.SurfacePatch"] == 1 and len(g.workers) == 2
                            and g.counters["publish_errors.bad_event"] == 3
                            and g.counters["publish_errors.unsupported.Ticker"] == 1, 10)

    assert g.wait_until(lambda g: g.publishers == 0, 10)
    code, headers, body = http_get(g.http_url + "/healthz")
    health = orjson.loads(body)
    # the reports above date from 1970 and the publisher has left: nothing vouches for the feeds
    assert code == 503 and health["ok"] is False and headers["Content-Type"] == "application/json"
    assert health["dependencies"]["feeds"]["state"] == "unknown"
    assert health["dependencies"]["publisher"]["state"] == "down"
    assert http_get(g.http_url + "/livez")[0] == 200  # liveness: it serves, whatever its dependencies

    code, _, body = http_get(g.http_url + "/status")
    status = orjson.loads(body)
    assert code == 200
    assert status["messages_in"] == 1234.0
    assert status["clients"] == 0 and status["dropped_clients"] == 0 and status["patches_out"] == 0
    assert status["uptime_s"] >= 0
    assert set(status["workers"]) == {"worker-0", "worker-1"}
    assert status["workers"]["worker-0"]["counters"] == {"messages_in": 1200.0, "fits": 3.0}
    btc = status["underlyings"]["deribit:BTC"]
    assert btc["expiries_known"] == 3 and btc["expiries_fitted"] == 2 and btc["epoch"] == 7
    assert 0 <= btc["last_patch_age_s"] < 3600
    assert status["publish_errors"] == {"bad_event": 3, "unsupported.Ticker": 1}

    code, headers, body = http_get(g.http_url + "/metrics")
    text = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert 'volgraph_gateway_published_total{type="SurfacePatch"} 1.0' in text
    assert "volgraph_gateway_messages_in 1234.0" in text
    assert 'volgraph_gateway_expiries{state="fitted",underlying="BTC",venue="deribit"} 2.0' in text
    assert "volgraph_gateway_dropped_clients_total 0.0" in text

    assert http_get(g.http_url + "/nope")[0] == 404
    assert http_get(g.http_url + "/static/../connectors/gateway.py")[0] == 404


def test_dashboard_is_served(gateway):
    g = gateway()
    code, headers, body = http_get(g.http_url + "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/ws" in body or b"app.js" in body
    for asset in ("app.js", "style.css"):
        code, headers, _ = http_get(f"{g.http_url}/static/{asset}")
        assert code == 200, asset


# ---------------------------------------------------------------- limits


def test_origin_allow_list(gateway):
    g = gateway(allowed_origins=["https://desk.example"])
    with pytest.raises(InvalidStatus) as exc:
        connect(g.ws_url, origin="https://evil.example")
    assert exc.value.response.status_code == 403
    for origin in (None, f"http://127.0.0.1:{g.port}", "https://desk.example"):
        with connect(g.ws_url, origin=origin):
            pass
    assert g.counters["rejected.origin"] == 1


def test_publish_token_and_connection_limit(gateway):
    g = gateway(publish_token="s3cret", max_clients=1)
    with pytest.raises(InvalidStatus) as exc:
        publisher(g, token="")
    assert exc.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        publisher(g, token="wrong")
    with publisher(g, token="s3cret"):
        pass
    with connect(g.ws_url + "?token=ignored"):
        with pytest.raises(InvalidStatus) as exc:
            connect(g.ws_url)
        assert exc.value.response.status_code == 503
    assert g.counters["rejected.token"] == 2 and g.counters["rejected.capacity"] == 1


def test_malformed_or_oversized_client_messages_close_only_that_client(gateway, surface_factory):
    g = gateway(client_max_message_bytes=256)
    bad, big, good = Watcher(g.ws_url), Watcher(g.ws_url), Watcher(g.ws_url)
    assert g.wait_until(lambda g: len(g.clients) == 3, 10)
    bad.ws.send("hello")  # not a protocol message: an Error, then close 1008
    assert bad.closed.wait(10)
    assert bad.ws.close_code == 1008 and [type(m).__name__ for m in bad.other] == ["Hello", "Error"]
    assert bad.other[1].reason == "malformed"
    big.ws.send("x" * 1000)  # over the limit: the gateway closes with 1009
    assert big.closed.wait(10)
    assert big.ws.close_code == 1009
    assert g.wait_until(lambda g: len(g.clients) == 1 and g.counters["client_errors.oversized"] == 1, 10)
    with publisher(g) as pub:
        pub.send(to_json(surface_factory().patch(1, changed=[0])), text=True)
    assert good.wait_for(lambda w: len(w.kinds) == 1)
    assert not good.closed.is_set()
    assert g.status()["client_errors"] == {"malformed": 1, "oversized": 1}
    for w in (bad, big, good):
        w.close()


# ---------------------------------------------------------------- the gateway sink


def test_gateway_sink_round_trip_and_healing(gateway, surface_factory):
    g = gateway(publish_token="tok")
    f = surface_factory()
    pub = GatewayPublisher(g.publish_url, "tok", retry_min_ms=1, retry_max_ms=1)
    w = Watcher(g.ws_url)
    first = [f.patch(1 + i, changed=[i % 3]) for i in range(5)]
    pub.write_batch(first[:2])
    pub.write_batch(list(first[2:]) + [f.fit(f.expiry(0), 1)])  # a SmileFit is not forwarded
    assert g.wait_until(lambda g: g.epoch("deribit", "BTC") == first[-1].epoch, 10)
    assert g.state("deribit", "BTC") == f.fold(first)
    assert w.wait_for(lambda w: w.state.get(("deribit", "BTC")) == f.fold(first))
    assert pub.counters["skipped"] == 1 and pub.counters["connects"] == 1
    port = g.port
    g.stop()
    w.closed.wait(10)

    second = [f.patch(10 + i, changed=[3 + i % 2], removed=[0] if i == 1 else []) for i in range(4)]
    pub.write_batch(second[:2])  # the gateway is gone: dropped, counted, no exception
    pub.write_batch(second[2:3])
    assert pub.counters["dropped"] >= 1 and pub.conn is None

    g2 = Gateway(**gateway_kwargs(host="127.0.0.1", port=port, publish_token="tok"))
    g2.start()
    try:
        pub._next_attempt = 0.0  # skip the back-off wait: no sleeping in tests
        pub.write_batch(second[3:])
        # The reconnect sent a snapshot of everything: the new gateway holds the full state.
        assert g2.wait_until(lambda g: g.epoch("deribit", "BTC") == second[-1].epoch, 10)
        assert g2.state("deribit", "BTC") == f.fold(first + second)
        assert pub.counters["connects"] == 2
    finally:
        pub.close()
        g2.stop()


def test_gateway_sink_refuses_a_bad_url():
    with pytest.raises(ValueError, match="ws://"):
        GatewaySink("http://localhost:1/publish")


def test_dataflow_to_gateway_and_postgres_agree(gateway, surface_factory, pg_db, tmp_path):
    """The same stream into both sinks: the client's merged state equals latest_surface."""
    from bytewax.dataflow import Dataflow
    from bytewax.operators import input as bw_input
    from bytewax.operators import output as bw_output
    import bytewax.operators as op
    from bytewax.testing import TestingSource, run_main

    from connectors import postgres as pg

    g = gateway()
    w = Watcher(g.ws_url)
    f = surface_factory(underlying="ETH", seed=11)
    events = [f.snapshot(50, expiries=[0, 1, 2, 3])]
    events += [f.patch(51 + i, changed=[i % 5], removed=[(i + 2) % 5] if i % 4 == 0 else [], index_px=None if i % 3 else 2000.0 + i)
               for i in range(30)]
    flow = Dataflow("both_sinks")
    stream = bw_input("inp", flow, TestingSource(events, batch_size=4))
    bw_output("gateway", stream, GatewaySink(g.publish_url))
    pg_sink = postgres_sink(pg_db, tmp_path, flush_ms=20, batch_rows=500)
    bw_output("pg", op.key_on("pg_key", stream, pg_sink.key_of), pg_sink)  # as build_flow keys it
    run_main(flow)

    expected = f.fold(events)
    assert g.wait_until(lambda g: g.epoch("deribit", "ETH") == expected.epoch, 10)
    assert g.state("deribit", "ETH") == expected
    assert w.wait_for(lambda w: w.state.get(("deribit", "ETH")) == expected)
    with pg.connect(pg_db) as conn:
        assert pg.latest_surface(conn, "deribit", "ETH") == w.state[("deribit", "ETH")]
    w.close()


def test_cli_parser_defaults_and_help(capsys, monkeypatch):
    for name in ("VOLGRAPH_GATEWAY_HOST", "VOLGRAPH_GATEWAY_PORT", "VOLGRAPH_PUBLISH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    defaults = gateway_kwargs()  # what `volgraph gateway` (flows/cli.py) hands over: graph.toml [sinks.gateway]
    args = build_parser(defaults).parse_args(["--port", "9000", "--allowed-origins", "https://a.example, https://b.example"])
    assert args.port == 9000 and args.host == defaults["host"] == "127.0.0.1"
    for action in build_parser(defaults)._actions:  # every option says what it does and its default
        if action.dest != "help":
            assert action.help and "default:" in action.help, action.dest
    monkeypatch.setenv("VOLGRAPH_GATEWAY_PORT", "9100")  # the environment overrides graph.toml
    assert build_parser(defaults).parse_args([]).port == 9100
    monkeypatch.delenv("VOLGRAPH_GATEWAY_PORT")
    with pytest.raises(SystemExit) as exc:  # the module form has no graph.toml: --host and --port are required
        build_parser().parse_args([])
    assert exc.value.code == 2 and "--host" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"], defaults=defaults)
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Serve live volatility surfaces to dashboards" in text
    for shown in ("default: 127.0.0.1)", "default: 8765)", "default: 256)", "default: INFO)", "own origin only)"):
        assert shown in text, shown
