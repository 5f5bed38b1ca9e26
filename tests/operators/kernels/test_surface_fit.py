"""operators.svi.fit_surface (operators/kernels/surface.py): one butterfly-free SVI fit per
expiry, no two neighbours in T crossing, in input order; and the goals of issue #17 on every
real Deribit chain in tests/data (the snapshot and tests/data/chains/*.csv.gz).

Run with -s for the figures. bench/bench_surface.py prints the same figures beside today's
per-slice mid fit, with timings.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from operators import svi as public
from operators.kernels import svi
from operators.kernels.svi import SviParams
from tests.helpers.data import CHAINS, SNAPSHOT
from tests.helpers.real_chains import (band_figures, butterfly_min_g, calendar_crossings, load_slices,
                                       mark_iv_errors_vol_pts, prepared)

params_st = st.builds(SviParams, a=st.floats(-0.02, 0.1), b=st.floats(0.01, 0.6), rho=st.floats(-0.9, 0.9),
                      m=st.floats(-0.2, 0.2), sigma=st.floats(0.02, 0.6))


def dense_g_min(p: SviParams, k: np.ndarray) -> float:
    """min g on an independent grid: the quoted range ± 1 and m ± σ·sinh(±8)."""
    grid = np.concatenate([np.linspace(k.min() - 1.0, k.max() + 1.0, 8001),
                           p.m + p.sigma * np.sinh(np.linspace(-8, 8, 2001))])
    return float(svi.butterfly_g(p, grid).min())


@st.composite
def noisy_surfaces(draw):
    """2–6 expiries in random order: random smiles (not necessarily calendar-consistent, so
    the fit must arbitrate), multiplicative noise, bands around the noisy mids."""
    n = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    ts = rng.uniform(0.003, 1.5, n)
    slices = []
    for t in ts:
        p = draw(params_st)
        m = int(rng.integers(6, 40))
        k = np.sort(rng.uniform(-0.7, 0.7, m)) * math.sqrt(t) * 1.5
        w = svi.total_variance(p, k) * (1.0 + 0.02 * rng.standard_normal(m))
        w = np.where(w > 0, w, np.nan)  # unusable quotes stay in: fit_surface must drop them
        half = np.abs(w) * rng.uniform(0.005, 0.05, m)
        slices.append((t, k, w, 1.0 / rng.uniform(0.005, 0.05, m) ** 2, w - half, w + half))
    return slices


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noisy_surfaces())
def test_surface_is_butterfly_and_calendar_free_in_input_order(slices):
    t, k, w, wt, wb, wa = (list(x) for x in zip(*slices))
    fits = public.fit_surface(t, k, w, wt, w_bids=wb, w_asks=wa)
    assert len(fits) == len(slices)
    for i, f in enumerate(fits):
        if np.sum(np.isfinite(w[i]) & (w[i] > 0)) < 3:
            assert f is None
            continue
        assert f is not None and f.t_years == t[i]  # input order, not T order
        assert f.butterfly_ok and dense_g_min(f.params, k[i]) >= 0.0
    # neighbours in T: the longer one's total variance is ≥ on the union of their quotes
    done = sorted((t[i], f.params, k[i]) for i, f in enumerate(fits) if f is not None)
    for (t1, p1, k1), (t2, p2, k2) in zip(done, done[1:]):
        grid = np.linspace(min(k1.min(), k2.min()), max(k1.max(), k2.max()), 20001)
        diff = svi.total_variance(p2, grid) - svi.total_variance(p1, grid)
        assert diff.min() >= -1e-12, (t1, t2, diff.min(), grid[np.argmin(diff)])
    assert calendar_crossings(done) == 0


def test_unfittable_slices_are_none_and_the_rest_still_fitted():
    p = SviParams(0.01, 0.1, -0.3, 0.0, 0.2)
    k = np.linspace(-0.4, 0.4, 15)
    good = [svi.total_variance(p, k) * s for s in (0.5, 1.0, 1.5)]
    t = [0.25, -1.0, 0.5, float("nan"), 0.75, 0.9, 1.0]
    ks = [k, k, k, k, k, k[:2], "garbage"]
    ws = [good[0], good[0], good[1], good[1], good[2], good[2][:2], "garbage"]
    fits = public.fit_surface(t, ks, ws)
    assert [f is not None for f in fits] == [True, False, True, False, True, False, False]
    assert [f.t_years for f in fits if f is not None] == [0.25, 0.5, 0.75]
    # a shape mismatch inside one slice, and an unusable warm start, are per-slice matters
    fits = public.fit_surface([0.25, 0.5], [k, k], [good[0], good[1][:5]], prev=[object(), None])
    assert fits[0] is not None and fits[1] is None
    assert public.fit_surface([], [], []) == []


def test_bad_arguments_raise_a_value_error_naming_them():
    k = np.linspace(-0.4, 0.4, 15)
    w = np.full(15, 0.04)
    with pytest.raises(ValueError, match="ks has 1 entries for 2 slices"):
        public.fit_surface([0.1, 0.2], [k], [w, w])
    with pytest.raises(ValueError, match="total_variances"):
        public.fit_surface([0.1, 0.2], [k, k], w)
    with pytest.raises(ValueError, match="weights"):
        public.fit_surface([0.1, 0.2], [k, k], [w, w], weights=[None])
    with pytest.raises(ValueError, match="prev"):
        public.fit_surface([0.1, 0.2], [k, k], [w, w], prev=3)
    with pytest.raises(ValueError, match="t_years"):
        public.fit_surface(0.1, [k], [w])
    with pytest.raises(ValueError, match="w_bids"):
        public.fit_surface([0.1], [k], [w], w_bids=[w, w])


def test_warm_refit_matches_cold():
    rng = np.random.default_rng(3)
    p = SviParams(0.005, 0.08, -0.3, 0.02, 0.2)
    t = [0.1, 0.3, 0.6]
    k = [np.linspace(-0.3, 0.3, 25) * math.sqrt(x) * 2 for x in t]
    w = [svi.total_variance(p, kk) * x / 0.3 for kk, x in zip(k, t)]
    cold = public.fit_surface(t, k, w)
    w2 = [x * (1 + 0.002 * rng.standard_normal(x.size)) for x in w]
    warm = public.fit_surface(t, k, w2, prev=cold)
    ref = public.fit_surface(t, k, w2)
    for a, b in zip(warm, ref):
        assert a.warm and not b.warm
        assert a.objective <= b.objective * 1.01 + 1e-14


# ------------------------------------------------------------------ the real chains


@pytest.fixture(scope="module")
def real():
    """Per chain and currency: the slices with ≥ MIN_QUOTES two-sided OTM quotes, by T,
    with today's mid fit (fit_svi as the flow calls it) and the surface fit."""
    svi.warm_up()
    groups, mark_err = [], []
    for path in list(CHAINS) + [SNAPSHOT]:
        slices = load_slices(path)
        mark_err.append(mark_iv_errors_vol_pts_all(slices))
        for cur in sorted({s["currency"] for s in slices}):
            g = sorted(((s, prepared(s)) for s in slices if s["currency"] == cur), key=lambda x: x[0]["t_years"])
            g = [(s, p) for s, p in g if p.k.size >= svi.MIN_QUOTES]
            mid = [svi.fit_svi(p.k, p.total_variance, p.weights, t_years=s["t_years"], w_bid=p.w_bid, w_ask=p.w_ask)
                   for s, p in g]
            surf = public.fit_surface([s["t_years"] for s, _ in g], [p.k for _, p in g],
                                      [p.total_variance for _, p in g], [p.weights for _, p in g],
                                      w_bids=[p.w_bid for _, p in g], w_asks=[p.w_ask for _, p in g])
            groups.append((path.name, cur, g, mid, surf))
    return groups, np.concatenate(mark_err)


def mark_iv_errors_vol_pts_all(slices) -> np.ndarray:
    return np.concatenate([mark_iv_errors_vol_pts(s) for s in slices])


def figures(groups, which: int) -> dict:
    n_in = n_q = bfly = cal = n_pairs = n_slices = 0
    per_slice, exc = [], []
    for _, _, g, *fits in groups:
        items = []
        for (s, p), f in zip(g, fits[which]):
            assert f is not None, s["name"]
            inside, e = band_figures(f.params, p, s["t_years"])
            n_in += int(inside.sum())
            n_q += inside.size
            per_slice.append((float(inside.mean()), s["name"]))
            exc.append(e[~inside])
            bfly += butterfly_min_g(f.params, p) < 0.0
            items.append((s["t_years"], f.params, p.k))
            n_slices += 1
        cal += calendar_crossings(items)
        n_pairs += len(items) - 1
    e = np.concatenate(exc)
    return dict(in_band=n_in / n_q, worst=min(per_slice), exc_p95=float(np.percentile(e, 95)),
                exc_max=float(e.max()), butterfly=bfly, calendar=cal, pairs=n_pairs, slices=n_slices)


def test_every_real_chain_is_read(real):
    groups, mark_err = real
    assert len(CHAINS) == 11
    assert len(groups) == 24  # BTC and ETH in each of the 12 snapshots
    assert sum(len(g) for _, _, g, _, _ in groups) > 280


def test_real_surface_is_arbitrage_free_and_hugs_the_band(real):
    groups, mark_err = real
    mid, surf = figures(groups, 0), figures(groups, 1)
    print(f"\nmid fit: {mid}\nsurface: {surf}\nmark IV median {np.median(mark_err):.4f} vol pts")
    assert surf["butterfly"] == 0
    assert surf["calendar"] == 0 and surf["pairs"] > 250
    assert surf["exc_p95"] <= 0.40  # goal: band excursion p95 ≤ 0.4 vol pts
    assert np.median(mark_err) <= 0.01  # goal: Deribit mark IVs reproduced to ≤ 0.01 vol pts
    # against today's mid fit on the same quotes: the excursions shrink, the share in band
    # stays within 0.5 pt (the calendar bounds cost share where neighbours disagree)
    assert mid["calendar"] > 0  # today's fit does cross: the constraint is doing work
    assert surf["exc_p95"] < 0.5 * mid["exc_p95"]
    assert surf["exc_max"] < mid["exc_max"]
    assert surf["in_band"] >= mid["in_band"] - 0.005
    # no slice is given up to a copy of a neighbour (pinched between neighbours 2e-5 apart,
    # two slices once were: 0 % in band)
    assert surf["worst"][0] >= mid["worst"][0]


def test_real_surface_meets_the_in_band_share_goals(real):
    """Issue #17's goals: ≥ 98.5 % of quotes in band, every slice ≥ 80 %. Raw SVI alone stopped at
    97.2 % / 59 % (its straight wings); the spline rescue (svi.py SPLINE_BELOW) reaches them."""
    groups, _ = real
    surf = figures(groups, 1)
    assert surf["in_band"] >= 0.985
    assert surf["worst"][0] >= 0.80


def test_unchanged_slices_keep_their_fit_while_it_stays_calendar_free():
    """unchanged=True keeps prev (no refit) where it still lies between its neighbours, and
    refits where a neighbour moved across it."""
    p = SviParams(0.005, 0.08, -0.3, 0.02, 0.2)
    t = [0.1, 0.3, 0.6]
    k = [np.linspace(-0.3, 0.3, 25) * math.sqrt(x) * 2 for x in t]
    w = [svi.total_variance(p, kk) * x / 0.3 for kk, x in zip(k, t)]
    first = public.fit_surface(t, k, w)
    again = public.fit_surface(t, k, w, prev=first, unchanged=[True, True, True])
    assert [a.params for a in again] == [f.params for f in first]
    # the longest expiry's quotes drop below the middle one's: the middle one must move
    w2 = [w[0], w[1], w[1] * 0.9]
    moved = public.fit_surface(t, k, w2, prev=first, unchanged=[True, True, False])
    assert moved[0].params == first[0].params
    assert moved[1].params != first[1].params
    done = [(x, f.params, kk) for x, f, kk in zip(t, moved, k)]
    assert calendar_crossings(done) == 0


@settings(max_examples=40, deadline=None)
@given(params_st, st.floats(2e-6, 1e-4), st.floats(0.05, 0.5), st.integers(0, 2**31 - 1))
def test_a_slice_pinched_between_close_neighbours_stays_between_them_and_in_its_band(p, gap, steeper, seed):
    """The ceiling is the floor made `steeper` (b × (1 + steeper)) and lowered until the two
    are `gap` apart at their closest k; the middle slice is quoted halfway between with bands
    as wide as the room. Its fit lies between both on the dense grid and keeps its quotes in
    band: it is not given up to a copy of a neighbour."""
    rng = np.random.default_rng(seed)
    k = np.sort(rng.uniform(-0.4, 0.4, 30))
    grid = np.linspace(-1.5, 1.5, 3001)
    assume(svi.butterfly_g(p, grid).min() > 0 and svi.total_variance(p, grid).min() > 1e-3)
    up = p._replace(b=p.b * (1 + steeper))
    ceiling = up._replace(a=up.a - float(np.min(svi.total_variance(up, grid) - svi.total_variance(p, grid))) + gap)
    assume(svi.butterfly_g(ceiling, grid).min() > 0)
    lo, hi = svi.total_variance(p, k), svi.total_variance(ceiling, k)
    w = 0.5 * (lo + hi)
    half = 0.45 * (hi - lo)
    fit = svi.fit_svi_band(k, w, w - half, w + half, None, None, t_years=0.3, floor=p, ceiling=ceiling,
                           calendar_k=grid)
    assert fit.butterfly_ok
    assert svi.within_calendar_bounds(fit.params, p, ceiling, grid)
    wf = svi.total_variance(fit.params, k)
    assert np.mean((wf >= w - half) & (wf <= w + half)) >= 0.8
