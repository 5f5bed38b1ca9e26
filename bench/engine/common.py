"""The engine benchmark's settings (paced rate, goals, row names, audit interval), the protocol
between the parent and its child processes (a job as JSON on the command line, the result as one
marked JSON line on stdout) and the small helpers every part uses (wall clock, percentiles, RSS).

Imports only the standard library at module level (operators.state.chain inside warm_kernels);
never runs a flow itself.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "bench" / "bench_engine.py"  # every child process runs the entry point with --child

RESULT_MARK = "@@bench_engine@@ "
CLUSTER_PROCESSES = 2
CLUSTER_ROW = "volgraph_2proc"  # the scale-out row: 2 processes × 1 worker, a partition per (currency, process)
WORKERS_ROW = "volgraph_1proc_2w"  # the same split run as 1 process × 2 worker threads (bytewax -w 2)
NETNS_ROW = CLUSTER_ROW + "_netns"  # the scale-out row across two network namespaces (a veth link, tbf-shaped)
NETNS_LINK_MBIT = 100.0  # that link's rate each way: a modest pod network
NETNS_DELAY_MS = 1.0  # and its delay each way (a relay in each namespace: no netem here): a cross-zone hop
PACED_RATE_MSG_S = 50_000.0
START_AFTER_READY_MS = 500.0  # paced cluster: pacing starts this long after its last process is ready
# (the bytewax cluster still connects after that: ~0.1 s on loopback)
SHOCK_ENTRY_LATE = 0.8  # where in its epoch the shock rows' shock enters (40 ms of 50: its tick due 10 ms later)
WARMUP_S = 2.0  # paced run: latency counted for events entering after this much live traffic
AUDIT_EVERY = 20  # epochs between exact re-solves in volgraph's audit mode

# Level vols on (issue #13's workload): every book's 10 best levels a side (the depth every venue sends,
# graph.toml) and its walks to 1, 10 and 50 contracts; the naive baseline then solves the same vols.
LEVELS_ON = {"level_depth": 10, "sizes_contracts": [1.0, 10.0, 50.0]}
# their goals (issue #13), on 2 processes unless said
LEVEL_GOALS = {"throughput_msg_s": 150_000.0, "cpu_s_per_M_msgs": 6.0, "shock_vols": 40_000, "shock_ms": 50.0,
               "shock_ms_1proc": 80.0, "paced_p99_ms": 50.0}

GOALS = {
    "throughput_msg_s": 100_000.0,
    "speedup_vs_naive": 20.0,
    "max_err_bp": 1.0,
    "shock_ms": 50.0,  # a 40,000-vol shock absorbed within one epoch (runtime.epoch_ms)
    "paced_p99_ms": 100.0,
}


def now_wall_ms() -> float:
    return time.time() * 1000.0


def pct(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    i = min(len(s) - 1, max(0, int(math.ceil(q / 100.0 * len(s))) - 1))
    return float(s[i])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def warmup_ms(meta: dict) -> float:
    """Paced runs: latency counts events entering after this much live traffic (the preamble's
    backlog drains first); 2 s, or a fifth of a short workload."""
    live_s = (meta["frames"] - meta["preamble_frames"]) / PACED_RATE_MSG_S
    return 1000.0 * min(WARMUP_S, 0.2 * live_s)


def warm_kernels() -> None:
    # compile / load numba caches before timing anything, in both systems alike
    from connectors.venues.deribit import levels
    from operators.state import chain

    chain.warm_up()
    levels.warm_up()  # the replay's batch decoder


def child_command(job: dict) -> list[str]:
    """The command line of a child process that runs one job (bench_engine.py --child <JSON>)."""
    return [sys.executable, str(ENTRY), "--child", json.dumps(job)]


def child_result(stdout: str) -> Optional[dict]:
    """A child's result: the last line of its stdout marked RESULT_MARK, or None."""
    return next((json.loads(line[len(RESULT_MARK):]) for line in reversed(stdout.splitlines())
                 if line.startswith(RESULT_MARK)), None)


def print_child_result(result: dict) -> None:
    """The child's side: its result as the marked line child_result finds."""
    print(RESULT_MARK + json.dumps(result), flush=True)
