"""Vol at size through the surface step (operators/state/surface.py): the ladders each
ChainUpdate carries reach the next patch's view of that expiry only (merged by instrument when
several fits arrive in one epoch), the views the step keeps hold none, and folding the patches
with the one merge rule (operators/merge.py) gives, per live expiry, every book's latest ladder
as sent by the chain — an independent per-instrument dict here; a removed expiry's go with it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import ChainUpdate, SmileFit, to_dict
from operators.items import ExpiryFit, ExpiryGone
from operators.merge import apply_patch
from operators.state.surface import SurfaceLogic, SurfaceState
from tests.helpers.patches import ladders

T0 = 1_767_225_600_000
DAY_MS = 86_400_000
PARAMS = (0.01, 0.1, -0.3, 0.0, 0.2)
PER_BOOK = ("venue", "strike", "option_type", "contract_size", "stale", "bid_px", "bid_size_contracts", "bid_iv",
            "ask_px", "ask_size_contracts", "ask_iv", "bid_exec_px", "bid_exec_iv", "ask_exec_px", "ask_exec_iv")


def fit_item(i: int, epoch: int, lad) -> ExpiryFit:
    expiry_ms, t = T0 + (i + 1) * 7 * DAY_MS, 0.02 * (i + 1)
    fit = SmileFit("deribit", "BTC", expiry_ms, epoch, T0 + epoch, T0 + epoch, t, 100_000.0, *PARAMS, 0.2, 20, True,
                   0.05, 1.0)
    chain = ChainUpdate("deribit", "BTC", expiry_ms, epoch, T0 + epoch, T0 + epoch, t, 100_000.0, "future",
                        ladders=lad)
    return ExpiryFit(fit, chain)


def books(lad) -> dict:
    """instrument -> its row, from a Ladders' JSON."""
    d = to_dict(lad)
    return {name: {f: d[f][i] for f in PER_BOOK} for i, name in enumerate(d["instrument"])}


@st.composite
def epochs(draw):
    """Epochs of items: fits of 3 expiries (with ladders, or None) and removals."""
    out = []
    for epoch in range(1, draw(st.integers(1, 6)) + 1):
        items = []
        for _ in range(draw(st.integers(0, 4))):
            i = draw(st.integers(0, 2))
            if draw(st.integers(0, 5)) == 0:
                items.append(("gone", i))
            else:
                items.append(("fit", i, draw(st.none() | ladders(epoch))))
        out.append(items)
    return out


@settings(max_examples=150, deadline=None)
@given(seq=epochs())
def test_folded_patches_hold_every_books_latest_ladder(seq):
    surface = SurfaceLogic(SurfaceState("deribit", "BTC"), nodes=(), tenors_days=[7], drop_calendar_violators=False,
                           repair_calendar=False, weekend_weight=1.0, epoch_ms=50, now_ms=lambda: T0)
    shown = None
    expected: dict[int, dict] = {}  # expiry_ms -> instrument -> row
    for epoch, items in enumerate(seq, 1):
        sent: dict[int, dict] = {}  # what this epoch's fits carried, per expiry
        for entry in items:
            if entry[0] == "gone":
                e = T0 + (entry[1] + 1) * 7 * DAY_MS
                surface.on_items([ExpiryGone("deribit", "BTC", e)])
                expected.pop(e, None)
                sent.pop(e, None)
                continue
            item = fit_item(entry[1], epoch, entry[2])
            surface.on_items([item])
            e = item.fit.expiry_ms
            expected.setdefault(e, {})
            if entry[2] is not None:
                expected[e].update(books(entry[2]))
                sent.setdefault(e, {}).update(books(entry[2]))
        patch = surface.on_epoch()
        if patch is None:
            continue
        for view in patch.expiries:  # a patch carries only this epoch's books
            assert (books(view.ladders) if view.ladders is not None else {}) == sent.get(view.expiry_ms, {})
        assert all(v.ladders is None for v in surface.state.views.values())
        shown = apply_patch(shown, patch)
        got = {v.expiry_ms: (books(v.ladders) if v.ladders is not None else {}) for v in shown.expiries}
        assert got == expected
