"""Reproduce Deribit's own mark IVs from its mark prices on a real BTC/ETH chain snapshot.

Data: tests/data/deribit_options_snapshot_20260822T153351Z.csv (provenance in tests/data/README.md). Everything asserted is computed here;
no expected number is copied out of the file.
"""

from __future__ import annotations

import csv
from datetime import datetime

import numpy as np
import pytest

from operators.kernels import iv
from tests.helpers.data import SNAPSHOT

MS_PER_YEAR = 365 * 86_400_000  # ACT/365, as operators/state/chain.py



def _ms(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000  # to the millisecond


@pytest.fixture(scope="module")
def chain():
    with SNAPSHOT.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "forward": np.array([float(r["underlying"]) for r in rows]),
        "strike": np.array([float(r["strike"]) for r in rows]),
        "mark_coin": np.array([float(r["mark_price"]) for r in rows]),
        "mark_iv": np.array([float(r["implied_volatility"]) for r in rows]),
        "is_call": np.array([r["option_type"] == "call" for r in rows]),
        "t_years": np.array([(_ms(r["expiry_datetime"]) - _ms(r["timestamp"])) / MS_PER_YEAR for r in rows]),
        "currency": np.array([r["currency"] for r in rows]),
    }


def test_reproduces_deribit_mark_ivs(chain):
    f, k, t, c = chain["forward"], chain["strike"], chain["t_years"], chain["is_call"]
    vol, status = iv.implied_vol_coin_and_status(chain["mark_coin"], f, k, t, c)
    intrinsic_coin = np.where(c, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0)) / f
    time_value_coin = chain["mark_coin"] - intrinsic_coin
    informative = time_value_coin >= 0.0005
    assert informative.sum() > 1000, "most of the chain carries time value"
    # every informative option solves
    assert np.all(status[informative] == iv.OK), np.unique(status[informative], return_counts=True)
    err_pts = np.abs(vol[informative] - chain["mark_iv"][informative]) * 100.0  # vol points
    median, p99 = float(np.median(err_pts)), float(np.percentile(err_pts, 99))
    print(f"\nDeribit mark IV reproduction on {informative.sum()} options: "
          f"median {median:.4f} vol pts, p99 {p99:.4f}, max {err_pts.max():.4f}")
    assert median <= 0.02
    assert p99 <= 1.0
    for cur in ("BTC", "ETH"):  # both chains, not one carrying the other
        sel = informative & (chain["currency"] == cur)
        assert sel.sum() > 300
        assert np.median(np.abs(vol[sel] - chain["mark_iv"][sel])) * 100.0 <= 0.02


def test_whole_chain_gives_vols_or_reasons(chain):
    f, k, t, c = chain["forward"], chain["strike"], chain["t_years"], chain["is_call"]
    vol, status = iv.implied_vol_coin_and_status(chain["mark_coin"], f, k, t, c)
    assert np.all(np.isnan(vol) == (status != iv.OK))
    assert np.all((vol[status == iv.OK] > 0.05) & (vol[status == iv.OK] < 5.0))
    counts = {iv.STATUS_NAMES[s]: int(n) for s, n in zip(*np.unique(status, return_counts=True))}
    print(f"\nstatus over the whole snapshot: {counts}")
    # the ones without a vol are marks at (or under) intrinsic value, deep in the money
    no_vol = status != iv.OK
    intrinsic_coin = np.where(c, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0)) / f
    assert np.all(chain["mark_coin"][no_vol] - intrinsic_coin[no_vol] < 0.0005)
    assert np.all(np.isin(status[no_vol], (iv.BELOW_INTRINSIC, iv.LOW_INFORMATION)))
