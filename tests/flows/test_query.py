"""`volgraph query` (flows/query.py) against a real PostgreSQL (pgserver) holding two runs of
the same surface: the runs listed, the surface now and as of a time, a node's series with two
runs side by side, and the clear errors; the time parser is a property test."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

import connectors.postgres as pg
from flows.cli import main
from flows.query import QueryError, iso, parse_expiry_ms, parse_time_ms
from tests.helpers.config import run_for_tests


@pytest.fixture
def stored(pg_db, surface_factory):
    """Run `first` wrote epochs 100–102 of deribit:BTC, run `second` (started later) epochs
    200–201 of the same expiries with other values."""
    f = surface_factory(seed=5)
    first = [f.patch(100, changed=[0, 1]), f.patch(101, changed=[1]), f.patch(102, changed=[0])]
    second = [f.patch(200, changed=[0, 1]), f.patch(201, changed=[1])]
    with pg.connect(pg_db) as conn:
        pg.migrate(conn)
        for run_id, started, events in (("first", 1, first), ("second", 2, second)):
            run = run_for_tests(run_id)
            pg.register_run(conn, type(run)(**{**run.__dict__, "started_ms": started}))
            pg.write_events(conn, events, run_id)
    return {"dsn": pg_db, "f": f, "first": first, "second": second}


def query(capsys, *args) -> tuple[int, str, str]:
    code = main(["query", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_runs_are_listed_with_their_source_and_methods(stored, capsys):
    code, out, _ = query(capsys, "--pg", stored["dsn"], "runs")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["first", "second"]
    assert all("\tfile\t" in line and '"svi": "test"' in line for line in lines)


def test_the_surface_now_is_the_latest_runs_and_as_of_a_time_the_fold_until_then(stored, capsys):
    f = stored["f"]
    code, out, _ = query(capsys, "--pg", stored["dsn"], "surface", "deribit:BTC")
    assert code == 0
    latest = f.fold(stored["second"])
    assert out.splitlines()[0].startswith(f"deribit:BTC at {iso(latest.ts_emit_ms)} UTC (epoch 201)")
    for view in latest.expiries:  # atm_vol in vol points (graph.toml's unit), rr25 as stored
        line = next(x for x in out.splitlines() if x.lstrip().startswith(datetime.fromtimestamp(
            view.expiry_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")))
        assert f"{view.analytics['atm_vol'] * 100:.2f}" in line
        assert f"{view.analytics['rr25'] * 100:.2f}" in line

    # as of epoch 101's emit time, in the first run: epochs 100 and 101 folded, not 102
    at = stored["first"][1].ts_emit_ms
    code, out, _ = query(capsys, "--pg", stored["dsn"], "surface", "deribit:BTC", "--run", "first", "--at", str(at),
                         "--json")
    assert code == 0
    from operators.events import from_json
    assert from_json(out.strip()) == f.fold(stored["first"][:2])


def test_a_series_prints_two_runs_side_by_side(stored, capsys):
    f = stored["f"]
    e1 = f.expiry(1)
    code, out, _ = query(capsys, "--pg", stored["dsn"], "series", "deribit:BTC", "atm_vol", "--start", "0",
                         "--end", "99999999", "--expiry", str(e1), "--run", "first", "--run", "second")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "time_utc\texpiry\tfirst\tsecond"
    want = [(p.ts_emit_ms, run, next(v for v in p.expiries if v.expiry_ms == e1).analytics["atm_vol"])
            for run in ("first", "second") for p in stored[run] if any(v.expiry_ms == e1 for v in p.expiries)]
    assert len(lines) - 1 == len(want)
    for ts, run, value in want:
        row = next(x.split("\t") for x in lines[1:] if x.startswith(iso(ts)))
        assert row[2 if run == "first" else 3] == f"{value * 100:.2f}"
        assert row[3 if run == "first" else 2] == ""


def test_bad_questions_say_the_fix_and_empty_answers_exit_1(stored, capsys):
    code, _, err = query(capsys, "--pg", stored["dsn"], "surface", "BTC")
    assert code == 2 and "VENUE:UNDERLYING" in err
    code, _, err = query(capsys, "--pg", stored["dsn"], "series", "deribit:BTC", "atm_vol", "--start", "yesterday",
                         "--end", "0")
    assert code == 2 and "--start 'yesterday': not a time" in err
    code, _, err = query(capsys, "--pg", stored["dsn"], "series", "deribit:BTC", "atm_vol", "--start", "10",
                         "--end", "5")
    assert code == 2 and "swap them" in err
    code, _, err = query(capsys, "--pg", stored["dsn"], "surface", "okx:ETH")
    assert code == 1 and "no surface of okx:ETH" in err
    code, _, err = query(capsys, "--pg", stored["dsn"], "series", "deribit:BTC", "no_such_node", "--start", "0",
                         "--end", "99999999")
    assert code == 1 and "no no_such_node values" in err


@given(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_any_utc_time_parses_to_its_epoch_ms(dt):
    dt = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    ms = int(dt.replace(tzinfo=timezone.utc).timestamp() * 1000)
    assert parse_time_ms(dt.isoformat(), "t") == ms
    assert parse_time_ms(dt.isoformat() + "Z", "t") == ms
    assert parse_time_ms(str(ms), "t") == ms
    assert parse_time_ms((dt.replace(tzinfo=timezone(timedelta(hours=2))) + timedelta(hours=2)).isoformat(), "t") == ms


@given(st.text(max_size=30))
def test_the_time_parser_raises_only_its_own_error(text):
    try:
        parse_time_ms(text, "--at")
    except QueryError as exc:
        assert "--at" in str(exc) and "ISO 8601" in str(exc)
    try:
        parse_expiry_ms(text)
    except QueryError as exc:
        assert "--expiry" in str(exc)


UNDERLYING_UNITS = {"atm_slope_30_90": "vol/yr", "fwd_vol_30_90": "vol pts"}


@pytest.fixture
def stored_levels(pg_db, surface_factory):
    """One run of deribit:ETH whose patches carry level = "underlying" values: both nodes at
    epoch 100, none at 101, only fwd_vol_30_90 (changed) at 102; stored in underlying_nodes."""
    import msgspec

    f = surface_factory(underlying="ETH", seed=9)
    values = [{"atm_slope_30_90": -0.1234, "fwd_vol_30_90": 0.5012}, {}, {"fwd_vol_30_90": 0.4987}]
    events = [msgspec.structs.replace(f.patch(epoch, changed=[0, 1] if epoch == 100 else [1]),
                                      underlying_analytics=v, underlying_units={n: UNDERLYING_UNITS[n] for n in v})
              for epoch, v in zip((100, 101, 102), values)]
    with pg.connect(pg_db) as conn:
        pg.migrate(conn)
        pg.register_run(conn, run_for_tests("lv"))
        pg.write_events(conn, events, "lv")
    return {"dsn": pg_db, "f": f, "events": events}


def test_the_surface_prints_its_underlying_level_values_merged(stored_levels, capsys):
    code, out, _ = query(capsys, "--pg", stored_levels["dsn"], "surface", "deribit:ETH")
    assert code == 0
    lines = out.splitlines()
    at = lines.index("term structure:")
    # graph.toml's order (atm_slope_30_90 before fwd_vol_30_90), aligned; fwd vol in vol points
    assert lines[at + 1:] == ["  atm_slope_30_90  -0.1234  vol/yr", "  fwd_vol_30_90      49.87  vol pts"]
    code, out, _ = query(capsys, "--pg", stored_levels["dsn"], "surface", "deribit:ETH", "--json")
    from operators.events import from_json
    snap = from_json(out.strip())
    assert snap.underlying_analytics == {"atm_slope_30_90": -0.1234, "fwd_vol_30_90": 0.4987}
    assert snap.underlying_units == UNDERLYING_UNITS


def test_a_series_reads_an_underlying_level_node_without_expiry(stored_levels, capsys):
    ev = stored_levels["events"]
    code, out, _ = query(capsys, "--pg", stored_levels["dsn"], "series", "deribit:ETH", "fwd_vol_30_90",
                         "--start", "0", "--end", "99999999999999")
    assert code == 0
    assert out.strip().splitlines() == ["time_utc\tlatest run", f"{iso(ev[0].ts_emit_ms)}\t50.12",
                                        f"{iso(ev[2].ts_emit_ms)}\t49.87"]
    # from epoch 101's time: the value in effect then (epoch 100's), then the change
    code, out, _ = query(capsys, "--pg", stored_levels["dsn"], "series", "deribit:ETH", "atm_slope_30_90",
                         "--start", str(ev[1].ts_emit_ms), "--end", "99999999999999", "--run", "lv")
    assert code == 0
    assert out.strip().splitlines() == ["time_utc\tlv", f"{iso(ev[0].ts_emit_ms)}\t-0.1234"]
    # an expiry-level node still reads expiry_nodes, with its expiry column
    code, out, _ = query(capsys, "--pg", stored_levels["dsn"], "series", "deribit:ETH", "atm_vol",
                         "--start", "0", "--end", "99999999999999")
    assert code == 0 and out.startswith("time_utc\texpiry\tlatest run\n")
    code, _, err = query(capsys, "--pg", stored_levels["dsn"], "series", "deribit:ETH", "fwd_vol_30_90",
                         "--start", "0", "--end", "9", "--expiry", "2026-09-25")
    assert code == 2 and "drop --expiry" in err
