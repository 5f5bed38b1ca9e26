-- volgraph schema v7: how market_events.body is stored (issue #15; 004_market_events.sql).
--
-- 1. body is msgpack (bytea), not JSON text. Encoding the events is most of what storage costs the
--    flow (connectors/postgres/market_events.py encode_row), and JSON's part of it is formatting
--    every float in its shortest exact decimal: msgspec's msgpack writes them as 8 bytes. Measured
--    on 300,000 seed-scale events in a loop (2026-12-06): 0.22 us an event against 0.45; in the flow
--    0.47-0.52 s a run against 0.75-0.79 s, and storage's cost to the flow's throughput 15.6 %
--    against 19.3 % (5 interleaved rounds, 02:41 UTC; 12.9 % in bench/bench_events.py --repeat 5 at
--    02:44 UTC: docs/benchmarks.md "Market events"). 214 bytes an event against JSON's 256. The
--    writer sends rows in COPY's binary format: as hex in the text format, msgpack lost to JSON.
--    A row's body is the list of its events, each a msgpack map with its `type` tag first (the
--    fields as operators.events.to_json writes them); rows stored as JSON before this migration
--    become its UTF-8 bytes, and readers (decode_events, the view below) tell them apart by the
--    first byte (`[` is JSON: a msgpack array never starts with it).
-- 2. The per-event view market_event_rows stays, its `body` now jsonb text (keys in jsonb's order,
--    floats in their shortest exact form), through market_events_unpack(), a msgpack reader in
--    PL/pgSQL: slow (~0.2 ms an event: 5,000 seed-scale events in 0.93 s against 14 ms in Python,
--    2026-12-06), for a person or a test looking at some events, never on the flow's path.
--    Replays decode in Python (connectors/capture/db_replay.py).
-- 3. A body (up to 500 events a row, ~214 bytes each in msgpack) is always TOASTed. PostgreSQL's
--    default compression, pglz, cost the server ~1.9 us of CPU per event (COPY of 300,000 seed-scale
--    JSON events, rows of 100: 4.0 us an event with pglz, 2.1 without), on a 2-core machine partly
--    taken from the flow: storing every event, pglz against uncompressed, interleaved flow runs
--    (bench/bench_events.py, medians of paired costs, 2026-12-06, JSON bodies): 26.5 % of the
--    flow's throughput against 13.8 % with other processes loading the machine (01:42 UTC), 27.3 %
--    against 23.9 % on a quiet one (02:12 UTC). So:
--      * where the server has lz4 (PostgreSQL >= 14 built --with-lz4, as the official images are),
--        body is compressed with lz4 (known to be several times pglz's speed; not measured here:
--        the embedded build has no lz4);
--      * where it has not (pgserver's embedded build, the tests' and benchmarks' server), body is
--        stored uncompressed (STORAGE EXTERNAL: out of line, never compressed).
--    Both are per-column settings of the partitioned table: existing day partitions take them
--    here, and partitions made later (market_events_ensure) inherit them.

DROP VIEW IF EXISTS market_event_rows;

ALTER TABLE market_events ALTER COLUMN body TYPE bytea USING convert_to(body, 'UTF8');

DO $$
BEGIN
    BEGIN
        ALTER TABLE market_events ALTER COLUMN body SET COMPRESSION lz4;
    EXCEPTION WHEN feature_not_supported THEN
        ALTER TABLE market_events ALTER COLUMN body SET STORAGE EXTERNAL;
    END;
END $$;

-- market_events_unpack_at(p, pos): the msgpack value starting at byte `pos` of p as jsonb, and the
-- position after it. Reads what msgspec writes: nil, booleans, integers, float 32/64 (NaN and
-- infinities as null, as in the JSON bodies), str, bin (as hex text), arrays and maps.
CREATE OR REPLACE FUNCTION market_events_unpack_at(p bytea, pos integer, OUT val jsonb, OUT next integer)
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    b     integer := get_byte(p, pos);
    n     bigint := 0;
    w     integer := 0;  -- bytes of a length or number that follows
    i     integer;
    bits  bigint := 0;
    e     integer;
    m     bigint;
    f     float8;
    k     jsonb;
    item  record;
BEGIN
    next := pos + 1;
    IF b <= 127 THEN val := to_jsonb(b); RETURN; END IF;              -- positive fixint
    IF b >= 224 THEN val := to_jsonb(b - 256); RETURN; END IF;        -- negative fixint
    IF b = 192 THEN val := 'null'; RETURN; END IF;
    IF b = 194 THEN val := 'false'; RETURN; END IF;
    IF b = 195 THEN val := 'true'; RETURN; END IF;
    IF b BETWEEN 204 AND 211 THEN                                        -- uint 8-64, int 8-64
        w := 1 << ((b - 204) % 4);
        IF b >= 208 OR w < 8 THEN                                        -- fits a bigint
            FOR i IN 0 .. w - 1 LOOP bits := (bits << 8) | get_byte(p, next + i); END LOOP;
            IF b >= 208 AND w < 8 AND bits >= (1::bigint << (8 * w - 1)) THEN
                bits := bits - (1::bigint << (8 * w));                   -- a negative int 8-32
            END IF;
            val := to_jsonb(bits);
        ELSE                                                             -- uint 64
            DECLARE u numeric := 0;
            BEGIN
                FOR i IN 0 .. 7 LOOP u := u * 256 + get_byte(p, next + i); END LOOP;
                val := to_jsonb(u);
            END;
        END IF;
        next := next + w;
        RETURN;
    END IF;
    IF b = 202 OR b = 203 THEN                                           -- float 32, 64
        w := CASE b WHEN 202 THEN 4 ELSE 8 END;
        FOR i IN 0 .. w - 1 LOOP bits := (bits << 8) | get_byte(p, next + i); END LOOP;
        next := next + w;
        IF w = 4 THEN
            e := (bits >> 23) & 255; m := bits & 8388607;
            IF e = 255 THEN val := 'null'; RETURN; END IF;
            f := CASE WHEN e = 0 THEN m * power(2::float8, -149) ELSE (m + 8388608) * power(2::float8, e - 150) END;
            IF bits & 2147483648 <> 0 THEN f := -f; END IF;
            val := (f::float4)::text::jsonb;
        ELSE
            e := (bits >> 52) & 2047; m := bits & 4503599627370495;
            IF e = 2047 THEN val := 'null'; RETURN; END IF;
            f := CASE WHEN e = 0 THEN m * power(2::float8, -1074)
                      ELSE (m + 4503599627370496)::float8 * power(2::float8, e - 1075) END;
            IF bits < 0 THEN f := -f; END IF;
            val := f::text::jsonb;                                       -- shortest exact digits
        END IF;
        RETURN;
    END IF;
    IF b BETWEEN 160 AND 191 OR b BETWEEN 217 AND 219 OR b BETWEEN 196 AND 198 THEN  -- str, bin
        IF b <= 191 THEN n := b - 160;
        ELSE
            w := CASE WHEN b >= 217 THEN 1 << (b - 217) ELSE 1 << (b - 196) END;
            FOR i IN 0 .. w - 1 LOOP n := (n << 8) | get_byte(p, next + i); END LOOP;
            next := next + w;
        END IF;
        IF b BETWEEN 196 AND 198 THEN
            val := to_jsonb(encode(substring(p FROM next + 1 FOR n::integer), 'hex'));
        ELSE
            val := to_jsonb(convert_from(substring(p FROM next + 1 FOR n::integer), 'UTF8'));
        END IF;
        next := next + n::integer;
        RETURN;
    END IF;
    IF b BETWEEN 144 AND 159 OR b = 220 OR b = 221 THEN                  -- array
        IF b <= 159 THEN n := b - 144;
        ELSE
            w := CASE b WHEN 220 THEN 2 ELSE 4 END;
            FOR i IN 0 .. w - 1 LOOP n := (n << 8) | get_byte(p, next + i); END LOOP;
            next := next + w;
        END IF;
        val := '[]';
        FOR i IN 1 .. n LOOP
            item := market_events_unpack_at(p, next);
            val := val || jsonb_build_array(item.val);
            next := item.next;
        END LOOP;
        RETURN;
    END IF;
    IF b BETWEEN 128 AND 143 OR b = 222 OR b = 223 THEN                  -- map
        IF b <= 143 THEN n := b - 128;
        ELSE
            w := CASE b WHEN 222 THEN 2 ELSE 4 END;
            FOR i IN 0 .. w - 1 LOOP n := (n << 8) | get_byte(p, next + i); END LOOP;
            next := next + w;
        END IF;
        val := '{}';
        FOR i IN 1 .. n LOOP
            item := market_events_unpack_at(p, next);
            k := item.val;
            item := market_events_unpack_at(p, item.next);
            val := val || jsonb_build_object(k #>> '{}', item.val);
            next := item.next;
        END LOOP;
        RETURN;
    END IF;
    RAISE EXCEPTION 'market_events_unpack: byte % at % is not msgpack this reader knows', b, pos;
END $$;

-- market_events_unpack(body): a stored body's events, one jsonb each, in order (a JSON-era body too).
-- The body is copied into memory once (a TOASTed argument would be fetched again by every get_byte:
-- 1.8 s a row of 500 events), and the events are returned one by one, not appended to one array.
CREATE OR REPLACE FUNCTION market_events_unpack(p bytea) RETURNS SETOF jsonb
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    q     bytea := p || ''::bytea;
    b     integer := get_byte(q, 0);
    n     bigint := 0;
    pos   integer := 1;
    i     integer;
    item  record;
BEGIN
    IF b = 91 THEN                                                       -- `[`: a JSON array
        RETURN QUERY SELECT jsonb_array_elements(convert_from(q, 'UTF8')::jsonb);
        RETURN;
    END IF;
    IF b BETWEEN 144 AND 159 THEN n := b - 144;
    ELSIF b = 220 OR b = 221 THEN
        FOR i IN 0 .. (CASE b WHEN 220 THEN 1 ELSE 3 END) LOOP n := (n << 8) | get_byte(q, pos); pos := pos + 1; END LOOP;
    ELSE
        RAISE EXCEPTION 'market_events_unpack: a body is an array of events; its first byte is %', b;
    END IF;
    FOR i IN 1 .. n LOOP
        item := market_events_unpack_at(q, pos);
        pos := item.next;
        RETURN NEXT item.val;
    END LOOP;
END $$;

-- market_event_rows: one row per stored event, e.g. one instrument's book updates in a window:
--   SELECT ts_recv_ms, body FROM market_event_rows WHERE run_id = 'r1' AND venue = 'deribit'
--     AND underlying = 'BTC' AND ts_ms BETWEEN $1 AND $2 AND instrument = 'BTC-27MAR26-90000-C'
--     AND type = 'BookUpdate' ORDER BY seg, ord;
-- (filter on ts_ms, the row's first receive time, so partitions are pruned; every row of the
-- window is unpacked, ~0.2 ms an event.)
CREATE OR REPLACE VIEW market_event_rows AS
SELECT m.run_id, m.venue, m.underlying, m.seg, m.ord + e.i - 1 AS ord, m.ts_ms,
       (e.v->>'ts_recv_ms')::bigint AS ts_recv_ms, e.v->>'type' AS type,
       coalesce(e.v->>'instrument', '') AS instrument, e.v::text AS body
FROM market_events m
CROSS JOIN LATERAL market_events_unpack(m.body) WITH ORDINALITY e(v, i);
