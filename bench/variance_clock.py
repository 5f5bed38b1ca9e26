"""Measurement: does a weekend-weighted variance clock interpolate the front of the term
structure better than calendar time (ACT/365) on the real Deribit chains in tests/data?

Prints one table (date, command); asserts nothing; never imported by volgraph.

A single slice's SVI fit in total variance does not depend on T, so the clock is measured where
it matters: interpolation between expiries. For every real snapshot (tests/data and
tests/data/chains, BTC and ETH), every expiry's mid smile is fitted as the flow does
(svi.prepare_slice + svi.fit_svi) and its ATM total variance w₀ = w(0) taken. Each expiry's w₀
is then predicted from its two neighbours, linear in the clock τ (the first expiry's lower
neighbour is (τ = 0, w = 0)): the rule the fixed tenors use (operators/kernels/calendar.py), and
what a tenor between two expiries is. Error: |√(ŵ₀/T) − √(w₀/T)| in vol points at the
calendar T, over the front expiries (T ≤ 10 days: dailies and weeklies) and the rest.
τ = weighted_years(snapshot, expiry, weekend_weight) (operators/kernels/variance_clock.py).

    .venv/bin/python bench/variance_clock.py
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.kernels import svi  # noqa: E402
from operators.kernels.variance_clock import MS_PER_YEAR, leave_one_out_atm, weighted_years  # noqa: E402
from tests.helpers.real_chains import load_slices, prepared  # noqa: E402

WEIGHTS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.2)
FRONT_DAYS = 10.0


def snapshots() -> list[Path]:
    data = ROOT / "tests" / "data"
    return sorted(data.glob("*.csv")) + sorted((data / "chains").glob("*.csv.gz"))


def term(path: Path):
    """(currency, [(expiry_ms, start_ms, t_years, w0)]) per currency of one snapshot."""
    out: dict[str, list] = {}
    for s in load_slices(path):
        expiry_ms = int(dt.datetime.fromisoformat(s["name"].split()[1] + "T08:00:00+00:00").timestamp() * 1000)
        start_ms = int(round(expiry_ms - s["t_years"] * MS_PER_YEAR))
        try:
            prep = prepared(s)
            fit = svi.fit_svi(prep.k, prep.total_variance, prep.weights, t_years=s["t_years"])
        except ValueError:
            continue
        w0 = float(svi.total_variance(fit.params, 0.0))
        if w0 > 0:
            out.setdefault(s["currency"], []).append((expiry_ms, start_ms, s["t_years"], w0))
    return out


def main() -> None:
    rows = []  # (t_years, weight -> error vol pts)
    for path in snapshots():
        for cur, items in term(path).items():
            items.sort()
            t = np.array([x[2] for x in items])
            w = np.array([x[3] for x in items])
            errs = {}
            for weight in WEIGHTS:
                tau = np.array([float(weighted_years(x[1], x[0], weight)) for x in items])
                pred = leave_one_out_atm(tau, w)
                with np.errstate(invalid="ignore"):
                    errs[weight] = np.abs(np.sqrt(np.maximum(pred, 0) / t) - np.sqrt(w / t)) * 100
            for i in range(len(items) - 1):
                rows.append((t[i], {wt: float(e[i]) for wt, e in errs.items()}, f"{path.name[:35]} {cur}"))
    print(f"variance clock, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{len(snapshots())} snapshots; command: .venv/bin/python bench/variance_clock.py")
    print("leave-one-out ATM vol error (vol pts) of an expiry interpolated from its neighbours, linear in τ")
    print(f"{'expiries':<22}{'n':>5}" + "".join(f"{'w=' + str(wt):>18}" for wt in WEIGHTS))
    for label, sel in ((f"front (T ≤ {FRONT_DAYS:g} d)", lambda t: t * 365 <= FRONT_DAYS),
                       (f"rest (T > {FRONT_DAYS:g} d)", lambda t: t * 365 > FRONT_DAYS)):
        picked = [r for r in rows if sel(r[0])]
        cells = []
        for wt in WEIGHTS:
            e = np.array([r[1][wt] for r in picked])
            cells.append(f"{np.mean(e):7.3f} / {np.median(e):6.3f}")
        print(f"{label:<22}{len(picked):>5}" + "".join(f"{c:>18}" for c in cells))
    print("cells: mean / median; w = weekend weight (1 = calendar time, ACT/365)")
    # robustness: per (snapshot, currency), does each weight beat calendar time on the front?
    groups = sorted({r[2] for r in rows})
    front = [r for r in rows if r[0] * 365 <= FRONT_DAYS]
    wins = {wt: sum(np.mean([r[1][wt] for r in front if r[2] == g]) < np.mean([r[1][1.0] for r in front if r[2] == g])
                    for g in groups if any(r[2] == g for r in front)) for wt in WEIGHTS[1:]}
    n = sum(any(r[2] == g for r in front) for g in groups)
    print(f"front mean error below calendar time's, in (snapshot, currency) groups of {n}: "
          + ", ".join(f"w={wt}: {k}" for wt, k in wins.items()))


if __name__ == "__main__":
    main()
