"""bench/bench_engine.py --levels on the tiny scenario: level vols off and on run side by side in their
own processes, and the summary carries each variant's rate, audit and shock row (vols counted, not
level prices). Never asserts timings."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import bench_engine  # noqa: E402


def test_levels_on_and_off_side_by_side(tmp_path, capsys):
    assert bench_engine.main(["--levels", "--scenario", "small", "--rounds", "1", "--seconds", "2", "--json",
                              "--cache-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    off, on = out["rows"]["off"], out["rows"]["on"]
    assert off["level_depth"] == 0 and off["sizes_contracts"] == [] and on["level_depth"] > 0
    for row in (off, on):
        assert row["msgs_per_s"] and row["shock_ms"] is not None
        assert row["max_err_bp"] <= 1.0 and row["level_max_err_bp"] <= 1.0
        assert row["shock_iv_full"] > 0  # the shock row counts the vols it solved
    assert off["shock_lv_full"] == 0 and off["lv_full"] == 0
    assert on["shock_lv_full"] > 0 and on["lv_full"] > 0 and on["shock_vols_solved"] > off["shock_vols_solved"]
