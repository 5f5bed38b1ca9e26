"""Shared scaffolding of the venue websocket clients (connectors/venues/deribit/client.py,
connectors/venues/okx/client.py): the client's own thread and asyncio loop, the bounded event
queue between that loop and the consumer, counters and milestone waits, reconnect backoff, token
buckets, the option filter, the raw-frame tap used for recording, book integrity (staleness and
resync, below), and the bytewax source/partition that drive a client.

Protocol-free: nothing here knows a venue's frames, channels or sequencing fields (those stay in
the venue packages, which translate and supply `_resubscribe`). It never parses, never computes
anything about volatility, and never lets the socket loop block on the consumer.

Book integrity has one owner: the venue client (this class), because it sees the sequence chain
and can resubscribe. The rule:
- every BookUpdate is checked against the client's own copy of the book (an
  operators.state.book.OrderBook, whose apply() is the one implementation of "the change chains
  from the last sequence number" and "the top is not crossed") before it is queued;
- a gap, a crossed book (snapshot or change), an unreadable book frame, or a book event the
  queue could not keep makes that book stale: the failing event is not forwarded, the book's
  queued changes are dropped, one FeedError("seq_gap", instrument=X) goes downstream (plus a
  FeedError("crossed_book") for a crossed book), and X is resubscribed for a fresh snapshot;
- until that snapshot every change of X is dropped (counted changes_skipped_stale), and the
  chain step withholds X's quote (operators/state/chain.py, on the seq_gap);
- a session that ends withholds all its books the same way; the reconnect resubscribes them.
The parsers never judge a book; the chain step trusts what a client forwards (on a replayed
recording, which has no client, its OrderBook's own check withholds a bad book until the
recording's next snapshot of it).

About 600 lines as one piece: the queues, the client base and the source/partition are the one
lifecycle of a client (its thread feeds the queue the partition drains); the queues could move to
their own module if it grows further.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Optional

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.venues.folding import DROPPED, OVERFLOW, FoldingQueue
from connectors.venues.placement import Placement, slot_names
from operators.events import BookUpdate, FeedError, Instrument
from operators.state.book import OrderBook

log = logging.getLogger(__name__)

FrameTap = Callable[[int, str], None]  # (ts_recv_ms, raw text frame), called on the client's thread


def now_ms() -> int:
    return int(time.time() * 1000)


class BadFrame(Exception):
    """Internal to the parsers: a frame that fails validation; becomes a FeedError."""

    def __init__(self, reason: str, detail: str, instrument: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.instrument = instrument


def check_frame(raw: Any, max_bytes: int) -> None:
    """What every parser checks before decoding: a text or bytes frame within max_bytes."""
    if not isinstance(raw, (bytes, bytearray, memoryview, str)):
        raise BadFrame("malformed_json", f"frame must be bytes or str, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise BadFrame("oversized", f"frame of {len(raw)} bytes exceeds max_frame_bytes={max_bytes}; "
                       "raise max_frame_bytes if this frame is legitimate")


def parse_name(parse: Callable[[str], tuple], name_error: type, instrument: str) -> tuple:
    """A venue's instrument-name parser, its refusal turned into an `unknown_instrument` BadFrame."""
    try:
        return parse(instrument)
    except name_error as exc:
        raise BadFrame("unknown_instrument", str(exc), instrument) from None


def check_not_crossed(bid: Optional[float], ask: Optional[float], instrument: str, fields: str) -> None:
    """A top of book whose bid exceeds its ask is refused as `crossed_book` (`fields` names
    them as the venue does, e.g. "bidPx > askPx")."""
    if bid is not None and ask is not None and bid > ask:
        raise BadFrame("crossed_book", f"ticker {fields}: {bid} > {ask}", instrument)


# ---------------------------------------------------------------- event queues
# Both queues have one producer (the loop thread) and one consumer (the dataflow). push() says
# False when an event could not be kept (the caller resyncs that book); push_always() is for
# FeedErrors, which the book step must see and which are never dropped.


class BoundedQueue:
    """A plain FIFO of at most `max_items` market events. deque append/popleft/len are atomic
    under the GIL (one producer, one consumer): no lock."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._q: collections.deque = collections.deque()

    def __len__(self) -> int:
        return len(self._q)

    def push(self, ev: Any) -> bool:
        if len(self._q) >= self.max_items:
            return False
        self._q.append(ev)
        return True

    def push_always(self, ev: Any) -> None:
        self._q.append(ev)  # errors bypass the bound: few, and they carry staleness notices

    def discard(self, instrument: str, kinds: str) -> int:
        return 0  # a plain FIFO keeps no index by key: a stale book's queued changes reach the
        # consumer, which holds that book withheld until its snapshot anyway

    def drain(self, max_items: int) -> list:
        q = self._q
        out = []
        pop = q.popleft
        try:
            for _ in range(min(max_items, len(q))):
                out.append(pop())
        except IndexError:
            pass
        return out

    def stats(self) -> dict:
        return {"queue_len": len(self._q)}


class LockedFoldingQueue:
    """connectors.venues.folding.FoldingQueue behind a lock: pending events of one key fold into one."""

    def __init__(self, max_slots: int, max_levels: int):
        self._q = FoldingQueue(max_slots, max_levels)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._q)

    def push(self, ev: Any) -> bool:
        with self._lock:
            result = self._q.push(ev)
        return result != OVERFLOW and result != DROPPED

    def push_always(self, ev: Any) -> None:
        self.push(ev)  # events without a fold key (FeedError, Instrument) are always appended

    def drain(self, max_items: int) -> list:
        with self._lock:
            return self._q.drain(max_items)

    def discard(self, instrument: str, kinds: str) -> int:
        with self._lock:
            return self._q.discard(instrument, kinds)

    def stats(self) -> dict:
        with self._lock:
            out = {"queue_len": len(self._q)}
            for k, v in self._q.counters.items():
                out["queue." + k] = v
            out["fold_ratio"] = self._q.fold_ratio()
        return out


# ---------------------------------------------------------------- small loop-side helpers


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved (it starts full). Loop thread only."""

    def __init__(self, rate_per_s: float, burst: float):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.ts = time.monotonic()

    async def take(self, on_wait: Optional[Callable[[], None]] = None) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.ts) * self.rate_per_s)
            self.ts = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            if on_wait is not None:
                on_wait()
            await asyncio.sleep((1 - self.tokens) / self.rate_per_s)


async def _discard(ws) -> None:
    try:
        while True:
            await ws.recv(decode=False)
    except Exception:  # closed: exactly what we are waiting for
        pass


async def close_draining(ws) -> None:
    """Close `ws` while reading (and discarding) what still arrives: with the reader gone, a full
    receive buffer would hide the server's close frame and stall close() for close_timeout."""
    discard = asyncio.get_running_loop().create_task(_discard(ws))
    try:
        await ws.close()
    finally:
        discard.cancel()


def filter_options(options: list[Instrument], spot: Optional[float], max_expiries: Optional[int],
                   max_strikes: Optional[int]) -> list[Instrument]:
    """The nearest `max_expiries` expiries; per expiry the `max_strikes` strikes nearest `spot`
    (the median listed strike if the spot is unknown). Calls and puts are both kept."""
    by_expiry: dict[int, list[Instrument]] = collections.defaultdict(list)
    for inst in options:
        by_expiry[inst.expiry_ms].append(inst)
    expiries = sorted(by_expiry)
    if max_expiries is not None:
        expiries = expiries[:max_expiries]
    out = []
    for e in expiries:
        insts = by_expiry[e]
        if max_strikes is not None:
            strikes = sorted({i.strike for i in insts})
            center = spot if spot else strikes[len(strikes) // 2]
            keep = set(sorted(strikes, key=lambda k: (abs(math.log(k / center)), k))[:max_strikes])
            insts = [i for i in insts if i.strike in keep]
        out.extend(sorted(insts, key=lambda i: (i.strike, i.option_type)))
    return out


# ---------------------------------------------------------------- the client base


class VenueClient:
    """The venue-independent half of a client: own thread and asyncio loop (`_main`, written by
    the venue), the event queue, counters, milestone waits, backoff and the frame tap.

    Consumer side (any thread): start(), stop(), drain(), counters(), wait_for(). Loop side:
    _bump(), _push(), _push_error(), _backoff(), _received(), _book_event(), _mark_stale(),
    _withhold(), _connect(). A venue subclass sets `venue` and implements `async _main()` and
    `async _resubscribe(instruments)` (optionally `_resync_wanted(instrument)`); book integrity
    follows the rule in the module docstring.
    The options every venue shares (queue and frame bounds, chain trimming, subscribe batch,
    resync delay, reconnect backoff, connect timeout, proxy, frame tap) are kept here.
    """

    venue = ""
    seq_fields = ("prev_seq", "seq")  # the venue's names for them, in gap details ("prevSeqId", "seqId")

    def __init__(self, *, url: str, make_queue: Callable[[int], Any], thread_name: str, seed: Optional[int],
                 queue_max: int, max_frame_bytes: int, max_expiries: Optional[int], max_strikes: Optional[int],
                 include_futures: bool, subscribe_batch: int, resync_delay_s: float, reconnect_min_s: float,
                 reconnect_max_s: float, open_timeout_s: float, proxy: Any, frame_tap: Optional[FrameTap],
                 route: Optional[tuple[int, int]] = None):
        if queue_max < 1:
            raise ValueError(f"queue_max={queue_max}: must be >= 1")
        if frame_tap is not None and not callable(frame_tap):
            raise ValueError(f"frame_tap={frame_tap!r}: must be a callable (ts_recv_ms, frame) -> None, or None")
        self.url = url
        self.queue_max = queue_max
        self.max_frame_bytes = max_frame_bytes
        self.max_expiries = max_expiries
        self.max_strikes = max_strikes
        self.include_futures = include_futures
        self.subscribe_batch = subscribe_batch
        self.resync_delay_s = resync_delay_s
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.open_timeout_s = open_timeout_s
        self.proxy = proxy
        self.frame_tap = frame_tap
        if route is not None and not 0 <= route[0] < route[1]:
            raise ValueError(f"route={route!r}: (worker slot, workers) with 0 <= slot < workers")
        self.route = route  # read only the expiries placed on this worker slot (None: all)
        # every slot's client places the whole listing by the same rule (connectors/venues/placement.py)
        # weighed by the options a slot reads: max_strikes calls and puts at most
        self.placement = Placement(route[1] if route is not None else 1,
                                   cap=None if max_strikes is None else 2 * max_strikes)
        self._rng = random.Random(seed)
        self._queue = make_queue(queue_max)  # BoundedQueue or LockedFoldingQueue
        self._thread_name = thread_name
        self._has_data = threading.Event()
        self._counters: collections.Counter = collections.Counter()
        self._cond = threading.Condition()  # notified on session milestones (tests, ops)
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Event] = None
        self._stopping = False
        self._ids = itertools.count(1)
        self._stale: set[str] = set()  # books withheld until their next snapshot
        self._books: dict[str, OrderBook] = {}  # our copy of each live book, to verify every event
        self._resync_pending: set[str] = set()  # stale books whose resubscription is not yet sent
        self._resync_task: Optional[asyncio.Task] = None

    def on_this_worker(self, inst: Instrument) -> bool:
        """Whether this client reads `inst`: with a route, only options and futures of the
        expiries placed on the client's own slot (perpetuals and the index: every slot). Call
        `_place` with the chosen options first, or every expiry falls back to the hash rule."""
        if self.route is None:
            return True
        return self.placement.slot_of(inst.venue, inst.underlying, inst.expiry_ms) in (None, self.route[0])

    def _place(self, options: Iterable[Instrument], now: int) -> None:
        """Places the expiries of a discovery's whole option listing, before any filter (every
        slot's client sees the same listing, whatever spot it centres strikes on): new ones by
        listing order to the least-loaded slot, live ones kept (connectors/venues/placement.py)."""
        if self.route is None:
            return
        listings: dict[str, list[tuple[int, int]]] = {}
        for inst in options:
            listings.setdefault(inst.underlying, []).append((inst.expiry_ms, inst.listed_ms))
        for underlying, listing in listings.items():
            self.placement.assign(underlying, listing, now)

    def _let_go(self, inst: Instrument, why: str) -> None:
        """Stop a book for good (loop thread): forget our copy, its resync, its queued events.
        A delisted option is withheld downstream for good (a seq_gap no snapshot will end); at
        an expiry ("expired") the chain step removes the whole expiry itself: nothing is sent."""
        name = inst.instrument
        self._books.pop(name, None)
        self._stale.discard(name)
        self._resync_pending.discard(name)
        self._queue.discard(name, "BTF")
        if why != "expired" and inst.kind == "option":
            self._bump("errors.seq_gap")
            self._push_error("seq_gap", f"{why}: {name} is no longer listed; withheld for good", name)

    # -------------------------------------------------- consumer side (any thread)

    def start(self):
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__}.start() called twice; create a new client instead")
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        loop = self._loop
        if loop is not None and self._stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # the loop already closed
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            self._cond.notify_all()

    def drain(self, max_items: int = 10_000, timeout: float = 0.0) -> list:
        """Up to max_items events, oldest first (folded where the queue folds and the consumer
        fell behind). Non-blocking unless timeout > 0 (then waits at most that long for one)."""
        q = self._queue
        if timeout > 0 and not len(q):
            self._has_data.wait(timeout)
        out = q.drain(max_items)
        if not len(q):
            self._has_data.clear()
            if len(q):  # a producer pushed between the check and the clear
                self._has_data.set()
        return out

    def counters(self) -> dict:
        """A copy of the counters (the venue client's docstring lists them) plus queue_len and
        the queue's own figures."""
        out = dict(self._counters)
        out.update(self._queue.stats())
        return out

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(counters()) holds (re-checked on session milestones and every 50 ms)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.counters()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping:
                    return predicate(self.counters())
                self._cond.wait(min(left, 0.05))
        return True

    # -------------------------------------------------- loop thread

    def _bump(self, key: str, n: int = 1, notify: bool = False) -> None:
        self._counters[key] += n
        if notify:
            with self._cond:
                self._cond.notify_all()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except Exception:  # never die silently: the counters say what happened
            log.exception("%s client loop crashed", self.venue)
            self._bump("errors.client_crash", notify=True)
        finally:
            loop.close()

    async def _main(self) -> None:
        raise NotImplementedError

    def _push(self, ev) -> bool:
        """Queue a market event; False (counted queue_drops) when the bound refused it."""
        ok = self._queue.push(ev)
        if not self._has_data.is_set():
            self._has_data.set()
        if not ok:
            self._counters["queue_drops"] += 1
        return ok

    def _push_error(self, reason: str, detail: str, instrument: str = "") -> None:
        # Errors are never folded or dropped: the book step must see staleness notices.
        self._queue.push_always(FeedError(self.venue, reason, detail, now_ms(), instrument))
        self._has_data.set()

    async def _backoff(self, attempt: int) -> bool:
        """Sleep an exponential backoff with equal jitter; True if stop() came meanwhile."""
        # half fixed, half random: a fleet of clients dropped together does not reconnect in lockstep
        cap = min(self.reconnect_max_s, self.reconnect_min_s * (2 ** min(attempt, 16)))
        delay = cap / 2 + self._rng.uniform(0, cap / 2)
        try:
            await asyncio.wait_for(self._stop.wait(), delay)
            return True
        except asyncio.TimeoutError:
            return self._stopping

    def _received(self, raw: Any) -> int:
        """Count one frame just read and hand it to the frame tap; returns its receive time (ms)."""
        ts = now_ms()
        counters = self._counters
        counters["frames"] += 1
        counters["bytes"] += len(raw)
        if self.frame_tap is not None:
            self._tap(ts, raw)
        return ts

    def _book_event(self, ev: BookUpdate) -> bool:
        """Verify one BookUpdate against our copy of its book (the rule in the module docstring);
        True: queue it. A snapshot (re)starts the book; a change must chain and leave it uncrossed."""
        inst = ev.instrument
        book = self._books.get(inst)
        if ev.kind == "snapshot":
            if book is None:
                book = self._books[inst] = OrderBook()
            error = book.apply(ev)
            if error is None:
                self._stale.discard(inst)
                return True
        else:
            if book is None or book.stale:
                self._counters["changes_skipped_stale"] += 1  # waiting for a fresh snapshot
                return False
            last = book.last_seq
            error = book.apply(ev)
            if error is None:
                return True
        if error.reason == "seq_gap":
            self._counters["gaps"] += 1
            prev_name, seq_name = self.seq_fields
            self._mark_stale(inst, f"{prev_name} {ev.prev_seq} != last {seq_name} {last}")
            return False
        # crossed_book: said downstream as such, then withheld like a gap
        self._counters["crossed"] += 1
        self._counters["errors." + error.reason] += 1
        self._push(error)
        self._mark_stale(inst, f"{error.reason}: {error.detail}")
        return False

    def _mark_stale(self, inst: str, detail: str) -> None:
        """Withhold `inst` downstream and ask for a fresh snapshot (batched resubscription)."""
        first = inst not in self._stale
        self._stale.add(inst)
        self._books.pop(inst, None)
        if first:
            self._queue.discard(inst, "B")  # its pending changes are moot: a snapshot follows
            self._counters["errors.seq_gap"] += 1
            self._push_error("seq_gap", detail, inst)
            with self._cond:
                self._cond.notify_all()
        if not self._resync_wanted(inst):
            return
        self._resync_pending.add(inst)
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = asyncio.get_running_loop().create_task(self._resync())

    def _withhold(self, insts: Iterable[str], detail: str) -> int:
        """A session ended: withhold these books until the reconnect's snapshots (no resync: the
        reconnect resubscribes everything). Returns how many were live."""
        n = 0
        for inst in insts:
            self._books.pop(inst, None)
            self._resync_pending.discard(inst)
            if inst not in self._stale:
                self._stale.add(inst)
                self._queue.discard(inst, "B")
                self._push_error("seq_gap", detail, inst)
                n += 1
        return n

    def _resync_wanted(self, inst: str) -> bool:
        """Whether a stale `inst` is resubscribed (False: it heals otherwise, or is gone)."""
        return True

    async def _resync(self) -> None:
        """Resubscribe the stale books, subscribe_batch at a time, for fresh snapshots."""
        await asyncio.sleep(self.resync_delay_s)  # gather the gaps of one burst into one request
        while self._resync_pending:
            insts = [i for i in sorted(self._resync_pending) if self._resync_wanted(i)][: self.subscribe_batch]
            if not insts:
                self._resync_pending.clear()
                return
            self._resync_pending.difference_update(insts)
            self._bump("resyncs", len(insts), notify=True)  # counted when requested
            try:
                await self._resubscribe(insts)
            except Exception as exc:  # noqa: BLE001 — closed socket, RPC error, timeout: all end alike
                self._counters["errors.resync_failed"] += 1
                self._push_error("resync_failed", f"{type(exc).__name__}: {exc}"[:300])
                return  # a reconnect resubscribes everything

    def _cancel_resync(self) -> None:
        """The session ended: its pending resubscriptions are moot (the reconnect resubscribes)."""
        if self._resync_task is not None:
            self._resync_task.cancel()
            self._resync_task = None
        self._resync_pending.clear()

    async def _resubscribe(self, insts: list[str]) -> None:
        """Venue-specific: unsubscribe and subscribe these books' channels, so each sends a fresh
        snapshot. Raise on failure (counted errors.resync_failed)."""
        raise NotImplementedError

    def _tap(self, ts_ms: int, raw: Any) -> None:
        """Hand one received frame to frame_tap (recording). A failing tap is counted
        (errors.frame_tap), never raised into the loop."""
        try:
            self.frame_tap(ts_ms, raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 — the feed matters more than the recording
            self._counters["errors.frame_tap"] += 1

    def _connect(self, max_size: int, **options: Any):
        """websockets' connect() with the options every venue session uses."""
        from websockets.asyncio.client import connect

        return connect(self.url, max_size=max_size, compression=None, open_timeout=self.open_timeout_s,
                       proxy=self.proxy, close_timeout=2,
                       max_queue=1024,  # frames buffered before TCP backpressure
                       **options)


# ---------------------------------------------------------------- bytewax source


# Events a source partition hands the flow per batch at most: a burst (a spot shock re-quotes
# every book of an underlying at once) enters as one batch, so the epoch after it holds all of it.
SOURCE_BATCH_MAX = 5_000
# After a batch smaller than that, a partition reads again only this much later: events gather
# into batches instead of being polled a few at a time (every bytewax round costs µs per step;
# at 50,000 msg/s polling at once cost ~3x the CPU per message of full batches).
SOURCE_GATHER_MS = 2.0


class ClientPartition(StatefulSourcePartition):
    """One started client, drained in batches. snapshot() is the client's expiry placement
    only (connectors/venues/placement.py), so a restart keeps every live chain on its worker:
    a live source resubscribes after a restart and every book starts again from a fresh
    snapshot."""

    def __init__(self, client: VenueClient, run_seconds: Optional[float], batch_max: int, idle_ms: float,
                 gather_ms: float = SOURCE_GATHER_MS):
        self.client = client.start()
        self.deadline = time.monotonic() + run_seconds if run_seconds is not None else None
        self.batch_max = batch_max
        self.idle = timedelta(milliseconds=idle_ms)
        self.gather = timedelta(milliseconds=gather_ms)
        self.awake: Optional[datetime] = None

    def next_batch(self) -> list:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.client.stop()
            raise StopIteration()
        batch = self.client.drain(self.batch_max)
        # bytewax asks next_awake after each batch: idle, wake in a few ms rather than spin; a
        # part batch, let events gather a moment; a full one, read on at once
        if len(batch) >= self.batch_max:
            self.awake = None
        else:
            self.awake = datetime.now(timezone.utc) + (self.gather if batch else self.idle)
        return batch

    def next_awake(self) -> Optional[datetime]:
        return self.awake

    def snapshot(self) -> Optional[dict]:
        return self.client.placement.state() if self.client.route is not None else None

    def close(self) -> None:
        self.client.stop()


class ClientSource(FixedPartitionedSource):
    """One partition per key ("<prefix>-<key>"), each owning its own client from make_client(key);
    client_options() are the keyword arguments every venue's client takes from its source.

    route_workers > 1 (the cluster's bytewax workers): one partition per key and worker slot
    ("deribit-BTC.w0of2", one websocket connection each), slot k reading only the expiries
    whose chain step runs on worker k, and read there (connectors/venues/placement.py): no book event
    crosses between processes."""

    # a resumed partition subscribes afresh: no event is sent twice (connectors/postgres/market_sink.py)
    resends_after_resume = False

    def __init__(self, prefix: str, keys: Iterable[str], *, queue_max: int, max_frame_bytes: int,
                 max_expiries: Optional[int], max_strikes: Optional[int], run_seconds: Optional[float],
                 batch_max: int, idle_ms: float, refresh_s: float, client_kwargs: dict, route_workers: int = 1):
        if route_workers < 1:
            raise ValueError(f"route_workers={route_workers}: the cluster's worker count (processes × workers), >= 1")
        self._prefix = prefix
        self._part_keys = tuple(keys)
        self.route_workers = route_workers
        self._parts = {f"{prefix}-{name}": (key, slot) for key in self._part_keys
                       for slot, name in enumerate(slot_names(key, route_workers))}
        self.queue_max = queue_max
        self.max_frame_bytes = max_frame_bytes
        self.max_expiries = max_expiries
        self.max_strikes = max_strikes
        self.refresh_s = refresh_s  # how often each client reads the venue's listings again
        self.run_seconds = run_seconds
        self.batch_max = batch_max
        self.idle_ms = idle_ms
        self.client_kwargs = client_kwargs

    def client_options(self, slot: Optional[int] = None) -> dict:
        route = (slot, self.route_workers) if slot is not None and self.route_workers > 1 else None
        return dict(queue_max=self.queue_max, max_frame_bytes=self.max_frame_bytes, max_expiries=self.max_expiries,
                    max_strikes=self.max_strikes, refresh_s=self.refresh_s, route=route, **self.client_kwargs)

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> ClientPartition:
        if for_part not in self._parts:
            raise ValueError(f"partition {for_part!r} is not one of this source's {sorted(self._parts)}; was the "
                             "flow resumed with another runtime.workers × runtime.processes or venue list?")
        key, slot = self._parts[for_part]
        client = self.make_client(key, slot)
        if resume_state and client.route is not None:  # the placement this slot had: live chains stay put
            client.placement = Placement(self.route_workers, resume_state, cap=client.placement.cap)
        return ClientPartition(client, self.run_seconds, self.batch_max, self.idle_ms)

    def make_client(self, key: str, slot: int) -> VenueClient:
        raise NotImplementedError
