-- volgraph schema v2: analytics nodes as data (issue #12 part 5).
--
-- Until now expiry_views had one column per node of the default graph.toml (atm_vol, rr25,
-- bf25, rr10, bf10): a node added to graph.toml got no column, and a renamed one left its
-- column silently NULL. From here every node's value is one row of expiry_nodes, keyed by
-- the view's key plus the node's name, whatever graph.toml defines.
--
-- Why a long table rather than a JSONB column with an index:
--   * values stay typed (double precision): aggregates, ORDER BY and range filters work
--     without casts, and a value that is not a number cannot be stored;
--   * a query by node name is a B-tree range scan (expiry_nodes_by_node below), e.g. the
--     history of rr15 for BTC; a GIN index on JSONB only serves containment and key
--     existence (`analytics ? 'rr15'`), not ordering or ranges of one node's value, and an
--     expression index per node would hard-wire node names into the schema again;
--   * the natural key (venue, underlying, expiry_ms, epoch, node) makes writes idempotent
--     (ON CONFLICT), as on every other table, and lets a removal or a snapshot clean-up
--     delete a view's node rows with the view.
-- The cost is one row per node per view instead of one JSON value per view. Measured with
-- connectors.postgres.write_events on the embedded server (2 cores): 300 patches x 8 views x
-- 7 nodes in batches of 50 took 0.25 s, against 0.11 s for the same views without node rows,
-- i.e. ~8 us per node row, on the writer's thread (never the dataflow's), where the flow
-- emits tens of patches a second. The whole view, analytics included, stays in
-- expiry_views.view for rebuilding a surface.
--
-- A NULL value means the node ran and failed (or an input was missing): the node is known
-- for that view, it has no value.

CREATE TABLE IF NOT EXISTS expiry_nodes (
    venue       text             NOT NULL,
    underlying  text             NOT NULL,
    expiry_ms   bigint           NOT NULL,
    epoch       bigint           NOT NULL,
    node        text             NOT NULL,
    value       double precision,
    PRIMARY KEY (venue, underlying, expiry_ms, epoch, node)
);

CREATE INDEX IF NOT EXISTS expiry_nodes_by_node
    ON expiry_nodes (node, venue, underlying, epoch);

-- Rows written before this migration: their `analytics` JSON held every node by name.
INSERT INTO expiry_nodes (venue, underlying, expiry_ms, epoch, node, value)
SELECT v.venue, v.underlying, v.expiry_ms, v.epoch, a.key, (a.value #>> '{}')::double precision
FROM expiry_views v CROSS JOIN LATERAL jsonb_each(v.analytics) a
WHERE NOT v.removed AND jsonb_typeof(v.analytics) = 'object'
ON CONFLICT DO NOTHING;

-- The fixed columns go (a query naming one now fails loudly instead of reading NULLs), and
-- so does `analytics`, a copy of what expiry_nodes and `view` now hold.
ALTER TABLE expiry_views
    DROP COLUMN IF EXISTS atm_vol,
    DROP COLUMN IF EXISTS rr25,
    DROP COLUMN IF EXISTS bf25,
    DROP COLUMN IF EXISTS rr10,
    DROP COLUMN IF EXISTS bf10,
    DROP COLUMN IF EXISTS analytics;
