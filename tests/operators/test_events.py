"""Event contracts: every type round-trips through orjson, versions and bad input are refused."""

import math
import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import events as ev

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
ints = st.integers(min_value=-(2**53), max_value=2**53)
names = st.text(min_size=0, max_size=12)


def strategy_for(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, __import__("types").UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return st.none() | strategy_for(inner)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        _, vt = typing.get_args(tp)
        return st.dictionaries(names, strategy_for(vt), max_size=3)
    if isinstance(tp, type) and issubclass(tp, ev.Event):
        return event_strategy(tp)
    return {float: finite, int: ints, str: names, bool: st.booleans()}[tp]


def event_strategy(cls):
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in msgspec.structs.fields(cls) if f.name != "v"}
    return st.builds(cls, **fields)


@pytest.mark.parametrize("cls", list(ev.EVENT_TYPES.values()), ids=list(ev.EVENT_TYPES))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip(cls, data):
    event = data.draw(event_strategy(cls))
    raw = ev.to_json(event)
    assert ev.from_json(raw) == event
    assert ev.from_dict(ev.to_dict(event)) == event


def test_events_are_frozen_and_slotted():
    for cls in ev.EVENT_TYPES.values():
        assert msgspec.structs.fields(cls)
        assert cls.__struct_config__.frozen, cls
        assert hasattr(cls, "__slots__"), cls
        event = cls(**{f.name: None for f in msgspec.structs.fields(cls) if f.required})
        with pytest.raises(AttributeError):
            event.v = 2


def test_version_and_type_are_checked():
    idx = ev.IndexPrice("deribit", "BTC", 1, 2, 100.0)
    data = ev.to_dict(idx)
    assert data["type"] == "IndexPrice" and data["v"] == ev.SCHEMA_VERSION
    with pytest.raises(ev.ContractError, match="schema version 99"):
        ev.from_dict({**data, "v": 99})
    with pytest.raises(ev.ContractError, match="unknown event type 'Nope'"):
        ev.from_dict({**data, "type": "Nope"})
    with pytest.raises(ev.ContractError, match="IndexPrice.price must be a number"):
        ev.from_dict({**data, "price": "x"})
    with pytest.raises(ev.ContractError, match="not JSON"):
        ev.from_json(b"{nope")


@given(st.binary(max_size=200))
def test_from_json_never_raises_anything_but_contract_error(raw):
    try:
        ev.from_json(raw)
    except ev.ContractError:
        pass


def fit(expiry_ms, epoch=1):
    return ev.SmileFit("deribit", "BTC", expiry_ms, epoch, 0, 0, 0.1, 100.0, 0.01, 0.1, -0.2, 0.0, 0.2,
                       0.3, 20, True, 0.5, 1.0)


def test_apply_patch_replaces_by_expiry_and_removes():
    v1, v2, v3 = (ev.ExpiryView(e, fit(e), atm_vol=0.5) for e in (1, 2, 3))
    snap = ev.apply_patch(None, ev.SurfacePatch("deribit", "BTC", 1, 0, 0, expiries=(v2, v1), index_px=7.0))
    assert [e.expiry_ms for e in snap.expiries] == [1, 2] and snap.index_px == 7.0
    newer = ev.ExpiryView(2, fit(2, epoch=2), atm_vol=0.6)
    snap = ev.apply_patch(snap, ev.SurfacePatch("deribit", "BTC", 2, 0, 0, expiries=(newer, v3), removed=(1,)))
    assert [e.expiry_ms for e in snap.expiries] == [2, 3]
    assert snap.expiries[0].atm_vol == 0.6 and snap.index_px == 7.0 and snap.epoch == 2
    assert not math.isnan(snap.expiries[0].fit.rmse_vol_pts)
