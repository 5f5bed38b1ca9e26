"""Benchmark: how long `volgraph run` takes to stop, per stop signal (issue #16: within 5 s on
this machine, rows flushed), against SIGKILL of the parent in the same run — no drain and no
flush, the floor a graceful stop is compared with.

Each row starts a fresh `volgraph run` (one Deribit simulator at the small scale, the gateway,
an embedded PostgreSQL in a temporary folder, the dataflow), waits for the first patch, sends
the signal and measures, from the signal: the parent's exit, and every process of the tree
(children, the embedded PostgreSQL) gone. Prints a table (machine, date, command); asserts
nothing. The stop time also sets deploy's terminationGracePeriodSeconds (docs/operations.md).

    .venv/bin/python bench/bench_stop.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flows.services import descendants, exited, postmaster_pid  # noqa: E402

CONFIG = """[runtime]
metrics_port = 0
data_dir = "{data}"

[sources.deribit]
currencies = ["BTC"]

[sources.okx]
enabled = false

[simulator]
rate = 500
scale = "small"
"""
MODES = ("SIGTERM", "SIGINT", "SIGINT, launcher ignored it", "SIGKILL (floor: no drain, no flush)")


def _tree(pid: int, pgdata: Path) -> set[int]:
    """The children of `pid` and the embedded PostgreSQL (pg_ctl daemonises it) with its own."""
    pm = postmaster_pid(pgdata)
    return descendants(pid) | ({pm} | descendants(pm) if pm else set())


def one_stop(mode: str, timeout_s: float = 180.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_stop_") as tmp:
        config = Path(tmp) / "graph.toml"
        config.write_text(CONFIG.format(data=Path(tmp) / "data"))
        ignore = mode.startswith("SIGINT, launcher")
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--port", "0"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore else None)
        lines: list[str] = []
        first_patch = threading.Event()

        def read():
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if "first patch of" in line:
                    first_patch.set()
            first_patch.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not first_patch.wait(timeout_s) or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"{mode}: no first patch within {timeout_s} s:\n" + "\n".join(lines[-30:]))
        pids = _tree(proc.pid, Path(tmp) / "data" / "pg")
        sig = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}.get(mode.split(",")[0].split(" ")[0], signal.SIGKILL)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=timeout_s)
        parent_s = time.monotonic() - t0
        while any(not exited(p) for p in pids) and time.monotonic() - t0 < timeout_s:
            time.sleep(0.01)  # polling other processes' exit (the measurement's resolution)
        tree_s = time.monotonic() - t0
        reader.join(timeout=10)
        pending = next((m.group(1) for m in map(re.compile(r"pending (\d+)$").search, lines) if m), "-")
        return dict(mode=mode, parent_s=parent_s, tree_s=tree_s, code=code, processes=len(pids),
                    left=sum(1 for p in pids if not exited(p)), pending=pending)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=1, help="stops per mode (default: %(default)s)")
    args = p.parse_args(argv)
    print(f"# machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}")
    print(f"# date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"{'stop':<38} {'parent exit s':>13} {'tree gone s':>12} {'exit':>5} {'procs':>6} {'left':>5} {'pg pending':>10}")
    for mode in MODES:
        for _ in range(args.repeat):
            r = one_stop(mode)
            print(f"{r['mode']:<38} {r['parent_s']:>13.2f} {r['tree_s']:>12.2f} {r['code']:>5} {r['processes']:>6} "
                  f"{r['left']:>5} {r['pending']:>10}", flush=True)
    print("budget (issue #16): a graceful stop within 5 s, rows flushed (pg pending 0), nothing left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
