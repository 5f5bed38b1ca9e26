"""SVI on real Deribit chains: all 24 expiry slices (BTC and ETH × 12) of the real snapshot in tests/data/.

Bid/ask coin prices → USD via the `underlying` column (the forward Deribit uses) → Black-76
IVs with operators.kernels.iv; T = (expiry − timestamp)/365 days. Every fit must be free of
butterfly arbitrage, and where a slice has ≥ 8 two-sided OTM quotes the fitted curve must
sit inside the bid–ask IV band at ≥ 90 % of them per slice and ≥ 97 % over all slices.
Run with -s for the per-slice table.
"""

from __future__ import annotations

import numpy as np
import pytest

from operators.kernels import analytics, calendar, svi
from tests.helpers.config import section
from tests.helpers.data import SNAPSHOT
from tests.helpers.real_chains import load_slices


@pytest.fixture(scope="module")
def slices():
    svi.warm_up()
    return load_slices(SNAPSHOT)


@pytest.fixture(scope="module")
def fits(slices):
    out = []
    for s in slices:
        prep = svi.prepare_slice(s["strikes"], s["forward"], s["t_years"], s["bid_iv"], s["ask_iv"], s["is_call"])
        fit = svi.fit_svi(prep.k, prep.total_variance, prep.weights, t_years=s["t_years"],
                          w_bid=prep.w_bid, w_ask=prep.w_ask)
        out.append((s, prep, fit))
    return out


def test_snapshot_has_24_slices(slices):
    assert len(slices) == 24
    assert sum(s["name"].startswith("BTC") for s in slices) == 12


def test_every_real_fit_is_arbitrage_free_and_inside_the_quotes(fits):
    print(f"\n{'slice':15s} {'T(d)':>6s} {'n':>4s} {'inside':>7s} {'rmse':>6s} {'min_g':>9s} {'rep':>4s} "
          f"{'atm':>6s} {'rr25':>7s} {'bf25':>6s} {'ms':>6s}  outside strikes")
    n_in_total = n_total = 0
    per_slice = []
    for s, prep, fit in fits:
        assert fit.butterfly_ok and fit.lee_ok, s["name"]
        k_check = np.concatenate([np.linspace(prep.k.min() - 1.0, prep.k.max() + 1.0, 20001),
                                  fit.params.m + fit.params.sigma * np.sinh(np.linspace(-8, 8, 4001))])
        assert svi.butterfly_g(fit.params, k_check).min() >= 0.0, s["name"]
        # recount the band independently of the fit's own report
        w_fit = svi.total_variance(fit.params, prep.k)
        inside = (w_fit >= prep.w_bid) & (w_fit <= prep.w_ask)
        assert fit.inside_band_frac == pytest.approx(inside.mean())
        assert fit.outside_idx == tuple(np.flatnonzero(~inside))
        a = analytics.smile_analytics(fit.params, s["t_years"])
        outside_k = [int(s["strikes"][prep.idx[i]]) for i in fit.outside_idx]
        print(f"{s['name']:15s} {s['t_years'] * 365:6.2f} {prep.k.size:4d} {inside.mean():7.1%} "
              f"{fit.rmse_vol_pts:6.2f} {fit.min_g:9.2e} {'yes' if fit.repaired else 'no':>4s} "
              f"{a['atm_vol'] * 100:6.2f} {a['rr25'] * 100:7.2f} {a['bf25'] * 100:6.2f} {fit.fit_ms:6.2f}  "
              f"{outside_k}")
        if prep.k.size >= 8:
            per_slice.append((s["name"], inside.mean()))
            n_in_total += int(inside.sum())
            n_total += prep.k.size
    overall = n_in_total / n_total
    print(f"overall inside the bid-ask band: {overall:.2%} of {n_total} quotes in {len(per_slice)} slices")
    worst = min(per_slice, key=lambda x: x[1])
    assert worst[1] >= 0.90, worst
    assert overall >= 0.97


def test_real_analytics_are_sane(fits):
    for s, prep, fit in fits:
        a = analytics.smile_analytics(fit.params, s["t_years"])
        mid_vol = np.sqrt(prep.total_variance / s["t_years"])
        # ATM vol sits between the quoted vols either side of the forward
        below, above = prep.k < 0, prep.k >= 0
        if below.any() and above.any():
            lo_v = min(mid_vol[below][-1], mid_vol[above][0])
            hi_v = max(mid_vol[below][-1], mid_vol[above][0])
            assert lo_v - 0.02 <= a["atm_vol"] <= hi_v + 0.02, s["name"]
        for key in ("rr25", "bf25", "rr10", "bf10"):
            assert np.isfinite(a[key]), (s["name"], key)
        assert a["bf10"] >= a["bf25"] > -0.005, s["name"]  # convex smiles


def test_warm_refit_on_real_slices_matches_cold(fits):
    rng = np.random.default_rng(7)
    for s, prep, fit in fits:
        w2 = prep.total_variance * (1.0 + 0.002 * rng.standard_normal(prep.k.size))
        warm = svi.fit_svi(prep.k, w2, prep.weights, prev=fit, t_years=s["t_years"])
        cold = svi.fit_svi(prep.k, w2, prep.weights, t_years=s["t_years"])
        assert warm.warm and warm.butterfly_ok
        assert warm.objective <= cold.objective * 1.01 + 1e-14, s["name"]


def test_real_surface_calendar_and_tenors(fits):
    for cur in ("BTC", "ETH"):
        items = [(s["t_years"], f.params) for s, _, f in fits if s["name"].startswith(cur)]
        k_grid = np.linspace(-0.3, 0.3, 61)  # where all of this snapshot's expiries are quoted
        checks = calendar.calendar_check(items, k_grid)
        assert len(checks) == 11
        kept, dropped = calendar.drop_calendar_violators(items, k_grid)
        assert all(c.ok for c in calendar.calendar_check(kept, k_grid))
        tenors = calendar.tenor_points(kept, tenors_days=section("surface").tenors_days, k_grid=k_grid)
        print(f"\n{cur}: calendar pairs ok {sum(c.ok for c in checks)}/11, dropped {dropped}; tenors "
              + ", ".join(f"{t.tenor_days}d atm {t.atm_vol * 100:.1f} rr25 {t.rr25 * 100:+.2f}" for t in tenors))
        for t in tenors:
            assert t.atm_vol is not None and 0.05 < t.atm_vol < 3.0
