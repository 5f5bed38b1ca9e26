"""A real `volgraph run` / `volgraph replay` process (python -m flows.cli) whose stdout and
stderr lines are collected by threads, and the small graph.toml those tests run on. Every wait
is on a line appearing, with a deadline. Test support only."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers.flowrun import DEADLINE_S

ROOT = Path(__file__).resolve().parents[2]


def small_config(tmp_path: Path, **runtime) -> Path:
    """One venue, one currency, the small simulator: a quick but complete `volgraph run`."""
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in runtime.items())
    path = tmp_path / "graph.toml"
    path.write_text(f'[runtime]\nmetrics_port = 0\ndata_dir = "{tmp_path / "data"}"\n{extra}\n'
                    '[sources.deribit]\ncurrencies = ["BTC"]\n\n[sources.okx]\nenabled = false\n\n'
                    '[simulator]\nrate = 500\nscale = "small"\n')
    return path


class Run:
    """A `volgraph run` process whose stdout and stderr lines are collected by threads."""

    def __init__(self, *args: str, launcher_ignores_sigint: bool = False, command: str = "run"):
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if launcher_ignores_sigint else None
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", command, *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(s, into), daemon=True)
                        for s, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            with self.changed:
                into.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_line(self, pattern: str, *, stream: str = "out", timeout_s: float = DEADLINE_S) -> re.Match:
        lines = self.out if stream == "out" else self.err
        found: list[re.Match] = []

        def seen() -> bool:
            found[:] = [m for m in (re.search(pattern, line) for line in list(lines)) if m][:1]
            return bool(found) or self.proc.poll() is not None

        with self.changed:
            self.changed.wait_for(seen, timeout_s)
        assert found, f"no line matching {pattern!r} on std{stream} within {timeout_s} s:\n{self.text()}"
        return found[0]

    def finish(self, timeout_s: float = DEADLINE_S) -> int:
        code = self.proc.wait(timeout=timeout_s)
        for t in self.readers:
            t.join(timeout=10)
        return code

    def text(self) -> str:
        return "stdout:\n" + "\n".join(self.out[-40:]) + "\nstderr:\n" + "\n".join(self.err[-40:])

    @classmethod
    def to_the_end(cls, *args: str, command: str = "run") -> "Run":
        """Run `volgraph COMMAND ARGS` until it exits; it must exit 0."""
        run = cls(*args, command=command)
        try:
            code = run.finish()
        except BaseException:
            run.kill()
            raise
        assert code == 0, run.text()
        return run

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()
