"""Chain step logic with an injected clock: quotes mark dirty, epochs solve and fit,
the fit interval and the per-epoch budget hold, stale books are withheld."""

import math

import numpy as np
import pytest

from operators.kernels.black import black_price
from operators.state.chain import MS_PER_YEAR, ChainLogic, ChainState, FitBudget
from operators.events import Quote, Ticker
from operators.kernels.svi import total_variance

T0 = 1_900_000_000_000
EXPIRY = T0 + int(0.25 * MS_PER_YEAR)
FORWARD = 60_000.0
TRUE = (0.01, 0.06, -0.35, 0.02, 0.15)  # raw SVI, T = 0.25
STRIKES = np.arange(40_000.0, 90_001.0, 2_500.0)


class Clock:
    def __init__(self, ms):
        self.ms = ms

    def __call__(self):
        return self.ms


def quotes(forward=FORWARD, half_spread_vol=0.004, stale=()):
    t = (EXPIRY - T0) / MS_PER_YEAR
    out = []
    for strike in STRIKES:
        vol = math.sqrt(total_variance(TRUE, math.log(strike / forward)) / t)
        for cp in ("C", "P"):
            bid = float(black_price(forward, strike, t, vol - half_spread_vol, cp == "C")) / forward
            ask = float(black_price(forward, strike, t, vol + half_spread_vol, cp == "C")) / forward
            out.append(Quote("deribit", f"X-{strike}-{cp}", "BTC", EXPIRY, float(strike), cp, T0, T0,
                             ((bid, 1.0),), ((ask, 1.0),), stale=strike in stale))
    return out


def logic(clock, **kw):
    opts = dict(epoch_ms=50, fit_interval_ms=200, min_quotes=6, max_rel_spread=1.0, budget=FitBudget(8))
    opts.update(kw)
    return ChainLogic(ChainState("deribit", "BTC", EXPIRY), now_ms=clock, **opts)


def test_epoch_solves_and_fits_close_to_the_true_smile():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    assert chain.pending()
    out = chain.on_epoch()
    assert len(out) == 1
    fit, update = out[0]
    assert fit.forward == pytest.approx(FORWARD, rel=1e-4)
    assert fit.butterfly_ok and fit.n_quotes == len(STRIKES)
    t = fit.t_years
    k = np.log(np.asarray(update.strikes) / fit.forward)
    fitted = np.sqrt(total_variance((fit.a, fit.b, fit.rho, fit.m, fit.sigma), k) / t)
    true = np.sqrt(total_variance(TRUE, np.log(np.asarray(update.strikes) / FORWARD)) / t)
    assert np.max(np.abs(fitted - true)) * 100 < 0.2  # vol points
    assert chain.counters["iv_solves"] == 2 * len(STRIKES)  # bid and ask of each OTM option


def test_fit_interval_then_only_dirty_strikes_resolve():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    assert chain.on_epoch()
    solves = chain.counters["iv_solves"]
    one = [q for q in quotes(half_spread_vol=0.006) if q.strike == 70_000.0 and q.option_type == "C"]
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
        chain.on_items(quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    assert len(a.on_epoch()) == 1
    assert b.on_epoch() == [] and b.counters["fits_deferred"] == 1 and b.pending()
    clock.ms += 50
    assert len(b.on_epoch()) == 1


def test_stale_strikes_are_withheld_from_the_fit():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes(stale={50_000.0, 70_000.0}) + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    (fit, update), = chain.on_epoch()
    assert 50_000.0 not in update.strikes and 70_000.0 not in update.strikes
    assert fit.n_quotes == len(STRIKES) - 2


def test_forward_move_resolves_every_strike_of_the_expiry():
    clock = Clock(T0)
    chain = logic(clock)
    chain.on_items(quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    chain.on_epoch()
    solves = chain.counters["iv_solves"]
    clock.ms += 300
    chain.on_items(quotes(forward=FORWARD * 1.01) + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD * 1.01)])
    (fit, _), = chain.on_epoch()
    assert chain.counters["iv_solves"] == solves + 2 * len(STRIKES)
    assert fit.forward == pytest.approx(FORWARD * 1.01, rel=1e-4)


def test_a_forward_jump_refits_inside_the_fit_interval():
    """A spot jump (forward 1 % away from the last fit's) refits at the next epoch; a small
    forward drift with the same quotes re-solved waits for fit_interval_ms."""
    clock = Clock(T0)
    chain = logic(clock, fit_interval_ms=1_000, refit_forward_bp=20.0)
    chain.on_items(quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    assert chain.on_epoch()
    clock.ms += 50
    drift = FORWARD * 1.0005  # 5 bp: below refit_forward_bp
    chain.on_items(quotes(forward=drift) + [Ticker("deribit", "X", T0, T0, underlying_px=drift)])
    assert chain.on_epoch() == [] and chain.pending()  # owed, but inside the interval
    clock.ms += 50
    jump = FORWARD * 1.01
    chain.on_items(quotes(forward=jump) + [Ticker("deribit", "X", T0, T0, underlying_px=jump)])
    (fit, _), = chain.on_epoch()  # 100 ms after the last fit, interval 1,000 ms
    assert fit.forward == pytest.approx(jump, rel=1e-4)
    # the move's stragglers (books arriving in later batches) refit for one interval ...
    clock.ms += 50
    chain.on_items(quotes(forward=jump, half_spread_vol=0.006) + [Ticker("deribit", "X", T0, T0, underlying_px=jump)])
    assert len(chain.on_epoch()) == 1
    # ... then the interval rules again (5 bp moves are no market move)
    clock.ms += 1_000
    chain.on_items(quotes(forward=jump, half_spread_vol=0.0055) + [Ticker("deribit", "X", T0, T0, underlying_px=jump)])
    assert len(chain.on_epoch()) == 1
    clock.ms += 50
    chain.on_items(quotes(forward=jump, half_spread_vol=0.005) + [Ticker("deribit", "X", T0, T0, underlying_px=jump)])
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
        chains.append(ChainLogic(state, epoch_ms=50, fit_interval_ms=0, min_quotes=6, max_rel_spread=1.0,
                                 budget=budget, now_ms=clock, fit_change_bp=0.0))
    last_fit_epoch = {i: None for i in range(12)}
    worst_wait = 0
    for epoch in range(36):
        clock.ms = T0 + epoch * 50
        bump = 0.004 + 0.0001 * (epoch % 7)  # a changed smile every epoch
        for i, chain in enumerate(reversed(chains)):  # a fixed, unfair notification order
            chain.on_items([q for q in quotes(half_spread_vol=bump)] +
                           [Ticker("deribit", "X", clock.ms, clock.ms, underlying_px=FORWARD)])
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
    from operators.events import BookUpdate, FeedError, Instrument

    clock = Clock(T0)
    chain = logic(clock)
    insts = [Instrument("deribit", f"O-{k}-{cp}", "BTC", "option", EXPIRY, float(k), cp, 0.0001, 1.0, "BTC")
             for k in STRIKES for cp in "CP"]
    px = {q.instrument.split("X-")[1]: q for q in quotes()}
    updates = []
    for inst in insts:
        q = px[f"{inst.strike}-{inst.option_type}"]
        updates.append(BookUpdate("deribit", inst.instrument, T0, T0, 1, None, "snapshot", q.bids, q.asks))
    chain.on_items(insts + updates + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    (fit, update), = chain.on_epoch()
    assert fit.n_quotes == len(STRIKES)
    # the connector reports a gap on the 70,000 call: withheld from the next fit
    clock.ms += 300
    chain.on_items([FeedError("deribit", "seq_gap", "gap", T0, "O-70000.0-C"),
                    BookUpdate("deribit", "NOPE", T0, T0, 1, None, "snapshot", (), ())])
    (fit, update), = chain.on_epoch()
    assert 70_000.0 not in update.strikes and fit.n_quotes == len(STRIKES) - 1
    assert [e.reason for e in chain.take_errors()] == ["unknown_instrument"]
    # a fresh snapshot brings it back
    clock.ms += 300
    q = px["70000.0-C"]
    chain.on_items([BookUpdate("deribit", "O-70000.0-C", T0, T0, 9, None, "snapshot", q.bids, q.asks)])
    (fit, update), = chain.on_epoch()
    assert 70_000.0 in update.strikes


def test_an_index_move_only_moves_expiries_priced_off_the_index():
    from operators.events import IndexPrice

    clock = Clock(T0)
    on_index, on_ticker = logic(clock), logic(clock)
    # one expiry has no ticker forward and only one-sided quotes: its forward is the index
    calls_only = [q for q in quotes() if q.option_type == "C"]
    on_index.on_items(calls_only + [IndexPrice("deribit", "BTC", T0, T0, FORWARD)])
    on_ticker.on_items(quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
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
    from operators.events import BookUpdate, Instrument

    clock = Clock(T0)
    chain = logic(clock, venue_stale_ms=1_000)
    base = {f"{q.strike}-{q.option_type}": q for q in quotes()}
    events = []
    for venue, name_fmt, shift in (("deribit", "D-{}-{}", 0.0), ("okx", "O-{}-{}", 0.25)):
        for key, q in base.items():
            strike, cp = key.split("-")
            name = name_fmt.format(strike, cp)
            events.append(Instrument(venue, name, "BTC", "option", EXPIRY, float(strike), cp, 0.0001, 1.0, "BTC"))
            # okx quotes a tighter market on every strike: its bid is higher, its ask lower
            spread = q.asks[0][0] - q.bids[0][0]
            bid, ask = q.bids[0][0] + shift * spread, q.asks[0][0] - shift * spread
            events.append(BookUpdate(venue, name, T0, T0, 1, None, "snapshot", ((bid, 1.0),), ((ask, 1.0),)))
    chain.on_items(events + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)])
    (fit, update), = chain.on_epoch()
    assert set(update.bid_venue) == {"okx"} and set(update.ask_venue) == {"okx"}
    # okx goes silent: after venue_stale_ms it is excluded and deribit's quotes take over
    clock.ms += 2_000
    chain.on_items([BookUpdate("deribit", "D-70000.0-C", T0 + 2_000, T0 + 2_000, 2, 1, "change", (), ())])
    (fit, update), = chain.on_epoch()
    assert set(update.bid_venue) == {"deribit"} and set(update.ask_venue) == {"deribit"}
    assert fit.n_quotes == len(STRIKES)
