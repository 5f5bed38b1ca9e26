"""The simulators' order books: option prices rounded to a venue's tick bands, the book levels
the market wants (bids floored, asks ceiled, so every best bid ≤ true price ≤ best ask), a
futures ladder around a forward, and moving a book to new target levels as the list of level
changes a venue then writes in its own frame shape.

Shared by both simulators; nothing here knows a frame shape. Like every module of
connectors/sim it must never import the venue parsers (connectors/venues/*) or flows: the tests
compare the simulators against those parsers, so the two must not share code.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class TickBands:
    """A venue's option price ticks in coin: `small` below `above`, `large` from `above` up.
    Array rounding is one numpy pass per tick for all options, not a Python loop per message."""

    small: float
    large: float
    above: float

    def floor_one(self, price_coin: float) -> float:
        """Round a bid down to the tick for its price."""
        if price_coin >= self.above:
            return round(math.floor(price_coin / self.large + 1e-9) * self.large, 4)
        return round(math.floor(price_coin / self.small + 1e-9) * self.small, 4)

    def ceil_one(self, price_coin: float) -> float:
        """Round an ask up to the tick for its price (at least one small tick)."""
        p = max(price_coin, self.small)
        if p > self.above:
            return round(math.ceil(p / self.large - 1e-9) * self.large, 4)
        return round(math.ceil(p / self.small - 1e-9) * self.small, 4)

    def floor(self, price_coin: np.ndarray) -> np.ndarray:
        """floor_one over an array (the same results)."""
        tick = np.where(price_coin >= self.above, self.large, self.small)
        return np.round(np.floor(price_coin / tick + 1e-9) * tick, 4)

    def ceil(self, price_coin: np.ndarray) -> np.ndarray:
        """ceil_one over an array (the same results)."""
        p = np.maximum(price_coin, self.small)
        tick = np.where(p > self.above, self.large, self.small)
        return np.round(np.ceil(p / tick - 1e-9) * tick, 4)

    def size(self, price_coin: np.ndarray) -> np.ndarray:
        """The tick at each price (coin)."""
        return np.where(price_coin >= self.above, self.large, self.small)


def book_levels(bid_coin: np.ndarray, ask_coin: np.ndarray, depth: int, ticks: TickBands) -> tuple[list, list]:
    """Tick-aligned book prices for many options at once: bids floored, asks ceiled, deeper
    levels half a spread apart (at least one tick). Returns per-option lists, best first;
    bids stop before reaching zero."""
    floor, ceil = ticks.floor, ticks.ceil
    bid0 = floor(bid_coin)
    ask0 = ceil(ask_coin)
    ask0 = np.where(ask0 <= bid0, ceil(bid0 + ticks.small), ask0)
    step = np.maximum(floor((ask0 - bid0) / 2), ticks.size(bid0))
    bids = np.empty((len(bid0), depth))
    asks = np.empty((len(ask0), depth))
    bids[:, 0], asks[:, 0] = bid0, ask0
    for j in range(1, depth):
        prev = bids[:, j - 1]
        bids[:, j] = np.where(prev > 0, floor(np.maximum(prev - step, 0.0)), 0.0)
        asks[:, j] = ceil(asks[:, j - 1] + step)
    bid_lists = [[p for p in row if p > 0] for row in bids.tolist()]
    return bid_lists, asks.tolist()


def future_levels(forward_usd: float, tick_usd: float, depth: int) -> tuple[list[float], list[float]]:
    """A futures book around its forward: the best bid the tick at or below forward − half a
    tick, the best ask two ticks above it, `depth` levels a tick apart per side, best first."""
    bid0 = math.floor(forward_usd / tick_usd - 0.5) * tick_usd
    return ([round(bid0 - j * tick_usd, 2) for j in range(depth)],
            [round(bid0 + (j + 2) * tick_usd, 2) for j in range(depth)])


def move_book(bids: dict, asks: dict, bids_target: list, asks_target: list, new_size: Callable[[], float],
              other_size: Callable[[float], float], rng: random.Random) -> tuple[list, list]:
    """Move a book (price → size per side, changed in place) to the target prices: levels off
    the target are deleted, new target prices get new_size(); when no price moved, one random
    level is re-sized instead (the common case on a real book; other_size(size) when new_size()
    drew the size it already had). Returns per side the changes [(action, price, size)] with
    action "delete" (size 0), "new" or "change", in the order they were made."""
    out = []
    for side, target in ((bids, bids_target), (asks, asks_target)):
        changes = []
        tset = set(target)
        for px in [p for p in side if p not in tset]:
            del side[px]
            changes.append(("delete", px, 0))
        for px in target:
            if px not in side:
                side[px] = new_size()
                changes.append(("new", px, side[px]))
        out.append(changes)
    if not out[0] and not out[1]:
        sides = [s for s in (0, 1) if (bids, asks)[s]]
        if sides:
            s = rng.choice(sides)
            side = (bids, asks)[s]
            px = rng.choice(list(side))
            size = new_size()
            if size == side[px]:
                size = other_size(size)
            side[px] = size
            out[s].append(("change", px, size))
    return out[0], out[1]
