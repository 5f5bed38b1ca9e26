"""The band ceiling: the largest share of each real slice's OTM two-sided quotes that ANY
butterfly-free smile can keep inside their bid/ask IV band — beside what our surface keeps.

Benchmark support only (reads tests/data through tests/helpers, solves MILPs with scipy);
never imports flows, connectors or operators.state, and nothing in the engine imports it.

What it computes, per slice (the quotes and forward the figures of bench/bench_surface.py and
tests/operators/kernels/test_surface_fit.py use: tests.helpers.real_chains.prepared, k = ln(K/F)
with F the slice's median forward, band [w_bid, w_ask] = [bid IV², ask IV²]·T):

  * In price space, undiscounted and in units of F: x = K/F, and each quote's band becomes
    [bid, ask] call prices c(x) = Black-76(F = 1, K = x, T, bid / ask IV); a put's Black price
    is turned into a call's by parity, c = p + (1 − x). Black's price is increasing in vol at
    fixed x, so "fitted vol in band" ⇔ "fitted call price in [bid price, ask price]".
  * A smile is free of butterfly arbitrage iff its call prices are a convex function of x with
    c(0) = 1 and slopes in [−1, 0] (so c ≥ (1 − x)⁺, c ≥ 0). On finitely many strikes that is
    exact for the piecewise-linear interpolant through the quoted x (and the point (0, 1)):
    any arbitrage-free curve's values there are such an interpolant's, and any such interpolant
    is (up to smoothing an arbitrarily small amount inside open bands) an arbitrage-free curve.
  * MILP (scipy.optimize.milp / HiGHS): one price variable per quoted x, one binary zᵢ per
    quote; maximise Σ zᵢ subject to convexity (each price at most the chord of its neighbours,
    starting from (0, 1)), first slope ≥ −1, last slope ≤ 0, c ≥ 0, and zᵢ = 1 ⇒ bidᵢ ≤ cᵢ ≤
    askᵢ (big-M with each quote's own bounds: c ∈ [(1 − x)⁺, 1]). Prices are scaled by 1e4
    (≈ one Deribit tick = 1). Each slice is solved twice (see PRICE_INSET): "ceiling" is an
    achievable count, re-checked in vol space by the figures' own test (w in [w_bid, w_ask],
    tolerance 0); "upper" is the MILP's bound on the bands as quoted. Where both agree the
    ceiling is exact.
  * --calendar adds, per chain and currency, one joint MILP over all its slices (sorted by T):
    every slice gets a price variable at every quoted x of that underlying (the union grid),
    and neighbouring expiries must not cross, c_longer ≥ c_shorter (⇔ w_longer ≥ w_shorter at
    the same k), at every grid x inside the pair's union quoted range — exactly the figures'
    calendar check, since both interpolants are linear between grid points. The solver's dual
    bound is an upper bound on any calendar-free butterfly-free surface; its incumbent is
    achievable.

Prints one table: per chain (snapshot file, BTC and ETH together) and overall: slices, quotes,
ceiling and upper share in band, each one's worst slice, our surface's (operators.svi.fit_surface,
cold) share and worst slice, and with --calendar the calendar-free ceiling (achievable / upper /
worst slice); then the slices whose ceiling is below 80 % or not proven exact.

Measured 2026-12-06 04:34 UTC on the 291 slices (8,687 quotes) of tests/data's 12 chains
(`nice -n 10 .venv/bin/python bench/band_ceiling.py --calendar`, 19 s): ceiling 99.98 %, upper
100.00 %, worst slice 95.5 % (BTC 26JUN26 on 2026-02-12: 42 of 44 achievable, ≤ 44) — the same
with calendar-free neighbours; every other slice 100 %. Our surface: 97.15 %, worst 59.1 %.

    nice -n 10 .venv/bin/python bench/band_ceiling.py [--calendar] [--chains N] [--time-limit S]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from operators import svi as public  # noqa: E402
from operators.kernels import svi  # noqa: E402
from operators.kernels import iv  # noqa: E402
from operators.kernels.black import black_price  # noqa: E402
from tests.helpers.data import CHAINS, SNAPSHOT  # noqa: E402
from tests.helpers.real_chains import band_figures, underlyings  # noqa: E402

PRICE_SCALE = 1.0e4  # prices in units of 1e-4·F (≈ one Deribit tick) inside the MILP
# HiGHS accepts z = 1 − 1e-6 as integral, and with big-M ≈ 1e4 scaled units that lets a
# "z = 1" quote sit ~1e-6·F outside its band (seen: BTC 2026-06-26 @20260212 counted 44 of 44,
# only 41 by the exact test). So each slice is solved twice: with every band narrowed by
# PRICE_INSET (1 % of a Deribit tick) on each side — its solution, polished by an LP with the
# chosen quotes' bands as exact variable bounds, is re-checked in vol space with tolerance 0:
# an ACHIEVABLE count ("ceiling") — and with the bands as quoted, whose MILP dual bound is an
# UPPER bound (up to that same 1e-6·F). Where both agree the ceiling is exact.
PRICE_INSET = 1.0e-6


def price_band(p: svi.SliceInputs, t_years: float, inset: float = 0.0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = K/F and the bid / ask call prices (units of F) of a prepared slice's quotes: puts
    (x < 1, as prepare_slice keeps them) priced as puts and turned into calls by parity; each
    band narrowed by `inset` on both sides (a band narrower than 2·inset becomes empty)."""
    x = np.exp(p.k)
    put = x < 1.0
    vol_bid, vol_ask = np.sqrt(p.w_bid / t_years), np.sqrt(p.w_ask / t_years)
    parity = np.where(put, 1.0 - x, 0.0)
    c_bid = black_price(1.0, x, t_years, vol_bid, ~put) + parity + inset
    c_ask = black_price(1.0, x, t_years, vol_ask, ~put) + parity - inset
    return x, c_bid, c_ask


def _curve_rows(rows, cols, vals, lb, ub, off: int, x: np.ndarray, r0: int) -> int:
    """Append the no-arbitrage rows of one curve (price variables off … off+n−1 at sorted grid
    x, scaled by PRICE_SCALE) to the COO lists; returns the next row index."""
    n = x.size
    r = r0
    S = PRICE_SCALE
    # convexity, each row in interpolation form c_j ≤ (h_b·c_{j−1} + h_a·c_{j+1})/(h_a + h_b)
    # (coefficients ≤ 1: on an underlying's union grid, strikes over slightly different
    # forwards sit 1e-6 apart and the slope form's 1/h made HiGHS fail); first with (0, 1)
    if n >= 2:
        x0, h0 = x[0], x[1] - x[0]
        rows += [r, r]
        cols += [off, off + 1]
        vals += [1.0, -x0 / (x0 + h0)]
        lb.append(-np.inf)
        ub.append(S * h0 / (x0 + h0))
        r += 1
    for j in range(1, n - 1):
        ha, hb = x[j] - x[j - 1], x[j + 1] - x[j]
        rows += [r, r, r]
        cols += [off + j - 1, off + j, off + j + 1]
        vals += [-hb / (ha + hb), 1.0, -ha / (ha + hb)]
        lb.append(-np.inf)
        ub.append(0.0)
        r += 1
    if n >= 2:  # last slope ≤ 0
        rows += [r, r]
        cols += [off + n - 1, off + n - 2]
        vals += [1.0, -1.0]
        lb.append(-np.inf)
        ub.append(0.0)
        r += 1
    return r


def _band_rows(rows, cols, vals, lb, ub, var: np.ndarray, zvar: np.ndarray, lo: np.ndarray, hi: np.ndarray,
               c_bid: np.ndarray, c_ask: np.ndarray, r0: int) -> int:
    """zᵢ = 1 ⇒ bidᵢ ≤ c ≤ askᵢ, as c − (bid − lo)z ≥ lo and c + (hi − ask)z ≤ hi (scaled)."""
    r = r0
    S = PRICE_SCALE
    for v, z, l, h, b, a in zip(var, zvar, lo, hi, c_bid, c_ask):
        rows += [r, r, r + 1, r + 1]
        cols += [int(v), int(z), int(v), int(z)]
        vals += [1.0, -(b - l) * S, 1.0, (h - a) * S]
        lb += [l * S, -np.inf]
        ub += [np.inf, h * S]
        r += 2
    return r


@contextlib.contextmanager
def _quiet_stdout():
    """HiGHS (scipy 1.17) prints a debug line ("HighsMipSolverData::transformNewInteger…") to
    the C-level stdout now and then; keep it out of the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve(n_var: int, zvars: np.ndarray, pvars: np.ndarray, c_bid: np.ndarray, c_ask: np.ndarray, lo_var, hi_var,
           rows, cols, vals, lb, ub, r_curve: int, time_limit: float):
    """The MILP, then a polish: with the in-band set it chose fixed, the plain LP with those
    quotes' bands as variable bounds (the MILP's big-M rows let z = 1 − 1e-6 leave a quote
    ~1e-6·F outside; simplex meets variable bounds exactly). Returns (prices (scaled), MILP
    count, dual bound, proven optimal)."""
    c = np.zeros(n_var)
    c[zvars] = -1.0
    integ = np.zeros(n_var)
    integ[zvars] = 1
    A = coo_matrix((vals, (rows, cols)), shape=(len(lb), n_var)).tocsr()
    with _quiet_stdout():
        res = milp(c, integrality=integ, bounds=Bounds(lo_var, hi_var), constraints=LinearConstraint(A, lb, ub),
                   options={"time_limit": time_limit, "mip_rel_gap": 0.0})
    if res.x is None:
        raise RuntimeError(f"band ceiling MILP: {res.message}")
    bound = -getattr(res, "mip_dual_bound", res.fun)
    n_p = int(zvars.min())
    inb = res.x[zvars] > 0.5
    lo_p, hi_p = np.array(lo_var[:n_p], float), np.array(hi_var[:n_p], float)
    np.maximum.at(lo_p, pvars[inb], c_bid[inb] * PRICE_SCALE)
    np.minimum.at(hi_p, pvars[inb], c_ask[inb] * PRICE_SCALE)
    prices = res.x[:n_p]
    if r_curve and np.all(lo_p <= hi_p):
        lp = milp(np.zeros(n_p), bounds=Bounds(lo_p, hi_p),
                  constraints=LinearConstraint(A[:r_curve, :n_p], lb[:r_curve], ub[:r_curve]))
        if lp.x is not None:
            prices = lp.x
    return prices, int(round(-res.fun)), float(bound), res.status == 0


def slice_ceiling(p: svi.SliceInputs, t_years: float, time_limit: float = 60.0, inset: float = PRICE_INSET) -> dict:
    """The most of this slice's quotes any butterfly-free smile keeps in band: n quotes, best
    (MILP count), bound (its dual bound), proven, verified (the polished curve's count by the
    figures' exact test). inset > 0: an achievable count; inset = 0: bound is an upper bound."""
    x, c_bid, c_ask = price_band(p, t_years, inset)
    grid, at = np.unique(x, return_inverse=True)
    n, q = grid.size, x.size
    lo_g, hi_g = np.maximum(1.0 - grid, 0.0), np.ones(n)
    rows, cols, vals, lb, ub = [], [], [], [], []
    r = _curve_rows(rows, cols, vals, lb, ub, 0, grid, 0)
    zv = n + np.arange(q)
    _band_rows(rows, cols, vals, lb, ub, at, zv, lo_g[at], hi_g[at], c_bid, c_ask, r)
    sol, best, bound, proven = _solve(n + q, zv, at, c_bid, c_ask, np.concatenate([lo_g * PRICE_SCALE, np.zeros(q)]),
                                      np.concatenate([hi_g * PRICE_SCALE, np.ones(q)]), rows, cols, vals, lb, ub,
                                      r, time_limit)
    c = sol[:n][at] / PRICE_SCALE
    return dict(n=q, best=best, bound=bound, proven=proven, verified=_verified(c, x, p, t_years))


def _verified(c: np.ndarray, x: np.ndarray, p: svi.SliceInputs, t_years: float) -> int:
    """Quotes in band by the figures' own test: the curve's price → implied total variance →
    w_bid ≤ w ≤ w_ask, exactly."""
    # price of the OTM option the quote is, by parity back from the call price
    otm = np.where(x < 1.0, c - (1.0 - x), c)
    vol = iv.implied_vol(otm, np.ones_like(x), x, t_years, x >= 1.0)
    w = vol * vol * t_years
    return int(np.sum((w >= p.w_bid) & (w <= p.w_ask)))


def group_ceiling(group: list[tuple[dict, svi.SliceInputs]], time_limit: float, inset: float = PRICE_INSET) -> dict:
    """One joint MILP over an underlying's slices (T ascending): butterfly-free each, and no
    neighbouring pair crossing on the union of its quoted k. Returns the incumbent per slice,
    the total and the dual bound on the total."""
    xs = [price_band(p, s["t_years"], inset) for s, p in group]
    grid = np.unique(np.concatenate([x for x, _, _ in xs]))
    n, ns = grid.size, len(group)
    lo_g, hi_g = np.maximum(1.0 - grid, 0.0), np.ones(n)
    rows, cols, vals, lb, ub = [], [], [], [], []
    r = 0
    for i in range(ns):
        r = _curve_rows(rows, cols, vals, lb, ub, i * n, grid, r)
    for i in range(ns - 1):  # calendar: c_{i+1} ≥ c_i on the pair's union quoted range
        lo_k = min(xs[i][0].min(), xs[i + 1][0].min())
        hi_k = max(xs[i][0].max(), xs[i + 1][0].max())
        for j in np.flatnonzero((grid >= lo_k) & (grid <= hi_k)):
            rows += [r, r]
            cols += [(i + 1) * n + j, i * n + j]
            vals += [1.0, -1.0]
            lb.append(0.0)
            ub.append(np.inf)
            r += 1
    nz = 0
    zsl = []
    r_curve = r
    for i, (x, cb, ca) in enumerate(xs):
        at = np.searchsorted(grid, x)
        zv = ns * n + nz + np.arange(x.size)
        zsl.append((zv, at))
        r = _band_rows(rows, cols, vals, lb, ub, i * n + at, zv, lo_g[at], hi_g[at], cb, ca, r)
        nz += x.size
    lo_v = np.concatenate([np.tile(lo_g * PRICE_SCALE, ns), np.zeros(nz)])
    hi_v = np.concatenate([np.tile(hi_g * PRICE_SCALE, ns), np.ones(nz)])
    pv = np.concatenate([i * n + at for i, (_, at) in enumerate(zsl)])
    sol, best, bound, proven = _solve(ns * n + nz, ns * n + np.arange(nz), pv, np.concatenate([x[1] for x in xs]),
                                      np.concatenate([x[2] for x in xs]), lo_v, hi_v, rows, cols, vals, lb, ub,
                                      r_curve, time_limit)
    per = []
    for i, ((s, p), (zv, at)) in enumerate(zip(group, zsl)):
        c = sol[i * n + at] / PRICE_SCALE
        per.append(_verified(c, xs[i][0], p, s["t_years"]))
    return dict(best=best, bound=bound, proven=proven, per_slice=per)


def surface_inside(group) -> list[int]:
    """Quotes in band per slice for operators.svi.fit_surface (cold), as the figures count them."""
    fits = public.fit_surface([s["t_years"] for s, _ in group], [p.k for _, p in group],
                              [p.total_variance for _, p in group], [p.weights for _, p in group],
                              w_bids=[p.w_bid for _, p in group], w_asks=[p.w_ask for _, p in group])
    return [int(band_figures(f.params, p, s["t_years"])[0].sum()) for (s, p), f in zip(group, fits)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calendar", action="store_true", help="also the joint calendar-free ceiling per underlying")
    ap.add_argument("--chains", type=int, default=0, help="only the first N chain files (0: all 12)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per MILP")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    svi.warm_up()
    paths = list(CHAINS) + [SNAPSHOT]
    if args.chains:
        paths = paths[:args.chains]
    keys = ("ceil", "upper", "surf", "cal", "cal_upper")
    table, low = [], []
    tot = dict(q=0, slices=0, **{k: 0.0 for k in keys})
    worst_all = {k: (2.0, "") for k in ("ceil", "upper", "surf", "cal")}
    unproven = 0
    for path in paths:
        row = dict(q=0, slices=0, **{k: 0.0 for k in keys})
        worst = {k: (2.0, "") for k in ("ceil", "upper", "surf", "cal")}
        for group in underlyings(path):
            surf = surface_inside(group)
            cal = group_ceiling(group, args.time_limit) if args.calendar else None
            if cal is not None:
                cal_up = group_ceiling(group, args.time_limit, inset=0.0)
                row["cal"] += sum(cal["per_slice"])
                row["cal_upper"] += math.floor(cal_up["bound"] + 1e-6)
                unproven += (not cal["proven"]) + (not cal_up["proven"])
            for i, ((s, p), n_surf) in enumerate(zip(group, surf)):
                c = slice_ceiling(p, s["t_years"], args.time_limit)
                u = slice_ceiling(p, s["t_years"], args.time_limit, inset=0.0)
                unproven += (not c["proven"]) + (not u["proven"])
                upper = math.floor(u["bound"] + 1e-6)
                name = f"{s['name']} @{path.name[25:41]}"
                n = c["n"]
                row["q"] += n
                row["slices"] += 1
                row["ceil"] += c["verified"]
                row["upper"] += upper
                row["surf"] += n_surf
                worst["ceil"] = min(worst["ceil"], (c["verified"] / n, name))
                worst["upper"] = min(worst["upper"], (upper / n, name))
                worst["surf"] = min(worst["surf"], (n_surf / n, name))
                if cal is not None:
                    worst["cal"] = min(worst["cal"], (cal["per_slice"][i] / n, name))
                if c["verified"] < 0.8 * n or c["verified"] != upper:
                    low.append((c["verified"] / n, name, n, c["verified"], upper, n_surf))
        table.append((path.name[25:41], row, worst))
        for key in row:
            tot[key] += row[key]
        for key in worst_all:
            worst_all[key] = min(worst_all[key], worst[key])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# band_ceiling · {now} · {describe_machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"# {tot['slices']} slices, {tot['q']} OTM two-sided quotes. ceiling: most quotes in band any "
          "butterfly-free smile keeps (MILP per slice, achievable: re-checked exactly); upper: the MILP bound "
          "on the bands as quoted; surface: operators.svi.fit_surface (cold)"
          + ("; cal: one joint calendar-free MILP per underlying (achievable / upper)" if args.calendar else ""))
    cal_head = " | cal ceil | cal upper | cal worst" if args.calendar else ""
    print(f"{'chain':16s} | slices | quotes | ceiling |   upper | ceil worst | upper worst | surface | surf worst"
          f"{cal_head}")

    def line(name, row, worst):
        q = row["q"]
        s = (f"{name:16s} | {row['slices']:6d} | {q:6d} | {row['ceil'] / q:7.2%} | {row['upper'] / q:7.2%} | "
             f"{worst['ceil'][0]:10.1%} | {worst['upper'][0]:11.1%} | {row['surf'] / q:7.2%} | "
             f"{worst['surf'][0]:10.1%}")
        if args.calendar:
            s += f" | {row['cal'] / q:8.2%} | {row['cal_upper'] / q:9.2%} | {worst['cal'][0]:9.1%}"
        print(s)

    for name, row, worst in table:
        line(name, row, worst)
    line("all", tot, worst_all)
    print(f"# worst slice: ceiling {worst_all['ceil'][1]}; surface {worst_all['surf'][1]}"
          + (f"; calendar ceiling {worst_all['cal'][1]}" if args.calendar else ""))
    print(f"# MILPs stopped by the time limit ({args.time_limit:.0f} s): {unproven}")
    print("# slices whose ceiling is below 80 % or not proven exact (share, slice, quotes, ceiling, upper, surface):")
    for share, name, n, ver, up, surf in sorted(low):
        print(f"#   {share:6.1%}  {name:32s} {n:4d} q  ceiling {ver:4d}  upper {up:4d}  surface {surf:4d}")
    print(f"# {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
