"""Which worker runs a key, so that a source partition can read only the instruments whose
chain state lives on its own worker: no book event then crosses between processes.

bytewax 0.21.1 (its last release, so these rules are fixed for us):
- a stateful step sends key K to worker `h(K) mod W` of its W workers, h being Rust's
  DefaultHasher — SipHash-1-3 with a zero key — over K's UTF-8 bytes and a 0xff terminator
  (Rust's `Hash for str`);
- a FixedPartitionedSource's partitions, taken in sorted order, each go to the worker with
  the fewest so far, ties to the lowest index: a source whose partitions come in groups of W
  slots named in slot order (`slot_names`) has slot k of every group read on worker k.
tests/connectors/venues/test_placement.py checks both rules against real bytewax runs. A wrong worker count
costs locality only, never correctness: bytewax still routes every key where it belongs.
"""

from __future__ import annotations

from typing import Optional

from siphash24 import siphash13

from operators.events import chain_key

_ZERO_KEY = bytes(16)


def worker_of(key: str, workers: int) -> int:
    """The worker (0 … workers−1) bytewax runs this key's stateful step on."""
    if workers < 1:
        raise ValueError(f"workers={workers}: a cluster has at least one worker")
    digest = siphash13(key.encode("utf-8") + b"\xff", key=_ZERO_KEY).digest()
    return int.from_bytes(digest, "little") % workers


def expiry_slot(venue: str, underlying: str, expiry_ms: int, workers: int) -> Optional[int]:
    """The worker slot that reads an expiry's instruments: the worker its chain key runs on;
    None for what every slot reads (a perpetual, expiry 0) or when there is one worker."""
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
