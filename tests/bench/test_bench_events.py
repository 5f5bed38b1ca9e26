"""bench/bench_events.py's fit/view writer table end to end on the small scenario: the flow's
SmileFit and SurfacePatch items through the real PostgresWriter (a real PostgreSQL), burst and paced,
then the printed table. No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import bench_events  # noqa: E402
from bench.workload import ensure_workload, workload_for  # noqa: E402


def test_fitview_rows_through_the_writer(pg_db, tmp_path, capsys):
    path, meta = ensure_workload(workload_for("small", None, n_messages=20_000), cache_dir=tmp_path, quiet=True)
    r = bench_events.run_child(dict(fitview=True, dsn=pg_db, path=str(path), meta=meta, frames=0,
                                    spill=str(tmp_path / "spill")))
    assert r["fits"] > 0 and r["patches"] > 0 and r["views"] > 0
    burst, paced = r["modes"]
    assert (burst["mode"], paced["mode"]) == ("burst", "paced")
    for m in (burst, paced):
        assert m["durable"] and m["left"] == 0 and m["spilled"] == 0 and m["rejected"] == 0, m
        assert m["items"] == r["fits"] + r["patches"] - 1  # the first item warms the connection, untimed
        for table in ("smile_fits", "expiry_views", "expiry_nodes", "instrument_nodes", "underlying_nodes"):
            assert m["rows"][table] > 0, (m["mode"], table)
        assert m["secs"] > 0 and m["peak"] >= 1 and m["batches"] >= 1
    assert burst["rows"]["smile_fits"] == paced["rows"]["smile_fits"]  # the same items under two runs
    bench_events.print_fitview(r)
    out = capsys.readouterr().out
    assert "fit/view rows: the writer sustains" in out and "instrument_nodes" in out and "peak backlog" in out


def test_depth_section_writes_the_same_books_in_both_layouts(pg_db, tmp_path, capsys):
    """The vol-at-size rows: with level vols on, 008's layout (a row per book) and 009's (a row per
    view) hold the same books (depth_vol_books rows of each run); the writer stores one depth_views
    row per view carrying ladders."""
    path, meta = ensure_workload(workload_for("small", None, n_messages=20_000), cache_dir=tmp_path, quiet=True)
    r = bench_events.run_child(dict(depth=True, dsn=pg_db, path=str(path), meta=meta, frames=0, rounds=1,
                                    spill=str(tmp_path / "spill")))
    assert r["views"] > 0 and r["books"] > r["views"]
    old, new = r["layouts"]
    assert (old["layout"], new["layout"]) == ("008", "009")
    assert new["rows"] == r["views"] and old["rows"] > new["rows"]  # a row per view, before a row per book
    assert old["books"] == new["books"] == old["rows"] > 0
    for m in r["modes"]:
        assert m["durable"] and m["left"] == 0 and m["spilled"] == 0 and m["rejected"] == 0, m
        assert m["rows"]["depth_views"] == r["views"], m
    bench_events.print_depth(r)
    assert "009: depth_views" in capsys.readouterr().out
