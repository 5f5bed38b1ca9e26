"""A surface's exchange clock (issue #14): every patch's ts_exchange_ms is the newest exchange
time behind the surface so far — its fits' and its index's — never less, and never the flow's
own clock once the surface has data. On the combined surface the venues' clocks interleave, so
a patch of older OKX fits after newer Deribit ones must not take the time backwards."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from operators.events import IndexPrice
from operators.items import ExpiryFit, ExpiryGone
from operators.kernels import analytics as A
from tests.operators.state.test_surface import T0, item, logic, node

DAY_MS = 86_400_000
FLOW_NOW = T0  # the flow clock of logic(): fixed; exchange times below range on both sides of it

# one epoch: fits as (expiry slot, exchange time offset ms), an optional index tick (offset, price)
_epoch = st.tuples(st.lists(st.tuples(st.integers(0, 5), st.integers(-10_000, 10_000)), max_size=4),
                   st.none() | st.tuples(st.integers(-10_000, 10_000), st.integers(1, 3)))


@given(st.lists(_epoch, min_size=1, max_size=12))
def test_a_surfaces_exchange_time_never_goes_backwards(epochs):
    surface = logic([node("atm_vol", A.atm_vol)])
    newest = None  # the newest exchange time fed so far
    last = None
    index_px = None  # the index price the surface holds: a tick at the same price changes nothing
    for fits, index in epochs:
        items = []
        for i, dt in {i: dt for i, dt in fits}.items():  # a later fit of an expiry in one epoch replaces it
            it = item(T0 + (i + 1) * 7 * DAY_MS, t_years=(i + 1) * 7 / 365.0)
            items.append(ExpiryFit(msgspec.structs.replace(it.fit, ts_exchange_ms=T0 + dt), it.chain))
            newest = T0 + dt if newest is None else max(newest, T0 + dt)
        if index is not None:
            dt, px = index
            items.append(IndexPrice("deribit", "BTC", T0 + dt, T0 + dt, 100_000.0 + px))
        if not fits and index is None:
            items.append(ExpiryGone("deribit", "BTC", T0 + 7 * DAY_MS))
        surface.on_items(items)
        if index is not None and 100_000.0 + index[1] != index_px:
            # (not state.index_changed: that stays raised until a patch goes out)
            index_px = 100_000.0 + index[1]
            newest = T0 + index[0] if newest is None else max(newest, T0 + index[0])
        patch = surface.on_epoch()
        if patch is None:
            continue
        assert patch.ts_exchange_ms == (newest if newest is not None else FLOW_NOW)
        if last is not None:
            assert patch.ts_exchange_ms >= last
        if newest is not None:  # before any data a (removal-only) patch can only carry the flow clock
            last = patch.ts_exchange_ms


def test_a_removal_only_patch_keeps_the_last_exchange_time_not_the_flow_clock():
    surface = logic([node("atm_vol", A.atm_vol)])
    it = item(T0 + 7 * DAY_MS, t_years=7 / 365.0)
    surface.on_items([ExpiryFit(msgspec.structs.replace(it.fit, ts_exchange_ms=T0 - 5_000), it.chain)])
    assert surface.on_epoch().ts_exchange_ms == T0 - 5_000
    surface.on_items([ExpiryGone("deribit", "BTC", T0 + 7 * DAY_MS)])
    patch = surface.on_epoch()
    assert patch.removed == (T0 + 7 * DAY_MS,) and patch.ts_exchange_ms == T0 - 5_000  # not FLOW_NOW = T0
