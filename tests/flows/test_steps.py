"""The bytewax adapters: epoch timers, expiry removal and snapshots, driven by a fake clock."""

import pickle

import numpy as np

from bytewax.operators import StatefulBatchLogic

from flows.steps import FlowClock, chain_builder, surface_builder
from operators.events import chain_key
from operators.items import ChainBatch, ExpiryFit, ExpiryGone
from flows.config import load_config
from tests.helpers.chain import EXPIRY, FORWARD, T0, Clock, quotes
from operators.events import Ticker


def test_chain_step_times_epochs_resumes_from_snapshot_and_leaves_at_expiry():
    clock = Clock(T0 + 7)
    build = chain_builder(load_config(), FlowClock(clock, wall_ms=clock))
    step = build(None)
    key = chain_key("deribit", "BTC", EXPIRY)
    step.on_batch([ChainBatch(key, quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)], clock.ms)])
    assert step.notify_at().timestamp() * 1000 == T0 + 50  # next 50 ms epoch boundary
    clock.ms = T0 + 50
    out, discard = step.on_notify()
    assert [type(o) for o in out] == [ExpiryFit] and discard is StatefulBatchLogic.RETAIN
    # nothing owed: the only wake-up left is the expiry itself
    assert step.notify_at().timestamp() * 1000 == EXPIRY
    resumed = build(pickle.loads(pickle.dumps(step.snapshot())))
    assert resumed.logic.state.last_fit == step.logic.state.last_fit
    assert np.array_equal(resumed.logic.state.s, step.logic.state.s, equal_nan=True)
    clock.ms = EXPIRY
    out, discard = resumed.on_notify()
    assert out == [ExpiryGone("deribit", "BTC", EXPIRY)] and discard is StatefulBatchLogic.DISCARD


def test_surface_step_removes_an_expired_expiry():
    clock = Clock(T0 + 7)
    chain = chain_builder(load_config(), FlowClock(clock, wall_ms=clock))(None)
    key = chain_key("deribit", "BTC", EXPIRY)
    chain.on_batch([ChainBatch(key, quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)], clock.ms)])
    clock.ms = T0 + 50
    (fit_item,), _ = chain.on_notify()
    surface = surface_builder(load_config(), FlowClock(clock, wall_ms=clock))(None)
    surface.on_batch([fit_item])
    clock.ms = T0 + 100
    (patch,), _ = surface.on_notify()
    assert [v.expiry_ms for v in patch.expiries] == [EXPIRY] and patch.removed == ()
    surface.on_batch([ExpiryGone("deribit", "BTC", EXPIRY)])
    (patch,), _ = surface.on_notify()
    assert patch.expiries == () and patch.removed == (EXPIRY,)


def test_a_batch_is_ticked_at_the_end_of_the_epoch_it_entered_in():
    """Events that entered during an epoch belong to that epoch's tick: read and applied after
    the boundary (a burst outlasting its epoch), the tick is overdue and runs at once."""
    clock = Clock(T0 + 30)
    step = chain_builder(load_config(), FlowClock(clock, wall_ms=clock))(None)
    key = chain_key("deribit", "BTC", EXPIRY)
    step.on_batch([ChainBatch(key, quotes() + [Ticker("deribit", "X", T0, T0, underlying_px=FORWARD)], T0 + 10)])
    assert step.notify_at().timestamp() * 1000 == T0 + 50
    clock.ms = T0 + 50
    step.on_notify()
    clock.ms = T0 + 130  # a batch that entered at T0 + 70 finishes applying only now
    step.on_batch([ChainBatch(key, quotes(half_spread_vol=0.005), T0 + 70)])
    assert step.notify_at().timestamp() * 1000 == T0 + 100 < clock.ms  # overdue: bytewax runs it now
    step.on_notify()
    step.on_batch([ChainBatch(key, quotes(half_spread_vol=0.006), T0 + 131)])
    assert step.notify_at().timestamp() * 1000 == T0 + 150
