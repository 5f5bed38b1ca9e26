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

Every slot's client places the listing by itself, with nothing sent between slots, so each
decision is a function of what every slot sees alike — whenever its discoveries happen:
- the order of placing is the venue's listing order (`Instrument.listed_ms`: Deribit's
  `creation_timestamp`, OKX's `listTime`), then expiry; never the order discoveries found them;
- a fresh start places, longest first, the expiries listed by the start of its round
  (`ROUND_MS`, rounds from hh:30, so that both slots' first discoveries fall in one round
  and no 08:00 expiry or listing falls between them), each weighed by its options listed by
  then;
- a later listing goes to the slot least loaded *at its listing time*: by the expiries live
  then (expired ones are remembered `GRACE_MS` for it), each weighed by its options listed
  within `SETTLE_MS` of its own listing and not after the new one's;
- an expiry whose end falls within the fresh start's round (gone before a later slot may see
  it) is placed by the hash fallback and weighs nothing.
The one case left (2026-12-07): two slots whose first discoveries straddle a round boundary,
with a listing or an option's delisting between them, can place a chain twice; with a
second's skew between slots that is about one fresh start in 3,600, and a restart without
recovery places everything again
(tests/connectors/venues/test_placement.py, the agreement property, draws everything else).

Never imports a venue package, the flow, or anything about volatility.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Mapping, Optional

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


# A fresh start's round: both slots' first discoveries fall in one (they start together, seconds
# apart at most), and its boundaries sit at hh:30, away from the venues' 08:00 expiries and
# listings. An expiry ending within the round is placed by the hash (a slot starting later in
# the round never sees it).
ROUND_MS = 3_600_000
ROUND_OFFSET_MS = 1_800_000
# A new expiry's strikes are listed in one burst; its weight counts the options listed within
# this much of its first, so a slot that discovered it mid-burst weighs it as the others do.
SETTLE_MS = 60_000
# Expired placements are remembered this long: a listing discovered late (a slot reconnecting)
# is weighed against the expiries live at its listing, as the slot that saw it at once did.
GRACE_MS = 86_400_000


class Placement:
    """Each underlying's expiries → worker slots, even by option count, live ones never moved,
    and the same on every slot whatever moments its discoveries see the listing at.

    assign(underlying, options, now_ms) with options [(expiry_ms, listed_ms)] (one pair per
    listed option) places what is new; slot_of(venue, underlying, expiry_ms) answers for any
    expiry (None: every slot reads it). state() / Placement(workers, state) round-trip the
    assignment through recovery snapshots. `cap`: the most options of an expiry a slot reads
    (the source's max_strikes × 2), so a weight counts what is read."""

    def __init__(self, workers: int, state: Optional[Mapping[str, Any]] = None, cap: Optional[int] = None):
        if workers < 1:
            raise ValueError(f"workers={workers}: a cluster has at least one worker")
        self.workers = workers
        self.cap = cap
        self._round: dict[str, int] = {}  # underlying → its fresh start's round (start, ms)
        # underlying → {expiry_ms: (slot, listed_ms, ((listed_ms, options listed by then), …))}
        self._slots: dict[str, dict[int, tuple[int, int, tuple[tuple[int, int], ...]]]] = {}
        for underlying, saved in (state or {}).items():
            if "expiries" not in saved:  # a snapshot from before listing order: {expiry: (slot, count)}
                saved = {"round_ms": 0, "expiries": {e: (s, 0, ((0, n),)) for e, (s, n) in saved.items()}}
            self._round[underlying] = int(saved["round_ms"])
            placed = self._slots[underlying] = {}
            for expiry, (slot, listed, counts) in saved["expiries"].items():
                if not 0 <= int(slot) < workers:
                    raise ValueError(f"recovered placement {underlying} {expiry}: slot {slot} is not one of 0 … "
                                     f"{workers - 1}; was the flow resumed with another worker count?")
                placed[int(expiry)] = (int(slot), int(listed), tuple((int(t), int(n)) for t, n in counts))

    @staticmethod
    def round_of(now_ms: int) -> int:
        """The start of the fresh-start round holding `now_ms`."""
        return (now_ms - ROUND_OFFSET_MS) // ROUND_MS * ROUND_MS + ROUND_OFFSET_MS

    def assign(self, underlying: str, options: Iterable[tuple[int, int]], now_ms: int) -> dict[int, int]:
        """Places the new expiries of a discovery's listing ([(expiry_ms, listed_ms)], one pair per
        option; listed_ms 0 when the venue gives none: taken as listed before the round on a fresh
        start, else as now) and forgets those expired
        `GRACE_MS` ago; returns {expiry_ms: slot} of every live placed expiry. Expiry 0
        (perpetuals, read by every slot) is never placed."""
        if self.workers <= 1:
            return {}
        fresh = underlying not in self._round
        start = self._round.setdefault(underlying, self.round_of(now_ms))
        unknown = start if fresh else now_ms  # no listing time: listed before the start, or now
        listing: dict[int, list[int]] = {}
        for expiry, listed in options:
            if expiry > now_ms:
                listing.setdefault(expiry, []).append(listed or unknown)
        placed = {e: v for e, v in self._slots.get(underlying, {}).items() if e > now_ms - GRACE_MS}
        for expiry, (slot, listed, counts) in list(placed.items()):
            if listed > start and expiry in listing:  # a later listing's settle window, as this discovery sees it
                seen = self._counts(listing[expiry], listed, start)
                if seen and (not counts or seen[-1][1] > counts[-1][1]):  # a delisted option takes nothing back
                    placed[expiry] = (slot, listed, seen)
        new = [(min(times), e) for e, times in listing.items() if e not in placed and e > start + ROUND_MS]
        if fresh:  # longest first, by the options listed when the round began
            first = [(listed, e, self._counts(listing[e], listed, start)) for listed, e in new if listed <= start]
            for listed, expiry, counts in sorted(first, key=lambda f: (-self._weight(f[2], start), f[1])):
                placed[expiry] = (self._least_loaded(placed, start), listed, counts)
        for listed, expiry in sorted(le for le in new if le[1] not in placed):
            placed[expiry] = (self._least_loaded(placed, listed), listed, self._counts(listing[expiry], listed, start))
        self._slots[underlying] = placed
        return {e: s for e, (s, _, _) in placed.items() if e > now_ms}

    def _counts(self, times: list[int], listed: int, start: int) -> tuple[tuple[int, int], ...]:
        """(listed_ms, options listed by then) of an expiry's options up to the end of its settle
        window (for an expiry of the fresh start: up to the round's start)."""
        end = start if listed <= start else listed + SETTLE_MS
        out: list[tuple[int, int]] = []
        for n, t in enumerate(sorted(t for t in times if t <= end), 1):
            if out and out[-1][0] == t:
                out[-1] = (t, n)
            else:
                out.append((t, n))
        return tuple(out)

    def _weight(self, counts: tuple[tuple[int, int], ...], by_ms: int) -> int:
        n = 0
        for t, k in counts:
            if t > by_ms:
                break
            n = k
        return n if self.cap is None else min(n, self.cap)

    def _least_loaded(self, placed: Mapping[int, tuple[int, int, tuple]], at_ms: int) -> int:
        """The slot with the least weight of expiries live at `at_ms` (each weighed by its options
        listed by then, within its settle window), ties to fewer expiries, then the lower slot."""
        load = [0] * self.workers
        held = [0] * self.workers
        for expiry, (slot, _, counts) in placed.items():
            if expiry > at_ms:
                load[slot] += self._weight(counts, at_ms)
                held[slot] += 1
        return min(range(self.workers), key=lambda k: (load[k], held[k], k))

    def placed(self, underlying: str) -> dict[int, int]:
        """{expiry_ms: slot} of the underlying's placed expiries (expired ones still remembered too)."""
        return {e: s for e, (s, _, _) in self._slots.get(underlying, {}).items()}

    def weights(self, underlying: str) -> dict[int, int]:
        """{expiry_ms: the options it weighs} of the underlying's placed expiries."""
        return {e: self._weight(c, 1 << 62) for e, (_, _, c) in self._slots.get(underlying, {}).items()}

    def slot_of(self, venue: str, underlying: str, expiry_ms: int) -> Optional[int]:
        """The slot that reads this expiry: its placed slot, else the hash fallback
        (`expiry_slot`); None for what every slot reads."""
        if self.workers <= 1 or expiry_ms == 0:
            return None
        entry = self._slots.get(underlying, {}).get(expiry_ms)
        return entry[0] if entry is not None else expiry_slot(venue, underlying, expiry_ms, self.workers)

    def state(self) -> dict[str, dict[str, Any]]:
        """The assignment as plain data for a recovery snapshot:
        {underlying: {"round_ms": start, "expiries": {expiry_ms: (slot, listed_ms, counts)}}}."""
        return {u: {"round_ms": self._round.get(u, 0), "expiries": dict(e)} for u, e in self._slots.items()}
