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
- A child spawned with a `Restart` policy is watched (`Supervisor.supervise`, a thread): when
  it exits on its own it is reported (`on_event`, which `volgraph run` prints), started again
  with the same command line and environment after a backoff that doubles per quick death
  (min_s .. max_s, back to min_s once a child has stayed up reset_after_s), and reported again
  once its readiness check holds (its port answers; the gateway: /status names the new pid).
  Children without a policy (the PostgreSQL watcher) are never restarted.
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
import threading
import time
from dataclasses import dataclass, field
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


@dataclass
class Restart:
    """A child's restart policy. host/port: where it listens (a restart waits for the port to
    answer, and `ready(pid)` to hold if given, up to ready_timeout_s, before it is reported
    up). Backoff before a restart: min_s, doubled after each death that came within
    reset_after_s of the last start, at most max_s."""

    host: str
    port: int
    ready: Optional[Callable[[int], bool]] = None
    min_s: float = 0.5
    max_s: float = 30.0
    reset_after_s: float = 60.0
    ready_timeout_s: float = 60.0
    # state, kept by the Supervisor
    restarts: int = 0
    backoff_s: float = field(default=0.0, repr=False)
    started_s: float = field(default_factory=time.monotonic, repr=False)


class Supervisor:
    """The children of one run: started with `spawn`, checked with `wait_listening`, restarted
    when they die if they have a `Restart` policy (`supervise`), stopped together with `stop`
    (also on any exception in the `with` block)."""

    POLL_S = 0.2  # how often the supervising thread looks at its children

    def __init__(self, stop_timeout_s: float) -> None:
        self.stop_timeout_s = stop_timeout_s
        self.children: list[tuple[str, subprocess.Popen]] = []
        self._spec: dict[str, tuple[list[str], dict, Restart]] = {}  # name -> (argv, popen kwargs, policy)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def spawn(self, name: str, argv: Sequence[str], *, restart: Optional[Restart] = None,
              **popen) -> subprocess.Popen:
        """Start a child. With `restart`, `supervise` starts it again when it dies."""
        proc = self._popen(argv, popen)
        with self._lock:
            self.children.append((name, proc))
            if restart is not None:
                restart.started_s = time.monotonic()
                self._spec[name] = (list(argv), dict(popen), restart)
        log.info("started %s (pid %d)", name, proc.pid)
        return proc

    @staticmethod
    def _popen(argv: Sequence[str], popen: dict) -> subprocess.Popen:
        parent = os.getpid()
        return subprocess.Popen(list(argv), preexec_fn=lambda: _child_setup(parent), **popen)

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {name: p.pid for name, p in self.children}

    def restarts(self) -> dict[str, int]:
        """How many times each supervised child has been started again."""
        with self._lock:
            return {name: spec[2].restarts for name, spec in self._spec.items()}

    # -- supervision ----------------------------------------------------------------

    def supervise(self, on_event: Callable[[str], None]) -> None:
        """Watch the children that have a restart policy, on a thread of its own, until
        `stop`. `on_event(text)` gets a line when one dies and when it is back. A child this
        thread restarts gets SIGTERM when the thread ends (PR_SET_PDEATHSIG follows the thread
        that forked it), which is only at `stop` or when the process dies."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, args=(on_event,), name="supervisor", daemon=True)
            self._thread.start()

    def _watch(self, on_event: Callable[[str], None]) -> None:
        while not self._stopping.wait(self.POLL_S):
            with self._lock:
                dead = [(i, name, proc) for i, (name, proc) in enumerate(self.children)
                        if name in self._spec and proc.poll() is not None]
            for i, name, proc in dead:
                if self._stopping.is_set():
                    return
                try:
                    self._restart(i, name, proc, on_event)
                except Exception:  # this thread must outlive any one failure: the children it restarted
                    log.exception("restarting %s failed; trying again", name)  # get SIGTERM when it ends

    def _restart(self, i: int, name: str, proc: subprocess.Popen, on_event: Callable[[str], None]) -> None:
        argv, popen, policy = self._spec[name]
        now = time.monotonic()
        quick = now - policy.started_s < policy.reset_after_s
        policy.backoff_s = min(policy.max_s, policy.backoff_s * 2) if quick and policy.backoff_s else policy.min_s
        code = proc.returncode
        how = f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exit {code}"
        on_event(f"{name} (pid {proc.pid}) died ({how}); restarting it in {policy.backoff_s:g} s "
                 f"(restart {policy.restarts + 1})")
        log.warning("%s (pid %d) died (%s); restarting in %g s", name, proc.pid, how, policy.backoff_s)
        if self._stopping.wait(policy.backoff_s):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            new = self._popen(argv, popen)
            self.children[i] = (name, new)
            policy.restarts += 1
            policy.started_s = time.monotonic()
        deadline = time.monotonic() + policy.ready_timeout_s
        while not self._stopping.wait(0.1):  # its port, then its own check (another process's start-up)
            if new.poll() is not None:
                return  # died again: the next round reports it and backs off further
            try:
                with socket.create_connection((policy.host, policy.port), timeout=0.5):
                    pass
                if policy.ready is None or policy.ready(new.pid):
                    on_event(f"{name} restarted (pid {new.pid}), answering on {policy.host}:{policy.port}")
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                on_event(f"{name} (pid {new.pid}) did not answer on {policy.host}:{policy.port} within "
                         f"{policy.ready_timeout_s:.0f} s; stopping it to try again")
                new.terminate()  # the next round sees it dead and restarts it
                return

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
        the rest; returns each child's exit code. Nothing is restarted from here on."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)  # a restart in progress gives up at once
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
