"""Processes that start and stop like services (flows/services.py, flows/cli.py): real `volgraph
run` processes with their real children — simulator, gateway, embedded PostgreSQL and its
watcher — over loopback.

- SIGKILL of `volgraph run` takes every child with it, the embedded PostgreSQL included;
- SIGTERM, and SIGINT even when the launcher ignored it, drain the flow, flush the rows to
  PostgreSQL and stop the whole tree with exit code 0 (the stop time is a row of
  bench/bench_stop.py, never asserted here);
- a taken port ends the run at once, naming the port and the fix, with a non-zero exit;
- `--log-format json` writes JSON lines, the epoch as trace_id;
- the bare `python -m bytewax.run flows.surface:flow` serves /metrics (VOLGRAPH_METRICS_PORT),
  exactly the flow's names of flows/metrics.py METRICS, and stops on SIGTERM with exit 0;
- the pieces: a child ignoring SIGTERM is SIGKILLed after the stop timeout, dead pids leave
  pgserver's handle list, a bad log format names the setting, every JSON log record is one
  parseable line (a property test).

Every wait is on a condition with a deadline; process trees are read from /proc
(flows/services.py process_table).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.metrics import METRICS
from flows.services import descendants, exited, postmaster_pid
from tests.helpers.entry import BareFlow, scrape, wait_for_next_status
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.resources import free_port
from tests.helpers.volgraph_run import Run, small_config

ROOT = Path(__file__).resolve().parents[2]


def wait_gone(pids: set[int], timeout_s: float = DEADLINE_S) -> set[int]:
    """The pids still running after waiting up to timeout_s for all of them to exit."""
    deadline = time.monotonic() + timeout_s
    alive = {p for p in pids if not exited(p)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)  # polling other processes' exit, which offers nothing to wait on
        alive = {p for p in alive if not exited(p)}
    return alive


def tree(run: Run, pgdata: Path | None) -> set[int]:
    """Every process `run` started: its descendants and the embedded PostgreSQL (daemonised by
    pg_ctl, so not a descendant) with its own children."""
    pm = postmaster_pid(pgdata) if pgdata is not None else None
    return descendants(run.proc.pid) | ({pm} | descendants(pm) if pm else set())


def test_sigkill_of_volgraph_run_takes_every_child_with_it_and_logs_json(tmp_path):
    run = Run("--config", str(small_config(tmp_path)), "--port", "0", "--log-format", "json")
    try:
        # JSON lines; the first patch carries its epoch as the trace id
        first = run.wait_line(r'"trace_id": "(\d+)"', stream="err")
        records = [json.loads(line) for line in run.err if line.startswith("{")]
        dashboard = next(r["msg"] for r in records if r["msg"].startswith("dashboard "))
        pgdata = tmp_path / "data" / "pg"
        pids = tree(run, pgdata)
        children = {r["process"] for r in records}
    except BaseException:
        run.kill()
        raise
    assert int(first.group(1)) > 0
    assert {"volgraph", "gateway"} <= children, children
    assert all(set(r) >= {"ts", "level", "logger", "process", "pid", "msg"} for r in records)
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", dashboard).group(1))
    assert port not in (0, 8765), dashboard  # --port 0 picked a free port
    names = {Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace") for p in pids}
    assert any(" sim " in n for n in names) and any(" gateway " in n for n in names), names
    assert any("watch-postgres" in n for n in names) and postmaster_pid(pgdata) in pids, names

    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    assert wait_gone(pids) == set(), f"children outlived a SIGKILLed parent:\n{run.text()}"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT, ignored by the launcher"])
def test_a_stop_signal_drains_the_flow_flushes_the_rows_and_stops_the_tree(tmp_path, how):
    from connectors.postgres import connect, embedded_server

    run = Run("--config", str(small_config(tmp_path)), "--port", "0",
              launcher_ignores_sigint=how.startswith("SIGINT"))
    pgdata = tmp_path / "data" / "pg"
    try:
        run.wait_line(r"first patch of deribit:BTC .*\[epoch \d+\]", stream="err")  # fits are flowing
        pids = tree(run, pgdata)
        run.proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        code = run.finish()
    except BaseException:
        run.kill()
        raise
    assert code == 0, run.text()
    assert wait_gone(pids) == set(), f"children outlived a {how} stop:\n{run.text()}"
    written = json.loads(run.wait_line(r"postgres rows written (\{.*\}) pending 0$").group(1))
    assert written.get("smile_fits", 0) > 0, run.text()
    assert run.wait_line(r"flow drained [\d.]+ s after SIG(TERM|INT)")

    server = embedded_server(pgdata)  # the run stopped its PostgreSQL: start it again to read
    try:
        with connect(server.get_uri()) as conn:
            stored = conn.execute("SELECT count(*) FROM smile_fits").fetchone()[0]
            runs = conn.execute("SELECT source, ended_ms IS NOT NULL FROM runs").fetchall()
    finally:
        server.cleanup()
    assert stored == written["smile_fits"]  # every row the flow wrote is there: nothing left in memory
    assert runs == [("live", True)]  # the run is on record, with its end


@pytest.mark.parametrize("taken", ["gateway", "simulator", "flow metrics"])
def test_a_taken_port_ends_the_run_at_once_naming_the_port_and_the_fix(tmp_path, taken):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        if taken == "gateway":
            run = Run("--config", str(small_config(tmp_path)), "--port", str(port), "--no-postgres")
        elif taken == "simulator":
            config = small_config(tmp_path)
            config.write_text(config.read_text().replace("[simulator]\n", f"[simulator]\nport = {port}\n"))
            run = Run("--config", str(config), "--port", "0", "--no-postgres")
        else:
            config = small_config(tmp_path)
            config.write_text(config.read_text().replace("metrics_port = 0", f"metrics_port = {port}"))
            run = Run("--config", str(config), "--port", "0", "--no-postgres")
        code = run.finish()
    finally:
        holder.close()
    assert code == 3, run.text()
    message = "\n".join(run.err)
    assert f"port {port} is in use by another process" in message, message
    fix = {"gateway": "pass --port N", "simulator": "set [simulator] port = 0",
           "flow metrics": "set runtime.metrics_port to a free port"}[taken]
    assert message.count(f"{taken}: port {port}") == 1, message
    assert fix in message, message
    assert "dashboard http://" not in "\n".join(run.out)


def test_bare_bytewax_entry_point_serves_metrics(tmp_path):
    """`python -m bytewax.run flows.surface:flow` (what waxctl runs) with VOLGRAPH_METRICS_PORT:
    a scrape lists the flow's metrics — every FLOW name in flows/metrics.py METRICS — with
    samples of messages in and of feed errors by reason."""
    from connectors.gateway.server import Gateway
    from connectors.sim.deribit import Simulator
    from tests.helpers.config import gateway_kwargs, sim_kwargs

    sim = Simulator(**sim_kwargs(seed=5, rate=1000, currencies=("BTC",), scale="small"))
    sim_url = sim.start()
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=0))
    gw.start()
    metrics_port = free_port()
    env = dict(os.environ, VOLGRAPH_CONFIG=str(small_config(tmp_path)), VOLGRAPH_URL=sim_url,
               VOLGRAPH_GATEWAY_URL=gw.publish_url, VOLGRAPH_METRICS_PORT=str(metrics_port),
               VOLGRAPH_LOG_FORMAT="json", VOLGRAPH_PG_DSN="")
    config = Path(env["VOLGRAPH_CONFIG"])
    config.write_text(config.read_text() + "\n[sinks.postgres]\nenabled = false\n")
    body = ""
    try:
        with BareFlow(env) as flow:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and flow.alive():
                body = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
                if re.search(r"^volgraph_fits_total [1-9]", body, re.M):
                    break
                wait_for_next_status(gw)
            code = flow.stop()
        output = flow.output
    finally:
        gw.stop()
        sim.stop()
    assert re.search(r"^volgraph_fits_total [1-9]", body, re.M), body[-3000:]
    assert re.search(r"^volgraph_messages_in_total [1-9]", body, re.M)
    assert re.search(r'^volgraph_feed_errors_total\{reason="seq_gap"\} \d', body, re.M)  # by reason, from the start
    assert re.search(r'^volgraph_dependency_up\{dependency="feeds"\} 1\.0', body, re.M)
    assert re.search(r'^volgraph_feed_last_message_age_seconds\{venue="deribit"\} \d', body, re.M)
    assert re.search(r"^volgraph_fit_seconds_count [1-9]", body, re.M)
    assert re.search(r"^volgraph_epoch_compute_seconds_count [1-9]", body, re.M)
    exposed = dict(re.findall(r"^# TYPE (volgraph_\w+) (\w+)", body, re.M))
    flow = {name: kind for name, (kind, where, _help) in METRICS.items() if "flow" in where}
    assert exposed == flow  # the one list (flows/metrics.py METRICS) is what a flow serves
    assert code == 0, output[-3000:]  # SIGTERM: a graceful stop
    assert any(json.loads(line).get("process") == "flow" for line in output.splitlines() if line.startswith("{"))


# ---------------------------------------------------------------- the pieces, on their own


def test_a_child_that_ignores_sigterm_is_killed_after_the_stop_timeout():
    from flows.services import Supervisor

    stubborn = ("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('ready', flush=True); signal.pause()")
    polite = "import signal; print('ready', flush=True); signal.pause()"
    sup = Supervisor(stop_timeout_s=0.5)
    procs = [sup.spawn(name, [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for name, code in (("stubborn", stubborn), ("polite", polite))]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"  # blocks until the child runs its handlers
    codes = sup.stop()
    assert codes == {"stubborn": -signal.SIGKILL, "polite": -signal.SIGTERM}
    assert sup.children == []


def test_dead_pids_are_pruned_from_pgservers_handle_list(tmp_path):
    from flows.services import prune_postgres_handles

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".handle_pids.json").write_text(json.dumps([dead.pid, os.getpid()]))
    assert prune_postgres_handles(tmp_path) == [os.getpid()]
    assert json.loads((tmp_path / ".handle_pids.json").read_text()) == [os.getpid()]
    assert prune_postgres_handles(tmp_path, exited=os.getpid()) == []
    (tmp_path / ".handle_pids.json").write_text("not json")  # a damaged list: nothing to keep alive for
    assert prune_postgres_handles(tmp_path) == []


def test_a_bad_log_format_names_the_setting_and_the_choices(monkeypatch):
    from flows.services import StartError, log_format

    monkeypatch.setenv("VOLGRAPH_LOG_FORMAT", "xml")
    with pytest.raises(StartError, match=r"log format 'xml' \(--log-format or \$VOLGRAPH_LOG_FORMAT\): use one of plain, json"):
        log_format()
    assert log_format("json") == "json"  # the flag wins over the environment


@settings(max_examples=200, deadline=None)
@given(msg=st.text(), epoch=st.one_of(st.none(), st.integers(min_value=0, max_value=2**62)),
       name=st.text(min_size=1, max_size=30))
def test_every_json_log_record_is_one_parseable_line(msg, epoch, name):
    import logging

    from flows.services import JsonFormatter

    record = logging.LogRecord(name, logging.WARNING, __file__, 1, "%s", (msg,), None)
    if epoch is not None:
        record.epoch = epoch
    line = JsonFormatter("flow").format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["msg"] == msg and doc["logger"] == name and doc["level"] == "WARNING" and doc["process"] == "flow"
    assert doc.get("trace_id") == (None if epoch is None else str(epoch))
