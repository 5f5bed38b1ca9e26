"""flows/routing.py: the combined surface (venue "all") takes one venue's index price —
graph.toml consolidation.index_venue — so its index never jumps between the venues' indices
(both interleaved made it jump by > 5 bp ~100 times per 10 s); a config naming a venue that
is not enabled is refused with the fix; a partition of a worker slot keys its chains to run
on that slot's worker."""

from __future__ import annotations

import pytest
from bytewax.testing import TestingSource

from flows.config import ConfigError, load_config
from flows.routing import BatchingSource
from connectors.venues.placement import worker_of
from operators.events import CONSOLIDATED, BookUpdate, IndexPrice, Instrument, split_chain_key
from operators.items import ChainBatch


def batch(events, *, consolidate=True, index_venue="deribit"):
    source = BatchingSource(TestingSource(events, batch_size=len(events)), interval_ms=10**9,
                            consolidate=consolidate, now_ms=lambda: 0, index_venue=index_venue)
    part = source.build_part("feed", source.list_parts()[0], None)
    return [e for e in part.next_batch() if isinstance(e, IndexPrice)]


def test_the_combined_surface_takes_only_the_index_venues_index():
    events = [IndexPrice("deribit", "BTC", 1, 1, 90_000.0), IndexPrice("okx", "BTC", 2, 2, 90_050.0),
              IndexPrice("okx", "ETH", 2, 2, 3_000.0), IndexPrice("deribit", "ETH", 3, 3, 3_001.0)]
    out = batch(events)
    combined = [(e.underlying, e.price) for e in out if e.venue == CONSOLIDATED]
    assert sorted(combined) == [("BTC", 90_000.0), ("ETH", 3_001.0)]
    # each venue's own surface still gets its own index
    assert sorted((e.venue, e.underlying) for e in out if e.venue != CONSOLIDATED) == [
        ("deribit", "BTC"), ("deribit", "ETH"), ("okx", "BTC"), ("okx", "ETH")]
    okx_led = batch(events, index_venue="okx")
    assert sorted((e.underlying, e.price) for e in okx_led if e.venue == CONSOLIDATED) == [
        ("BTC", 90_050.0), ("ETH", 3_000.0)]
    assert not [e for e in batch(events, consolidate=False) if e.venue == CONSOLIDATED]


def test_an_index_venue_that_is_not_enabled_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "graph.toml"
    path.write_text('[consolidation]\nindex_venue = "kraken"\n')
    with pytest.raises(ConfigError, match=r"consolidation.index_venue = 'kraken' is not an enabled venue "
                                          r"\(deribit, okx\); name one of them"):
        load_config(path)
    path.write_text('[consolidation]\nindex_venue = "okx"\n\n[sources.okx]\nenabled = false\n')
    assert load_config(path).consolidation.index_venue == "okx"  # one venue: no combined surface to lead


class _Named(TestingSource):
    """A TestingSource whose one partition has a worker slot's name."""

    def __init__(self, events, name):
        super().__init__(events, batch_size=len(events))
        self.name = name

    def list_parts(self):
        return [self.name]

    def build_part(self, step_id, for_part, resume_state):
        return super().build_part(step_id, super().list_parts()[0], resume_state)


@pytest.mark.parametrize("slot", [0, 1, 2])
def test_a_slot_partition_keys_its_chains_to_its_own_worker(slot):
    expiries = [1767686400000 + d * 86_400_000 for d in range(12)]
    events = [Instrument("deribit", f"BTC-{d}-C", "BTC", "option", e, 100_000.0, "C") for d, e in enumerate(expiries)]
    events += [Instrument("deribit", "BTC-PERPETUAL-X", "BTC", "option", 0, 100_000.0, "C")]
    events += [BookUpdate("deribit", f"BTC-{d}-C", 1, 1, 1, None, "snapshot", ((0.1, 1.0),), ((0.2, 1.0),))
               for d in range(12)]
    source = BatchingSource(_Named(events, f"deribit-BTC.w{slot}of3"), interval_ms=10**9, consolidate=True,
                            now_ms=lambda: 0, index_venue="deribit")
    part = source.build_part("feed", f"deribit-BTC.w{slot}of3", None)
    keys = [b.key for b in part.next_batch() if isinstance(b, ChainBatch)]
    venue_keys = [k for k in keys if k.startswith("deribit|") and not k.endswith("|0")]
    assert len(venue_keys) == 12 and all(worker_of(k, 3) == slot for k in venue_keys)
    assert sorted(split_chain_key(k)[2] for k in venue_keys) == expiries
    # the combined surface's keys and the perpetual's stay as bytewax hashes them
    assert "deribit|BTC|0" in keys and sum(k.startswith(CONSOLIDATED + "|") for k in keys) == 13
    assert not [k for k in keys if k.startswith(CONSOLIDATED + "|") and "#" in k]
