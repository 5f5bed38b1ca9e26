-- volgraph schema v9: vol at size one row per view (issue #13), replacing depth_vols' row per book.
--
-- depth_vols (008) got one row per option book per fit: ~3,100 rows/s with graph.toml [sinks.postgres]
-- depth_vols = true, and `volgraph run` fell behind (measured 2026-12-06 05:06 UTC). From this
-- version the writer (connectors/postgres/rows.py) stores depth_views instead, one row per
-- SurfacePatch view that carries ladders (operators/events.py Ladders: only the books that changed
-- since the expiry's previous patch travel), the books as arrays, as instrument_nodes (006) stores a
-- view's strikes:
--   * per book, 1-D arrays aligned by book (element i is book instrument[i]'s): instrument,
--     book_venue, strike, option_type ('C' | 'P'), contract_size (coin per contract), stale;
--   * the ladders as 2-D arrays, books × levels: bid_px, bid_size_contracts, bid_iv, ask_px,
--     ask_size_contracts, ask_iv (level_depth columns, best first, NULL past the side's end);
--     books × sizes: bid_exec_px, bid_exec_iv, ask_exec_px, ask_exec_iv (one column per entry of
--     sizes_contracts, NULL where the side is thinner than that size). A 2-D array with no columns
--     (level_depth 0, or no sizes) is stored empty ('{}'). Row i of bid_px: bid_px[i:i][:], or
--     depth_book_row(bid_px, i) below (1-D).
-- Units as 008: prices in coin (the venue's option quote unit), sizes in the book's contracts,
-- vols decimals (0.65 = 65 %). A stale book (gap, crossed, venue silent) has no levels.
-- Natural key with run_id first (003_runs.sql): (run_id, venue, underlying, expiry_ms,
-- ts_exchange_ms, epoch): `venue` the surface's (CONSOLIDATED 'all' on the combined surface; a
-- book's own is book_venue), ts_exchange_ms the view's fit's exchange time, epoch the patch's
-- surface epoch: one surface publishes one patch per epoch, and a patch sending ladders that moved
-- between fits re-sends the view with the same fit, so the epoch keeps those books apart from the
-- fit's. Writes are idempotent: ON CONFLICT last write wins (a resent batch rewrites the same row).
-- History: a removed expiry's rows stay.
--
-- depth_vols itself stays, with every row 008 wrote; nothing writes it any more.
-- depth_vol_books (below) is the per-book layout over both tables, the same columns as depth_vols
-- in the same order: its rows 008 wrote plus depth_views unnested, one row per book per fit time
-- (depth_vols' key; when a book was sent twice at one fit time, the later epoch's, as 008's
-- ON CONFLICT kept), so a query written against depth_vols works against depth_vol_books.

CREATE TABLE IF NOT EXISTS depth_views (
    run_id              text                 NOT NULL,
    venue               text                 NOT NULL,
    underlying          text                 NOT NULL,
    expiry_ms           bigint               NOT NULL,
    ts_exchange_ms      bigint               NOT NULL,  -- the view's fit's exchange time (UTC epoch ms)
    epoch               bigint               NOT NULL,  -- the surface epoch of the patch
    level_depth         integer              NOT NULL,
    sizes_contracts     double precision[]   NOT NULL,
    instrument          text[]               NOT NULL,  -- the books, aligned with every array below
    book_venue          text[]               NOT NULL,
    strike              double precision[]   NOT NULL,
    option_type         text[]               NOT NULL,  -- 'C' | 'P'
    contract_size       double precision[]   NOT NULL,  -- coin per contract
    stale               boolean[]            NOT NULL,
    bid_px              double precision[][] NOT NULL,  -- books × level_depth
    bid_size_contracts  double precision[][] NOT NULL,
    bid_iv              double precision[][] NOT NULL,
    ask_px              double precision[][] NOT NULL,
    ask_size_contracts  double precision[][] NOT NULL,
    ask_iv              double precision[][] NOT NULL,
    bid_exec_px         double precision[][] NOT NULL,  -- books × cardinality(sizes_contracts)
    bid_exec_iv         double precision[][] NOT NULL,
    ask_exec_px         double precision[][] NOT NULL,
    ask_exec_iv         double precision[][] NOT NULL,
    PRIMARY KEY (run_id, venue, underlying, expiry_ms, ts_exchange_ms, epoch),
    CHECK (cardinality(instrument) > 0
           AND cardinality(book_venue) = cardinality(instrument) AND cardinality(strike) = cardinality(instrument)
           AND cardinality(option_type) = cardinality(instrument)
           AND cardinality(contract_size) = cardinality(instrument) AND cardinality(stale) = cardinality(instrument)),
    -- a ladder array has a row per book, or is empty (no columns)
    CHECK (COALESCE(array_length(bid_px, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(bid_size_contracts, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(bid_iv, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(ask_px, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(ask_size_contracts, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(ask_iv, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(bid_exec_px, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(bid_exec_iv, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(ask_exec_px, 1), cardinality(instrument)) = cardinality(instrument)
           AND COALESCE(array_length(ask_exec_iv, 1), cardinality(instrument)) = cardinality(instrument))
);
-- One expiry's ladders over time: the primary key (run_id, venue, underlying, expiry_ms, then a
-- range of fit times). One strike: depth_vol_books' strike column, filtered after unnest.

-- depth_book_row(a, i): row i (1-based) of a books × levels (or × sizes) array, as a 1-D array
-- ('{}' when the array has no columns), e.g. depth_book_row(bid_iv, 3) = the third book's bid vols.
CREATE OR REPLACE FUNCTION depth_book_row(a double precision[], i integer) RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY(SELECT x FROM unnest(a[i:i][:]) WITH ORDINALITY AS u(x, n) ORDER BY n)
$$;

-- depth_vol_books: one row per book per fit time, depth_vols' columns in depth_vols' order, from
-- depth_vols (rows 008 wrote) and depth_views (unnested): a book's ladder as of time T is its
-- latest row with ts_exchange_ms <= T, e.g.
--   SELECT DISTINCT ON (instrument) instrument, ts_exchange_ms, bid_iv, ask_iv, ask_exec_iv
--   FROM depth_vol_books
--   WHERE run_id = 'r1' AND venue = 'deribit' AND underlying = 'BTC' AND expiry_ms = $1
--     AND strike = 100000 AND ts_exchange_ms <= $2
--   ORDER BY instrument, ts_exchange_ms DESC;
-- One row per depth_vols key: when the same book and fit time is in both tables or in two epochs
-- (ladders re-sent between fits), the latest epoch's (depth_views' on a tie), as 008's
-- ON CONFLICT kept the last write. Strike, which an instrument determines, is in the DISTINCT ON
-- list only so that a filter on it applies before the books' arrays are sliced: one strike of an
-- expiry with 28 views of ~225 books reads in 5 ms instead of 47 (2026-12-06 06:31 UTC); every
-- book of a run: ~100,000 books/s.
CREATE OR REPLACE VIEW depth_vol_books AS
SELECT DISTINCT ON (run_id, venue, underlying, expiry_ms, strike, instrument, ts_exchange_ms)
       run_id, venue, underlying, expiry_ms, instrument, ts_exchange_ms, epoch, book_venue, strike, option_type,
       contract_size, stale, level_depth, sizes_contracts, bid_px, bid_size_contracts, bid_iv, ask_px,
       ask_size_contracts, ask_iv, bid_exec_px, bid_exec_iv, ask_exec_px, ask_exec_iv
FROM (
    SELECT v.run_id, v.venue, v.underlying, v.expiry_ms, v.instrument[b.i] AS instrument, v.ts_exchange_ms, v.epoch,
           v.book_venue[b.i] AS book_venue, v.strike[b.i] AS strike, v.option_type[b.i] AS option_type,
           v.contract_size[b.i] AS contract_size, v.stale[b.i] AS stale, v.level_depth, v.sizes_contracts,
           depth_book_row(v.bid_px, b.i) AS bid_px,
           depth_book_row(v.bid_size_contracts, b.i) AS bid_size_contracts,
           depth_book_row(v.bid_iv, b.i) AS bid_iv,
           depth_book_row(v.ask_px, b.i) AS ask_px,
           depth_book_row(v.ask_size_contracts, b.i) AS ask_size_contracts,
           depth_book_row(v.ask_iv, b.i) AS ask_iv,
           depth_book_row(v.bid_exec_px, b.i) AS bid_exec_px,
           depth_book_row(v.bid_exec_iv, b.i) AS bid_exec_iv,
           depth_book_row(v.ask_exec_px, b.i) AS ask_exec_px,
           depth_book_row(v.ask_exec_iv, b.i) AS ask_exec_iv,
           1 AS layout  -- 009: depth_views
    FROM depth_views v
    CROSS JOIN LATERAL generate_subscripts(v.instrument, 1) AS b(i)
    UNION ALL
    SELECT d.run_id, d.venue, d.underlying, d.expiry_ms, d.instrument, d.ts_exchange_ms, d.epoch, d.book_venue,
           d.strike, d.option_type, d.contract_size, d.stale, d.level_depth, d.sizes_contracts, d.bid_px,
           d.bid_size_contracts, d.bid_iv, d.ask_px, d.ask_size_contracts, d.ask_iv, d.bid_exec_px, d.bid_exec_iv,
           d.ask_exec_px, d.ask_exec_iv,
           0 AS layout  -- 008: depth_vols
    FROM depth_vols d
) books
ORDER BY run_id, venue, underlying, expiry_ms, strike, instrument, ts_exchange_ms, epoch DESC, layout DESC;
