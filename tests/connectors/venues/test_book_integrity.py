"""Book integrity is the venue client's (the rule: connectors/venues/base.py): a gap or a crossed
book, wherever found, withholds the book downstream (seq_gap), resubscribes it, and the next
event of that book is a fresh snapshot. Over real loopback websockets: the Deribit simulator,
and for OKX a small venue-shaped server here (the OKX simulator has no crossed-book fault).
Waits are on conditions with generous deadlines, never sleeps."""

from __future__ import annotations

import asyncio
import threading

import orjson
import pytest
from websockets.asyncio.server import serve

from connectors.sim.deribit import Simulator
from operators.events import BookUpdate, FeedError
from operators.state.book import OrderBook
from tests.helpers.venues import (check_chains, collect, deribit_client, inject_when_streaming, okx_client,
                                  stream_target)
from tests.helpers.config import sim_kwargs


def _after_first(events, pred):
    """Index of the first event matching pred (None if none)."""
    return next((i for i, e in enumerate(events) if pred(e)), None)


def _check_withheld_then_fresh(all_events, mark, target, reason_first):
    """After all_events[mark]: the failing book's `reason_first` FeedError, a seq_gap, then its next
    book event a snapshot; no gapped or crossed book ever reaches the consumer."""
    check_chains(all_events)
    events = all_events[mark:]
    err = _after_first(events, lambda e: isinstance(e, FeedError) and e.instrument == target
                       and e.reason == reason_first)
    assert err is not None, [e for e in events if isinstance(e, FeedError)]
    gap = _after_first(events[err:], lambda e: isinstance(e, FeedError) and e.reason == "seq_gap"
                       and e.instrument == target)
    assert gap is not None
    nxt = next(e for e in events[err + gap:] if isinstance(e, BookUpdate) and e.instrument == target)
    assert nxt.kind == "snapshot" and nxt.prev_seq is None
    book = OrderBook()
    for e in all_events:
        if isinstance(e, BookUpdate) and e.instrument == target:
            assert book.apply(e) is None, e  # what the client forwards is never gapped nor crossed


# ---------------------------------------------------------------- Deribit (the simulator)


@pytest.fixture
def sim():
    with Simulator(**sim_kwargs(seed=21, rate=600, currencies=["ETH"], min_heartbeat_s=0.2)) as s:
        yield s


@pytest.mark.parametrize("book_depth", [None, 10], ids=["incremental", "grouped"])
def test_deribit_crossed_book_resubscribes_and_heals(sim, book_depth):
    client = deribit_client(sim.url, ("ETH",), book_depth=book_depth).start()
    try:
        events, target = stream_target(client, sim, sim.instrument_names("ETH"))
        mark = len(events)
        sim.inject("crossed", target)

        def healed(ev):
            gap = _after_first(ev[mark:], lambda e: isinstance(e, FeedError) and e.reason == "seq_gap"
                               and e.instrument == target)
            # on the grouped channel the next 100 ms snapshot can heal the book before the resync
            # (sent after resync_delay_s) goes out: wait for that too
            return gap is not None and sum(isinstance(e, BookUpdate) and e.instrument == target
                                           for e in ev[mark + gap:]) >= 2 \
                and client.counters().get("resyncs", 0) >= 1 and sim.counters["unsubscribe_calls"] >= 1

        collect(client, events, healed, timeout=30,
                what="crossed_book, seq_gap, a fresh snapshot and the resubscription")
        _check_withheld_then_fresh(events, mark, target, "crossed_book")
        c = client.counters()
        assert c["crossed"] == 1 and c["errors.crossed_book"] == 1 and c["resyncs"] >= 1
        assert sim.counters["unsubscribe_calls"] >= 1  # resubscribed, not just waited out
    finally:
        client.stop()


def test_deribit_gap_resubscribes_and_heals(sim):
    client = deribit_client(sim.url, ("ETH",)).start()
    try:
        target = sim.instrument_names("ETH")[3]
        events, mark = inject_when_streaming(client, sim, target, "gap")
        collect(client, events, lambda ev: any(isinstance(e, BookUpdate) and e.instrument == target
                                               and e.kind == "snapshot" for e in ev[mark:]),
                timeout=30, what="a fresh snapshot after the gap")
        _check_withheld_then_fresh(events, mark, target, "seq_gap")
        c = client.counters()
        assert c["gaps"] == 1 and c["resyncs"] >= 1 and sim.counters["unsubscribe_calls"] >= 1
    finally:
        client.stop()


# ---------------------------------------------------------------- OKX (a venue-shaped loopback server)

OPT = "BTC-USD-991231-100000-C"
ROW = {"instType": "OPTION", "instId": OPT, "uly": "BTC-USD", "instFamily": "BTC-USD", "state": "live",
       "settleCcy": "BTC", "ctVal": "0.01", "ctMult": "1", "tickSz": "0.0005", "stk": "100000", "optType": "C",
       "expTime": "4102473600000"}


class _OkxBooks:
    """Speaks just enough OKX v5 for one `books` channel: each subscription sends a snapshot; after
    the first one, `fault` ("crossed" or "gap") spoils the next update; every later subscription is
    clean (a snapshot, then a chained update)."""

    def __init__(self, fault: str):
        self.fault = fault
        self.subscribes = 0
        self.unsubscribes = 0
        self.seq = 100
        self.ready = threading.Event()
        self.url = ""
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self):
        self._thread.start()
        assert self.ready.wait(20), "loopback server did not start"
        return self

    def stop(self):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)

    async def _main(self):
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._conn, "127.0.0.1", 0) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws/v5/public"
            self.ready.set()
            await self._stop.wait()

    def _push(self, action, bids, asks, prev):
        self.seq += 10
        return orjson.dumps({"arg": {"channel": "books", "instId": OPT}, "action": action, "data": [
            {"bids": bids, "asks": asks, "ts": "1700000000000", "checksum": 0, "prevSeqId": prev,
             "seqId": self.seq}]}).decode()

    async def _conn(self, ws):
        async for msg in ws:
            if msg == "ping":
                await ws.send("pong")
                continue
            req = orjson.loads(msg)
            for arg in req["args"]:
                await ws.send(orjson.dumps({"event": req["op"], "arg": arg, "connId": "t"}).decode())
                if arg.get("channel") != "books":
                    continue
                if req["op"] == "unsubscribe":
                    self.unsubscribes += 1
                    continue
                self.subscribes += 1
                await ws.send(self._push("snapshot", [["0.040", "10", "0", "1"]], [["0.045", "10", "0", "1"]], -1))
                prev = self.seq
                if self.subscribes == 1 and self.fault == "crossed":
                    await ws.send(self._push("update", [["0.050", "5", "0", "1"]], [], prev))
                elif self.subscribes == 1 and self.fault == "gap":
                    await ws.send(self._push("update", [["0.041", "5", "0", "1"]], [], prev + 1))
                else:
                    await ws.send(self._push("update", [["0.041", "5", "0", "1"]], [], prev))


@pytest.mark.parametrize("fault", ["crossed", "gap"])
def test_okx_gap_or_crossed_book_resubscribes_and_heals(fault):
    server = _OkxBooks(fault).start()
    client = okx_client(server.url, instruments_fetcher=lambda inst_type, family: [ROW],
                        include_futures=False).start()
    try:
        events: list = []
        collect(client, events, lambda ev: sum(isinstance(e, BookUpdate) for e in ev) >= 3,
                timeout=30, what="snapshot, then after the fault a fresh snapshot and its update")
        _check_withheld_then_fresh(events, 0, OPT, "crossed_book" if fault == "crossed" else "seq_gap")
        kinds = [e.kind for e in events if isinstance(e, BookUpdate)]
        assert kinds == ["snapshot", "snapshot", "change"]  # the bad update never reached the consumer
        c = client.counters()
        assert c["resyncs"] == 1 and c["errors.seq_gap"] == 1
        assert c["crossed" if fault == "crossed" else "gaps"] == 1
        assert (server.unsubscribes, server.subscribes) == (1, 2)
    finally:
        client.stop()
        server.stop()
