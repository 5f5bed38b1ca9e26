"""The bare dataflow entry point, `python -m bytewax.run flows.surface:flow` (what waxctl runs),
in a child process for tests that scrape it; and the two waits those tests share."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.helpers.flowrun import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]


class BareFlow:
    """`with BareFlow(env) as flow:` starts the entry point with `env`; `flow.stop()` sends
    SIGTERM and waits for the graceful exit (`flow.code`); leaving the block kills a child still
    alive and keeps its combined stdout/stderr in `flow.output`."""

    def __init__(self, env: dict) -> None:
        self.env = env
        self.code = None
        self.output = ""

    def __enter__(self) -> "BareFlow":
        self.proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.surface:flow"], cwd=ROOT,
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        self.code = self.proc.wait(timeout=DEADLINE_S)
        return self.code

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.output = self.proc.communicate(timeout=30)[0]


def scrape(url: str) -> str:
    """The body at `url`, or "" while nothing answers there yet."""
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return ""


def wait_for_next_status(gw) -> None:
    """Until the flow's next StatusReport (once a second) reaches the gateway: no sleep."""
    reports = gw.counters["published.StatusReport"]
    gw.wait_until(lambda g: g.counters["published.StatusReport"] != reports, timeout=5.0)
