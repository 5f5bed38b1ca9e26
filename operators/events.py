"""Event contracts: every event that crosses a step, a socket or a table (docs/architecture.md).

Frozen msgspec Structs (slotted, cheap to build and to pickle); serialised as one JSON
object with a `type` tag and a version field `v`. Pure data: no I/O, no bytewax, no numerics.

Units are in the names: `*_ms` are UTC epoch milliseconds, prices named `*_px` are in the
venue's quote unit (coin for Deribit options, USD for futures and indices), IVs are
decimals (0.65 = 65 %), `*_vol_pts` are vol points (0.65 → 65.0). A value that does not
exist (an IV the exchange marks as absent) is None, never NaN — with one exception: the
ladders' books × levels matrices (`Ladders`, `level_matrix`) are float64 numpy arrays whose
NaN is the missing value, written as JSON null and read back as NaN. A shock's ladders are
~4,000 books × 72 values: as tuples of Python floats they took a third of the chain's tick to
build and most of the cost of crossing processes (docs/benchmarks.md). A book side
(`BookUpdate.bids`/`asks`, `book_levels`) is a float64 array too, levels × (price, size), with
no missing values: an empty side has no rows; on the wire it is [[price, size], …].
"""

from __future__ import annotations

import types
from typing import Any, Optional, Union

import msgspec
import numpy as np
import orjson

SCHEMA_VERSION = 1

Level = tuple[float, float]  # (price, size); size 0 deletes the level in a change


class BookLevels(np.ndarray):
    """The annotation of a book side: at run time a plain float64 numpy array of levels × 2,
    (price, size) per row as the venue sent them. On the wire it is [[price, size], …] of numbers
    only (`book_levels`), which is what this marker type tells the JSON hooks apart from a ladder
    matrix (numbers or null). Only the JSON hook makes one, which BookUpdate turns back into a
    plain array."""


NO_BOOK_LEVELS = np.empty((0, 2))  # the empty book side, shared (read-only): every parser's "no levels"
NO_BOOK_LEVELS.flags.writeable = False
_Levels = tuple[Level, ...]


def book_levels(levels: Any) -> np.ndarray:
    """A book side as levels × 2 float64, from an array or from (price, size) pairs of numbers
    (tuples, lists, numpy scalars). Raises ValueError naming what is wrong."""
    if type(levels) is np.ndarray and levels.dtype == np.float64 and levels.ndim == 2 and levels.shape[1] == 2:
        return levels
    if not len(levels):
        return NO_BOOK_LEVELS
    try:
        out = np.asarray(levels, np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a book side is (price, size) pairs of numbers ({exc})") from None
    if out.ndim != 2 or out.shape[1] != 2:
        raise ValueError(f"a book side is levels × 2 (price, size), got shape {out.shape}")
    return out


def _wire_book_levels(rows: Any) -> np.ndarray:
    """A book side read from JSON or msgpack: [price, size] pairs of numbers and nothing else."""
    try:
        return book_levels(msgspec.convert(rows, _Levels))
    except msgspec.ValidationError as exc:
        raise ValueError(f"a book side is [price, size] pairs of numbers ({str(exc).partition(' - at ')[0]})") \
            from None


CONSOLIDATED = "all"  # the venue name of the surface combined across venues


def chain_key(venue: str, underlying: str, expiry_ms: int) -> str:
    """The key of the per-expiry chain state: `deribit|BTC|1767254400000`."""
    return f"{venue}|{underlying}|{expiry_ms}"


def split_chain_key(key: str) -> tuple[str, str, int]:
    """(venue, underlying, expiry_ms) of a chain key, routed or not: a key salted to run on its
    placed worker (`deribit|BTC|1767254400000#3`, connectors/venues/placement.py) drops the salt."""
    venue, underlying, expiry = key.split("|")
    return venue, underlying, int(expiry.partition("#")[0])


def surface_key(venue: str, underlying: str) -> str:
    """The key of the per-underlying surface state: `deribit|BTC`."""
    return f"{venue}|{underlying}"


class Event(msgspec.Struct, frozen=True):
    """Base of every event: an immutable msgspec Struct (slotted; built in ~0.1 µs where a
    frozen dataclass took 1.4 µs, which mattered at 100,000 book updates a second)."""


class Message(Event, tag_field="type", tag=True):
    """An event that travels on its own (a socket frame, a capture line, a sink row): msgspec
    writes its class name first as `"type"`, so one msgspec decoder of a Union of messages
    picks the class by that tag and validates every nested value in C (see from_json).
    SmileFit, ExpiryView, TenorPoint and CalendarCheck also travel nested inside a
    SurfacePatch, where they carry no tag: they stay plain Events and get a `type` only
    when sent alone (to_json), so the JSON on the wire is the same as before the tags."""


# ---------------------------------------------------------------- market events (sources)


class Instrument(Message):
    """A listed instrument, from discovery (`public/get_instruments`)."""

    venue: str
    instrument: str
    underlying: str  # "BTC"
    kind: str  # "option" | "future" | "perpetual"
    expiry_ms: int  # 08:00 UTC on Deribit; 0 for perpetuals
    strike: Optional[float] = None
    option_type: Optional[str] = None  # "C" | "P"
    tick_size: float = 0.0
    contract_size: float = 1.0
    quote_currency: str = ""  # "BTC" means coin-quoted premiums
    ts_recv_ms: int = 0
    listed_ms: int = 0  # when the venue listed it (Deribit creation_timestamp, OKX listTime); 0: not given
    v: int = SCHEMA_VERSION


class BookUpdate(Message):
    """An L2 book snapshot or change. Levels set absolute sizes; size 0 deletes.

    Each side is a levels × 2 float64 array of (price, size) rows in the venue's order
    (`book_levels`; any sequence of pairs given here becomes one): the books' compiled apply
    (operators/kernels/books.py) reads them as they are, and the Deribit batch decoder writes a
    whole source batch's levels into one array whose slices these are. With tuples of Python
    floats, the seed shock's parse and apply took 37.6 ms against 23.0 ms now; a frame of one or
    two levels costs 0.35–1.0 µs more (docs/benchmarks.md, "Frames decoded straight into arrays")."""

    venue: str
    instrument: str
    ts_exchange_ms: int
    ts_recv_ms: int
    seq: int  # Deribit change_id, OKX seqId
    prev_seq: Optional[int]  # None on a snapshot
    kind: str  # "snapshot" | "change"
    bids: BookLevels = msgspec.field(default_factory=lambda: NO_BOOK_LEVELS)
    asks: BookLevels = msgspec.field(default_factory=lambda: NO_BOOK_LEVELS)
    v: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        bids, asks = self.bids, self.asks
        if type(bids) is not np.ndarray or type(asks) is not np.ndarray:  # the parsers' arrays pass as they are
            msgspec.structs.force_setattr(self, "bids", book_levels(bids))
            msgspec.structs.force_setattr(self, "asks", book_levels(asks))

    def __eq__(self, other: object) -> bool:
        if type(other) is not BookUpdate:
            return NotImplemented
        return (self.instrument == other.instrument and self.seq == other.seq and self.prev_seq == other.prev_seq
                and self.kind == other.kind and self.ts_exchange_ms == other.ts_exchange_ms
                and self.ts_recv_ms == other.ts_recv_ms and self.venue == other.venue and self.v == other.v
                and np.array_equal(self.bids, other.bids) and np.array_equal(self.asks, other.asks))

    __hash__ = None  # type: ignore[assignment]  # holds arrays


# BookBatch's codes, read as they are by the books' compiled apply (operators/kernels/books.py)
BOOK_SNAPSHOT, BOOK_CHANGE = 0, 1  # BookBatch.kind
NO_PREV_SEQ = -(1 << 63)  # BookBatch.prev_seq of a snapshot (int64's least value)
_KIND_NAMES = ("snapshot", "change")


class BookBatch(Event):
    """Many book notifications of one venue in columns, row i the i-th in arrival order: what a
    batch parser emits for a run of them (connectors/venues/deribit/parse.py parse_columns) and
    what a chain applies in one compiled call, with no object per notification. The same facts as
    one BookUpdate per row (`updates()` makes those, for whoever holds books one update at a time).

    Row i's levels are px/size[start : start + sides[2i] + sides[2i+1]], its bids then its asks, in
    the venue's order, where start is the sum of the sides before it. Never serialised: it lives
    between a source and the chain steps it feeds (BookUpdates are what is stored and sent).
    Why: building a BookUpdate per notification, and reading one back per notification in the
    routing and the chain, was a quarter of a full-speed message's CPU (docs/benchmarks.md,
    "Book notifications in columns")."""

    venue: str
    instruments: list  # str per row
    ts_exchange_ms: np.ndarray  # int64 per row
    ts_recv_ms: np.ndarray  # int64 per row
    seq: np.ndarray  # int64 per row
    prev_seq: np.ndarray  # int64 per row, NO_PREV_SEQ on a snapshot
    kind: np.ndarray  # int64 per row, BOOK_SNAPSHOT | BOOK_CHANGE
    sides: np.ndarray  # int64, two per row: its bid levels, its ask levels
    px: np.ndarray  # float64, every row's levels in order
    size: np.ndarray  # float64, size 0 deletes the level in a change

    def __len__(self) -> int:
        return len(self.instruments)

    @classmethod
    def of(cls, updates: list) -> "BookBatch":
        """The BookBatch of BookUpdates of one venue, row i update i (the inverse of `updates()`)."""
        venues = {u.venue for u in updates}
        if len(venues) != 1:
            raise ValueError(f"a BookBatch holds one venue's updates, got venues {sorted(venues)}")
        sides = [side for u in updates for side in (u.bids, u.asks)]
        levels = np.concatenate(sides) if sides else NO_BOOK_LEVELS
        return cls(venues.pop(), [u.instrument for u in updates],
                   *(np.array(col, np.int64) for col in (
                       [u.ts_exchange_ms for u in updates], [u.ts_recv_ms for u in updates], [u.seq for u in updates],
                       [NO_PREV_SEQ if u.prev_seq is None else u.prev_seq for u in updates],
                       [_KIND_NAMES.index(u.kind) for u in updates], [len(side) for side in sides])),
                   levels[:, 0].copy(), levels[:, 1].copy())

    @classmethod
    def concat(cls, batches: list) -> "BookBatch":
        """One BookBatch of several of one venue, their rows in the order given."""
        first = batches[0]
        return cls(first.venue, [name for b in batches for name in b.instruments],
                   *(np.concatenate([getattr(b, f) for b in batches]) for f in _COLUMNS))

    def updates(self) -> list:
        """One BookUpdate per row, in order (their sides are views of px and size)."""
        both = np.stack((self.px, self.size), axis=1)
        out = []
        at = 0
        for i, (name, ts_x, ts_r, seq, prev, kind, n_bids, n_asks) in enumerate(zip(
                self.instruments, self.ts_exchange_ms.tolist(), self.ts_recv_ms.tolist(), self.seq.tolist(),
                self.prev_seq.tolist(), self.kind.tolist(), self.sides[0::2].tolist(), self.sides[1::2].tolist())):
            mid, end = at + n_bids, at + n_bids + n_asks
            out.append(BookUpdate(self.venue, name, ts_x, ts_r, seq, None if prev == NO_PREV_SEQ else prev,
                                  _KIND_NAMES[kind], both[at:mid] if n_bids else NO_BOOK_LEVELS,
                                  both[mid:end] if n_asks else NO_BOOK_LEVELS))
            at = end
        return out

    def split(self, group: np.ndarray) -> list:
        """[(g, BookBatch of the rows with group[row] == g, in arrival order)] for each g ≥ 0 present,
        g ascending; rows of group < 0 are left out. A batch all of one group is returned as is."""
        n = len(self.instruments)
        order = np.argsort(group, kind="stable")
        grouped = group[order]
        first = int(np.searchsorted(grouped, 0))
        if first == n:
            return []
        if first == 0 and grouped[0] == grouped[-1]:
            return [(int(grouped[0]), self)]
        order, grouped = order[first:], grouped[first:]
        per_row = self.sides[0::2] + self.sides[1::2]
        starts = np.cumsum(per_row) - per_row
        counts = per_row[order]
        ends = np.cumsum(counts)
        total = int(ends[-1]) if ends.size else 0
        # each kept row's levels, gathered in the new order
        levels = np.repeat(starts[order] - (ends - counts), counts) + np.arange(total)
        px, size = self.px[levels], self.size[levels]
        sides = self.sides.reshape(-1, 2)[order].ravel()
        ts_x, ts_r, seq, prev, kind = (a[order] for a in (self.ts_exchange_ms, self.ts_recv_ms, self.seq,
                                                           self.prev_seq, self.kind))
        names = self.instruments
        names = [names[i] for i in order.tolist()]
        cuts = [0, *(np.flatnonzero(grouped[1:] != grouped[:-1]) + 1).tolist(), len(order)]
        level_at = [0, *ends.tolist()]
        out = []
        for a, b in zip(cuts, cuts[1:]):
            la, lb = level_at[a], level_at[b]
            out.append((int(grouped[a]), BookBatch(self.venue, names[a:b], ts_x[a:b], ts_r[a:b], seq[a:b], prev[a:b],
                                                   kind[a:b], sides[2 * a:2 * b], px[la:lb], size[la:lb])))
        return out


_COLUMNS = ("ts_exchange_ms", "ts_recv_ms", "seq", "prev_seq", "kind", "sides", "px", "size")

def expand_books(events: list) -> list:
    """The events with each BookBatch replaced by its BookUpdates, in place of it."""
    if not any(type(e) is BookBatch for e in events):
        return events
    out: list = []
    for e in events:
        if type(e) is BookBatch:
            out.extend(e.updates())
        else:
            out.append(e)
    return out


class Ticker(Message):
    """Top of book plus the exchange's own marks; IVs are decimals, None if absent."""

    venue: str
    instrument: str
    ts_exchange_ms: int
    ts_recv_ms: int
    state: str = "open"
    best_bid_px: Optional[float] = None
    best_bid_size: float = 0.0
    best_ask_px: Optional[float] = None
    best_ask_size: float = 0.0
    mark_px: Optional[float] = None
    underlying_px: Optional[float] = None  # the forward the exchange uses for its IVs
    underlying_index: str = ""
    index_px: Optional[float] = None
    bid_iv: Optional[float] = None
    ask_iv: Optional[float] = None
    mark_iv: Optional[float] = None
    v: int = SCHEMA_VERSION


class IndexPrice(Message):
    venue: str
    underlying: str  # "BTC" for btc_usd
    ts_exchange_ms: int
    ts_recv_ms: int
    price: float
    v: int = SCHEMA_VERSION


class FuturePrice(Message):
    venue: str
    instrument: str
    underlying: str
    expiry_ms: int
    ts_exchange_ms: int
    ts_recv_ms: int
    bid: Optional[float] = None
    ask: Optional[float] = None
    mark: Optional[float] = None
    v: int = SCHEMA_VERSION


class FeedError(Message):
    """Bad input, reported instead of raised. `reason` is a short counter label."""

    venue: str
    reason: str  # malformed_json | oversized | bad_price | unknown_instrument | seq_gap | rpc_error | ...
    detail: str
    ts_recv_ms: int
    instrument: str = ""
    v: int = SCHEMA_VERSION


# Events whose order relative to book updates no chain depends on (it reads them at its tick): a
# run of book notifications may pass them (connectors/venues/deribit/parse.py parse_columns, and
# flows/routing.py joining such runs for the chains).
ORDER_FREE = frozenset((Ticker, IndexPrice, FuturePrice, FeedError))


# ---------------------------------------------------------------- derived events (steps)


def no_levels() -> np.ndarray:
    """The matrix of no books."""
    return np.empty((0, 0))


class Ladders(Event):
    """Depth ladders (vol at size) of some option books of one expiry, column by column: entry i
    of every field is book `instrument[i]`'s. Per side, its best `level_depth` levels, best first
    (none past the side's end), each with the implied vol of its price; then per size of
    `sizes_contracts` the price of walking the side to it (its size-weighted average: a sale walks
    the bids, a purchase the asks) and that price's vol (none where the side is thinner). Prices
    in coin, sizes in the book's contracts (contract_size coin each), vols decimals, none where
    a price carries no vol. Every vol is within 1 bp of an exact solve (docs/architecture.md §4.3).
    The per-level fields are books × levels float64 matrices (LADDER_MATRICES): "none" is NaN in
    memory and null on the wire."""

    level_depth: int = 0
    sizes_contracts: tuple[float, ...] = ()
    instrument: tuple[str, ...] = ()
    venue: tuple[str, ...] = ()
    strike: tuple[float, ...] = ()
    option_type: tuple[str, ...] = ()  # "C" | "P"
    contract_size: tuple[float, ...] = ()
    stale: tuple[bool, ...] = ()  # the book is withheld (gap, crossed, venue silent): no levels
    # books × level_depth (the levels) or books × len(sizes_contracts) (the walks): level_matrix
    bid_px: np.ndarray = msgspec.field(default_factory=no_levels)
    bid_size_contracts: np.ndarray = msgspec.field(default_factory=no_levels)
    bid_iv: np.ndarray = msgspec.field(default_factory=no_levels)
    ask_px: np.ndarray = msgspec.field(default_factory=no_levels)
    ask_size_contracts: np.ndarray = msgspec.field(default_factory=no_levels)
    ask_iv: np.ndarray = msgspec.field(default_factory=no_levels)
    bid_exec_px: np.ndarray = msgspec.field(default_factory=no_levels)
    bid_exec_iv: np.ndarray = msgspec.field(default_factory=no_levels)
    ask_exec_px: np.ndarray = msgspec.field(default_factory=no_levels)
    ask_exec_iv: np.ndarray = msgspec.field(default_factory=no_levels)
    v: int = SCHEMA_VERSION

    def __eq__(self, other: object) -> bool:
        # the matrices compare element by element, NaN equal to NaN (a missing value is one value)
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(a, b, equal_nan=True) if name in LADDER_MATRICES else a == b
                   for name, a, b in zip(self.__struct_fields__, msgspec.structs.astuple(self),
                                         msgspec.structs.astuple(other)))

    __hash__ = None  # type: ignore[assignment]  # holds arrays


# Ladders' books × levels fields, float64 with NaN for none (JSON null)
LADDER_MATRICES = frozenset(f.name for f in msgspec.structs.fields(Ladders) if f.type is np.ndarray)
_LevelRows = list[list[Optional[float]]]


def level_matrix(rows: Any) -> np.ndarray:
    """Books × levels as a float64 matrix, None → NaN: from decoded JSON (strictly numbers or
    null, rows of one length) or an array. Raises ValueError naming what is wrong."""
    if isinstance(rows, np.ndarray):
        matrix = rows.astype(np.float64, copy=False)
    else:
        try:
            rows = msgspec.convert(rows, _LevelRows)
        except msgspec.ValidationError as exc:
            raise ValueError(f"a ladder is rows of numbers or null ({str(exc).partition(' - at ')[0]})") from None
        if len({len(r) for r in rows}) > 1:
            raise ValueError("a ladder's rows differ in length")
        matrix = np.array(rows, dtype=np.float64) if rows else no_levels()
    if matrix.ndim != 2:
        raise ValueError(f"a ladder is books × levels (2 dimensions), got {matrix.ndim}")
    return matrix


class ChainUpdate(Message):
    """One expiry's strikes after an epoch: forward and per-strike IVs (decimals)."""

    venue: str
    underlying: str
    expiry_ms: int
    epoch: int
    ts_exchange_ms: int
    ts_emit_ms: int
    t_years: float
    forward: float
    forward_method: str  # "future" | "parity" | "underlying" | "index"
    strikes: tuple[float, ...] = ()
    bid_iv: tuple[Optional[float], ...] = ()
    ask_iv: tuple[Optional[float], ...] = ()
    mid_iv: tuple[Optional[float], ...] = ()
    delta: tuple[Optional[float], ...] = ()
    vega: tuple[Optional[float], ...] = ()
    changed: tuple[float, ...] = ()  # strikes whose IVs changed this epoch
    bid_venue: tuple[str, ...] = ()  # which venue's quote each bid/ask IV came from
    ask_venue: tuple[str, ...] = ()
    # vol at size (graph.toml [chain] level_depth, sizes_contracts; None when off): the books' ladders
    # that changed (a vol beyond change_bp, a level's price or size, staleness) since this expiry's
    # previous ChainUpdate — all of them on its first — so replacing them by instrument keeps them current
    ladders: Optional[Ladders] = None
    v: int = SCHEMA_VERSION


class SmileFit(Event):
    """An SVI fit of one expiry: raw params (plus any spline), quality and arbitrage diagnostics."""

    venue: str
    underlying: str
    expiry_ms: int
    epoch: int
    ts_exchange_ms: int
    ts_emit_ms: int
    t_years: float
    forward: float
    a: float
    b: float
    rho: float
    m: float
    sigma: float
    rmse_vol_pts: float
    n_quotes: int
    butterfly_ok: bool
    min_g: float
    fit_ms: float
    inside_band_frac: Optional[float] = None  # share of two-sided quotes the fit sits inside
    warm: bool = False
    forward_method: str = ""  # how the forward was found: "future" | "parity" | "underlying" | "index"
    repaired: bool = False  # the unconstrained fit had butterfly arbitrage and was replaced
    calendar_repaired: bool = False  # refitted by the surface step between its neighbours (a crossing)
    # the smooth local correction on [spline_lo_k, spline_hi_k] (k = ln(K/F)) a slice under 98.5 % in
    # band may carry: w(k) = raw SVI(a, b, rho, m, sigma) + Σ spline_w[j]·B_j(k), uniform cubic
    # B-splines zero at and beyond both ends (operators/kernels/bspline.py); () = raw SVI alone
    spline_lo_k: float = 0.0
    spline_hi_k: float = 0.0
    spline_w: tuple[float, ...] = ()
    v: int = SCHEMA_VERSION


class ExpiryView(Event):
    """Everything the dashboard shows for one expiry.

    `analytics` holds every graph.toml node's value by node name (None when the node failed
    or an input was missing): nodes are data, no node has a field of its own. `units` maps
    a node name to the display unit graph.toml gives it (`unit = "vol pts"`), only for the
    nodes that give one; the surface step shares one dict across all its views."""

    expiry_ms: int
    fit: SmileFit
    analytics: dict[str, Optional[float]] = msgspec.field(default_factory=dict)  # node name -> value
    units: dict[str, str] = msgspec.field(default_factory=dict)  # node name -> display unit
    strikes: tuple[float, ...] = ()  # the quotes behind the fit, for the smile plot
    bid_iv: tuple[Optional[float], ...] = ()
    ask_iv: tuple[Optional[float], ...] = ()
    calendar_ok: bool = True
    bid_venue: tuple[str, ...] = ()  # venue attribution of each quote (consolidated surfaces)
    ask_venue: tuple[str, ...] = ()
    # level = "instrument" nodes: node name -> one value per entry of `strikes` (None where the
    # node failed at that strike); units in `units` with the expiry-level ones
    strike_analytics: dict[str, tuple[Optional[float], ...]] = msgspec.field(default_factory=dict)
    # vol at size (graph.toml [chain] level_depth, sizes_contracts; None when off or none changed):
    # in a SurfacePatch only the books' ladders that changed since the expiry's previous patch, in a
    # SurfaceSnapshot every current one; merged by instrument (operators/merge.py merge_ladders)
    ladders: Optional[Ladders] = None
    v: int = SCHEMA_VERSION


class TenorPoint(Event):
    """A fixed-tenor point interpolated in total variance at fixed k. Its vols come from the
    calendar kernel (operators/kernels/calendar.py), not from graph.toml nodes, so renaming
    or removing a node never empties them."""

    tenor_days: int
    atm_vol: Optional[float] = None
    rr25: Optional[float] = None
    bf25: Optional[float] = None
    calendar_flag: bool = False  # an input pair of expiries has a calendar arbitrage
    v: int = SCHEMA_VERSION


class CalendarCheck(Event):
    """w(k, T2) ≥ w(k, T1) on a k-grid for one pair of consecutive expiries."""

    expiry_ms_1: int
    expiry_ms_2: int
    ok: bool
    worst: float  # min over k of w2 − w1 (negative = arbitrage)
    v: int = SCHEMA_VERSION


class SurfacePatch(Message):
    """Changed expiries only; `removed` lists expiries gone (expired or dropped)."""

    venue: str
    underlying: str
    epoch: int
    ts_exchange_ms: int
    ts_emit_ms: int
    expiries: tuple[ExpiryView, ...] = ()
    removed: tuple[int, ...] = ()
    tenors: tuple[TenorPoint, ...] = ()
    calendar: tuple[CalendarCheck, ...] = ()
    index_px: Optional[float] = None
    # level = "underlying" nodes: node name -> value (None: failed); in a patch only the values
    # that changed, in a snapshot all; units for the nodes sent that give one
    underlying_analytics: dict[str, Optional[float]] = msgspec.field(default_factory=dict)
    underlying_units: dict[str, str] = msgspec.field(default_factory=dict)
    v: int = SCHEMA_VERSION


class SurfaceSnapshot(Message):
    """The whole current surface of one underlying, for new clients."""

    venue: str
    underlying: str
    epoch: int
    ts_exchange_ms: int
    ts_emit_ms: int
    expiries: tuple[ExpiryView, ...] = ()
    tenors: tuple[TenorPoint, ...] = ()
    calendar: tuple[CalendarCheck, ...] = ()
    index_px: Optional[float] = None
    # level = "underlying" nodes: node name -> value (None: failed), and their display units
    underlying_analytics: dict[str, Optional[float]] = msgspec.field(default_factory=dict)
    underlying_units: dict[str, str] = msgspec.field(default_factory=dict)
    v: int = SCHEMA_VERSION


class StatusReport(Message):
    """Liveness counters a flow worker publishes to the gateway (latest per source wins)."""

    source: str  # "worker-0"
    ts_ms: int
    started_ms: int
    counters: dict[str, float] = msgspec.field(default_factory=dict)  # messages_in, fits, errors.<reason>, ...
    v: int = SCHEMA_VERSION


# ---------------------------------------------------------------- serialisation

EVENT_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Instrument, BookUpdate, Ticker, IndexPrice, FuturePrice, FeedError,
        ChainUpdate, SmileFit, ExpiryView, TenorPoint, CalendarCheck, SurfacePatch,
        SurfaceSnapshot, StatusReport,
    )
}


class ContractError(ValueError):
    """Bytes that are not a valid event of this schema."""


def enc_hook(obj: Any) -> Any:
    """msgspec's hook for what it cannot encode itself: a ladder matrix as nested lists (NaN is
    then written as null, as every NaN is)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def dec_hook(typ: type, obj: Any) -> Any:
    """msgspec's hook for the types it cannot decode itself: a ladder matrix (`level_matrix`), a
    book side (`book_levels`)."""
    if typ is np.ndarray:
        return level_matrix(obj)
    if typ is BookLevels:
        return _wire_book_levels(obj).view(BookLevels)  # msgspec checks the type; BookUpdate keeps a plain array
    raise NotImplementedError(f"cannot decode {typ!r}")


def schema_hook(typ: type) -> dict:
    """The JSON Schema of a ladder matrix, for msgspec.json.schema."""
    if typ is np.ndarray:
        return {"type": "array", "items": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "null"}]}}}
    if typ is BookLevels:
        return msgspec.json.schema(_Levels)
    raise NotImplementedError(f"no schema for {typ!r}")


_encode = msgspec.json.Encoder(enc_hook=enc_hook).encode


def dumps(value: Any) -> bytes:
    """JSON of an event, or of any value holding events (tuples, dicts); NaN → null. Messages
    carry their `type` tag wherever they sit; the four nestable events never do."""
    return _encode(value)


def to_json(event: Any) -> bytes:
    """One event as a JSON object with its `type` tag first and its version `v` last."""
    body = _encode(event)
    if isinstance(event, Message):
        return body  # msgspec wrote the tag
    # A nestable event sent alone: splice the tag in front rather than build a dict.
    return b'{"type":"' + type(event).__name__.encode() + b'",' + body[1:] if body != b"{}" else body


def to_dict(event: Any) -> dict:
    """Plain JSON-ready dict with the `type` tag (nested events untagged)."""
    return orjson.loads(to_json(event))


# ---------------------------------------------------------------- typed decoding
#
# One msgspec decoder per set of accepted classes, validating in C: types, nested values,
# required fields (a NaN travels as null, so a null where a plain float is required is
# refused; Optional fields take it). Measured with timeit on a 3.0 KB SurfacePatch (3
# expiries x 5 strikes, 3 tenors), best of 5 x 2000, on the shared 2-core dev box: the
# old hand-written type walker (orjson.loads, then type hints field by field) took
# 1.4 ms per patch; the gateway's old path (orjson.loads + a shallow dict check that let
# nested values through) 8.7 µs; msgspec.json.Decoder(Union[...]) takes 5.8 µs, with
# every nested value checked.
#
# The four nestable events have no tag of their own; to decode one sent alone they get a
# tagged twin (a subclass that only adds the tag), turned back into the plain class.


def _tagged_twin(cls: type) -> type:
    return types.new_class(cls.__name__, (cls,), {"tag_field": "type", "tag": cls.__name__})


_TWINS: dict[type, type] = {
    _tagged_twin(cls): cls for cls in EVENT_TYPES.values() if not issubclass(cls, Message)
}


def decoder(*classes: type) -> msgspec.json.Decoder:
    """A JSON decoder of exactly these Message classes (picked by their `type` tag); its
    errors go through contract_error for a message naming the type and field."""
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Message)):
            raise TypeError(f"decoder() takes Message classes (tagged); {cls!r} is not one")
    return msgspec.json.Decoder(Union[classes], dec_hook=dec_hook)  # type: ignore[valid-type]


_ANY = Union[tuple(c for c in EVENT_TYPES.values() if issubclass(c, Message)) + tuple(_TWINS)]  # type: ignore[valid-type]
_decode_any = msgspec.json.Decoder(_ANY, dec_hook=dec_hook).decode


def contract_error(data: Any, exc: Exception) -> ContractError:
    """The ContractError for input msgspec refused, naming the event type, the field and
    the value wanted. Runs on the error path only: it re-reads the input to say which
    event it claimed to be."""
    if isinstance(data, (bytes, bytearray, memoryview, str)):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError as json_exc:
            return ContractError(f"not JSON: {json_exc}")
    if not isinstance(data, dict) or "type" not in data:
        return ContractError(f"an event is a JSON object with a 'type' field, got {type(data).__name__}")
    name = data["type"]
    if not isinstance(name, str) or name not in EVENT_TYPES:
        return ContractError(f"unknown event type {name!r}; known: {', '.join(EVENT_TYPES)}")
    version = data.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        return ContractError(f"{name} has schema version {version}, this build reads {SCHEMA_VERSION}")
    detail = str(exc).replace("`$.", f"`{name}.").replace("`$`", f"`{name}`")
    return ContractError(f"bad {name}: {detail}")


def checked(event: Any) -> Any:
    """A freshly decoded event: its twin turned into the plain class, its version checked."""
    cls = _TWINS.get(type(event))
    if cls is not None:
        event = cls(*msgspec.structs.astuple(event))
    if event.v != SCHEMA_VERSION:
        raise ContractError(f"{type(event).__name__} has schema version {event.v}, this build reads {SCHEMA_VERSION}")
    return event


def from_json(raw: bytes | str) -> Any:
    """The event in one JSON object; ContractError (naming type and field) if it is not one."""
    try:
        event = _decode_any(raw)
    except (msgspec.DecodeError, UnicodeError) as exc:  # ValidationError included; a str with lone surrogates
        raise contract_error(raw, exc) from None
    return checked(event)


def from_dict(data: dict) -> Any:
    """The event in a decoded JSON object (e.g. a jsonb row), validated as from_json does."""
    try:
        event = msgspec.convert(data, _ANY, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise contract_error(data, exc) from None
    return checked(event)
