"""The `volgraph` command: run the whole system, replay, record, benchmark, simulate, serve,
check a graph.toml.

`volgraph run` starts everything on embedded defaults — a local simulator per enabled venue,
each speaking its exchange's protocol, an embedded PostgreSQL, the gateway with its
dashboard — then the dataflow, prints the dashboard URL and a live status line; Ctrl-C stops
it all cleanly. `volgraph run --live` takes the same path against the real exchanges.
The commands that own their flags (record, bench, sim, sim-okx, gateway) get the rest of the
line untouched, and their defaults from the project's graph.toml (handed to their main(), which
never reads it: connectors never import flows). This module only parses arguments and starts processes: it never parses a
frame and never computes anything about volatility.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import urllib.request
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Optional

from flows.config import ConfigError, load_config
from flows.services import (LOG_FORMAT_ENV, LOG_FORMATS, Restart, StartError, StopSignals, Supervisor,
                            check_port_free, free_port, prune_postgres_handles, setup_logging, watch_postgres)

log = logging.getLogger("volgraph")


def main(argv: Optional[list[str]] = None) -> int:
    from connectors.venues import VENUES  # the registry only: no venue module, no simulator

    parser = argparse.ArgumentParser(
        prog="volgraph", description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="`volgraph COMMAND --help` explains a command and its options. "
               "Defaults live in graph.toml; see README.md and docs/architecture.md.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the whole system: simulators, PostgreSQL, gateway + dashboard, dataflow",
        description="Start the venue simulators (or connect to the real exchanges with --live), an "
                    "embedded PostgreSQL, the gateway with its dashboard, then the dataflow; print the "
                    "dashboard URL and a live status line. Ctrl-C (SIGINT) or SIGTERM stops everything; "
                    "no child outlives this process, SIGKILL included.")
    system_options(run, until="until Ctrl-C or SIGTERM")
    run.add_argument("--live", action="store_true",
                     help="connect to the real exchanges (graph.toml sources.*.url), not the simulators "
                          "(default: off)")
    run.add_argument("--rate", type=int,
                     help="simulator messages/s per venue (default: graph.toml simulator.rate)")
    run.add_argument("--fresh", action="store_true",
                     help="discard the recovery snapshots in runtime.data_dir/recovery and start with empty state "
                          "(default: resume from them when graph.toml runtime.recovery = true)")

    replay = sub.add_parser(
        "replay", help="run the whole system on a recording, or on market events stored in PostgreSQL",
        description="Run the gateway, PostgreSQL and the dataflow on a file written by `volgraph record`, "
                    "through the same parser as the live feed, on the recording's clock (a recording of "
                    "last month fits last month's expiries); or, with --from-db, on the market events a run "
                    "stored between --start and --end, on their own clock. Either is a new run beside the "
                    "others; print a summary at the end.")
    replay.add_argument("file", nargs="?",
                        help="a recording (gzip JSON lines from `volgraph record --out FILE`); not with --from-db")
    replay.add_argument("--from-db", action="store_true",
                        help="re-run the market events stored in PostgreSQL between --start and --end (graph.toml "
                             "[sinks.postgres] market_events = true stores them) as a new run, e.g. with another "
                             "--config (default: off)")
    replay.add_argument("--start", metavar="T0",
                        help="with --from-db: the window's start, UTC: 2026-01-05T09:00:00Z, 2026-01-05 or epoch ms")
    replay.add_argument("--end", metavar="T1", help="with --from-db: the window's end (excluded), as --start")
    replay.add_argument("--run", metavar="RUN_ID", dest="source_run",
                        help="with --from-db: whose stored events (default: the latest-started run with events in "
                             "the window)")
    replay.add_argument("--venue", choices=tuple(VENUES), default="deribit",
                        help="whose protocol the file holds (default: deribit)")
    replay.add_argument("--speed",
                        help='"max" (as fast as the flow reads), or a factor of the recording\'s real time: 1, 10, … '
                             '(default: graph.toml runtime.replay_speed)')
    system_options(replay, until="at the end of the file")

    # these six parse their own flags (in their own modules): `volgraph X --help` is theirs
    sub.add_parser("record", add_help=False,
                   help="record a venue's raw websocket frames to a file for `volgraph replay`")
    sub.add_parser("bench", add_help=False,
                   help="the engine benchmark: volgraph against the naive baseline on recorded frames")
    sub.add_parser("sim", add_help=False,
                   help="a local Deribit simulator (JSON-RPC over websocket), driven by known SVI surfaces")
    sub.add_parser("sim-okx", add_help=False,
                   help="a local OKX simulator (v5 public websocket, options), driven by known SVI surfaces")
    sub.add_parser("gateway", add_help=False,
                   help="the websocket gateway: serves surfaces (snapshot + patches) and the dashboard")
    sub.add_parser("watch", add_help=False,
                   help="a live surface in the terminal: the gateway protocol's reference client")
    check = sub.add_parser(
        "check-config", help="validate a graph.toml and print its analytic nodes",
        description="Load a graph.toml over the project's defaults and validate it: unknown keys, bad "
                    "values, unknown node inputs, bad `fn` and cycles fail with the key and the fix "
                    "(exit code 2). Prints each analytic node when the file is valid.")
    check.add_argument("path", nargs="?", metavar="TOML",
                       help="the file to check (default: the project's graph.toml)")
    check.add_argument("--config", metavar="TOML", dest="config_path",
                       help="the same, as an option (as `volgraph run --config` takes it)")

    argv = list(sys.argv[1:] if argv is None else argv)
    # sim and gateway own their flags: hand the rest of the line over untouched
    sims = {v.sim_command: v for v in VENUES.values()}
    if argv and argv[0] in (*sims, "record", "gateway", "watch"):  # $VOLGRAPH_LOG_FORMAT: `volgraph run` sets it for its children
        try:
            setup_logging(argv[0], default=load_config().runtime.log_format)
        except (StartError, ConfigError) as exc:
            print(f"volgraph {argv[0]}: {exc}", file=sys.stderr)
            return 2
    if argv and argv[0] in sims:  # `sim`, `sim-okx`: the venue's simulator (connectors/venues/registry.py)
        v = sims[argv[0]]
        return v.simulator_main()(argv[1:], defaults=simulator_defaults(load_config(), v.name)) or 0
    if argv and argv[0] == "record":
        from connectors.capture.record import main as record_main
        config = load_config()
        return record_main(argv[1:], sections={name: getattr(config.sources, name) for name in VENUES}) or 0
    if argv and argv[0] == "bench":
        # bench/ lives beside the packages in a checkout; it is not installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from bench.bench_engine import main as bench_main
        return bench_main(argv[1:]) or 0
    if argv and argv[0] == "gateway":
        from connectors.gateway.server import main as gateway_main
        gw = load_config().sinks.gateway
        return gateway_main(argv[1:], defaults={f.name: getattr(gw, f.name) for f in dataclasses.fields(gw)}) or 0
    if argv and argv[0] == "watch":
        from connectors.gateway.watch import main as watch_main
        gw = load_config().sinks.gateway
        host = "127.0.0.1" if gw.host in ("0.0.0.0", "::") else gw.host
        return watch_main(argv[1:], defaults={"url": f"ws://{host}:{gw.port}/ws"}) or 0

    from connectors.grafana.cli import add_grafana_commands
    from flows.doctor import add_doctor_command
    from flows.metrics import METRICS
    from flows.query import add_query_command
    add_grafana_commands(sub, known_metrics=METRICS)
    add_doctor_command(sub)
    add_query_command(sub)
    args = parser.parse_args(argv)
    if args.command in ("grafana", "doctor", "query"):
        return args.func(args)
    try:
        if args.command == "check-config":
            if args.path and args.config_path and args.path != args.config_path:
                check.error(f"two files given ({args.path}, --config {args.config_path}); give one")
            config = load_config(args.path or args.config_path)
            print(f"{config.path}: ok")
            name_w = max((len(n.name) for n in config.nodes), default=0)
            level_w = max((len(n.level) for n in config.nodes), default=0)
            fn_w = max((len(n.fn_path) for n in config.nodes), default=0)
            for node in config.nodes:  # columns aligned: name, level (expiry / instrument / underlying), fn
                print(f"  {node.name:<{name_w}}  {node.level:<{level_w}}  {node.fn_path:<{fn_w}}  inputs={list(node.inputs)}"
                      f" {node.params or ''}".rstrip())
            return 0
        if args.command == "replay":
            check_replay_args(args, replay.error)
        if args.command in ("run", "replay"):
            return run_system(args)
    except ConfigError as exc:
        print(f"volgraph: {exc}", file=sys.stderr)
        return 2
    return 1


def check_replay_args(args, error) -> None:
    """`volgraph replay`: FILE, or --from-db with a window (args.start_ms, args.end_ms set here);
    `error` (argparse's) exits 2 with the message and the fix."""
    if not args.from_db:
        if args.file is None:
            error("give a recording FILE, or --from-db --start T0 --end T1 to re-run stored market events")
        for flag, value in (("--start", args.start), ("--end", args.end), ("--run", args.source_run)):
            if value is not None:
                error(f"{flag} goes with --from-db (a replay of stored events); a FILE replays the whole file")
        return
    if args.file is not None:
        error(f"--from-db reads the database, not a FILE ({args.file}): drop one of them")
    if args.no_postgres:
        error("--from-db reads the stored events from PostgreSQL and writes the new run there: drop --no-postgres")
    for flag, value in (("--start", args.start), ("--end", args.end)):
        if value is None:
            error(f"--from-db needs {flag}: the window of stored events to re-run, e.g. "
                  "--start 2026-01-05T09:00:00Z --end 2026-01-05T10:00:00Z")
    from flows.query import parse_time_ms  # one reading of a time for every command

    try:
        args.start_ms, args.end_ms = parse_time_ms(args.start, "--start"), parse_time_ms(args.end, "--end")
    except ValueError as exc:
        error(str(exc))
    if args.end_ms <= args.start_ms:
        error(f"--end {args.end} is not after --start {args.start}: the window is [T0, T1); give T1 > T0")


def system_options(p: argparse.ArgumentParser, until: str) -> None:
    """The options `volgraph run` and `volgraph replay` share."""
    p.add_argument("--config", metavar="TOML",
                   help="a graph.toml whose keys override the project's (default: the project's graph.toml)")
    p.add_argument("--pg", metavar="DSN",
                   help="an external PostgreSQL instead of the embedded one "
                        "(default: graph.toml sinks.postgres.dsn, else embedded in runtime.data_dir)")
    p.add_argument("--port", type=int,
                   help="gateway/dashboard port; 0 picks a free one (default: graph.toml sinks.gateway.port)")
    p.add_argument("--seconds", type=float, help=f"stop after this many seconds (default: run {until})")
    p.add_argument("--no-postgres", action="store_true",
                   help="run without persistence (default: persist unless sinks.postgres.enabled = false)")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="plain lines for people or JSON lines for machines, for this process and its children "
                        "(default: $VOLGRAPH_LOG_FORMAT, else graph.toml runtime.log_format)")


def simulator_defaults(config, name: str) -> dict:
    """The defaults of `volgraph sim` / `sim-okx` for venue `name`: graph.toml's [simulator] and
    the venue's key list ("BTC,ETH"), as the simulator's main(argv, defaults=…) takes them."""
    from connectors.venues import VENUES

    sim, keys_field = config.simulator, VENUES[name].keys_field
    return dict(host=sim.host, port=sim.port, seed=sim.seed, rate=sim.rate,
                scale=sim.scale, **{keys_field: ",".join(getattr(getattr(config.sources, name), keys_field))})


def run_system(args) -> int:
    """`volgraph run` / `volgraph replay`: children under one Supervisor (flows/services.py), the
    flow in this process. Exit 0 after a clean stop; 3 when something could not start (the
    message names it and the fix)."""
    # pgserver's platformdirs warns on machines without a login session; nothing to act on
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    config = load_config(args.config)
    try:
        fmt = setup_logging("volgraph", args.log_format, default=config.runtime.log_format)
    except StartError as exc:
        print(f"volgraph: {exc}", file=sys.stderr)
        return 2

    def say(text: str) -> None:  # people read stdout; machines read JSON lines
        if fmt == "json":
            log.info(text)
        else:
            print(f"volgraph: {text}", flush=True)

    def interrupted(signum, frame):  # a stop asked for while starting: unwind, stopping the children
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):  # also when the launcher ignored SIGINT (nohup, scripts)
        signal.signal(sig, interrupted)
    try:
        with Supervisor(config.runtime.stop_timeout_s) as sup:
            return _run(args, config, sup, say)
    except StartError as exc:
        if fmt == "json":
            log.error("%s", exc)
        else:
            print(f"volgraph: {exc}", file=sys.stderr, flush=True)
        return 3
    except KeyboardInterrupt as exc:  # a stop while starting (graceful), or a second signal (forced)
        forced = "again" in str(exc)
        say(f"stopped{' at once, without draining' if forced else ''}")
        return 1 if forced else 0


def _run(args, config, sup: Supervisor, say) -> int:
    from bytewax.testing import run_main

    from connectors.gateway.auth import PUBLISH_TOKEN_ENV, configured_token, new_publish_token
    from connectors.gateway.publisher import GatewaySink
    from connectors.venues import VENUES
    from flows.metrics import COUNTERS, FITTED, STOP, serve_metrics
    from flows.runs import resumed_run, run_info
    from flows.surface import build_flow, market_event_sink, postgres_sink, tune_gc, venue_sources
    from operators.state import chain

    data_dir = Path(config.runtime.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(data_dir / "numba"))
    py = [sys.executable, "-m", "flows.cli"]
    # the ports this run's own servers need, checked before anything starts
    gw = config.sinks.gateway
    gw_port = gw.port if args.port is None else args.port
    if gw_port == 0:
        gw_port = free_port(gw.host)
    else:
        check_port_free(gw.host, gw_port, "gateway", "pass --port N (0 picks a free one) or stop that process")
    metrics_port, metrics_host = config.runtime.metrics_port, config.runtime.metrics_host
    if metrics_port:
        check_port_free(metrics_host, metrics_port, "flow metrics",
                        "set runtime.metrics_port to a free port (0: no /metrics) or stop that process")
    urls: dict[str, str] = {}
    replaying = args.command == "replay"
    if not replaying and not args.live:  # one simulator process per venue, each speaking its protocol
        sim = config.simulator
        rate = str(args.rate or sim.rate)
        for name, venue in VENUES.items():  # connectors/venues/registry.py
            section = getattr(config.sources, name)
            if not section.enabled:
                continue
            what = f"{venue.label} simulator"
            # [simulator] port (if set) goes to the first venue's simulator, the others take free ports
            if sim.port and name == next(iter(VENUES)):
                port = sim.port
                check_port_free(sim.host, port, what, "set [simulator] port = 0 (any free port) or stop that process")
            else:
                port = free_port(sim.host)
            proc = sup.spawn(what, py + [
                venue.sim_command, "--host", sim.host, "--port", str(port),
                "--seed", str(sim.seed + venue.sim_seed_offset), "--rate", rate, "--scale", sim.scale,
                f"--{venue.keys_field}", ",".join(getattr(section, venue.keys_field))],
                restart=Restart(sim.host, port))  # restarted on the same port if it dies; the source reconnects
            sup.wait_listening(what, proc, sim.host, port, timeout_s=60.0)
            urls[name] = f"ws://{sim.host}:{port}{venue.sim_url_path}"

    # the publisher always authenticates: the configured token, else one made for this run, handed to
    # the gateway child by environment (never argv, which any local user reads from /proc)
    token = configured_token(gw.publish_token, gw.publish_token_file) or new_publish_token()
    os.environ[PUBLISH_TOKEN_ENV] = token
    gw_cmd = py + ["gateway", "--host", gw.host, "--port", str(gw_port)]
    proc = sup.spawn("gateway", gw_cmd,  # restarted if it dies; the publisher and the pages reconnect and resync
                     restart=Restart(gw.host, gw_port, ready=lambda pid: _status_pid(gw.host, gw_port) == pid))
    # listening is not enough: another process may hold the port; /status names the gateway's pid
    sup.wait_listening("gateway", proc, gw.host, gw_port, timeout_s=60.0,
                       ready=lambda: _status_pid(gw.host, gw_port) == proc.pid)
    sinks = [GatewaySink(f"ws://{gw.host}:{gw_port}/publish", token=token)]

    # the run every stored row names (flows/runs.py): a resumed `volgraph run` continues its own
    recovery = None if replaying else recovery_config(config, data_dir, fresh=args.fresh, say=say)
    from_db = replaying and getattr(args, "from_db", False)
    if from_db and not config.sinks.postgres.enabled:
        raise StartError("--from-db reads and writes PostgreSQL, which graph.toml turns off: set [sinks.postgres] "
                         "enabled = true (in the --config file)")
    if from_db:
        run = None  # named once the window's events are found (below, with the database up)
    elif replaying:
        run = run_info(config, source="file", detail=str(Path(args.file).resolve()))
    else:  # the detail must not change between restarts (a resumed run is the same run): no sim ports
        detail = ("live " + " ".join(getattr(config.sources, v).url for v in config.sources.venues()) if args.live
                  else "simulated " + " ".join(config.sources.venues()))
        run = run_info(config, source="live", detail=detail)
        if recovery is not None:
            run = resumed_run(data_dir / "recovery", run)
    if run is not None:
        say(f"run {run.run_id} (code {run.code_version}, config {run.config_hash})")

    from connectors.postgres import connect

    pg_line = "off"
    postgres = events = None
    if not args.no_postgres and config.sinks.postgres.enabled:
        from connectors.postgres import embedded_postgres, migrate

        dsn = args.pg or config.sinks.postgres.dsn
        if not dsn:
            pgdata = data_dir / "pg"
            prune_postgres_handles(pgdata)  # a SIGKILLed run's pid would keep the server alive for ever
            try:
                dsn = embedded_postgres(pgdata)
            except Exception as exc:  # pgserver raises whatever its commands raised
                raise StartError(f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}: "
                                 f"{str(exc)[:300]}); see {pgdata / 'log'}, or pass --pg DSN (an external one) "
                                 f"or --no-postgres") from exc
            watch_postgres(sup, pgdata)  # stops it when this process ends, SIGKILL included
        with connect(dsn) as conn:
            migrate(conn)
        if from_db:
            source, run = db_replay_source(args, config, dsn, run_info)
            say(f"run {run.run_id} (code {run.code_version}, config {run.config_hash}): {run.detail}")
        postgres = postgres_sink(config, dsn, run, str(data_dir / "spill"))
        sinks.append(postgres)
        events = None if from_db else market_event_sink(config, dsn, run, str(data_dir / "spill"))
        if events is not None:  # graph.toml [sinks.postgres] market_events = true
            sinks.append(events)
        pg_line = dsn if args.pg or config.sinks.postgres.dsn else f"embedded, {data_dir / 'pg'}"

    if metrics_port:
        try:
            serve_metrics(metrics_port, metrics_host)
        except OSError as exc:  # taken since the check above
            raise StartError(f"flow metrics: port {metrics_port} on {metrics_host} is not free ({exc.strerror}); "
                             f"set runtime.metrics_port to a free port (0: no /metrics) or stop that process") from None

    say("warming the numeric kernels (compiled once, cached in the numba cache)…")
    started = time.monotonic()
    chain.warm_up()  # compile numba kernels before the first market data arrives
    say(f"kernels ready in {time.monotonic() - started:.1f} s")
    if replaying:
        speed = replay_speed(args.speed, config.runtime.replay_speed)
        if from_db:
            source.speed = speed
            feeds = f"database ({run.detail}, {source.events:,} events, speed {speed})"
        else:
            source = replay_source(args, speed)
            feeds = f"replay {args.file} ({args.venue}, speed {speed})"
        sources = [source]
        # the recording's clock, not the wall's: its expiries are live at its own time
        flow = build_flow(config, sources, sinks, now_ms=source.clock_ms,
                          clock_rate=1.0 if speed == "max" else float(speed))
    else:
        sources = venue_sources(config, urls, run_seconds=args.seconds)
        feeds = "  ".join(f"{v} {urls.get(v, getattr(config.sources, v).url)}" for v in config.sources.venues())
        flow = build_flow(config, sources, sinks)
    say(f"dashboard http://{gw.host}:{gw_port}/   feeds {feeds}   postgres {pg_line}")
    if metrics_port:
        say(f"flow metrics http://{metrics_host}:{metrics_port}/metrics")
    say("children " + "  ".join(f"{name}={pid}" for name, pid in sup.pids().items()))
    say("Ctrl-C or SIGTERM stops everything")

    def child_event(text: str) -> None:  # a line of its own above the status line, which goes on below it
        if sys.stdout.isatty() and os.environ.get(LOG_FORMAT_ENV) != "json":
            sys.stdout.write("\r\x1b[2K")
        say(text)

    sup.supervise(child_event)  # a child that dies is reported and restarted (flows/services.py Restart)
    stop = threading.Event()
    status = threading.Thread(target=_status_line, args=(COUNTERS, stop, say), daemon=True)
    status.start()

    def on_stop(name: str) -> None:
        # first signal: end the input and let the flow drain (rows flushed); a second one: give up
        say(f"{name}: stopping ({name} again to force)")
        STOP.set()

    signals = StopSignals(on_stop).install()
    tune_gc()
    flow_started = time.monotonic()
    try:
        if recovery is not None:
            run_main(flow, epoch_interval=timedelta(seconds=config.runtime.snapshot_interval_s),
                     recovery_config=recovery)
        else:
            run_main(flow)
    finally:
        stop.set()
        status.join(timeout=2)
        if sys.stdout.isatty():
            print()
    if postgres is not None:
        stats = [w.stats() for w in postgres.writers]
        tables: dict[str, int] = {}
        for s in stats:
            for table, n in s["rows_written"].items():
                tables[table] = tables.get(table, 0) + n
        say(f"postgres rows written {json.dumps(tables, sort_keys=True)} pending {sum(s['pending'] for s in stats)}")
        if events is not None:  # graph.toml [sinks.postgres] market_events = true
            stats = [w.stats() for w in events.writers]
            say(f"market events stored {sum(s['rows_written'].get('market_events', 0) for s in stats):,} "
                f"pending {sum(s['pending'] for s in stats)} rows, rejected {sum(s['rejected'] for s in stats)}")
        import psycopg

        from connectors.postgres import end_run
        try:  # `volgraph query runs` shows when it stopped; a resumed run clears it (register_run)
            with connect(dsn) as conn:
                end_run(conn, run.run_id, int(time.time() * 1000))
        except (OSError, ValueError, psycopg.Error) as exc:
            say(f"postgres: the run's end was not recorded ({str(exc).strip()[:200]})")
    if signals.at_monotonic is not None:
        say(f"flow drained {time.monotonic() - signals.at_monotonic:.2f} s after {signals.received}")
    if replaying:
        say(replay_summary(source, COUNTERS.snapshot(), FITTED, time.monotonic() - flow_started) + f", run {run.run_id}")
    return 0


def replay_speed(arg: Optional[str], default: float):
    """--speed as ReplaySource takes it: "max" or a positive factor (graph.toml's 0 = "max")."""
    if arg is None:
        return "max" if default == 0 else float(default)
    if arg == "max":
        return "max"
    try:
        speed = float(arg)
    except ValueError:
        speed = -1.0
    if not speed > 0:
        raise StartError(f'--speed {arg}: use "max" or a positive factor of real time (1, 10, …)')
    return speed


def recovery_config(config, data_dir: Path, *, fresh: bool, say):
    """bytewax recovery under data_dir/recovery for `volgraph run` (graph.toml runtime.recovery):
    one partition, made on first use; --fresh discards what is there. None when off."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    if not config.runtime.recovery:
        say("recovery off (graph.toml runtime.recovery = false): a restart begins with empty state")
        return None
    where = data_dir / "recovery"
    if fresh and where.exists():
        shutil.rmtree(where)
        say(f"recovery: --fresh, discarded {where}")
    parts = sorted(where.glob("part-*.sqlite3"))
    if parts:
        say(f"recovery: resuming from {where} ({len(parts)} partition(s); --fresh starts over)")
    else:
        where.mkdir(parents=True, exist_ok=True)
        init_db_dir(where, 1)
        say(f"recovery: new snapshots in {where} every {config.runtime.snapshot_interval_s:g} s")
    return RecoveryConfig(str(where), backup_interval=timedelta(seconds=config.runtime.backup_interval_s))


def replay_summary(source, counters: dict, fitted: set, seconds: float) -> str:
    """The line `volgraph replay` ends with: what was read, on what clock, what came out."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(source.clock_ms() / 1000.0))
    surfaces = sorted({f"{v}:{u}" for v, u, _ in fitted})
    return (f"replay done in {seconds:.2f} s: {int(counters.get('messages_in', 0)):,} events read, recording clock "
            f"at {clock} UTC, {int(counters.get('fits', 0)):,} fits of {len(fitted)} expiries "
            f"({', '.join(surfaces) or 'none'})")


def _status_pid(host: str, port: int) -> Optional[int]:
    """The pid a gateway reports on /status (None if what answers is not a gateway)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=1.0) as r:
            return json.loads(r.read()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None


def replay_source(args, speed):
    from connectors.capture.replay import ReplaySource
    from connectors.venues import venue

    return ReplaySource(args.file, speed=speed, parse=venue(args.venue).parse_frames(), run_seconds=args.seconds)


def db_replay_source(args, config, dsn: str, run_info):
    """`volgraph replay --from-db`: the source over the window's stored events and the new run
    (source "database", detail naming the window and the source run)."""
    from connectors.capture.db_replay import DbReplaySource, EmptyWindow, db_replay_detail, stored_runs

    source_run = args.source_run
    if source_run is None:
        found = stored_runs(dsn, args.start_ms, args.end_ms)
        if not found:
            raise StartError(f"no market events are stored between --start {args.start} and --end {args.end}: widen "
                             "the window, or store events first with graph.toml [sinks.postgres] market_events = true")
        source_run = found[0][0]
    try:
        source = DbReplaySource(dsn, run_id=source_run, start_ms=args.start_ms, end_ms=args.end_ms,
                                run_seconds=args.seconds)
    except EmptyWindow as exc:
        raise StartError(str(exc)) from None
    return source, run_info(config, source="database", detail=db_replay_detail(source_run, args.start_ms, args.end_ms))


def _status_line(counters, stop: threading.Event, say) -> None:
    tty = sys.stdout.isatty() and os.environ.get(LOG_FORMAT_ENV) != "json"
    last = counters.snapshot()
    last_t = time.monotonic()
    every = 1.0 if tty else 10.0
    while not stop.wait(every):
        now = counters.snapshot()
        t = time.monotonic()
        line = status_text(last, now, t - last_t)
        if tty:
            sys.stdout.write("\r\x1b[2K" + line)
            sys.stdout.flush()
        else:
            say(line)
        last, last_t = now, t


def status_text(last: dict, now: dict, seconds: float) -> str:
    """`volgraph run`'s status line from two snapshots of the flow counters `seconds` apart:
    the epoch counters per second (items in, dirty nodes, IV solves by kind, fits run and
    deferred, the share of a core the epochs took), the patch lag and the errors so far."""
    dt = max(seconds, 1e-9)

    def per_s(name):
        return (now.get(name, 0) - last.get(name, 0)) / dt

    errors = sum(v for k, v in now.items() if k.startswith("errors."))
    return (f"msgs/s {per_s('messages_in'):9,.0f}   dirty/s {per_s('dirty'):8,.0f}   "
            f"IV/s full {per_s('iv_full'):8,.0f} taylor {per_s('iv_taylor'):8,.0f} skip {per_s('iv_skipped'):8,.0f}   "
            f"fits/s {per_s('fits'):6.1f} deferred {per_s('fits_deferred'):6.1f}   "
            f"epoch cpu {per_s('epoch_us') / 1e4:4.1f} %   lag {now.get('patch_lag_ms', 0):5.0f} ms   "
            f"errors {errors:,.0f}")


if __name__ == "__main__":
    sys.exit(main())
