"""Scale-out (issue #16): the same recorded Deribit input through the real dataflow as 1 worker,
2 workers in one process, 2 processes on loopback (`python -m bytewax.run ... -i/-a`, as a
StatefulSet starts its pods) and 2 processes in two network namespaces joined by a tbf-shaped
veth pair — every layout leaves the same rows in PostgreSQL (pgserver), compared exactly.

What must be identical, and why (tests/helpers/scaleout.py states the rule): bytewax fires the
epoch ticks by the system clock, so the intermediate fits of a run depend on scheduling; the
books each expiry holds at the end of input do not. The runs freeze the flow clock, so every
expiry is fitted once, cold, from its final books at EOF — and those fits, views, node values
and surface rows are compared row for row. Left out: the wall-clock fit_ms, and two columns of
surface_state that follow how the EOF fits were grouped into patches (the row's ts_exchange_ms
is its last patch's, n_changed counts that patch): surface_heads_are_fits checks those.

smile_fits must hold one fit per (venue, underlying, expiry_ms, epoch) whatever the layout: if
two different fits are written under one key, the first to reach PostgreSQL stands, and which
one that is depends on which worker's sink partition wins — the test then fails naming both
fits of each key (tests/helpers/scaleout.py fit_mismatches).

The namespace tests need root and iproute2 and fail (never skip) without them.
"""

from __future__ import annotations

import calendar
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from bytewax.testing import cluster_main, run_main

from connectors.venues.placement import worker_of
from flows.config import load_config
from operators.events import chain_key
from tests.helpers import netns
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.resources import free_port
from tests.helpers.scaleout import (ENV, FIT_COLUMNS, PLAN, build, fit_mismatches, persisted, record_deribit,
                                    surface_heads_are_fits)

ROOT = Path(__file__).resolve().parents[2]
START_MS = calendar.timegm((2026, 1, 5, 9, 0, 0)) * 1000  # a Monday, 09:00 UTC
LINK_MBIT = 20  # the shaped link: a modest pod network, well below what veth carries unshaped
DELAY_MS = 5.0  # one way, on top of the link: a cross-zone hop


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[str]:
    return [str(p) for p in record_deribit(tmp_path_factory.mktemp("rec"), START_MS)]


def fresh_db(pg_server) -> str:
    import psycopg

    name = f"so_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.get_uri(database=name)


@pytest.fixture(scope="module")
def one_worker(pg_server, recordings, tmp_path_factory) -> dict:
    """The reference: one worker, in this process (bytewax.testing.run_main); its DSN and rows."""
    dsn = fresh_db(pg_server)
    run_main(build(recordings, dsn, START_MS, str(tmp_path_factory.mktemp("spill1"))))
    return {"dsn": dsn, "rows": persisted(dsn)}


def run_processes(recordings, dsn, spill_dir, addresses, prefixes=((), ())) -> list[str]:
    """Two processes of `python -m bytewax.run tests.helpers.scaleout:flow -i k -a A0;A1 -w 1`,
    each behind its command prefix (a network namespace); waits for both, returns their output.
    `addresses`: one list for both, or one per process (a relay in between: netns.delayed_addresses)."""
    per_proc = addresses if isinstance(addresses[0], list) else [addresses, addresses]
    env = dict(os.environ, **{ENV: orjson.dumps({"files": recordings, "dsn": dsn, "clock_ms": START_MS,
                                                  "spill_dir": str(spill_dir)}).decode()})
    procs = [subprocess.Popen([*prefixes[i], sys.executable, "-m", "bytewax.run", "tests.helpers.scaleout:flow",
                               "-w", "1", "-i", str(i), "-a", ";".join(per_proc[i])],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs, deadline = [], time.monotonic() + DEADLINE_S
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    codes = [p.returncode for p in procs]
    assert len(outputs) == 2 and codes == [0, 0], \
        f"cluster processes exit codes {codes} (deadline {DEADLINE_S:.0f} s):\n" + "\n---\n".join(o[-2500:] for o in outputs)
    return outputs


def same_rows(rows: dict, reference: dict, dsn: str, dsn_ref: str) -> None:
    """The run's persisted rows equal the reference's, table by table; smile_fits differences
    are explained key by key (fit_mismatches)."""
    for table in reference:
        if table == "smile_fits" and rows[table] != reference[table]:
            raise AssertionError("smile_fits differ from the 1-worker run:\n" + fit_mismatches(dsn_ref, dsn))
        assert rows[table] == reference[table], table
    assert surface_heads_are_fits(dsn) == []


def check_reference(rows: dict) -> None:
    """The reference run fitted every recorded expiry of both currencies once, cold, from real
    two-sided quotes, and made one surface row per currency."""
    names = [c.strip() for c in FIT_COLUMNS.split(",")]
    fits = [dict(zip(names, r)) for r in rows["smile_fits"]]
    assert len({(f["underlying"], f["expiry_ms"]) for f in fits}) == len(fits)  # one fit per expiry: the EOF fit
    assert len(fits) == 2 * sum(PLAN.values()), fits
    assert {f["underlying"] for f in fits} == {"BTC", "ETH"}
    min_quotes = load_config().chain.min_quotes
    for f in fits:
        assert f["n_quotes"] >= min_quotes and f["butterfly_ok"] is True and f["warm"] is False, f
        assert 0 < f["rmse_vol_pts"] < 5 and f["forward"] > 0 and f["t_years"] > 0, f
    assert len(rows["expiry_views"]) == len(fits) and len(rows["expiry_nodes"]) >= len(fits)
    assert sorted(r[1] for r in rows["surface_state"]) == ["BTC", "ETH"]


def test_the_recorded_expiries_spread_over_both_workers(one_worker):
    """The 2-worker layouts below really split the work: both workers own chain keys."""
    keys = [chain_key(f[0], f[1], f[2]) for f in one_worker["rows"]["smile_fits"]]
    owners = {worker_of(k, 2) for k in keys}
    assert owners == {0, 1}, {k: worker_of(k, 2) for k in keys}


def test_one_worker_two_workers_and_two_processes_persist_identical_rows(one_worker, pg_server, recordings,
                                                                         tmp_path):
    check_reference(one_worker["rows"])

    # 2 workers in one process (the 1×2 cluster runner of tests/flows/conftest.py)
    dsn_2w = fresh_db(pg_server)
    cluster_main(build(recordings, dsn_2w, START_MS, str(tmp_path / "spill2w")), [], 0, worker_count_per_proc=2)
    same_rows(persisted(dsn_2w), one_worker["rows"], dsn_2w, one_worker["dsn"])

    # 2 processes on loopback, started as a StatefulSet's pods would be
    dsn_2p = fresh_db(pg_server)
    run_processes(recordings, dsn_2p, tmp_path / "spill2p", [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    same_rows(persisted(dsn_2p), one_worker["rows"], dsn_2p, one_worker["dsn"])


def test_two_processes_across_a_shaped_network_link_persist_identical_rows(one_worker, pg_server, recordings,
                                                                          tmp_path):
    """Each process in its own network namespace, the two joined by a veth pair shaped to
    LINK_MBIT with tbf. PostgreSQL is reached over its unix socket (pgserver's DSN), which
    namespaces do not separate; the cluster's own traffic can only take the veth link."""
    try:
        netns.check_available()
    except netns.NetnsUnavailable as exc:
        pytest.fail(f"the scale-out link test needs network namespaces: {exc}")
    assert "host=" in pg_server.get_uri(), "pgserver's DSN is not a unix socket: the namespaces could not reach it"
    dsn = fresh_db(pg_server)
    with netns.link(LINK_MBIT, tag="t") as link:
        addresses = [f"{link.addr[0]}:2101", f"{link.addr[1]}:2101"]
        run_processes(recordings, dsn, tmp_path / "spillns", addresses, prefixes=(link.prefix(0), link.prefix(1)))
        stats = [link.qdisc(i) for i in (0, 1)]
        sent = [link.sent(i) for i in (0, 1)]
    assert all(f"rate {LINK_MBIT}Mbit" in s for s in stats), stats
    # both directions carried the cluster's traffic (fits and progress go both ways)
    assert all(c["bytes"] > 0 and c["packets"] > 0 for c in sent), f"no traffic crossed the veth link: {stats}"
    same_rows(persisted(dsn), one_worker["rows"], dsn, one_worker["dsn"])


def test_two_processes_across_a_shaped_link_with_delay_persist_identical_rows(one_worker, pg_server, recordings,
                                                                              tmp_path):
    """The same with DELAY_MS more each way on the link (a relay in each namespace: this kernel
    has no netem): a slower link changes when things arrive, never what is persisted."""
    try:
        netns.check_available()
    except netns.NetnsUnavailable as exc:
        pytest.fail(f"the scale-out link test needs network namespaces: {exc}")
    dsn = fresh_db(pg_server)
    with netns.link(LINK_MBIT, tag="d") as link, netns.delayed_addresses(link, 2101, DELAY_MS) as addresses:
        run_processes(recordings, dsn, tmp_path / "spilld", addresses, prefixes=(link.prefix(0), link.prefix(1)))
        sent = [link.sent(i) for i in (0, 1)]
    assert all(c["bytes"] > 0 for c in sent), sent
    same_rows(persisted(dsn), one_worker["rows"], dsn, one_worker["dsn"])
