"""connectors/grafana/provision.py and `volgraph grafana provision`, against a local HTTP server.

No Grafana server can be installed here, so a small HTTP server on loopback (http.server in a
thread) plays Grafana's API as far as provisioning uses it — folders, /api/dashboards/db, the
alert-rule provisioning API — with Grafana's status codes (404 for a missing folder or rule,
401 for a wrong token), and records every request. The tests check what grafana-client really
sends: paths, methods, the `Authorization: Bearer` header, payload shapes; and that a second
push updates instead of creating.
"""

from __future__ import annotations

import argparse
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from connectors.grafana import dashboards
from connectors.grafana.cli import add_grafana_commands
from connectors.grafana.provision import ProvisionError, provision, token_from_env
from flows.metrics import METRICS
from tests.helpers.resources import free_port

TOKEN = "glsa_test_token_for_loopback_only"


class FakeGrafana:
    """Grafana's provisioning endpoints in memory, on 127.0.0.1:<free port>."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.requests: list[dict] = []
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.rules: dict[str, dict] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _reply(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append({"method": method, "path": self.path, "auth": self.headers.get("Authorization"),
                                      "content_type": self.headers.get("Content-Type"), "body": body})
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._reply(401, {"message": "invalid API key"})
                code, answer = fake.route(method, self.path, body)
                self._reply(code, answer)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PUT(self):
                self._handle("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, path: str, body):
        if path.startswith("/api/folders/") and method == "GET":
            uid = path.rsplit("/", 1)[1]
            return (200, self.folders[uid]) if uid in self.folders else (404, {"message": "folder not found"})
        if path == "/api/folders" and method == "POST":
            self.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"]}
            return 200, self.folders[body["uid"]]
        if path == "/api/dashboards/db" and method == "POST":
            uid = body["dashboard"]["uid"]
            self.dashboards[uid] = body
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/volgraph", "version": 1}
        prefix = "/api/v1/provisioning/alert-rules"
        if path.startswith(prefix + "/") and method in ("GET", "PUT"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.rules:
                return 404, {"message": "rule not found"}
            if method == "PUT":
                self.rules[uid] = body
            return 200, self.rules[uid]
        if path == prefix and method == "POST":
            self.rules[body["uid"]] = body
            return 201, body
        return 404, {"message": f"no route {method} {path}"}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_first_push_creates_folder_dashboard_and_rules_with_the_bearer_token():
    with FakeGrafana() as grafana:
        result = provision(grafana.url, TOKEN, timeout_s=10)
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in grafana.requests)
    calls = [(r["method"], r["path"]) for r in grafana.requests]
    uids = [r["uid"] for r in dashboards.api_alert_rules()]
    expected = [("GET", "/api/folders/volgraph"), ("POST", "/api/folders"), ("POST", "/api/dashboards/db")]
    for uid in uids:
        expected += [("GET", f"/api/v1/provisioning/alert-rules/{uid}"), ("POST", "/api/v1/provisioning/alert-rules")]
    assert calls == expected
    assert result.folder_created and result.rules_created == uids and result.rules_updated == []
    assert result.dashboard_url == f"/d/{dashboards.DASHBOARD_UID}/volgraph"
    folder_post = grafana.requests[1]
    assert folder_post["body"] == {"title": dashboards.FOLDER_TITLE, "uid": dashboards.FOLDER_UID}
    push = grafana.requests[2]
    assert push["content_type"].startswith("application/json")
    assert push["body"]["folderUid"] == dashboards.FOLDER_UID and push["body"]["overwrite"] is True
    assert push["body"]["dashboard"] == json.loads(json.dumps(dashboards.dashboard()))  # the rendered model, as sent
    for rule in grafana.rules.values():
        assert rule["folderUID"] == dashboards.FOLDER_UID and rule["ruleGroup"] == dashboards.RULE_GROUP
        assert rule["condition"] == "B" and rule["for"] in ("1m", "5m", "10m")
        assert rule["data"][0]["model"]["expr"] and rule["data"][1]["datasourceUid"] == "__expr__"


def test_second_push_updates_in_place():
    with FakeGrafana() as grafana:
        provision(grafana.url, TOKEN)
        first = len(grafana.requests)
        result = provision(grafana.url, TOKEN)
    second = [(r["method"], r["path"]) for r in grafana.requests[first:]]
    assert ("POST", "/api/folders") not in second
    assert ("POST", "/api/v1/provisioning/alert-rules") not in second
    uids = [r["uid"] for r in dashboards.api_alert_rules()]
    assert [p for m, p in second if m == "PUT"] == [f"/api/v1/provisioning/alert-rules/{u}" for u in uids]
    assert not result.folder_created and result.rules_updated == uids and result.rules_created == []
    assert len(grafana.dashboards) == 1 and len(grafana.rules) == len(uids)


def test_a_refused_token_names_the_fix():
    with FakeGrafana(token="another") as grafana:
        with pytest.raises(ProvisionError) as info:
            provision(grafana.url, TOKEN)
    message = str(info.value)
    assert "401" in message and "GRAFANA_TOKEN" in message and "Editor role" in message
    assert TOKEN not in message  # never echo the token


def test_nothing_listening_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProvisionError) as info:
        provision(url, TOKEN, timeout_s=3)
    assert f"could not reach Grafana at {url}" in str(info.value)


def test_token_comes_from_the_environment_only():
    assert token_from_env({"GRAFANA_TOKEN": " abc "}) == "abc"
    with pytest.raises(ProvisionError, match=r"\$GRAFANA_TOKEN is not set.*service account"):
        token_from_env({})


def _parser():
    parser = argparse.ArgumentParser(prog="volgraph")
    add_grafana_commands(parser.add_subparsers(dest="command", required=True), known_metrics=METRICS)
    return parser


def test_cli_provision_pushes_with_the_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    with FakeGrafana() as grafana:
        args = _parser().parse_args(["grafana", "provision", "--url", grafana.url])
        out, err = io.StringIO(), io.StringIO()
        code = args.func(args, out=out, err=err)
    assert code == 0, err.getvalue()
    assert "folder volgraph: created" in out.getvalue()
    assert f"alert rules: {len(dashboards.ALERTS)} created, 0 updated" in out.getvalue()
    assert grafana.dashboards[dashboards.DASHBOARD_UID]["dashboard"]["title"] == "volgraph"


def test_cli_provision_without_a_token_fails_with_the_fix(monkeypatch):
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    args = _parser().parse_args(["grafana", "provision", "--url", "http://127.0.0.1:9"])
    err = io.StringIO()
    assert args.func(args, out=io.StringIO(), err=err) == 1
    assert "GRAFANA_TOKEN" in err.getvalue()
