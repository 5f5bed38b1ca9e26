"""Order book: snapshot + chained changes equal a plain dict model; gaps and crossings go stale."""

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.state.book import OrderBook
from operators.events import BookUpdate, FeedError, Instrument

EXPIRY = 1_800_000_000_000
INST = Instrument("deribit", "BTC-1JAN27-50000-C", "BTC", "option", EXPIRY, 50000.0, "C", 0.0001, 1.0, "BTC")

prices = st.sampled_from([round(0.01 + 0.0005 * i, 4) for i in range(20)])
sizes = st.sampled_from([0.0, 0.1, 1.0, 2.5, 10.0])


def update(seq, prev, kind="change", bids=(), asks=()):
    return BookUpdate("deribit", INST.instrument, 1000 + seq, 1001 + seq, seq, prev, kind, tuple(bids), tuple(asks))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(prices, sizes), max_size=8), st.lists(st.tuples(prices, sizes), max_size=8),
       st.lists(st.tuples(st.booleans(), prices, sizes), max_size=30))
def test_book_matches_dict_model(snap_bids, snap_asks, changes):
    # keep bids below asks so the model never crosses: bids < 0.02, asks ≥ 0.02
    snap_bids = [(p, s) for p, s in snap_bids if p < 0.02]
    snap_asks = [(p, s) for p, s in snap_asks if p >= 0.02]
    book = OrderBook(INST)
    assert book.apply(update(10, None, "snapshot", snap_bids, snap_asks)) is None
    model_b = {p: s for p, s in snap_bids if s > 0}
    model_a = {p: s for p, s in snap_asks if s > 0}
    seq = 10
    for is_bid, p, s in changes:
        if (is_bid and p >= 0.02) or (not is_bid and p < 0.02):
            continue
        model = model_b if is_bid else model_a
        if s > 0:
            model[p] = s
        else:
            model.pop(p, None)
        assert book.apply(update(seq + 3, seq, bids=[(p, s)] if is_bid else [], asks=[] if is_bid else [(p, s)])) is None
        seq += 3
    assert book.bids == model_b and book.asks == model_a
    bids, asks = book.top(5)
    assert bids == tuple(sorted(model_b.items(), reverse=True)[:5])
    assert asks == tuple(sorted(model_a.items())[:5])
    assert not book.stale


def test_gap_marks_stale_once_until_fresh_snapshot():
    book = OrderBook(INST)
    book.apply(update(1, None, "snapshot", [(0.01, 1.0)], [(0.02, 1.0)]))
    err = book.apply(update(3, 2, bids=[(0.011, 1.0)]))  # prev 2 != last 1
    assert isinstance(err, FeedError) and err.reason == "seq_gap" and book.stale
    assert book.apply(update(4, 3, bids=[(0.012, 1.0)])) is None  # one error per gap
    assert book.stale
    assert 0.011 not in book.bids  # changes after a gap are not applied
    book.apply(update(9, None, "snapshot", [(0.013, 2.0)], [(0.02, 1.0)]))
    assert not book.stale and book.bids == {0.013: 2.0}


def test_crossed_book_is_stale_and_reported():
    book = OrderBook(INST)
    err = book.apply(update(1, None, "snapshot", [(0.03, 1.0)], [(0.02, 1.0)]))
    assert err.reason == "crossed_book" and book.stale


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), prices, sizes), max_size=40))
def test_best_prices_track_the_levels(changes):
    book = OrderBook(INST)
    book.apply(update(1, None, "snapshot", [], []))
    seq = 1
    for is_bid, p, s in changes:
        side = [(p, s)]
        err = book.apply(update(seq + 1, seq, bids=side if is_bid else [], asks=[] if is_bid else side))
        seq += 1
        if err is not None:  # crossed: a fresh snapshot restores a clean book
            book.apply(update(seq + 1, None, "snapshot", [], []))
            seq += 1
            continue
        assert (book.best_bid == max(book.bids)) if book.bids else book.best_bid != book.best_bid
        assert (book.best_ask == min(book.asks)) if book.asks else book.best_ask != book.best_ask
