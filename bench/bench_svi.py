"""Benchmark: our quasi-explicit SVI fit against a naive 5-parameter least squares and QuantLib.

Prints a table (machine, date, command); asserts nothing. One run, side by side, on the
same slices: the 24 real Deribit slices of tests/data's snapshot and seeded
synthetic 100-strike slices. For each method: ms per slice cold and warm-started (the
slice is refitted after a 0.2 % variance perturbation, from that method's own previous
fit), RMSE in vol points, how often it ends in a worse local minimum (its objective — our
weighted one, evaluated on its parameters — more than 0.1 % above the best arbitrage-free
result any method found), and how often its output has g(k) < 0 inside the quoted range / anywhere on a
wide grid.

QuantLib's SviInterpolatedSmileSection minimises its own (vega-weighted vol) objective, so
its "worse minimum" count also reflects that different objective. It works in whole days,
so each slice is handed over at T' = max(1, round(365T)) days with vols rescaled to keep
the total variance (SVI is fitted in total variance, so the parameters carry over).

    .venv/bin/python bench/bench_svi.py [--synthetic 200] [--no-quantlib]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from operators.kernels import iv, svi  # noqa: E402

FILE = "deribit_options_snapshot_20260822T153351Z.csv"


# ------------------------------------------------------------------ slices


def data_dir() -> Path:
    """The real chains the tests read, in the repository (tests/data/README.md says where from)."""
    return ROOT / "tests" / "data"


def real_slices() -> list[dict]:
    path = data_dir() / FILE
    if not path.exists():
        print(f"# real slices: {path} not found (is this a whole checkout?) — synthetic only")
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["currency"], r["expiry_datetime"]), []).append(r)
    out = []
    for (cur, expiry), rs in sorted(groups.items()):
        ts = datetime.fromisoformat(rs[0]["timestamp"])
        t = (datetime.fromisoformat(expiry) - ts).total_seconds() / (365.0 * 86400.0)
        fwd = np.array([float(r["underlying"]) for r in rs])
        strikes = np.array([float(r["strike"]) for r in rs])
        is_call = np.array([r["option_type"] == "call" for r in rs])
        bid = np.array([float(r["bid_price"]) if r["bid_price"] else np.nan for r in rs])
        ask = np.array([float(r["ask_price"]) if r["ask_price"] else np.nan for r in rs])
        bid = np.where(bid > 0, bid, np.nan)
        biv = iv.implied_vol(bid * fwd, fwd, strikes, t, is_call)
        aiv = iv.implied_vol(ask * fwd, fwd, strikes, t, is_call)
        p = svi.prepare_slice(strikes, float(np.median(fwd)), t, biv, aiv, is_call)
        out.append(dict(name=f"{cur} {expiry[:10]}", t=t, k=p.k, w=p.total_variance, wts=p.weights))
    return out


def synthetic_slices(n: int, seed: int = 20260822) -> list[dict]:
    """Arbitrage-free SVI smiles, 100 strikes over ±3.5 ATM std devs, 0.3 % vol noise;
    one in four is 'hard' (kinked: small σ; or steep: wing slope near Lee's bound)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        t = float(np.exp(rng.uniform(np.log(1 / 365), np.log(1.0))))
        vol = rng.uniform(0.3, 1.0)
        hard = len(out) % 4 == 3
        sig = rng.uniform(0.01, 0.05) if hard else rng.uniform(0.05, 0.5)
        b = rng.uniform(0.05, 0.9 if hard else 0.4)
        rho = rng.uniform(-0.8, 0.5)
        m = rng.uniform(-0.1, 0.1) * math.sqrt(t)
        p0 = svi.SviParams(0.0, b * math.sqrt(t), rho, m, sig * math.sqrt(t))
        w_min = vol * vol * t * rng.uniform(0.6, 1.0)
        a = w_min - p0.b * p0.sigma * math.sqrt(1 - rho * rho)
        p = svi.SviParams(a, p0.b, rho, m, p0.sigma)
        kk = np.linspace(-12, 12, 20001)
        if not (svi.lee_ok(p) and svi.butterfly_g(p, kk).min() > 0):
            continue
        sd = vol * math.sqrt(t)
        k = np.sort(rng.uniform(-3.5 * sd, 3.0 * sd, 100))
        w = svi.total_variance(p, k) * (1 + 0.006 * rng.standard_normal(100))
        out.append(dict(name=f"syn{len(out)}{'h' if hard else ''}", t=t, k=k, w=w, wts=np.ones(100)))
    return out


# ------------------------------------------------------------------ methods


def objective(params, s) -> float:
    """Our weighted objective (as fit_svi minimises it) evaluated on any params."""
    wt = s["wts"] / (4.0 * s["w"] * s["t"]) / s["wts"].sum()
    r = svi.total_variance(params, s["k"]) - s["w"]
    return float(np.sum(wt * r * r))


def fit_ours(s, prev):
    f = svi.fit_svi(s["k"], s["w"], s["wts"], prev=prev, t_years=s["t"])
    return f.params, f


def fit_naive(s, prev):
    """5-parameter scipy least_squares on the same weighted residuals, Lee/ρ/σ bounds."""
    k, w = s["k"], s["w"]
    sw = np.sqrt(s["wts"] / (4.0 * w * s["t"]) / s["wts"].sum())
    span = max(float(np.ptp(k)), 1e-3)
    lo = [-float(w.max()), 0.0, -0.999, float(k.min()) - 2 * span, 1e-4 * span]
    hi = [float(w.max()), 1.0, 0.999, float(k.max()) + 2 * span, 10 * span]
    if prev is None:
        x0 = [0.5 * float(w.min()), 0.1, -0.3, float(k[np.argmin(w)]), 0.1 * span]
    else:
        x0 = list(prev)
    x0 = np.clip(x0, np.array(lo) + 1e-12, np.array(hi) - 1e-12)

    def res(x):
        a, b, rho, m, sig = x
        return sw * (a + b * (rho * (k - m) + np.sqrt((k - m) ** 2 + sig * sig)) - w)

    r = least_squares(res, x0, bounds=(lo, hi), method="trf", x_scale="jac")
    return svi.SviParams(*r.x), None


def fit_quantlib(s, prev, ql):
    days = max(1, round(s["t"] * 365))
    t_ql = days / 365.0
    today = ql.Date(22, 8, 2026)
    ql.Settings.instance().evaluationDate = today
    F = 100.0
    strikes = (F * np.exp(s["k"])).tolist()
    vols = np.sqrt(s["w"] / t_ql)
    atm = float(np.interp(0.0, s["k"], vols))
    if prev is None:
        a, b, rho, m, sig = 0.5 * float(s["w"].min()), 0.1, -0.3, 0.0, 0.1
    else:
        a, b, rho, m, sig = prev
    sec = ql.SviInterpolatedSmileSection(today + days, F, strikes, False, atm, vols.tolist(), a, b, sig, rho, m,
                                         False, False, False, False, False, True)
    return svi.SviParams(sec.a(), sec.b(), sec.rho(), sec.m(), sec.sigma()), None


# ------------------------------------------------------------------ run


def rmse_vol_pts(params, s) -> float:
    wf = np.maximum(svi.total_variance(params, s["k"]), 0.0)
    return float(np.sqrt(np.mean((np.sqrt(wf / s["t"]) - np.sqrt(s["w"] / s["t"])) ** 2)) * 100)


def g_flags(params, s) -> tuple[bool, bool]:
    inside = svi.butterfly_g(params, np.linspace(s["k"].min(), s["k"].max(), 2001)).min() < 0
    wide = svi.butterfly_g(params, np.linspace(s["k"].min() - 3, s["k"].max() + 3, 20001)).min() < 0
    return bool(inside), bool(wide)


def run(slices, methods, label):
    rng = np.random.default_rng(1)
    res = {name: dict(cold=[], warm=[], rmse=[], obj=[], valid_obj=[], g_in=0, g_any=0, fail=0)
           for name in methods}
    bumped = []
    for s in slices:
        s2 = dict(s, w=s["w"] * (1 + 0.002 * rng.standard_normal(s["w"].size)))
        bumped.append(s2)
    for i, s in enumerate(slices):
        for name, fn in methods.items():
            r = res[name]
            try:
                t0 = time.perf_counter()
                p, _ = fn(s, None)
                r["cold"].append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                pw, _ = fn(bumped[i], p)
                r["warm"].append((time.perf_counter() - t0) * 1e3)
            except Exception as exc:  # a peer failing on a slice is a result, not a crash
                r["fail"] += 1
                r["obj"].append(np.inf)
                r["valid_obj"].append(np.inf)
                r["rmse"].append(np.nan)
                if r["fail"] <= 2:
                    print(f"#   {name} failed on {s['name']}: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            gi, ga = g_flags(p, s)
            r["g_in"] += gi
            r["g_any"] += ga
            r["obj"].append(objective(p, s))
            r["valid_obj"].append(np.inf if (ga or not svi.lee_ok(p)) else r["obj"][-1])
            r["rmse"].append(rmse_vol_pts(p, s))
    # the best arbitrage-free (g ≥ 0 on the wide grid, Lee-bounded) objective any method reached
    best = np.min(np.array([res[n]["valid_obj"] for n in methods]), axis=0)
    print(f"\n## {label}: {len(slices)} slices, {np.mean([s['k'].size for s in slices]):.0f} strikes on average")
    print(f"{'method':12s} {'cold ms p50':>11s} {'mean':>7s} {'p99':>7s} {'max':>7s} {'warm p50':>9s} {'mean':>7s} "
          f"{'max':>7s} {'RMSE vp':>8s} {'worse min':>9s} {'g<0 in':>7s} {'g<0 any':>8s} {'failed':>6s}")
    for name in methods:
        r = res[name]
        c, w = np.array(r["cold"]), np.array(r["warm"])
        obj = np.array(r["obj"])
        worse = int(np.sum(obj > best * (1 + 1e-3) + 1e-15))
        print(f"{name:12s} {np.median(c):11.2f} {c.mean():7.2f} {np.percentile(c, 99):7.2f} {c.max():7.2f} "
              f"{np.median(w):9.2f} {w.mean():7.2f} {w.max():7.2f} {np.nanmean(r['rmse']):8.3f} {worse:9d} "
              f"{r['g_in']:7d} {r['g_any']:8d} {r['fail']:6d}")
    ours, naive = np.array(res["ours"]["obj"]), np.array(res["naive"]["obj"]) if "naive" in res else None
    if naive is not None:
        print(f"ours worse than naive (objective +0.1 %): {int(np.sum(ours > naive * (1 + 1e-3) + 1e-15))} slices")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", type=int, default=200, help="number of synthetic 100-strike slices")
    ap.add_argument("--no-quantlib", action="store_true", help="skip the QuantLib peer")
    args = ap.parse_args(argv)
    print("# bench_svi — SVI calibration, side by side")
    print(f"# machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpu, {platform.processor() or ''} "
          f"python {platform.python_version()}")
    print(f"# date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    t0 = time.perf_counter()
    svi.warm_up()
    print(f"# numba warm_up: {time.perf_counter() - t0:.2f} s (cached kernels load fast; first ever run compiles)")
    methods = {"ours": fit_ours, "naive": fit_naive}
    if not args.no_quantlib:
        try:
            import QuantLib as ql
            methods["quantlib"] = lambda s, prev: fit_quantlib(s, prev, ql)
            print(f"# QuantLib {ql.__version__}: SviInterpolatedSmileSection")
        except ImportError:
            print("# QuantLib: not installed (pip install QuantLib into .venv) — peer skipped")
    real = real_slices()
    if real:
        run(real, methods, "real Deribit slices (OTM two-sided quotes, vega/spread weights)")
    run(synthetic_slices(args.synthetic), methods, "synthetic slices (unit weights)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
