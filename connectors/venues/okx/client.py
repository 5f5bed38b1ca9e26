"""The OKX websocket client: discovery (connectors/venues/okx/rest.py), the subscriptions split
over several connections, pings, the 64008 notice, reconnects, and the book resubscriptions the
shared base (connectors/venues/base.py) asks for (docs/protocols.md §B).

It never parses a frame itself (connectors/venues/okx/parse.py does), never computes anything
about volatility, and never lets the socket loop block on the consumer. Book integrity is owned
here, through the base's BookGuard: see connectors/venues/base.py for the rule.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Callable, Iterable, Optional

import orjson
from websockets.exceptions import WebSocketException

from connectors.venues.base import BoundedQueue, FrameTap, TokenBucket, VenueClient, close_draining, filter_options, now_ms
from connectors.venues.okx.names import DEPTH_CHANNELS, INCREMENTAL_BOOKS, VENUE, family_coin
from connectors.venues.okx.parse import (NOTICE_SERVICE_UPGRADE, Control, instruments_from_rows,
                                         parse_frame, rest_instruments_frame)
from connectors.venues.okx.rest import RestInstrumentsFetcher, default_rest_url
from operators.events import BookUpdate, FeedError, Instrument

log = logging.getLogger(__name__)


class _Shard:
    """One websocket connection's share of the subscriptions."""

    def __init__(self, index: int, args: list[dict]):
        self.index = index
        self.args = args
        self.books = {a["instId"] for a in args if a["channel"] in INCREMENTAL_BOOKS}
        self.ws = None
        self.requests: collections.deque = collections.deque()  # send times of (un)subscribe requests
        self.notice: Optional[asyncio.Event] = None
        self.last_frame = time.monotonic()
        self.ping_sent: Optional[float] = None
        self.acked = 0


class OkxClient(VenueClient):
    """OKX v5 public websocket sessions on one thread and event loop.

    Call start(); read with drain(); stop() shuts down and joins. Discovery first (REST, or the
    pluggable `instruments_fetcher`), then the subscriptions split over several connections:
    connection 0 carries opt-summary, index-tickers and futures tickers; depth channels go
    `depth_per_conn` per connection (OKX: fewer than 30 per connection). Parsed market events land
    in a bounded deque; when it is full, events are dropped (counted) and affected books are
    resynchronised; the socket loop never blocks on the consumer.

    Listings: read again every `refresh_s` (REST, as at discovery); new ones are announced (their
    Instrument events first) and subscribed — books on a depth connection with room, else a new
    connection — delisted ones let go (a seq_gap downstream, no snapshot to follow), and each
    instrument is let go at its expTime (the chain step removes the expiry itself); frames of
    either still in flight are dropped (late_frames).

    `frame_tap(ts_recv_ms, frame)` (recording, connectors/capture/record.py) is called on the client's
    loop with every websocket frame received, and with each REST instruments response as the
    body text parse_frame reads (rest_instruments_frame), before it is parsed.

    Counters: frames, bytes, events.<Type>, errors.<reason>, gaps, keepalives, seq_resets,
    pings_sent, pongs, notices, proactive_reconnects, reconnects, connects, resyncs,
    subscribe_requests, unsubscribe_requests, acks, queue_drops, subscribed_channels, connections,
    queue_len, refreshes, listed_intraday, delisted, expired, late_frames.
    """

    venue = VENUE
    seq_fields = ("prevSeqId", "seqId")

    def __init__(self, url: str, families: Iterable[str], *, refresh_s: float,
                 rest_url: Optional[str] = None,
                 instruments_fetcher: Optional[Callable[[str, str], list]] = None,
                 book_channel: str = "books", depth_per_conn: int = 25, include_futures: bool = True,
                 queue_max: int, max_frame_bytes: int,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 ping_after_s: float = 20.0, pong_timeout_s: float = 10.0, subscribe_batch: int = 100,
                 subscribe_per_hour: int = 480, connects_per_s: float = 3.0,
                 reconnect_min_s: float = 0.5, reconnect_max_s: float = 30.0, resync_delay_s: float = 0.05,
                 open_timeout_s: float = 10.0, proxy: Any = None, seed: Optional[int] = None,
                 frame_tap: Optional[FrameTap] = None, route: Optional[tuple[int, int]] = None):
        self.families = tuple(families)
        if not refresh_s > 0:
            raise ValueError(f"refresh_s={refresh_s}: the listings are read again every refresh_s seconds; use > 0")
        for fam in self.families:
            family_coin(fam)  # raises with the fix
        if book_channel not in ("books", "books5", "bbo-tbt"):
            raise ValueError(f"book_channel={book_channel!r}: use 'books' (400 levels + seqId updates), "
                             "'books5' (5-level snapshots) or 'bbo-tbt'; the l2-tbt channels need VIP4 and login")
        if not 1 <= depth_per_conn <= 29 and book_channel == "books":
            raise ValueError(f"depth_per_conn={depth_per_conn}: OKX wants fewer than 30 depth channels per "
                             "connection; use 1..29")
        if depth_per_conn < 1:
            raise ValueError(f"depth_per_conn={depth_per_conn}: must be >= 1")
        if not 0 < ping_after_s < 30:
            raise ValueError(f"ping_after_s={ping_after_s}: OKX drops a silent connection after 30 s; "
                             "ping after N seconds of silence with 0 < N < 30")
        if subscribe_per_hour < 2:
            raise ValueError(f"subscribe_per_hour={subscribe_per_hour}: must be >= 2 (OKX allows 480)")
        super().__init__(url=url, make_queue=BoundedQueue, thread_name=f"okx-{'-'.join(self.families)}",
                         seed=seed, queue_max=queue_max, max_frame_bytes=max_frame_bytes, max_expiries=max_expiries,
                         max_strikes=max_strikes, include_futures=include_futures, subscribe_batch=subscribe_batch,
                         resync_delay_s=resync_delay_s, reconnect_min_s=reconnect_min_s,
                         reconnect_max_s=reconnect_max_s, open_timeout_s=open_timeout_s, proxy=proxy,
                         frame_tap=frame_tap, route=route)
        self.rest_url = rest_url or default_rest_url(url)
        self.fetcher = instruments_fetcher or RestInstrumentsFetcher(self.rest_url)
        self.book_channel = book_channel
        self.depth_per_conn = depth_per_conn
        self.ping_after_s = ping_after_s
        self.pong_timeout_s = pong_timeout_s
        self.subscribe_per_hour = subscribe_per_hour
        self.connects_per_s = connects_per_s
        self._shard_of: dict[str, _Shard] = {}
        # OKX allows 3 new connections per second per IP: one bucket over all connections
        self._connect_bucket = TokenBucket(connects_per_s, max(connects_per_s, 1.0))
        self.shards: list[_Shard] = []
        self.instruments: dict[str, Instrument] = {}  # what this client reads, by instId
        self.refresh_s = refresh_s
        self._tasks: list[asyncio.Task] = []  # a loop per connection, and the listings' upkeep

    # -------------------------------------------------- loop thread

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        if self._stopping:
            return
        attempt = 0
        while not self._stopping:  # discovery, retried with backoff
            try:
                args = await self._discover()
                break
            except Exception as exc:  # network, HTTP, JSON: report and retry
                self._bump("errors.discovery_failed", notify=True)
                self._push_error("discovery_failed", f"{type(exc).__name__}: {exc}"[:300])
                attempt += 1
                if await self._backoff(attempt):
                    return
        else:
            return
        self.shards = self._plan(args)
        for shard in self.shards:
            for inst in shard.books:
                self._shard_of[inst] = shard
        self._counters["connections"] = len(self.shards)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._shard_loop(s)) for s in self.shards]
        self._tasks.append(loop.create_task(self._maintain()))
        try:
            await self._stop.wait()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _discover(self) -> list[dict]:
        """Instruments per family (REST or the plugged fetcher), filtered; returns the channel args."""
        books, others = [], []
        for fam in self.families:
            coin = family_coin(fam)
            for name in [n for n, i in self.instruments.items() if i.underlying == coin]:
                del self.instruments[name]
            listing = await self._listing(fam)
            if listing is None:
                continue
            chosen, _listed = listing
            for inst in chosen:
                self.instruments[inst.instrument] = inst
                self._push(inst)
                (books if inst.kind == "option" else others).append(self._arg(inst))
            others.append({"channel": "opt-summary", "instFamily": fam})
            others.append({"channel": "index-tickers", "instId": fam})
        self._bump("discoveries", notify=True)
        return others + books

    async def _listing(self, fam: str) -> Optional[tuple[list[Instrument], set[str]]]:
        """One family's listing now: (the options and futures this client reads, every instId
        listed); None when its options cannot be read (reported)."""
        coin = family_coin(fam)
        ts = now_ms()
        rows = await asyncio.to_thread(self.fetcher, "OPTION", fam)
        if self.frame_tap is not None:
            self._tap(ts, rest_instruments_frame(rows))
        options = self._instruments(instruments_from_rows(rows, ts))
        futures: list[Instrument] = []
        if self.include_futures:
            rows = await asyncio.to_thread(self.fetcher, "FUTURES", fam)
            if self.frame_tap is not None:
                self._tap(ts, rest_instruments_frame(rows))
            futures = [i for i in self._instruments(instruments_from_rows(rows, ts)) if i.kind == "future"]
        now = now_ms()  # an instrument past its expiry may still be listed a while: it is not read again
        futures = [i for i in futures if not 0 < i.expiry_ms <= now]
        options = [i for i in options if i.kind == "option" and i.underlying == coin and i.expiry_ms > now]
        wrong = sorted({i.quote_currency for i in options if i.quote_currency != coin})
        if wrong:
            # Premiums would not be coin per coin: the chain's coin Black-76 would be wrong.
            self._bump("errors.unsupported_units")
            self._push_error("unsupported_units", f"{fam}: options settle in {', '.join(wrong)}, not {coin}; "
                             "volgraph reads OKX premiums as coin (crypto-margined families such as BTC-USD)")
            return None
        spot = None
        index_fn = getattr(self.fetcher, "index_price", None)
        if index_fn is not None and self.max_strikes is not None:
            try:
                spot = await asyncio.to_thread(index_fn, fam)
            except Exception:  # centring is best effort; the median strike will do
                spot = None
        self._place(options, now)
        chosen = filter_options(options, spot, self.max_expiries, self.max_strikes)
        return ([i for i in chosen + futures if self.on_this_worker(i)],
                {i.instrument for i in options} | {i.instrument for i in futures})

    def _arg(self, inst: Instrument) -> dict:
        """The channel that streams an instrument: its book (options), its ticker (futures)."""
        return {"channel": self.book_channel if inst.kind == "option" else "tickers", "instId": inst.instrument}

    # -------------------------------------------------- listings and expiries

    async def _maintain(self) -> None:
        """Let instruments go at their expiry; read the listings again every refresh_s (new
        ones announced and subscribed, delisted ones let go)."""
        next_refresh = time.monotonic() + self.refresh_s
        while not self._stopping:
            now = now_ms()
            expired = [n for n, i in self.instruments.items() if 0 < i.expiry_ms <= now]
            if expired:
                await self._remove(expired, "expired")
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self.refresh_s
                try:
                    await self._refresh()
                except Exception as exc:  # network, HTTP, JSON: report; the next refresh tries again
                    self._bump("errors.discovery_failed", notify=True)
                    self._push_error("discovery_failed", f"refresh: {type(exc).__name__}: {exc}"[:300])
            future = [i.expiry_ms for i in self.instruments.values() if i.expiry_ms > now]
            wait_s = next_refresh - time.monotonic()
            if future:  # wake at the next expiry (checked again at least every second)
                wait_s = min(wait_s, max((min(future) - now) / 1000.0, 0.0), 1.0)
            try:
                await asyncio.wait_for(self._stop.wait(), max(wait_s, 0.001))
                return
            except asyncio.TimeoutError:
                pass

    async def _refresh(self) -> None:
        for fam in self.families:
            coin = family_coin(fam)
            listing = await self._listing(fam)
            if listing is None:
                continue
            chosen, listed = listing
            if not listed:  # a venue with nothing listed is a venue answering wrong: keep what is read
                self._bump("errors.empty_listing", notify=True)
                continue
            now = now_ms()
            gone = [n for n, i in self.instruments.items()
                    if i.underlying == coin and n not in listed and not 0 < i.expiry_ms <= now]
            if gone:
                await self._remove(gone, "delisted")
            new = [i for i in chosen if i.instrument not in self.instruments]
            if new:
                await self._add(new)
                self._bump("listed_intraday", len(new), notify=True)
        self._bump("refreshes", notify=True)

    async def _add(self, insts: list[Instrument]) -> None:
        """Announce new instruments (their Instrument events first) and subscribe them: books on
        the depth connections with room, a new connection when none has; futures' tickers on
        connection 0. A connection that is down subscribes them when it reconnects."""
        added: dict[int, list[dict]] = collections.defaultdict(list)
        started: list[_Shard] = []
        for inst in insts:
            self.instruments[inst.instrument] = inst
            self._push(inst)
            arg = self._arg(inst)
            if arg["channel"] in DEPTH_CHANNELS:
                shard = next((s for s in self.shards[1:] if len(s.args) < self.depth_per_conn), None)
                if shard is None:
                    shard = _Shard(len(self.shards), [])
                    self.shards.append(shard)
                    started.append(shard)
                if arg["channel"] in INCREMENTAL_BOOKS:  # the books a dropped connection withholds
                    shard.books.add(inst.instrument)
                    self._shard_of[inst.instrument] = shard
            else:
                shard = self.shards[0]
            shard.args.append(arg)
            added[shard.index].append(arg)
        loop = asyncio.get_running_loop()
        for shard in started:  # its session subscribes everything it holds
            self._tasks.append(loop.create_task(self._shard_loop(shard)))
        self._counters["connections"] = len(self.shards)
        for index, args in sorted(added.items()):
            shard = self.shards[index]
            if shard not in started and shard.ws is not None:
                await self._send_quietly(shard, "subscribe", args)

    async def _remove(self, names: list[str], why: str) -> None:
        """Stop reading `names` at once (their frames still in flight are dropped, counted
        late_frames) and unsubscribe them (what else goes: VenueClient._let_go)."""
        dropped: dict[int, list[dict]] = collections.defaultdict(list)
        for name in names:
            inst = self.instruments.pop(name, None)
            if inst is None:
                continue
            self._let_go(inst, why)
            self._shard_of.pop(name, None)
            arg = self._arg(inst)
            for shard in self.shards:
                if arg in shard.args:
                    shard.args.remove(arg)
                    shard.books.discard(name)
                    dropped[shard.index].append(arg)
        self._bump(why, len(names), notify=True)
        for index, args in sorted(dropped.items()):
            shard = self.shards[index]
            if args and shard.ws is not None:
                await self._send_quietly(shard, "unsubscribe", args)

    async def _send_quietly(self, shard: _Shard, op: str, args: list[dict]) -> None:
        """(Un)subscribe on a live connection; one that drops meanwhile resubscribes what it
        holds when it reconnects."""
        try:
            await self._subscribe(shard, shard.ws, op, args)
        except (OSError, WebSocketException, ConnectionError, AttributeError):
            self._bump(f"{op}_lost")

    def _instruments(self, events: list) -> list[Instrument]:
        out = []
        for ev in events:
            if type(ev) is Instrument:
                out.append(ev)
            else:
                self._route(ev)
        return out

    def _plan(self, args: list[dict]) -> list[_Shard]:
        """Connection 0: everything but depth; then depth channels depth_per_conn per connection."""
        others = [a for a in args if a["channel"] not in DEPTH_CHANNELS]
        depth = [a for a in args if a["channel"] in DEPTH_CHANNELS]
        shards = [_Shard(0, others)] if others else []
        for i in range(0, len(depth), self.depth_per_conn):
            shards.append(_Shard(len(shards), depth[i:i + self.depth_per_conn]))
        return shards

    async def _request_slot(self, shard: _Shard) -> None:
        """At most subscribe_per_hour (un)subscribe requests per connection per rolling hour."""
        window = shard.requests
        while True:
            now = time.monotonic()
            while window and now - window[0] >= 3600.0:
                window.popleft()
            if len(window) < self.subscribe_per_hour:
                window.append(now)
                return
            self._bump("subscribe_budget_waits")
            await asyncio.sleep(window[0] + 3600.0 - now)

    async def _shard_loop(self, shard: _Shard) -> None:
        attempt = 0
        while not self._stopping:
            healthy = proactive = False
            await self._connect_bucket.take()
            try:
                async with self._connect(self.max_frame_bytes * 4, ping_interval=None) as ws:
                    shard.ws = ws
                    self._bump("connects", notify=True)
                    healthy, proactive = await self._session(shard, ws)
            except (OSError, asyncio.TimeoutError, WebSocketException, ConnectionError) as exc:
                self._bump("errors.disconnect")
                self._push_error("disconnect", f"connection {shard.index}: {type(exc).__name__}: {exc}"[:300])
            except Exception as exc:  # a bug in a session must not end this connection's retries
                log.exception("okx session %d failed", shard.index)
                self._bump("errors.session_crash")
                self._push_error("session_crash", f"connection {shard.index}: {type(exc).__name__}: {exc}"[:300])
            finally:
                shard.ws = None
            if self._stopping:
                break
            self._withhold(shard, "notice 64008" if proactive else "connection lost")
            if proactive:
                # 64008: the server goes away for an upgrade; reconnect now, not after a backoff.
                self._bump("proactive_reconnects", notify=True)
                attempt = 0
                continue
            attempt = 0 if healthy else attempt + 1
            if await self._backoff(attempt):
                break
            self._bump("reconnects", notify=True)

    async def _session(self, shard: _Shard, ws) -> tuple[bool, bool]:
        """Subscribe one connection and read it until it ends. Returns (streamed, notice)."""
        loop = asyncio.get_running_loop()
        for inst in shard.books:  # a new subscription starts each book with a snapshot
            self._books.pop(inst, None)
        self._resync_pending.difference_update(shard.books)
        shard.notice = asyncio.Event()
        shard.acked = 0
        shard.ping_sent = None
        shard.last_frame = time.monotonic()
        reader = loop.create_task(self._read_loop(shard, ws))
        keepalive = loop.create_task(self._keepalive(shard, ws))
        stopper = loop.create_task(self._stop.wait())
        notice = loop.create_task(shard.notice.wait())
        streaming = False
        try:
            setup = loop.create_task(self._subscribe(shard, ws, "subscribe", shard.args))
            done, _ = await asyncio.wait({setup, reader, stopper, notice}, return_when=asyncio.FIRST_COMPLETED)
            if setup in done:
                setup.result()  # raises send errors
                streaming = True
                self._bump("sessions_streaming", notify=True)
                await asyncio.wait({reader, stopper, notice}, return_when=asyncio.FIRST_COMPLETED)
            else:
                setup.cancel()
            if reader.done() and not reader.cancelled():
                reader.result()  # raises the read error, if any
        finally:
            for t in (reader, keepalive, stopper, notice):
                t.cancel()
            await close_draining(ws)
        return streaming, shard.notice.is_set()

    async def _subscribe(self, shard: _Shard, ws, op: str, args: list[dict]) -> None:
        for i in range(0, len(args), self.subscribe_batch):
            await self._request_slot(shard)
            req = {"id": str(next(self._ids)), "op": op, "args": args[i:i + self.subscribe_batch]}
            await ws.send(orjson.dumps(req).decode(), text=True)
            self._bump("subscribe_requests" if op == "subscribe" else "unsubscribe_requests")

    async def _keepalive(self, shard: _Shard, ws) -> None:
        # OKX drops a connection silent for 30 s: after ping_after_s without any frame send the
        # text `ping`; no `pong` within pong_timeout_s means a dead connection.
        tick = min(self.ping_after_s, self.pong_timeout_s) / 4
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if shard.ping_sent is not None:
                if now - shard.ping_sent > self.pong_timeout_s:
                    self._bump("errors.pong_timeout", notify=True)
                    await ws.close(1001, "no pong within pong_timeout_s")
                    return
            elif now - shard.last_frame >= self.ping_after_s:
                shard.ping_sent = now
                await ws.send("ping", text=True)
                self._bump("pings_sent", notify=True)

    async def _read_loop(self, shard: _Shard, ws) -> None:
        monotonic = time.monotonic
        limit = self.max_frame_bytes
        while True:
            raw = await ws.recv(decode=False)
            shard.last_frame = monotonic()
            ts = self._received(raw)
            for ev in parse_frame(raw, ts, limit):
                if type(ev) is Control:
                    self._control(shard, ev)
                else:
                    self._route(ev)

    def _control(self, shard: _Shard, ctl: Control) -> None:
        if ctl.kind == "pong":
            shard.ping_sent = None
            self._bump("pongs", notify=True)
        elif ctl.kind == "subscribe":
            shard.acked += 1
            self._counters["acks"] += 1
            self._counters["subscribed_channels"] += 1
            if shard.acked == len(shard.args):
                self._bump("connections_subscribed", notify=True)
        elif ctl.kind == "unsubscribe":
            self._counters["subscribed_channels"] -= 1
        elif ctl.kind == "notice":
            self._bump("notices", notify=True)
            if ctl.code == NOTICE_SERVICE_UPGRADE and shard.notice is not None:
                shard.notice.set()
        elif ctl.kind == "error":
            self._counters["errors.event_error"] += 1  # the FeedError("rpc_error") follows
        else:
            self._counters["control." + ctl.kind] += 1

    def _route(self, ev) -> None:
        """Sequence bookkeeping, then the queue. Loop thread only."""
        counters = self._counters
        kind = type(ev)
        counters["events." + kind.__name__] += 1
        if kind is BookUpdate:
            inst = ev.instrument
            if inst not in self.instruments:
                counters["late_frames"] += 1  # expired or delisted: in flight when we let it go
                return
            if not self._book_event(ev):  # the integrity rule: connectors/venues/base.py
                return
            if ev.kind == "change":
                if ev.seq == ev.prev_seq and not len(ev.bids) and not len(ev.asks):
                    counters["keepalives"] += 1  # ~60 s without change: alive, not a gap
                elif ev.seq < ev.prev_seq:
                    counters["seq_resets"] += 1  # maintenance reset: continue from the new seqId
            if not self._push(ev):
                counters["gaps_queue"] += 1
                self._mark_stale(inst, "event queue full: a book event was dropped")
            return
        if kind is FeedError:
            counters["errors." + ev.reason] += 1
            if ev.instrument and ev.detail.startswith(tuple(c + " " for c in INCREMENTAL_BOOKS)):
                # A book frame we could not read leaves that book incomplete: error, then resync.
                self._push(ev)
                self._mark_stale(ev.instrument, f"unreadable book frame: {ev.reason}")
                return
        self._push(ev)

    def _withhold(self, shard: _Shard, why: str) -> None:
        """A closed connection loses its books' updates until the resubscription's snapshots:
        tell the book step to withhold them (the seq_gap contract); no resync, the reconnect
        resubscribes everything."""
        n = super()._withhold([a["instId"] for a in shard.args if a["channel"] in DEPTH_CHANNELS],
                              f"connection {shard.index} closed ({why}): book withheld until its fresh snapshot")
        if n:
            self._bump("books_withheld", n, notify=True)

    def _resync_wanted(self, inst: str) -> bool:
        # snapshot channels (books5, bbo-tbt) heal with their next message
        return self.book_channel in INCREMENTAL_BOOKS and inst in self._shard_of

    async def _resubscribe(self, insts: list[str]) -> None:
        """unsubscribe + subscribe these books on their own connections: each sends a fresh snapshot.
        A connection that is down is skipped (its reconnect resubscribes everything)."""
        by_shard: dict[int, list[str]] = collections.defaultdict(list)
        for inst in insts:
            shard = self._shard_of.get(inst)
            if shard is not None:  # not let go meanwhile
                by_shard[shard.index].append(inst)
        for index, names in sorted(by_shard.items()):
            shard = self.shards[index]
            ws = shard.ws
            if ws is None:
                continue
            args = [{"channel": self.book_channel, "instId": i} for i in names]
            await self._subscribe(shard, ws, "unsubscribe", args)
            await self._subscribe(shard, ws, "subscribe", args)
