-- volgraph schema v8: vol at size (issue #13), written when graph.toml [chain] level_depth > 0 or
-- sizes_contracts is non-empty (off by default: then no patch carries ladders and no row is written).
--
-- depth_vols: one row per option book per fit of its expiry whose patch carried that book's
-- ladder (operators/events.py Ladders: a SurfacePatch view carries only the books that changed
-- since the expiry's previous patch), so a book's ladder as of time T is its latest row with
-- ts_exchange_ms <= T. Levels are arrays, best first, one element per level (level_depth of
-- them; NULL past the side's end); the *_exec_* arrays one element per entry of
-- sizes_contracts (NULL where the side is thinner than that size). Prices in coin (the venue's
-- option quote unit), sizes in the book's contracts (contract_size coin each), vols decimals
-- (0.65 = 65 %). A stale book (gap, crossed, venue silent) has no levels.
-- Natural key with run_id first (003_runs.sql): (run_id, venue, underlying, expiry_ms,
-- instrument, ts_exchange_ms), `venue` being the surface's (CONSOLIDATED 'all' on the combined
-- surface; the book's own is book_venue), ts_exchange_ms the fit's exchange time. Writes are
-- idempotent: ON CONFLICT last write wins (connectors/postgres/rows.py). History: a removed
-- expiry's rows stay.

CREATE TABLE IF NOT EXISTS depth_vols (
    run_id              text               NOT NULL,
    venue               text               NOT NULL,
    underlying          text               NOT NULL,
    expiry_ms           bigint             NOT NULL,
    instrument          text               NOT NULL,
    ts_exchange_ms      bigint             NOT NULL,  -- the fit's exchange time (UTC epoch ms)
    epoch               bigint             NOT NULL,  -- the surface epoch of the patch
    book_venue          text               NOT NULL,
    strike              double precision   NOT NULL,
    option_type         text               NOT NULL,  -- 'C' | 'P'
    contract_size       double precision   NOT NULL,  -- coin per contract
    stale               boolean            NOT NULL,
    level_depth         integer            NOT NULL,
    sizes_contracts     double precision[] NOT NULL,
    bid_px              double precision[] NOT NULL,
    bid_size_contracts  double precision[] NOT NULL,
    bid_iv              double precision[] NOT NULL,
    ask_px              double precision[] NOT NULL,
    ask_size_contracts  double precision[] NOT NULL,
    ask_iv              double precision[] NOT NULL,
    bid_exec_px         double precision[] NOT NULL,
    bid_exec_iv         double precision[] NOT NULL,
    ask_exec_px         double precision[] NOT NULL,
    ask_exec_iv         double precision[] NOT NULL,
    PRIMARY KEY (run_id, venue, underlying, expiry_ms, instrument, ts_exchange_ms)
);

-- One strike's books over time: equality on venue, underlying, run_id, expiry_ms, strike, then a
-- range of fit times.
CREATE INDEX IF NOT EXISTS depth_vols_by_strike
    ON depth_vols (venue, underlying, run_id, expiry_ms, strike, ts_exchange_ms);
