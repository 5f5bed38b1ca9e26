"""PostgreSQL persistence, one job per module:

    embedded.py  a real PostgreSQL via pgserver, and connect()
    schema.py    migrations: deploy/sql/NNN_*.sql applied once each, in order
    runs.py      runs: RunInfo, register_run / end_run / list_runs (which run wrote a row)
    rows.py      events -> rows of one run, the batch plan (folded with operators/merge.py) and its write
    writer.py    the background writer: batches, memory buffer, spill to disk, retries
    sink.py      the bytewax sink (a writer per worker)
    read.py      latest_surface, surface_as_of, node_series, underlying_series: one run's rows read back

This file only re-exports what flows/, bench/ and tests import. Only translates events <->
rows: no volatility maths anywhere in the package. Every table has a natural key, so
writing the same event twice is a no-op (ON CONFLICT); its first column is the run, so a run
never overwrites another's rows (deploy/sql/003_runs.sql). Graph.toml nodes are stored by name
in expiry_nodes (deploy/sql/002_expiry_nodes.sql says why a long table), instrument_nodes (a row
per node and view, strikes and values as arrays) and underlying_nodes (deploy/sql/006_level_nodes.sql);
vol at size in depth_views (a row per view, the books as arrays; view depth_vol_books: a row per
book, with the rows table depth_vols held before, deploy/sql/009_depth_views.sql).
"""

from connectors.postgres.embedded import connect, embedded_postgres, embedded_server
from connectors.postgres.read import latest_surface, node_series, surface_as_of, underlying_series
from connectors.postgres.rows import SUPPORTED_EVENTS, TABLES, BatchPlan, rows_for, write_events, write_plan
from connectors.postgres.runs import SOURCES, RunInfo, RunRecord, end_run, list_runs, register_run
from connectors.postgres.schema import SQL_DIR, migrate, sql_files
from connectors.postgres.sink import PostgresSink
from connectors.postgres.writer import PostgresWriter

__all__ = [
    "SOURCES", "SQL_DIR", "SUPPORTED_EVENTS", "TABLES", "BatchPlan", "PostgresSink", "PostgresWriter", "RunInfo",
    "RunRecord", "connect", "embedded_postgres", "embedded_server", "end_run", "latest_surface", "list_runs",
    "migrate", "node_series", "register_run", "rows_for", "sql_files", "surface_as_of", "underlying_series", "write_events",
    "write_plan",
]
