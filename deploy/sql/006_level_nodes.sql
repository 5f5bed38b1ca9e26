-- volgraph schema v6: graph.toml nodes beyond the expiry level (issue #17 part 5).
--
-- expiry_nodes (002) holds level = "expiry" nodes, one row per node per view. Two more levels:
--   * level = "underlying" (one value per surface, e.g. the 30d→90d ATM term slope or forward
--     vol): underlying_nodes, one row per node per epoch in which its value changed (a
--     SurfacePatch carries only the changed values: operators/events.py underlying_analytics),
--     with its display unit, so a surface rebuilt from rows (underlying_nodes_as_of below,
--     connectors/postgres/read.py) equals the fold of the patches. Written with the epoch's
--     surface_state row, in one transaction (rows.py), so no foreign key, as expiry_nodes.
--   * level = "instrument" (one value per strike of a view, e.g. the fitted vol, dσ/dk, delta,
--     vega at each strike): instrument_nodes, one row per node per view holding the view's
--     strikes and the node's values as two aligned float8[] arrays (a NULL element: no value
--     at that strike), keyed by the view's key plus node; deleted with its view row (a
--     removal, a snapshot's clean-up), as expiry_nodes. One row per strike instead was 96 % of
--     all fit/view rows (docs/benchmarks.md "Fit/view rows through the PostgreSQL writer").
--     instrument_node_history below unnests the arrays: one row per strike, for SQL users.
--     The view's JSON (expiry_views.view.strike_analytics) has the same values for rebuilding
--     a surface.
-- Natural keys with run_id first (003_runs.sql), so writes are idempotent (ON CONFLICT: last
-- write wins within an epoch) and one run never touches another's rows. A NULL value: the node
-- ran and had no value there (it failed, or that strike had no quote it needed).

CREATE TABLE IF NOT EXISTS underlying_nodes (
    run_id      text             NOT NULL,
    venue       text             NOT NULL,
    underlying  text             NOT NULL,
    epoch       bigint           NOT NULL,
    node        text             NOT NULL,
    value       double precision,
    unit        text             NOT NULL DEFAULT '',  -- graph.toml's display unit ('' = none given)
    PRIMARY KEY (run_id, venue, underlying, epoch, node)
);

-- One node's series of one run (or runs side by side): equality on node, venue, underlying,
-- run_id, then a range of epochs (as expiry_nodes_by_node).
CREATE INDEX IF NOT EXISTS underlying_nodes_by_node
    ON underlying_nodes (node, venue, underlying, run_id, epoch);

CREATE TABLE IF NOT EXISTS instrument_nodes (
    run_id      text               NOT NULL,
    venue       text               NOT NULL,
    underlying  text               NOT NULL,
    expiry_ms   bigint             NOT NULL,
    epoch       bigint             NOT NULL,
    node        text               NOT NULL,
    strikes     double precision[] NOT NULL,  -- in the venue's quote unit, as ExpiryView.strikes
    vals        double precision[] NOT NULL,  -- vals[i] at strikes[i] (NULL: no value there)
    PRIMARY KEY (run_id, venue, underlying, expiry_ms, epoch, node),
    CHECK (cardinality(strikes) = cardinality(vals))
);

-- One node of one expiry over time: equality on node, venue, underlying, run_id, expiry_ms, then
-- a range of epochs (one strike: instrument_node_history's strike column, filtered after unnest).
CREATE INDEX IF NOT EXISTS instrument_nodes_by_node
    ON instrument_nodes (node, venue, underlying, run_id, expiry_ms, epoch);

-- underlying_nodes_as_of(venue, underlying, ts_ms, run_id): the underlying-level node values of
-- that surface as it stood at ts_ms (NULL: now): the latest row of each node between the head's
-- since_epoch (the latest snapshot) and its epoch, as operators/merge.py apply_patch folds them.
CREATE OR REPLACE FUNCTION underlying_nodes_as_of(p_venue text, p_underlying text, p_ts_ms bigint DEFAULT NULL,
                                                  p_run_id text DEFAULT NULL)
RETURNS TABLE (run_id text, epoch bigint, node text, value double precision, unit text)
LANGUAGE sql STABLE AS $$
    WITH h AS (SELECT * FROM surface_head_as_of(p_venue, p_underlying, p_ts_ms, p_run_id))
    SELECT DISTINCT ON (n.node) h.run_id, n.epoch, n.node, n.value, n.unit
    FROM h
    JOIN underlying_nodes n
      ON n.run_id = h.run_id AND n.venue = p_venue AND n.underlying = p_underlying
     AND n.epoch BETWEEN h.since_epoch AND h.epoch
    ORDER BY n.node, n.epoch DESC
$$;

-- underlying_node_history: every stored underlying-level value with its run and the time of its
-- epoch (rows only where the value changed: hold the last one between them), e.g.
--   SELECT ts_ms, value FROM underlying_node_history
--   WHERE run_id = 'r1' AND venue = 'deribit' AND underlying = 'BTC' AND node = 'fwd_vol_30_90'
--     AND ts_ms BETWEEN $1 AND $2 ORDER BY ts_ms;
CREATE OR REPLACE VIEW underlying_node_history AS
SELECT n.run_id, n.venue, n.underlying, n.epoch, s.ts_emit_ms AS ts_ms, n.node, n.value, n.unit
FROM underlying_nodes n
JOIN surface_state s USING (run_id, venue, underlying, epoch);

-- instrument_node_history: every stored per-strike value with its run and the time of its epoch,
-- one row per strike (the arrays of instrument_nodes unnested; strike_index: 1-based position in
-- the view's strikes), e.g.
--   SELECT ts_ms, value FROM instrument_node_history
--   WHERE run_id = 'r1' AND venue = 'deribit' AND underlying = 'BTC' AND node = 'iv_fit'
--     AND expiry_ms = $1 AND strike = 100000 AND ts_ms BETWEEN $2 AND $3 ORDER BY ts_ms;
CREATE OR REPLACE VIEW instrument_node_history AS
SELECT n.run_id, n.venue, n.underlying, n.expiry_ms, n.epoch, s.ts_emit_ms AS ts_ms, n.node, u.strike, u.value,
       u.strike_index
FROM instrument_nodes n
JOIN surface_state s USING (run_id, venue, underlying, epoch)
CROSS JOIN LATERAL unnest(n.strikes, n.vals) WITH ORDINALITY AS u(strike, value, strike_index);
