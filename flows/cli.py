"""The `volgraph` command: run, sim, gateway, check-config.

`volgraph run` starts everything on embedded defaults — the local simulator speaking the
Deribit protocol, an embedded PostgreSQL, the gateway with its dashboard — then the
dataflow, prints the dashboard URL and a live status line; Ctrl-C stops it all cleanly.
`volgraph run --live` takes the same path against the real exchange.
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
    parser = argparse.ArgumentParser(prog="volgraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole system (simulator, PostgreSQL, gateway, flow)")
    run.add_argument("--config", help="a graph.toml (default: the project's)")
    run.add_argument("--live", action="store_true", help="connect to the real exchange, not the simulator")
    run.add_argument("--pg", metavar="DSN", help="an external PostgreSQL instead of the embedded one")
    run.add_argument("--port", type=int, help="gateway/dashboard port (default: graph.toml sinks.gateway.port)")
    run.add_argument("--seconds", type=float, help="stop after this many seconds")
    run.add_argument("--rate", type=int, help="simulator messages/s (default: graph.toml simulator.rate)")
    run.add_argument("--no-postgres", action="store_true", help="run without persistence")

    replay = sub.add_parser("replay", help="run the system on a recorded file instead of a live feed")
    replay.add_argument("file", help="a recording (volgraph record --out FILE)")
    replay.add_argument("--venue", choices=("deribit", "okx"), default="deribit", help="whose protocol the file holds")
    replay.add_argument("--speed", default="max", help='"max", or a factor of real time (1, 10, …)')
    for flag, kw in (("--config", {}), ("--pg", {"metavar": "DSN"}), ("--port", {"type": int}),
                     ("--seconds", {"type": float})):
        replay.add_argument(flag, **kw)
    replay.add_argument("--no-postgres", action="store_true")

    sub.add_parser("record", help="record a venue's raw frames to a file for replay", add_help=False)
    sub.add_parser("bench", help="the engine benchmark: volgraph vs the naive baseline", add_help=False)

    sub.add_parser("sim", help="the exchange simulator (Deribit JSON-RPC over websocket)", add_help=False)
    sub.add_parser("sim-okx", help="the OKX simulator (OKX v5 public websocket)", add_help=False)
    sub.add_parser("gateway", help="the websocket gateway and dashboard server", add_help=False)
    check = sub.add_parser("check-config", help="validate a graph.toml and print its nodes")
    check.add_argument("path", nargs="?")

    argv = list(sys.argv[1:] if argv is None else argv)
    # sim and gateway own their flags: hand the rest of the line over untouched
    if argv and argv[0] == "sim":
        from connectors.sim.deribit import main as sim_main
        return sim_main(argv[1:]) or 0
    if argv and argv[0] == "sim-okx":
        from connectors.sim.okx import main as okx_sim_main
        return okx_sim_main(argv[1:]) or 0
    if argv and argv[0] == "record":
        from connectors.capture.record import main as record_main
        return record_main(argv[1:]) or 0
    if argv and argv[0] == "bench":
        # bench/ lives beside the packages in a checkout; it is not installed
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from bench.bench_engine import main as bench_main
        return bench_main(argv[1:]) or 0
    if argv and argv[0] == "gateway":
        from connectors.gateway.server import main as gateway_main
        return gateway_main(argv[1:]) or 0

    args = parser.parse_args(argv)
    try:
        if args.command == "check-config":
            config = load_config(args.path)
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

    from connectors.gateway.server.publisher import GatewaySink
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
            if config.sources.deribit.enabled:
                port = free_port() if not sim.port else sim.port
                children.append(subprocess.Popen(start_new_session=True, args=py + [
                    "sim", "--host", sim.host, "--port", str(port), "--seed", str(sim.seed), "--rate", rate,
                    "--scale", sim.scale, "--currencies", ",".join(config.sources.deribit.currencies)]))
                wait_for_port(sim.host, port, children[-1], "Deribit simulator")
                urls["deribit"] = f"ws://{sim.host}:{port}/ws/api/v2"
            if config.sources.okx.enabled:
                port = free_port()
                children.append(subprocess.Popen(start_new_session=True, args=py + [
                    "sim-okx", "--host", sim.host, "--port", str(port), "--seed", str(sim.seed + 1), "--rate", rate,
                    "--scale", sim.scale, "--families", ",".join(config.sources.okx.families)]))
                wait_for_port(sim.host, port, children[-1], "OKX simulator")
                urls["okx"] = f"ws://{sim.host}:{port}/ws/v5/public"

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

    if args.venue == "okx":
        from connectors.venues.okx import parse_frame
    else:
        from connectors.venues.deribit import parse_frame
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
