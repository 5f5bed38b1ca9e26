"""bench/bench_engine.py end to end on the tiny scenario: both systems run in their own processes
on the same recorded frames, volgraph also as a 2-process bytewax cluster on loopback (the
workload split per currency and worker slot), and the JSON carries every figure. No timing is asserted."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import bench_engine  # noqa: E402

COLUMNS = ("messages", "msgs_per_s", "cpu_s_per_M_msgs", "latency_p50_ms", "latency_p99_ms", "latency_max_ms",
           "iv_solves", "fits", "patches", "max_err_bp", "peak_rss_mb")


def test_small_scenario_json_has_every_figure(tmp_path, capsys):
    assert bench_engine.main(["--scenario", "small", "--seconds", "2", "--json", "--cache-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("machine", "date", "command", "workload", "systems", "shock", "goals", "speedup_vs_naive"):
        assert key in out, key
    assert set(out["systems"]) == {"volgraph", "volgraph_2proc", "volgraph_1proc_2w", "volgraph_2proc_netns", "naive",
                                   "volgraph_paced", "volgraph_2proc_paced", "volgraph_2proc_netns_paced"}
    assert out["netns_unavailable"] == {}  # root here: the link rows ran (tests/helpers/netns.py)
    w = out["workload"]
    assert w["options"] == {"BTC": 48, "ETH": 48} and w["frames"] > w["preamble_frames"] > 0
    for name, row in out["systems"].items():
        for col in COLUMNS:
            assert col in row, (name, col)
        assert row["messages"] > 0, name
        assert row["msgs_per_s"] > 0 and math.isfinite(row["msgs_per_s"]), name
        assert row["cpu_s_per_M_msgs"] > 0, name
        assert row["iv_solves"] > 0 and row["fits"] > 0 and row["patches"] > 0, name
        assert row["peak_rss_mb"] > 10, name
        assert row["latency_p50_ms"] is None or row["latency_p50_ms"] <= row["latency_max_ms"]
    # the scale-out row: two processes, a partition per (currency, slot) each, all fed and counted
    two = out["systems"]["volgraph_2proc"]
    assert two["processes"] == 2 and two["workers_per_process"] == 1
    assert len(two["peak_rss_mb_per_proc"]) == 2 and all(v > 10 for v in two["peak_rss_mb_per_proc"])
    assert len(two["cpu_s_per_proc"]) == 2 and all(v > 0 for v in two["cpu_s_per_proc"])
    assert sorted(p for parts in two["placement"].values() for p in parts) == sorted(
        Path(x["path"]).name for x in out["split"].values())
    assert set(out["split"]) == {"BTC.w0of2", "BTC.w1of2", "ETH.w0of2", "ETH.w1of2"}
    # slot k is read on process k: no book event crosses between the processes
    assert {int(proc): sorted(p.split(".")[-3] for p in parts) for proc, parts in two["placement"].items()} == {
        0: ["w0of2", "w0of2"], 1: ["w1of2", "w1of2"]}
    # 2 workers in one process: the same four partitions, all read by process 0's two workers
    w2 = out["systems"]["volgraph_1proc_2w"]
    assert w2["processes"] == 1 and w2["workers_per_process"] == 2 and len(w2["peak_rss_mb_per_proc"]) == 1
    assert sorted(p for parts in w2["placement"].values() for p in parts) == sorted(
        Path(x["path"]).name for x in out["split"].values())
    # the netns link rows: both ends of the veth carried the cluster's traffic, through tbf
    for name in ("volgraph_2proc_netns", "volgraph_2proc_netns_paced"):
        link = out["systems"][name]["link"]
        assert link["rate_mbit"] == bench_engine.NETNS_LINK_MBIT and link["delay_ms"] == bench_engine.NETNS_DELAY_MS
        assert all(side["bytes"] > 0 and side["packets"] > 0 for side in link["sent"]), link
    # the 16-process projection: measured costs, the assumptions beside them
    proj = out["projection"]
    assert proj["processes"] == 16 and proj["snapshot"]["options"] == 1970 and proj["snapshot"]["expiries"] == 24
    assert proj["expiries"] > 24 and proj["per_process_expiries"] * 16 >= proj["expiries"]
    assert proj["cpu_us_per_msg"] > 0 and proj["cpu_ms_per_fit_tick"] > 0 and proj["bytes_per_fit"] > 0
    for case in proj["cases"].values():
        assert case["cores_per_process"] == pytest.approx(case["msg_cores"] + case["fit_cores"]) and case["msg_cores"] > 0
    # the paced rows measure exchange ts → patch emit (the cluster's processes pace from one start)
    for name in ("volgraph_paced", "volgraph_2proc_paced", "volgraph_2proc_netns_paced"):
        row = out["systems"][name]
        assert row["target_msgs_per_s"] == bench_engine.PACED_RATE_MSG_S
        assert 0 <= row["exchange_latency_p50_ms"] <= row["exchange_latency_p99_ms"] <= row["exchange_latency_max_ms"]
    assert out["goals"]["paced_p99_ms"]["row"] in ("volgraph_paced", "volgraph_2proc_paced")
    assert out["goals"]["throughput_msg_s"]["row"] in ("volgraph", "volgraph_2proc")
    # every frame is in a slot file; instrument lists, index and perpetual frames in both slots
    assert w["frames"] <= sum(x["frames"] for x in out["split"].values()) < 2 * w["frames"]
    assert all(x["preamble_frames"] > 0 for x in out["split"].values())
    assert "spot move" in out["shock_definition"] and "books" in out["shock_definition"]
    assert out["systems"]["naive"]["max_err_bp"] == 0.0  # exact by construction
    err = out["systems"]["volgraph"]["max_err_bp"]
    assert err == "n/a" or 0.0 <= err < 5.0
    for name, row in out["systems"].items():  # the epochs audited, which a max error rests on: volgraph's rows
        assert (type(row.get("audits")) is int and row["audits"] >= 0) == (name != "naive"), name
    assert set(out["shock"]) == {"volgraph 1 proc", "volgraph 2 proc", "volgraph 2 proc, early",
                                 "volgraph 2 proc, grouped", "naive"}
    for name, shock in out["shock"].items():
        assert shock["shock_books"] == 48 and shock["shock_levels"] > 48
        assert shock["absorb_ms"] is not None and shock["absorb_ms"] > 0
        assert 0 < shock["expiries_absorbed"] <= shock["expiries"]
        if name != "naive":  # where in its epoch the shock entered (the chain ticks at that epoch's end)
            assert shock["epoch_ms"] == 50 and 0 <= shock["arrival_in_epoch_ms"] < 50
            # where each process's time went inside the shock's window: stages plus the rest
            stages = shock["stages"]
            assert len(stages) == (1 if name == "volgraph 1 proc" else 2)
            for st in stages:
                parts = [st[k] for k in ("read_ms", "books_ms", "tick_ms", "surface_ms")]
                assert all(v >= 0 for v in parts) and parts[0] > 0
                assert sum(parts) + st["other_ms"] == pytest.approx(shock["absorb_ms"], abs=0.5)
            assert sum(st["books_ms"] for st in stages) > 0 and sum(st["tick_ms"] for st in stages) > 0
    # the shock rows enter late in their epoch (tick due before the shock is read), "early" at its start
    assert "enters 40 ms into its epoch" in out["shock_definition"] and "early" in out["shock_definition"]
    assert out["speedup_vs_naive"] > 0
    assert {"throughput_msg_s", "speedup_vs_naive", "shock_ms", "paced_p99_ms"} <= set(out["goals"])
    assert all(isinstance(g["met"], bool) for g in out["goals"].values())
    # the workload was cached where we asked, keyed by its parameters
    assert sorted(p.name.split("_")[0] for p in tmp_path.glob("*.jsonl.gz")) == ["shock"] * 10 + ["workload"] * 5
    assert {".".join(p.name.split(".")[-4:-2]) for p in tmp_path.glob("workload*.jsonl.gz")} >= {
        "BTC.w0of2", "ETH.w1of2"}
