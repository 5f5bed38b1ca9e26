"""`volgraph doctor` (flows/doctor.py) against real things on loopback:

- a healthy deployment — a real gateway, the bare bytewax entry point on a local simulator
  writing to a real PostgreSQL (pgserver), an initialised bytewax recovery directory — is all ok,
  exit 0;
- a dead port, an unreachable DSN and a missing recovery directory: each named in plain words
  with its fix, exit 1, the DSN's password never printed;
- a gateway without a flow: the publisher named as down, with the fix;
- a database without the schema, a directory without partitions: named, with the fix;
- DSN redaction holds for any password (property test).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from hypothesis import given
from hypothesis import strategies as st

from flows.doctor import add_doctor_command, redact
from tests.helpers.entry import BareFlow, wait_for_next_status
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.gateway import serve_gateway
from tests.helpers.resources import free_port

ROOT = Path(__file__).resolve().parents[2]


def doctor(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="volgraph")
    add_doctor_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *argv])
    out = io.StringIO()
    code = args.func(args, out=out)
    return code, out.getvalue()


def lines(text: str, level: str) -> list[str]:
    return [l for l in text.splitlines() if l.strip().startswith(level + " ")]


def init_recovery(path: Path, parts: int) -> None:
    path.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(parts)], check=True, timeout=120)


def healthz(url: str) -> int:
    try:
        return urllib.request.urlopen(f"{url}/healthz", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_healthy_deployment_is_all_ok(tmp_path, pg_db):
    from connectors.gateway.server import Gateway
    from connectors.sim.deribit import Simulator
    from tests.helpers.config import gateway_kwargs, sim_kwargs

    recovery = tmp_path / "recovery"
    init_recovery(recovery, 2)
    sim = Simulator(**sim_kwargs(seed=5, rate=1000, currencies=("BTC",), scale="small"))
    sim_url = sim.start()
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=0))
    gw_url = gw.start()
    metrics_port = free_port()
    config = tmp_path / "graph.toml"
    config.write_text(f'[runtime]\nmetrics_port = 0\ndata_dir = "{tmp_path / "data"}"\n\n'
                      '[sources.deribit]\ncurrencies = ["BTC"]\n\n[sources.okx]\nenabled = false\n')
    env = dict(os.environ, VOLGRAPH_CONFIG=str(config), VOLGRAPH_URL=sim_url, VOLGRAPH_GATEWAY_URL=gw.publish_url,
               VOLGRAPH_METRICS_PORT=str(metrics_port), VOLGRAPH_PG_DSN=pg_db)
    try:
        with BareFlow(env) as flow:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and flow.alive():
                if healthz(gw_url) == 200 and gw.surfaces:
                    break
                wait_for_next_status(gw)  # the next worker status may change it
            code, text = doctor("--config", str(config), "--gateway", gw_url,
                                "--metrics", f"http://127.0.0.1:{metrics_port}/metrics",
                                "--pg", pg_db, "--recovery-dir", str(recovery))
            flow.stop()
        output = flow.output
    finally:
        gw.stop()
        sim.stop()
    assert code == 0, text + output[-2000:]
    assert "no problem found" in text
    ok = lines(text, "ok")
    assert len(ok) == 6, text
    assert any("gateway" in l and "publisher up" in l and "feeds up" in l and "database up" in l for l in ok), text
    assert any("metrics:flow" in l and "volgraph series" in l for l in ok)
    assert any("postgres" in l and "schema present" in l for l in ok)
    assert any("recovery" in l and "2 partition(s), writable" in l for l in ok)


def test_dead_endpoints_are_named_with_their_fix_and_exit_1(tmp_path):
    port = free_port()
    dsn = f"postgresql://volgraph:s3cret-pw@127.0.0.1:{free_port()}/volgraph"
    code, text = doctor("--gateway", f"http://127.0.0.1:{port}", "--metrics", f"http://127.0.0.1:{port}/metrics",
                        "--pg", dsn, "--recovery-dir", str(tmp_path / "missing"), "--timeout-s", "2")
    assert code == 1
    fails = lines(text, "FAIL")
    assert any(f"nothing answers at http://127.0.0.1:{port}/healthz" in l for l in fails), text
    assert "fix: start the gateway (`volgraph gateway`" in text
    assert any("metrics:flow" in l and "nothing answers" in l for l in fails)
    assert "VOLGRAPH_METRICS_PORT" in text  # the flow-metrics fix names the setting
    assert any("postgres" in l and "cannot connect with postgresql://volgraph:***@" in l for l in fails), text
    assert "s3cret-pw" not in text
    assert any("recovery" in l and "does not exist" in l for l in fails)
    assert "python -m bytewax.recovery" in text
    assert len(lines(text, "skip")) == 2  # /status and the gateway's /metrics: unreachable gateway said once


def test_the_cli_exit_code_is_non_zero_for_a_dead_port():
    port = free_port()
    result = subprocess.run([sys.executable, "-m", "flows.doctor", "--gateway", f"http://127.0.0.1:{port}",
                             "--metrics", "none"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, VOLGRAPH_PG_DSN=""))
    assert result.returncode == 1
    assert f"nothing answers at http://127.0.0.1:{port}/healthz" in result.stdout
    assert "fix:" in result.stdout


def test_a_gateway_without_a_flow_names_the_publisher_and_the_fix():
    for _gw, url in serve_gateway(""):
        code, text = doctor("--gateway", url, "--metrics", "none")
    assert code == 1
    assert re.search(r"FAIL\s+gateway\s+.*answered 503", text), text
    assert re.search(r"FAIL\s+gateway:publisher\s+publisher is down", text), text
    assert "no flow is publishing to this gateway: start the dataflow" in text
    assert re.search(r"FAIL\s+status\s+no flow worker has reported", text), text
    assert re.search(r"ok\s+metrics:gateway", text), text


def test_a_database_without_the_schema_and_a_directory_without_partitions(tmp_path, pg_db):
    empty = tmp_path / "recovery"
    empty.mkdir()
    code, text = doctor("--gateway", f"http://127.0.0.1:{free_port()}", "--metrics", "none", "--pg", pg_db,
                        "--recovery-dir", str(empty))
    assert code == 1
    assert re.search(r"FAIL\s+postgres\s+.*connects but has no volgraph tables", text), text
    assert "applies deploy/sql/*.sql" in text
    assert re.search(r"FAIL\s+recovery\s+.*holds no recovery partitions", text), text
    from connectors.postgres.schema import migrate

    with psycopg.connect(pg_db, autocommit=True) as conn:
        migrate(conn)
    init_dir = tmp_path / "initialised"
    init_recovery(init_dir, 3)
    code, text = doctor("--gateway", f"http://127.0.0.1:{free_port()}", "--metrics", "none", "--pg", pg_db,
                        "--recovery-dir", str(init_dir))
    assert re.search(r"ok\s+postgres\s+.*schema present", text), text
    assert re.search(r"ok\s+recovery\s+.*3 partition\(s\), writable", text), text


def test_a_bad_config_file_is_exit_2_with_the_key(tmp_path):
    bad = tmp_path / "graph.toml"
    bad.write_text("[runtime]\nmetrics_portt = 1\n")
    code, text = doctor("--config", str(bad))
    assert code == 2
    assert "metrics_portt" in text


_secret = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_.~!$%^*"),
                  min_size=6, max_size=24)


@given(_secret)
def test_redact_never_shows_a_password(password):
    url = redact(f"postgresql://user:{password}@db.example:5432/volgraph")
    assert url == "postgresql://user:***@db.example:5432/volgraph"
    keywords = redact(f"host=db.example user=u password={password} dbname=volgraph")
    assert keywords == "host=db.example user=u password=*** dbname=volgraph"
