"""Observations → figures, for one process or a cluster alike: the flow row's rates, CPU and
latency percentiles (flow_figures), processing latency per patch and expiry view
(view_latencies), the shock row (shock_figures) and where each process's time went inside
the shock's window (stage_breakdown).

Pure arithmetic over what the probes and sinks recorded: never runs a flow or a process.
"""

from __future__ import annotations

from typing import Optional

from bench.engine.common import pct


STAGES = ("read", "books", "tick", "surface")
STAGE_LABELS = (("read", "read+parse"), ("books", "books+chains"), ("tick", "ticks"), ("surface", "surface"),
                 ("other", "other"))


def stage_breakdown(per_process: dict, first_wall: float, end_wall: float) -> list[dict]:
    """Per process, ms of each stage inside the shock's window [first frame in, last expiry
    out]; "other" is the rest of the window: waiting for the epoch's tick, bytewax itself
    (routing, moving fits between processes), the collector, waiting for the other process."""
    out = []
    window = end_wall - first_wall
    for proc, spans in sorted(per_process.items()):
        ms = dict.fromkeys(STAGES, 0.0)
        for a, b, stage in spans:
            lo, hi = max(a, first_wall), min(b, end_wall)
            if hi > lo:
                ms[stage] += hi - lo
        out.append({"process": proc, **{f"{k}_ms": round(v, 1) for k, v in ms.items()},
                    "other_ms": round(window - sum(ms.values()), 1)})
    return out


def flow_figures(messages: int, elapsed_s: float, cpu_s: float, lat_oldest: list, lat_newest: list,
                  lat_exchange: list, counters: dict) -> dict:
    """The figures every volgraph row shares (one process or a cluster): rates, CPU, latency
    percentiles and IV solve counts."""
    return {
        "messages": messages, "events_in": int(counters.get("messages_in", 0)), "seconds": elapsed_s,
        "msgs_per_s": messages / elapsed_s if messages and elapsed_s and elapsed_s > 0 else None,
        "cpu_s_per_M_msgs": cpu_s / messages * 1e6 if messages else None,
        "msgs_per_cpu_s": messages / cpu_s if messages and cpu_s > 0 else None,
        "latency_p50_ms": pct(lat_oldest, 50), "latency_p99_ms": pct(lat_oldest, 99),
        "latency_max_ms": pct(lat_oldest, 100),
        "newest_latency_p50_ms": pct(lat_newest, 50), "newest_latency_p99_ms": pct(lat_newest, 99),
        "exchange_latency_p50_ms": pct(lat_exchange, 50), "exchange_latency_p99_ms": pct(lat_exchange, 99),
        "exchange_latency_max_ms": pct(lat_exchange, 100),
        "iv_solves": int(counters.get("iv_solves", 0)),
        "epoch_cpu_s": counters.get("epoch_us", 0) / 1e6,  # chain ticks (IVs, fits), the whole run
        "iv_full": _opt_int(counters.get("iv_full")), "iv_taylor": _opt_int(counters.get("iv_taylor")),
        "iv_skipped": _opt_int(counters.get("iv_skipped")),
        "audits": int(counters.get("audits", 0)),  # epochs audited, over all chains: what max_err_bp rests on
        **solve_counts(counters, ("lv_books", "lv_full", "lv_taylor", "lv_skipped")),
    }


SOLVE_COUNTERS = ("iv_full", "iv_taylor", "iv_skipped", "lv_books", "lv_full", "lv_taylor", "lv_skipped")


def solve_counts(counters: dict, names=SOLVE_COUNTERS) -> dict:
    """The chain's solve counters (flows.steps.ChainStep reports them): touch vols (iv_*) and
    level / execution vols (lv_*: full solves, Taylor steps, skips; lv_books = books read)."""
    return {name: int(counters.get(name, 0)) for name in names}


def shock_vols(row: dict, probe, counts_at_patch: list) -> Optional[dict]:
    """Vols solved / stepped / skipped while the shock was absorbed: the solve counters at the
    patch that absorbed the last expiry minus those as the shock entered (quiet traffic inside
    that window counts too: a few hundred frames at most)."""
    start = getattr(probe, "counts_at_shock", None)
    if start is None or row.get("absorb_ms") is None:
        return None
    end_wall = probe.shock_first_wall + row["absorb_ms"]
    at_end = [c for wall, c in counts_at_patch if wall <= end_wall + 1e-6]
    if not at_end:
        return None
    out = {k: at_end[-1][k] - start[k] for k in SOLVE_COUNTERS}
    out["vols_solved"] = out["iv_full"] + out["lv_full"]
    out["vols_stepped"] = out["iv_taylor"] + out["lv_taylor"]
    out["vols_skipped"] = out["iv_skipped"] + out["lv_skipped"]
    return out


def newest_fit_ms(patch, seen: dict) -> Optional[int]:
    """The newest exchange time among a patch's NEW fits: what its exchange-to-patch latency is
    measured from. A view re-sent with the fit it already had (vol at size between fits, a
    calendar flag) brings no new book data to measure: None when the patch has no new fit.
    `seen`: (underlying, expiry_ms) → the fit time last seen, updated here."""
    newest = None
    for v in patch.expiries:
        key, ts = (patch.underlying, v.expiry_ms), v.fit.ts_exchange_ms
        if seen.get(key) != ts:
            seen[key] = ts
            newest = ts if newest is None or ts > newest else newest
    return newest


def patch_rows(patches) -> list:
    """[(wall out, underlying, [(expiry_ms, fit ts_exchange_ms)])]: what latency needs of a patch."""
    return [(wall, p.underlying, [(v.expiry_ms, v.fit.ts_exchange_ms) for v in p.expiries]) for wall, p in patches]


def view_latencies(rows: list, probe_for, warm_until: float) -> tuple[list[float], list[float]]:
    """Processing latency per (patch, expiry view), oldest and newest (see the notes): wall out
    minus when the events it newly reflects entered the source partition that carries that
    expiry (`probe_for(underlying, expiry_ms)`). The first view of each expiry reflects the preamble: skipped."""
    lat_oldest, lat_newest = [], []
    prev_ts: dict[tuple[str, int], int] = {}
    for wall_out, underlying, views in sorted(rows, key=lambda r: r[0]):
        for expiry_ms, x in views:
            probe = probe_for(underlying, expiry_ms)
            key = (underlying, expiry_ms)
            xp = prev_ts.get(key)
            prev_ts[key] = x
            if xp is None or probe is None or x == xp:  # x == xp: the view re-sent with the fit it had
                continue
            first_in = probe.entered_wall(xp, strictly_after=True)
            newest_in = probe.entered_wall(x, strictly_after=False)
            if first_in is None or newest_in is None or first_in < warm_until:
                continue
            lat_oldest.append(wall_out - first_in)
            lat_newest.append(wall_out - newest_in)
    return lat_oldest, lat_newest


def shock_figures(shock: dict, probes: list, rows: list, kept_levels: Optional[int], flow_ms_at, epoch_ms: int,
               step_spans: Optional[dict] = None) -> Optional[dict]:
    """The shock row from what the source partitions saw (`probes`, each holding its file's share
    of the shock) and the patches (`rows`, as patch_rows). An expiry is absorbed by its first
    patch that reflects the shock (fit exchange ts ≥ the shock's) and left after the last of its
    shocked books entered. `arrival_in_epoch_ms`: where in its epoch of the flow clock
    (`flow_ms_at(wall)`) the shock entered — the chain steps tick at the end of the epoch a
    batch entered in, at once if reading and applying it outlasted that epoch."""
    firsts = [p.shock_first_wall for p in probes if p.shock_first_wall is not None]
    if not firsts:
        return None
    first_wall = min(firsts)
    lasts = [p.shock_last_wall for p in probes if p.shock is not None]
    last_wall = max(lasts) if lasts and None not in lasts else None
    expiry_in = {e: w for p in probes for e, w in p.shock_expiry_in.items()}
    absorbed: dict[int, float] = {}
    expiries = set()
    for wall_out, underlying, views in sorted(rows, key=lambda r: r[0]):
        if underlying != shock["underlying"]:
            continue
        for expiry_ms, fit_ts in views:
            expiries.add(expiry_ms)
            all_in = expiry_in.get(expiry_ms, last_wall)  # files without per-expiry marks: the whole shock
            if (expiry_ms not in absorbed and fit_ts >= shock["ts_ms"] and all_in is not None
                    and wall_out >= all_in):
                absorbed[expiry_ms] = wall_out
    row = {"shock_levels": shock["levels"], "shock_books": shock["n_books"], "shock_levels_kept": kept_levels,
           "expiries_absorbed": len(absorbed), "expiries": len(expiries),
           "absorb_ms": (max(absorbed.values()) - first_wall) if absorbed else None,
           "first_expiry_ms": (min(absorbed.values()) - first_wall) if absorbed else None,
           "ingest_ms": (last_wall - first_wall) if last_wall is not None else None,
           "epoch_ms": epoch_ms, "arrival_in_epoch_ms": flow_ms_at(first_wall) % epoch_ms}
    if step_spans is not None and absorbed:  # where each process's time went (see StageTimer)
        row["stages"] = stage_breakdown(step_spans, first_wall, max(absorbed.values()))
    return row


def kept_levels(shock: dict, config) -> Optional[int]:
    """Level prices of the shocked books within the depth the engine keeps per side."""
    from bench.naive import _depth

    return shock.get("levels_by_depth", {}).get(str(_depth(config)))


def _opt_int(v) -> Optional[int]:
    return None if v is None else int(v)
