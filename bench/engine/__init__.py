"""The engine benchmark's parts (bench/bench_engine.py is the entry point and the command line):

    common.py    settings (rates, goals, row names), the parent↔child protocol, small helpers
    plan.py      the parent: builds the workloads, lays out the jobs, runs each in its own process
    probes.py    child-side recording: what entered the flow and when, where a shock's time went
    single.py    the one-process child runs: volgraph (max speed, paced, shock) and the naive baseline
    samplers.py  CPU and worker-stack samplers for the cluster's processes
    cluster.py   volgraph as a 2-process bytewax cluster on loopback: its processes and their combined row
    figures.py   observations → figures: rates, latencies, the shock row and its per-stage breakdown
    summary.py   the results → the summary (systems, shock rows, goals): what --json prints
    table.py     the summary → the printed table and its notes
    levels.py    --levels: level vols on vs off side by side (1-process max-speed and shock rows, medians)

Benchmark code only: nothing under operators/, connectors/ or flows/ imports it.
"""
