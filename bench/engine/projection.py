"""The 16-process projection (issue #16, "Scale-out"): what one process of a deployment covering
every Deribit and OKX option would need, from costs measured in this run:

    CPU per process = messages/s ÷ processes × CPU s per message
                    + expiries ÷ processes (the most loaded) × fits/s per expiry × CPU s per fit tick
    link per process = fits/s it sends × bytes crossing the link per fit (the netns row)

Measured here: CPU s per message (the 2-process row: ingest, parse, books, routing, ticks and the
exchange between processes), CPU s per fit tick (chain epoch CPU ÷ fits), bytes per fit over
the link, and Deribit's BTC and ETH chain size (tests/data's real snapshot). ASSUMED below is
what no file in the repository holds; the projection prints it beside the figures.

Arithmetic over the summary only: never runs a flow.
"""

from __future__ import annotations

import csv
import math
from typing import Optional

from bench.engine.common import REPO

PROCESSES = 16
SNAPSHOT = REPO / "tests" / "data" / "deribit_options_snapshot_20260822T153351Z.csv"

# Not measured here (no repository data): edit these to the venues' current listings.
ASSUMED = {
    # Deribit's other option underlyings (USDC-linked), each: expiries, options
    "deribit_other": {"underlyings": 4, "expiries_each": 8, "options_each": 150},
    # OKX option families (BTC-USD, ETH-USD), each: expiries, options
    "okx": {"families": 2, "expiries_each": 12, "options_each": 800},
    # book + ticker notifications per option per second: a calm average, and a busy one (Deribit's
    # 100 ms channels cap an instrument near 10 per second per channel)
    "msgs_per_option_s": 2.0,
    "busy_msgs_per_option_s": 10.0,
}


def deribit_snapshot() -> dict:
    """Options and expiries of the real Deribit BTC + ETH snapshot in tests/data."""
    options, expiries = 0, set()
    with open(SNAPSHOT, newline="") as fh:
        for row in csv.DictReader(fh):
            options += 1
            expiries.add((row["currency"], row["expiry_datetime"]))
    return {"options": options, "expiries": len(expiries), "file": SNAPSHOT.name}


def project(systems: dict, link_rows: dict, fit_interval_ms: float) -> Optional[dict]:
    """The projection from the summary's systems (the 2-process row's per-message cost, the
    1-process row's epoch CPU per fit) and the netns row's link counters; None without them."""
    one, two = systems.get("volgraph"), systems.get("volgraph_2proc")
    if not one or not two or not two.get("cpu_s_per_M_msgs") or not one.get("fits") or not one.get("epoch_cpu_s"):
        return None
    snap = deribit_snapshot()
    a = ASSUMED
    expiries = (snap["expiries"] + a["deribit_other"]["underlyings"] * a["deribit_other"]["expiries_each"]
                + a["okx"]["families"] * a["okx"]["expiries_each"])
    options = (snap["options"] + a["deribit_other"]["underlyings"] * a["deribit_other"]["options_each"]
               + a["okx"]["families"] * a["okx"]["options_each"])
    cpu_msg_s = two["cpu_s_per_M_msgs"] / 1e6
    cpu_fit_s = one["epoch_cpu_s"] / one["fits"]
    fits_per_expiry_s = 1000.0 / fit_interval_ms
    per_proc_expiries = math.ceil(expiries / PROCESSES)
    fit_cpu = per_proc_expiries * fits_per_expiry_s * cpu_fit_s
    bytes_per_fit = None
    for row in link_rows.values():
        sent = sum(s["bytes"] for s in row["link"]["sent"])
        if row.get("fits"):
            bytes_per_fit = sent / row["fits"]
            break
    out = {"processes": PROCESSES, "snapshot": snap, "assumed": a, "expiries": expiries, "options": options,
           "per_process_expiries": per_proc_expiries, "cpu_us_per_msg": cpu_msg_s * 1e6,
           "cpu_ms_per_fit_tick": cpu_fit_s * 1e3, "fits_per_expiry_s": fits_per_expiry_s,
           "bytes_per_fit": bytes_per_fit, "cases": {}}
    for case, rate in (("calm", a["msgs_per_option_s"]), ("busy", a["busy_msgs_per_option_s"])):
        msgs_s = options * rate
        msg_cpu = msgs_s / PROCESSES * cpu_msg_s
        link = (per_proc_expiries * fits_per_expiry_s * bytes_per_fit * 8 / 1e6) if bytes_per_fit else None
        out["cases"][case] = {"msgs_s": msgs_s, "per_process_msgs_s": msgs_s / PROCESSES,
                              "cores_per_process": msg_cpu + fit_cpu, "msg_cores": msg_cpu, "fit_cores": fit_cpu,
                              "link_mbit_per_process": link}
    return out


def projection_lines(p: Optional[dict]) -> list[str]:
    if p is None:
        return ["16-process projection: n/a (the 1- and 2-process rows have no figures)"]
    s, a = p["snapshot"], p["assumed"]
    lines = [
        f"16-process projection (every Deribit and OKX option, {p['processes']} processes × 1 worker): "
        f"{p['options']:,} options over {p['expiries']} expiries — measured: Deribit BTC+ETH {s['options']:,} options, "
        f"{s['expiries']} expiries ({s['file']}); ASSUMED: Deribit's {a['deribit_other']['underlyings']} other "
        f"underlyings × {a['deribit_other']['expiries_each']} expiries × {a['deribit_other']['options_each']} options, "
        f"OKX {a['okx']['families']} families × {a['okx']['expiries_each']} expiries × {a['okx']['options_each']} "
        f"options (bench/engine/projection.py ASSUMED).",
        f"  costs measured in this run: {p['cpu_us_per_msg']:.1f} µs CPU per message (2-process row, all stages), "
        f"{p['cpu_ms_per_fit_tick']:.2f} ms CPU per fitting tick (1-process epoch CPU ÷ fits), at most "
        f"{p['fits_per_expiry_s']:.0f} fits/s per expiry (chain.fit_interval_ms), "
        + (f"{p['bytes_per_fit']:,.0f} bytes over the link per fit (netns row, both ways)"
           if p["bytes_per_fit"] else "link bytes n/a (no netns row)"),
    ]
    for case, c in p["cases"].items():
        link = f"{c['link_mbit_per_process']:.2f} Mbit/s" if c["link_mbit_per_process"] is not None else "n/a"
        lines.append(
            f"  {case} ({a['msgs_per_option_s' if case == 'calm' else 'busy_msgs_per_option_s']:g} msg/s per option, "
            f"ASSUMED): {c['msgs_s']:,.0f} msg/s in all, {c['per_process_msgs_s']:,.0f} per process and "
            f"{p['per_process_expiries']} expiries on the most loaded → {c['cores_per_process']:.2f} cores per process "
            f"({c['msg_cores']:.2f} messages + {c['fit_cores']:.2f} fits, every expiry refitting at the maximum rate); "
            f"link out per process {link}")
    lines.append(
        "  limits: measured on 2 cores shared by both cluster processes, the bench parent and other work (see the "
        "load average); CPU per message is per core-second wherever it ran, so the projection assumes a dedicated "
        "core per process and scales linearly (no cross-process contention, placement evenly spread — SipHash "
        "placement is not exactly even, hence the most-loaded ceiling); the cost per message comes from the bench "
        "workload's book mix and depth. The netns rows' link is a veth pair on one kernel (no NIC): its delay is a "
        "user-space relay's (no netem here), whose CPU shares the same 2 cores and is in no row's CPU figure; with "
        "the load average above ~2 their wall-clock figures (msg/s, latency) say more about the box than the link — "
        "the link's own cost shows in its bytes per fit, which no load changes.")
    return lines
