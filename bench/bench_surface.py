"""Benchmark: today's per-slice mid fit vs the band-aware slice fit vs the calendar-free surface.

Prints one table (machine, date, command); asserts nothing. One run, side by side, on every
real Deribit chain in tests/data (the snapshot and tests/data/chains/*.csv.gz: BTC and ETH,
every expiry with ≥ svi.MIN_QUOTES two-sided OTM quotes):

  mid fit      svi.fit_svi per slice (prepare_slice weights 1/spread²): the flow's fit before issue #17
  band plain   svi.fit_svi_band(rescue=False) per slice: the band loss alone (before issue #17's
               share rescue, kept as a row so that before and after print side by side)
  band slice   svi.fit_svi_band per slice (no calendar floor), with its share and spline rescues:
               the flow's fit (svi.fit_slice)
  surface      operators.svi.fit_surface per underlying and snapshot (band-aware, calendar-free)

Columns: share of OTM two-sided quotes whose bid/ask IV band contains the fitted vol (all
slices, and the worst slice); excursion outside the band (vol pts) p95 and max over the
quotes outside; slices with butterfly arbitrage (g < 0 on an independent dense grid);
neighbouring expiries whose total variances cross (on the union of the pair's quoted k); median error of our
IV of Deribit's mark prices vs its mark IVs (the IV kernel, the same for every row);
ms per slice cold, warm (refit after a seeded 0.2 % variance perturbation, from the
method's own fit) and the p99 over cold and warm fits. The last rows time the slice fits on
seeded synthetic 100-strike slices (the speed goals are per 100-strike slice: ≤ 0.5 ms warm,
≤ 2 ms cold, tail ≤ 10 ms).

    .venv/bin/python bench/bench_surface.py [--synthetic 200]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from operators import svi as public  # noqa: E402
from operators.kernels import svi  # noqa: E402
from tests.helpers.data import CHAINS, SNAPSHOT  # noqa: E402
from tests.helpers.real_chains import (band_figures, butterfly_min_g, calendar_crossings,  # noqa: E402
                                       load_slices, mark_iv_errors_vol_pts, underlyings)

METHODS = ("mid fit", "band plain", "band slice", "surface")


def fit_group(method: str, group, prevs=None, bump=None):
    """Fits of one underlying's slices and ms per slice (list, one per slice)."""
    tv = [p.total_variance * (1.0 if bump is None else b) for (s, p), b in zip(group, bump or [None] * len(group))]
    prevs = prevs or [None] * len(group)
    if method == "surface":
        t0 = time.perf_counter()
        fits = public.fit_surface([s["t_years"] for s, _ in group], [p.k for _, p in group], tv,
                                  [p.weights for _, p in group], prevs,
                                  w_bids=[p.w_bid for _, p in group], w_asks=[p.w_ask for _, p in group])
        ms = (time.perf_counter() - t0) * 1e3 / len(group)
        return fits, [ms] * len(group)
    fits, ms = [], []
    for (s, p), w, prev in zip(group, tv, prevs):
        t0 = time.perf_counter()
        if method == "mid fit":
            f = svi.fit_svi(p.k, w, p.weights, prev, t_years=s["t_years"], w_bid=p.w_bid, w_ask=p.w_ask)
        else:
            f = svi.fit_svi_band(p.k, w, p.w_bid, p.w_ask, p.weights, prev, t_years=s["t_years"],
                                 rescue=method != "band plain")
        ms.append((time.perf_counter() - t0) * 1e3)
        fits.append(f)
    return fits, ms


def synthetic(n_slices: int, seed: int = 11):
    """Seeded 100-strike smiles with a band of 1–4 vol pts around a noisy mid."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_slices):
        t = rng.uniform(0.02, 1.0)
        p = svi.SviParams(rng.uniform(0.005, 0.05) * t, rng.uniform(0.05, 0.3) * t ** 0.5, rng.uniform(-0.6, 0.3),
                          rng.uniform(-0.1, 0.1), rng.uniform(0.05, 0.4))
        k = np.linspace(-0.6, 0.5, 100) * max(t, 0.05) ** 0.5 * 2
        vol = np.sqrt(np.maximum(svi.total_variance(p, k), 1e-6) / t) * (1 + 0.004 * rng.standard_normal(100))
        half = rng.uniform(0.005, 0.02, 100)
        out.append((t, k, vol * vol * t, 1.0 / (2 * half) ** 2, (vol - half) ** 2 * t, (vol + half) ** 2 * t))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", type=int, default=200, help="synthetic 100-strike slices to time")
    args = ap.parse_args(argv)
    svi.warm_up()
    paths = list(CHAINS) + [SNAPSHOT]
    groups = [g for path in paths for g in underlyings(path)]
    mark_err = np.concatenate([mark_iv_errors_vol_pts(s) for path in paths for s in load_slices(path)])
    rng = np.random.default_rng(7)
    bumps = [[1.0 + 0.002 * rng.standard_normal(p.k.size) for _, p in g] for g in groups]
    rows = []
    for method in METHODS:
        n_in = n_q = 0
        worst = (1.0, "")
        exc, ms_cold, ms_warm = [], [], []
        bfly = cal = n_slices = n_pairs = n_none = 0
        for g, bump in zip(groups, bumps):
            fits, ms = fit_group(method, g)
            ms_cold += ms
            _, msw = fit_group(method, g, prevs=fits, bump=bump)
            ms_warm += msw
            items = []
            for (s, p), f in zip(g, fits):
                if f is None:
                    n_none += 1
                    continue
                n_slices += 1
                inside, e = band_figures(f.params, p, s["t_years"])
                n_in += int(inside.sum())
                n_q += inside.size
                if inside.mean() < worst[0]:
                    worst = (float(inside.mean()), f"{s['name']} ({inside.size} q)")
                exc.append(e[~inside])
                bfly += butterfly_min_g(f.params, p) < 0.0
                items.append((s["t_years"], f.params, p.k))
            n_pairs += max(len(items) - 1, 0)
            cal += calendar_crossings(items)
        exc_all = np.concatenate(exc) if exc else np.zeros(0)
        all_ms = np.array(ms_cold + ms_warm)
        rows.append((method, f"{n_in / n_q:.2%}", f"{worst[0]:.1%}", worst[1],
                     f"{np.percentile(exc_all, 95):.2f}" if exc_all.size else "-",
                     f"{exc_all.max():.2f}" if exc_all.size else "-", f"{bfly}/{n_slices}", f"{cal}/{n_pairs}",
                     f"{np.median(mark_err):.4f}", f"{np.median(ms_warm):.2f}", f"{np.median(ms_cold):.2f}",
                     f"{np.percentile(all_ms, 99):.2f}", str(n_none)))
    # synthetic 100-strike slices: slice fits only (the surface fits real chains above)
    syn = synthetic(args.synthetic)
    syn_rows = []
    for method in ("mid fit", "band plain", "band slice"):
        cold, warm = [], []
        rescue = method == "band slice"
        for t, k, w, wt, wb, wa in syn:
            t0 = time.perf_counter()
            f = (svi.fit_svi(k, w, wt, t_years=t) if method == "mid fit"
                 else svi.fit_svi_band(k, w, wb, wa, wt, t_years=t, rescue=rescue))
            cold.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            w2 = w * (1.0 + 0.002 * rng.standard_normal(k.size))
            (svi.fit_svi(k, w2, wt, f, t_years=t) if method == "mid fit"
             else svi.fit_svi_band(k, w2, wb, wa, wt, f, t_years=t, rescue=rescue))
            warm.append((time.perf_counter() - t0) * 1e3)
        syn_rows.append((method, np.median(warm), np.median(cold), np.percentile(cold + warm, 99)))

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# bench_surface · {now} · {describe_machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"# data: {len(paths)} real Deribit chains, {sum(len(g) for g in groups)} slices "
          f"(≥ {svi.MIN_QUOTES} two-sided OTM quotes) in {len(groups)} underlying snapshots")
    head = ("method", "in band", "worst", "worst slice", "exc p95", "exc max", "butterfly", "calendar",
            "mark med", "ms warm", "ms cold", "ms p99", "None")
    widths = (10, 8, 6, 26, 7, 7, 9, 8, 8, 7, 7, 7, 4)
    print(" | ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))))
    for r in rows:
        print(" | ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print("# goals: in band ≥ 98.5 %, worst ≥ 80 %, exc p95 ≤ 0.40 vol pts, butterfly 0, calendar 0, "
          "mark med ≤ 0.01 vol pts")
    print(f"# synthetic {len(syn)} × 100-strike slices: ms per slice (goals warm ≤ 0.5, cold ≤ 2, p99 ≤ 10)")
    for m, w, c, p in syn_rows:
        print(f"{m:10s} | warm {w:6.2f} | cold {c:6.2f} | p99 {p:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
