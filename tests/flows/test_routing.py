"""flows/routing.py: the combined surface (venue "all") takes one venue's index price —
graph.toml consolidation.index_venue — so its index never jumps between the venues' indices
(both interleaved made it jump by > 5 bp ~100 times per 10 s); and a config naming a venue
that is not enabled is refused with the fix."""

from __future__ import annotations

import pytest
from bytewax.testing import TestingSource

from flows.config import ConfigError, load_config
from flows.routing import BatchingSource
from operators.events import CONSOLIDATED, IndexPrice


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
