"""Vol at size in the chain (operators/state/chain.py, [chain] level_depth / sizes_contracts): after
every epoch, every published level vol and execution vol is within 1 bp of an exact solve of the
book as it stands — its best levels and its walks to size read afresh from the OrderBook by a
plain reference — whatever mix of level changes (at the touch, inside the ladder, beyond it),
snapshots, gaps, small forward moves, shocks and passing time came before. The chain is fed
listings and book snapshots and changes, as the connectors feed it. The ChainUpdates' sparse
ladders, replaced by instrument, stay the current ladders (to change_bp)."""

import math
from types import SimpleNamespace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import LADDER_MATRICES, BookUpdate, FeedError, FuturePrice, Instrument
from operators.kernels import iv
from operators.kernels.black import black_price
from operators.state.book import OrderBook
from operators.state.chain import MS_PER_YEAR, ChainLogic, ChainState, FitBudget
from tests.helpers.chain import Clock, chain_kwargs
from tests.operators.kernels.test_levels import walk_reference

BP = 1e-4
_SETTINGS = []


def settings_with(**over) -> dict:
    """graph.toml's chain settings (read once for the module: hypothesis runs hundreds of chains)."""
    if not _SETTINGS:
        _SETTINGS.append(chain_kwargs())
    return {**_SETTINGS[0], **over}


def by_book(ladders):
    """The columnar Ladders of a ChainUpdate as {instrument: {field: that book's entry}}."""
    if ladders is None:
        return {}
    cols = {f: getattr(ladders, f) for f in ladders.__struct_fields__ if f not in ("level_depth", "sizes_contracts", "v")}
    return {name: {f: _row(col[i]) if f in LADDER_MATRICES else col[i] for f, col in cols.items()}
            for i, name in enumerate(ladders.instrument)}


def _row(values: np.ndarray) -> tuple:
    """One book's row of a ladder matrix as the wire reads it: None for NaN."""
    return tuple(None if v != v else v for v in values.tolist())


def book(chain: ChainLogic, name: str) -> SimpleNamespace:
    """One of the chain's books as it stands: stale, instrument, and its levels as price → size."""
    store, row = chain.state.store, chain.state.book_slot[name]
    return SimpleNamespace(stale=bool(store.stale[row]), instrument=store.instruments[row],
                           bids=dict(store.side(row, 0)), asks=dict(store.side(row, 1)))


def reference_vols(chain: ChainLogic, t: float) -> np.ndarray:
    """(2, books, width): each book read afresh, each price solved exactly (NaN: none)."""
    s = chain.state
    depth, sizes = chain.level_depth, chain.sizes_contracts
    out = np.full((2, len(s.book_names), depth + len(sizes)), math.nan)
    for row, name in enumerate(s.book_names):
        b = book(chain, name)
        if b.stale:
            continue
        inst = b.instrument
        for j, side in enumerate((sorted(b.bids.items(), reverse=True), sorted(b.asks.items()))):
            prices = [px for px, _ in side[:depth]] + [math.nan] * max(0, depth - len(side))
            prices += [walk_reference(side, q) for q in sizes]
            out[j, row] = iv.implied_vol_coin(np.array(prices), s.forward, inst.strike, t, inst.option_type == "C")
    return out


ops = st.one_of(
    st.tuples(st.just("level"), st.integers(0, 10_000), st.integers(0, 11), st.floats(0.0, 8.0)),
    st.tuples(st.just("snapshot"), st.integers(0, 10_000), st.integers(0, 9), st.floats(-0.05, 0.05)),
    st.tuples(st.just("gap"), st.integers(0, 10_000), st.just(0), st.just(0.0)),
    st.tuples(st.just("drift"), st.floats(-2e-4, 2e-4), st.just(0), st.just(0.0)),
    st.tuples(st.just("move"), st.floats(-3e-3, 3e-3), st.just(0), st.just(0.0)),
    st.tuples(st.just("shock"), st.sampled_from([-0.05, -0.01, 0.01, 0.05]), st.just(0), st.just(0.0)),
    st.tuples(st.just("time"), st.integers(50, 3_600_000), st.just(0), st.just(0.0)),
)


@settings(max_examples=120, deadline=None)
@given(t_days=st.floats(0.5, 400), vol=st.floats(0.2, 1.5), n=st.integers(3, 12), depth=st.integers(0, 6),
       sizes=st.lists(st.floats(0.5, 30.0), max_size=3), stream=st.lists(ops, min_size=1, max_size=30))
def test_level_and_execution_vols_stay_within_1bp_of_exact(t_days, vol, n, depth, sizes, stream):
    if depth == 0 and not sizes:
        depth = 1
    t0 = 1_900_000_000_000
    expiry = t0 + int(t_days * 86_400_000)
    clock = Clock(t0)
    chain = ChainLogic(ChainState("deribit", "BTC", expiry), now_ms=clock,
                       **settings_with(fit_interval_ms=10**9, min_quotes=5, max_rel_spread=1.0, budget=FitBudget(1),
                                      level_depth=depth, sizes_contracts=sizes))
    forward = 60_000.0
    t = t_days / 365.0
    width = 3 * vol * math.sqrt(t) + 0.05
    strikes = [float(round(forward * math.exp(k))) for k in np.linspace(-width, width, n)]
    names = [f"{k}{cp}" for k in strikes for cp in "CP"]
    seq = dict.fromkeys(names, 1)
    mid = {}

    def fair(name, bump=0.0):
        strike, cp = float(name[:-1]), name[-1]
        return float(black_price(forward, strike, t, vol * (1 + bump), cp == "C")) / forward + 1e-4

    def level_px(name, j, i):  # bid (j = 0) or ask level i around the book's mid: never crossed
        return round(mid[name] * (1 - 0.01 * (i + 1)) if j == 0 else mid[name] * (1 + 0.01 * (i + 1)), 8)

    def snapshot(name, levels, bump=0.0):
        mid[name] = fair(name, bump)
        seq[name] += 1
        bids = tuple((level_px(name, 0, i), 1.0 + i) for i in range(levels))
        asks = tuple((level_px(name, 1, i), 2.0 + 0.5 * i) for i in range(levels))
        return BookUpdate("deribit", name, clock.ms, clock.ms, seq[name], None, "snapshot", bids, asks)

    def change(name, j, i, size):
        prev, seq[name] = seq[name], seq[name] + 1
        lv = ((level_px(name, j, i), size),)
        return BookUpdate("deribit", name, clock.ms, clock.ms, seq[name], prev, "change",
                          lv if j == 0 else (), lv if j == 1 else ())

    def future():
        return FuturePrice("deribit", "F", "BTC", expiry, clock.ms, clock.ms, forward, forward, forward)

    listing = [Instrument("deribit", name, "BTC", "option", expiry, float(name[:-1]), name[-1], 0.0001, 1.0, "BTC")
               for name in names]
    chain.on_items(listing + [snapshot(name, 6) for name in names] + [future()])
    ladders = {}
    for kind, a, b, c in stream:
        if kind == "level":
            name = names[a % len(names)]
            size = 0.0 if c < 2.0 else c  # a quarter of the changes delete a level
            chain.on_items([change(name, a % 2, b, size)])
        elif kind == "snapshot":
            chain.on_items([snapshot(names[a % len(names)], b, c)])
        elif kind == "gap":
            name = names[a % len(names)]
            chain.on_items([FeedError("deribit", "seq_gap", "test", clock.ms, name)])
        elif kind in ("drift", "move", "shock"):
            forward *= math.exp(a)
            chain.on_items([future()])
        else:
            clock.ms = min(clock.ms + a, expiry - 60_000)
        chain.state.ts_exchange_ms = clock.ms
        for _fit, update in chain.on_epoch():  # a fit's ChainUpdate carries the ladders changed since the last
            ladders.update(by_book(update.ladders))
        for lad in chain.take_between():  # and so do ladders taken between fits
            ladders.update(by_book(lad))
        t_now = (expiry - clock.ms) / MS_PER_YEAR
        published = chain.published_level_vols(t_now)
        exact = reference_vols(chain, t_now)
        both = np.isfinite(exact)
        assert np.array_equal(np.isfinite(published), both), (published, exact)
        err = np.abs(published[both] - exact[both])
        assert np.all(err <= 1 * BP), np.max(err) / BP
        # the sparse ladders, replaced by instrument, are the current ones (vols to change_bp)
        ladders.update(by_book(chain.take_ladders(t_now)))
        for row, name in enumerate(chain.state.book_names):
            lad = ladders.get(name)
            b = book(chain, name)
            if lad is None:
                assert b.stale
                continue
            assert lad["stale"] == b.stale
            if b.stale:
                continue
            pad = [None] * depth
            sides = (sorted(b.bids.items(), reverse=True)[:depth], sorted(b.asks.items())[:depth])
            assert (lad["bid_px"], lad["ask_px"]) == tuple(tuple(([px for px, _ in side] + pad)[:depth])
                                                           for side in sides)
            assert (lad["bid_size_contracts"], lad["ask_size_contracts"]) == tuple(
                tuple(([q for _, q in side] + pad)[:depth]) for side in sides)
            assert lad["instrument"] == name and lad["strike"] == b.instrument.strike
            for j, vols in ((0, lad["bid_iv"] + lad["bid_exec_iv"]), (1, lad["ask_iv"] + lad["ask_exec_iv"])):
                pub = published[j, row]
                sent = np.array([math.nan if v is None else v for v in vols])
                assert np.array_equal(np.isfinite(sent), np.isfinite(pub))
                ok = np.isfinite(pub)
                assert np.all(np.abs(sent[ok] - pub[ok]) <= chain.change_bp * BP * (1 + 1e-9))


def listed_books(expiry: int, t0: int, forward: float, strikes, levels: int) -> list:
    """Every call and put of `strikes` listed, each book a snapshot of `levels` levels a side
    (1 % apart, 1 contract each) around its Black price at 60 % vol, then the future."""
    items = []
    for k in strikes:
        for cp in "CP":
            p = float(black_price(forward, k, 0.25, 0.6, cp == "C")) / forward
            name = f"{k}{cp}"
            items += [Instrument("deribit", name, "BTC", "option", expiry, float(k), cp, 0.0001, 1.0, "BTC"),
                      BookUpdate("deribit", name, t0, t0, 1, None, "snapshot",
                                 tuple((p * (1 - 0.01 * i), 1.0) for i in range(1, levels + 1)),
                                 tuple((p * (1 + 0.01 * i), 1.0) for i in range(1, levels + 1)))]
    return items + [FuturePrice("deribit", "F", "BTC", expiry, t0, t0, forward, forward, forward)]


def test_a_change_beyond_the_ladder_solves_nothing_and_inside_it_only_its_book():
    t0 = 1_900_000_000_000
    expiry = t0 + int(0.25 * MS_PER_YEAR)
    clock = Clock(t0)
    chain = ChainLogic(ChainState("deribit", "BTC", expiry), now_ms=clock,
                       **settings_with(fit_interval_ms=10**9, budget=FitBudget(1), level_depth=3,
                                       sizes_contracts=[2.0], audit_every=1))
    forward = 61_000.0
    strikes = np.arange(50_000.0, 75_001.0, 2_500.0)
    chain.on_items(listed_books(expiry, t0, forward, strikes, 8))
    chain.on_epoch()
    books = len(strikes) * 2
    assert chain.counters["lv_full"] > 0 and chain.counters["lv_books"] == books

    def step(updates):
        before = dict(chain.counters)
        chain.on_items(updates)
        chain.on_epoch()
        return {k: chain.counters[k] - before[k] for k in ("lv_books", "lv_full", "lv_taylor", "lv_skipped")}

    name = f"{strikes[3]}C"
    b = book(chain, name)
    deep = min(b.bids)  # the 8th bid: the ladder reads 3 levels, the 2-contract walk 2
    assert step([BookUpdate("deribit", name, t0, t0, 2, 1, "change", ((deep, 5.0),), ())]) == \
        {"lv_books": 0, "lv_full": 0, "lv_taylor": 0, "lv_skipped": 0}
    second = sorted(b.bids, reverse=True)[1]
    # a level inside the ladder: that book is read again, only its changed prices are solved
    # (the 2nd level's size moves neither level vol, only the walk to 2 contracts)
    assert step([BookUpdate("deribit", name, t0, t0, 3, 2, "change", ((second, 0.5),), ())]) == \
        {"lv_books": 1, "lv_full": 1, "lv_taylor": 0, "lv_skipped": 0}
    # a small forward move: every level is skipped or stepped, none solved
    f = forward * (1 + 2e-5)
    moved = step([FuturePrice("deribit", "F", "BTC", expiry, t0, t0, f, f, f)])
    assert moved["lv_books"] == 0 and moved["lv_taylor"] + moved["lv_skipped"] > 0.9 * books * 2 * 4
    # the run-time audit (chain.audit_every) measured every epoch's level vols against an exact solve
    assert 0 < chain.counters["audit_level_max_err_bp"] <= 1.0
    assert chain.counters["audit_level_mismatch"] == 0
    assert chain.counters["audits"] == chain.epochs == 4  # every epoch audited, and counted (what the bench shows)


def test_a_silent_venue_withholds_its_ladders_in_the_consolidated_chain():
    from tests.helpers.chain import T0, listing, option_name, prices_coin, snapshot, ticker

    clock = Clock(T0)
    chain = ChainLogic(ChainState("all", "BTC", T0 + int(0.25 * MS_PER_YEAR)), now_ms=clock,
                       **settings_with(fit_interval_ms=200, budget=FitBudget(8), venue_stale_ms=1_000, level_depth=2,
                                       sizes_contracts=[0.5]))
    events = []
    for venue, prefix in (("deribit", "D"), ("okx", "O")):
        events += listing(venue, prefix)
        events += [snapshot(option_name(k, cp, prefix), bid, ask, venue=venue)
                   for (k, cp), (bid, ask) in prices_coin().items()]
    chain.on_items(events + [ticker()])
    (_fit, update), = chain.on_epoch()
    ladders = by_book(update.ladders)
    assert len(ladders) == len(chain.state.book_names) and not any(lad["stale"] for lad in ladders.values())
    okx = [row for row, name in enumerate(chain.state.book_names) if name.startswith("O-")]
    t = (chain.state.expiry_ms - T0) / MS_PER_YEAR
    assert np.isfinite(chain.published_level_vols(t)[:, okx, 0]).any()
    # okx goes silent: after venue_stale_ms its ladders are withheld (stale, no vols), deribit's stay
    clock.ms += 2_000
    chain.on_items([BookUpdate("deribit", "D-70000.0-C", T0 + 2_000, T0 + 2_000, 2, 1, "change", (), ())])
    assert chain.on_epoch() == []  # the same quotes from deribit: the smile stands, no fit — the ladders
    (between,) = chain.take_between()  # changed, so they are sent on their own
    ladders = by_book(between)
    assert {name for name, lad in ladders.items() if lad["stale"]} == {chain.state.book_names[r] for r in okx}
    vols = chain.published_level_vols((chain.state.expiry_ms - clock.ms) / MS_PER_YEAR)
    assert np.isnan(vols[:, okx]).all() and np.isfinite(np.delete(vols, okx, axis=1)[:, :, 0]).any()


def test_a_state_from_before_levels_resumes_with_them():
    """A ChainState pickled before the level fields and the BookStore existed — its books a dict
    of OrderBooks pickled as price → size dicts, rebuilt here as pickle would (__setstate__ with
    the old slots), its quote venues lists — resumes under level vols on: its books get rows with their levels, sequence
    numbers and staleness, and are read at the next epoch."""
    from tests.helpers.chain import T0, logic, quotes, ticker

    clock = Clock(T0)
    old = logic(clock)  # graph.toml: level vols off
    old.on_items(quotes() + [ticker()])
    old.on_epoch()
    state, store = old.state, old.state.store
    books = {}
    for name, row in state.book_slot.items():  # the old OrderBook's pickled slots
        ob = OrderBook.__new__(OrderBook)
        ob.__setstate__((None, {"instrument": store.instruments[row], "_bids": dict(store.side(row, 0)),
                                "_asks": dict(store.side(row, 1)), "_snap_bids": (), "_snap_asks": (),
                                "last_seq": int(store.last_seq[row]), "stale": bool(store.stale[row]),
                                "best_bid": store.best_bid(row), "best_ask": store.best_ask(row),
                                "levels_on": False, "ladder_dirty": False, "bid_floor": math.inf,
                                "ask_cap": -math.inf}))
        books[name] = ob
    fields = {n: v for n, v in vars(state).items()
              if not (n.startswith("lv_") or n in ("book_names", "book_slot", "store"))}
    venue_fields = ("call_bid_venue", "call_ask_venue", "put_bid_venue", "put_ask_venue")
    fields.update({n: list(fields[n]) for n in venue_fields})  # lists of str until 2026-12-07
    resumed = ChainState.__new__(ChainState)
    resumed.__setstate__({**fields, "books": books})
    for n in venue_fields:
        assert getattr(resumed, n).dtype == object and list(getattr(resumed, n)) == list(getattr(state, n)), n
    for name, row in resumed.book_slot.items():
        was = state.book_slot[name]
        assert resumed.store.side(row, 0) == store.side(was, 0) and resumed.store.side(row, 1) == store.side(was, 1)
        assert resumed.store.last_seq[row] == store.last_seq[was] and resumed.store.stale[row] == store.stale[was]
    chain = ChainLogic(resumed, now_ms=clock, **settings_with(budget=FitBudget(8), level_depth=2, sizes_contracts=[]))
    assert len(chain.state.book_names) == len(chain.state.store) == len(books)
    clock.ms += 100
    chain.on_epoch()
    t = (chain.state.expiry_ms - clock.ms) / MS_PER_YEAR
    vols = chain.published_level_vols(t)
    assert vols.shape == (2, len(books), 2) and np.isfinite(vols[:, :, 0]).all()
    exact = chain.exact_level_vols(t)
    assert np.nanmax(np.abs(vols - exact)) <= BP


def test_ladders_that_move_between_fits_are_sent_on_their_own_at_most_once_per_fit_interval():
    """The touch stands still while a level inside the ladder changes: no refit, yet that book's
    ladder is sent alone (take_between) once fit_interval_ms has passed since ladders were last
    sent, and the chain says work is owed (pending) until then; nothing else is sent."""
    t0 = 1_900_000_000_000
    expiry = t0 + int(0.25 * MS_PER_YEAR)
    clock = Clock(t0)
    chain = ChainLogic(ChainState("deribit", "BTC", expiry), now_ms=clock,
                       **settings_with(fit_interval_ms=1_000, budget=FitBudget(8), level_depth=3, sizes_contracts=[]))
    chain.on_items(listed_books(expiry, t0, 61_000.0, np.arange(50_000.0, 75_001.0, 2_500.0), 5))
    fits = chain.on_epoch()
    assert len(fits) == 1 and len(fits[0][1].ladders.instrument) == len(chain.state.book_names)  # all, at the first fit
    assert chain.take_between() == [] and not chain.pending()
    name = "60000.0C"
    second = sorted(book(chain, name).bids, reverse=True)[1]
    chain.on_items([BookUpdate("deribit", name, t0, t0, 2, 1, "change", ((second, 7.0),), ())])
    clock.ms += 100
    assert chain.on_epoch() == [] and chain.take_between() == []  # within the fit interval: owed
    assert chain.pending()
    clock.ms = t0 + 1_000
    assert chain.on_epoch() == []  # the touch did not move: no refit
    (lad,) = chain.take_between()
    assert lad.instrument == (name,) and lad.bid_size_contracts[0][1] == 7.0
    assert not chain.pending()
    clock.ms += 1_000
    assert chain.on_epoch() == [] and chain.take_between() == []  # nothing moved since
