"""bench/band_ceiling.py: the MILP ceiling of the share in band any butterfly-free smile keeps.
Fast: synthetic slices with a known answer, and one real chain (the first of tests/data/chains)
where the ceiling must bound every arbitrage-free fit from above. Never asserts timings."""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import band_ceiling  # noqa: E402
from operators.kernels import svi  # noqa: E402
from tests.helpers.data import CHAINS  # noqa: E402
from tests.helpers.real_chains import band_figures  # noqa: E402

T = 0.25


def slice_from_vols(k, vol_bid, vol_ask) -> svi.SliceInputs:
    k = np.asarray(k, float)
    mid = 0.5 * (vol_bid + vol_ask)
    return svi.SliceInputs(idx=np.arange(k.size), k=k, total_variance=mid * mid * T, weights=np.ones(k.size),
                           w_bid=vol_bid ** 2 * T, w_ask=vol_ask ** 2 * T)


def test_bands_around_an_arbitrage_free_smile_are_all_kept():
    p = svi.SviParams(0.01, 0.1, -0.3, 0.02, 0.2)
    k = np.linspace(-0.6, 0.5, 30)
    vol = np.sqrt(svi.total_variance(p, k) / T)
    c = band_ceiling.slice_ceiling(slice_from_vols(k, vol - 0.005, vol + 0.005), T)
    assert c["n"] == 30 and c["verified"] == 30 and c["best"] == 30 and c["proven"]


def test_a_quote_that_breaks_convexity_is_given_up():
    """One call quoted far above what convexity between its neighbours allows (a tight band
    at +30 vol pts in a flat 50 % smile): the ceiling keeps every quote but that one."""
    k = np.linspace(-0.3, 0.3, 13)
    vol = np.full(k.size, 0.5)
    vol[6] = 0.8
    c = band_ceiling.slice_ceiling(slice_from_vols(k, vol - 0.002, vol + 0.002), T)
    up = band_ceiling.slice_ceiling(slice_from_vols(k, vol - 0.002, vol + 0.002), T, inset=0.0)
    assert c["verified"] == 12 and int(up["bound"] + 1e-6) == 12


def test_on_a_real_chain_the_ceiling_bounds_every_butterfly_free_fit():
    """The band fit is butterfly-free, so its prices are a point of the MILP: the upper bound is
    ≥ its count on every slice, and the achievable ceiling is re-checked by the figures' test."""
    groups = band_ceiling.underlyings(CHAINS[0])
    assert groups
    for group in groups:
        for s, p in group[:6]:
            fit = svi.fit_svi_band(p.k, p.total_variance, p.w_bid, p.w_ask, p.weights, t_years=s["t_years"])
            n_fit = int(band_figures(fit.params, p, s["t_years"])[0].sum())
            up = band_ceiling.slice_ceiling(p, s["t_years"], inset=0.0)
            c = band_ceiling.slice_ceiling(p, s["t_years"])
            assert up["proven"] and up["bound"] + 1e-6 >= n_fit, s["name"]
            assert c["verified"] <= up["bound"] + 1e-6, s["name"]
        cal = band_ceiling.group_ceiling(group[:4], 30.0)
        assert len(cal["per_slice"]) == 4 and sum(cal["per_slice"]) <= cal["bound"] + 1e-6


def test_main_prints_the_table(capsys):
    assert band_ceiling.main(["--chains", "1"]) == 0
    out = capsys.readouterr().out
    assert "# command:" in out and "ceiling" in out and "\nall " in out
