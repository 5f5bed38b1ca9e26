"""Event contracts: every type round-trips through JSON (msgspec typed decoding), the wire
format keeps its shape (tag first, nested events untagged), versions and bad input are refused."""

import typing

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from operators import events as ev

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
ints = st.integers(min_value=-(2**53), max_value=2**53)
names = st.text(min_size=0, max_size=12)
# a ladder matrix: books × levels, NaN for none (no books: no levels either, as JSON [] reads back)
matrices = st.tuples(st.integers(0, 4), st.integers(0, 3)).map(lambda s: s if s[0] else (0, 0)).flatmap(
    lambda shape: hnp.arrays(np.float64, shape, elements=st.floats(allow_infinity=False, width=64)))
# a book side: levels × (price, size), numbers only
book_sides = st.integers(0, 4).flatmap(lambda n: hnp.arrays(np.float64, (n, 2), elements=finite))


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
    return {float: finite, int: ints, str: names, bool: st.booleans(), np.ndarray: matrices,
            ev.BookLevels: book_sides}[tp]


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
    with pytest.raises(ev.ContractError, match=r"bad IndexPrice: Expected `float`, got `str` - at `IndexPrice.price`"):
        ev.from_dict({**data, "price": "x"})
    with pytest.raises(ev.ContractError, match="not JSON"):
        ev.from_json(b"{nope")
    with pytest.raises(ev.ContractError, match="JSON object with a 'type' field"):
        ev.from_json(b"[1, 2]")


def test_nested_values_are_validated_and_named():
    """A string where a vol is, deep inside a patch, is refused with its path."""
    view = ev.ExpiryView(5, fit(5))
    data = ev.to_dict(ev.SurfacePatch("deribit", "BTC", 1, 0, 0, expiries=(view,)))
    data["expiries"][0]["bid_iv"] = [0.5, "0.6"]
    with pytest.raises(ev.ContractError, match=r"bad SurfacePatch: .*`SurfacePatch.expiries\[0\].bid_iv\[1\]`"):
        ev.from_json(orjson.dumps(data))
    data["expiries"][0]["bid_iv"] = [0.5, None]  # None is "absent", allowed where Optional
    assert ev.from_json(orjson.dumps(data)).expiries[0].bid_iv == (0.5, None)
    data["expiries"][0]["fit"]["a"] = None  # a NaN travels as null: refused where a float is required
    with pytest.raises(ev.ContractError, match=r"`SurfacePatch.expiries\[0\].fit.a`"):
        ev.from_json(orjson.dumps(data))


def test_wire_shape_is_kept():
    """The tag comes first and `v` last; events nested in a patch carry no tag; a nestable
    event sent alone does, and decodes back to its plain class."""
    view = ev.ExpiryView(5, fit(5), strikes=(1.0,), bid_iv=(None,), ask_iv=(0.5,))
    patch = ev.SurfacePatch("deribit", "BTC", 1, 0, 0, expiries=(view,), tenors=(ev.TenorPoint(7),), index_px=3.0)
    raw = ev.to_json(patch)
    assert raw.startswith(b'{"type":"SurfacePatch","venue":"deribit",') and raw.endswith(b',"v":1}')
    body = orjson.loads(raw)
    assert list(body) == ["type"] + [f.name for f in msgspec.structs.fields(ev.SurfacePatch)]
    assert "type" not in body["expiries"][0] and "type" not in body["expiries"][0]["fit"]
    assert "type" not in body["tenors"][0]
    lone = ev.from_json(ev.to_json(view.fit))
    assert type(lone) is ev.SmileFit and lone == view.fit
    assert ev.to_json(view.fit).startswith(b'{"type":"SmileFit","venue":')


def test_typed_decoders_take_only_their_classes():
    dec = ev.decoder(ev.SurfacePatch, ev.StatusReport)
    report = ev.StatusReport("w0", 1, 0, {"messages_in": 3.0})
    assert dec.decode(ev.to_json(report)) == report
    with pytest.raises(msgspec.ValidationError):
        dec.decode(ev.to_json(ev.IndexPrice("deribit", "BTC", 1, 2, 100.0)))
    with pytest.raises(TypeError, match="Message classes"):
        ev.decoder(ev.SmileFit)


@given(st.binary(max_size=200) | st.text(max_size=200) | st.text(max_size=20).map(lambda t: '{"type":"%s"}' % t))
def test_from_json_never_raises_anything_but_contract_error(raw):
    try:
        ev.from_json(raw)
    except ev.ContractError:
        pass


def fit(expiry_ms, epoch=1):
    return ev.SmileFit("deribit", "BTC", expiry_ms, epoch, 0, 0, 0.1, 100.0, 0.01, 0.1, -0.2, 0.0, 0.2,
                       0.3, 20, True, 0.5, 1.0)


# ---------------------------------------------------------------- BookBatch: book updates in columns

book_updates = st.lists(st.builds(
    ev.BookUpdate, st.just("deribit"), st.sampled_from(["A", "B", "C", "D"]), ints, ints,
    st.integers(-(2**62), 2**62), st.none() | st.integers(-(2**62), 2**62), st.sampled_from(["snapshot", "change"]),
    book_sides, book_sides), max_size=12)


@settings(max_examples=200)
@given(book_updates)
def test_a_book_batch_holds_the_same_updates_in_columns(updates):
    updates = [msgspec.structs.replace(u, prev_seq=None) if u.kind == "snapshot" else u for u in updates]
    if not updates:
        return
    batch = ev.BookBatch.of(updates)
    assert len(batch) == len(updates) and batch.updates() == updates
    assert ev.expand_books([1, batch, 2]) == [1, *updates, 2]


@settings(max_examples=200)
@given(book_updates, st.data())
def test_a_split_book_batch_gives_each_group_its_rows_in_order(updates, data):
    """BookBatch.split (how the routing hands each expiry its rows): every group's rows, in
    arrival order, levels and all; rows of group -1 nowhere."""
    updates = [msgspec.structs.replace(u, prev_seq=None) if u.kind == "snapshot" else u for u in updates]
    if not updates:
        return
    group = np.array(data.draw(st.lists(st.integers(-1, 3), min_size=len(updates), max_size=len(updates))), np.int64)
    parts = ev.BookBatch.of(updates).split(group)
    want = {g: [u for u, h in zip(updates, group.tolist()) if h == g] for g in sorted(set(group.tolist()) - {-1})}
    assert [g for g, _ in parts] == list(want)
    for g, part in parts:
        assert part.updates() == want[g]
        assert part.sides.sum() == part.px.size == part.size.size


def test_a_book_batch_is_one_venue():
    a = ev.BookUpdate("deribit", "A", 1, 1, 1, None, "snapshot")
    with pytest.raises(ValueError, match=r"one venue's updates, got venues \['deribit', 'okx'\]"):
        ev.BookBatch.of([a, msgspec.structs.replace(a, venue="okx")])
