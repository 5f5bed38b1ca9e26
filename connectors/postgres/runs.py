"""Runs: which run wrote a row, and with what (deploy/sql/003_runs.sql, issue #15 part 3).

A run is one execution of the flow that writes rows: live, a file replayed, or a database
window re-run. RunInfo says what it is (config hash, code version, method versions of IV /
forward / SVI, start, source, detail); register_run records it before its first row (every
table's rows name their run through a foreign key), end_run stamps its end, list_runs reads
them back. Registering is idempotent: a resumed run registers again and changes nothing;
the same run_id with another config, code, methods, source or detail is refused, since its
rows would then mix two methods under one id.

Validates and translates only: no volatility maths. Never imports flows, bytewax or
operators; what a config hash or code version is, the caller (the CLI) decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import psycopg
from psycopg.types.json import Jsonb

SOURCES = ("live", "file", "database")
RUN_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
LEGACY_RUN_ID = "legacy"  # the rows written before runs existed (003_runs.sql)
_RUN_ID = re.compile(RUN_ID_PATTERN)


def check_run_id(run_id: Any, *, allow_legacy: bool = True) -> str:
    """`run_id` if it matches [A-Za-z0-9_.:-]{1,64}, else a ValueError naming the rule and the fix."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run_id {run_id!r} must match {RUN_ID_PATTERN} (letters, digits, _ . : -, 1 to 64"
                         " characters): choose one such as 'live-20260101T000000Z'")
    if not allow_legacy and run_id == LEGACY_RUN_ID:
        raise ValueError(f"run_id {LEGACY_RUN_ID!r} is reserved for rows written before runs existed"
                         " (deploy/sql/003_runs.sql): choose another run id")
    return run_id


def _check_text(name: str, value: Any, *, empty_ok: bool) -> None:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise ValueError(f"RunInfo.{name} must be a {'' if empty_ok else 'non-empty '}string, got {value!r}:"
                         f" give the run's {name.replace('_', ' ')}" + (" (e.g. 'unknown' if not known)"
                                                                          if not empty_ok else ""))
    if "\x00" in value:  # PostgreSQL text and jsonb cannot hold NUL
        raise ValueError(f"RunInfo.{name} {value!r} contains a NUL character, which PostgreSQL cannot store:"
                         " remove it")


@dataclass(frozen=True)
class RunInfo:
    """What one run is. Checked when built: a bad field raises ValueError naming it and the fix."""

    run_id: str
    config_hash: str
    code_version: str
    methods: dict  # method version by part, str -> str, e.g. {"iv": "...", "forward": "...", "svi": "..."}
    started_ms: int  # UTC epoch ms, wall clock
    source: str  # one of SOURCES
    detail: str  # the file replayed, the database window, the venues: for people

    def __post_init__(self) -> None:
        check_run_id(self.run_id, allow_legacy=False)
        _check_text("config_hash", self.config_hash, empty_ok=False)
        _check_text("code_version", self.code_version, empty_ok=False)
        if not isinstance(self.methods, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) and "\x00" not in k + v
                for k, v in self.methods.items()):
            raise ValueError(f"RunInfo.methods must be a dict of method versions by part, non-empty str ->"
                             f" str without NUL characters (e.g. {{'iv': 'jaeckel-1', 'forward': 'parity-2', 'svi': 'svi-3'}}), got {self.methods!r}")
        if isinstance(self.started_ms, bool) or not isinstance(self.started_ms, int) or not 0 <= self.started_ms < 2**63:
            raise ValueError(f"RunInfo.started_ms must be UTC epoch milliseconds as an int >= 0,"
                             f" got {self.started_ms!r}: pass int(time.time() * 1000)")
        if self.source not in SOURCES:
            raise ValueError(f"RunInfo.source must be one of {', '.join(SOURCES)}, got {self.source!r}:"
                             " 'live' for exchange feeds, 'file' for a replayed recording,"
                             " 'database' for a re-run of stored events")
        _check_text("detail", self.detail, empty_ok=True)


@dataclass(frozen=True)
class RunRecord(RunInfo):
    """A registered run as list_runs reads it: a RunInfo plus its end (None while running).
    Built from the table, so the 'legacy' run of pre-run rows is allowed here."""

    ended_ms: Optional[int] = field(default=None)

    def __post_init__(self) -> None:  # rows come from the table, whose CHECKs already hold
        check_run_id(self.run_id)


_COLUMNS = "run_id, config_hash, code_version, methods, started_ms, source, detail"


def register_run(conn: psycopg.Connection, run: RunInfo) -> None:
    """Record `run` before it writes rows. Idempotent: registering the same run again (a
    resumed run) changes nothing but clearing an ended_ms a stop recorded (it runs again),
    its first started_ms standing. The same run_id registered
    with another config_hash, code_version, methods, source or detail raises ValueError:
    its rows would mix two methods under one id."""
    if not isinstance(run, RunInfo):
        raise TypeError(f"register_run takes a RunInfo, got {type(run).__name__}")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO runs ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
            (run.run_id, run.config_hash, run.code_version, Jsonb(run.methods), run.started_ms, run.source,
             run.detail),
        )
        if cur.rowcount == 1:
            return
        cur.execute("SELECT config_hash, code_version, methods, source, detail FROM runs WHERE run_id = %s",
                    (run.run_id,))
        stored = dict(zip(("config_hash", "code_version", "methods", "source", "detail"), cur.fetchone()))
        differ = {k: (v, getattr(run, k)) for k, v in stored.items() if v != getattr(run, k)}
        if not differ:
            cur.execute("UPDATE runs SET ended_ms = NULL WHERE run_id = %s AND ended_ms IS NOT NULL", (run.run_id,))
    if differ:
        what = "; ".join(f"{k}: registered {old!r}, this run {new!r}" for k, (old, new) in differ.items())
        raise ValueError(f"run_id {run.run_id!r} is already registered with other settings ({what}):"
                         " give this run a new run id")


def end_run(conn: psycopg.Connection, run_id: str, ended_ms: int) -> None:
    """Stamp the end of a registered run (a resumed run that ends again stamps the new end)."""
    check_run_id(run_id)
    if isinstance(ended_ms, bool) or not isinstance(ended_ms, int):
        raise ValueError(f"ended_ms must be UTC epoch milliseconds as an int, got {ended_ms!r}")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT started_ms FROM runs WHERE run_id = %s FOR UPDATE", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise ValueError(f"run_id {run_id!r} is not registered: call register_run before end_run")
        if ended_ms < row[0]:
            raise ValueError(f"ended_ms {ended_ms} of run {run_id!r} is before its started_ms {row[0]}:"
                             " pass the wall-clock end in UTC epoch ms")
        cur.execute("UPDATE runs SET ended_ms = %s WHERE run_id = %s", (ended_ms, run_id))


def list_runs(conn: psycopg.Connection) -> list[RunRecord]:
    """Every registered run, oldest first (started_ms, then run_id)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS}, ended_ms FROM runs ORDER BY started_ms, run_id")
        return [RunRecord(*row) for row in cur.fetchall()]
