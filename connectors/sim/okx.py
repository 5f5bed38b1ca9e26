"""A local OKX look-alike (v5 public websocket + the instruments REST path) driven by a known,
arbitrage-free "true" volatility surface, for tests and benchmarks.

It speaks the subset of OKX v5 that connectors/venues/okx/__init__.py uses (docs/protocols.md §B)
with the real shapes: `{"op":"subscribe"|"unsubscribe","args":[…]}` with per-arg `{"event":"subscribe",…}`
acks and `{"event":"error","code":…}` errors; channels books (snapshot, then updates chained by
seqId/prevSeqId, an empty keep-alive update with prevSeqId == seqId after `keepalive_s` without
change), books5 (5-level snapshots), opt-summary (every option of a family, vols and fwdPx as
decimal strings), index-tickers, tickers (futures and options) and instruments; the text
`ping` → `pong`; the idle drop (no subscription or nothing pushed for `idle_drop_s`, 30 s on
OKX); the 64008 service-upgrade notice on command; at most `subscribe_per_hour` (un)subscribe
requests per connection (error 50011 beyond). Over plain HTTP on the same port it serves
`GET /api/v5/public/instruments`, `/api/v5/market/index-tickers` and `/api/v5/public/time`.

This module is the OKX protocol only. The market is connectors/sim/market.py, the one the
Deribit simulator prices with (per coin a seeded spot process and an SSVI surface; option prices
are Black-76 at the true vol on each expiry's forward, in coin; crypto-margined families:
BTC-USD, ETH-USD), listed on connectors/sim/expiries.py's calendar; books and ticks are
connectors/sim/books.py (bids floored and asks ceiled to the option tick bands below, so every
best bid ≤ true price ≤ best ask; sizes are contracts), the socket scaffolding
connectors/sim/server.py, the command line connectors/sim/cli.py. It is one module of about 700
lines because requests, frames and message generation share the books and subscriptions.

Assumptions that are NOT verified against OKX (docs/protocols.md does not state them): option tick
bands (0.0001 coin below 0.005, 0.0005 from 0.005 up), ctVal (0.01 BTC, 0.1 ETH per option
contract; 100 / 10 USD per futures contract), the greeks' units in opt-summary, and the
close codes. The simulator must never be used as a source of truth about OKX beyond
docs/protocols.md, and it never imports flows or the venue parsers (connectors/venues/*): the
tests compare the two.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import sys
import time
import urllib.parse
from typing import Any, Optional, Sequence

import numpy as np
import orjson

from connectors.sim.books import TickBands, book_levels, future_levels, move_book
from connectors.sim.cli import add_common_args, add_configured, add_seconds_arg, add_size_args, new_parser, serve_until_stopped, \
    split_list
from connectors.sim.expiries import DAY_MS
from connectors.sim.implied import implied_vols
from connectors.sim.market import MODELS, SCALES, Market, check_scale, new_market
from connectors.sim.server import SimConn, SimServer
from operators.kernels.black import greeks

log = logging.getLogger(__name__)

# Option tick bands (coin): 0.0001 below 0.005, 0.0005 from 0.005 up. Assumed; see the module docstring.
OPTION_TICKS = TickBands(small=0.0001, large=0.0005, above=0.005)
CT_VAL = {"BTC": 0.01, "ETH": 0.1}  # coin per option contract (assumed)
FUTURE_CT_VAL_USD = {"BTC": 100.0, "ETH": 10.0}
FUTURE_TICK_USD = {"BTC": 0.1, "ETH": 0.01}
NOTICE_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."


# ---------------------------------------------------------------- formats


def _px(p: float) -> str:
    """0.015 → "0.015" (OKX sends decimal strings)."""
    s = f"{p:.8f}".rstrip("0")
    return s + "0" if s.endswith(".") else s


def _dec10(x: float) -> str:
    return f"{x:.10f}"


def _yymmdd(expiry_ms: int) -> str:
    return time.strftime("%y%m%d", time.gmtime(expiry_ms / 1000.0))


def _strike_txt(k: float) -> str:
    return str(int(k)) if float(k).is_integer() else repr(float(k))


# ---------------------------------------------------------------- the market, OKX-named


class _Family:
    """One instrument family (BTC-USD) over the shared market model of its coin."""

    def __init__(self, family: str, cur: Market, created_ms: int, depth: int):
        self.family = family
        self.coin = cur.name
        self.cur = cur
        self.depth = depth
        self.ids: list[str] = [self.inst_id(i) for i in range(len(cur.strike))]
        self.index_of = {n: i for i, n in enumerate(self.ids)}
        # Futures for expiries more than 1.5 days out (no dailies), like the venue's weeklies+.
        self.futures = {f"{family}-{_yymmdd(e)}": e for e in cur.expiries if (e - created_ms) / DAY_MS > 1.5}
        self.created_ms = created_ms
        self.bid_levels: list = []
        self.ask_levels: list = []

    def inst_id(self, i: int) -> str:
        """Option i's OKX id: BTC-USD-241227-100000-C."""
        cur = self.cur
        return (f"{self.family}-{_yymmdd(cur.expiries[int(cur.exp_idx[i])])}-{_strike_txt(float(cur.strike[i]))}-"
                f"{'C' if cur.is_call[i] else 'P'}")

    def reprice(self, now_ms: int) -> None:
        self.cur.reprice(now_ms)
        # tick-aligned prices per option, best first, with this venue's tick bands
        self.bid_levels, self.ask_levels = book_levels(self.cur.bid_coin, self.cur.ask_coin, self.depth,
                                                       OPTION_TICKS)

    def expiry_of(self, i: int) -> int:
        return self.cur.expiry_of(i)


class _Book:
    __slots__ = ("bids", "asks", "seq", "last_sent_ms")

    def __init__(self):
        self.bids: dict[float, int] = {}
        self.asks: dict[float, int] = {}
        self.seq = 0
        self.last_sent_ms = 0


class _Conn(SimConn):
    """A connection: subscriptions are "channel:instId|instFamily|instType" keys."""

    def __init__(self, ws, queue_max: int, conn_id: str):
        super().__init__(ws, queue_max)
        self.conn_id = conn_id
        self.requests: collections.deque = collections.deque()  # times of (un)subscribe requests


# ---------------------------------------------------------------- the server


class OkxSimulator(SimServer):
    """An in-process OKX v5 public simulator. start() → "ws://127.0.0.1:PORT/ws/v5/public".

    Everything runs on the simulator's own thread and asyncio loop once started; the inspection
    methods (true_vol, spot, …) read the current state and are meant for tests. advance() steps
    the market by hand and is only for a simulator that is not started.
    """

    label = "OKX simulator"
    thread_name = "okx-sim"

    def __init__(self, *, host: str, port: int, seed: int, rate: float, scale: str,
                 families: Sequence[str] = ("BTC-USD", "ETH-USD"),
                 n_expiries: Optional[int] = None, n_strikes: Optional[int] = None,
                 plan: Optional[dict[str, int]] = None, depth: Optional[int] = None, tick_ms: float = 100.0,
                 now_ms: Optional[int] = None, summary_interval_ms: Optional[float] = 1000.0,
                 index_interval_ms: Optional[float] = 100.0, ticker_interval_ms: Optional[float] = 100.0,
                 keepalive_s: float = 60.0, idle_drop_s: float = 30.0, notice_grace_s: float = 60.0,
                 subscribe_per_hour: int = 480, summary_rows_per_frame: int = 500,
                 conn_queue_max: int = 100_000, max_message_bytes: int = 1 << 20):
        cfg = check_scale(scale)
        fams = [f.upper() for f in families]
        bad = [f for f in fams if f.split("-")[0] not in MODELS or not f.endswith("-USD")]
        if bad:
            raise ValueError(f"families {bad}: the simulator models the crypto-margined families "
                             f"{', '.join(c + '-USD' for c in MODELS)}")
        self._init_server(host=host, port=port, seed=seed, rate=rate, tick_ms=tick_ms, conn_queue_max=conn_queue_max,
                          max_message_bytes=max_message_bytes, now_ms=now_ms, counter_keys=(
            "connections", "connections_open", "requests", "messages_sent", "book_updates", "books5_messages",
            "snapshots", "keepalives_sent", "summary_messages", "index_messages", "ticker_messages", "pings",
            "pongs", "idle_drops", "notices_sent", "notice_closes", "gaps_injected", "resets_injected",
            "drops_injected", "subscribe_requests", "unsubscribe_requests", "errors_sent", "rate_limited",
            "http_requests", "slow_closes", "ticks"))
        self.summary_interval_ms = summary_interval_ms or 0.0
        self.index_interval_ms = index_interval_ms or 0.0
        self.ticker_interval_ms = ticker_interval_ms or 0.0
        self.keepalive_s = keepalive_s
        self.idle_drop_s = idle_drop_s
        self.notice_grace_s = notice_grace_s
        self.subscribe_per_hour = subscribe_per_hour
        self.summary_rows_per_frame = summary_rows_per_frame
        self.depth = depth or max(cfg["depth"], 5)
        self._fam: dict[str, _Family] = {}
        for i, fam in enumerate(fams):
            coin = fam.split("-")[0]
            cur = new_market(coin, i, seed=seed, start_ms=self._start_ms, scale=scale, plan=plan,
                             n_expiries=n_expiries, n_strikes=n_strikes)  # Deribit's listing calendar
            self._fam[fam] = _Family(fam, cur, self._start_ms, self.depth)
        self._by_coin = {f.coin: f for f in self._fam.values()}
        self._index_instruments(self._fam.values(), lambda fam: fam.futures)
        self._rng = random.Random(seed)  # message choices and sizes
        self._seq_base = 1_000_000 + 1_000 * (seed % 1000)
        self._books: dict[str, _Book] = {}
        self._reprice_all()
        self._book_list: Optional[list[str]] = None
        self._listed_ms: dict[str, int] = {}  # listTime of what list_expiry listed (else a day before start)
        self._delisted: set[str] = set()  # options `delist` took off the instruments endpoint
        self._gap_next: set[str] = set()
        self._reset_next: set[str] = set()
        self._next_summary = self._next_index = self._next_ticker = self._next_keepalive = 0.0
        self._conn_ids = (f"{seed:04x}{n:04x}" for n in range(1 << 30))
        self.rest_url: Optional[str] = None

    # ------------------------------------------------ inspection (tests)

    @property
    def families(self) -> list[str]:
        return list(self._fam)

    def _family(self, underlying: str) -> _Family:
        u = underlying.upper()
        fam = self._fam.get(u) or self._by_coin.get(u)
        if fam is None:
            raise ValueError(f"underlying {underlying!r}: this simulator runs {', '.join(self._fam)} "
                             f"(or their coins {', '.join(self._by_coin)})")
        return fam

    def inst_ids(self, underlying: str, kind: str = "option") -> list[str]:
        fam = self._family(underlying)
        if kind == "option":
            return list(fam.ids)
        if kind == "future":
            return list(fam.futures)
        raise ValueError(f"kind={kind!r}: use 'option' or 'future'")

    def true_price_coin(self, inst_id: str) -> float:
        fam, i = self._by_option[inst_id]
        return float(fam.cur.true_coin[i])

    def seq_of(self, inst_id: str) -> Optional[int]:
        book = self._books.get(inst_id)
        return None if book is None else book.seq

    def inject(self, kind: str, inst_id: Optional[str] = None) -> None:
        """Faults on command:
        "gap"       the next update of `inst_id` (or of any book) skips a seqId;
        "reset"     the next update of `inst_id` (or of any book) resets seqId below prevSeqId;
        "keepalive" send an empty keep-alive update of `inst_id` now (prevSeqId == seqId);
        "notice"    send {"event":"notice","code":"64008"} to every connection, close them all
                    after notice_grace_s;
        "drop"      abort every connection (no close handshake).
        Listings: `list_expiry`."""
        if kind not in ("gap", "reset", "keepalive", "notice", "drop"):
            raise ValueError(f"inject({kind!r}): known faults are gap, reset, keepalive, notice, drop")
        if inst_id is not None and inst_id not in self._by_option and inst_id not in self._by_future:
            raise ValueError(f"inject({kind!r}, {inst_id!r}): unknown instrument id")
        if kind == "keepalive" and inst_id is None:
            raise ValueError("inject('keepalive') needs an inst_id")
        self._call_on_loop(lambda: self._inject(kind, inst_id), f"inject({kind!r})")

    def list_expiry(self, underlying: str, expiry_ms: Optional[int] = None, n_strikes: int = 2) -> list[str]:
        """List a new expiry now (calls and puts at `n_strikes` strikes around its forward; a week
        past the last expiry unless `expiry_ms` says when, e.g. seconds ahead for tests of expiry
        handling): the instruments endpoint lists them from now on, with listTime now. Returns
        their instIds."""
        fam = self._family(underlying)

        def list_on_loop() -> list[str]:
            cur = fam.cur
            expiry = int(expiry_ms if expiry_ms is not None else max(cur.expiries) + 7 * DAY_MS)
            clash = [e for e in cur.expiries if _yymmdd(e) == _yymmdd(expiry) and e != expiry]
            if clash:  # an instId names the date only: two expiries on one date would share names
                raise ValueError(f"list_expiry({expiry}): {_yymmdd(expiry)} already has an expiry ({clash[0]}); "
                                 "OKX lists one a day — pick another date, or a plan without it")
            before = len(cur.strike)
            cur.add_options(expiry, cur.listing_strikes(expiry, n_strikes, self._model_ms))
            listed = self.stamp_ms()
            new = []
            for i in range(before, len(cur.strike)):
                inst = fam.inst_id(i)
                fam.ids.append(inst)
                fam.index_of[inst] = i
                self._by_option[inst] = (fam, i)
                self._listed_ms[inst] = listed
                new.append(inst)
            self._reprice_all()
            self._book_list = None
            return new

        return self._call_on_loop(list_on_loop, "list_expiry")

    def delist(self, inst_id: str) -> None:
        """Take an option off the instruments endpoint before its expiry (a venue's delisting);
        subscribers keep receiving it until they unsubscribe."""
        if inst_id not in self._by_option:
            raise ValueError(f"delist({inst_id!r}): not an option of this simulator")
        self._call_on_loop(lambda: self._delisted.add(inst_id), "delist")

    def _model(self, underlying: str) -> Market:
        return self._family(underlying).cur

    def _models(self):
        return (f.cur for f in self._fam.values())

    # ------------------------------------------------ market

    def _reprice_all(self) -> None:
        for f in self._fam.values():
            f.reprice(self._model_ms)

    def _target_prices(self, inst_id: str) -> tuple[list[float], list[float]]:
        hit = self._by_option.get(inst_id)
        if hit is not None:
            fam, i = hit
            return list(fam.bid_levels[i]), list(fam.ask_levels[i])
        fam = self._by_future[inst_id]
        return future_levels(self._future_px(fam, inst_id), FUTURE_TICK_USD[fam.coin], self.depth)

    def _future_px(self, fam: _Family, inst_id: str) -> float:
        return float(fam.cur.forward(self._t_years(fam.futures[inst_id])))

    def _size(self) -> int:
        return int(self._rng.random() * 500) + 1  # contracts

    def _book_state(self, inst_id: str) -> _Book:
        book = self._books.get(inst_id)
        if book is None:
            book = _Book()
            bids, asks = self._target_prices(inst_id)
            book.bids = {px: self._size() for px in bids}
            book.asks = {px: self._size() for px in asks}
            book.seq = self._seq_base + int(self._rng.random() * 1000)
            self._books[inst_id] = book
        return book

    def _diff(self, inst_id: str, book: _Book) -> tuple[list, list]:
        """Move the book to the target prices; returns the changed levels [(px, sz)] (sz 0 = delete)."""
        bids, asks = move_book(book.bids, book.asks, *self._target_prices(inst_id), self._size,
                               lambda sz: sz + 1, self._rng)
        return [(px, sz) for _, px, sz in bids], [(px, sz) for _, px, sz in asks]

    # ------------------------------------------------ frames

    @staticmethod
    def _lv(px: float, sz: int) -> list:
        return [_px(px), str(sz), "0", str(1 + int(sz) % 5 if sz else 0)]

    def _snapshot_frame(self, inst_id: str, ts: int) -> bytes:
        book = self._book_state(inst_id)
        book.last_sent_ms = ts
        return orjson.dumps({"arg": {"channel": "books", "instId": inst_id}, "action": "snapshot", "data": [{
            "asks": [self._lv(p, s) for p, s in sorted(book.asks.items())],
            "bids": [self._lv(p, s) for p, s in sorted(book.bids.items(), reverse=True)],
            "ts": str(ts), "checksum": 0, "prevSeqId": -1, "seqId": book.seq}]})

    def _books5_frame(self, inst_id: str, ts: int) -> bytes:
        book = self._book_state(inst_id)
        return orjson.dumps({"arg": {"channel": "books5", "instId": inst_id}, "data": [{
            "asks": [self._lv(p, s) for p, s in sorted(book.asks.items())[:5]],
            "bids": [self._lv(p, s) for p, s in sorted(book.bids.items(), reverse=True)[:5]],
            "instId": inst_id, "ts": str(ts), "seqId": book.seq}]})

    def _update_frame(self, inst_id: str, book: _Book, bids: list, asks: list, ts: int) -> bytes:
        prev = book.seq
        if inst_id in self._reset_next or ("*" in self._reset_next and (bids or asks)):
            self._reset_next.discard(inst_id)
            self._reset_next.discard("*")
            book.seq = int(self._rng.random() * 100)  # maintenance: seqId below prevSeqId
            self._bump("resets_injected", notify=True)
        elif bids or asks:
            book.seq = prev + 1 + int(self._rng.random() * 3)
        book.last_sent_ms = ts
        return orjson.dumps({"arg": {"channel": "books", "instId": inst_id}, "action": "update", "data": [{
            "asks": [self._lv(p, s) for p, s in asks], "bids": [self._lv(p, s) for p, s in bids],
            "ts": str(ts), "checksum": 0, "prevSeqId": prev, "seqId": book.seq}]})

    def _summary_frames(self, fam: _Family, ts: int) -> list[bytes]:
        cur = fam.cur
        n = len(fam.ids)
        best_bid = np.zeros(n)
        best_ask = np.zeros(n)
        for i, inst in enumerate(fam.ids):
            book = self._books.get(inst)
            if book is None:
                bids, asks = fam.bid_levels[i], fam.ask_levels[i]
                best_bid[i] = bids[0] if bids else 0.0
                best_ask[i] = asks[0] if asks else 0.0
            else:
                best_bid[i] = max(book.bids) if book.bids else 0.0
                best_ask[i] = min(book.asks) if book.asks else 0.0
        f, k, t, call = cur.f, cur.strike, cur.t, cur.is_call
        bid_vol = implied_vols(best_bid * f, f, k, t, call)
        ask_vol = implied_vols(best_ask * f, f, k, t, call)
        g = greeks(f, k, t, cur.vol, call)
        atm = cur.atm_vol(t)
        rows = []
        for i, inst in enumerate(fam.ids):
            price_coin = float(cur.true_coin[i])
            bv, av = bid_vol[i], ask_vol[i]
            rows.append({
                "instType": "OPTION", "instId": inst, "uly": fam.family,
                # OKX's default greeks are coin-denominated (units not stated; docs/protocols.md §B):
                # premium-adjusted delta for an inverse option, the rest scaled by 1/F.
                "delta": _dec10(float(g["delta"][i]) - price_coin),
                "gamma": _dec10(float(g["gamma"][i]) * float(f[i])),
                "vega": _dec10(float(g["vega"][i]) / float(f[i]) / 100.0),
                "theta": _dec10(float(cur.theta_usd_day[i]) / float(f[i])),
                "lever": _dec10(1.0 / price_coin if price_coin > 0 else 0.0),
                "markVol": _dec10(float(cur.vol[i])),
                "bidVol": _dec10(float(bv)) if best_bid[i] > 0 and np.isfinite(bv) else "0",
                "askVol": _dec10(float(av)) if best_ask[i] > 0 and np.isfinite(av) else "0",
                "realVol": "",
                "deltaBS": _dec10(float(g["delta"][i])),
                "gammaBS": _dec10(float(g["gamma"][i])),
                "thetaBS": _dec10(float(cur.theta_usd_day[i])),
                "vegaBS": _dec10(float(g["vega"][i]) / 100.0),
                "ts": str(ts),
                "fwdPx": _dec10(float(f[i])),
                "volLv": _dec10(float(atm[i])),
            })
        arg = {"channel": "opt-summary", "instFamily": fam.family}
        step = max(self.summary_rows_per_frame, 1)
        return [orjson.dumps({"arg": arg, "data": rows[j:j + step]}) for j in range(0, len(rows), step)]

    def _index_frame(self, fam: _Family, ts: int) -> bytes:
        px = _px(round(fam.cur.spot, 2))
        return orjson.dumps({"arg": {"channel": "index-tickers", "instId": fam.family}, "data": [{
            "instId": fam.family, "idxPx": px, "high24h": px, "low24h": px, "open24h": px, "sodUtc0": px,
            "sodUtc8": px, "ts": str(ts)}]})

    def _ticker_frame(self, inst_id: str, ts: int) -> bytes:
        book = self._books.get(inst_id)
        if book is None or inst_id in self._by_future:
            bids, asks = self._target_prices(inst_id)
            bid, ask = (bids[0] if bids else 0.0), (asks[0] if asks else 0.0)
            bid_sz = ask_sz = self._size() if inst_id in self._by_option else int(self._rng.random() * 5000) + 1
        else:
            bid = max(book.bids) if book.bids else 0.0
            ask = min(book.asks) if book.asks else 0.0
            bid_sz, ask_sz = book.bids.get(bid, 0), book.asks.get(ask, 0)
        inst_type = "OPTION" if inst_id in self._by_option else "FUTURES"
        last = ask if ask else bid
        return orjson.dumps({"arg": {"channel": "tickers", "instId": inst_id}, "data": [{
            "instType": inst_type, "instId": inst_id, "last": _px(last), "lastSz": "1",
            "askPx": _px(ask) if ask else "", "askSz": str(ask_sz), "bidPx": _px(bid) if bid else "",
            "bidSz": str(bid_sz), "open24h": _px(last), "high24h": _px(last), "low24h": _px(last),
            "volCcy24h": "0", "vol24h": "0", "sodUtc0": _px(last), "sodUtc8": _px(last), "ts": str(ts)}]})

    def _instrument_rows(self, inst_type: str, family: Optional[str]) -> list[dict]:
        fams = [self._fam[family]] if family else list(self._fam.values())
        list_ms = str(self._start_ms - 86_400_000)
        rows = []
        for fam in fams:
            coin = fam.coin
            common = {"alias": "", "auctionEndTime": "", "baseCcy": "", "category": "1", "contTdSwTime": "",
                      "futureSettlement": False, "groupId": "1", "instFamily": fam.family, "lever": "",
                      "listTime": list_ms, "lotSz": "1", "maxIcebergSz": "1000000", "maxLmtAmt": "",
                      "maxLmtSz": "10000", "maxMktAmt": "", "maxMktSz": "1000", "maxStopSz": "1000",
                      "maxTriggerSz": "10000", "maxTwapSz": "10000", "minSz": "1", "openType": "",
                      "preMktSwTime": "", "quoteCcy": "", "ruleType": "normal", "settleCcy": coin,
                      "state": "live", "uly": fam.family, "instCategory": "1", "upcChg": []}
            if inst_type == "OPTION":
                for i, inst in enumerate(fam.ids):
                    if inst in self._delisted:
                        continue
                    rows.append({**common, "ctMult": "1", "ctType": "", "ctVal": _px(CT_VAL[coin]),
                                 "ctValCcy": coin, "expTime": str(fam.expiry_of(i)), "instId": inst,
                                 "listTime": str(self._listed_ms.get(inst, list_ms)),
                                 "instType": "OPTION", "optType": "C" if fam.cur.is_call[i] else "P",
                                 "stk": _strike_txt(float(fam.cur.strike[i])), "tickSz": _px(OPTION_TICKS.small),
                                 "instIdCode": 100_000 + i})
            elif inst_type == "FUTURES":
                for j, (inst, expiry) in enumerate(sorted(fam.futures.items(), key=lambda kv: kv[1])):
                    rows.append({**common, "ctMult": "1", "ctType": "inverse",
                                 "ctVal": _px(FUTURE_CT_VAL_USD[coin]), "ctValCcy": "USD", "expTime": str(expiry),
                                 "instId": inst, "instType": "FUTURES", "optType": "", "stk": "",
                                 "tickSz": _px(FUTURE_TICK_USD[coin]), "lever": "100", "instIdCode": 200_000 + j})
        return rows

    # ------------------------------------------------ subscriptions

    def _sub_key(self, arg: Any) -> tuple[Optional[str], str]:
        """A channel argument → (subscription key, error text); key None when invalid."""
        if not isinstance(arg, dict):
            return None, f"arg {str(arg)[:60]} must be an object"
        ch = arg.get("channel")
        if ch in ("books", "books5", "bbo-tbt", "tickers"):
            inst = arg.get("instId")
            ok = inst in self._by_option or (inst in self._by_future)
            return (f"{ch}:{inst}", "") if ok else (None, f"Wrong URL or channel:{ch},instId:{inst} doesn't exist")
        if ch == "opt-summary":
            fam = arg.get("instFamily") or arg.get("uly")
            return (f"{ch}:{fam}", "") if fam in self._fam else (None, f"channel:{ch},instFamily:{fam} doesn't exist")
        if ch == "index-tickers":
            inst = arg.get("instId")
            return (f"{ch}:{inst}", "") if inst in self._fam else (None, f"channel:{ch},instId:{inst} doesn't exist")
        if ch == "instruments":
            typ = arg.get("instType")
            return (f"{ch}:{typ}", "") if typ in ("OPTION", "FUTURES") else \
                (None, f"channel:{ch},instType:{typ} doesn't exist")
        return None, f"Wrong URL or channel:{ch} doesn't exist"

    def _initial_frames(self, key: str, ts: int) -> list[bytes]:
        ch, _, rest = key.partition(":")
        if ch == "books":
            self.counters["snapshots"] += 1
            return [self._snapshot_frame(rest, ts)]
        if ch == "books5":
            return [self._books5_frame(rest, ts)]
        if ch == "bbo-tbt":
            return [self._bbo_frame(rest, ts)]
        if ch == "opt-summary":
            return self._summary_frames(self._fam[rest], ts)
        if ch == "index-tickers":
            return [self._index_frame(self._fam[rest], ts)]
        if ch == "tickers":
            return [self._ticker_frame(rest, ts)]
        rows = self._instrument_rows(rest, None)
        return [orjson.dumps({"arg": {"channel": "instruments", "instType": rest}, "data": rows})]

    def _bbo_frame(self, inst_id: str, ts: int) -> bytes:
        book = self._book_state(inst_id)
        return orjson.dumps({"arg": {"channel": "bbo-tbt", "instId": inst_id}, "data": [{
            "asks": [self._lv(p, s) for p, s in sorted(book.asks.items())[:1]],
            "bids": [self._lv(p, s) for p, s in sorted(book.bids.items(), reverse=True)[:1]],
            "ts": str(ts), "seqId": book.seq}]})

    def _handle(self, conn: _Conn, raw: bytes) -> list[bytes]:
        """One client frame → the frames to send, in order."""
        if raw in (b"ping", "ping"):
            self.counters["pings"] += 1
            self._bump("pongs", notify=True)
            return [b"pong"]
        self.counters["requests"] += 1
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        op = msg.get("op") if isinstance(msg, dict) else None
        req_id = msg.get("id") if isinstance(msg, dict) else None
        args = msg.get("args") if isinstance(msg, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            return [self._error(conn, req_id, "60012", f"Invalid request: {bytes(raw)[:200].decode(errors='replace')}")]
        now = time.monotonic()
        while conn.requests and now - conn.requests[0] >= 3600.0:
            conn.requests.popleft()
        if len(conn.requests) >= self.subscribe_per_hour:
            self._bump("rate_limited", notify=True)
            return [self._error(conn, req_id, "50011", "Requests too frequent.")]
        conn.requests.append(now)
        self._bump(op + "_requests")
        out: list[bytes] = []
        after: list[bytes] = []
        ts = self.stamp_ms()
        for arg in args:
            key, err = self._sub_key(arg)
            if key is None:
                out.append(self._error(conn, req_id, "60018", err))
                continue
            ack = {"event": op, "arg": arg, "connId": conn.conn_id}
            if req_id is not None:
                ack = {"id": req_id, **ack}
            out.append(orjson.dumps(ack))
            if op == "subscribe":
                if self._subscribe(conn, key):
                    after.extend(self._initial_frames(key, ts))
            else:
                self._unsubscribe(conn, key)
        self._bump("subscribed", 0, notify=True)
        return out + after

    def _error(self, conn: _Conn, req_id: Any, code: str, msg: str) -> bytes:
        self.counters["errors_sent"] += 1
        body = {"event": "error", "code": code, "msg": msg, "connId": conn.conn_id}
        if req_id is not None:
            body = {"id": req_id, **body}
        return orjson.dumps(body)

    def _subscriptions_changed(self) -> None:
        self._book_list = None

    # ------------------------------------------------ generation

    def _books_subscribed(self) -> list[str]:
        if self._book_list is None:
            insts = set()
            for key in self._subs:
                ch, _, inst = key.partition(":")
                if ch in ("books", "books5", "bbo-tbt") and inst in self._by_option:
                    insts.add(inst)
            self._book_list = sorted(insts)
        return self._book_list

    def _book_move(self, inst_id: str, ts: int) -> None:
        """One market move of a book: an update on books, a snapshot on books5/bbo-tbt."""
        book = self._book_state(inst_id)
        if inst_id in self._gap_next or "*" in self._gap_next:
            self._gap_next.discard(inst_id)
            self._gap_next.discard("*")
            self._diff(inst_id, book)  # a change that is never sent: subscribers see a gap
            book.seq += 1 + int(self._rng.random() * 3)
            self._bump("gaps_injected", notify=True)
        bids, asks = self._diff(inst_id, book)
        if not bids and not asks:
            return
        key = f"books:{inst_id}"
        if key in self._subs:
            self._deliver(key, self._update_frame(inst_id, book, bids, asks, ts))
            self.counters["book_updates"] += 1
        else:
            book.seq += 1 + int(self._rng.random() * 3)
        key5 = f"books5:{inst_id}"
        if key5 in self._subs:
            self._deliver(key5, self._books5_frame(inst_id, ts))
            self.counters["books5_messages"] += 1
        if f"bbo-tbt:{inst_id}" in self._subs:
            self._deliver(f"bbo-tbt:{inst_id}", self._bbo_frame(inst_id, ts))

    def _keepalive(self, inst_id: str, ts: int) -> None:
        book = self._book_state(inst_id)
        book.last_sent_ms = ts
        frame = orjson.dumps({"arg": {"channel": "books", "instId": inst_id}, "action": "update", "data": [{
            "asks": [], "bids": [], "ts": str(ts), "checksum": 0, "prevSeqId": book.seq, "seqId": book.seq}]})
        self._deliver(f"books:{inst_id}", frame)
        self._bump("keepalives_sent", notify=True)

    async def _emit(self, n: int) -> None:
        now_s = time.monotonic()
        ts = self.stamp_ms()
        if self.index_interval_ms and now_s >= self._next_index:
            self._next_index = now_s + self.index_interval_ms / 1000.0
            for fam in self._fam.values():
                key = f"index-tickers:{fam.family}"
                if key in self._subs:
                    self._deliver(key, self._index_frame(fam, ts))
                    self.counters["index_messages"] += 1
        if self.ticker_interval_ms and now_s >= self._next_ticker:
            self._next_ticker = now_s + self.ticker_interval_ms / 1000.0
            for key in [k for k in self._subs if k.startswith("tickers:")]:
                self._deliver(key, self._ticker_frame(key.split(":", 1)[1], ts))
                self.counters["ticker_messages"] += 1
        if self.summary_interval_ms and now_s >= self._next_summary:
            self._next_summary = now_s + self.summary_interval_ms / 1000.0
            for fam in self._fam.values():
                key = f"opt-summary:{fam.family}"
                if key in self._subs:
                    for frame in self._summary_frames(fam, ts):
                        self._deliver(key, frame)
                        self.counters["summary_messages"] += 1
        if now_s >= self._next_keepalive:
            self._next_keepalive = now_s + min(self.keepalive_s / 4, 1.0)
            limit = ts - self.keepalive_s * 1000
            for key in [k for k in self._subs if k.startswith("books:")]:
                inst = key.split(":", 1)[1]
                book = self._books.get(inst)
                if book is not None and book.last_sent_ms <= limit:
                    self._keepalive(inst, ts)
        rng = self._rng
        for j in range(max(n, 0)):
            books = self._books_subscribed()
            if not books:
                break
            self._book_move(books[int(rng.random() * len(books))], ts)
            if j % 500 == 499:
                await asyncio.sleep(0)  # let requests and pings through during big bursts

    def _inject(self, kind: str, inst_id: Optional[str]) -> None:
        ts = self.stamp_ms()
        if kind in ("gap", "reset"):
            (self._gap_next if kind == "gap" else self._reset_next).add(inst_id or "*")
            if inst_id is not None and self._loop is not None and f"books:{inst_id}" in self._subs:
                self._book_move(inst_id, ts)  # deliver the faulty update now
        elif kind == "keepalive":
            self._keepalive(inst_id, ts)
        elif kind == "notice":
            frame = orjson.dumps({"event": "notice", "code": "64008", "msg": NOTICE_MSG})
            for conn in list(self._conns):
                self._send(conn, frame)
                self._bump("notices_sent", notify=True)
                if self._loop is not None:
                    self._loop.call_later(self.notice_grace_s, self._notice_close, conn)
        elif kind == "drop":
            self._abort_all()

    def _notice_close(self, conn: _Conn) -> None:
        if not conn.closed:
            self._bump("notice_closes", notify=True)
            self._close(conn, 1012, "service upgrade")

    # ------------------------------------------------ connections

    async def _idle_watch(self, conn: _Conn) -> None:
        # OKX: no subscription, or nothing pushed, for more than 30 s ends the connection.
        while not conn.closed:
            await asyncio.sleep(self.idle_drop_s / 4)
            now = time.monotonic()
            if (not conn.subs and now - conn.opened > self.idle_drop_s) or now - conn.last_out > self.idle_drop_s:
                self._bump("idle_drops", notify=True)
                self._close(conn, 1000, f"no subscription or no data for {self.idle_drop_s:g} s")
                return

    def _new_conn(self, ws) -> _Conn:
        return _Conn(ws, self.conn_queue_max, next(self._conn_ids))

    def _conn_tasks(self, conn: _Conn) -> list:
        return [self._idle_watch(conn)]

    def _http(self, connection, request):
        """Plain HTTP GETs on the websocket port: the REST paths the client uses."""
        parts = urllib.parse.urlsplit(request.path)
        if not parts.path.startswith("/api/"):
            return None  # a websocket upgrade: carry on with the handshake
        self._bump("http_requests", notify=True)
        q = dict(urllib.parse.parse_qsl(parts.query))
        status, body = 200, None
        if parts.path == "/api/v5/public/instruments":
            typ, fam = q.get("instType"), q.get("instFamily") or q.get("uly")
            if typ not in ("OPTION", "FUTURES"):
                status, body = 400, {"code": "51000", "msg": "Parameter instType error", "data": []}
            elif typ == "OPTION" and not fam:
                status, body = 400, {"code": "51000", "msg": "Parameter instFamily error", "data": []}
            elif fam and fam not in self._fam:
                body = {"code": "0", "msg": "", "data": []}
            else:
                body = {"code": "0", "msg": "", "data": self._instrument_rows(typ, fam)}
        elif parts.path == "/api/v5/market/index-tickers":
            fam = self._fam.get(q.get("instId", ""))
            ts = self.stamp_ms()
            rows = orjson.loads(self._index_frame(fam, ts))["data"] if fam else []
            body = {"code": "0", "msg": "", "data": rows}
        elif parts.path == "/api/v5/public/time":
            body = {"code": "0", "msg": "", "data": [{"ts": str(self.stamp_ms())}]}
        else:
            status, body = 404, {"code": "404", "msg": f"no such path {parts.path}", "data": []}
        response = connection.respond(status, orjson.dumps(body).decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    # ------------------------------------------------ lifecycle (start, stop: SimServer)

    def _serve_options(self) -> dict:
        return {"ping_interval": None, "process_request": self._http}

    def _listening(self) -> None:
        self.url = f"ws://{self.host}:{self.port}/ws/v5/public"
        self.rest_url = f"http://{self.host}:{self.port}"


# ---------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None, prog: str = "volgraph sim-okx",
         defaults: Optional[dict[str, Any]] = None) -> int:
    """`volgraph sim-okx`: run the OKX simulator until interrupted (or --seconds); prints its URLs.
    `defaults`: host, port, seed, rate, scale and families ("BTC-USD,ETH-USD") from graph.toml,
    handed over by flows/cli.py; without them (the module form) those options are required."""
    p = new_parser(prog, "Run a local OKX look-alike (v5 public websocket: options books, opt-summary, "
                         "index and tickers; the instruments REST path on the same port) driven by a known, "
                         "arbitrage-free volatility surface, for tests and benchmarks. Prints its ws:// and "
                         "http:// URLs, then its counters when it stops.")
    add_common_args(p, "book messages per second across subscriptions", defaults)
    add_configured(p, "--families", defaults, "comma-separated instrument families to simulate, of "
                   + ", ".join(c + "-USD" for c in MODELS))
    add_size_args(p, SCALES, defaults)
    p.add_argument("--idle-drop", type=float, default=30.0,
                   help="seconds without a subscription or without data before a connection is dropped")
    add_seconds_arg(p)
    args = p.parse_args(argv)
    sim = OkxSimulator(host=args.host, port=args.port, seed=args.seed, rate=args.rate,
                       families=split_list(args.families), scale=args.scale,
                       n_expiries=args.n_expiries, n_strikes=args.n_strikes, idle_drop_s=args.idle_drop)
    n_opts = sum(len(f.ids) for f in sim._fam.values())
    return serve_until_stopped(sim, args.seconds, lambda url: f"okx sim: {url}  REST {sim.rest_url}  ({n_opts} "
                               f"options, seed {args.seed}, {args.rate:g} msg/s)", "okx sim")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], prog="python -m connectors.sim.okx"))
