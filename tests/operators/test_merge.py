"""The one patch-merge rule (operators/merge.py): apply_patch against an independent merge of
plain JSON dicts written here, the coalescing law
apply(apply(s, a), b) == apply(s, merge(a, b)), the one-pass fold, the gateway's coalesce,
and the mutable SurfaceState against apply_patch."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import SurfacePatch, SurfaceSnapshot, to_dict
from operators.merge import SurfaceState, apply_patch, coalesce, fold_patches, merge_patches
from tests.helpers.patches import event_sequences, expiry_ms, patch_sequences, patches, snapshots, views

starts = st.none() | snapshots(1, with_underlying=True)


def dict_apply(snapshot: dict | None, patch: dict) -> dict:
    """The rule as stated in operators/merge.py, on decoded JSON: drop removed expiries, then
    replace by expiry_ms; tenors and calendar whole; index_px kept when the patch has none."""
    views_by_ms = {} if snapshot is None else {v["expiry_ms"]: v for v in snapshot["expiries"]}
    for gone in patch["removed"]:
        views_by_ms.pop(gone, None)
    for view in patch["expiries"]:
        views_by_ms[view["expiry_ms"]] = view
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


@settings(max_examples=300)
@given(start=starts, seq=patch_sequences(with_underlying=True))
def test_apply_patch_matches_an_independent_dict_merge(start, seq):
    state, reference = start, (None if start is None else to_dict(start))
    for patch in seq:
        state = apply_patch(state, patch)
        reference = dict_apply(reference, to_dict(patch))
        assert isinstance(state, SurfaceSnapshot)
        assert to_dict(state) == reference


@settings(max_examples=300)
@given(start=starts, a=patches(2, with_underlying=True), b=patches(3, with_underlying=True))
def test_merge_law(start, a, b):
    merged = merge_patches(a, b)
    assert isinstance(merged, SurfacePatch)
    assert apply_patch(apply_patch(start, a), b) == apply_patch(start, merged)


@settings(max_examples=200)
@given(start=starts, seq=patch_sequences(max_size=8, with_underlying=True))
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


@settings(max_examples=200)
@given(start=starts, seq=event_sequences(with_underlying=True))
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
    again = merge_patches(later, patch)
    assert again.expiries == (view,) and again.removed == ()
