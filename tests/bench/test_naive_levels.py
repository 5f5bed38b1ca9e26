"""Like for like (issue #13): with level vols on, the naive baseline (bench/naive.py) solves exactly
the prices volgraph's chain solves — per book its best level_depth levels a side and its walks to
each size — so `bench_engine.py --levels-on` compares the same work."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.naive import NaiveEngine  # noqa: E402
from flows.config import load_config  # noqa: E402
from operators.events import BookUpdate, FuturePrice  # noqa: E402
from operators.state.chain import ChainLogic, ChainState, FitBudget  # noqa: E402
from tests.helpers.chain import EXPIRY, FORWARD, T0, Clock, chain_kwargs, listing, prices_coin, option_name  # noqa: E402

LEVELS = {"level_depth": 3, "sizes_contracts": [1.5, 4.0, 40.0]}  # 40: thinner than every book (NaN)


def deep_book(name: str, bid: float, ask: float) -> BookUpdate:
    """Five levels a side, sizes 1, 1.5, 2, … (the 4-contract walk crosses levels)."""
    bids = tuple((bid * (1 - 0.02 * i), 1.0 + 0.5 * i) for i in range(5))
    asks = tuple((ask * (1 + 0.02 * i), 1.0 + 0.5 * i) for i in range(5))
    return BookUpdate("deribit", name, T0, T0, 1, None, "snapshot", bids, asks)


def test_naive_with_level_vols_on_solves_the_prices_the_chain_solves():
    events = listing() + [deep_book(option_name(k, cp), b, a) for (k, cp), (b, a) in prices_coin().items()]
    events.append(FuturePrice("deribit", "F", "BTC", EXPIRY, T0, T0, FORWARD, FORWARD, FORWARD))
    clock = Clock(T0)
    chain = ChainLogic(ChainState("deribit", "BTC", EXPIRY), now_ms=clock,
                       **{**chain_kwargs(), **LEVELS, "budget": FitBudget(8)})
    naive = NaiveEngine(load_config(overrides={"chain": LEVELS}), now_ms=clock)
    chain.on_items(events)
    for ev in events:
        naive.handle(ev)
    clock.ms += 100
    chain.on_epoch()
    s = chain.state
    width = LEVELS["level_depth"] + len(LEVELS["sizes_contracts"])
    for name, row in s.book_slot.items():
        _, opt = naive.options[name]
        ours = np.concatenate([s.lv_px[0, row], s.lv_px[1, row]])
        assert opt.n_bids == width
        np.testing.assert_array_equal(opt.level_px, ours)  # NaN where both say "none"
    assert np.isnan(s.lv_px[:, :, -1]).all()  # 40 contracts: thinner than every book
    # the chain solved every one of those prices once at its first read; the naive solves them
    # (and re-solves them) on every message: each of its vols is exact for the same price
    finite = int(np.count_nonzero(np.isfinite(s.lv_px)))
    assert chain.counters["lv_full"] == finite > 0
    t = (EXPIRY - clock.ms) / (365.0 * 86_400_000.0)
    for name, row in list(s.book_slot.items())[:6]:
        _, opt = naive.options[name]
        ours = chain.published_level_vols(t)[:, row].reshape(-1)
        both = np.isfinite(ours) & np.isfinite(opt.level_iv)
        assert both.any() and np.max(np.abs(ours[both] - opt.level_iv[both])) < 1e-4 * max(1.0, math.sqrt(t))
