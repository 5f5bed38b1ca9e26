"""The one patch-merge rule (operators/merge.py): apply_patch against an independent merge of
plain JSON dicts written here, the coalescing law
apply(apply(s, a), b) == apply(s, merge(a, b)), the one-pass fold, the gateway's coalesce,
and the mutable SurfaceState against apply_patch; views carry vol-at-size ladders (merged by
instrument within an expiry, dropped with it)."""

from __future__ import annotations

import functools

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from operators.events import SurfacePatch, SurfaceSnapshot, to_dict
from operators.merge import SurfaceState, apply_patch, coalesce, fold_patches, merge_patches
from tests.helpers.patches import event_sequences, expiry_ms, patch_sequences, patches, snapshots, views

starts = st.none() | snapshots(1, with_underlying=True, with_ladders=True)
KW = {"with_underlying": True, "with_ladders": True}
PER_BOOK = ("instrument", "venue", "strike", "option_type", "contract_size", "stale", "bid_px", "bid_size_contracts",
            "bid_iv", "ask_px", "ask_size_contracts", "ask_iv", "bid_exec_px", "bid_exec_iv", "ask_exec_px",
            "ask_exec_iv")


def dict_ladders(old: dict | None, new: dict | None) -> dict | None:
    """Ladders on decoded JSON: old's books updated by new's, by instrument (old's order, then new ones)."""
    if new is None or not new["instrument"]:
        return old if old is not None else new
    if old is None or not old["instrument"]:
        return new
    books = {}
    for lad in (old, new):
        for i, name in enumerate(lad["instrument"]):
            books[name] = {f: lad[f][i] for f in PER_BOOK}
    return {**new, **{f: [b[f] for b in books.values()] for f in PER_BOOK}}


def dict_view(old: dict | None, new: dict) -> dict:
    if old is None:
        return new
    return {**new, "ladders": dict_ladders(old.get("ladders"), new.get("ladders"))}


def dict_apply(snapshot: dict | None, patch: dict) -> dict:
    """The rule as stated in operators/merge.py, on decoded JSON: drop removed expiries, then
    replace by expiry_ms; tenors and calendar whole; index_px kept when the patch has none."""
    views_by_ms = {} if snapshot is None else {v["expiry_ms"]: v for v in snapshot["expiries"]}
    for gone in patch["removed"]:
        views_by_ms.pop(gone, None)
    for view in patch["expiries"]:
        views_by_ms[view["expiry_ms"]] = dict_view(views_by_ms.get(view["expiry_ms"]), view)
    index_px = patch["index_px"]
    if index_px is None and snapshot is not None:
        index_px = snapshot["index_px"]
    return {
        "type": "SurfaceSnapshot",
        **{k: patch[k] for k in ("venue", "underlying", "epoch", "ts_exchange_ms", "ts_emit_ms")},
        "expiries": [views_by_ms[k] for k in sorted(views_by_ms)],
        "tenors": patch["tenors"],
        "calendar": patch["calendar"],
        "index_px": index_px,
        # level = "underlying" node values and units: the snapshot's updated key by key
        "underlying_analytics": {**({} if snapshot is None else snapshot["underlying_analytics"]),
                                 **patch["underlying_analytics"]},
        "underlying_units": {**({} if snapshot is None else snapshot["underlying_units"]), **patch["underlying_units"]},
        "v": 1,
    }


@given(start=starts, seq=patch_sequences(**KW))
def test_apply_patch_matches_an_independent_dict_merge(start, seq):
    state, reference = start, (None if start is None else to_dict(start))
    for patch in seq:
        state = apply_patch(state, patch)
        reference = dict_apply(reference, to_dict(patch))
        assert isinstance(state, SurfaceSnapshot)
        assert to_dict(state) == reference


@given(start=starts, a=patches(2, **KW), b=patches(3, **KW))
def test_merge_law(start, a, b):
    merged = merge_patches(a, b)
    assert isinstance(merged, SurfacePatch)
    assert apply_patch(apply_patch(start, a), b) == apply_patch(start, merged)


@given(start=starts, seq=patch_sequences(max_size=8, **KW))
def test_fold_and_coalesce_equal_applying_in_turn(start, seq):
    expected = functools.reduce(apply_patch, seq, start)
    assert apply_patch(start, fold_patches(seq)) == expected
    assert apply_patch(start, functools.reduce(merge_patches, seq)) == expected
    pending = None
    for p in seq:
        pending = coalesce(pending, p)
    assert apply_patch(start, pending) == expected
    if start is not None:  # a snapshot pending for a client absorbs the patches
        pending = start
        for p in seq:
            pending = coalesce(pending, p)
        assert isinstance(pending, SurfaceSnapshot) and pending == expected


@given(start=starts, seq=event_sequences(**KW))
def test_surface_state_matches_apply_patch(start, seq):
    state = SurfaceState()
    assert state.snapshot() is None
    expected = None
    if start is not None:
        state.replace(start)
        expected = start
    for event in seq:
        if isinstance(event, SurfaceSnapshot):
            state.replace(event)
            expected = apply_patch(None, SurfacePatch(**{f: getattr(event, f) for f in event.__struct_fields__
                                                         if f != "v"}))  # sorted, as the state keeps it
        else:
            state.apply(event)
            expected = apply_patch(expected, event)
        assert state.snapshot() == expected
        assert state.snapshot() is state.snapshot()  # built once per version


@given(data=st.data())
def test_an_expiry_removed_and_sent_in_one_patch_is_present(data):
    view = data.draw(views(2, 5))
    patch = SurfacePatch("deribit", "BTC", 5, 0, 0, expiries=(view,), removed=(expiry_ms(2),))
    assert apply_patch(None, patch).expiries == (view,)
    later = SurfacePatch("deribit", "BTC", 6, 0, 0, removed=(expiry_ms(2),), index_px=None)
    merged = merge_patches(patch, later)
    assert merged.expiries == () and merged.removed == (expiry_ms(2),)
    again = merge_patches(later, patch)  # the removal stays: it drops the old view's ladders first
    assert again.expiries == (view,) and again.removed == (expiry_ms(2),)
    assert apply_patch(None, again).expiries == (view,)


def test_ladders_merge_by_instrument_and_go_with_their_expiry():
    """A hand-made case: a patch's ladders replace books by instrument, keep the others, and a
    view without ladders keeps the current ones; a removal drops them."""
    from operators.events import ExpiryView, Ladders, level_matrix
    from operators.merge import merge_ladders

    def lad(*books):
        n = len(books)
        none = level_matrix([[None]] * n)
        return Ladders(level_depth=1, sizes_contracts=(1.0,), instrument=tuple(b for b, _ in books),
                       venue=("deribit",) * n, strike=(1.0,) * n, option_type=("C",) * n, contract_size=(1.0,) * n,
                       stale=(False,) * n, bid_px=level_matrix([[px] for _, px in books]),
                       bid_size_contracts=level_matrix([[1.0]] * n), bid_iv=level_matrix([[0.5]] * n), ask_px=none,
                       ask_size_contracts=none, ask_iv=none, bid_exec_px=none, bid_exec_iv=none, ask_exec_px=none,
                       ask_exec_iv=none)

    assert merge_ladders(lad(("A", 1.0), ("B", 2.0)), lad(("C", 3.0), ("A", 4.0))) == \
        lad(("A", 4.0), ("B", 2.0), ("C", 3.0))
    resized = msgspec.structs.replace(lad(("C", 3.0)), sizes_contracts=(5.0,))  # a config change across a restart
    assert merge_ladders(lad(("A", 1.0)), resized) is resized
    base = SurfaceSnapshot("deribit", "BTC", 1, 0, 0, expiries=(ExpiryView(expiry_ms(1), _fit(1), ladders=lad(("A", 1.0))),))
    kept = apply_patch(base, SurfacePatch("deribit", "BTC", 2, 0, 0, expiries=(ExpiryView(expiry_ms(1), _fit(2)),)))
    assert kept.expiries[0].ladders == lad(("A", 1.0)) and kept.expiries[0].fit == _fit(2)
    grown = apply_patch(kept, SurfacePatch("deribit", "BTC", 3, 0, 0,
                                           expiries=(ExpiryView(expiry_ms(1), _fit(3), ladders=lad(("B", 2.0))),)))
    assert grown.expiries[0].ladders == lad(("A", 1.0), ("B", 2.0))
    gone = apply_patch(grown, SurfacePatch("deribit", "BTC", 4, 0, 0, removed=(expiry_ms(1),),
                                           expiries=(ExpiryView(expiry_ms(1), _fit(4), ladders=lad(("C", 3.0))),)))
    assert gone.expiries[0].ladders == lad(("C", 3.0))


def _fit(epoch: int):
    from operators.events import SmileFit

    return SmileFit("deribit", "BTC", expiry_ms(1), epoch, 0, 0, 0.1, 95_000.0, 0.01, 0.1, -0.3, 0.0, 0.2, 0.5, 10,
                    True, 0.5, 1.0)
