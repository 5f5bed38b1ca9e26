"""Chain step logic with an injected clock, fed what production feeds it (Instrument listings,
BookUpdate snapshots, gaps, tickers, index prices): books mark dirty, epochs solve and fit,
the fit interval and the per-epoch budget hold, stale books are withheld, and every strike
quotes its books' best fresh prices (a property over random streams)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from operators.events import BookBatch, BookUpdate, FeedError
from operators.kernels.svi import total_variance
from operators.state import chain as chain_module
from operators.state.chain import ChainLogic, ChainState, FitBudget
from tests.helpers.chain import (EXPIRY, chain_kwargs, FORWARD, STRIKES, T0, TRUE, Clock, listing, logic, option_name, prices_coin,
                                 quotes, snapshot, ticker)


def test_epoch_solves_and_fits_close_to_the_true_smile():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [ticker()])
    assert chain.pending()
    out = chain.on_epoch()
    assert len(out) == 1
    fit, update = out[0]
    assert fit.forward == pytest.approx(FORWARD, rel=1e-4)
    assert fit.butterfly_ok and fit.n_quotes == len(STRIKES)
    # provenance (issue #17): the fit says how its forward was found, as the chain update does
    assert fit.forward_method == update.forward_method and fit.forward_method in ("future", "parity", "underlying")
    assert fit.repaired is False  # a clean smile needs no butterfly repair
    t = fit.t_years
    k = np.log(np.asarray(update.strikes) / fit.forward)
    fitted = np.sqrt(total_variance((fit.a, fit.b, fit.rho, fit.m, fit.sigma), k) / t)
    true = np.sqrt(total_variance(TRUE, np.log(np.asarray(update.strikes) / FORWARD)) / t)
    assert np.max(np.abs(fitted - true)) * 100 < 0.2  # vol points
    assert chain.counters["iv_solves"] == 2 * len(STRIKES)  # bid and ask of each OTM option


def test_fit_interval_then_only_dirty_strikes_resolve():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [ticker()])
    assert chain.on_epoch()
    solves = chain.counters["iv_solves"]
    one = quotes(half_spread_vol=0.006, only={(70_000.0, "C")})
    clock.ms += 50
    chain.on_items(one)
    assert chain.on_epoch() == []  # inside fit_interval_ms: solved, not refitted
    assert chain.counters["iv_solves"] == solves + 2  # that strike's bid and ask only
    assert chain.pending()  # the smile changed: a fit is owed
    clock.ms += 200
    (fit, _), = chain.on_epoch()
    assert fit.warm and chain.counters["fits"] == 2


def test_budget_defers_fits_to_the_next_epoch():
    clock = Clock(T0)
    budget = FitBudget(1)
    a, b = logic(clock, budget=budget), logic(clock, budget=budget)
    for chain in (a, b):
        chain.on_items(quotes() + [ticker()])
    assert len(a.on_epoch()) == 1
    assert b.on_epoch() == [] and b.counters["fits_deferred"] == 1 and b.pending()
    clock.ms += 50
    assert len(b.on_epoch()) == 1


def test_stale_strikes_are_withheld_from_the_fit():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes(stale={50_000.0, 70_000.0}) + [ticker()])
    (fit, update), = chain.on_epoch()
    assert 50_000.0 not in update.strikes and 70_000.0 not in update.strikes
    assert fit.n_quotes == len(STRIKES) - 2


def test_forward_move_resolves_every_strike_of_the_expiry():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [ticker()])
    chain.on_epoch()
    solves = chain.counters["iv_solves"]
    clock.ms += 300
    chain.on_items(quotes(forward=FORWARD * 1.01) + [ticker(FORWARD * 1.01)])
    (fit, _), = chain.on_epoch()
    assert chain.counters["iv_solves"] == solves + 2 * len(STRIKES)
    assert fit.forward == pytest.approx(FORWARD * 1.01, rel=1e-4)


def test_a_forward_jump_refits_inside_the_fit_interval():
    """A spot jump (forward 1 % away from the last fit's) refits at the next epoch; a small
    forward drift with the same quotes re-solved waits for fit_interval_ms."""
    clock = Clock(T0)
    chain = logic(clock, fit_interval_ms=1_000, refit_forward_bp=20.0)
    chain.on_items(quotes() + [ticker()])
    assert chain.on_epoch()
    clock.ms += 50
    drift = FORWARD * 1.0005  # 5 bp: below refit_forward_bp
    chain.on_items(quotes(forward=drift) + [ticker(drift)])
    assert chain.on_epoch() == [] and chain.pending()  # owed, but inside the interval
    clock.ms += 50
    jump = FORWARD * 1.01
    chain.on_items(quotes(forward=jump) + [ticker(jump)])
    (fit, _), = chain.on_epoch()  # 100 ms after the last fit, interval 1,000 ms
    assert fit.forward == pytest.approx(jump, rel=1e-4)
    # the move's stragglers (books arriving in later batches) refit for one interval ...
    clock.ms += 50
    chain.on_items(quotes(forward=jump, half_spread_vol=0.006) + [ticker(jump)])
    assert len(chain.on_epoch()) == 1
    # ... then the interval rules again (5 bp moves are no market move)
    clock.ms += 1_000
    chain.on_items(quotes(forward=jump, half_spread_vol=0.0055) + [ticker(jump)])
    assert len(chain.on_epoch()) == 1
    clock.ms += 50
    chain.on_items(quotes(forward=jump, half_spread_vol=0.005) + [ticker(jump)])
    assert chain.on_epoch() == [] and chain.pending()


def test_expired_chain_says_so():
    clock = Clock(EXPIRY)
    assert logic(clock).expired()


def test_no_expiry_starves_under_the_fit_budget():
    """12 expiries all re-quoted every epoch, 2 fits per epoch: each one is refitted
    within ceil(12 / 2) = 6 epochs of owing a fit, every time."""
    clock = Clock(T0)
    budget = FitBudget(2)
    chains = []
    for i in range(12):
        state = ChainState("deribit", "BTC", EXPIRY + i * 86_400_000)
        chains.append(ChainLogic(state, now_ms=clock, **chain_kwargs(fit_interval_ms=0, min_quotes=6, max_rel_spread=1.0,
                                                                     budget=budget, fit_change_bp=0.0)))
    last_fit_epoch = {i: None for i in range(12)}
    worst_wait = 0
    for epoch in range(36):
        clock.ms = T0 + epoch * 50
        bump = 0.004 + 0.0001 * (epoch % 7)  # a changed smile every epoch
        for i, chain in enumerate(reversed(chains)):  # a fixed, unfair notification order
            chain.on_items(quotes(half_spread_vol=bump) + [ticker(ts_ms=clock.ms)])
        for i, chain in enumerate(reversed(chains)):
            if chain.on_epoch():
                j = chains.index(chain)
                if last_fit_epoch[j] is not None:
                    worst_wait = max(worst_wait, epoch - last_fit_epoch[j])
                last_fit_epoch[j] = epoch
    assert all(e is not None for e in last_fit_epoch.values())
    assert worst_wait <= 6
    assert sum(c.counters["fits"] for c in chains) == 2 * 36  # the budget is used, never exceeded


def test_books_in_the_chain_gap_and_unknown_instruments():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [ticker()])
    (fit, update), = chain.on_epoch()
    assert fit.n_quotes == len(STRIKES)
    # the connector reports a gap on the 70,000 call: withheld from the next fit
    clock.ms += 300
    name = option_name(70_000.0, "C")
    chain.on_items([FeedError("deribit", "seq_gap", "gap", T0, name),
                    BookUpdate("deribit", "NOPE", T0, T0, 1, None, "snapshot", (), ())])
    (fit, update), = chain.on_epoch()
    assert 70_000.0 not in update.strikes and fit.n_quotes == len(STRIKES) - 1
    assert [e.reason for e in chain.take_errors()] == ["unknown_instrument"]
    # a fresh snapshot brings it back
    clock.ms += 300
    chain.on_items([snapshot(name, *prices_coin()[(70_000.0, "C")], seq=9)])
    (fit, update), = chain.on_epoch()
    assert 70_000.0 in update.strikes


def test_a_book_that_misses_a_change_is_withheld_until_its_snapshot():
    """The book's own gap detection (prev_seq is not its last seq), not the connector's."""
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes(stale={70_000.0}) + [ticker()])
    (fit, update), = chain.on_epoch()
    assert 70_000.0 not in update.strikes and fit.n_quotes == len(STRIKES) - 1
    assert {e.instrument for e in chain.take_errors() if e.reason == "seq_gap"} == {
        option_name(70_000.0, "C"), option_name(70_000.0, "P")}
    clock.ms += 300
    chain.on_items(quotes(only={(70_000.0, "C"), (70_000.0, "P")}))
    (fit, update), = chain.on_epoch()
    assert 70_000.0 in update.strikes and fit.n_quotes == len(STRIKES)


def test_an_index_move_only_moves_expiries_priced_off_the_index():
    from operators.events import IndexPrice

    clock = Clock(T0)
    on_index, on_ticker = logic(clock), logic(clock)
    # one expiry has no ticker forward and only one-sided quotes: its forward is the index
    calls_only = quotes(only={(float(k), "C") for k in STRIKES})
    on_index.on_items(calls_only + [IndexPrice("deribit", "BTC", T0, T0, FORWARD)])
    on_ticker.on_items(quotes() + [ticker()])
    on_index.on_epoch()
    on_ticker.on_epoch()
    assert on_index.state.forward_method == "index" and on_ticker.state.forward_method != "index"
    solves = (on_index.counters["iv_solves"], on_ticker.counters["iv_solves"])
    clock.ms += 50
    moved = IndexPrice("deribit", "BTC", clock.ms, clock.ms, FORWARD * 1.002)
    for chain in (on_index, on_ticker):
        chain.on_items([moved])
        chain.on_epoch()
    assert on_index.state.forward == pytest.approx(FORWARD * 1.002)
    assert on_index.counters["iv_taylor"] + on_index.counters["iv_full"] > 0
    assert on_ticker.counters["iv_solves"] == solves[1] and on_ticker.counters["iv_taylor"] == 0


def test_consolidated_chain_takes_the_best_fresh_quote_with_venue_attribution():
    clock = Clock(T0)
    chain = logic(clock, venue_stale_ms=1_000)
    events = []
    for venue, prefix, shift in (("deribit", "D", 0.0), ("okx", "O", 0.25)):
        events += listing(venue, prefix)
        for (strike, cp), (bid, ask) in prices_coin().items():
            # okx quotes a tighter market on every strike: its bid is higher, its ask lower
            spread = ask - bid
            events.append(snapshot(option_name(strike, cp, prefix), bid + shift * spread, ask - shift * spread,
                                   venue=venue))
    chain.on_items(events + [ticker()])
    (fit, update), = chain.on_epoch()
    assert set(update.bid_venue) == {"okx"} and set(update.ask_venue) == {"okx"}
    # okx goes silent: after venue_stale_ms it is excluded and deribit's quotes take over
    clock.ms += 2_000
    chain.on_items([BookUpdate("deribit", "D-70000.0-C", T0 + 2_000, T0 + 2_000, 2, 1, "change", (), ())])
    (fit, update), = chain.on_epoch()
    assert set(update.bid_venue) == {"deribit"} and set(update.ask_venue) == {"deribit"}
    assert fit.n_quotes == len(STRIKES)


def _reference_quote(chain: ChainLogic, idx: int, is_call: bool) -> tuple:
    """(bid, ask, bid venue, ask venue) of one (strike, type) from its books as they stand: the
    best of its fresh books, none where they cross — the rule, written plainly."""
    s = chain.state
    bid, ask, bid_venue, ask_venue = np.nan, np.nan, "", ""
    for name in s.legs[(idx, is_call)]:
        row = s.book_slot[name]
        if s.store.stale[row]:
            continue
        venue = s.store.instruments[row].venue
        if s.store.count[0, row] and not s.store.px[0, row, 0] <= bid:
            bid, bid_venue = float(s.store.px[0, row, 0]), venue
        if s.store.count[1, row] and not s.store.px[1, row, 0] >= ask:
            ask, ask_venue = float(s.store.px[1, row, 0]), venue
    if bid >= ask:
        return np.nan, np.nan, "", ""
    return bid, ask, bid_venue, ask_venue


@pytest.mark.parametrize("vectorised_from", [0, chain_module.TOUCHES_VECTORISED])
@given(data=st.data())
@hyp_settings(max_examples=40)
def test_quotes_follow_the_books_whether_a_strike_has_one_venue_or_two(vectorised_from, data):
    """Solo books (a strike's only venue) are requoted in one vectorised pass when many are
    touched at once, one by one otherwise, shared strikes across venues one by one: either way
    each (strike, type) quotes its books' best fresh prices."""
    saved, chain_module.TOUCHES_VECTORISED = chain_module.TOUCHES_VECTORISED, vectorised_from
    try:
        _quotes_follow_the_books(data)
    finally:
        chain_module.TOUCHES_VECTORISED = saved


def _quotes_follow_the_books(data):
    clock = Clock(T0)
    chain = logic(clock, venue_stale_ms=10**9)
    strikes = STRIKES[:6]
    both = data.draw(st.sets(st.sampled_from(list(strikes))), label="strikes okx lists too")
    names = [(venue, option_name(k, cp, prefix)) for venue, prefix, ks in
             (("deribit", "D", strikes), ("okx", "O", sorted(both))) for k in ks for cp in "CP"]
    chain.on_items(listing("deribit", "D", strikes=strikes) + listing("okx", "O", strikes=sorted(both)))
    seq = {name: 0 for _, name in names}
    price = st.floats(0.001, 0.2).map(lambda x: round(x, 4))
    for _ in range(data.draw(st.integers(1, 5), label="batches")):
        batch = []
        for venue, name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=12), label="books"):
            bid = data.draw(price)
            ask = bid + data.draw(price)
            if data.draw(st.booleans()) or not seq[name]:
                seq[name] += 1
                sides = data.draw(st.sampled_from(["both", "bids", "asks"]), label="sides")  # one-sided too
                batch.append(BookUpdate(venue, name, T0, T0, seq[name], None, "snapshot",
                                        ((bid, 1.0),) if sides != "asks" else (),
                                        ((ask, 1.0),) if sides != "bids" else ()))
            else:  # a change that may chain or gap, lifting or emptying the touch
                prev = seq[name] if data.draw(st.booleans()) else seq[name] + 5
                seq[name] += 10
                batch.append(BookUpdate(venue, name, T0, T0, seq[name], prev, "change",
                                        ((bid, data.draw(st.sampled_from([0.0, 2.0]))),), ()))
        chain.on_items(batch)
        s = chain.state
        for (idx, is_call) in s.legs:
            bids, asks = (s.call_bid, s.call_ask) if is_call else (s.put_bid, s.put_ask)
            bid_venues, ask_venues = ((s.call_bid_venue, s.call_ask_venue) if is_call
                                      else (s.put_bid_venue, s.put_ask_venue))
            got = (bids[idx], asks[idx], bid_venues[idx], ask_venues[idx])
            want = _reference_quote(chain, idx, is_call)
            assert np.allclose(got[:2], want[:2], equal_nan=True) and got[2:] == want[2:], (idx, is_call, got, want)


@given(data=st.data())
@hyp_settings(max_examples=60, deadline=None)
def test_books_in_columns_leave_the_chain_as_the_same_updates_one_by_one_do(data):
    """A BookBatch (the replay's book notifications in columns) and the same BookUpdates give a
    chain the same books, sequence numbers, staleness, quotes, dirty strikes and errors — gaps,
    crossed books and books never listed included."""
    clocks = Clock(T0), Clock(T0)
    chains = [logic(c, venue_stale_ms=10**9) for c in clocks]
    strikes = STRIKES[:5]
    names = [option_name(k, cp, "D") for k in strikes for cp in "CP"]
    for c in chains:
        c.on_items(listing("deribit", "D", strikes=strikes))
    seq = {name: 0 for name in names}
    price = st.floats(0.001, 0.2).map(lambda x: round(x, 4))
    for _ in range(data.draw(st.integers(1, 5), label="batches")):
        batch = []
        for name in data.draw(st.lists(st.sampled_from(names + ["D-unlisted-C"]), min_size=1, max_size=14)):
            bid = data.draw(price)
            ask = bid + data.draw(st.floats(-0.01, 0.1).map(lambda x: round(x, 4)))  # crossed sometimes
            seq.setdefault(name, 0)
            if data.draw(st.booleans()) or not seq[name]:
                seq[name] += 1
                levels = data.draw(st.integers(1, 4))
                batch.append(BookUpdate("deribit", name, T0 + seq[name], T0, seq[name], None, "snapshot",
                                        tuple((round(bid - 0.0005 * i, 4), 1.0 + i) for i in range(levels)),
                                        tuple((round(ask + 0.0005 * i, 4), 2.0) for i in range(levels))))
            else:  # a change that chains or gaps, on either side, adding or deleting
                prev = seq[name] if data.draw(st.booleans()) else seq[name] + 5
                seq[name] += 10
                side = ((bid, data.draw(st.sampled_from([0.0, 2.0]))),)
                bids_side = data.draw(st.booleans())
                batch.append(BookUpdate("deribit", name, T0 + seq[name], T0, seq[name], prev, "change",
                                        side if bids_side else (), () if bids_side else side))
        cut = data.draw(st.integers(0, len(batch)), label="cut")  # BookUpdates and a BookBatch in one list too
        chains[0].on_items(batch)
        chains[1].on_items(batch[:cut] + [BookBatch.of(batch[cut:])] if cut < len(batch) else batch)
        a, b = (c.state for c in chains)
        for field in ("count", "last_seq", "stale", "ladder"):
            assert np.array_equal(getattr(a.store, field), getattr(b.store, field)), field
        for row in range(len(a.store)):  # the live levels (how far a store has widened depends on its batches)
            assert a.store.side(row, 0) == b.store.side(row, 0) and a.store.side(row, 1) == b.store.side(row, 1)
        assert sorted(map(repr, chains[0].take_errors())) == sorted(map(repr, chains[1].take_errors()))
        assert a.dirty == b.dirty and a.ts_exchange_ms == b.ts_exchange_ms and a.venue_seen_ms == b.venue_seen_ms
        for field in ("call_bid", "call_ask", "put_bid", "put_ask"):
            assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
