"""Benchmark: Black-76 implied vol, ours (operators.kernels.iv) against peer libraries, on one core.

Prints a table (machine, date, command): options/s, µs per option, max and 99.9th-percentile
|σ − σ_true|, floor violations, and the per-call overhead for batches of 1/10/100/1,000.
Never asserts timings. The option set: k = ln(K/F) in [−1.5, 1.5], T log-uniform from 1 hour
to 3 years, σ in [0.05, 3.0], calls and puts; prices computed in extended precision (mpmath)
and rounded once, cached under .data/bench_iv/ (gitignored; generated in chunks with a
progress line, on every core — only the timing is pinned to one core).

    .venv/bin/python bench/bench_iv.py [--n 1000000] [--seed 7] [--only-ours]

Peers (the `bench` extra; each is skipped with a clear line if absent): py_vollib_vectorized
(needs py_lets_be_rational==1.0.1 and py_vollib==1.0.1), lbriv (Cython Let's Be Rational),
QuantLib blackFormulaImpliedStdDev (one Python call per option).
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba is imported: one core

import argparse
import datetime as _dt
import math
import multiprocessing as mp_proc
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import describe_machine  # noqa: E402

EPS = 2.0**-52
CACHE_VERSION = 1
MP_DPS = 30
CHUNK = 25_000


# ------------------------------------------------------------------ the option set


def _sample(n, seed):
    rng = np.random.default_rng(seed)
    k = rng.uniform(-1.5, 1.5, n)
    t_years = np.exp(rng.uniform(math.log(1.0 / 8760.0), math.log(3.0), n))
    vol = rng.uniform(0.05, 3.0, n)
    is_call = rng.random(n) < 0.5
    forward = np.exp(rng.uniform(math.log(50.0), math.log(2e5), n))
    strike = forward * np.exp(k)
    return forward, strike, t_years, vol, is_call


def _price_chunk(args):
    """mpmath prices and vegas for one chunk (runs in a worker process)."""
    import mpmath as mp

    forward, strike, t_years, vol, is_call = args
    price = np.empty(len(forward))
    vega = np.empty(len(forward))
    with mp.workdps(MP_DPS):
        for i in range(len(forward)):
            f, k, t, v = mp.mpf(forward[i]), mp.mpf(strike[i]), mp.mpf(t_years[i]), mp.mpf(vol[i])
            sd = v * mp.sqrt(t)
            d1 = mp.log(f / k) / sd + sd / 2
            d2 = d1 - sd
            p = f * mp.ncdf(d1) - k * mp.ncdf(d2) if is_call[i] else k * mp.ncdf(-d2) - f * mp.ncdf(-d1)
            price[i] = float(p)  # the one rounding
            vega[i] = float(f * mp.npdf(d1) * mp.sqrt(t))
    return price, vega


def load_options(n, seed, cache_dir: Path):
    forward, strike, t_years, vol, is_call = _sample(n, seed)
    path = cache_dir / f"options_n{n}_seed{seed}_v{CACHE_VERSION}.npz"
    if path.exists():
        with np.load(path) as z:
            price, vega = z["price"], z["vega"]
        print(f"# prices: cached {path}")
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        chunks = [(forward[i:i + CHUNK], strike[i:i + CHUNK], t_years[i:i + CHUNK], vol[i:i + CHUNK],
                   is_call[i:i + CHUNK]) for i in range(0, n, CHUNK)]
        prices, vegas, done, t0 = [], [], 0, time.perf_counter()
        with mp_proc.Pool(os.cpu_count()) as pool:
            for p, v in pool.imap(_price_chunk, chunks):
                prices.append(p)
                vegas.append(v)
                done += len(p)
                print(f"# generating mpmath prices: {done:,}/{n:,} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)
        price, vega = np.concatenate(prices), np.concatenate(vegas)
        np.savez(path, price=price, vega=vega)
        print(f"# prices: generated and cached in {path}")
    return price, forward, strike, t_years, vol, is_call, vega


# ------------------------------------------------------------------ solvers under test


def _ours():
    from operators.kernels import iv

    iv.warm_up()

    def solve(price, forward, strike, t_years, is_call):
        return iv.implied_vol(price, forward, strike, t_years, is_call)

    return solve


def _py_vollib_vectorized():
    import py_vollib_vectorized as pvv

    def solve(price, forward, strike, t_years, is_call):
        flag = np.where(is_call, "c", "p")
        out = pvv.vectorized_implied_volatility_black(price, forward, strike, 0.0, t_years, flag,
                                                      on_error="ignore", return_as="numpy")
        return np.asarray(out, dtype=np.float64).reshape(-1)

    return solve


def _lbriv():
    import lbriv

    def solve(price, forward, strike, t_years, is_call):
        # lbriv takes one forward per call: Black is homogeneous, so solve at F = 1
        p1, k1 = price / forward, strike / forward
        out = np.empty(len(price))
        for flag, q in ((is_call, 1), (~is_call, -1)):
            if flag.any():
                out[flag] = lbriv.vectorized_implied_vol_strikes(p1[flag], 1.0, k1[flag], q)
        return out / np.sqrt(t_years)

    return solve


def _quantlib():
    import QuantLib as ql

    call_t, put_t = ql.Option.Call, ql.Option.Put
    implied = ql.blackFormulaImpliedStdDev

    def solve(price, forward, strike, t_years, is_call):
        out = np.empty(len(price))
        for i in range(len(price)):
            try:
                sd = implied(call_t if is_call[i] else put_t, strike[i], forward[i], price[i], 1.0, 0.0,
                             ql.nullDouble(), 1e-14, 200)
                out[i] = sd / math.sqrt(t_years[i])
            except RuntimeError:
                out[i] = math.nan
        return out

    return solve


PEERS = [
    ("volgraph operators.kernels.iv", "operators", _ours),
    ("py_vollib_vectorized", "py_vollib_vectorized", _py_vollib_vectorized),
    ("lbriv (Let's Be Rational)", "lbriv", _lbriv),
    ("QuantLib blackFormulaImpliedStdDev", "QuantLib", _quantlib),
]


# ------------------------------------------------------------------ measurement


def _timed(solve, args, repeats):
    best, out = math.inf, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = solve(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _overhead(solve, args, batch, budget_s=0.3):
    sub = tuple(a[:batch] for a in args)
    solve(*sub)
    calls, t0 = 0, time.perf_counter()
    while True:
        solve(*sub)
        calls += 1
        el = time.perf_counter() - t0
        if el > budget_s and calls >= 3:
            return el / calls * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="number of options (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per solver; the best is shown")
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".data" / "bench_iv")
    ap.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the first allowed)")
    ap.add_argument("--quantlib-max", type=int, default=None,
                    help="cap QuantLib (a Python loop) at this many options; default all")
    ap.add_argument("--only-ours", action="store_true", help="time volgraph only (skip the peers)")
    args = ap.parse_args(argv)

    price, forward, strike, t_years, vol, is_call, vega = load_options(args.n, args.seed, args.cache_dir)

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    import numba

    print(f"# bench_iv · {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    print(f"# machine: {describe_machine()}")
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"# pinned to cpu {cpu} (os.sched_setaffinity); NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS')}; "
          f"numba {numba.__version__}, numpy {np.__version__}")
    oc = os.environ.get("OPENBLAS_CORETYPE")
    print(f"# OPENBLAS_CORETYPE: {'set to ' + repr(oc) if oc is not None else 'not set'} (left as is)")

    from operators.kernels import iv

    _, status = iv.implied_vol_and_status(price, forward, strike, t_years, is_call)
    ok = status == iv.OK
    counts = ", ".join(f"{iv.STATUS_NAMES[s]} {int((status == s).sum()):,}" for s in iv.STATUS_NAMES if (status == s).any())
    print(f"# {args.n:,} options; status: {counts}")
    print("#   (no vol information: price rounded to intrinsic/zero, or the time value within 16 ulps of the price)")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        floor = 1e-12 + 4.0 * EPS * price / vega
    well = ok & (floor <= 2e-12)
    print(f"# error columns over the {int(ok.sum()):,} informative options (our status OK); "
          f"'well-cond.' = the {int(well.sum()):,} where the floor 1e-12 + 4εP/vega ≤ 2e-12")
    print("# floor viol. = finite answers with |σ − σ_true| > 1e-12 + 4εP/vega; failed = NaN/0 on an informative option")
    print(f"# timing: best of {args.repeats} runs over all {args.n:,} options, after a warm-up call\n")

    hdr = (f"{'solver':36s} {'options/s':>12s} {'µs/opt':>8s} {'max err':>9s} {'p99.9 err':>9s} "
           f"{'max err wc':>10s} {'floor viol.':>11s} {'failed':>8s} | {'µs/call b=1':>11s} {'b=10':>8s} {'b=100':>8s} {'b=1000':>8s}")
    print(hdr)
    print("-" * len(hdr))
    full_args = (price, forward, strike, t_years, is_call)
    for name, module, factory in (PEERS[:1] if args.only_ours else PEERS):
        try:
            solve = factory()
        except ImportError as exc:
            print(f"{name:36s} skipped: {module} is not installed ({exc}); "
                  f"pip install it (the `bench` extra) to compare")
            continue
        n_run = args.n
        run_args = full_args
        repeats = args.repeats
        if module == "QuantLib":
            repeats = 1
            if args.quantlib_max is not None and args.quantlib_max < args.n:
                n_run = args.quantlib_max
                run_args = tuple(a[:n_run] for a in full_args)
        solve(*tuple(a[:1000] for a in run_args))  # warm-up (numba compile, caches)
        seconds, out = _timed(solve, run_args, repeats)
        out = np.asarray(out, dtype=np.float64)
        sel = ok[:n_run]
        got = out[sel]
        finite = np.isfinite(got) & (got > 0)
        err = np.abs(got - vol[:n_run][sel])
        err_f = err[finite]
        viol = int((err_f > floor[:n_run][sel][finite]).sum())
        wc = well[:n_run][sel] & finite
        max_wc = float(np.max(err[wc])) if wc.any() else math.nan
        failed = int((~finite).sum())
        ovh = [_overhead(solve, full_args, b) for b in (1, 10, 100, 1000)]
        label = name if n_run == args.n else f"{name} [{n_run:,}]"
        print(f"{label:36s} {n_run / seconds:12,.0f} {seconds / n_run * 1e6:8.3f} {np.max(err_f):9.2e} "
              f"{np.quantile(err_f, 0.999):9.2e} {max_wc:10.2e} {viol:11,d} {failed:8,d} | "
              f"{ovh[0]:11.2f} {ovh[1]:8.2f} {ovh[2]:8.2f} {ovh[3]:8.1f}", flush=True)
    sub = tuple(np.ascontiguousarray(a[ok]) for a in full_args)
    seconds, _ = _timed(_ours(), sub, args.repeats)
    print(f"\n# volgraph on the {len(sub[0]):,} informative options only (every one solved): "
          f"{len(sub[0]) / seconds:,.0f} options/s, {seconds / len(sub[0]) * 1e6:.3f} µs/option")
    print("# Jäckel publishes 5.5 M IVs/s per core for his C++ Let's Be Rational (reference, not run here).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
