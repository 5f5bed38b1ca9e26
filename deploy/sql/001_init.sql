-- volgraph schema v1: SVI fits, per-expiry views and per-underlying surface state.
-- Applied once, in file-name order, by connectors.postgres.migrate(); never edit a
-- released file, add 002_*.sql instead. Every table has a natural key so a replayed or
-- resent event is a no-op (ON CONFLICT), and `epoch` is a wall-clock epoch index
-- (ts_ms // epoch_ms), so keys stay unique across restarts.

-- One row per SVI fit of one expiry. Immutable history: a resent fit is ignored.
CREATE TABLE IF NOT EXISTS smile_fits (
    venue            text             NOT NULL,
    underlying       text             NOT NULL,
    expiry_ms        bigint           NOT NULL,
    epoch            bigint           NOT NULL,
    ts_exchange_ms   bigint           NOT NULL,
    ts_emit_ms       bigint           NOT NULL,
    t_years          double precision NOT NULL,
    forward          double precision NOT NULL,
    a                double precision NOT NULL,
    b                double precision NOT NULL,
    rho              double precision NOT NULL,
    m                double precision NOT NULL,
    sigma            double precision NOT NULL,
    rmse_vol_pts     double precision NOT NULL,
    n_quotes         integer          NOT NULL,
    butterfly_ok     boolean          NOT NULL,
    min_g            double precision NOT NULL,
    fit_ms           double precision NOT NULL,
    inside_band_frac double precision,
    warm             boolean          NOT NULL DEFAULT false,
    PRIMARY KEY (venue, underlying, expiry_ms, epoch)
);

-- One row per (expiry, surface epoch) in which that expiry changed or was removed.
-- `view` is the whole ExpiryView as tagged JSON (operators.events.to_json) and is the
-- source of truth for rebuilding a surface; the scalar columns are for SQL queries.
-- A removal is a tombstone row: removed = true, view NULL. Last write per key wins,
-- which matches operators.events.apply_patch when patches arrive in order.
CREATE TABLE IF NOT EXISTS expiry_views (
    venue        text             NOT NULL,
    underlying   text             NOT NULL,
    expiry_ms    bigint           NOT NULL,
    epoch        bigint           NOT NULL,
    ts_emit_ms   bigint           NOT NULL,
    removed      boolean          NOT NULL DEFAULT false,
    atm_vol      double precision,
    rr25         double precision,
    bf25         double precision,
    rr10         double precision,
    bf10         double precision,
    calendar_ok  boolean,
    analytics    jsonb,
    view         jsonb,
    PRIMARY KEY (venue, underlying, expiry_ms, epoch),
    CHECK (removed OR view IS NOT NULL)
);

-- One row per surface epoch of one underlying: the global (small) parts of a patch or
-- snapshot. is_snapshot marks a full snapshot: views older than it do not count.
CREATE TABLE IF NOT EXISTS surface_state (
    venue           text             NOT NULL,
    underlying      text             NOT NULL,
    epoch           bigint           NOT NULL,
    ts_exchange_ms  bigint           NOT NULL,
    ts_emit_ms      bigint           NOT NULL,
    is_snapshot     boolean          NOT NULL DEFAULT false,
    index_px        double precision,
    n_changed       integer          NOT NULL DEFAULT 0,
    n_removed       integer          NOT NULL DEFAULT 0,
    tenors          jsonb            NOT NULL DEFAULT '[]'::jsonb,
    calendar        jsonb            NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (venue, underlying, epoch)
);

CREATE INDEX IF NOT EXISTS surface_state_snapshots
    ON surface_state (venue, underlying, epoch) WHERE is_snapshot;
