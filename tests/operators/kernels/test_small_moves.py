"""The invariant of operators/kernels/small_moves.py: after every epoch, every published vol
is within 1 bp of an exact full recompute from the same quotes, forward and time — whatever
mix of quote changes, small forward moves, shocks and passing time came before. The chain is
fed book snapshots of listed options, as the connectors feed it."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.kernels import iv, small_moves
from operators.kernels.black import black_price
from operators.state.chain import MS_PER_YEAR, ChainLogic, ChainState, FitBudget
from operators.events import BookUpdate, FuturePrice, Instrument
from operators.kernels.svi import total_variance
from tests.helpers.chain import Clock, chain_kwargs

BP = 1e-4


def listed(name: str, expiry_ms: int, strike: float, cp: str) -> Instrument:
    return Instrument("deribit", name, "BTC", "option", expiry_ms, float(strike), cp, 0.0001, 1.0, "BTC")


def book(name: str, ts_ms: int, bid: float, ask: float) -> BookUpdate:
    """A book snapshot, as the connectors feed the chain."""
    return BookUpdate("deribit", name, ts_ms, ts_ms, 1, None, "snapshot", ((bid, 1.0),), ((ask, 1.0),))


def exact_vols(chain: ChainLogic, t: float):
    s = chain.state
    strikes = np.asarray(s.strikes)
    side = strikes >= s.forward
    prices = s.prices_coin(side)
    return [iv.implied_vol_coin(prices[j], s.forward, strikes, t, side) for j in (0, 1)]


ops = st.one_of(
    st.tuples(st.just("quote"), st.integers(0, 10_000), st.floats(-0.05, 0.05)),
    st.tuples(st.just("drift"), st.floats(-2e-4, 2e-4), st.just(0.0)),  # tiny forward moves
    st.tuples(st.just("move"), st.floats(-3e-3, 3e-3), st.just(0.0)),
    st.tuples(st.just("shock"), st.sampled_from([-0.05, -0.01, 0.01, 0.05]), st.just(0.0)),
    st.tuples(st.just("time"), st.integers(50, 3_600_000), st.just(0.0)),
)


@settings(max_examples=120, deadline=None)
@given(t_days=st.floats(0.5, 400), rho=st.floats(-0.7, 0.3), vol=st.floats(0.2, 1.5),
       n=st.integers(5, 25), stream=st.lists(ops, min_size=1, max_size=30))
def test_published_vols_stay_within_1bp_of_exact(t_days, rho, vol, n, stream):
    t0 = 1_900_000_000_000
    expiry = t0 + int(t_days * 86_400_000)
    clock = Clock(t0)
    chain = ChainLogic(ChainState("deribit", "BTC", expiry), now_ms=clock,
                       **chain_kwargs(fit_interval_ms=10**9, min_quotes=5, max_rel_spread=1.0, budget=FitBudget(1)))
    forward = 60_000.0
    t = t_days / 365.0
    theta = vol * vol * t
    params = (theta * 0.7, 0.3 * math.sqrt(theta), rho, 0.0, 0.3 * math.sqrt(t))
    width = 3 * vol * math.sqrt(t) + 0.05
    strikes = [float(round(forward * math.exp(k))) for k in np.linspace(-width, width, n)]
    mids = {}

    def quote(strike, cp, bump):
        k = math.log(strike / forward)
        v = math.sqrt(max(total_variance(params, k), 1e-8) / t) * (1 + bump)
        price = float(black_price(forward, strike, t, v, cp == "C")) / forward
        mids[(strike, cp)] = price
        return book(f"{strike}{cp}", clock.ms, price * 0.98, price * 1.02 + 1e-4)

    def future():
        return FuturePrice("deribit", "F", "BTC", expiry, clock.ms, clock.ms, forward, forward, forward)

    chain.on_items([listed(f"{k}{cp}", expiry, k, cp) for k in strikes for cp in "CP"]
                   + [quote(k, cp, 0.0) for k in strikes for cp in "CP"] + [future()])
    for kind, a, b in stream:
        if kind == "quote":
            strike = strikes[a % len(strikes)]
            chain.on_items([quote(strike, "C" if a % 2 else "P", b)])
        elif kind in ("drift", "move", "shock"):
            forward *= math.exp(a)
            chain.on_items([future()])
        else:
            clock.ms = min(clock.ms + a, expiry - 60_000)
        chain.state.ts_exchange_ms = clock.ms
        chain.on_epoch()
        t_now = (expiry - clock.ms) / MS_PER_YEAR
        published = chain.published_vols(t_now)
        for pub, exact in zip(published, exact_vols(chain, t_now)):
            both = np.isfinite(exact)
            assert np.array_equal(np.isfinite(pub), both), (pub, exact)
            assert np.all(np.abs(pub[both] - exact[both]) <= 1 * BP), np.max(np.abs(pub[both] - exact[both])) / BP


def test_small_forward_moves_are_skipped_or_stepped_not_solved():
    t0 = 1_900_000_000_000
    expiry = t0 + int(0.25 * MS_PER_YEAR)
    clock = Clock(t0)
    chain = ChainLogic(ChainState("deribit", "BTC", expiry), now_ms=clock,
                       **chain_kwargs(fit_interval_ms=10**9, min_quotes=5, max_rel_spread=1.0, budget=FitBudget(1)))
    forward = 61_000.0  # between strikes: small moves cross none
    strikes = np.arange(40_000.0, 90_001.0, 2_500.0)
    items = []
    for k in strikes:
        for cp in "CP":
            p = float(black_price(forward, k, 0.25, 0.6, cp == "C")) / forward
            items += [listed(f"{k}{cp}", expiry, k, cp), book(f"{k}{cp}", t0, p, p * 1.01)]
    chain.on_items(items + [FuturePrice("deribit", "F", "BTC", expiry, t0, t0, forward, forward, forward)])
    chain.on_epoch()
    full = chain.counters["iv_full"]
    assert full == 2 * len(strikes)
    for move, expect in ((1e-6, "iv_skipped"), (2e-4, "iv_taylor")):
        before = dict(chain.counters)
        f = forward * (1 + move)
        chain.on_items([FuturePrice("deribit", "F", "BTC", expiry, t0, t0, f, f, f)])
        chain.on_epoch()
        assert chain.counters["iv_full"] == before["iv_full"]  # no strike crossed, no full solve
        assert chain.counters[expect] - before[expect] >= len(strikes)
    # a 5 % shock is too large to approximate: everything is solved again
    f = forward * 1.05
    chain.on_items([FuturePrice("deribit", "F", "BTC", expiry, t0, t0, f, f, f)])
    chain.on_epoch()
    assert chain.counters["iv_full"] - full >= 2 * len(strikes) - 4


@given(x=st.floats(-1.0, 1.0), s=st.floats(0.02, 2.0), is_call=st.booleans())
def test_derivatives_match_finite_differences(x, s, is_call):
    # c(x, s) in normalised Black space; s(x) at fixed c by solving with the full solver.
    # The chain only prices out-of-the-money options (x ≤ 0 calls, x ≥ 0 puts).
    x = -abs(x) if is_call else abs(x)
    forward, t = 100.0, 1.0
    strike = forward * math.exp(-x)
    price_coin = float(black_price(forward, strike, t, s, is_call)) / forward
    s1, s2 = small_moves.s_derivatives(x, s, is_call)
    h = 1e-4

    def s_at(xx):
        f = strike * math.exp(xx)
        return float(iv.implied_vol_coin(price_coin, f, strike, t, is_call))

    lo, mid, hi = s_at(x - h), s_at(x), s_at(x + h)
    if not all(np.isfinite([lo, mid, hi])) or abs(s1) > 1e3:
        return  # no vol at a neighbour (deep wing): nothing to compare
    assert abs((hi - lo) / (2 * h) - s1) <= 1e-4 * max(1.0, abs(s1))
    assert abs((hi - 2 * mid + lo) / (h * h) - s2) <= 2e-2 * max(1.0, abs(s2))


def solve_touch_reference(prices, strikes, forward, dirty, forward_moved, side, x0, s0, s1, s2, s, t, skip_bp,
                          approx_bp, taylor2_bp, change_bp):
    """The touch solve as plain numpy steps over (plan_moves, implied_vol_coin_flat, s_derivatives)."""
    n = strikes.size
    side_now = strikes >= forward
    x = np.log(forward / strikes)
    full = dirty.copy()
    if forward_moved:
        full |= (side_now != side) | ~np.isfinite(x0)
    old = s.copy()
    moved = ~full if forward_moved else np.zeros(n, bool)
    skipped = stepped = 0
    if moved.any():
        plans = []
        for j in (0, 1):
            action, ds = small_moves.plan_moves(x[moved] - x0[moved], s1[j, moved], s2[j, moved], math.sqrt(t),
                                                skip_bp, approx_bp, taylor2_bp)
            ok = np.isfinite(s0[j, moved]) & (side_now[moved] | (prices[j, moved] < strikes[moved] / forward))
            plans.append((np.where(ok, action, small_moves.FULL), ds))
        needs = (plans[0][0] == small_moves.FULL) | (plans[1][0] == small_moves.FULL)
        idx = np.flatnonzero(moved)
        for j, (action, ds) in enumerate(plans):
            s[j, idx[~needs]] = s0[j, idx[~needs]] + ds[~needs]
            skipped += int((action[~needs] == small_moves.SKIP).sum())
            stepped += int((action[~needs] == small_moves.TAYLOR).sum())
        full[idx[needs]] = True
    sel = np.flatnonzero(full)
    k = strikes[sel]
    vols = iv.implied_vol_coin_flat(prices[:, sel].reshape(-1), forward, np.concatenate([k, k]), t,
                                    np.concatenate([side_now[sel], side_now[sel]])).reshape(2, -1)
    total_std = vols * math.sqrt(t)
    side[sel], x0[sel] = side_now[sel], x[sel]
    s0[:, sel] = s[:, sel] = total_std
    for j in (0, 1):
        s1[j, sel], s2[j, sel] = small_moves.s_derivatives(x[sel], total_std[j], side_now[sel])
    with np.errstate(invalid="ignore"):
        changed = bool(np.any(np.abs(s - old) / math.sqrt(t) * 1e4 > change_bp) or np.any(np.isnan(s) != np.isnan(old)))
    return 2 * sel.size, skipped, stepped, changed


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 8), log_move=st.floats(-0.02, 0.02), t=st.floats(0.002, 1.5),
       forward_moved=st.booleans(), change_bp=st.sampled_from([0.0, 0.5, 5.0]))
def test_the_compiled_touch_solve_is_the_plain_one(data, n, log_move, t, forward_moved, change_bp):
    """solve_touch against the same rule as plain numpy steps, bit for bit: slots solved last at
    another forward (so some skip, some step, some flip side or lose their vol), some quotes
    changed (dirty), puts near their upper bound, quotes missing."""
    old_forward = 60_000.0
    forward = old_forward * math.exp(log_move) if forward_moved else old_forward
    strikes = data.draw(st.lists(st.floats(45_000.0, 80_000.0), min_size=n, max_size=n, unique=True))
    if forward != old_forward and data.draw(st.booleans()):
        strikes[0] = 0.5 * (forward + old_forward)  # the forward crossed it: its OTM side flips
    strikes = np.array(sorted(set(strikes)))
    n = strikes.size
    vols = np.array(data.draw(st.lists(st.floats(0.2, 1.5), min_size=n, max_size=n)))
    side_now = strikes >= forward
    prices = np.empty((2, n))
    for j, bump in enumerate((0.97, 1.03)):
        prices[j] = [black_price(forward, k, t, v, c) / forward * bump for k, v, c in zip(strikes, vols, side_now)]
    holes = np.array(data.draw(st.lists(st.sampled_from([0, 0, 0, 1, 2]), min_size=2 * n, max_size=2 * n)))
    holes = holes.reshape(2, n)
    prices[holes == 1] = math.nan
    prices[holes == 2] = np.broadcast_to(strikes / forward, (2, n))[holes == 2]  # a put at K/F has no vol
    # the exact points of a solve at the old forward (some lost: NaN)
    side = strikes >= old_forward
    x0 = np.log(old_forward / strikes)
    s0 = np.vstack([vols, vols * 1.02]) * math.sqrt(t)
    s1, s2 = (np.vstack(a) for a in zip(small_moves.s_derivatives(x0, s0[0], side),
                                        small_moves.s_derivatives(x0, s0[1], side)))
    lost = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    x0[lost & (np.arange(n) % 2 == 0)] = math.nan
    s0[:, lost & (np.arange(n) % 2 == 1)] = math.nan
    s = s0.copy()
    dirty = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    args = dict(skip_bp=0.25, approx_bp=50.0, taylor2_bp=2.0, change_bp=change_bp)
    want = [a.copy() for a in (side, x0, s0, s1, s2, s)]
    want_out = solve_touch_reference(prices, strikes, forward, dirty, forward_moved, *want, t, **args)
    got = [a.copy() for a in (side, x0, s0, s1, s2, s)]
    got_out = small_moves.solve_touch(prices, strikes, forward, np.log(forward / strikes), side_now, dirty,
                                      forward_moved, *got, t, **args)
    assert got_out == want_out
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
