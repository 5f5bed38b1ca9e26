"""Processes that start and stop like services: the one place for child-process lifetime,
port checks, stop signals and logging set-up (docs/operations.md "Stopping and signals").

- Children (`Supervisor.spawn`) die with their parent, SIGKILL included: each asks the kernel
  for SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG, Linux) and starts with SIGINT and
  SIGTERM at their defaults, whatever the launcher ignored (nohup, `cmd &` in a script), in a
  process group of their own: a terminal's Ctrl-C reaches only the parent, which drains the
  flow first and then stops them (not a new session: that is what let them outlive it).
- The embedded PostgreSQL is not our child (pg_ctl daemonises it): a watcher process holds a
  pipe from the parent and stops that server when the pipe closes — however the parent ended —
  unless another live process still uses it (`watch_postgres`).
- `Supervisor.stop` sends SIGTERM to every child at once and waits on one shared deadline,
  then SIGKILLs what is left.
- A port that is taken, or a child that exits while starting, is a `StartError` whose message
  names the port or the child and the fix; the CLI prints it and exits non-zero.
- `setup_logging`: plain lines for people, JSON lines for machines (`--log-format json`, or
  VOLGRAPH_LOG_FORMAT for processes started without the CLI), with the epoch as `trace_id`
  when a record carries one (`log.info(..., extra={"epoch": n})`).

Run as `python -m flows.services watch-postgres PGDATA` it is that watcher. Never imports
connectors or operators (it starts processes; it knows nothing of what they do); never
computes anything about volatility.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

LOG_FORMAT_ENV = "VOLGRAPH_LOG_FORMAT"
CLEAN_STOP = b"clean stop\n"  # what the parent writes to a watcher before closing its pipe
LOG_FORMATS = ("plain", "json")
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("volgraph.services")


class StartError(RuntimeError):
    """Something the run needs could not start; the message names it and the fix."""


# ---------------------------------------------------------------- logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO 8601), level, logger, process, pid, msg, and
    trace_id (the epoch) when the record carries one; exc when there is an exception."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "process": self.process, "pid": record.process,
               "msg": record.getMessage()}
        epoch = getattr(record, "epoch", None)
        if epoch is not None:
            doc["trace_id"] = str(epoch)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class PlainFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__("%(asctime)s %(levelname)s " + process + " %(name)s: %(message)s%(trace)s")

    def format(self, record: logging.LogRecord) -> str:
        epoch = getattr(record, "epoch", None)
        record.trace = f" [epoch {epoch}]" if epoch is not None else ""
        return super().format(record)


def log_format(given: Optional[str] = None, default: str = "plain") -> str:
    """The format asked for: `given` (a CLI flag), else $VOLGRAPH_LOG_FORMAT, else `default`
    (graph.toml runtime.log_format where the caller has read it)."""
    fmt = (given or os.environ.get(LOG_FORMAT_ENV) or default).strip().lower()
    if fmt not in LOG_FORMATS:
        raise StartError(f"log format {fmt!r} (--log-format or ${LOG_FORMAT_ENV}): use one of {', '.join(LOG_FORMATS)}")
    return fmt


def setup_logging(process: str, fmt: Optional[str] = None, level: str = "INFO", default: str = "plain") -> str:
    """Configure the root logger of this process (to stderr); returns the format used.
    Children started by `Supervisor.spawn` inherit the format through $VOLGRAPH_LOG_FORMAT."""
    fmt = log_format(fmt, default)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else PlainFormatter(process))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("websockets").setLevel(logging.WARNING)  # it logs every HTTP request at INFO
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # and this every command it runs
    logging.captureWarnings(True)
    os.environ[LOG_FORMAT_ENV] = fmt
    return fmt


# ---------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read it back, release it). Prefer
    handing a server port 0 and reading its bound port where the API allows."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, what: str, fix: str) -> None:
    """StartError naming the port and the fix if `port` on `host` cannot be bound now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(f"{what}: port {port} is in use by another process; {fix}") from None
            raise StartError(f"{what}: cannot bind {host}:{port} ({exc.strerror}); {fix}") from None


# ---------------------------------------------------------------- children


def _child_setup(parent_pid: int) -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the parent only: it drains the flow, then stops us


class Supervisor:
    """The children of one run: started with `spawn`, checked with `wait_listening`, stopped
    together with `stop` (also on any exception in the `with` block)."""

    def __init__(self, stop_timeout_s: float) -> None:
        self.stop_timeout_s = stop_timeout_s
        self.children: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def spawn(self, name: str, argv: Sequence[str], **popen) -> subprocess.Popen:
        parent = os.getpid()
        proc = subprocess.Popen(list(argv), preexec_fn=lambda: _child_setup(parent), **popen)
        self.children.append((name, proc))
        log.info("started %s (pid %d)", name, proc.pid)
        return proc

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.children}

    def wait_listening(self, name: str, proc: subprocess.Popen, host: str, port: int, *, timeout_s: float,
                       ready: Optional[Callable[[], bool]] = None) -> None:
        """Wait until `proc` accepts connections on host:port (and `ready()` holds, if given);
        StartError if it exits first or the deadline passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartError(f"the {name} exited with code {proc.returncode} while starting (its output is "
                                 f"above); fix what it reports and run again")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    if ready is None or ready():
                        return
            except OSError:
                pass
            time.sleep(0.1)  # start-up poll of another process's socket, not a test
        raise StartError(f"the {name} did not listen on {host}:{port} within {timeout_s:.0f} s; "
                         f"see its output above")

    def stop(self) -> dict[str, Optional[int]]:
        """SIGTERM to every running child at once, wait up to stop_timeout_s for all, SIGKILL
        the rest; returns each child's exit code."""
        for _name, proc in self.children:
            if proc.stdin is not None:  # a watcher: told this is a clean stop, it ends at EOF
                try:
                    proc.stdin.write(CLEAN_STOP)
                    proc.stdin.close()
                except OSError:
                    pass
            elif proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.stop_timeout_s
        for name, proc in self.children:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %.1f s; killing it", name, proc.pid, self.stop_timeout_s)
                proc.kill()
                proc.wait()
        codes = {name: proc.returncode for name, proc in self.children}
        self.children.clear()
        return codes


class StopSignals:
    """SIGTERM and SIGINT both ask for a graceful stop (`on_stop`, once); a second one forces
    it (KeyboardInterrupt). Installed in the main thread; replaces whatever the launcher set,
    SIG_IGN included (a SIGINT the launcher ignored still stops the run)."""

    def __init__(self, on_stop: Callable[[str], None]) -> None:
        self.on_stop = on_stop
        self.received: Optional[str] = None
        self.at_monotonic: Optional[float] = None

    def install(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise KeyboardInterrupt(f"{name} again: stopping at once")
        self.received, self.at_monotonic = name, time.monotonic()
        self.on_stop(name)


# ---------------------------------------------------------------- embedded PostgreSQL


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process, from /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(*pids: int) -> set[int]:
    """Every process below `pids` in the process tree (not themselves)."""
    table = process_table()
    found: set[int] = set()
    frontier = set(pids)
    while frontier:
        frontier = {p for p, (ppid, _s) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: its parent just has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def exited(pid: int) -> bool:
    return not _alive(pid)


def prune_postgres_handles(pgdata: str | os.PathLike, exited: int = 0) -> list[int]:
    """Drop dead pids from pgserver's list of processes using the server in `pgdata`
    (`.handle_pids.json`; a SIGKILLed user leaves its pid there and the server would then
    outlive every later clean exit); `exited` counts as dead. Returns the live pids left."""
    path = Path(pgdata) / ".handle_pids.json"
    if not path.exists():
        return []
    try:
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
    except (ValueError, TypeError):
        pids = []
    live = [p for p in pids if p != exited and _alive(p)]
    if live != pids:
        path.write_text(json.dumps(live))
    return live


def postmaster_pid(pgdata: str | os.PathLike) -> Optional[int]:
    try:
        return int((Path(pgdata) / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def watch_postgres(supervisor: Supervisor, pgdata: str | os.PathLike) -> subprocess.Popen:
    """Start the watcher that stops the embedded PostgreSQL in `pgdata` when this process ends,
    however it ends (it waits for EOF on a pipe only this process holds)."""
    return supervisor.spawn("postgres watcher", [sys.executable, "-m", "flows.services", "watch-postgres", str(pgdata),
                                                 str(os.getpid())], stdin=subprocess.PIPE)


def _watch_postgres_main(pgdata: str, parent: int, timeout_s: float = 10.0) -> int:
    # The watcher outlives its parent on purpose: ignore the signals aimed at the run.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.stdin.buffer.read() == CLEAN_STOP:  # returns at EOF: the parent has exited or closed the pipe
        return 0  # a clean stop: the parent's pgserver handle stops the server at its exit
    if prune_postgres_handles(pgdata, exited=parent):
        return 0  # someone else still uses this server
    pid = postmaster_pid(pgdata)
    if pid is None or not _alive(pid):
        return 0  # the parent's clean exit stopped it already
    os.kill(pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for another process to exit, not a test
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch-postgres":
        raise SystemExit(_watch_postgres_main(sys.argv[2], int(sys.argv[3])))
    print("usage: python -m flows.services watch-postgres PGDATA PARENT_PID", file=sys.stderr)
    raise SystemExit(2)
