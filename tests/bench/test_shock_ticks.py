"""bench/shock_ticks.py runs the seed shock through the real parser and one ChainLogic per BTC
expiry and profiles the shock's ticks: every expiry fitted once, the profile printed."""

from __future__ import annotations

import re

from bench import shock_ticks


def test_the_shock_fits_every_btc_expiry_and_prints_its_profile(tmp_path, capsys):
    assert shock_ticks.main(["--top", "5", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"# (\d+) BTC expiries, 4,021 shock frames: .* ticks [\d.]+ ms under cProfile, (\d+) fits", out)
    assert m and m.group(1) == m.group(2) == "12", out[:400]
    assert "operators/state/chain.py" in out and "(_epoch)" in out
