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
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Optional

from flows.config import ConfigError, load_config


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
                    "dashboard URL and a live status line. Ctrl-C stops everything.")
    run.add_argument("--config", metavar="TOML",
                     help="a graph.toml whose keys override the project's (default: the project's graph.toml)")
    run.add_argument("--live", action="store_true",
                     help="connect to the real exchanges (graph.toml sources.*.url), not the simulators "
                          "(default: off)")
    run.add_argument("--pg", metavar="DSN",
                     help="an external PostgreSQL instead of the embedded one "
                          "(default: graph.toml sinks.postgres.dsn, else embedded in runtime.data_dir)")
    run.add_argument("--port", type=int,
                     help="gateway/dashboard port (default: graph.toml sinks.gateway.port)")
    run.add_argument("--seconds", type=float,
                     help="stop after this many seconds (default: run until Ctrl-C)")
    run.add_argument("--rate", type=int,
                     help="simulator messages/s per venue (default: graph.toml simulator.rate)")
    run.add_argument("--no-postgres", action="store_true",
                     help="run without persistence (default: persist unless sinks.postgres.enabled = false)")

    replay = sub.add_parser(
        "replay", help="run the whole system on a recording instead of a live feed",
        description="Run the gateway, PostgreSQL and the dataflow on a file written by `volgraph record`, "
                    "through the same parser as the live feed, on the recording's clock.")
    replay.add_argument("file", help="a recording (gzip JSON lines from `volgraph record --out FILE`)")
    replay.add_argument("--venue", choices=tuple(VENUES), default="deribit",
                        help="whose protocol the file holds (default: deribit)")
    replay.add_argument("--speed", default="max",
                        help='"max" (as fast as the flow reads), or a factor of real time: 1, 10, … (default: max)')
    replay.add_argument("--config", metavar="TOML",
                        help="a graph.toml whose keys override the project's (default: the project's graph.toml)")
    replay.add_argument("--pg", metavar="DSN",
                        help="an external PostgreSQL instead of the embedded one (default: embedded, as for run)")
    replay.add_argument("--port", type=int,
                        help="gateway/dashboard port (default: graph.toml sinks.gateway.port)")
    replay.add_argument("--seconds", type=float,
                        help="stop after this many seconds (default: at the end of the file)")
    replay.add_argument("--no-postgres", action="store_true", help="run without persistence (default: off)")

    # these five parse their own flags (in their own modules): `volgraph X --help` is theirs
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
        return gateway_main(argv[1:], defaults=dict(host=gw.host, port=gw.port, publish_token=gw.publish_token)) or 0

    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            if args.path and args.config_path and args.path != args.config_path:
                check.error(f"two files given ({args.path}, --config {args.config_path}); give one")
            config = load_config(args.path or args.config_path)
            print(f"{config.path}: ok")
            for node in config.nodes:
                print(f"  {node.name:<14} {node.level:<8} {node.fn_path}  inputs={list(node.inputs)} {node.params or ''}")
            return 0
        if args.command in ("run", "replay"):
            return run_system(args)
    except ConfigError as exc:
        print(f"volgraph: {exc}", file=sys.stderr)
        return 2
    return 1


def simulator_defaults(config, name: str) -> dict:
    """The defaults of `volgraph sim` / `sim-okx` for venue `name`: graph.toml's [simulator] and
    the venue's key list ("BTC,ETH"), as the simulator's main(argv, defaults=…) takes them."""
    from connectors.venues import VENUES

    sim, keys_field = config.simulator, VENUES[name].keys_field
    return dict(host=sim.host, port=sim.port, seed=sim.seed, rate=sim.rate,
                scale=sim.scale, **{keys_field: ",".join(getattr(getattr(config.sources, name), keys_field))})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"volgraph: the {what} exited with code {proc.returncode}; see its output above")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)  # start-up poll in the CLI, not a test
    raise SystemExit(f"volgraph: the {what} did not listen on {host}:{port} within {timeout_s:.0f} s")


def run_system(args) -> int:
    # pgserver's platformdirs warns on machines without a login session; nothing to act on
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from bytewax.testing import run_main

    from connectors.gateway.publisher import GatewaySink
    from connectors.venues import VENUES
    from flows.metrics import COUNTERS, STOP
    from flows.surface import build_flow, tune_gc, venue_sources
    from operators.state import chain

    config = load_config(args.config)
    data_dir = Path(config.runtime.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(data_dir / "numba"))
    children: list[subprocess.Popen] = []
    py = [sys.executable, "-m", "flows.cli"]
    try:
        urls: dict[str, str] = {}
        replaying = args.command == "replay"
        if not replaying and not args.live:  # one simulator process per venue, each speaking its protocol
            sim = config.simulator
            rate = str(args.rate or sim.rate)
            for name, venue in VENUES.items():  # connectors/venues/registry.py
                section = getattr(config.sources, name)
                if not section.enabled:
                    continue
                # [simulator] port (if set) goes to the first venue's simulator, the others take free ports
                port = sim.port if sim.port and name == next(iter(VENUES)) else free_port()
                children.append(subprocess.Popen(start_new_session=True, args=py + [
                    venue.sim_command, "--host", sim.host, "--port", str(port),
                    "--seed", str(sim.seed + venue.sim_seed_offset), "--rate", rate, "--scale", sim.scale,
                    f"--{venue.keys_field}", ",".join(getattr(section, venue.keys_field))]))
                wait_for_port(sim.host, port, children[-1], f"{venue.label} simulator")
                urls[name] = f"ws://{sim.host}:{port}{venue.sim_url_path}"

        gw = config.sinks.gateway
        gw_port = args.port or gw.port
        gw_cmd = py + ["gateway", "--host", gw.host, "--port", str(gw_port)]
        if gw.publish_token:
            gw_cmd += ["--publish-token", gw.publish_token]
        children.append(subprocess.Popen(gw_cmd, start_new_session=True))
        wait_for_port(gw.host, gw_port, children[-1], "gateway")
        sinks = [GatewaySink(f"ws://{gw.host}:{gw_port}/publish", token=gw.publish_token)]

        pg_line = "off"
        if not args.no_postgres and config.sinks.postgres.enabled:
            from connectors.postgres import PostgresSink, connect, embedded_postgres, migrate

            dsn = args.pg or config.sinks.postgres.dsn or embedded_postgres(data_dir / "pg")
            with connect(dsn) as conn:
                migrate(conn)
            sinks.append(PostgresSink(dsn, batch_rows=config.sinks.postgres.batch_rows,
                                      flush_ms=config.sinks.postgres.flush_ms,
                                      spill_dir=str(data_dir / "spill")))
            pg_line = dsn if args.pg or config.sinks.postgres.dsn else f"embedded, {data_dir / 'pg'}"

        print("volgraph: warming the numeric kernels (compiled once, cached in the numba cache)…", flush=True)
        started = time.monotonic()
        chain.warm_up()  # compile numba kernels before the first market data arrives
        print(f"volgraph: kernels ready in {time.monotonic() - started:.1f} s", flush=True)
        if replaying:
            sources = [replay_source(args)]
            feeds = f"replay {args.file} ({args.venue}, speed {args.speed})"
        else:
            sources = venue_sources(config, urls, run_seconds=args.seconds)
            feeds = "  ".join(f"{v} {urls.get(v, getattr(config.sources, v).url)}" for v in config.sources.venues())
        flow = build_flow(config, sources, sinks)
        if config.runtime.metrics_port:
            from flows.metrics import serve_metrics

            try:
                serve_metrics(config.runtime.metrics_port)
            except OSError as exc:
                print(f"volgraph: no /metrics ({exc}); set runtime.metrics_port to a free port or 0",
                      file=sys.stderr)
        print(f"volgraph: dashboard http://{gw.host}:{gw_port}/   feeds {feeds}   postgres {pg_line}", flush=True)
        if config.runtime.metrics_port:
            print(f"volgraph: flow metrics http://127.0.0.1:{config.runtime.metrics_port}/metrics", flush=True)
        print("volgraph: Ctrl-C stops everything", flush=True)
        stop = threading.Event()
        status = threading.Thread(target=_status_line, args=(COUNTERS, stop), daemon=True)
        status.start()

        def on_interrupt(signum, frame):
            # first Ctrl-C: end the input and let the flow drain; a second one: give up
            print("\nvolgraph: stopping (Ctrl-C again to force)", flush=True)
            STOP.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, on_interrupt)
        signal.signal(signal.SIGTERM, on_interrupt)
        tune_gc()
        try:
            run_main(flow)
        finally:
            stop.set()
            status.join(timeout=2)
            print()
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in reversed(children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


def replay_source(args):
    from connectors.capture.replay import ReplaySource
    from connectors.venues import venue

    parse_frame = venue(args.venue).parse_frame()
    speed = args.speed if args.speed == "max" else float(args.speed)
    return ReplaySource(args.file, speed=speed, parse=parse_frame, run_seconds=args.seconds)


def _status_line(counters, stop: threading.Event) -> None:
    tty = sys.stdout.isatty()
    last = counters.snapshot()
    last_t = time.monotonic()
    every = 1.0 if tty else 10.0
    while not stop.wait(every):
        now = counters.snapshot()
        t = time.monotonic()
        line = status_text(last, now, t - last_t)
        if tty:
            sys.stdout.write("\r\x1b[2K" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
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
