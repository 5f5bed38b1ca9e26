"""Who may talk to the gateway, over real sockets on 127.0.0.1: /publish always needs the
token (from the environment, a file, or a loopback gateway's own cookie file; never argv); a
gateway off loopback with no token refuses to start; forged or oversized frames are refused
and counted on /status while dashboards see nothing of them; foreign and DNS-rebinding
origins are refused; clients are limited per address."""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from connectors.gateway.auth import (
    PUBLISH_TOKEN_ENV,
    PUBLISH_TOKEN_FILE_ENV,
    RUN_DIR_ENV,
    TokenError,
    cookie_path,
    new_publish_token,
    publisher_token,
)
from connectors.gateway.publisher import GatewayPublisher
from connectors.gateway.server import Gateway, main
from operators.events import StatusReport, to_json
from tests.connectors.gateway.test_gateway import Watcher, http_get, publisher  # noqa: F401 (fixture)
from tests.helpers.config import gateway_kwargs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def private_run_dir(tmp_path, monkeypatch):
    """Cookie files in this test's own directory; no token in the environment."""
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    monkeypatch.delenv(PUBLISH_TOKEN_ENV, raising=False)
    monkeypatch.delenv(PUBLISH_TOKEN_FILE_ENV, raising=False)
    return tmp_path / "run"


def handshake(port: int, headers: dict[str, str], path: str = "/ws") -> bytes:
    """The status line of a websocket handshake with exactly these headers (Host included)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"] + [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
        return head.split(b"\r\n", 1)[0]


# ---------------------------------------------------------------- the token


def test_new_publish_token_is_fresh_and_long():
    tokens = {new_publish_token() for _ in range(100)}
    assert len(tokens) == 100 and all(len(t) >= 43 for t in tokens)  # 32 random bytes, URL-safe


def test_publish_without_or_with_a_wrong_token_is_refused(gateway, surface_factory):
    g = gateway(publish_token="s3cret")
    for token in ("", "wrong", "s3cret-but-longer"):
        with pytest.raises(InvalidStatus) as exc:
            publisher(g, token=token)
        assert exc.value.response.status_code == 401
    assert g.counters["rejected.token"] == 3 and not g.surfaces
    with publisher(g, token="s3cret") as pub:
        pub.send(to_json(surface_factory().patch(1, changed=[0])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 1, 10)


def test_a_loopback_gateway_without_a_token_makes_one_in_a_private_cookie_file(private_run_dir, surface_factory):
    g = Gateway(**gateway_kwargs(host="127.0.0.1", port=0, publish_token=None))
    g.start()
    try:
        path = cookie_path(g.port)
        assert g.token_generated and g.cookie_path == path and path.read_text().strip() == g.publish_token
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        with pytest.raises(InvalidStatus):  # still authenticated: no token, no publish
            publisher(g, token="")
        pub = GatewayPublisher(g.publish_url, retry_min_ms=1, retry_max_ms=1)  # no token given: reads the cookie
        pub.write_batch([surface_factory().patch(1, changed=[0])])
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 1, 10)
        assert pub.counters["connects"] == 1
        pub.close()
    finally:
        g.stop()
    assert not path.exists()  # removed with its gateway


def test_a_cookie_file_others_can_read_is_not_trusted(private_run_dir):
    private_run_dir.mkdir(mode=0o700)
    path = private_run_dir / "publish-token-4242"
    path.write_text("leaked\n")
    os.chmod(path, 0o644)
    assert publisher_token("ws://127.0.0.1:4242/publish") is None
    os.chmod(path, 0o600)
    assert publisher_token("ws://127.0.0.1:4242/publish") == "leaked"
    os.chmod(private_run_dir, 0o755)  # a directory others can enter: no cookie at all
    assert publisher_token("ws://127.0.0.1:4242/publish") is None
    assert publisher_token("ws://10.1.2.3:4242/publish") is None  # never for a remote gateway


def test_the_publisher_takes_the_token_from_the_environment_or_a_file(gateway, surface_factory, monkeypatch, tmp_path):
    g = gateway(publish_token="from-env")
    monkeypatch.setenv(PUBLISH_TOKEN_ENV, "from-env")
    pub = GatewayPublisher(g.publish_url, retry_min_ms=1, retry_max_ms=1)
    pub.write_batch([surface_factory().patch(1, changed=[0])])
    assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 1, 10)
    pub.close()
    monkeypatch.delenv(PUBLISH_TOKEN_ENV)
    token_file = tmp_path / "token"
    token_file.write_text("from-env\n")
    monkeypatch.setenv(PUBLISH_TOKEN_FILE_ENV, str(token_file))
    pub = GatewayPublisher(g.publish_url, retry_min_ms=1, retry_max_ms=1)
    pub.write_batch([surface_factory().patch(2, changed=[1])])
    assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 2, 10)
    pub.close()
    assert g.counters["rejected.token"] == 0


def test_off_loopback_without_a_token_refuses_to_start(capsys):
    with pytest.raises(TokenError, match=f"bound off loopback with no publish token.*\\${PUBLISH_TOKEN_ENV}"):
        Gateway(**gateway_kwargs(host="0.0.0.0", port=0, publish_token=None))
    code = main(["--host", "0.0.0.0", "--port", "0"], defaults=gateway_kwargs(publish_token=""))
    err = capsys.readouterr().err
    assert code == 2
    assert PUBLISH_TOKEN_ENV in err and "publish_token_file" in err and "127.0.0.1" in err, err


def test_the_cli_reads_its_token_from_a_file_and_never_shows_it(tmp_path, surface_factory):
    """The module form in a real process: token from $VOLGRAPH_PUBLISH_TOKEN_FILE, not on its
    command line; the right token publishes; SIGTERM ends it with 0."""
    token = new_publish_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = []
    for key, value in gateway_kwargs(port=port).items():
        if key in ("publish_token", "publish_token_file"):
            continue
        if key == "allowed_origins":
            value = ",".join(value)
        flags += [f"--{key.replace('_', '-')}", str(value)]
    env = dict(os.environ, **{PUBLISH_TOKEN_FILE_ENV: str(token_file)}, PYTHONPATH=str(ROOT))
    env.pop(PUBLISH_TOKEN_ENV, None)
    proc = subprocess.Popen([sys.executable, "-m", "connectors.gateway.server", *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pub = None
        for line in proc.stderr:  # the log line says it listens
            if "gateway listening on" in line:
                break
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert token.encode() not in cmdline
        pub = GatewayPublisher(f"ws://127.0.0.1:{port}/publish", token, retry_min_ms=1, retry_max_ms=1)
        pub.write_batch([surface_factory().patch(1, changed=[0])])
        assert pub.counters["sent"] == 1 and pub.counters["connects"] == 1
        bad = GatewayPublisher(f"ws://127.0.0.1:{port}/publish", "wrong", retry_min_ms=1, retry_max_ms=1)
        bad.write_batch([surface_factory().patch(2, changed=[0])])
        assert bad.counters["connect_failures"] == 1 and "HTTP 401" in bad.last_error
        pub.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_token_on_argv_is_accepted_with_a_warning(capsys):
    from connectors.gateway.server import build_parser, resolve_token

    args = build_parser(gateway_kwargs()).parse_args(["--publish-token", "visible"])
    assert resolve_token(args, gateway_kwargs()) == "visible"
    assert "/proc/PID/cmdline" in capsys.readouterr().err


# ---------------------------------------------------------------- forged frames


def test_forged_frames_are_refused_counted_and_never_reach_clients(gateway, surface_factory):
    g = gateway(max_surfaces=2, max_expiries_per_surface=3, publish_max_message_bytes=65536)
    f = surface_factory()
    w = Watcher(g.ws_url)
    with publisher(g) as pub:
        pub.send(to_json(f.snapshot(1, expiries=[0, 1])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 1, 10)
        good = g.state("deribit", "BTC")
        frames = [
            to_json(f.patch(2, changed=[2, 3])),  # 4 expiries > 3
            to_json(surface_factory(underlying="ETH").patch(2, changed=[0])),  # surface 2: fine
            to_json(surface_factory(underlying="SOL").patch(2, changed=[0])),  # surface 3 > 2
            to_json(f.patch(2, changed=[0])).replace(b'"venue":"deribit"', b'"venue":"deribit/../x"'),
            to_json(StatusReport(source="w0", ts_ms=1, started_ms=0, counters={"messages_in": -1.0})),
            b'{"type":"SurfacePatch","venue":"deribit","underlying":"BTC","epoch":9,"ts_exchange_ms":1,'
            b'"ts_emit_ms":1,"expiries":[],"index_px":1e400}',
        ]
        patch = orjson.loads(to_json(f.patch(2, changed=[0])))
        patch["expiries"][0]["ask_iv"][0] = -1.0
        frames.append(orjson.dumps(patch))
        for raw in frames:
            pub.send(raw, text=True)
        assert g.wait_until(lambda g: sum(v for k, v in g.counters.items() if k.startswith("publish_errors.")) == 6, 10)
    errors = g.status()["publish_errors"]
    assert errors == {"too_many_expiries": 1, "too_many_surfaces": 1, "bad_name": 1, "bad_value": 2, "bad_event": 1}
    assert g.state("deribit", "BTC") == good and set(g.surfaces) == {("deribit", "BTC"), ("deribit", "ETH")}
    assert g.workers == {}

    with publisher(g) as pub:  # a frame over publish_max_message_bytes: refused, counted, publisher cut off
        pub.send(to_json(f.patch(3, changed=[0, 1], n_strikes=4000)), text=True)
        assert g.wait_until(lambda g: g.counters["publish_errors.oversized"] == 1 and g.publishers == 0, 10)
    assert g.state("deribit", "BTC") == good
    assert w.wait_for(lambda w: ("deribit", "ETH") in w.state)
    assert w.state[("deribit", "BTC")] == good and set(w.state) == {("deribit", "BTC"), ("deribit", "ETH")}
    body = http_get(g.http_url + "/metrics")[2].decode()
    assert 'volgraph_gateway_rejected_total{reason="publish:too_many_surfaces"} 1.0' in body
    w.close()


# ---------------------------------------------------------------- origins and client limits


def test_origins_foreign_and_dns_rebinding_are_refused(gateway):
    g = gateway(allowed_origins=["https://desk.example"])
    port = g.port
    ok = b"HTTP/1.1 101 Switching Protocols"
    forbidden = b"HTTP/1.1 403 Forbidden"
    assert handshake(port, {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}) == ok
    assert handshake(port, {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}) == ok
    assert handshake(port, {"Host": f"127.0.0.1:{port}", "Origin": "https://desk.example"}) == ok
    assert handshake(port, {"Host": f"127.0.0.1:{port}"}) == ok  # not a browser
    assert handshake(port, {"Host": f"127.0.0.1:{port}", "Origin": "https://evil.example"}) == forbidden
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, so Host and Origin agree
    assert handshake(port, {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}) == forbidden
    assert handshake(port, {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port + 1}"}) == forbidden
    assert handshake(port, {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
                     path="/publish") == forbidden
    assert g.wait_until(lambda g: g.counters["rejected.origin"] == 4, 10)


def test_clients_are_limited_per_address_and_in_total(gateway):
    g = gateway(max_clients=3, max_clients_per_addr=2)
    a, b = connect(g.ws_url, legacy=True), connect(g.ws_url, legacy=True)
    with pytest.raises(InvalidStatus) as exc:
        connect(g.ws_url, legacy=True)
    assert exc.value.response.status_code == 503 and b"this address" in exc.value.response.body
    assert g.counters["rejected.capacity_per_addr"] == 1
    a.close()
    assert g.wait_until(lambda g: len(g.clients) == 1, 10)
    c = connect(g.ws_url, legacy=True)  # a slot of this address is free again
    assert g.wait_until(lambda g: len(g.clients) == 2, 10)
    assert g.status()["limits"]["max_clients_per_addr"] == 2
    b.close()
    c.close()


def test_a_bad_subscription_query_is_refused(gateway):
    g = gateway()
    with pytest.raises(InvalidStatus) as exc:
        connect(g.ws_url + "?venue=%3Cscript%3E", legacy=True)
    assert exc.value.response.status_code == 400


def test_graph_toml_checks_the_new_gateway_keys():
    from flows.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"sinks.gateway.allowed_origins = \['https://desk.example/app'\].*scheme://host"):
        load_config(overrides={"sinks": {"gateway": {"allowed_origins": ["https://desk.example/app"]}}})
    with pytest.raises(ConfigError, match=r"sinks.gateway.max_clients_per_addr = 0 is out of range"):
        load_config(overrides={"sinks": {"gateway": {"max_clients_per_addr": 0}}})
    gw = load_config(overrides={"sinks": {"gateway": {"allowed_origins": ["https://desk.example:8443"]}}}).sinks.gateway
    assert gw.allowed_origins == ["https://desk.example:8443"] and gw.max_clients == 256
