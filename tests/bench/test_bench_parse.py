"""bench/bench_parse.py runs both ways over the three sets of the seed shock recording and prints
a row for each: the same frames, the same book levels per frame either way."""

from __future__ import annotations

import re

from bench import bench_parse


def test_both_ways_run_over_every_set(tmp_path, capsys):
    assert bench_parse.main(["--passes", "1", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^(first snapshots|quiet changes|shock) +\| +([\d,]+) \| +([\d.]+) \| (frame by frame|batch) ",
                      out, re.M)
    assert [(r[0], r[3]) for r in rows] == [(s, w) for s in ("first snapshots", "quiet changes", "shock")
                                           for w in ("frame by frame", "batch")], out
    by_set = {r[0]: (int(r[1].replace(",", "")), float(r[2])) for r in rows}
    assert by_set["shock"][0] == 4021 and by_set["shock"][1] > 10  # every BTC book re-quoted, ~21 levels a frame
    assert 0 < by_set["quiet changes"][1] < by_set["shock"][1] and by_set["first snapshots"][0] > 10_000
