"""flows/routing.py with market-event storage on (graph.toml [sinks.postgres] market_events): each
source batch gives one MarketEvents item per surface holding every event the batch routed, once —
not the combined surface's copies, the batch's index price of that surface last — beside the
ChainBatches, which are the same as with storage off."""

from __future__ import annotations

from bytewax.testing import TestingSource

from flows.routing import BatchingSource, MarketEvents
from operators.events import BookUpdate, IndexPrice, Instrument
from operators.items import ChainBatch

E1, E2 = 1_767_600_000_000, 1_768_200_000_000  # two expiries


def option(venue: str, name: str, expiry_ms: int) -> Instrument:
    return Instrument(venue, name, "BTC", "option", expiry_ms, 90_000.0, "C", 0.0005, 1.0, "BTC", 1)


def book(venue: str, name: str, ts: int) -> BookUpdate:
    return BookUpdate(venue, name, ts, ts, ts, None, "snapshot", ((0.01, 1.0),), ((0.02, 1.0),))


def run(events, *, market: bool, consolidate: bool = True) -> list:
    source = BatchingSource(TestingSource(events, batch_size=len(events)), interval_ms=10**9, consolidate=consolidate,
                            now_ms=lambda: 0, index_venue="deribit", market=market)
    return source.build_part("feed", source.list_parts()[0], None).next_batch()


def test_a_batch_gives_one_item_per_surface_with_every_routed_event_once():
    d1, d2, o1 = option("deribit", "D1", E1), option("deribit", "D2", E2), option("okx", "O1", E1)
    books = [book("deribit", "D1", 2), book("okx", "O1", 3), book("deribit", "D2", 4), book("deribit", "D1", 5)]
    unknown = book("deribit", "NOPE", 6)  # routed nowhere: the flow never sees it, nor is it stored
    index = [IndexPrice("deribit", "BTC", 7, 7, 90_000.0), IndexPrice("deribit", "BTC", 8, 8, 90_001.0),
             IndexPrice("okx", "BTC", 9, 9, 90_002.0)]
    events = [d1, d2, o1, *books, unknown, *index]
    out = run(events, market=True)
    stored = {item[0]: item[1] for item in out if type(item) is MarketEvents}
    assert sorted(stored) == ["deribit|BTC", "okx|BTC"]  # no item for the combined surface ("all|BTC")
    # per expiry in the order read, each event once; the batch's newest index price last
    assert stored["deribit|BTC"] == [d1, books[0], books[3], d2, books[2], index[1]]
    assert stored["okx|BTC"] == [o1, books[1], index[2]]
    # the ChainBatches are those of storage off (the combined surface's included)
    batches = lambda items: [(b.key, b.events) for b in items if type(b) is ChainBatch]  # noqa: E731
    assert batches(out) == batches(run(events, market=False))
    assert any(key.startswith("all|") for key, _ in batches(out))
    assert not [x for x in run(events, market=False) if type(x) is MarketEvents]


def test_books_in_columns_reach_each_chain_as_one_batch_and_are_stored_as_updates():
    """A replay's BookBatches (operators/events.py): with storage off, runs with only order-free
    events between are joined and split by expiry — one BookBatch per chain key holding its rows
    in order; with storage on each run is routed on its own and stored as its BookUpdates, each
    instrument's in the order read. Books never listed are counted, not routed."""
    from flows.metrics import COUNTERS
    from operators.events import BookBatch, Ticker, expand_books

    d1, d2 = option("deribit", "D1", E1), option("deribit", "D2", E2)
    ticker = Ticker("deribit", "D1", 3, 3, underlying_px=90_100.0)
    run1 = [book("deribit", "D1", 2), book("deribit", "D2", 3), book("deribit", "NOPE", 3)]
    run2 = [book("deribit", "D2", 4), book("deribit", "D1", 5)]
    events = [d1, d2, BookBatch.of(run1), ticker, BookBatch.of(run2)]
    before = COUNTERS.snapshot()
    out = run(events, market=False)
    after = COUNTERS.snapshot()
    assert after["messages_in"] - before.get("messages_in", 0) == 2 + 3 + 1 + 2  # a BookBatch counts its rows
    assert after["errors.unknown_instrument"] - before.get("errors.unknown_instrument", 0) == 1
    chains = {b.key: b.events for b in out if type(b) is ChainBatch and b.key.startswith("deribit|")}
    for key, listing, rows in ((f"deribit|BTC|{E1}", d1, [run1[0], run2[1]]), (f"deribit|BTC|{E2}", d2,
                                                                                 [run1[1], run2[0]])):
        got = chains[key]
        assert got[0] == listing and [type(e) for e in got[1:]].count(BookBatch) == 1
        assert [e for e in expand_books(got[1:]) if type(e) is BookUpdate] == rows
    assert ticker in chains[f"deribit|BTC|{E1}"]
    stored = {item[0]: item[1] for item in run(events, market=True) if type(item) is MarketEvents}
    assert stored["deribit|BTC"] == [d1, run1[0], ticker, run2[1], d2, run1[1], run2[0]]
