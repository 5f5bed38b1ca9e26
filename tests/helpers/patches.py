"""Hypothesis strategies for surface patch sequences, shared by the tests of the one merge
rule (tests/operators/test_merge.py) and of the dashboard's copy of it
(tests/dashboard/test_merge_js.py), so both run on the same generated sequences.

Expiries are drawn from a handful of keys so that patches overlap, remove what others
add and re-add what was removed; every view carries the epoch of its patch in its fit,
so which version of an expiry survives is visible in the result. With with_ladders, views
carry vol-at-size ladders over a handful of instruments (sparse, as patches carry them), so
the merge by instrument is exercised. Test support only."""

from __future__ import annotations

from hypothesis import strategies as st

from operators.events import (CalendarCheck, ExpiryView, Ladders, SmileFit, SurfacePatch, SurfaceSnapshot, TenorPoint,
                              level_matrix)

VENUE, UNDERLYING = "deribit", "BTC"
EXPIRY0_MS = 1_767_254_400_000  # 2026-01-01 08:00 UTC
DAY_MS = 86_400_000
N_KEYS = 7

vols = st.floats(0.05, 3.0, allow_nan=False)
opt_vols = st.none() | vols


def expiry_ms(i: int) -> int:
    return EXPIRY0_MS + i * DAY_MS


LADDER_BOOKS = tuple((90_000.0 + 5_000.0 * (k // 2), "CP"[k % 2]) for k in range(6))  # (strike, type)
LADDER_DEPTH = 2
LADDER_SIZES = (1.0, 5.0)


def ladder_instrument(strike: float, option_type: str) -> str:
    return f"BTC-1JAN26-{strike:.0f}-{option_type}"


@st.composite
def ladders(draw, epoch: int) -> Ladders:
    """The ladders of some books (a few of LADDER_BOOKS, any order; stale ones have no levels)."""
    picks = draw(st.lists(st.integers(0, len(LADDER_BOOKS) - 1), unique=True, min_size=1, max_size=4))
    px = st.none() | st.floats(0.0005, 0.5)
    size = st.none() | st.floats(0.1, 50.0)

    def rows(values, n):  # a ladder matrix as the flow makes it (None drawn: NaN)
        return level_matrix([[draw(values) for _ in range(n)] for _ in picks])

    stale = tuple(draw(st.booleans()) for _ in picks)
    return Ladders(
        level_depth=LADDER_DEPTH, sizes_contracts=LADDER_SIZES,
        instrument=tuple(ladder_instrument(*LADDER_BOOKS[k]) for k in picks), venue=tuple(VENUE for _ in picks),
        strike=tuple(LADDER_BOOKS[k][0] for k in picks), option_type=tuple(LADDER_BOOKS[k][1] for k in picks),
        contract_size=tuple(1.0 for _ in picks), stale=stale,
        bid_px=rows(px, LADDER_DEPTH), bid_size_contracts=rows(size, LADDER_DEPTH), bid_iv=rows(opt_vols, LADDER_DEPTH),
        ask_px=rows(px, LADDER_DEPTH), ask_size_contracts=rows(size, LADDER_DEPTH), ask_iv=rows(opt_vols, LADDER_DEPTH),
        bid_exec_px=rows(px, len(LADDER_SIZES)), bid_exec_iv=rows(opt_vols, len(LADDER_SIZES)),
        ask_exec_px=rows(px, len(LADDER_SIZES)), ask_exec_iv=rows(opt_vols, len(LADDER_SIZES)))


@st.composite
def views(draw, i: int, epoch: int, with_ladders: bool = False) -> ExpiryView:
    e = expiry_ms(i)
    fit = SmileFit(VENUE, UNDERLYING, e, epoch, epoch * 50, epoch * 50 + 3, 0.01 + i / 365, 95_000.0 + draw(vols),
                   draw(st.floats(-0.1, 0.1)), 0.1, -0.3, 0.0, 0.2, draw(st.floats(0.0, 2.0)), draw(st.integers(0, 40)),
                   draw(st.booleans()), 0.5, 1.5, inside_band_frac=draw(st.none() | st.floats(0.0, 1.0)))
    n = draw(st.integers(0, 3))
    return ExpiryView(
        expiry_ms=e, fit=fit,
        analytics=draw(st.dictionaries(st.sampled_from(["atm_vol", "rr25", "bf25"]), opt_vols, max_size=3)),
        strikes=tuple(90_000.0 + 5_000.0 * k for k in range(n)),
        bid_iv=tuple(draw(opt_vols) for _ in range(n)), ask_iv=tuple(draw(vols) for _ in range(n)),
        calendar_ok=draw(st.booleans()),
        ladders=draw(st.none() | ladders(epoch)) if with_ladders else None,
    )


def tenors():
    return st.lists(st.builds(TenorPoint, st.sampled_from([1, 7, 30, 90]), opt_vols, opt_vols, opt_vols, st.booleans()),
                    max_size=3).map(tuple)


def calendars():
    return st.lists(st.builds(CalendarCheck, st.integers(0, N_KEYS).map(expiry_ms), st.integers(0, N_KEYS).map(expiry_ms),
                              st.booleans(), st.floats(-0.01, 0.01)), max_size=2).map(tuple)


UNDERLYING_NODES = ("slope", "fwd_vol", "skew_slope")


def underlying_values(draw, with_underlying: bool) -> dict:
    """underlying_analytics and underlying_units of level = "underlying" nodes (empty unless
    with_underlying: the dashboard's copy of the merge rule gains them separately)."""
    if not with_underlying:
        return {}
    names = draw(st.lists(st.sampled_from(UNDERLYING_NODES), unique=True, max_size=3))
    return {"underlying_analytics": {n: draw(opt_vols) for n in names},
            "underlying_units": {n: "vol/yr" for n in names if draw(st.booleans())}}


@st.composite
def patches(draw, epoch: int, with_underlying: bool = False, with_ladders: bool = False) -> SurfacePatch:
    """A patch: changed expiries in any order (no key twice), removals that may overlap them."""
    keys = draw(st.lists(st.integers(0, N_KEYS - 1), unique=True, max_size=4))
    return SurfacePatch(
        venue=VENUE, underlying=UNDERLYING, epoch=epoch, ts_exchange_ms=epoch * 50, ts_emit_ms=epoch * 50 + 5,
        expiries=tuple(draw(views(i, epoch, with_ladders)) for i in keys),
        removed=tuple(expiry_ms(i) for i in draw(st.lists(st.integers(0, N_KEYS - 1), unique=True, max_size=3))),
        tenors=draw(tenors()), calendar=draw(calendars()),
        index_px=draw(st.none() | st.floats(1_000.0, 200_000.0)), **underlying_values(draw, with_underlying),
    )


@st.composite
def snapshots(draw, epoch: int, with_underlying: bool = False, with_ladders: bool = False) -> SurfaceSnapshot:
    keys = sorted(draw(st.sets(st.integers(0, N_KEYS - 1), max_size=5)))
    return SurfaceSnapshot(
        venue=VENUE, underlying=UNDERLYING, epoch=epoch, ts_exchange_ms=epoch * 50, ts_emit_ms=epoch * 50 + 5,
        expiries=tuple(draw(views(i, epoch, with_ladders)) for i in keys), tenors=draw(tenors()), calendar=draw(calendars()),
        index_px=draw(st.none() | st.floats(1_000.0, 200_000.0)), **underlying_values(draw, with_underlying),
    )


@st.composite
def patch_sequences(draw, min_size: int = 1, max_size: int = 6, with_underlying: bool = False,
                    with_ladders: bool = False) -> list[SurfacePatch]:
    n = draw(st.integers(min_size, max_size))
    return [draw(patches(2 + i, with_underlying, with_ladders)) for i in range(n)]


@st.composite
def event_sequences(draw, max_size: int = 8, with_underlying: bool = False, with_ladders: bool = False) -> list:
    """Patches with the occasional snapshot (a snapshot replaces the whole surface)."""
    n = draw(st.integers(1, max_size))
    return [draw(snapshots(1 + i, with_underlying, with_ladders) if draw(st.integers(0, 4)) == 0
                 else patches(1 + i, with_underlying, with_ladders)) for i in range(n)]


def surface_ops(max_epoch_step: int = 2):
    """Patch/snapshot operations over 6 expiries with non-decreasing epochs, for the
    persistence tests (tests/connectors/postgres): (kind, epoch step — 0 = the same epoch
    again, changed expiries, removed expiries, with an index price)."""
    op = st.tuples(
        st.sampled_from(["patch", "patch", "patch", "snapshot"]),
        st.integers(0, max_epoch_step),
        st.sets(st.integers(0, 5), max_size=4),
        st.sets(st.integers(0, 5), max_size=3),
        st.booleans(),
    )
    return st.lists(op, min_size=1, max_size=8)
