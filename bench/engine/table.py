"""The summary (bench/engine/summary.py) → the printed table: header lines, one row per system,
the scale-out and paced lines, the shock rows with their per-stage breakdown, the goals, and
the notes that define every column.

Formatting only: every figure it prints is already in the summary.
"""

from __future__ import annotations

import math

from bench.engine.common import CLUSTER_ROW, NETNS_ROW, PACED_RATE_MSG_S, WORKERS_ROW
from bench.engine.figures import STAGE_LABELS
from bench.engine.projection import projection_lines


def _f(v, fmt="{:,.0f}", none="n/a") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, str):
        return v
    return fmt.format(v)


def _solves(x: dict) -> str:
    """IV solves (full/taylor/skip); with level vols on, the touch's and the levels' together."""
    full, taylor, skip = (x[k] if x[k] is not None else 0 for k in ("iv_full", "iv_taylor", "iv_skipped"))
    if "lv_full" in x:
        full, taylor, skip = full + x["lv_full"], taylor + x["lv_taylor"], skip + x["lv_skipped"]
        return f"{_f(full)} ({_f(full)}/{_f(taylor)}/{_f(skip)})"
    return f"{_f(x['iv_solves'])} ({_f(x['iv_full'])}/{_f(x['iv_taylor'])}/{_f(x['iv_skipped'])})"


def _err(x: dict) -> str:
    """The max error and, for volgraph, how many chain epochs were audited to find it: a row at
    full speed ticks once per source batch, so a short run may audit each chain only a few times."""
    err, audits = _f(x["max_err_bp"], "{:.3f}"), x.get("audits")
    if audits is None:  # naive: exact every time
        return err
    return f"{err} ({audits:,})" if audits else "none (0 audits)"


def print_table(s: dict) -> None:
    w = s["workload"]
    print(f"# volgraph engine benchmark — {s['date']}")
    print(f"# machine: {s['machine']}")
    print(f"# command: {s['command']}")
    la = s["loadavg"]
    print(f"# load average (1/5/15 min) before {la[0]}/{la[1]}/{la[2]}, after {la[3]}/{la[4]}/{la[5]} "
          "— other work on the box slows wall-clock figures, not CPU ones")
    print(f"# workload: {s['scenario']} — options {w['options']}, {w['depth']} levels a side, "
          f"{w['frames']:,} frames ({w['preamble_frames']:,} preamble), nominal {w['avg_rate_msg_s']:,.0f} msg/s, "
          f"mix {w['kinds']}")
    print(f"# each system: up to {s['seconds']} s of the live stream, in its own process; "
          f"volgraph audit every {s['audit_every']} epochs")
    ch = s.get("chain") or {}
    if ch:
        print(f"# level vols ON in every row (--levels-on): level_depth {ch['level_depth']}, sizes_contracts "
              f"{ch['sizes_contracts']} — volgraph and naive solve the same vols: per book its best "
              f"{ch['level_depth']} levels a side and its walks to each size, the touch among them; IV solves "
              "count prices solved (volgraph: touch + levels; Taylor steps and skips beside them)")
    else:
        print("# level vols off (graph.toml): volgraph solves the touch; naive solves every kept level "
              "(the system it replaces) — not the same work: --levels-on compares like for like")
    print()
    hdr = ("system", "msgs", "msg/s", "CPU s/M msgs", "msg/CPU-s", "lat p50/p99/max ms", "newest p50/p99",
           "IV solves (full/taylor/skip)", "fits", "patches", "max err bp (audits)", "peak RSS MB")
    rows = []
    for name, x in s["systems"].items():
        label = {"volgraph_paced": f"volgraph 1 proc @{PACED_RATE_MSG_S / 1000:.0f}k/s",
                 CLUSTER_ROW + "_paced": f"volgraph 2 proc @{PACED_RATE_MSG_S / 1000:.0f}k/s",
                 CLUSTER_ROW: f"volgraph {x.get('processes', 2)} proc × {x.get('workers_per_process', 1)} w",
                 WORKERS_ROW: f"volgraph 1 proc × {x.get('workers_per_process', 2)} w",
                 NETNS_ROW: f"volgraph 2 proc, netns {_f((x.get('link') or {}).get('rate_mbit'), '{:g}')} Mbit "
                            f"+{_f((x.get('link') or {}).get('delay_ms'), '{:g}')} ms",
                 NETNS_ROW + "_paced": f"volgraph 2 proc netns @{PACED_RATE_MSG_S / 1000:.0f}k/s",
                 "volgraph": "volgraph 1 proc"}.get(name, name)
        rss = _f(x["peak_rss_mb"], "{:,.0f}")
        if x.get("peak_rss_mb_per_proc"):
            rss = " + ".join(_f(v, "{:,.0f}") for v in x["peak_rss_mb_per_proc"]) + " (each)"
        rows.append((
            label, _f(x["messages"]), _f(x["msgs_per_s"]), _f(x["cpu_s_per_M_msgs"], "{:,.1f}"),
            _f(x["msgs_per_cpu_s"]),
            f"{_f(x['latency_p50_ms'], '{:.1f}')}/{_f(x['latency_p99_ms'], '{:.1f}')}/"
            f"{_f(x['latency_max_ms'], '{:.1f}')}",
            f"{_f(x['newest_latency_p50_ms'], '{:.1f}')}/{_f(x['newest_latency_p99_ms'], '{:.1f}')}",
            _solves(x),
            _f(x["fits"]), _f(x["patches"]), _err(x), rss))
    widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
    line = lambda r: " | ".join(str(c).ljust(widths[i]) for i, c in enumerate(r))  # noqa: E731
    print(line(hdr))
    print("-+-".join("-" * n for n in widths))
    for r in rows:
        print(line(r))
    c = s["systems"][CLUSTER_ROW]
    one = s["systems"]["volgraph"]
    ratio = (c["msgs_per_s"] / one["msgs_per_s"]) if c["msgs_per_s"] and one["msgs_per_s"] else None
    split = ", ".join(f"{k} {v['frames']:,} frames" for k, v in s["split"].items())
    print(f"\nscale-out: {c.get('processes')} bytewax processes × {c.get('workers_per_process')} worker on "
          f"loopback (bytewax.testing.cluster_main, as a StatefulSet's pods), the same workload split per "
          f"currency and worker slot ({split}, each with its own preamble: slot k holds the expiries whose "
          f"chain runs on worker k), one partition each; partitions per process {c.get('placement')}; "
          f"{_f(ratio, '{:.2f}')}× the 1-process msg/s; CPU s per process "
          f"{' + '.join(_f(v, '{:.1f}') for v in c.get('cpu_s_per_proc') or [])}")
    w2 = s["systems"].get(WORKERS_ROW)
    if w2:
        r2 = (w2["msgs_per_s"] / one["msgs_per_s"]) if w2["msgs_per_s"] and one["msgs_per_s"] else None
        print(f"2 workers in one process: the same split and partitions as the 2-process row, as bytewax worker "
              f"threads of one process (-w 2; one GIL): {_f(w2['msgs_per_s'])} msg/s, {_f(r2, '{:.2f}')}× the "
              f"1-process msg/s, {_f(w2['cpu_s_per_M_msgs'], '{:,.1f}')} CPU s/M msgs")
    for line in _link_lines(s):
        print(line)
    ran_out = [n for n, x in s["systems"].items() if x.get("reached_eof") and not n.endswith("_paced")]
    if ran_out:
        print(f"WARNING: {', '.join(ran_out)} reached the end of the workload before --seconds "
              f"({s['seconds']} s): its msg/s includes the final flush; use --messages to lengthen it")
    for name, label in (("volgraph_paced", "1 process"), (CLUSTER_ROW + "_paced", "2 processes"),
                        (NETNS_ROW + "_paced", "2 processes across the netns link")):
        p = s["systems"].get(name)
        if p is None:
            continue
        # how near the cores its processes run on the row is: near them, the tail is waiting in queues
        busy = (p["msgs_per_s"] * p["cpu_s_per_M_msgs"] / 1e6
                if p.get("msgs_per_s") and p.get("cpu_s_per_M_msgs") else None)
        print(f"{'' if name != 'volgraph_paced' else chr(10)}paced run, {label}: {_f(p['msgs_per_s'])} msg/s "
              f"achieved (target {PACED_RATE_MSG_S:,.0f}); exchange ts → patch emit p50/p99/max: "
              f"{_f(p['exchange_latency_p50_ms'], '{:.1f}')}/{_f(p['exchange_latency_p99_ms'], '{:.1f}')}/"
              f"{_f(p['exchange_latency_max_ms'], '{:.1f}')} ms; CPU {_f(busy, '{:.2f}')} cores busy "
              f"({_f(p.get('processes', 1))} process{'es' if p.get('processes', 1) > 1 else ''}, all threads)")
    print()
    for line in projection_lines(s.get("projection")):
        print(line)
    print("\nshock row: " + s["shock_definition"] + ":")
    for name, x in s["shock"].items():
        if x is None:
            print(f"  {name}: n/a (the shock was not reached)")
            continue
        epochs = (f"; entered {x['arrival_in_epoch_ms']:.0f} ms into its {x['epoch_ms']} ms epoch"
                  if x.get("epoch_ms") else "")
        print(f"  {name:22s} {x['shock_books']:,} books, {x['shock_levels']:,} level prices "
              f"({_f(x.get('shock_levels_kept'))} within the kept depth): last expiry out "
              f"{_f(x['absorb_ms'], '{:,.1f}')} ms after the first shock frame entered "
              f"({x['expiries_absorbed']}/{x['expiries']} expiries"
              + (f"; first expiry {_f(x['first_expiry_ms'], '{:,.1f}')} ms" if x.get("first_expiry_ms") else "")
              + (f"; shock frames all read after {_f(x['ingest_ms'], '{:,.1f}')} ms" if x.get("ingest_ms") else "")
              + epochs + ")")
        v = x.get("vols")
        if v:  # the chain's solve counters over the shock's window (1-process rows)
            print(f"  {'':22s}   vols: {v['vols_solved']:,} solved (touch {v['iv_full']:,}, levels "
                  f"{v['lv_full']:,} of {v['lv_books']:,} books read), {v['vols_stepped']:,} Taylor-stepped, "
                  f"{v['vols_skipped']:,} skipped")
        for st in x.get("stages") or ():
            print(f"  {'':22s}   process {st['process']}: " + " · ".join(
                f"{label} {st[key + '_ms']:,.1f}" for key, label in STAGE_LABELS) + " ms")
    print("\ngoals:")
    for g in s["goals"].values():
        v = g["value"]
        shown = _f(v, "{:,.1f}") if not isinstance(v, str) else v
        row = f"  ({g['row']})" if g.get("row") else ""
        print(f"  {g['goal']:45s} measured {shown:>12s}   {'MET' if g['met'] else 'not met'}{row}")
    print(f"  (speed-up vs naive: {_f(s['speedup_vs_naive'], '{:,.1f}')}×, volgraph max error "
          f"{_f(s['systems']['volgraph']['max_err_bp'], '{:.3f}')} bp)")
    print(FOOTNOTES)
    if s.get("profile_top"):
        print("\npyinstrument profile of a volgraph run (top):")
        print(s["profile_top"])
    for proc_id, text in (s.get("cluster_profile_top") or {}).items():
        print(f"\npyinstrument profile of {CLUSTER_ROW}, process {proc_id} (top):")
        print(text)


def _link_lines(s: dict) -> list[str]:
    """What the network link costs: the netns rows against their loopback twins."""
    out = [f"netns link: n/a — {why}" for why in dict.fromkeys((s.get("netns_unavailable") or {}).values())]
    lo, ns = s["systems"][CLUSTER_ROW], s["systems"].get(NETNS_ROW)
    if ns is None:
        return out
    link = ns["link"]
    ratio = (ns["msgs_per_s"] / lo["msgs_per_s"]) if ns["msgs_per_s"] and lo["msgs_per_s"] else None
    sent = " / ".join(f"{x['bytes'] / 1e6:,.2f} MB in {x['packets']:,} packets ({x['dropped']} dropped)"
                      for x in link["sent"])
    out.append(f"netns link ({link['rate_mbit']:g} Mbit/s tbf and {link['delay_ms']:g} ms delay each way, veth "
               f"between two network namespaces, one process in each): {_f(ns['msgs_per_s'])} msg/s = {_f(ratio, '{:.2f}')}× loopback's; processing "
               f"latency p50/p99 {_f(ns['latency_p50_ms'], '{:.1f}')}/{_f(ns['latency_p99_ms'], '{:.1f}')} ms against "
               f"{_f(lo['latency_p50_ms'], '{:.1f}')}/{_f(lo['latency_p99_ms'], '{:.1f}')} on loopback; sent "
               f"process 0 → 1 / 1 → 0: {sent}, for {_f(ns['fits'])} fits")
    p_lo, p_ns = s["systems"].get(CLUSTER_ROW + "_paced"), s["systems"].get(NETNS_ROW + "_paced")
    if p_lo and p_ns:
        out.append(f"netns link, paced at {PACED_RATE_MSG_S:,.0f} msg/s: exchange ts → patch p50/p99 "
                   f"{_f(p_ns['exchange_latency_p50_ms'], '{:.1f}')}/{_f(p_ns['exchange_latency_p99_ms'], '{:.1f}')} ms "
                   f"against {_f(p_lo['exchange_latency_p50_ms'], '{:.1f}')}/"
                   f"{_f(p_lo['exchange_latency_p99_ms'], '{:.1f}')} on loopback, in the same run")
    return out


FOOTNOTES = """
notes:
  msgs = websocket frames of the live stream (after the preamble of instrument lists and first
    frames), all through connectors.venues.deribit's parser (volgraph: parse_frames, a source batch
    at a time; naive: parse_frame, a message at a time); msg/s = msgs / wall time from the first
    live frame entering the system to the end of the run (EOF or --seconds, final flush included).
  CPU s/M msgs = process CPU time (all threads) over the same window, per million frames;
    msg/CPU-s = frames per CPU second, the throughput one free core would give.
  lat (processing) = wall time from the OLDEST event a patch newly reflects entering the source
    (when reading its source batch began: reading and parsing count) to the patch reaching the
    sink, per (patch, expiry): for volgraph the first event whose exchange timestamp is later
    than that expiry's previous fit (an upper bound: it may belong to another expiry); for naive
    the message that triggered the patch (every book change refits).
    "newest" is the same from the newest event the patch reflects (its fit's ts_exchange_ms).
    Max-speed runs replay faster than real time, so exchange timestamps are not wall time there.
  exchange ts → patch emit (paced runs only): SurfacePatch.ts_emit_ms − the newest
    ts_exchange_ms of the patch's fits, over the patches that carry fits, i.e. from the NEWEST
    exchange timestamp the patch reflects, in wall
    ms; the first 2 s of live traffic (a fifth of a short workload) are left out (the preamble's
    backlog), for the processing latencies of the paced runs too. This is the goal's "exchange-
    timestamp → surface-patch latency", i.e. how old the newest data is when a patch leaves: at
    50,000 msg/s an epoch tick nearly always holds an event of its own millisecond, so its
    p50 is ≈ 0 and its tail is the tick's work. The wait for the tick (up to an epoch) and for
    the expiry's next fit (chain.fit_interval_ms, 250 ms, by design) show in the oldest-event
    latency (lat).
  volgraph 2 proc @50k/s = the scale-out row paced: both processes pace their partition from one
    shared start (ReplaySource start_wall_ms), the flow clock being the recording's.
  cores busy (paced runs) = msg/s × CPU s per M msgs ÷ 10⁶: as it nears the row's processes
    (one core each at most, for the work under the GIL), the latency's tail is time waiting in
    queues, not the work of one patch.
  max err bp (audits) = volgraph's audit mode (chain.audit_every epochs: every published vol
    against an exact solve from the same quotes and forward), and how many chain epochs were
    audited (a row at full speed ticks a chain once per source batch with its events: a short
    run audits each chain a few times, and a row that audited none says so). The naive baseline
    solves exactly every time.
  naive: preamble (and for the shock, everything before it) loaded untimed, then one full
    recompute; IV solves count every book level it solves; its shock time is processing the
    shock frames one by one, end to end.
  volgraph 2 proc × 1 w = the scale-out row: two bytewax processes of one worker on loopback,
    fed the same frames split per currency and worker slot (one file and partition each, like
    the live sources with route_workers = 2: slot k carries the expiries whose chain key bytewax
    runs on worker k, so no book event crosses processes); msgs and msg/s count every partition
    from the moment ALL are in their live stream to the end of the last process; CPU is both
    processes' over that window; latency is against the partition that carries the patch's
    expiry; RSS is each process's peak.
  volgraph 1 proc × 2 w = the scale-out row's split and partitions run by one process with two
    bytewax worker threads (cluster_main, worker_count_per_proc=2; the GIL is shared).
  volgraph 2 proc, netns link = the scale-out row with each process in its own network
    namespace, the two joined by a veth pair shaped with tc tbf (NETNS_LINK_MBIT each way) and
    delayed NETNS_DELAY_MS each way by a relay in each namespace (this kernel has no netem;
    tests/helpers/netns.py; needs root — without it the row reads n/a and says why); the link's
    bytes are tbf's egress counters of each end over the whole run (preamble included).
  16-process projection: bench/engine/projection.py — measured costs × expiries / processes,
    its assumptions and this machine's limits are printed with it.
  shock: "last expiry out" = from the first shock frame entering (reading its source batch began)
    until the last BTC expiry's first patch that reflects all of its shock (fit exchange ts ≥ the
    shock's, emitted after that expiry's last shocked book entered); "all read" = when the last
    shock frame entered (the source is pulled at the flow's pace: ingest + book work). Chain
    steps tick at the end of the epoch a batch entered in (runtime.epoch_ms of the flow clock),
    at once when reading and applying it outlasted that epoch — so the whole shock is
    published by one tick, and the time is the work, plus the wait for the boundary when the
    work ends before it (the workload's shock enters on a boundary: up to a whole epoch).
    2 proc: the shock file split per (currency, worker slot) like the scale-out row.
    Under each volgraph shock row, per process, where the window went: read+parse (source
    batches), books+chains (chain steps applying events), ticks (chain epochs: IVs and fits),
    surface (the surface step); other = the rest (waiting for the epoch's tick, bytewax moving
    items and fits between processes, the collector, waiting for the other process)."""
