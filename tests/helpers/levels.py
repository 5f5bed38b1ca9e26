"""A book side as (price, size) tuples, for asserting on a BookUpdate's levels (which are
levels × 2 float arrays). Test support only."""

from __future__ import annotations


def pairs(side) -> tuple[tuple[float, float], ...]:
    """((price, size), …) of a BookUpdate's bids or asks, as sent."""
    return tuple(map(tuple, side.tolist()))
