"""The Deribit websocket client: one session on its own thread and asyncio loop — discovery,
subscriptions, heartbeats, listings and expiries, reconnects, and the book resubscriptions the
shared base (connectors/venues/base.py) asks for (docs/protocols.md §A.2..A.6).

It never parses a frame itself (connectors/venues/deribit/parse.py does), never computes anything
about volatility, and never lets the socket loop block on the consumer. Book integrity is owned
here, through the base's BookGuard: see connectors/venues/base.py for the rule.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Iterable, Optional

import orjson
from websockets.exceptions import WebSocketException

from connectors.venues.base import (FrameTap, LockedFoldingQueue, TokenBucket, VenueClient, close_draining,
                                    filter_options, now_ms)
from connectors.venues.deribit import levels
from connectors.venues.deribit.names import VENUE, InstrumentNameError, parse_instrument_name
from connectors.venues.deribit.parse import BATCH_MIN, GROUPED_DEPTHS, Control, parse_frames
from operators.events import Instrument

log = logging.getLogger(__name__)

PENDING_FRAMES_MAX = 5_000  # = SOURCE_BATCH_MAX: frames read ahead of the parser, at most


class RpcError(Exception):
    def __init__(self, method: str, error: dict):
        super().__init__(f"{method}: error {error.get('code')} {error.get('message')}")
        self.code = error.get("code")


class DeribitClient(VenueClient):
    """One websocket session to Deribit (or the simulator), on its own thread and event loop.

    Call start(); read with drain(); stop() shuts down and joins. Parsed market events wait in
    a FoldingQueue (connectors/venues/folding.py): under a slow consumer pending book changes of one
    instrument fold into one exact change and tickers/index prices keep their latest value, so
    the queue stays bounded and the socket loop never blocks on the consumer; past the bound a
    book is resynchronised from a fresh snapshot (see the module docstring).

    Instruments: discovered with public/get_instruments at connect, then refreshed every
    `refresh_s` and on instrument.state notifications (within `instruments_per_s` /
    `instruments_burst`, Deribit's 1 per 10 s, burst 5). New listings are announced (their
    Instrument events first) and subscribed intraday; delisted ones are unsubscribed, dropped
    from the queue and withheld downstream (a seq_gap FeedError with no snapshot to follow);
    instruments reaching their expiry (08:00 UTC, by `clock_ms`) are unsubscribed and their
    late frames dropped (counted `late_frames`), the chain step removes the expiry itself.

    Liveness: set_heartbeat, test_requests answered at once on this loop; a session with no
    frame, or no heartbeat, for `silence_factor` × heartbeat_s is closed and reconnected with
    jittered exponential backoff; every book then starts again from a fresh snapshot and is
    withheld downstream (seq_gap) from the disconnect until then. What the new session's listing
    no longer holds is let go as a refresh lets it go (counted delisted or expired).

    `inline_work` (tests and demonstrations only) runs a function on the socket loop for each
    market event: the naive design this client exists to avoid (see tests/connectors/venues/test_starvation.py).
    `frame_tap(ts_recv_ms, frame)` (recording, connectors/capture/record.py) is called on this loop with
    every frame received, discovery responses included, before it is parsed.

    Counters: frames, bytes, events.<Type>, errors.<reason>, gaps, crossed, reconnects,
    heartbeats_answered, queue_drops, resyncs, connects, subscribed_channels, listed, delisted,
    expired, late_frames, queue_len, queue.<pushed|folded|drained|overflow|…>, fold_ratio
    (events pushed per event drained).
    """

    venue = VENUE
    seq_fields = ("prev_change_id", "change_id")

    def __init__(self, url: str, currencies: Iterable[str], *,
                 interval: str, heartbeat_s: float, refresh_s: float, queue_max: int,
                 max_frame_bytes: int, discovery_max_bytes: int = 64 << 20,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 include_futures: bool = True, subscribe_batch: int = 500,
                 subscribe_burst: int = 10, subscribe_per_s: float = 3.0,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0,
                 resync_delay_s: float = 0.05, open_timeout_s: float = 10.0,
                 proxy: Any = None, seed: Optional[int] = None,
                 instruments_per_s: float = 0.1, instruments_burst: int = 5,
                 track_instrument_state: bool = True, silence_factor: float = 2.0,
                 fold_max_levels: int = 2_000, clock_ms: Optional[Callable[[], int]] = None,
                 inline_work: Optional[Callable[[Any], None]] = None, frame_tap: Optional[FrameTap] = None,
                 route: Optional[tuple[int, int]] = None, book_depth: Optional[int] = None):
        if interval not in ("100ms", "agg2", "raw"):
            raise ValueError(f"interval={interval!r}: use '100ms' (unauthenticated), 'agg2' or 'raw'")
        if book_depth is not None and (book_depth not in GROUPED_DEPTHS or interval == "raw"):
            raise ValueError(f"book_depth={book_depth!r}, interval={interval!r}: a grouped book has depth "
                             f"{', '.join(map(str, GROUPED_DEPTHS))} and interval '100ms' or 'agg2' "
                             "(book_depth=None subscribes the incremental book)")
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s={heartbeat_s}: must be > 0 (Deribit requires >= 10)")
        if not silence_factor > 1:
            raise ValueError(f"silence_factor={silence_factor}: must be > 1 (2 = two heartbeat intervals)")
        if not (instruments_per_s > 0 and instruments_burst >= 1 and refresh_s > 0):
            raise ValueError(f"refresh_s={refresh_s}, instruments_per_s={instruments_per_s}, instruments_burst="
                             f"{instruments_burst}: all must be positive (Deribit: 0.1 per s, burst 5)")
        self.currencies = tuple(c.upper() for c in currencies)
        # The loop thread pushes, the consumer drains: pending events of one key fold.
        super().__init__(url=url, make_queue=lambda n: LockedFoldingQueue(n, fold_max_levels),
                         thread_name=f"deribit-{'-'.join(self.currencies)}", seed=seed, queue_max=queue_max,
                         max_frame_bytes=max_frame_bytes, max_expiries=max_expiries, max_strikes=max_strikes,
                         include_futures=include_futures, subscribe_batch=subscribe_batch,
                         resync_delay_s=resync_delay_s, reconnect_min_s=reconnect_min_s,
                         reconnect_max_s=reconnect_max_s, open_timeout_s=open_timeout_s, proxy=proxy,
                         frame_tap=frame_tap, route=route)
        self.interval = interval
        self.book_depth = book_depth
        self.heartbeat_s = heartbeat_s
        self.discovery_max_bytes = max(discovery_max_bytes, max_frame_bytes)
        self.subscribe_burst = subscribe_burst
        self.subscribe_per_s = subscribe_per_s
        self.refresh_s = refresh_s
        self.track_instrument_state = track_instrument_state
        self.silence_factor = silence_factor
        self.clock_ms = clock_ms or now_ms
        self.inline_work = inline_work
        self._ws = None
        self._pending: dict[int, asyncio.Future] = {}
        self._discovering = 0
        self._subscribe_bucket = TokenBucket(subscribe_per_s, subscribe_burst)  # PROTOCOLS A.6
        self._instruments_bucket = TokenBucket(instruments_per_s, instruments_burst)  # PROTOCOLS A.2
        # name → the removal count when it was delisted or expired: a listing fetched before
        # that must not bring it back (see _refresh)
        self._removed_at: dict[str, int] = {}
        self._removals = 0
        self._last_frame = time.monotonic()
        self._last_heartbeat = time.monotonic()
        self._refresh_wanted: set[str] = set()
        self._wake: Optional[asyncio.Event] = None
        self._tasks: set[asyncio.Task] = set()
        self.channels: list[str] = []  # the current session's subscriptions
        self.instruments: dict[str, Instrument] = {}  # listed (last discovery)
        self.active: dict[str, Instrument] = {}  # subscribed and emitted

    # -------------------------------------------------- loop thread

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        if self._stopping:
            return
        # before any socket: a process's first compiled call loads numba (1.5 s measured on a busy
        # box), which in the middle of a session held the loop past the heartbeat watchdog
        levels.warm_up()
        attempt = 0
        while not self._stopping:
            healthy = False
            try:
                async with self._connect(self.discovery_max_bytes, ping_interval=20, ping_timeout=20) as ws:
                    self._ws = ws
                    self._bump("connects", notify=True)
                    healthy = await self._session(ws)
            except (OSError, asyncio.TimeoutError, WebSocketException, RpcError, ConnectionError) as exc:
                reason = "rate_limited" if isinstance(exc, RpcError) and exc.code == 10028 else "disconnect"
                self._bump(f"errors.{reason}")
                self._push_error(reason, f"{type(exc).__name__}: {exc}"[:300])
            finally:
                self._ws = None
                self._fail_pending()
                self._withhold_all("disconnected: withheld until the fresh snapshot after reconnecting")
            if self._stopping:
                break
            attempt = 0 if healthy else attempt + 1
            if await self._backoff(attempt):
                break
            self._bump("reconnects", notify=True)

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._pending.clear()

    def _withhold_all(self, detail: str) -> None:
        """Every live book is stale once the session ends: say so downstream at once."""
        self._bump("errors.seq_gap", self._withhold(list(self._books), detail))
        self._books.clear()
        self._stale.clear()  # the next session starts every book from its snapshot
        self._resync_pending.clear()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _session(self, ws) -> bool:
        """Set up one connection and read until it ends. Returns True if it got to streaming."""
        self._books.clear()
        self._stale.clear()
        self._resync_pending.clear()
        self._heartbeat_on = False
        reader = asyncio.get_running_loop().create_task(self._reader(ws))
        stopper = asyncio.get_running_loop().create_task(self._stop.wait())
        streaming = False
        maintain = None
        try:
            setup = asyncio.get_running_loop().create_task(self._setup(ws))
            done, _ = await asyncio.wait({setup, reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if setup in done:
                setup.result()  # raises setup errors
                streaming = True
                self._bump("sessions_streaming", notify=True)
                maintain = asyncio.get_running_loop().create_task(self._maintain(ws))
                await asyncio.wait({reader, stopper, maintain}, return_when=asyncio.FIRST_COMPLETED)
                if maintain.done() and not maintain.cancelled():
                    maintain.result()  # a maintenance failure ends the session, loudly
            else:
                setup.cancel()
            if reader.done() and not reader.cancelled():
                reader.result()  # raises the read error, if any
        finally:
            for t in (reader, stopper, maintain, *self._tasks):
                if t is not None:
                    t.cancel()
            self._cancel_resync()
            await close_draining(ws)
        return streaming

    async def _call(self, ws, method: str, params: dict, timeout: float = 30.0) -> Any:
        req_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}),
                      text=True)
        try:
            ctl: Control = await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(req_id, None)
        if ctl.error is not None:
            raise RpcError(method, ctl.error)
        return ctl.result

    async def _setup(self, ws) -> None:
        hb = int(self.heartbeat_s) if float(self.heartbeat_s).is_integer() else self.heartbeat_s
        await self._call(ws, "public/set_heartbeat", {"interval": hb})
        self._heartbeat_on = True
        self._last_heartbeat = time.monotonic()
        before = dict(self.active)  # what the last session read
        self.active.clear()  # a new session subscribes everything again
        channels: list[str] = []
        for cur in self.currencies:
            listed = await self._discover(ws, cur)
            # gone from the listing while no session ran: let go as a refresh would have (counted,
            # withheld for good), not just left unread
            for inst in [i for n, i in before.items() if i.underlying == cur and n not in listed]:
                why = self._why_gone(inst)
                self._let_go(inst, why)
                self._bump(why, notify=True)  # a session milestone, as _forget says it
            spot = await self._spot(ws, cur)
            for inst in self._choose(listed, spot):
                channels.extend(self._activate(inst))
            channels.append(f"deribit_price_index.{cur.lower()}_usd")
            if self.track_instrument_state:
                kinds = ("option", "future") if self.include_futures else ("option",)
                channels.extend(f"instrument.state.{k}.{cur.lower()}" for k in kinds)
        self.channels = channels
        await self._subscribe(ws, channels)
        self._counters["subscribed_channels"] = len(self.channels)
        self._counters["listed"] = len(self.active)

    async def _subscribe(self, ws, channels: list[str], method: str = "public/subscribe") -> None:
        for i in range(0, len(channels), self.subscribe_batch):
            await self._subscribe_bucket.take()
            await self._call(ws, method, {"channels": channels[i:i + self.subscribe_batch]})

    def _activate(self, inst: Instrument) -> list[str]:
        """Announce an instrument (its Instrument event goes out before any market event about
        it) and return its channels."""
        self._push(inst)
        self.active[inst.instrument] = inst
        if inst.kind == "option":
            return [self._book_channel(inst.instrument), f"ticker.{inst.instrument}.{self.interval}"]
        return [f"ticker.{inst.instrument}.{self.interval}"]

    def _book_channel(self, name: str) -> str:
        if self.book_depth is None:
            return f"book.{name}.{self.interval}"
        return f"book.{name}.none.{self.book_depth}.{self.interval}"

    async def _discover(self, ws, currency: str) -> dict[str, Instrument]:
        """public/get_instruments for each kind → the live listing of `currency` (rate limited).
        Instruments already past their expiry are left out even if still listed."""
        names: set[str] = set()
        for kind in ("option", "future") if self.include_futures else ("option",):
            await self._instruments_bucket.take(lambda: self._bump("instrument_calls_waited"))
            self._discovering += 1
            try:
                rows = await self._call(ws, "public/get_instruments",
                                        {"currency": currency, "kind": kind, "expired": False}, timeout=60.0)
            finally:
                self._discovering -= 1
            self._bump("discoveries")
            if isinstance(rows, list):
                names.update(r.get("instrument_name") for r in rows if isinstance(r, dict))
        now = self.clock_ms()
        for name in [n for n, i in self.instruments.items() if i.underlying == currency and n not in names]:
            del self.instruments[name]
        return {n: i for n, i in self.instruments.items()
                if n in names and i.underlying == currency and (i.expiry_ms == 0 or i.expiry_ms > now)}

    def _choose(self, listed: dict[str, Instrument], spot: Optional[float]) -> list[Instrument]:
        options = [i for i in listed.values() if i.kind == "option"]
        self._place(options, self.clock_ms())
        chosen = filter_options(options, spot, self.max_expiries, self.max_strikes)
        chosen = [i for i in chosen if self.on_this_worker(i)]
        if self.include_futures:
            chosen.extend(sorted((i for i in listed.values() if i.kind != "option" and self.on_this_worker(i)),
                                 key=lambda i: i.instrument))
        return chosen

    async def _spot(self, ws, currency: str) -> Optional[float]:
        try:
            res = await self._call(ws, "public/get_index_price", {"index_name": f"{currency.lower()}_usd"})
            return float(res["index_price"])
        except (RpcError, KeyError, TypeError, ValueError, asyncio.TimeoutError):
            return None

    # -------------------------------------------------- listings and expiries

    async def _maintain(self, ws) -> None:
        """Expire instruments at their expiry, refresh listings on schedule or when told."""
        next_refresh = time.monotonic() + self.refresh_s
        while True:
            now = self.clock_ms()
            expired = [n for n, i in self.active.items() if 0 < i.expiry_ms <= now]
            if expired:
                await self._remove(ws, expired, "expired")
            if time.monotonic() >= next_refresh:
                self._refresh_wanted.update(self.currencies)
                next_refresh = time.monotonic() + self.refresh_s
            while self._refresh_wanted:
                await self._refresh(ws, self._refresh_wanted.pop())
            future = [i.expiry_ms for i in self.active.values() if i.expiry_ms > now]
            wait_s = next_refresh - time.monotonic()
            if future:  # wake at the next expiry (checked again at least every second)
                wait_s = min(wait_s, max((min(future) - now) / 1000.0, 0.0), 1.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait_s, 0.001))
            except asyncio.TimeoutError:
                pass

    async def _refresh(self, ws, currency: str) -> None:
        removals_before = self._removals
        listed = await self._discover(ws, currency)
        # Discovery awaits two responses; a delisting notice read in between removed names this
        # listing still holds. They are not new listings: leave them out.
        for name in [n for n, k in self._removed_at.items() if k >= removals_before and n in listed]:
            del listed[name]
        self._removed_at = {n: k for n, k in self._removed_at.items() if k >= removals_before}
        gone = [n for n, i in self.active.items() if i.underlying == currency and n not in listed]
        if gone:
            await self._remove(ws, gone, "delisted")
        new = [i for i in self._choose(listed, None if self.max_strikes is None else await self._spot(ws, currency))
               if i.instrument not in self.active]
        if new:
            channels: list[str] = []
            for inst in new:
                channels.extend(self._activate(inst))  # Instrument events first, then subscribe
            self.channels.extend(channels)
            self._bump("listed_intraday", len(new), notify=True)
            await self._subscribe(ws, channels)
            self._counters["subscribed_channels"] = len(self.channels)
        self._counters["listed"] = len(self.active)
        self._bump("refreshes", notify=True)

    async def _remove(self, ws, names: list[str], why: str) -> None:
        """Stop emitting `names`: forget their state, drop their queued events, unsubscribe."""
        await self._unsubscribe(ws, self._forget(names, why))

    def _forget(self, names: list[str], why: str) -> list[str]:
        """Forget `names` at once (frames already in flight are then dropped as late_frames) and
        return their channels to unsubscribe (what else goes: VenueClient._let_go)."""
        channels: list[str] = []
        self._removals += 1
        for name in names:
            inst = self.active.pop(name, None)
            if inst is None:
                continue
            self._removed_at[name] = self._removals
            self._let_go(inst, why)
            channels.extend(c for c in self.channels if c.split(".")[1:2] == [name])
        dropped = set(channels)
        self.channels = [c for c in self.channels if c not in dropped]
        self._bump(why, len(names), notify=True)
        self._counters["listed"] = len(self.active)
        self._counters["subscribed_channels"] = len(self.channels)
        return channels

    async def _unsubscribe(self, ws, channels: list[str]) -> None:
        if channels:
            try:
                await self._subscribe(ws, channels, "public/unsubscribe")
            except (RpcError, asyncio.TimeoutError) as exc:  # the server stops sending them anyway
                self._bump("errors.unsubscribe_failed")
                log.warning("unsubscribe of %d channels failed: %s", len(channels), exc)

    def _on_instrument_state(self, name: str, state: str) -> None:
        if state in ("created", "started"):
            if name not in self.active:
                try:
                    currency = parse_instrument_name(name)[0]
                except InstrumentNameError:
                    return
                if currency in self.currencies:
                    self._refresh_wanted.add(currency)
                    self._wake.set()
        elif name in self.active:
            # forgotten now, not when the task runs: the frames read meanwhile are late
            self._spawn(self._unsubscribe(self._ws, self._forget([name], self._why_gone(self.active[name]))))

    def _why_gone(self, inst: Instrument) -> str:
        """An instrument no longer listed: "expired" at (or just before) its expiry — a settlement
        notice just before 08:00 is the normal expiry, not a delisting — else "delisted"."""
        return "expired" if 0 < inst.expiry_ms <= self.clock_ms() + 60_000 else "delisted"

    # -------------------------------------------------- reading

    async def _watchdog(self, ws) -> None:
        # No frame, or no heartbeat since set_heartbeat, for silence_factor × the interval
        # means a dead or broken session (PROTOCOLS A.5): close it and reconnect.
        silence_s = max(self.silence_factor * self.heartbeat_s, 0.2)
        while True:
            await asyncio.sleep(silence_s / 8)
            now = time.monotonic()
            if now - self._last_frame > silence_s:
                self._bump("errors.silence", notify=True)
                await ws.close(1001, "no frames within 2 heartbeat intervals")
                return
            if self._heartbeat_on and now - self._last_heartbeat > silence_s:
                self._bump("errors.heartbeat_silence", notify=True)
                await ws.close(1001, "no heartbeats within 2 heartbeat intervals")
                return

    async def _reader(self, ws) -> None:
        self._last_frame = time.monotonic()
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(ws))
        try:
            await self._read_loop(ws)
        finally:
            watchdog.cancel()

    async def _read_loop(self, ws) -> None:
        """Read frames; a parser task parses them. The reader never yields while the socket has
        frames already delivered, so the parser, which runs when the reader waits, takes every
        frame that arrived meanwhile at once: one at a time when the feed is quiet, hundreds in a
        burst (a spot move re-quoting every book), which parse_frames then reads in one compiled
        pass (from BATCH_MIN frames). At PENDING_FRAMES_MAX unparsed frames the reader waits for
        the parser, so a consumer slower than the feed pushes back on the socket as before (the
        websocket's own queue, then TCP) instead of growing a list. Frames still unparsed when the
        session ends are parsed before it is left."""
        monotonic = time.monotonic
        if self.inline_work is not None:  # the naive design, as it was: each frame's work before the next read
            while True:
                raw = await ws.recv(decode=False)
                self._last_frame = monotonic()
                self._parse(ws, [(raw, self._received(raw))])
        frames: list = []  # (raw, receive time ms) read and not yet parsed
        wake, parsed = asyncio.Event(), asyncio.Event()
        parser = asyncio.get_running_loop().create_task(self._parse_loop(ws, frames, wake, parsed))
        try:
            while True:
                raw = await ws.recv(decode=False)
                self._last_frame = monotonic()
                frames.append((raw, self._received(raw)))
                wake.set()
                if len(frames) >= PENDING_FRAMES_MAX:
                    parsed.clear()
                    await parsed.wait()
                if parser.done():
                    parser.result()  # a parser bug ends the session loudly
        finally:
            parser.cancel()
            if frames:
                self._parse(ws, frames)

    async def _parse_loop(self, ws, frames: list, wake: asyncio.Event, parsed: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            batch = frames[:]
            frames.clear()
            self._parse(ws, batch)
            parsed.set()

    def _parse(self, ws, batch: list) -> None:
        """Parse and hand on a batch of frames, in order, with no await: nothing interrupts it."""
        limit = self.discovery_max_bytes if self._discovering else self.max_frame_bytes
        events = parse_frames([raw for raw, _ in batch], [ts for _, ts in batch], limit)
        if len(batch) >= BATCH_MIN:
            self._counters["frames_batch_parsed"] += len(batch)
        inline = self.inline_work
        for ev in events:
            if type(ev) is Control:
                self._control(ws, ev)
            else:
                if inline is not None:
                    inline(ev)  # the naive design: consumer work on the socket loop
                self._route(ev)

    def _control(self, ws, ctl: Control) -> None:
        if ctl.kind == "test_request":
            self._last_heartbeat = time.monotonic()
            # Answer at once on this loop: an unanswered test_request closes the session.
            self._spawn(ws.send(orjson.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": "public/test",
                                              "params": {}}), text=True))
            self._bump("heartbeats_answered", notify=True)
        elif ctl.kind == "heartbeat":
            self._last_heartbeat = time.monotonic()
            self._counters["heartbeats"] += 1
        elif ctl.kind == "instrument_state":
            self._counters["instrument_states"] += 1
            self._on_instrument_state(*ctl.result)
        else:
            fut = self._pending.get(ctl.id)
            if fut is not None and not fut.done():
                fut.set_result(ctl)

    def _route(self, ev) -> None:
        """Sequence and sanity bookkeeping, then the queue. Runs on the loop thread only."""
        counters = self._counters
        tname = type(ev).__name__
        counters["events." + tname] += 1
        if tname == "BookUpdate":
            inst = ev.instrument
            if inst not in self.active:
                counters["late_frames"] += 1  # expired or delisted: in flight when we left
                return
            if not self._book_event(ev):  # the integrity rule: connectors/venues/base.py
                return
            if not self._push(ev):
                counters["gaps_queue"] += 1
                self._mark_stale(inst, "event queue bound reached: book resynced from a fresh snapshot")
            return
        if tname == "FeedError":
            counters["errors." + ev.reason] += 1
            if ev.instrument:
                if ev.instrument not in self.active:
                    counters["late_frames"] += 1
                    return
                if ev.detail.startswith("book."):
                    # A book frame we could not read leaves that book incomplete: error, then resync.
                    self._push(ev)
                    self._mark_stale(ev.instrument, f"unreadable book frame: {ev.reason}")
                    return
        elif tname == "Instrument":
            self.instruments[ev.instrument] = ev
            return  # announced by _activate once chosen
        elif tname == "Ticker" or tname == "FuturePrice":
            if ev.instrument not in self.active:
                counters["late_frames"] += 1
                return
        self._push(ev)

    def _resync_wanted(self, inst: str) -> bool:
        return inst in self.active  # a delisted or expired book is not resubscribed

    async def _resubscribe(self, insts: list[str]) -> None:
        """public/unsubscribe + public/subscribe of these books' channels: each sends a fresh snapshot."""
        ws = self._ws
        if ws is None:
            return  # between sessions: the reconnect resubscribes every book
        channels = [self._book_channel(i) for i in insts]
        await self._subscribe_bucket.take()
        await self._call(ws, "public/unsubscribe", {"channels": channels})
        await self._subscribe_bucket.take()
        await self._call(ws, "public/subscribe", {"channels": channels})
