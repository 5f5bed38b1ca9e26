"""`volgraph query`: the questions desks ask of the stored history, answered from PostgreSQL.

    volgraph query runs                                        every run: source, code, methods
    volgraph query surface deribit:BTC [--at T] [--run R]      the surface now, or as of time T
    volgraph query series deribit:BTC rr25 --start T0 --end T1 [--expiry 2026-09-25] [--run R …]
                                                               a node's values over time; several
                                                               --run print the runs side by side
    volgraph query series deribit:BTC fwd_vol_30_90 --start T0 --end T1
                                                               a level = "underlying" node (one value
                                                               per surface, no expiry): its changes

The answers come from connectors/postgres/read.py and runs.py, which read the documented SQL
functions and views of deploy/sql/003_runs.sql — the same ones Grafana reads. Times are UTC:
ISO 8601 (2026-12-05T10:00, a trailing Z allowed) or epoch milliseconds. The database is --pg,
else graph.toml sinks.postgres.dsn, else the embedded one under runtime.data_dir/pg (started
for the query and stopped after). Node values print as graph.toml's unit says ("vol pts": a
decimal vol shown in vol points). Read-only; never computes anything about volatility.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from flows.config import ConfigError, load_config


class QueryError(ValueError):
    """A query that cannot be answered as asked; the message says why and the fix."""


def parse_time_ms(text: str, what: str) -> int:
    """UTC epoch ms from ISO 8601 (naive = UTC) or an integer of epoch ms."""
    s = text.strip()
    if re.fullmatch(r"-?[0-9]+", s):  # ASCII digits only (str.isdigit takes '¹')
        return int(s)
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise QueryError(f"{what} {text!r}: not a time; give ISO 8601 UTC (2026-12-05T10:00) "
                         "or epoch milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def parse_surface(text: str) -> tuple[str, str]:
    venue, sep, underlying = text.partition(":")
    if not sep or not venue or not underlying:
        raise QueryError(f"surface {text!r}: give VENUE:UNDERLYING, e.g. deribit:BTC or all:ETH")
    return venue, underlying


def iso(ms: int) -> str:
    """UTC to the millisecond: epochs are tens of ms apart."""
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc).strftime("%Y-%m-%d")


def shown(value: Optional[float], unit: str) -> str:
    if value is None:
        return "—"
    return f"{value * 100.0:.2f}" if unit == "vol pts" else f"{value:.6g}"


def parse_expiry_ms(text: str) -> int:
    s = text.strip()
    if re.fullmatch(r"[0-9]+", s):
        return int(s)
    try:  # Deribit's expiries settle at 08:00 UTC
        d = datetime.strptime(s, "%Y-%m-%d").replace(hour=8, tzinfo=timezone.utc)
    except ValueError:
        raise QueryError(f"--expiry {text!r}: give the expiry date (2026-09-25, settling 08:00 UTC) "
                         "or its epoch ms") from None
    return int(d.timestamp() * 1000)


def surface_text(snap, units: dict[str, str], order: tuple[str, ...] = ()) -> str:
    """One line per expiry: date, days to expiry, forward, every node by name (graph.toml's
    order first: the stored JSON keeps no order), fit RMSE."""
    present = {n for view in snap.expiries for n in view.analytics}
    nodes: list[str] = [n for n in order if n in present]
    for view in snap.expiries:
        nodes.extend(n for n in view.analytics if n not in nodes)
    head = ["expiry", "days", "forward", *[f"{n}[{units.get(n, '')}]" if units.get(n) else n for n in nodes],
            "rmse[vol pts]", "quotes", "calendar"]
    rows = [head]
    for view in snap.expiries:
        f = view.fit
        rows.append([day(view.expiry_ms), f"{f.t_years * 365.0:.1f}", f"{f.forward:,.2f}",
                     *[shown(view.analytics.get(n), units.get(n, "")) for n in nodes],
                     f"{f.rmse_vol_pts:.3f}", str(f.n_quotes), "ok" if view.calendar_ok else "CROSSED"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    title = (f"{snap.venue}:{snap.underlying} at {iso(snap.ts_emit_ms)} UTC (epoch {snap.epoch}), "
             f"index {snap.index_px if snap.index_px is not None else '—'}, {len(snap.expiries)} expiries")
    return "\n".join([title, *lines, *underlying_lines(snap, units, order)])


def underlying_lines(snap, units: dict[str, str], order: tuple[str, ...] = ()) -> list[str]:
    """The surface's level = "underlying" node values (term structure analytics), one aligned
    line each, graph.toml's order first; the unit stored with the value, else graph.toml's."""
    values = getattr(snap, "underlying_analytics", None) or {}
    if not values:
        return []
    names = [n for n in order if n in values] + [n for n in values if n not in order]
    unit = {n: snap.underlying_units.get(n) or units.get(n, "") for n in names}
    text = {n: shown(values[n], unit[n]) for n in names}
    name_w, value_w = max(len(n) for n in names), max(len(t) for t in text.values())
    return ["term structure:", *[f"  {n:<{name_w}}  {text[n]:>{value_w}}  {unit[n]}".rstrip() for n in names]]


def series_text(by_run: dict[str, list[tuple[int, int, Optional[float]]]], unit: str) -> str:
    """Time, expiry, then one column per run (side by side on equal time and expiry)."""
    runs = list(by_run)
    table: dict[tuple[int, int], dict[str, Optional[float]]] = {}
    for run, rows in by_run.items():
        for ts_ms, expiry_ms, value in rows:
            table.setdefault((ts_ms, expiry_ms), {})[run] = value
    lines = ["\t".join(["time_utc", "expiry", *runs])]
    for (ts_ms, expiry_ms) in sorted(table):
        vals = table[(ts_ms, expiry_ms)]
        lines.append("\t".join([iso(ts_ms), day(expiry_ms),
                                *[shown(vals[r], unit) if r in vals else "" for r in runs]]))
    return "\n".join(lines)


def underlying_series_text(by_run: dict[str, list[tuple[int, Optional[float]]]], unit: str) -> str:
    """Time, then one column per run (side by side on equal time): a level = "underlying" node."""
    runs = list(by_run)
    table: dict[int, dict[str, Optional[float]]] = {}
    for run, rows in by_run.items():
        for ts_ms, value in rows:
            table.setdefault(ts_ms, {})[run] = value
    lines = ["\t".join(["time_utc", *runs])]
    for ts_ms in sorted(table):
        vals = table[ts_ms]
        lines.append("\t".join([iso(ts_ms), *[shown(vals[r], unit) if r in vals else "" for r in runs]]))
    return "\n".join(lines)


def add_query_command(subparsers) -> None:
    """Add `query` (runs, surface, series) to an argparse subparsers object."""
    p = subparsers.add_parser(
        "query", help="ask the stored history: runs, a surface now or as of a time, a node's series",
        description="Answer from PostgreSQL (the SQL views of deploy/sql/003_runs.sql, which Grafana reads too). "
                    "Times are UTC, ISO 8601 or epoch ms. Exit code 2 when the question cannot be asked as given, "
                    "1 when the database has no answer.")
    p.add_argument("--config", metavar="TOML", help="a graph.toml (default: the project's)")
    p.add_argument("--pg", metavar="DSN", help="the database (default: graph.toml sinks.postgres.dsn, else the "
                                               "embedded one under runtime.data_dir/pg)")
    q = p.add_subparsers(dest="what", required=True, metavar="WHAT", help="runs, surface or series (see below)")
    q.add_parser("runs", help="every run: id, source, start/end, code version, methods",
                 description="List every run, oldest first.")
    s = q.add_parser("surface", help="one surface now, or as it stood at a time",
                     description="Print one line per expiry of VENUE:UNDERLYING: forward, every graph.toml node, "
                                 "RMSE, quotes, the calendar check; then the level = \"underlying\" nodes "
                                 "(term structure analytics) with their units.")
    s.add_argument("surface", metavar="VENUE:UNDERLYING", help="e.g. deribit:BTC, okx:ETH, all:BTC")
    s.add_argument("--at", metavar="TIME", help="as of this UTC time (default: the latest)")
    s.add_argument("--run", metavar="RUN_ID", help="one run's surface (default: the run that wrote it last)")
    s.add_argument("--json", action="store_true", help="the surface as JSON (the gateway's SurfaceSnapshot)")
    t = q.add_parser("series", help="one node's values over time, per expiry; runs side by side",
                     description="Print time, expiry and the node's value (tab-separated), one column per --run. "
                                 "A level = \"underlying\" node has no expiry: time and value, the value in effect "
                                 "at --start first, then each change.")
    t.add_argument("surface", metavar="VENUE:UNDERLYING", help="e.g. deribit:BTC")
    t.add_argument("node", help="a graph.toml node by name: atm_vol, rr25, bf25, … or an underlying-level one "
                                "(fwd_vol_30_90, …)")
    t.add_argument("--start", required=True, metavar="TIME", help="from this UTC time (inclusive)")
    t.add_argument("--end", required=True, metavar="TIME", help="to this UTC time (inclusive)")
    t.add_argument("--expiry", metavar="DATE", help="one expiry (2026-09-25 or epoch ms; default: every expiry)")
    t.add_argument("--run", action="append", metavar="RUN_ID",
                   help="a run; give it twice to compare two runs (default: the run that wrote it last)")
    p.set_defaults(func=run_query)


def _dsn(args, config) -> tuple[str, Optional[object]]:
    """(DSN, embedded server handle to stop after, or None)."""
    if args.pg or config.sinks.postgres.dsn:
        return args.pg or config.sinks.postgres.dsn, None
    from connectors.postgres import embedded_server

    pgdata = Path(config.runtime.data_dir).resolve() / "pg"
    if not pgdata.is_dir():
        raise QueryError(f"no embedded PostgreSQL in {pgdata}: nothing has been stored there yet; run `volgraph run` "
                         "first, or pass --pg DSN")
    server = embedded_server(pgdata)
    return server.get_uri(), server


def run_query(args) -> int:
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # pgserver's, harmless here
    try:
        config = load_config(args.config)
        return _answer(args, config, sys.stdout)
    except (QueryError, ConfigError) as exc:
        print(f"volgraph query: {exc}", file=sys.stderr)
        return 2


def _answer(args, config, out) -> int:
    from connectors.postgres import connect, latest_surface, list_runs, node_series, surface_as_of, underlying_series

    units = {n.name: n.unit for n in config.nodes if n.unit}
    if args.what == "surface":
        venue, underlying = parse_surface(args.surface)
        at = parse_time_ms(args.at, "--at") if args.at else None
    elif args.what == "series":
        venue, underlying = parse_surface(args.surface)
        start, end = parse_time_ms(args.start, "--start"), parse_time_ms(args.end, "--end")
        if end < start:
            raise QueryError(f"--end {args.end} is before --start {args.start}; swap them")
        expiry = parse_expiry_ms(args.expiry) if args.expiry else None
        level = next((n.level for n in config.nodes if n.name == args.node), None)
        if level == "underlying" and expiry is not None:
            raise QueryError(f"{args.node} is a level = \"underlying\" node: one value per surface, no expiry; "
                             "drop --expiry")
        if level == "instrument":
            raise QueryError(f"{args.node} is a level = \"instrument\" node (one value per strike): read it from "
                             "the instrument_node_history view; `query series` reads expiry and underlying nodes")
    dsn, server = _dsn(args, config)
    try:
        with connect(dsn) as conn:
            if args.what == "runs":
                runs = list_runs(conn)
                for r in runs:
                    end_txt = iso(r.ended_ms) if r.ended_ms is not None else "running (or killed)"
                    print(f"{r.run_id}\t{r.source}\t{iso(r.started_ms)} → {end_txt}\tcode {r.code_version}\t"
                          f"config {r.config_hash}\t{json.dumps(r.methods, sort_keys=True)}\t{r.detail}", file=out)
                return 0 if runs else 1
            if args.what == "surface":
                try:
                    snap = (surface_as_of(conn, venue, underlying, at, args.run) if at is not None
                            else latest_surface(conn, venue, underlying, args.run))
                except ValueError as exc:
                    raise QueryError(str(exc)) from None
                if snap is None:
                    print(f"volgraph query: no surface of {venue}:{underlying}"
                          f"{' in run ' + args.run if args.run else ''}{' at ' + iso(at) if at else ''}",
                          file=sys.stderr)
                    return 1
                if args.json:
                    from operators.events import to_json
                    print(to_json(snap).decode(), file=out)
                else:
                    print(surface_text(snap, units, tuple(n.name for n in config.nodes)), file=out)
                return 0
            by_run: dict[str, list] = {}
            # a node not in this graph.toml (another run's): its expiry rows, else its underlying ones
            for under in ((False,) if level == "expiry" else (True,) if level == "underlying"
                          else (False,) if expiry is not None else (False, True)):
                for run in (args.run or [None]):
                    try:
                        rows = (underlying_series(conn, venue, underlying, args.node, start, end, run) if under
                                else node_series(conn, venue, underlying, args.node, start, end, expiry, run))
                    except ValueError as exc:
                        raise QueryError(str(exc)) from None
                    by_run[run or "latest run"] = rows
                if any(by_run.values()):
                    break
            if not any(by_run.values()):
                print(f"volgraph query: no {args.node} values for {venue}:{underlying} between {iso(start)} and "
                      f"{iso(end)} UTC (is `{args.node}` a node of the graph.toml that run used?)", file=sys.stderr)
                return 1
            print((underlying_series_text if under else series_text)(by_run, units.get(args.node, "")), file=out)
            return 0
    finally:
        if server is not None:
            server.cleanup()
