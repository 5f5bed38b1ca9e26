"""Schema migrations: the numbered files of deploy/sql applied once each, in order.

Only runs SQL files; what the tables mean is said in the files themselves. Never imports
operators, flows or bytewax.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import psycopg

SQL_DIR = Path(__file__).resolve().parents[2] / "deploy" / "sql"
_MIGRATION_LOCK_ID = 0x766F6C67  # "volg": serialises migrate() across workers
_SQL_FILE = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.sql$")


def sql_files(sql_dir: str | os.PathLike = SQL_DIR) -> list[tuple[int, Path]]:
    """The numbered migration files in `sql_dir`, in version order."""
    found: dict[int, Path] = {}
    for path in sorted(Path(sql_dir).glob("*.sql")):
        match = _SQL_FILE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} is not named NNN_name.sql; rename it (e.g. 002_add_table.sql)")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"migration version {version} appears twice: {found[version].name} and {path.name}; renumber one")
        found[version] = path
    return sorted(found.items())


def migrate(conn: psycopg.Connection, sql_dir: str | os.PathLike = SQL_DIR) -> list[int]:
    """Apply each numbered SQL file in `sql_dir` once, in order; returns the versions applied now.

    Idempotent and safe to call from several workers at once (an advisory lock serialises
    them); a failing file rolls back and raises naming the file."""
    files = sql_files(sql_dir)
    applied_now: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_ID,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
        for version, path in files:
            if version in done:
                continue
            try:
                with conn.transaction():  # a savepoint, so the error names this file
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)", (version, path.name))
            except psycopg.Error as exc:
                raise RuntimeError(f"migration {path} failed: {exc}; fix the SQL and rerun") from exc
            applied_now.append(version)
    return applied_now
