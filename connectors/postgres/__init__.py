"""PostgreSQL persistence, one job per module:

    embedded.py  a real PostgreSQL via pgserver, and connect()
    schema.py    migrations: deploy/sql/NNN_*.sql applied once each, in order
    rows.py      events -> rows, the batch plan (folded with operators/merge.py) and its write
    writer.py    the background writer: batches, memory buffer, spill to disk, retries
    sink.py      the bytewax sink (a writer per worker)
    read.py      latest_surface: the current surface rebuilt from rows

This file only re-exports what flows/, bench/ and tests import. Only translates events <->
rows: no volatility maths anywhere in the package. Every table has a natural key, so
writing the same event twice is a no-op (ON CONFLICT). Graph.toml nodes are stored by name
in expiry_nodes (deploy/sql/002_expiry_nodes.sql says why a long table).
"""

from connectors.postgres.embedded import connect, embedded_postgres, embedded_server
from connectors.postgres.read import latest_surface
from connectors.postgres.rows import SUPPORTED_EVENTS, TABLES, BatchPlan, rows_for, write_events, write_plan
from connectors.postgres.schema import SQL_DIR, migrate, sql_files
from connectors.postgres.sink import PostgresSink
from connectors.postgres.writer import PostgresWriter

__all__ = [
    "SQL_DIR", "SUPPORTED_EVENTS", "TABLES", "BatchPlan", "PostgresSink", "PostgresWriter", "connect",
    "embedded_postgres", "embedded_server", "latest_surface", "migrate", "rows_for", "sql_files",
    "write_events", "write_plan",
]
