"""Which worker runs a key, and which worker slot reads each expiry, so that a source
partition reads only the instruments whose chain state lives on its own worker (no book
event crosses between processes) and each underlying's books are split evenly.

bytewax 0.21.1 (its last release, so these rules are fixed for us):
- a stateful step sends key K to worker `h(K) mod W` of its W workers, h being Rust's
  DefaultHasher — SipHash-1-3 with a zero key — over K's UTF-8 bytes and a 0xff terminator
  (Rust's `Hash for str`);
- a FixedPartitionedSource's partitions, taken in sorted order, each go to the worker with
  the fewest so far, ties to the lowest index: a source whose partitions come in groups of W
  slots named in slot order (`slot_names`) has slot k of every group read on worker k.
tests/connectors/venues/test_placement.py checks both rules against real bytewax runs.

Placement (issue #13, measured 2026-12-06 on the seed workload): hashing chain keys put 5 of
12 BTC expiries and 1,670 of 4,008 books on one of two workers and 2,338 on the other (58 %
on the busier one), and ETH's 12 expiries 8/4. `Placement` instead assigns each underlying's
expiries to slots by their option count — longest first to the least-loaded slot on a fresh
start, a new listing to the least-loaded slot later — and never moves a live expiry: a listing
or a restart (the assignment is kept in recovery state, connectors/venues/base.py) leaves every
running chain where it is. The slot then owns the chain because the routing salts its key
(`routed_key`: `deribit|BTC|1767254400000#3`) until bytewax's hash sends it to that worker.

Every slot's client places the same listing by the same rule, so all agree which slot reads
which expiry — when they place the same new expiries in the same calls. What is not guarded:
- two slots whose discoveries cut a listing change differently can disagree. Two listings in
  one slot's discovery and in two of the other's are placed in different orders (within a call
  earliest expiry first; across calls in listing order), so a daily listed after a month end is
  placed before it by one slot and after it by the other
  (tests/connectors/venues/test_placement.py, the xfail test); a fresh start whose first
  discoveries straddle a listing, or option counts that differ between them, does the same;
- the expiry is then read by two slots (two chain states, each fitting it) or by none.
What would fix it: a decision per expiry from data every slot sees alike — the expiries in
listing order (each venue's creation time: Deribit `creation_timestamp`, OKX `listTime`, which
the Instrument event does not carry yet), each weighed by the options listed with it, with
the expiries live at its listing (expired ones kept a grace period) as the loads.

Never imports a venue package, the flow, or anything about volatility.
"""

from __future__ import annotations

import functools
import re
from typing import Mapping, Optional

from siphash24 import siphash13

from operators.events import chain_key

_ZERO_KEY = bytes(16)
_SLOT_NAME = re.compile(r"\.w(\d+)of(\d+)(?=\.|$)")


def worker_of(key: str, workers: int) -> int:
    """The worker (0 … workers−1) bytewax runs this key's stateful step on."""
    if workers < 1:
        raise ValueError(f"workers={workers}: a cluster has at least one worker")
    digest = siphash13(key.encode("utf-8") + b"\xff", key=_ZERO_KEY).digest()
    return int.from_bytes(digest, "little") % workers


@functools.lru_cache(maxsize=65_536)
def routed_key(key: str, slot: int, workers: int) -> str:
    """`key` as the chain step's key so that bytewax runs it on worker `slot`: unchanged when
    its hash already lands there, else salted `key#n` with the smallest n that does
    (operators.events.split_chain_key strips the salt)."""
    if workers <= 1 or worker_of(key, workers) == slot:
        return key
    if not 0 <= slot < workers:
        raise ValueError(f"slot={slot}: a worker slot is 0 … {workers - 1}")
    n = 1
    while worker_of(f"{key}#{n}", workers) != slot:
        n += 1
    return f"{key}#{n}"


def expiry_slot(venue: str, underlying: str, expiry_ms: int, workers: int) -> Optional[int]:
    """The hash fallback: the worker an expiry's unsalted chain key runs on; None for what
    every slot reads (a perpetual, expiry 0) or when there is one worker. `Placement` uses it
    for an expiry it has not placed (a future with no options of its expiry)."""
    if workers <= 1 or expiry_ms == 0:
        return None
    return worker_of(chain_key(venue, underlying, expiry_ms), workers)


def slot_names(base: str, workers: int) -> list[str]:
    """Partition names for one source split into a slot per worker, in slot order: `base`
    alone for one worker, else `base.w0of2`, `base.w1of2` (zero-padded, so they sort right)."""
    if workers <= 1:
        return [base]
    width = len(str(workers - 1))
    return [f"{base}.w{k:0{width}d}of{workers}" for k in range(workers)]


def slot_of_name(name: str) -> Optional[tuple[int, int]]:
    """(slot, workers) of a partition named by `slot_names` ("deribit-BTC.w1of2" → (1, 2)), or
    of a recording of one ("workload.BTC.w1of2.jsonl.gz", a replay partition); None for a name
    with no slot (one worker, or a source not split per worker)."""
    m = _SLOT_NAME.search(name)
    if m is None:
        return None
    slot, workers = int(m.group(1)), int(m.group(2))
    return (slot, workers) if 0 <= slot < workers else None


class Placement:
    """Each underlying's expiries → worker slots, even by option count, live ones never moved.

    assign(venue, underlying, listing, now_ms) with listing {expiry_ms: option count} places
    what is new; slot_of(venue, underlying, expiry_ms) answers for any expiry (None: every
    slot reads it). state() / Placement(workers, state) round-trip the assignment through
    recovery snapshots."""

    def __init__(self, workers: int, state: Optional[Mapping[str, Mapping[int, int]]] = None):
        if workers < 1:
            raise ValueError(f"workers={workers}: a cluster has at least one worker")
        self.workers = workers
        # underlying → {expiry_ms: (slot, option count when placed)}
        self._slots: dict[str, dict[int, tuple[int, int]]] = {}
        for underlying, expiries in (state or {}).items():
            placed = self._slots[underlying] = {}
            for expiry, (slot, count) in expiries.items():
                if not 0 <= int(slot) < workers:
                    raise ValueError(f"recovered placement {underlying} {expiry}: slot {slot} is not one of 0 … "
                                     f"{workers - 1}; was the flow resumed with another worker count?")
                placed[int(expiry)] = (int(slot), int(count))

    def assign(self, underlying: str, listing: Mapping[int, int], now_ms: int) -> dict[int, int]:
        """Places the listing's new expiries and forgets expired ones; returns {expiry_ms: slot}
        of every live placed expiry. A fresh start (nothing live) places longest first
        (largest option count, then earliest expiry) to the least-loaded slot; later listings
        place new expiries earliest first the same way. Load is the option count each expiry
        had when placed (frozen, so slots placing at different moments weigh alike); ties go
        to the slot with fewer expiries, then the lower slot. Expiry 0 (perpetuals) is never
        placed: every slot reads it."""
        placed = {e: v for e, v in self._slots.get(underlying, {}).items() if e > now_ms}
        new = [(e, int(n)) for e, n in listing.items() if e != 0 and e > now_ms and e not in placed]
        if self.workers > 1 and new:
            if placed:
                new.sort()
            else:
                new.sort(key=lambda en: (-en[1], en[0]))
            load = [0] * self.workers
            held = [0] * self.workers
            for slot, count in placed.values():
                load[slot] += count
                held[slot] += 1
            for expiry, count in new:
                slot = min(range(self.workers), key=lambda k: (load[k], held[k], k))
                placed[expiry] = (slot, count)
                load[slot] += count
                held[slot] += 1
        self._slots[underlying] = placed
        return self.placed(underlying)

    def placed(self, underlying: str) -> dict[int, int]:
        """{expiry_ms: slot} of the underlying's placed expiries."""
        return {e: s for e, (s, _) in self._slots.get(underlying, {}).items()}

    def slot_of(self, venue: str, underlying: str, expiry_ms: int) -> Optional[int]:
        """The slot that reads this expiry: its placed slot, else the hash fallback
        (`expiry_slot`); None for what every slot reads."""
        if self.workers <= 1 or expiry_ms == 0:
            return None
        entry = self._slots.get(underlying, {}).get(expiry_ms)
        return entry[0] if entry is not None else expiry_slot(venue, underlying, expiry_ms, self.workers)

    def state(self) -> dict[str, dict[int, tuple[int, int]]]:
        """The assignment as plain data for a recovery snapshot: {underlying: {expiry_ms: (slot, count)}}."""
        return {u: dict(e) for u, e in self._slots.items()}
