"""`volgraph doctor [--config F]`: check a deployment's endpoints and say, in plain words, what
is wrong and how to fix it.

Checks, each ok / FAIL (with the fix) / skip:
  gateway     /healthz answers, and every dependency it reports (publisher, feeds, database) is up
  status      /status: flow workers reported within stale_after_ms, every surface changed lately
  metrics     the gateway's /metrics and the flow's /metrics (runtime.metrics_port) serve volgraph metrics
  postgres    the DSN (--pg, $VOLGRAPH_PG_DSN, graph.toml sinks.postgres.dsn) connects and has the schema
  recovery    the bytewax recovery directory (--recovery-dir, $BYTEWAX_RECOVERY_DIRECTORY) exists, is
              writable and holds initialised partitions
The exit code is 1 when any check fails, 2 for a bad graph.toml, else 0.

flows/cli.py hooks it in with `add_doctor_command(sub)` (it sets `func` on the namespace).
Reads only: never changes a file, a table or a process; never computes anything about volatility
and never imports operators or connectors (it talks HTTP, SQL and the file system directly).
Passwords in DSNs are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flows.config import Config, ConfigError, load_config

OK, FAIL, SKIP = "ok", "FAIL", "skip"

FIX_GATEWAY_DOWN = ("start the gateway (`volgraph gateway`, or `volgraph run` for everything), or point doctor at it "
                    "with --gateway http://HOST:PORT (graph.toml [sinks.gateway] host, port)")
FIX_DEPENDENCY = {
    "publisher": "no flow is publishing to this gateway: start the dataflow (`volgraph run`, or `python -m bytewax.run "
                 "flows.surface:flow` with VOLGRAPH_GATEWAY_URL=ws://HOST:PORT/publish) with the gateway's publish token",
    "feeds": "the flow reads no venue messages: check sources.*.url (VOLGRAPH_URL, VOLGRAPH_OKX_URL), the network "
             "path to the exchange, and the flow's log for disconnect errors",
    "database": "the flow cannot write to PostgreSQL (rows are spilled to <data_dir>/spill meanwhile): check the DSN "
                "(VOLGRAPH_PG_DSN, from the Secret) and that the server is up; `volgraph doctor --pg DSN` tests it",
}
FIX_NO_WORKERS = ("no dataflow worker has sent a StatusReport to this gateway: start the flow, and check its "
                  "VOLGRAPH_GATEWAY_URL and publish token (a refused token shows in /status rejected.token)")


@dataclass
class Finding:
    level: str  # OK, FAIL, SKIP
    check: str
    message: str
    fix: str = ""


@dataclass
class Targets:
    gateway_url: Optional[str]   # http://host:port, no path
    metrics_url: Optional[str]   # the flow's http://host:port/metrics
    dsn: Optional[str]
    recovery_dir: Optional[str]
    stale_after_s: float
    timeout_s: float = 3.0


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def targets_from(config: Config, args: argparse.Namespace, env: Optional[dict] = None) -> Targets:
    """The endpoints to check: the flags, else the environment, else graph.toml."""
    env = os.environ if env is None else env
    gw = config.sinks.gateway
    gateway = args.gateway or f"http://{_local(gw.host)}:{gw.port}"
    rt = config.runtime
    if args.metrics is not None:
        metrics = None if args.metrics.lower() == "none" else args.metrics
    else:
        port = int(env.get("VOLGRAPH_METRICS_PORT", rt.metrics_port))
        host = env.get("VOLGRAPH_METRICS_HOST", rt.metrics_host)
        metrics = f"http://{_local(host)}:{port}/metrics" if port else None
    dsn = args.pg if args.pg is not None else env.get("VOLGRAPH_PG_DSN", config.sinks.postgres.dsn)
    recovery = args.recovery_dir if args.recovery_dir is not None else env.get("BYTEWAX_RECOVERY_DIRECTORY")
    return Targets(gateway_url=gateway.rstrip("/"), metrics_url=metrics, dsn=dsn or None,
                   recovery_dir=recovery or None, stale_after_s=gw.stale_after_ms / 1000.0,
                   timeout_s=args.timeout_s)


def _get(url: str, timeout_s: float) -> tuple[int, bytes]:
    """(status, body); 4xx/5xx are answers too. Raises OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None


def check_gateway(t: Targets) -> list[Finding]:
    url = f"{t.gateway_url}/healthz"
    try:
        status, body = _get(url, t.timeout_s)
    except OSError as exc:
        return [Finding(FAIL, "gateway", f"nothing answers at {url} ({exc})", FIX_GATEWAY_DOWN)]
    try:
        doc = json.loads(body)
    except ValueError:
        return [Finding(FAIL, "gateway", f"{url} answered {status} but not with volgraph's JSON: is something else "
                        "listening on that port?", FIX_GATEWAY_DOWN)]
    deps = doc.get("dependencies") or {}
    out = []
    summary = ", ".join(f"{name} {d.get('state')}" for name, d in sorted(deps.items())) or "no dependencies reported"
    if status == 200 and doc.get("ok", False):
        out.append(Finding(OK, "gateway", f"{url} answered 200: {summary}"))
        return out
    out.append(Finding(FAIL, "gateway", f"{url} answered {status}, not healthy: {summary}",
                       "see the dependency lines below" if deps else FIX_GATEWAY_DOWN))
    for name, d in sorted(deps.items()):
        state = d.get("state")
        if state in ("up", "off"):
            continue
        age = d.get("age_s")
        since = f" for {age:.0f} s" if isinstance(age, (int, float)) else ""
        fix = FIX_DEPENDENCY.get(name, "read the gateway's /status and the flow's log")
        if state == "unknown":
            fix = FIX_NO_WORKERS if name != "publisher" else FIX_DEPENDENCY["publisher"]
        out.append(Finding(FAIL, f"gateway:{name}", f"{name} is {state}{since} ({d.get('detail', '')})", fix))
    return out


def check_status(t: Targets) -> list[Finding]:
    url = f"{t.gateway_url}/status"
    try:
        status, body = _get(url, t.timeout_s)
        doc = json.loads(body)
    except OSError as exc:
        return [Finding(FAIL, "status", f"nothing answers at {url} ({exc})", FIX_GATEWAY_DOWN)]
    except ValueError:
        return [Finding(FAIL, "status", f"{url} answered {status} but not with JSON", FIX_GATEWAY_DOWN)]
    out = []
    workers = doc.get("workers") or {}
    if not workers:
        out.append(Finding(FAIL, "status", "no flow worker has reported to the gateway", FIX_NO_WORKERS))
    for name, w in sorted(workers.items()):
        age = float(w.get("age_s", 0.0))
        if age > t.stale_after_s:
            out.append(Finding(FAIL, "status", f"worker {name} last reported {age:.0f} s ago "
                               f"(stale after {t.stale_after_s:g} s)",
                               "the worker stopped or cannot reach the gateway: read its log; restart it "
                               "(its state resumes from the recovery directory)"))
    surfaces = doc.get("underlyings") or {}
    if workers and not surfaces:
        out.append(Finding(FAIL, "status", "workers report, but the gateway holds no surface yet",
                           "no expiry has been fitted: check the flow's feed errors (volgraph_feed_errors_total) "
                           "and chain.min_quotes"))
    for name, s in sorted(surfaces.items()):
        age = float(s.get("last_patch_age_s", 0.0))
        if age > t.stale_after_s:
            out.append(Finding(FAIL, "status", f"surface {name} last changed {age:.0f} s ago "
                               f"(stale after {t.stale_after_s:g} s)", FIX_DEPENDENCY["feeds"]))
    if not out:
        out.append(Finding(OK, "status", f"{len(workers)} worker(s) fresh, {len(surfaces)} surface(s) fresh "
                           f"(within {t.stale_after_s:g} s)"))
    return out


def _check_metrics(check: str, url: Optional[str], expect: str, timeout_s: float, fix: str) -> Finding:
    if url is None:
        return Finding(SKIP, check, "not configured (runtime.metrics_port = 0, or --metrics none)")
    try:
        status, body = _get(url, timeout_s)
    except OSError as exc:
        return Finding(FAIL, check, f"nothing answers at {url} ({exc})", fix)
    if status != 200:
        return Finding(FAIL, check, f"{url} answered {status}", fix)
    text = body.decode("utf-8", "replace")
    if expect not in text:
        return Finding(FAIL, check, f"{url} serves no {expect}: is it a volgraph process?", fix)
    series = sum(1 for line in text.splitlines() if line.startswith("volgraph_"))
    return Finding(OK, check, f"{url}: {series} volgraph series")


def check_metrics(t: Targets) -> list[Finding]:
    return [
        _check_metrics("metrics:gateway", f"{t.gateway_url}/metrics" if t.gateway_url else None,
                       "volgraph_gateway_clients", t.timeout_s, FIX_GATEWAY_DOWN),
        _check_metrics("metrics:flow", t.metrics_url, "volgraph_messages_in_total", t.timeout_s,
                       "start the flow with its metrics on: graph.toml runtime.metrics_port (env "
                       "VOLGRAPH_METRICS_PORT) and, in a container, runtime.metrics_host = \"0.0.0.0\" "
                       "(VOLGRAPH_METRICS_HOST); or pass --metrics http://HOST:PORT/metrics"),
    ]


def redact(dsn: str) -> str:
    """The DSN without its password (URL or key=value form)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)


def check_postgres(t: Targets) -> list[Finding]:
    if not t.dsn:
        return [Finding(SKIP, "postgres", "no DSN (embedded PostgreSQL under runtime.data_dir, started by "
                        "`volgraph run`); pass --pg DSN or set VOLGRAPH_PG_DSN to check a server")]
    import psycopg

    shown = redact(t.dsn)
    try:
        with psycopg.connect(t.dsn, connect_timeout=max(1, int(t.timeout_s)), autocommit=True) as conn:
            row = conn.execute("SELECT to_regclass('smile_fits') IS NOT NULL, version()").fetchone()
    except Exception as exc:  # psycopg.OperationalError, ProgrammingError for a malformed DSN
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Finding(FAIL, "postgres", f"cannot connect with {shown}: {redact(first)}",
                        "check host, port, user, password and dbname in the DSN (Kubernetes: the Secret "
                        "volgraph-postgres, key dsn) and that the server accepts connections from here")]
    has_schema, version = row
    if not has_schema:
        return [Finding(FAIL, "postgres", f"{shown} connects but has no volgraph tables",
                        "start the flow once against it: it applies deploy/sql/*.sql in order (or run them "
                        "yourself with psql)")]
    return [Finding(OK, "postgres", f"{shown}: connected, schema present ({version.split(',')[0]})")]


def check_recovery(t: Targets) -> list[Finding]:
    if not t.recovery_dir:
        return [Finding(SKIP, "recovery", "no recovery directory given (--recovery-dir, or "
                        "$BYTEWAX_RECOVERY_DIRECTORY): the flow runs without recovery")]
    d = Path(t.recovery_dir)
    init_fix = (f"create it and its partitions once: mkdir -p {d} && python -m bytewax.recovery {d} N "
                "(N partitions, at least the process count; never run it again on a used directory)")
    if not d.exists():
        return [Finding(FAIL, "recovery", f"{d} does not exist", init_fix)]
    if not d.is_dir():
        return [Finding(FAIL, "recovery", f"{d} is not a directory", init_fix)]
    parts = sorted(d.glob("part-*.sqlite3"))
    if not os.access(d, os.W_OK):
        return [Finding(FAIL, "recovery", f"{d} is not writable by uid {os.getuid()}",
                        "give the flow's user write access (Kubernetes: securityContext.fsGroup on the pod)")]
    if not parts:
        return [Finding(FAIL, "recovery", f"{d} holds no recovery partitions (part-*.sqlite3)", init_fix)]
    return [Finding(OK, "recovery", f"{d}: {len(parts)} partition(s), writable")]


def run_checks(t: Targets) -> list[Finding]:
    findings = check_gateway(t)
    if findings[0].message.startswith("nothing answers"):  # one failure said once, not three times
        findings += [Finding(SKIP, "status", "gateway unreachable (above)")]
        findings += [Finding(SKIP, "metrics:gateway", "gateway unreachable (above)")] + check_metrics(t)[1:]
    else:
        findings += check_status(t) + check_metrics(t)
    return findings + check_postgres(t) + check_recovery(t)


def report(findings: list[Finding], out=None) -> int:
    """Print the findings; 1 when any failed, else 0."""
    out = sys.stdout if out is None else out
    failed = [f for f in findings if f.level == FAIL]
    print(f"volgraph doctor: {len(findings)} checks, "
          + (f"{len(failed)} problem(s)" if failed else "no problem found"), file=out)
    for f in findings:
        print(f"  {f.level:<5} {f.check:<18} {f.message}", file=out)
        if f.fix:
            print(f"  {'':<5} {'':<18} fix: {f.fix}", file=out)
    return 1 if failed else 0


def add_doctor_command(subparsers):
    """Add `doctor` to an argparse subparsers object."""
    p = subparsers.add_parser(
        "doctor", help="check a deployment's endpoints and say what is wrong, with the fix",
        description="Check the gateway (/healthz, /status freshness, /metrics), the flow's /metrics, "
                    "PostgreSQL and the recovery directory; print each problem with its fix. Exit code 1 "
                    "when something is wrong.")
    p.add_argument("--config", metavar="TOML", help="the graph.toml the deployment runs (default: the project's)")
    p.add_argument("--gateway", metavar="URL",
                   help="the gateway's base URL (default: http://<sinks.gateway.host>:<sinks.gateway.port>)")
    p.add_argument("--metrics", metavar="URL",
                   help="the flow's /metrics URL, or 'none' (default: runtime.metrics_host/metrics_port, "
                        "$VOLGRAPH_METRICS_HOST/$VOLGRAPH_METRICS_PORT)")
    p.add_argument("--pg", metavar="DSN",
                   help="PostgreSQL DSN to test (default: $VOLGRAPH_PG_DSN, else sinks.postgres.dsn)")
    p.add_argument("--recovery-dir", metavar="DIR",
                   help="bytewax recovery directory (default: $BYTEWAX_RECOVERY_DIRECTORY; none: skipped)")
    p.add_argument("--timeout-s", type=float, default=3.0, help="seconds per check (default: %(default)s)")
    p.set_defaults(func=run_doctor)
    return p


def run_doctor(args: argparse.Namespace, out=None) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"volgraph doctor: {exc}", file=sys.stderr if out is None else out)
        return 2
    return report(run_checks(targets_from(config, args)), out)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="volgraph")
    add_doctor_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["doctor", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
