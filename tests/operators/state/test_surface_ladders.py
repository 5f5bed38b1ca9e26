"""Vol at size through the surface step (operators/state/surface.py): the ladders each
ChainUpdate carries, and those sent between fits (ExpiryLadders), reach the next patch's view of
that expiry only (merged by instrument in arrival order when several arrive in one epoch; between
fits the view is re-sent as it stands), the views the step keeps hold none, and folding the
patches with the one merge rule (operators/merge.py) gives, per live expiry, every book's latest
ladder as sent by the chain — an independent per-instrument dict here; a removed expiry's go with
it, and ladders for an expiry the surface does not hold are dropped."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import ChainUpdate, SmileFit, to_dict
from operators.items import ExpiryFit, ExpiryGone, ExpiryLadders
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
            roll = draw(st.integers(0, 6))
            if roll == 0:
                items.append(("gone", i))
            elif roll == 1:  # vol at size between fits
                items.append(("between", i, draw(ladders(epoch))))
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
    last_ts = 0
    expected: dict[int, dict] = {}  # expiry_ms -> instrument -> row
    for epoch, items in enumerate(seq, 1):
        held = set(surface.state.views)  # expiries the surface holds as the epoch starts
        fitted, gone = set(), set()  # a fit this epoch (after any removal); removed this epoch
        arrived: dict[int, list] = {}  # expiry -> its ladders this epoch since its last removal, in order
        for entry in items:
            e = T0 + (entry[1] + 1) * 7 * DAY_MS
            if entry[0] == "gone":
                surface.on_items([ExpiryGone("deribit", "BTC", e)])
                expected.pop(e, None)
                fitted.discard(e)
                gone.add(e)
                arrived.pop(e, None)
            elif entry[0] == "between":  # vol at size between fits
                surface.on_items([ExpiryLadders("deribit", "BTC", e, entry[2], T0 + epoch)])
                arrived.setdefault(e, []).append(books(entry[2]))
            else:
                surface.on_items([fit_item(entry[1], epoch, entry[2])])
                fitted.add(e)
                expected.setdefault(e, {})
                if entry[2] is not None:
                    arrived.setdefault(e, []).append(books(entry[2]))
        # ladders count for an expiry the surface holds when the patch is made: one fitted this
        # epoch, or one it held and did not remove; the others are dropped
        sent: dict[int, dict] = {}  # what this epoch's patch carries, per expiry
        for e, rows in arrived.items():
            if e in fitted or (e in held and e not in gone):
                for r in rows:
                    expected[e].update(r)
                    sent.setdefault(e, {}).update(r)
        patch = surface.on_epoch()
        if patch is None:
            continue
        # the surface's exchange clock never goes back, and ladders sent between fits move it on
        # (their book data is newer than the fits: each here carries T0 + its epoch)
        assert patch.ts_exchange_ms >= last_ts
        if any(entry[0] == "between" for entry in items) and arrived:
            assert patch.ts_exchange_ms >= T0 + epoch
        last_ts = patch.ts_exchange_ms
        for view in patch.expiries:  # a patch carries only this epoch's books
            assert (books(view.ladders) if view.ladders is not None else {}) == sent.get(view.expiry_ms, {})
        assert all(v.ladders is None for v in surface.state.views.values())
        shown = apply_patch(shown, patch)
        got = {v.expiry_ms: (books(v.ladders) if v.ladders is not None else {}) for v in shown.expiries}
        assert got == expected
