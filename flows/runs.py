"""Which run a process belongs to: the RunInfo every stored row names (connectors/postgres/runs.py).

A run is one continuous computation of the surfaces by one method on one configuration:
- `volgraph run` keeps its run in its recovery folder, so a restart that resumes from the
  snapshots continues the same run (its rows are the same rows: idempotent) while the code,
  configuration and methods are the same; `--fresh`, recovery off, or a change of any of
  those begins a new one;
- `volgraph replay FILE` is a new run each time (source "file");
- the bare entry point (`python -m bytewax.run flows.surface:flow`, what waxctl runs) takes
  $VOLGRAPH_RUN_ID, else derives one from the code version and the configuration, so every
  process of a cluster and every restart of it agree without talking to each other, and a
  new image or a changed graph.toml is a new run.
The method versions are the kernels' own METHOD_VERSION constants. Never imports connectors
other than the RunInfo type; no volatility maths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import secrets
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

from connectors.postgres.runs import RunInfo
from flows.config import Config
from operators.kernels import forward, iv, svi

RUN_ID_ENV = "VOLGRAPH_RUN_ID"
RUN_FILE = "run.json"  # in the recovery folder of `volgraph run`: the run it continues
_ROOT = Path(__file__).resolve().parents[1]


def method_versions() -> dict[str, str]:
    return {"iv": iv.METHOD_VERSION, "forward": forward.METHOD_VERSION, "svi": svi.METHOD_VERSION}


def config_hash(config: Config) -> str:
    """A stable hash of the loaded configuration (every key, defaults included; not the path)."""
    body = dataclasses.asdict(config)
    body.pop("path", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=_stable).encode()).hexdigest()[:16]


def _stable(value) -> str:
    """A JSON stand-in that is the same in every process: a node's function by its import name
    (its default str() holds a memory address, which made every restart a new run)."""
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}:{value.__qualname__}"
    return str(value)


def code_version() -> str:
    """`git describe --always --dirty` in a checkout, else the installed package's version."""
    if (_ROOT / ".git").exists():
        try:
            done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=_ROOT, capture_output=True,
                                  text=True, timeout=5)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return metadata.version("volgraph")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_run_id(source: str) -> str:
    """`<source>-<UTC time>-<4 random hex>`: sorts by start, unique across machines."""
    return f"{source}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}"


def run_info(config: Config, *, source: str, detail: str, run_id: Optional[str] = None) -> RunInfo:
    return RunInfo(run_id=run_id or new_run_id(source), config_hash=config_hash(config), code_version=code_version(),
                   methods=method_versions(), started_ms=int(time.time() * 1000), source=source, detail=detail)


def resumed_run(recovery_dir: Path, run: RunInfo) -> RunInfo:
    """The run a recovery folder continues (its RUN_FILE), when it was made by the same code,
    configuration, methods and source as `run`; otherwise `run` — a new run id, recorded there
    for the next resume. A restart on a new image or graph.toml keeps its state but writes
    its rows as a new run: rows say which method made them."""
    path = recovery_dir / RUN_FILE
    same = ("config_hash", "code_version", "methods", "source", "detail")
    try:
        kept = RunInfo(**json.loads(path.read_text()))
        if all(getattr(kept, f) == getattr(run, f) for f in same):
            return kept
    except (OSError, ValueError, TypeError):
        pass  # none yet, or unreadable: a new run
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(run)))
    os.replace(tmp, path)
    return run


def cluster_run_id(config: Config) -> str:
    """$VOLGRAPH_RUN_ID, else `live-<code version>-<config hash>`: the same in every process
    of a cluster and across its restarts; a new image or configuration is a new run."""
    given = os.environ.get(RUN_ID_ENV, "").strip()
    if given:
        return given
    code = re.sub(r"[^A-Za-z0-9_.-]", "_", code_version())[:32]
    return f"live-{code}-{config_hash(config)[:8]}"
