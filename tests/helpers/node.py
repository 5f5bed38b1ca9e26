"""A Node.js driver of dashboard/app.js for tests: one JSON line in, one JSON line out."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest


def node_driver(driver_js: str, *args: str, why: str):
    """Run `node -e driver_js *args`; yield ask(line) -> the decoded answer line. A missing node is a
    failure (never a skip) naming `why` and the fix; a driver that dies fails the test with its stderr."""
    exe = shutil.which("node") or ("/usr/bin/node" if Path("/usr/bin/node").exists() else None)
    if exe is None:
        pytest.fail(f"node (Node.js) is needed to {why}; install it (apt-get install nodejs)")
    proc = subprocess.Popen([exe, "-e", driver_js, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def ask(line: str):
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        out = proc.stdout.readline()  # node answers each line at once; EOF if it died
        if not out:
            proc.kill()
            pytest.fail(f"node exited running dashboard/app.js: {proc.stderr.read()}")
        return json.loads(out)

    yield ask
    proc.stdin.close()
    proc.wait(timeout=30)
