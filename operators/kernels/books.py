"""L2 order books as arrays, and the compiled apply of a batch of snapshots and changes to them.

Pure numerics over numpy arrays (numba loops): no I/O, no objects, never imports connectors,
flows or operators.state (operators.events only for the codes of the columns it reads). The rules a book follows live here once (operators/state/book.py wraps
them: BookStore for a chain's many books, OrderBook for one):

  * a snapshot replaces both sides (its size-0 levels are absent) and ends staleness;
  * a change applies only when its prev_seq equals the book's last seq: otherwise the book goes
    stale ("seq_gap", said once per gap) and every change is refused until the next snapshot;
  * levels set absolute sizes, size 0 deletes; a book whose best bid ≥ best ask after an update
    is stale ("crossed_book": the update is applied, the book withheld until its next snapshot).

Layout, per side (0 bids, 1 asks) and book row: the live levels best first in
px[side, row, :count[side, row]] (bids high → low, asks low → high) with their sizes in sz; so
the touch is column 0 and a ladder of depth d is the first d columns — read with no sort. A level
is found by binary search and inserted or deleted by shifting the levels behind it (the books
here keep tens of levels: a shift is a few cache lines).

Ladder tracking (the chain's level vols, docs/architecture.md §4.3): `reach[side, row]` is how
many levels, best first, the chain's last read of that side depended on (REACH_ANY: all of
them, or not read yet; 0: level vols off). A change at a position below it raises ladder[row];
so do a snapshot, a gap and a crossing when level vols are on (`levels_on`).

Sequence numbers are int64 with NO_SEQ for "none" (a book with no snapshot yet; a snapshot's
absent prev_seq).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from operators.events import BOOK_CHANGE as CHANGE  # the update kinds and "no seq" of BookBatch's columns,
from operators.events import BOOK_SNAPSHOT as SNAPSHOT  # which the apply reads as they are
from operators.events import NO_PREV_SEQ as NO_SEQ

REACH_ANY = np.iinfo(np.int64).max
OK, SEQ_GAP, CROSSED = 0, 1, 2  # per-update outcome codes
_NO_SEQ = int(NO_SEQ)


@nb.njit(cache=True, inline="always")
def _find(px, side, row, n, p):
    """First position whose price is not better than p (bids: ≤ p, asks: ≥ p)."""
    lo, hi = 0, n
    if side == 0:
        while lo < hi:
            mid = (lo + hi) >> 1
            if px[side, row, mid] > p:
                lo = mid + 1
            else:
                hi = mid
    else:
        while lo < hi:
            mid = (lo + hi) >> 1
            if px[side, row, mid] < p:
                lo = mid + 1
            else:
                hi = mid
    return lo


@nb.njit(cache=True)
def _set_level(px, sz, count, side, row, p, q):
    """Set one level's size (q = 0 deletes); returns the position it was or went at, -1 if a
    deletion found nothing."""
    n = count[side, row]
    j = _find(px, side, row, n, p)
    if j < n and px[side, row, j] == p:
        if q > 0.0:
            sz[side, row, j] = q
        else:
            for i in range(j, n - 1):
                px[side, row, i] = px[side, row, i + 1]
                sz[side, row, i] = sz[side, row, i + 1]
            count[side, row] = n - 1
        return j
    if not q > 0.0:
        return -1
    for i in range(n, j, -1):
        px[side, row, i] = px[side, row, i - 1]
        sz[side, row, i] = sz[side, row, i - 1]
    px[side, row, j] = p
    sz[side, row, j] = q
    count[side, row] = n + 1
    return j


@nb.njit(cache=True)
def apply_batch(rows, kinds, seqs, prevs, sides, level_px, level_size, px, sz, count, last_seq, stale, reach, ladder,
                levels_on, outcome, said_seq, said_px, touched, room_checked):
    """Apply updates u = 0 … in order to the books rows[u]. Update u has sides[2u] bids and
    sides[2u + 1] asks, its levels at level_px/level_size from the sum of the sides before it
    (bids, then asks). Writes outcome[u] (OK / SEQ_GAP / CROSSED; a gap said once is OK the next
    time), what the error says (a gap: the book's last seq in said_seq[u]; a crossing: its best
    bid and ask in said_px[u]), and the rows whose touch (best bid, best ask or staleness) differs
    from before the batch to touched[:k]; returns (k, updates with an error).
    Unless room_checked, first checks the cheap bound on room (every level of the batch added to
    the fullest side it touches) and returns (-1, 0), changing nothing, when px/sz are too narrow
    for it: the caller then checks exactly (per book) and widens them."""
    cap = px.shape[2]
    if not room_checked:
        total = 0
        for i in range(sides.shape[0]):
            total += sides[i]
        fullest = 0
        for u in range(rows.shape[0]):
            fullest = max(fullest, count[0, rows[u]], count[1, rows[u]])
        if fullest + total > cap:
            return -1, 0
    nrows = count.shape[1]
    seen = np.zeros(nrows, np.bool_)
    was_bid = np.empty(nrows)
    was_ask = np.empty(nrows)
    was_stale = np.zeros(nrows, np.bool_)
    order = np.empty(rows.shape[0], np.int64)
    n_seen = 0
    at = 0
    errors = 0
    for u in range(rows.shape[0]):
        r = rows[u]
        if not seen[r]:
            seen[r] = True
            was_bid[r] = px[0, r, 0] if count[0, r] > 0 else np.nan
            was_ask[r] = px[1, r, 0] if count[1, r] > 0 else np.nan
            was_stale[r] = stale[r]
            order[n_seen] = r
            n_seen += 1
        a = at
        nb_ = sides[2 * u]
        na_ = sides[2 * u + 1]
        at += nb_ + na_
        outcome[u] = OK
        if kinds[u] == SNAPSHOT:
            count[0, r] = 0
            count[1, r] = 0
            for i in range(a, a + nb_):
                if level_size[i] > 0.0:  # a snapshot's size-0 level is absent, not a deletion
                    _set_level(px, sz, count, 0, r, level_px[i], level_size[i])
            for i in range(a + nb_, a + nb_ + na_):
                if level_size[i] > 0.0:
                    _set_level(px, sz, count, 1, r, level_px[i], level_size[i])
            last_seq[r] = seqs[u]
            stale[r] = False
            if levels_on:
                ladder[r] = True
        else:
            if last_seq[r] == _NO_SEQ or prevs[u] != last_seq[r]:
                if not stale[r]:
                    stale[r] = True
                    outcome[u] = SEQ_GAP
                    errors += 1
                    said_seq[u] = last_seq[r]
                    if levels_on:
                        ladder[r] = True
                continue  # not applied; one error per gap
            for i in range(a, a + nb_):
                j = _set_level(px, sz, count, 0, r, level_px[i], level_size[i])
                if 0 <= j < reach[0, r]:
                    ladder[r] = True
            for i in range(a + nb_, a + nb_ + na_):
                j = _set_level(px, sz, count, 1, r, level_px[i], level_size[i])
                if 0 <= j < reach[1, r]:
                    ladder[r] = True
            last_seq[r] = seqs[u]
        if count[0, r] > 0 and count[1, r] > 0 and px[0, r, 0] >= px[1, r, 0]:
            stale[r] = True
            outcome[u] = CROSSED
            errors += 1
            said_px[u, 0] = px[0, r, 0]
            said_px[u, 1] = px[1, r, 0]
            if levels_on:
                ladder[r] = True
    k = 0
    for i in range(n_seen):
        r = order[i]
        bid = px[0, r, 0] if count[0, r] > 0 else np.nan
        ask = px[1, r, 0] if count[1, r] > 0 else np.nan
        same_bid = bid == was_bid[r] or (bid != bid and was_bid[r] != was_bid[r])
        same_ask = ask == was_ask[r] or (ask != ask and was_ask[r] != was_ask[r])
        if not (same_bid and same_ask and stale[r] == was_stale[r]):
            touched[k] = r
            k += 1
    return k, errors


def warm_up() -> None:
    """Compile (or load from the numba cache) the apply on a tiny batch."""
    px, sz = np.zeros((2, 1, 4)), np.zeros((2, 1, 4))
    count = np.zeros((2, 1), np.int64)
    levels = np.array([[1.0, 1.0], [2.0, 1.0], [1.5, 0.0]])  # (price, size) rows, read by column as callers do
    apply_batch(np.zeros(2, np.int64), np.array([SNAPSHOT, CHANGE], np.int64), np.array([1, 2], np.int64),
                np.array([NO_SEQ, 1], np.int64), np.array([1, 1, 1, 0], np.int64), levels[:, 0], levels[:, 1], px, sz,
                count, np.full(1, NO_SEQ, np.int64), np.ones(1, np.bool_), np.full((2, 1), REACH_ANY, np.int64),
                np.zeros(1, np.bool_), True, np.zeros(2, np.int64), np.zeros(2, np.int64), np.zeros((2, 2)),
                np.zeros(1, np.int64), False)
