-- volgraph schema v4: market events stored for replay (issue #15 part 4).
--
-- Every normalised event a venue source emits (Instrument, BookUpdate, Ticker, IndexPrice,
-- FuturePrice, FeedError: operators/events.py) can be stored here, so a window of history can be
-- re-run through the flow with another method (`volgraph replay --from-db`). Switched on by
-- graph.toml [sinks.postgres] market_events = true; written by connectors/postgres/market_events.py.
--
-- One row per source batch of one surface (venue, underlying): the events the flow's event sink
-- accepted together, in order, ~10 at the seed scale. Not one row per event: measured on this
-- 2-core machine (bench/bench_events.py, docs/benchmarks.md "Market events"), a COPY line built
-- per event cost the writer 1.3-1.9 us of Python per event under the flow's GIL, and expanding
-- arrays into event rows in SQL cost PostgreSQL ~8 us per event on the core the flow shares
-- (storage then cost the flow 64 % and ~55 % of its throughput, in turn); with a row per batch the
-- writer's Python per event is one msgspec encode of the list (~0.5 us), the server writes a row
-- per ~10 events, and storage costs the flow 29 % (2026-12-05). Since 2026-12-06 a row holds the
-- whole source batch of a surface, up to 500 events (connectors/postgres/market_sink.py
-- ROW_EVENTS; the table is unchanged, 007_market_events_storage.sql sets how body is stored). The
-- view market_event_rows below gives one row per event for SQL.
--   * body is the events as one JSON array, each exactly operators.events.to_json (msgspec, `type`
--     tag first): the round trip is exact and needs no column per field. Since 2026-12-06
--     (007_market_events_storage.sql) body is bytea holding a msgpack array of the same events,
--     written by binary COPY (storage then cost the flow 12.9 %, docs/benchmarks.md); rows
--     written as JSON before that keep their bytes and still decode;
--   * ts_ms / ts_last_ms: the first and last receive time (ts_recv_ms, which every market event
--     has) of its events: a replay's window and clock, as for a recording
--     (connectors/capture/replay.py); ts_ms is the partition key;
--   * (seg, ord): the position of its first event in the order the flow's event sink accepted
--     the events (its i-th event is at ord + i): seg names one sink partition's life (its start;
--     kept across a resume from a recovery snapshot), ord counts its events. A replay reads a
--     surface's rows by (seg, ord), the order the flow saw them, so every chain key's books are
--     rebuilt exactly. A resumed flow hands the same events to the same positions again: the
--     key makes the resend a no-op (ON CONFLICT DO NOTHING);
--   * kinds: which event types it holds, a bit each (1 Instrument, 2 FuturePrice, 4 IndexPrice,
--     8 BookUpdate, 16 Ticker, 32 FeedError): a replay starting mid-history reads the last
--     instruments and prices before its window from these rows alone;
--   * run_id: the run that received the events, as on every table (003_runs.sql). No foreign key:
--     the writer registers the run before its first row (connectors/postgres/runs.py
--     register_run).
--
-- Partitioned by day (declarative RANGE partitions on ts_ms, UTC days, named
-- market_events_YYYYMMDD). The writer creates the days a batch needs, and the next one ahead,
-- with market_events_ensure(); retention drops whole days with market_events_retain() (dropping
-- a partition is instant and leaves no dead rows to vacuum, unlike DELETE).

CREATE TABLE IF NOT EXISTS market_events (
    run_id      text     NOT NULL,
    venue       text     NOT NULL,
    underlying  text     NOT NULL,
    seg         bigint   NOT NULL,
    ord         bigint   NOT NULL,
    ts_ms       bigint   NOT NULL,
    ts_last_ms  bigint   NOT NULL,
    n           integer  NOT NULL CHECK (n > 0),
    kinds       smallint NOT NULL,
    body        text     NOT NULL,
    -- one index serves the resend check and a replay's read of one surface in order
    PRIMARY KEY (run_id, venue, underlying, seg, ord, ts_ms)
) PARTITION BY RANGE (ts_ms);

-- the rows holding instruments (discovery: a handful a day), for a replay's preamble
CREATE INDEX IF NOT EXISTS market_events_instruments
    ON market_events (run_id, venue, underlying, ts_ms) WHERE kinds & 1 <> 0;

-- market_event_rows: one row per stored event, e.g. one instrument's book updates in a window:
--   SELECT ts_recv_ms, body FROM market_event_rows WHERE run_id = 'r1' AND venue = 'deribit'
--     AND underlying = 'BTC' AND ts_ms BETWEEN $1 AND $2 AND instrument = 'BTC-27MAR26-90000-C'
--     AND type = 'BookUpdate' ORDER BY seg, ord;
-- (filter on ts_ms, the row's first receive time, so partitions are pruned.)
CREATE OR REPLACE VIEW market_event_rows AS
SELECT m.run_id, m.venue, m.underlying, m.seg, m.ord + e.i - 1 AS ord, m.ts_ms,
       (e.v->>'ts_recv_ms')::bigint AS ts_recv_ms, e.v->>'type' AS type,
       coalesce(e.v->>'instrument', '') AS instrument, e.v::text AS body
FROM market_events m
CROSS JOIN LATERAL json_array_elements(m.body::json) WITH ORDINALITY e(v, i);

-- market_events_ensure(from_ms, to_ms): the day partitions covering [from_ms, to_ms] exist
-- afterwards; returns how many it created. Serialised by an advisory lock, so writers of several
-- workers may call it at once.
CREATE OR REPLACE FUNCTION market_events_ensure(p_from_ms bigint, p_to_ms bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    day_ms   constant bigint := 86400000;
    d        bigint;
    name     text;
    created  integer := 0;
BEGIN
    IF p_to_ms < p_from_ms THEN
        RAISE EXCEPTION 'market_events_ensure(%, %): to_ms before from_ms', p_from_ms, p_to_ms;
    END IF;
    IF (p_to_ms - p_from_ms) / day_ms > 3660 THEN
        RAISE EXCEPTION 'market_events_ensure(%, %): more than ten years of days; check the event times', p_from_ms, p_to_ms;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('market_events_ensure'));
    d := floor(p_from_ms::numeric / day_ms)::bigint * day_ms;
    WHILE d <= p_to_ms LOOP
        name := 'market_events_' || to_char(to_timestamp(d / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF market_events FOR VALUES FROM (%s) TO (%s)',
                           name, d, d + day_ms);
            created := created + 1;
        END IF;
        d := d + day_ms;
    END LOOP;
    RETURN created;
END $$;

-- market_events_retain(days, newest_ms): drops the day partitions that end at or before the start
-- of newest_ms's day minus `days` days (days = 0: none); returns the names dropped. Counting from
-- the newest stored event rather than the wall clock keeps a replayed recording of last month from
-- being dropped as it is written.
CREATE OR REPLACE FUNCTION market_events_retain(p_days integer, p_newest_ms bigint)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    day_ms  constant bigint := 86400000;
    cutoff  bigint;
    part    record;
BEGIN
    IF p_days IS NULL OR p_days <= 0 THEN
        RETURN;
    END IF;
    cutoff := floor(p_newest_ms::numeric / day_ms)::bigint * day_ms - p_days::bigint * day_ms;
    PERFORM pg_advisory_xact_lock(hashtext('market_events_ensure'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'market_events'::regclass AND c.relname ~ '^market_events_[0-9]{8}$'
    LOOP
        IF (extract(epoch FROM to_date(substr(part.relname, 15), 'YYYYMMDD'))::bigint * 1000 + day_ms) <= cutoff THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END $$;
