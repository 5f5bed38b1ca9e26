"""Real Deribit chain snapshots (tests/data/, see its README.md) read into per-expiry slices,
and the band and calendar figures the real-chain tests and bench/bench_surface.py report.
Test and benchmark support only: reads CSV (plain or .gz), never imports flows or connectors.

A slice: currency + expiry; bid/ask coin prices → USD with each row's `underlying` (the
forward Deribit prices that expiry on) → Black-76 IVs by operators.kernels.iv;
T = (expiry − timestamp)/365 days; k = ln(K/F) with F the median forward of the expiry.
"""

from __future__ import annotations

import csv
import gzip
from datetime import datetime
from pathlib import Path

import numpy as np

from operators.kernels import iv, svi

MS_PER_YEAR = 365 * 86_400_000  # ACT/365, as operators/state/chain.py


def read_rows(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        return list(csv.DictReader(fh))


def _ms(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000  # to the millisecond


def load_slices(path: Path) -> list[dict]:
    """One dict per (currency, expiry), sorted by currency then expiry: name, currency,
    t_years, forward, strikes, is_call, bid_iv, ask_iv (decimals, NaN = no quote),
    mark_coin and mark_iv (Deribit's, decimal) and forwards (per row)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in read_rows(path):
        groups.setdefault((r["currency"], r["expiry_datetime"]), []).append(r)
    out = []
    for (cur, expiry), rs in sorted(groups.items()):
        t_years = (_ms(expiry) - _ms(rs[0]["timestamp"])) / MS_PER_YEAR
        if t_years <= 0:
            continue  # expired at the snapshot's time
        # each row carries the forward of its own ticker call (a few USD apart within an
        # expiry): price and IV with the row's forward, use the median for k = ln(K/F)
        forward = np.array([float(r["underlying"]) for r in rs])
        assert np.ptp(forward) < 1e-3 * forward.min(), "one forward per expiry, up to ticker timing"
        strikes = np.array([float(r["strike"]) for r in rs])
        is_call = np.array([r["option_type"] == "call" for r in rs])

        def coin(col):
            return np.array([float(r[col]) if r[col] else np.nan for r in rs])

        bid_coin, ask_coin = coin("bid_price"), coin("ask_price")
        bid_coin = np.where(bid_coin > 0, bid_coin, np.nan)  # a zero bid is no bid
        out.append(dict(name=f"{cur} {expiry[:10]}", currency=cur, t_years=t_years,
                        forward=float(np.median(forward)), forwards=forward, strikes=strikes, is_call=is_call,
                        bid_iv=iv.implied_vol(bid_coin * forward, forward, strikes, t_years, is_call),
                        ask_iv=iv.implied_vol(ask_coin * forward, forward, strikes, t_years, is_call),
                        mark_coin=coin("mark_price"), mark_iv=coin("implied_volatility")))
    return out


def mark_iv_errors_vol_pts(s: dict) -> np.ndarray:
    """|our IV of Deribit's mark price − Deribit's mark IV| in vol points, over the slice's
    options that carry time value (≥ 0.0005 coin) and solve."""
    f, k, c = s["forwards"], s["strikes"], s["is_call"]
    vol, status = iv.implied_vol_coin_and_status(s["mark_coin"], f, k, s["t_years"], c)
    intrinsic = np.where(c, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0)) / f
    ok = (s["mark_coin"] - intrinsic >= 0.0005) & (status == iv.OK) & np.isfinite(s["mark_iv"])
    return np.abs(vol[ok] - s["mark_iv"][ok]) * 100.0


def prepared(s: dict) -> svi.SliceInputs:
    return svi.prepare_slice(s["strikes"], s["forward"], s["t_years"], s["bid_iv"], s["ask_iv"], s["is_call"])


def underlyings(path: Path) -> list[list[tuple[dict, svi.SliceInputs]]]:
    """A chain file's slices per currency, T ascending, each with its prepared quotes: the slices
    with ≥ svi.MIN_QUOTES of them (what the figures, bench_surface.py and band_ceiling.py use)."""
    by_cur: dict[str, list] = {}
    for s in load_slices(path):
        p = prepared(s)
        if p.k.size >= svi.MIN_QUOTES:
            by_cur.setdefault(s["currency"], []).append((s, p))
    return [sorted(v, key=lambda x: x[0]["t_years"]) for _, v in sorted(by_cur.items())]


def band_figures(params, prep: svi.SliceInputs, t_years: float) -> tuple[np.ndarray, np.ndarray]:
    """Per two-sided OTM quote: inside its [bid, ask] IV band (bool) and the excursion
    outside it in vol points (0 inside)."""
    w = svi.total_variance(params, prep.k)
    vol = np.sqrt(np.maximum(w, 0.0) / t_years)
    bid, ask = np.sqrt(prep.w_bid / t_years), np.sqrt(prep.w_ask / t_years)
    inside = (w >= prep.w_bid) & (w <= prep.w_ask)
    excursion = (np.maximum(bid - vol, 0.0) + np.maximum(vol - ask, 0.0)) * 100.0
    return inside, np.where(inside, 0.0, excursion)


def butterfly_min_g(params, prep: svi.SliceInputs) -> float:
    """min g on an independent dense grid: the quoted range ± 1 and m ± σ·sinh(±8)."""
    p = svi.as_params(params)
    k = np.concatenate([np.linspace(prep.k.min() - 1.0, prep.k.max() + 1.0, 20001),
                        p.m + p.sigma * np.sinh(np.linspace(-8, 8, 4001))])
    return float(svi.butterfly_g(p, k).min())


def calendar_crossings(items: list[tuple[float, object, np.ndarray]], n_grid: int = 4001,
                       tol: float = 1e-10) -> int:
    """Neighbouring (t-sorted) pairs of (t_years, params, quoted k) whose total variances
    cross, min(w₂ − w₁) < −tol, on a dense grid over the union of the pair's quoted k (where
    either expiry has market data; beyond both, both curves are extrapolation)."""
    items = sorted(items, key=lambda x: x[0])
    n = 0
    for (t1, p1, k1), (t2, p2, k2) in zip(items, items[1:]):
        if not t2 > t1:
            continue
        grid = np.linspace(min(k1.min(), k2.min()), max(k1.max(), k2.max()), n_grid)
        if float(np.min(svi.total_variance(p2, grid) - svi.total_variance(p1, grid))) < -tol:
            n += 1
    return n
