"""Embedded PostgreSQL: a real server started (or attached to) in a data folder with pgserver,
and the project's psycopg connection helper.

Where the data folder lives is the config layer's choice (graph.toml runtime.data_dir; the CLI
passes <data_dir>/pg): no default path here. Never imports operators, flows or bytewax.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import orjson
import psycopg
import psycopg.types.json

_servers: dict[Path, Any] = {}  # keep pgserver handles alive for the process lifetime


def embedded_server(data_dir: str | os.PathLike, *, cleanup_mode: Optional[str] = "stop"):
    """Start (or attach to) a real PostgreSQL in `data_dir` with pgserver; returns its handle.

    cleanup_mode: "stop" stops the server when this process exits, "delete" also removes
    the data folder, None leaves it running."""
    import pgserver  # imported here: only the embedded mode needs it

    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(path, cleanup_mode=cleanup_mode)
    _servers[path] = server
    return server


def embedded_postgres(data_dir: str | os.PathLike, *, cleanup_mode: Optional[str] = "stop") -> str:
    """Start (or attach to) an embedded PostgreSQL under `data_dir`; returns its DSN."""
    return embedded_server(data_dir, cleanup_mode=cleanup_mode).get_uri()


def connect(dsn: str, *, autocommit: bool = False, connect_timeout_s: float = 5.0) -> psycopg.Connection:
    """A psycopg connection whose jsonb columns decode with orjson (exact float round trip)."""
    conn = psycopg.connect(dsn, autocommit=autocommit, connect_timeout=max(1, int(round(connect_timeout_s))))
    psycopg.types.json.set_json_loads(orjson.loads, conn)
    return conn
