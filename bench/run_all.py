"""`make bench`: run every benchmark in sequence — bench_iv.py, bench_svi.py, bench_parse.py,
bench_engine.py (twice: graph.toml's engine, then every row with level vols on against issue #13's goals), … — each in its
own process, printing its table as it goes. Extra arguments go to bench_engine.py
(e.g. `--scenario small --seconds 5`). Never asserts timings; the exit code says only whether
every benchmark ran to the end.

    .venv/bin/python bench/run_all.py [bench_engine options]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("bench_iv.py", "bench_svi.py", "bench_surface.py", "bench_parse.py", "bench_engine.py",
           "bench_engine.py --levels-on",  # like for like: volgraph and naive solve the same level vols
           "bench_stop.py", "bench_gateway.py",  # stop time per signal; the gateway under 1,000 clients (60 s)
           "bench_events.py")  # market events stored: COPY rate, the flow with storage on vs off


def main(argv=None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    if "-h" in extra or "--help" in extra:
        print(__doc__)
        return 0
    failed = []
    for name in BENCHES:
        script, *args = name.split()
        cmd = [sys.executable, str(HERE / script), *args] + (extra if script == "bench_engine.py" else [])
        print(f"\n===== {name} =====", flush=True)
        started = time.monotonic()
        rc = subprocess.run(cmd, cwd=str(HERE.parent)).returncode
        print(f"===== {name}: exit {rc} after {time.monotonic() - started:.0f} s =====", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"run_all: {', '.join(failed)} did not finish; see above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
