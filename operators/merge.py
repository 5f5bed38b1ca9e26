"""The one rule for merging surface patches.

Every place that folds a SurfacePatch into a surface uses this module: the flow's
publisher, the gateway's per-surface state and per-client coalescing, the Postgres row
plan; `applyPatch` in dashboard/app.js is the browser's copy of the same rule and
tests/dashboard/test_merge_js.py checks it against this one on generated sequences.

The rule, for a patch P applied to a snapshot S:
  - expiries: first drop every expiry in P.removed (its ladders with it), then P.expiries
    replace by expiry_ms (an expiry both removed and sent in one patch ends up present), except
    their `ladders` (vol at size, per option book): a patch's view carries only the books that
    changed, so the new view's ladders are the old view's updated by instrument (merge_ladders:
    a book already there keeps its place, a new one goes after); a view with ladders None keeps
    the old ones. A merged patch therefore lists every expiry removed in it, even one re-sent
    after its removal (the removal must still drop the ladders before it);
  - tenors and calendar: replaced whole by P's (they are small and global);
  - index_px: P's if not None, else S's;
  - underlying_analytics and underlying_units (graph.toml's level = "underlying" nodes): S's
    updated by P's, key by key (a patch carries only the values that changed);
  - head (venue, underlying, epoch, ts_exchange_ms, ts_emit_ms): P's.
The result lists expiries sorted by expiry_ms.

Coalescing law (property-tested in tests/operators/test_merge.py): for every snapshot s
(None included) and patches a, b,
    apply_patch(apply_patch(s, a), b) == apply_patch(s, merge_patches(a, b)),
while the ladders keep one shape (level_depth, sizes_contracts). A ladder of another shape (a
config change across a restart) replaces the old one whole, which no associative rule can do:
a client folding patches across such a change may keep books from before it.

Pure: no I/O, no bytewax, no logging; imports only msgspec, numpy (the ladders' matrices) and
operators.events.
"""

from __future__ import annotations

from typing import Optional, Union

import msgspec
import numpy as np

from operators.events import LADDER_MATRICES, ExpiryView, Ladders, SurfacePatch, SurfaceSnapshot, level_matrix

__all__ = ["apply_patch", "merge_patches", "coalesce", "fold_patches", "merge_ladders", "SurfaceState"]

# Ladders' per-book columns (everything but level_depth, sizes_contracts and v): tuples, and
# the books × levels matrices (arrays)
LADDER_COLUMNS = tuple(f for f in Ladders.__struct_fields__ if f not in ("level_depth", "sizes_contracts", "v"))
_TUPLE_COLUMNS = tuple(f for f in LADDER_COLUMNS if f not in LADDER_MATRICES)


def merge_ladders(old: Optional[Ladders], new: Optional[Ladders]) -> Optional[Ladders]:
    """`old` updated by `new`, book by book (keyed by instrument): a book in both takes new's
    values at old's place, new books follow in new's order; level_depth and sizes_contracts are
    new's (old ladders of another depth or sizes — a config change across a restart — are
    dropped). None stands for no books."""
    if new is None or not new.instrument:
        return old if old is not None else new
    if old is None or not old.instrument or (old.level_depth, old.sizes_contracts) != (
            new.level_depth, new.sizes_contracts):
        return new
    n_old = len(old.instrument)
    rows: dict[str, int] = {name: i for i, name in enumerate(old.instrument)}  # row of old, or n_old + row of new
    for j, name in enumerate(new.instrument):
        rows[name] = n_old + j
    picks = list(rows.values())
    columns = {}
    for f in _TUPLE_COLUMNS:
        both = getattr(old, f) + getattr(new, f)
        columns[f] = tuple(both[i] for i in picks)
    take = np.fromiter(picks, np.intp, len(picks))
    for f in LADDER_MATRICES:
        columns[f] = np.concatenate((level_matrix(getattr(old, f)), level_matrix(getattr(new, f))))[take]
    return Ladders(level_depth=new.level_depth, sizes_contracts=new.sizes_contracts, **columns)


def _merged_view(old: Optional[ExpiryView], new: ExpiryView) -> ExpiryView:
    """`new` with its ladders merged into `old`'s (see the rule)."""
    if old is None or old.ladders is None:
        return new
    ladders = merge_ladders(old.ladders, new.ladders)
    return new if ladders is new.ladders else msgspec.structs.replace(new, ladders=ladders)


def apply_patch(snapshot: Optional[SurfaceSnapshot], patch: SurfacePatch) -> SurfaceSnapshot:
    """Merge a patch into a snapshot (None = no surface yet); see the module docstring."""
    by_expiry = {e.expiry_ms: e for e in snapshot.expiries} if snapshot is not None else {}
    for gone in patch.removed:
        by_expiry.pop(gone, None)
    for view in patch.expiries:
        by_expiry[view.expiry_ms] = _merged_view(by_expiry.get(view.expiry_ms), view)
    index_px = patch.index_px
    if index_px is None and snapshot is not None:
        index_px = snapshot.index_px
    values, units = ({**snapshot.underlying_analytics, **patch.underlying_analytics},
                     {**snapshot.underlying_units, **patch.underlying_units}) if snapshot is not None else \
        (dict(patch.underlying_analytics), dict(patch.underlying_units))
    return SurfaceSnapshot(**_latest(patch), expiries=tuple(by_expiry[k] for k in sorted(by_expiry)),
                           index_px=index_px, underlying_analytics=values, underlying_units=units)


def merge_patches(first: SurfacePatch, second: SurfacePatch) -> SurfacePatch:
    """One patch equivalent to applying `first` then `second`:
    apply_patch(apply_patch(s, first), second) == apply_patch(s, merge_patches(first, second))."""
    return fold_patches((first, second))


def fold_patches(patches: "tuple[SurfacePatch, ...] | list[SurfacePatch]") -> SurfacePatch:
    """merge_patches folded left over a non-empty sequence, in one pass (the gateway
    coalesces a client's queued patches this way: one dict pass, not n-1 Struct builds)."""
    views: dict[int, ExpiryView] = {}
    removed: set[int] = set()
    index_px = None
    values: dict = {}
    units: dict = {}
    for patch in patches:
        values.update(patch.underlying_analytics)
        units.update(patch.underlying_units)
        for gone in patch.removed:
            views.pop(gone, None)
            removed.add(gone)
        for view in patch.expiries:
            views[view.expiry_ms] = _merged_view(views.get(view.expiry_ms), view)
        if patch.index_px is not None:
            index_px = patch.index_px
    last = patches[-1]
    return SurfacePatch(**_latest(last), expiries=tuple(views[k] for k in sorted(views)),
                        removed=tuple(sorted(removed)), index_px=index_px,
                        underlying_analytics=values, underlying_units=units)


def _latest(patch: SurfacePatch) -> dict:
    """What the newest patch replaces whole: its header, the tenors and the calendar checks."""
    return {"venue": patch.venue, "underlying": patch.underlying, "epoch": patch.epoch,
            "ts_exchange_ms": patch.ts_exchange_ms, "ts_emit_ms": patch.ts_emit_ms,
            "tenors": patch.tenors, "calendar": patch.calendar}


Surface = Union[SurfacePatch, SurfaceSnapshot]


def coalesce(pending: Optional[Surface], new: Surface) -> Surface:
    """The single message that replaces `pending` followed by `new` for one surface."""
    if pending is None or isinstance(new, SurfaceSnapshot):
        return new
    if isinstance(pending, SurfaceSnapshot):
        return apply_patch(pending, new)
    return merge_patches(pending, new)


class SurfaceState:
    """The current surface of one (venue, underlying), mutable so that applying a patch
    costs O(changed expiries), not a rebuild of the whole snapshot: same rule as
    apply_patch (tests check `snapshot()` against apply_patch folded over the patches).
    `version` counts changes, so a caller can cache what it derives from a snapshot."""

    __slots__ = ("head", "views", "index_px", "values", "units", "version", "_snapshot", "_snapshot_version")

    def __init__(self) -> None:
        self.head: Optional[Surface] = None  # the last patch/snapshot: venue, epoch, tenors, ...
        self.views: dict[int, ExpiryView] = {}
        self.index_px: Optional[float] = None
        self.values: dict[str, Optional[float]] = {}  # underlying_analytics
        self.units: dict[str, str] = {}  # underlying_units
        self.version = 0
        self._snapshot: Optional[SurfaceSnapshot] = None
        self._snapshot_version = -1

    def apply(self, patch: SurfacePatch) -> None:
        views = self.views
        for gone in patch.removed:
            views.pop(gone, None)
        for view in patch.expiries:
            views[view.expiry_ms] = _merged_view(views.get(view.expiry_ms), view)
        if patch.index_px is not None:
            self.index_px = patch.index_px
        if patch.underlying_analytics or patch.underlying_units:
            self.values = {**self.values, **patch.underlying_analytics}
            self.units = {**self.units, **patch.underlying_units}
        self.head = patch
        self.version += 1

    def replace(self, snapshot: SurfaceSnapshot) -> None:
        self.views = {v.expiry_ms: v for v in snapshot.expiries}
        self.index_px = snapshot.index_px
        self.values, self.units = dict(snapshot.underlying_analytics), dict(snapshot.underlying_units)
        self.head = snapshot
        self.version += 1

    def snapshot(self) -> Optional[SurfaceSnapshot]:
        """The merged SurfaceSnapshot (built once per version); None before any update."""
        head = self.head
        if head is None:
            return None
        if self._snapshot_version != self.version:
            self._snapshot = SurfaceSnapshot(
                venue=head.venue,
                underlying=head.underlying,
                epoch=head.epoch,
                ts_exchange_ms=head.ts_exchange_ms,
                ts_emit_ms=head.ts_emit_ms,
                expiries=tuple(self.views[k] for k in sorted(self.views)),
                tenors=head.tenors,
                calendar=head.calendar,
                index_px=self.index_px,
                underlying_analytics=self.values,
                underlying_units=self.units,
            )
            self._snapshot_version = self.version
        return self._snapshot
