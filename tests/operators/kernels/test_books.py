"""The compiled book apply (operators/kernels/books.py through BookStore): a batch over many
books equals the same updates applied one at a time by OrderBook (the other implementation of the
same rules, operators/state/book.py), in state, errors and touched rows, and both equal a plain
dict model of the rules."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import BookUpdate
from operators.kernels.books import NO_SEQ
from operators.state.book import BookStore, OrderBook

NAMES = ("A", "B", "C")
prices = st.sampled_from([round(0.01 + 0.0005 * i, 4) for i in range(24)])
sizes = st.sampled_from([0.0, 0.5, 1.0, 3.0])
levels = st.lists(st.tuples(prices, sizes), max_size=6)
# (book, kind, bids, asks, seq jump): jump 1 chains, 2 skips one (a gap)
updates = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["snapshot", "change", "change", "change"]),
                             levels, levels, st.sampled_from([1, 1, 1, 2])), max_size=40)


def stream(spec):
    seq = dict.fromkeys(range(3), 0)
    out = []
    for row, kind, bids, asks, jump in spec:
        prev = seq[row]
        seq[row] += jump
        if kind == "snapshot":  # a venue's snapshot names a price once per side
            bids, asks = dict(bids).items(), dict(asks).items()
        out.append(BookUpdate("deribit", NAMES[row], seq[row], seq[row], seq[row],
                              None if kind == "snapshot" else prev, kind, tuple(bids), tuple(asks)))
    return out


class Model:
    """The rules as plain Python: dicts per side, the last seq, stale."""

    def __init__(self):
        self.bids, self.asks, self.seq, self.stale = {}, {}, None, True

    def apply(self, u):
        if u.kind == "snapshot":
            self.bids = {p: q for p, q in u.bids if q > 0}
            self.asks = {p: q for p, q in u.asks if q > 0}
            self.seq, self.stale = u.seq, False
        else:
            if self.seq is None or u.prev_seq != self.seq:
                was, self.stale = self.stale, True
                return None if was else "seq_gap"
            for side, lv in ((self.bids, u.bids), (self.asks, u.asks)):
                for p, q in lv:
                    if q > 0:
                        side[p] = q
                    else:
                        side.pop(p, None)
            self.seq = u.seq
        if self.bids and self.asks and max(self.bids) >= min(self.asks):
            self.stale = True
            return "crossed_book"
        return None

    def touch(self):
        return (max(self.bids) if self.bids else math.nan, min(self.asks) if self.asks else math.nan, self.stale)


def state(store: BookStore, row: int):
    return (store.side(row, 0), store.side(row, 1), int(store.last_seq[row]), bool(store.stale[row]))


def book_state(book: OrderBook):
    bids, asks = book.sides()
    return (bids, asks, NO_SEQ if book.last_seq is None else book.last_seq, book.stale)


def same_touch(a, b):
    return all(x == y or (x != x and y != y) for x, y in zip(a, b))


# books deeper than a new store's 16 levels a side: the store widens mid-run, when one batch could
# (the kernel's cheap bound), or does (the exact bound per book), overflow a side
wide_prices = st.sampled_from([round(0.01 + 0.0005 * i, 4) for i in range(120)])
wide_levels = st.lists(st.tuples(wide_prices, st.sampled_from([0.5, 1.0, 3.0, 0.0])), max_size=30)
wide_updates = st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["snapshot", "change", "change", "change"]),
                                  wide_levels, wide_levels, st.sampled_from([1, 1, 1, 2])), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.one_of(updates, wide_updates), st.lists(st.integers(1, 8), min_size=1, max_size=10))
def test_a_batch_equals_one_at_a_time_and_the_dict_model(spec, cuts):
    ups = stream(spec)
    batched, single = BookStore(), [OrderBook() for _ in NAMES]
    models = [Model() for _ in NAMES]
    for name in NAMES:
        batched.add(None)
    i = j = 0
    while i < len(ups):
        part = ups[i:i + cuts[j % len(cuts)]]
        rows = [NAMES.index(u.instrument) for u in part]
        before = [m.touch() for m in models]
        errors, touched = batched.apply(part, rows)
        want = []
        for u, r in zip(part, rows):
            reason = models[r].apply(u)
            if reason:
                want.append((u.instrument, reason))
            e1 = single[r].apply(u)
            assert (None if e1 is None else e1.reason) == reason
        assert [(e.instrument, e.reason) for e in errors] == want
        assert sorted(touched.tolist()) == sorted(r for r in set(rows) if not same_touch(before[r], models[r].touch()))
        i += len(part)
        j += 1
    for r, m in enumerate(models):
        assert state(batched, r) == book_state(single[r])
        bids, asks, _, stale = state(batched, r)
        assert bids == sorted(m.bids.items(), reverse=True) and asks == sorted(m.asks.items())
        assert stale == m.stale


def test_a_gap_and_a_crossing_say_what_the_book_held():
    store = BookStore()
    store.add(None)
    snap = BookUpdate("deribit", "A", 1, 1, 5, None, "snapshot", ((0.01, 1.0),), ((0.02, 1.0),))
    gap = BookUpdate("deribit", "A", 2, 2, 9, 7, "change", ((0.011, 1.0),), ())
    errors, touched = store.apply([snap, gap], [0, 0])
    assert [(e.reason, e.detail) for e in errors] == [("seq_gap", "prev_seq 7 != last seq 5")]
    assert touched.tolist() == [0]
    cross = BookUpdate("deribit", "A", 3, 3, 10, None, "snapshot", ((0.03, 1.0),), ((0.02, 1.0),))
    errors, _ = store.apply([cross], [0])
    assert [(e.reason, e.detail) for e in errors] == [("crossed_book", "best bid 0.03 >= best ask 0.02")]


def test_ladder_flags_follow_the_levels_a_read_depended_on():
    """reach = 2 on the bids: a change at the 1st or 2nd bid raises the flag, the 3rd does not;
    with level vols off (reach 0, levels_on False) nothing does, not even a snapshot."""
    store = BookStore(levels_on=True)
    store.add(None)
    snap = BookUpdate("deribit", "A", 1, 1, 1, None, "snapshot", ((0.03, 1.0), (0.02, 1.0), (0.01, 1.0)),
                      ((0.05, 1.0),))
    store.apply([snap], [0])
    assert store.ladder[0]
    store.ladder[0], store.reach[:, 0] = False, 2
    store.apply([BookUpdate("deribit", "A", 2, 2, 2, 1, "change", ((0.01, 4.0),), ())], [0])
    assert not store.ladder[0]
    store.apply([BookUpdate("deribit", "A", 3, 3, 3, 2, "change", ((0.025, 4.0),), ())], [0])  # enters 2nd place
    assert store.ladder[0]
    off = BookStore()
    off.add(None)
    off.apply([snap], [0])
    assert not off.ladder.any()


def test_a_full_side_widens_the_store_before_one_more_level():
    """Asks at exactly the store's width, bids empty, and a change adding one ask: the store
    widens first (a side overflowing in place would write over the next book's levels)."""
    store = BookStore()
    for _ in NAMES:
        store.add(None)
    width = store.px.shape[2]
    asks = tuple((round(0.02 + 0.001 * i, 4), 1.0) for i in range(width))
    neighbour = BookUpdate("deribit", "B", 1, 1, 1, None, "snapshot", ((0.005, 2.0),), ((0.5, 2.0),))
    full = BookUpdate("deribit", "A", 1, 1, 1, None, "snapshot", (), asks)
    store.apply([neighbour, full], [1, 0])
    one_more = BookUpdate("deribit", "A", 2, 2, 2, 1, "change", (), ((0.9, 1.0),))
    errors, _ = store.apply([one_more], [0])
    assert errors == [] and store.px.shape[2] > width
    assert store.side(0, 1) == list(asks) + [(0.9, 1.0)] and store.side(0, 0) == []
    assert store.side(1, 0) == [(0.005, 2.0)] and store.side(1, 1) == [(0.5, 2.0)]
