-- volgraph schema v3: runs (issue #15 part 3) and the query views and functions (part 6).
--
-- Until now no row said which run made it, and the tables' conflict rules differed:
-- expiry_views was upserted (DO UPDATE) while smile_fits ignored resends (DO NOTHING), so a
-- re-run (a replay, a run with another graph.toml) silently mixed its results with the
-- earlier run's. From here:
--   * `runs` has one row per run: what made the rows (config hash, code version, the method
--     versions of IV / forward / SVI) and from what (live feeds, a file, a database window);
--   * every stored row says its run: `run_id` is the FIRST column of each table's primary
--     key, so a new run never overwrites another run's rows, and the merge rules of
--     connectors/postgres/rows.py (unchanged) apply only within one run. A resent batch of
--     the same run is still a no-op.
--
-- Rows written before this migration belong to the run 'legacy'. Its runs row is added only
-- when there are such rows (a fresh database gets none), with started_ms 0: their start is
-- unknown, and 0 makes any registered run count as more recent than them.

CREATE TABLE IF NOT EXISTS runs (
    -- [A-Za-z0-9_.:-]{1,64}: safe in file names, URLs and Grafana variables
    -- (connectors/postgres/runs.py checks the same rule first, with a message saying the fix).
    run_id       text    PRIMARY KEY CHECK (run_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    config_hash  text    NOT NULL,
    code_version text    NOT NULL,
    -- method versions by part, e.g. {"iv": "...", "forward": "...", "svi": "..."}
    methods      jsonb   NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(methods) = 'object'),
    started_ms   bigint  NOT NULL,
    ended_ms     bigint  CHECK (ended_ms IS NULL OR ended_ms >= started_ms),
    source       text    NOT NULL CHECK (source IN ('live', 'file', 'database')),
    -- the file replayed, the database window re-run, the live venues: for people
    detail       text    NOT NULL DEFAULT ''
);

INSERT INTO runs (run_id, config_hash, code_version, methods, started_ms, source, detail)
SELECT 'legacy', '', '', '{}'::jsonb, 0, 'live',
       'rows written before runs existed (deploy/sql/003_runs.sql)'
WHERE EXISTS (SELECT 1 FROM smile_fits) OR EXISTS (SELECT 1 FROM expiry_views)
   OR EXISTS (SELECT 1 FROM expiry_nodes) OR EXISTS (SELECT 1 FROM surface_state)
ON CONFLICT (run_id) DO NOTHING;

-- run_id: NOT NULL DEFAULT 'legacy' fills the existing rows without rewriting the tables
-- (PostgreSQL >= 11 stores a constant default in the catalog); the default is dropped at once,
-- so a writer that forgets the run fails loudly instead of writing under 'legacy'. The primary
-- key is rebuilt with run_id first: every lookup of one run's rows (the conflict checks of
-- rows.py, the snapshot clean-up, the rebuilds of read.py) is a prefix of it.
--
-- The foreign keys make "every row says its run" mean a run whose config and methods are on
-- record: the writer registers the run (connectors/postgres/runs.py register_run) before it
-- writes. Without ON DELETE CASCADE: deleting a run's rows is a deliberate act, table by table.
-- expiry_nodes has none: its rows are written only with their expiry_views row (rows.py, one
-- transaction), whose key checks the run. Measured with connectors.postgres.write_events on the
-- embedded server (2 cores), 300 patches x 8 views x 7 nodes in batches of 50: 0.25-0.27 s
-- with no foreign key, 0.24-0.26 s with these three, 0.27-0.32 s with one on expiry_nodes too
-- (~2.5 us per node row, three quarters of the rows, for no added guarantee).
ALTER TABLE smile_fits
    ADD COLUMN IF NOT EXISTS run_id text NOT NULL DEFAULT 'legacy',
    DROP CONSTRAINT smile_fits_pkey,
    ADD CONSTRAINT smile_fits_pkey PRIMARY KEY (run_id, venue, underlying, expiry_ms, epoch),
    ADD CONSTRAINT smile_fits_run FOREIGN KEY (run_id) REFERENCES runs (run_id);
ALTER TABLE smile_fits ALTER COLUMN run_id DROP DEFAULT;

ALTER TABLE expiry_views
    ADD COLUMN IF NOT EXISTS run_id text NOT NULL DEFAULT 'legacy',
    DROP CONSTRAINT expiry_views_pkey,
    ADD CONSTRAINT expiry_views_pkey PRIMARY KEY (run_id, venue, underlying, expiry_ms, epoch),
    ADD CONSTRAINT expiry_views_run FOREIGN KEY (run_id) REFERENCES runs (run_id);
ALTER TABLE expiry_views ALTER COLUMN run_id DROP DEFAULT;

ALTER TABLE expiry_nodes
    ADD COLUMN IF NOT EXISTS run_id text NOT NULL DEFAULT 'legacy',
    DROP CONSTRAINT expiry_nodes_pkey,
    ADD CONSTRAINT expiry_nodes_pkey PRIMARY KEY (run_id, venue, underlying, expiry_ms, epoch, node);
ALTER TABLE expiry_nodes ALTER COLUMN run_id DROP DEFAULT;

ALTER TABLE surface_state
    ADD COLUMN IF NOT EXISTS run_id text NOT NULL DEFAULT 'legacy',
    DROP CONSTRAINT surface_state_pkey,
    ADD CONSTRAINT surface_state_pkey PRIMARY KEY (run_id, venue, underlying, epoch),
    ADD CONSTRAINT surface_state_run FOREIGN KEY (run_id) REFERENCES runs (run_id);
ALTER TABLE surface_state ALTER COLUMN run_id DROP DEFAULT;

-- ---------------------------------------------------------------- indexes for the queries
-- The latest snapshot of one run's surface at or before an epoch (every rebuild starts there).
DROP INDEX IF EXISTS surface_state_snapshots;
CREATE INDEX surface_state_snapshots
    ON surface_state (run_id, venue, underlying, epoch) WHERE is_snapshot;
-- Time -> epoch: the last epoch of a run's surface emitted at or before T (surface_run,
-- surface_head_as_of, node_history's time filter). ts_emit_ms is the flow clock (the
-- recording's in a replay), so it grows with the epoch within a run.
CREATE INDEX IF NOT EXISTS surface_state_by_time
    ON surface_state (run_id, venue, underlying, ts_emit_ms, epoch);
-- One node's values over time, of one run or of runs side by side: equality on node, venue,
-- underlying, run_id, then a range of epochs. Replaces 002's index, which had no run.
DROP INDEX IF EXISTS expiry_nodes_by_node;
CREATE INDEX expiry_nodes_by_node
    ON expiry_nodes (node, venue, underlying, run_id, epoch);
-- Which runs wrote an underlying (runs side by side, Grafana's run variable).
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_ms DESC, run_id DESC);

-- ---------------------------------------------------------------- query views and functions
-- Time in every view and function below is `ts_ms` = surface_state.ts_emit_ms of the row's
-- epoch: when the surface step emitted that epoch, on the flow's clock. An epoch is atomic:
-- its patches are folded into one row per key (rows.py), stamped with the last one's emit
-- time, so "as of T" has the resolution of one epoch (graph.toml runtime.epoch_ms).
-- The functions are LANGUAGE sql STABLE, so Grafana can call them in a panel's query, e.g.
--   SELECT expiry_ms, (view->'analytics'->>'atm_vol')::float8
--   FROM surface_views_as_of('deribit', 'BTC', $__to) ORDER BY 1;

-- surface_run(venue, underlying, ts_ms): the run that most recently wrote that surface at or
-- before ts_ms (NULL: at any time), i.e. the latest runs.started_ms among the runs with a
-- surface_state row there, ties broken by the later epoch, then the larger run_id. NULL when
-- no run wrote it. Runs are few: one index probe (surface_state_by_time) per run.
CREATE OR REPLACE FUNCTION surface_run(p_venue text, p_underlying text, p_ts_ms bigint DEFAULT NULL)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT r.run_id
    FROM runs r
    CROSS JOIN LATERAL (
        SELECT s.epoch FROM surface_state s
        WHERE s.run_id = r.run_id AND s.venue = p_venue AND s.underlying = p_underlying
          AND s.ts_emit_ms <= coalesce(p_ts_ms, 9223372036854775807)
        ORDER BY s.ts_emit_ms DESC, s.epoch DESC LIMIT 1) last
    ORDER BY r.started_ms DESC, last.epoch DESC, r.run_id DESC
    LIMIT 1
$$;

-- surface_head_as_of(venue, underlying, ts_ms, run_id): the global part of one run's surface
-- as it stood at ts_ms (NULL: now), one row or none: the head epoch (the last emitted at or
-- before ts_ms), its times, tenors and calendar checks, since_epoch (the latest snapshot at or
-- before the head; views older than it do not count) and the index price that
-- operators/merge.py apply_patch keeps (a patch without one keeps the previous; a snapshot
-- sets it, even to NULL). run_id NULL: surface_run(venue, underlying, ts_ms).
CREATE OR REPLACE FUNCTION surface_head_as_of(p_venue text, p_underlying text, p_ts_ms bigint DEFAULT NULL,
                                              p_run_id text DEFAULT NULL)
RETURNS TABLE (run_id text, epoch bigint, ts_exchange_ms bigint, ts_ms bigint, since_epoch bigint,
               index_px double precision, tenors jsonb, calendar jsonb)
LANGUAGE sql STABLE AS $$
    WITH run AS (SELECT coalesce(p_run_id, surface_run(p_venue, p_underlying, p_ts_ms)) AS run_id),
    head AS (
        SELECT s.* FROM surface_state s, run
        WHERE s.run_id = run.run_id AND s.venue = p_venue AND s.underlying = p_underlying
          AND s.ts_emit_ms <= coalesce(p_ts_ms, 9223372036854775807)
        ORDER BY s.ts_emit_ms DESC, s.epoch DESC LIMIT 1),
    -- a correlated subquery, so the head's run and epoch bound the index scan (a join with the
    -- CTE made the planner read every run's snapshots of the surface)
    since AS (
        SELECT coalesce((SELECT max(s.epoch) FROM surface_state s
                         WHERE s.run_id = head.run_id AND s.venue = p_venue AND s.underlying = p_underlying
                           AND s.is_snapshot AND s.epoch <= head.epoch), -4611686018427387904) AS epoch
        FROM head)
    SELECT head.run_id, head.epoch, head.ts_exchange_ms, head.ts_emit_ms, since.epoch,
           (SELECT s.index_px FROM surface_state s
            WHERE s.run_id = head.run_id AND s.venue = p_venue AND s.underlying = p_underlying
              AND s.epoch BETWEEN since.epoch AND head.epoch AND (s.is_snapshot OR s.index_px IS NOT NULL)
            ORDER BY s.epoch DESC LIMIT 1),
           head.tenors, head.calendar
    FROM head, since
$$;

-- surface_views_as_of(venue, underlying, ts_ms, run_id): the expiries of that surface as it
-- stood at ts_ms (NULL: now), one row per live expiry, ordered by expiry_ms: the latest view
-- row of each expiry between since_epoch and the head epoch, unless it is a removal. `view` is
-- the whole ExpiryView (operators.events.to_json), analytics by node name included. Distinct
-- expiries come from the primary key, then one row each: one view read per expiry, not the
-- whole history. Folding the written patches up to the head gives the same expiries
-- (tests/connectors/postgres/test_runs.py checks it).
CREATE OR REPLACE FUNCTION surface_views_as_of(p_venue text, p_underlying text, p_ts_ms bigint DEFAULT NULL,
                                               p_run_id text DEFAULT NULL)
RETURNS TABLE (run_id text, epoch bigint, expiry_ms bigint, view jsonb)
LANGUAGE sql STABLE AS $$
    WITH h AS (SELECT * FROM surface_head_as_of(p_venue, p_underlying, p_ts_ms, p_run_id))
    SELECT h.run_id, v.epoch, e.expiry_ms, v.view
    FROM h
    CROSS JOIN LATERAL (
        SELECT DISTINCT x.expiry_ms FROM expiry_views x
        WHERE x.run_id = h.run_id AND x.venue = p_venue AND x.underlying = p_underlying
          AND x.epoch BETWEEN h.since_epoch AND h.epoch) e
    CROSS JOIN LATERAL (
        SELECT x.epoch, x.removed, x.view FROM expiry_views x
        WHERE x.run_id = h.run_id AND x.venue = p_venue AND x.underlying = p_underlying
          AND x.expiry_ms = e.expiry_ms AND x.epoch BETWEEN h.since_epoch AND h.epoch
        ORDER BY x.epoch DESC LIMIT 1) v
    WHERE NOT v.removed
    ORDER BY e.expiry_ms
$$;

-- surface_history: every stored expiry row (a view or a removal) with its run and the time
-- of its epoch, e.g. what one expiry's smile did over a day:
--   SELECT ts_ms, view->'fit' FROM surface_history
--   WHERE run_id = 'r1' AND venue = 'deribit' AND underlying = 'BTC' AND expiry_ms = 1767254400000
--     AND ts_ms BETWEEN $1 AND $2 ORDER BY ts_ms;
-- is_snapshot marks rows of a full snapshot (older rows of the run stop counting there).
CREATE OR REPLACE VIEW surface_history AS
SELECT v.run_id, v.venue, v.underlying, v.expiry_ms, v.epoch, s.ts_emit_ms AS ts_ms, s.ts_exchange_ms,
       s.is_snapshot, v.removed, v.calendar_ok, v.view
FROM expiry_views v
JOIN surface_state s USING (run_id, venue, underlying, epoch);

-- node_history: every stored graph.toml node value (ATM, RR, BF, ... by node name) with its
-- run and the time of its epoch. An expiry's series, or all expiries' (drop the expiry_ms
-- filter), or two runs side by side (run_id IN (...), compare by epoch):
--   SELECT ts_ms, expiry_ms, value FROM node_history
--   WHERE run_id = 'r1' AND venue = 'deribit' AND underlying = 'BTC' AND node = 'rr25'
--     AND ts_ms BETWEEN $1 AND $2 ORDER BY ts_ms, expiry_ms;
-- A NULL value: the node ran for that view and failed (002_expiry_nodes.sql).
CREATE OR REPLACE VIEW node_history AS
SELECT n.run_id, n.venue, n.underlying, n.expiry_ms, n.epoch, s.ts_emit_ms AS ts_ms, n.node, n.value
FROM expiry_nodes n
JOIN surface_state s USING (run_id, venue, underlying, epoch);

-- tenor_history: the fixed-tenor points (operators.events.TenorPoint: ATM, RR25, BF25) of every
-- stored epoch, one row per tenor: a fixed tenor's series without choosing an expiry.
CREATE OR REPLACE VIEW tenor_history AS
SELECT s.run_id, s.venue, s.underlying, s.epoch, s.ts_emit_ms AS ts_ms,
       (t.value->>'tenor_days')::integer AS tenor_days,
       (t.value->>'atm_vol')::double precision AS atm_vol,
       (t.value->>'rr25')::double precision AS rr25,
       (t.value->>'bf25')::double precision AS bf25
FROM surface_state s
CROSS JOIN LATERAL jsonb_array_elements(s.tenors) t;
