"""Benchmark: the incremental engine (volgraph's dataflow) against the naive baseline
(bench/naive.py), on the same recorded Deribit frames through the same parser.

Prints one table (machine, date, command): per system, sustained messages/s, CPU seconds per
million messages, processing latency p50/p99/max, IV solves / fits / patches, max |published
vol − exact recompute| (bp), peak RSS; a paced run at 50,000 messages/s for exchange-time
latency; and the shock row (one 1 % spot move re-quoting every BTC book). Goals are printed
beside the figures. Never asserts timings.

    .venv/bin/python bench/bench_engine.py [--scenario seed|small] [--seconds 20] [--json] [--profile]
    .venv/bin/python bench/bench_engine.py --levels-on   (every row with level vols on: issue #13's goals)
    .venv/bin/python bench/bench_engine.py --levels [--rounds 3] [--levels-depths 5 ...]   (level vols on vs off)

Every system runs in its own child process (peak RSS and counters do not mix); the parent
builds the workloads (bench/workload.py, cached under .data/bench/) and prints the results.

This file is the entry point only — the command line, and the --child switch every child
process is started with; the parts are in bench/engine/ (its __init__ lists them: the plan,
the child runs, the cluster, the figures, the summary and the table).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.engine.cluster import run_cluster, run_cluster_proc  # noqa: E402,F401  (run_cluster: docs/benchmarks.md)
from bench.engine.common import NETNS_DELAY_MS, NETNS_LINK_MBIT, PACED_RATE_MSG_S, print_child_result  # noqa: E402,F401  (tests read them)
from bench.engine.plan import run_all  # noqa: E402
from bench.engine.single import run_naive, run_volgraph  # noqa: E402
from bench.engine.summary import summarise  # noqa: E402
from bench.engine.table import print_table  # noqa: E402


def main(argv=None, prog: str | None = "volgraph bench") -> int:
    # prog: `volgraph bench` hands its arguments here; run as a script, argparse names the file
    p = argparse.ArgumentParser(prog=prog, description="volgraph vs the naive baseline on recorded Deribit frames.")
    p.add_argument("--scenario", choices=("seed", "small"), default="seed",
                   help="seed: BTC ~4,000 and ETH ~2,000 options; small: a quick smoke run (default: seed)")
    p.add_argument("--seconds", type=float, default=20.0, help="live-stream seconds per system, at most (default: 20)")
    p.add_argument("--messages", type=int, default=None, help="live frames in the workload (default: scenario's)")
    p.add_argument("--cache-dir", default=None, help="where workloads are cached (default: .data/bench)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object (default: a table)")
    p.add_argument("--profile", action="store_true", help="also run volgraph under pyinstrument and print the top (default: off)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="decompress the replay inline instead of on a reader thread, for comparison (default: off)")
    p.add_argument("--levels-on", action="store_true",
                   help="run every row with level vols on (10 levels a side, walks to 1/10/50 contracts), the "
                        "naive baseline solving the same vols, against issue #13's goals (default: the engine's "
                        "graph.toml, level vols off)")
    p.add_argument("--levels", action="store_true",
                   help="only level vols on vs off ([chain] level_depth, sizes_contracts), side by side: the "
                        "1-process max-speed and shock rows, --rounds times each, medians (default: off)")
    p.add_argument("--levels-depths", type=int, nargs="*", default=None,
                   help="with --levels: also run level vols on at these depths")
    p.add_argument("--rounds", type=int, default=3, help="with --levels: rounds per variant (default: 3)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        job = json.loads(args.child)
        run = {"volgraph": run_volgraph, "cluster_proc": run_cluster_proc, "naive": run_naive}[job["kind"]]
        result = run(job)
        print_child_result(result)
        return 0
    if args.profile:
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            print("--profile needs pyinstrument (the bench extra, which `make bench` installs): "
                  ".venv/bin/pip install -e '.[bench]'", file=sys.stderr)
            return 2
    command = "bench/bench_engine.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.levels:
        from bench.engine.levels import print_levels, run_levels

        summary = {**run_levels(args), "command": command.strip()}
        if args.json:
            print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1, default=str))
        else:
            print_levels(summary)
        return 0
    summary = summarise(run_all(args), args, command.strip())
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog=None))
