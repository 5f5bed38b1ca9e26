"""The typed items that travel between the dataflow's steps (flows/surface.py), as opposed to
the events of operators/events.py, which cross sockets and tables:

    source ──ChainBatch──► chain[venue|underlying|expiry] ──ExpiryFit / ExpiryLadders / ExpiryGone──► surface[venue|underlying]
                                        └── FeedError (counted) ───────────────► errors

Each step dispatches on the item's type (`type(item) is ExpiryFit`), never on a string tag, and
each item names its own key, so no step splits a key string to find where an item goes.

msgspec Structs (built in ~0.1 µs, pickled when bytewax moves an item between workers). Pure
data: no I/O, no bytewax, never imports connectors or flows.
"""

from __future__ import annotations

import msgspec

from operators.events import ChainUpdate, Ladders, SmileFit, surface_key


class ChainBatch(msgspec.Struct, frozen=True):
    """One source batch of one expiry's events, in arrival order: what a chain step consumes.
    `entered_ms` is the flow time reading the batch began (the epoch it entered the flow in)."""

    key: str  # chain key, operators.events.chain_key(venue, underlying, expiry_ms)
    events: list
    entered_ms: int


class ExpiryFit(msgspec.Struct, frozen=True):
    """A chain step's output for one expiry and epoch: the SVI fit and the quotes behind it."""

    fit: SmileFit
    chain: ChainUpdate
    chain_key: str = ""  # the chain step's key as routed (salted: connectors/venues/placement.py)

    @property
    def surface_key(self) -> str:
        return surface_key(self.fit.venue, self.fit.underlying)


class ExpiryLadders(msgspec.Struct, frozen=True):
    """Vol at size between fits: the depth ladders of one expiry that changed since it last sent
    any (the touch stood still, deeper levels moved), at most once per chain.fit_interval_ms."""

    venue: str
    underlying: str
    expiry_ms: int
    ladders: Ladders
    ts_exchange_ms: int  # the newest exchange time behind them (the chain's)

    @property
    def surface_key(self) -> str:
        return surface_key(self.venue, self.underlying)


class ExpiryGone(msgspec.Struct, frozen=True):
    """An expiry has settled: the surface drops it."""

    venue: str
    underlying: str
    expiry_ms: int

    @property
    def surface_key(self) -> str:
        return surface_key(self.venue, self.underlying)
