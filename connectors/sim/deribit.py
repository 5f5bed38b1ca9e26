"""`volgraph sim`: a local Deribit look-alike (JSON-RPC v2 over websocket) driven by a known,
arbitrage-free "true" volatility surface, for tests and benchmarks.

It speaks the subset of Deribit that volgraph uses (docs/protocols.md §A) with the real frame
shapes: public/get_instruments, public/subscribe, public/unsubscribe, public/set_heartbeat (then
heartbeat and test_request frames, closing sessions that do not answer), public/test,
public/get_time, public/get_index_price; channels book.{instrument}.{interval} (incremental),
book.{instrument}.none.{depth}.{interval} (grouped: whole top-of-book snapshots),
ticker.{instrument}.{interval}, deribit_price_index.{index} and
instrument.state.{kind}.{currency} (sent on listings and expiries). One book per instrument
moves for every book channel of it: an incremental subscriber sees the change, a grouped one
the new top levels, at the same moment.

This module is the Deribit protocol only: the market is connectors/sim/market.py (the true
surface, shared with the OKX simulator) named the Deribit way in connectors/sim/deribit_names.py,
books and ticks are connectors/sim/books.py, the listing calendar connectors/sim/expiries.py,
faults (`Simulator.inject`, `faults=`, `--faults`) connectors/sim/deribit_faults.py, the socket
scaffolding connectors/sim/server.py. Book bids are rounded down and asks up to Deribit's option
ticks (0.0001 coin, 0.0005 at 0.005 and above), so every best bid ≤ true price ≤ best ask. The
sequence of market states is a function of the seed and the tick count; frame timestamps are
wall clock (model clock with a fixed now_ms). It is one module of about 700 lines because the
request handling, the frames and the message generation read and write the same books and
subscriptions; split, each part would reach into the others' state.

It must never be used as a source of truth about Deribit's behaviour beyond docs/protocols.md,
and it never imports flows or the venue parsers (connectors/venues/*): the tests compare the two.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import sys
import time
from typing import Any, Optional, Sequence

import orjson

from connectors.sim.books import book_levels, future_levels, move_book
from connectors.sim.cli import add_common_args, add_configured, add_seconds_arg, add_size_args, new_parser, serve_until_stopped, \
    split_list
from connectors.sim.deribit_faults import DeribitFaults
from connectors.sim.deribit_names import (GROUPED_DEPTHS, OPT_TICK_ABOVE, OPT_TICK_LARGE, OPT_TICK_SMALL, OPTION_TICKS,
                                          DeribitMarket, book_channel, notification)
from connectors.sim.expiries import expiry_period
from connectors.sim.implied import implied_vol
from connectors.sim.market import MODELS, SCALES, check_scale, new_market
from connectors.sim.server import SimConn, SimServer

log = logging.getLogger(__name__)

VERSION = "1.2.26-volgraph-sim"
PERPETUAL_EXPIRATION_MS = 32_503_708_800_000  # what Deribit lists for perpetuals (year 3000)

class _Book:
    __slots__ = ("bids", "asks", "change_id")

    def __init__(self):
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.change_id = 0


class _Conn(SimConn):
    """A session: its subscriptions are channel names; heartbeat state on top."""

    def __init__(self, ws, queue_max: int):
        super().__init__(ws, queue_max)
        self.heartbeat_task: Optional[asyncio.Task] = None
        self.test_outstanding = False
        self.test_sent = 0.0
        self.heartbeats_off = False  # fault "heartbeat_stop"


# ---------------------------------------------------------------- the server


class Simulator(DeribitFaults, SimServer):
    """An in-process Deribit simulator. start() → "ws://127.0.0.1:PORT"; stop() shuts it down.

    Thread model: everything runs on the simulator's own thread and asyncio loop once started;
    the inspection methods (true_vol, spot, …) read the current state and are meant for tests.
    advance() steps the market by hand and is only for a simulator that is not started.
    """

    label = "simulator"
    thread_name = "deribit-sim"

    def __init__(self, *, host: str, port: int, seed: int, rate: float, scale: str,
                 currencies: Sequence[str] = ("BTC", "ETH"),
                 n_expiries: Optional[int] = None, n_strikes: Optional[int] = None,
                 plan: Optional[dict[str, int]] = None, depth: Optional[int] = None,
                 tick_ms: float = 100.0, now_ms: Optional[int] = None, book_share: float = 0.9,
                 min_heartbeat_s: float = 10.0, conn_queue_max: int = 100_000,
                 max_message_bytes: int = 1 << 20, faults: Sequence[dict] = ()):
        cfg = check_scale(scale)
        unknown = [c for c in currencies if c.upper() not in MODELS]
        if unknown:
            raise ValueError(f"currencies {unknown}: the simulator models {', '.join(MODELS)}")
        self._init_server(host=host, port=port, seed=seed, rate=rate, tick_ms=tick_ms, conn_queue_max=conn_queue_max,
                          max_message_bytes=max_message_bytes, now_ms=now_ms, counter_keys=(
            "connections", "connections_open", "requests", "messages_sent", "book_messages", "ticker_messages",
            "index_messages", "snapshots", "test_requests_sent", "test_answers", "heartbeats_sent",
            "heartbeat_closes", "slow_closes", "gaps_injected", "drops_injected", "subscribe_calls",
            "unsubscribe_calls", "rpc_errors", "ticks", "test_answer_ms_max", "faults_injected",
            "faults_applied", "late_frames_sent", "state_notifications"))
        self.book_share = book_share
        self.min_heartbeat_s = min_heartbeat_s
        self.depth = depth or cfg["depth"]
        self._cur: dict[str, DeribitMarket] = {}
        for i, c in enumerate(currencies):
            c = c.upper()
            self._cur[c] = new_market(c, i, seed=seed, start_ms=self._start_ms, scale=scale, plan=plan,
                                      n_expiries=n_expiries, n_strikes=n_strikes, cls=DeribitMarket)
        self._index_instruments(self._cur.values(), lambda cur: cur.future_expiry)
        self._index_names = {f"{c.lower()}_usd": cur for c, cur in self._cur.items()}
        self._rng = random.Random(seed)  # message choices (which channel, amounts)
        self._change_ids = itertools.count(10_000_000 + 1_000 * (seed % 1000))
        self._books: dict[str, _Book] = {}
        self._reprice_all()
        self._instrument_cache: dict[tuple[str, str], list] = {}
        self._listed_ms: dict[str, int] = {}  # creation_timestamp of what is listed intraday (else a day before start)
        self._sub_lists: Optional[tuple[list, list, list]] = None
        self._book_variants: dict[str, list[str]] = {}  # instrument → its book channels, when several
        self._init_faults(seed, faults)

    # ------------------------------------------------ inspection (tests)

    def instrument_names(self, underlying: str, kind: str = "option") -> list[str]:
        cur = self._currency(underlying)
        if kind == "option":
            names = cur.names
        else:
            names = [cur.futures[e] for e in cur.expiries if e in cur.futures] + [cur.perpetual]
        return [n for n in names if n not in self._delisted]

    def true_price_coin(self, instrument: str) -> float:
        cur, i = self._by_option[instrument]
        return float(cur.true_coin[i])

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) market messages; heartbeats and requests go on. Tests pause the
        market to compare books once everything sent has been read."""
        self._call_on_loop(lambda: setattr(self, "_paused", paused), "pause()")

    def books(self) -> dict[str, tuple[dict[float, float], dict[float, float], int]]:
        """book() of every instrument with a book, at one instant (delisted ones left out)."""
        def read():
            return {n: (dict(b.bids), dict(b.asks), b.change_id) for n, b in self._books.items()
                    if n not in self._delisted}
        return self._call_on_loop(read, "books()")

    def book(self, instrument: str) -> tuple[dict[float, float], dict[float, float], int]:
        """(bids, asks, change_id) of the book as last sent (copies, read on the loop thread)."""
        def read():
            b = self._books.get(instrument)
            return (dict(b.bids), dict(b.asks), b.change_id) if b is not None else ({}, {}, 0)
        return self._call_on_loop(read, "book()")

    def _currency(self, underlying: str) -> DeribitMarket:
        try:
            return self._cur[underlying.upper()]
        except KeyError:
            raise ValueError(f"underlying {underlying!r}: this simulator runs {', '.join(self._cur)}") from None

    _model = _currency

    def _models(self):
        return self._cur.values()

    # ------------------------------------------------ market

    def _reprice_all(self) -> None:
        for cur in self._cur.values():
            cur.reprice(self._model_ms)
            cur.bid_levels, cur.ask_levels = book_levels(cur.bid_coin, cur.ask_coin, self.depth, OPTION_TICKS)

    def _target_prices(self, instrument: str) -> tuple[list[float], list[float]]:
        hit = self._by_option.get(instrument)
        depth = self.depth
        if hit is not None:
            cur, i = hit
            return list(cur.bid_levels[i]), list(cur.ask_levels[i])
        cur = self._by_future[instrument]
        return future_levels(self._future_price(cur, instrument), cur.model.future_tick_usd, depth)

    def _future_price(self, cur: DeribitMarket, instrument: str) -> float:
        expiry = cur.future_expiry[instrument]
        if expiry == 0:
            return cur.spot * 1.0001  # a perpetual trades a hair above the index
        return float(cur.forward(self._t_years(expiry)))

    def _amount(self, instrument: str) -> float:
        # random() scaled, not randint(): this runs for every level of every message
        hit = self._by_option.get(instrument)
        if hit is not None:
            return round(hit[0].model.option_min_amount * (int(self._rng.random() * 500) + 1), 1)
        cur = self._by_future[instrument]
        return float(cur.model.future_contract_usd * (int(self._rng.random() * 5000) + 1))

    def _book_state(self, instrument: str) -> _Book:
        book = self._books.get(instrument)
        if book is None:
            book = _Book()
            bids, asks = self._target_prices(instrument)
            book.bids = {px: self._amount(instrument) for px in bids}
            book.asks = {px: self._amount(instrument) for px in asks}
            book.change_id = next(self._change_ids)
            self._books[instrument] = book
        return book

    def _snapshot_data(self, instrument: str, ts: int) -> dict:
        book = self._book_state(instrument)
        return {"type": "snapshot", "timestamp": ts, "instrument_name": instrument, "change_id": book.change_id,
                "bids": [["new", px, amt] for px, amt in sorted(book.bids.items(), reverse=True)],
                "asks": [["new", px, amt] for px, amt in sorted(book.asks.items())]}

    def _diff(self, instrument: str, book: _Book) -> tuple[list, list]:
        """Move the book to the target prices; the changed levels as [action, price, amount]."""
        step = self._by_option[instrument][0].model.option_min_amount if instrument in self._by_option else 10.0
        bids, asks = move_book(book.bids, book.asks, *self._target_prices(instrument),
                               lambda: self._amount(instrument), lambda amt: round(amt + step, 1), self._rng)
        return [[a, px, float(amt)] for a, px, amt in bids], [[a, px, float(amt)] for a, px, amt in asks]

    def _grouped_data(self, instrument: str, ts: int, depth: int) -> dict:
        """A grouped book notification: the top `depth` levels per side as [price, amount]."""
        book = self._book_state(instrument)
        return {"timestamp": ts, "instrument_name": instrument, "change_id": book.change_id,
                "bids": [[px, amt] for px, amt in sorted(book.bids.items(), reverse=True)[:depth]],
                "asks": [[px, amt] for px, amt in sorted(book.asks.items())[:depth]]}

    def _change_data(self, instrument: str, ts: int) -> Optional[dict]:
        book = self._book_state(instrument)
        if instrument in self._gap_next or "*" in self._gap_next:
            self._gap_next.discard(instrument)
            self._gap_next.discard("*")
            self._diff(instrument, book)  # a change that is never sent: subscribers see a gap
            book.change_id = next(self._change_ids)
            self._bump("gaps_injected", notify=True)
        bids, asks = self._diff(instrument, book)
        if not bids and not asks:
            return None
        prev = book.change_id
        book.change_id = next(self._change_ids)
        return {"type": "change", "timestamp": ts, "prev_change_id": prev, "instrument_name": instrument,
                "change_id": book.change_id, "bids": bids, "asks": asks}

    def _ticker_data(self, instrument: str, ts: int) -> dict:
        hit = self._by_option.get(instrument)
        book = self._books.get(instrument)
        if book is None:
            bids_t, asks_t = self._target_prices(instrument)
            best_bid, best_ask = (bids_t[0] if bids_t else 0.0), (asks_t[0] if asks_t else 0.0)
            bid_amt = ask_amt = 0.0
        else:
            best_bid = max(book.bids) if book.bids else 0.0
            best_ask = min(book.asks) if book.asks else 0.0
            bid_amt = book.bids.get(best_bid, 0.0)
            ask_amt = book.asks.get(best_ask, 0.0)
        if hit is None:
            return self._future_ticker(instrument, ts, best_bid, bid_amt, best_ask, ask_amt)
        cur, i = hit
        f = float(cur.f[i])
        k = float(cur.strike[i])
        t = float(cur.t[i])
        call = bool(cur.is_call[i])
        mark = float(cur.true_coin[i])
        bid_iv = implied_vol(best_bid * f, f, k, t, call) if best_bid > 0 else None
        ask_iv = implied_vol(best_ask * f, f, k, t, call) if best_ask > 0 else None
        expiry = cur.expiries[int(cur.exp_idx[i])]
        return {
            "timestamp": ts,
            "stats": {"volume_usd": 0.0, "volume": 0.0, "price_change": None, "low": None, "high": None},
            "state": "open",
            "settlement_price": round(mark, 8),
            "open_interest": cur.open_interest[i],
            "min_price": OPT_TICK_SMALL,
            "max_price": OPTION_TICKS.ceil_one(mark + 0.05 + 0.1 * mark),
            "mark_price": round(mark, 8),
            "mark_iv": round(float(cur.vol[i]) * 100.0, 2),
            "last_price": None,
            "interest_rate": 0.0,
            "instrument_name": instrument,
            "index_price": round(cur.spot, 2),
            "greeks": {"vega": round(float(cur.vega_usd_pt[i]), 5), "theta": round(float(cur.theta_usd_day[i]), 5),
                       "rho": 0.0, "gamma": round(float(cur.gamma[i]), 8), "delta": round(float(cur.delta[i]), 5)},
            "estimated_delivery_price": round(cur.spot, 2),
            "bid_iv": round(bid_iv * 100.0, 2) if bid_iv is not None else 0.0,
            "best_bid_price": best_bid,
            "best_bid_amount": bid_amt,
            "best_ask_price": best_ask,
            "best_ask_amount": ask_amt,
            "ask_iv": round(ask_iv * 100.0, 2) if ask_iv is not None else (500.0 if best_ask > 0 else 0.0),
            "underlying_price": round(f, 4),
            "underlying_index": cur.underlying_index(expiry),
        }

    def _future_ticker(self, instrument: str, ts: int, best_bid: float, bid_amt: float, best_ask: float,
                       ask_amt: float) -> dict:
        cur = self._by_future[instrument]
        mark = round(self._future_price(cur, instrument), 2)
        data = {
            "timestamp": ts,
            "stats": {"volume_usd": 0.0, "volume": 0.0, "price_change": 0.0, "low": mark, "high": mark},
            "state": "open",
            "settlement_price": mark,
            "open_interest": 1_000_000.0,
            "min_price": round(mark * 0.97, 2),
            "max_price": round(mark * 1.03, 2),
            "mark_price": mark,
            "last_price": mark,
            "instrument_name": instrument,
            "index_price": round(cur.spot, 2),
            "estimated_delivery_price": round(cur.spot, 2),
            "best_bid_price": best_bid,
            "best_bid_amount": bid_amt,
            "best_ask_price": best_ask,
            "best_ask_amount": ask_amt,
        }
        if cur.future_expiry[instrument] == 0:
            data["interest_value"] = 0.0
            data["funding_8h"] = 0.0001
            data["current_funding"] = 0.0
        return data

    # ------------------------------------------------ JSON-RPC

    def _instrument_rows(self, currency: str, kind: Optional[str]) -> list:
        key = (currency, kind or "any")
        rows = self._instrument_cache.get(key)
        if rows is not None:
            return rows
        cur = self._cur[currency]
        lower = currency.lower()
        rows = []
        created = cur.created_ms - 86_400_000
        if kind in (None, "option"):
            for i, name in enumerate(cur.names):
                expiry = cur.expiries[int(cur.exp_idx[i])]
                rows.append({
                    "tick_size": OPT_TICK_SMALL, "tick_size_steps": [{"above_price": OPT_TICK_ABOVE,
                                                                      "tick_size": OPT_TICK_LARGE}],
                    "taker_commission": 0.0003, "strike": float(cur.strike[i]),
                    "settlement_period": expiry_period(expiry, cur.created_ms), "settlement_currency": currency,
                    "rfq": False, "quote_currency": currency, "price_index": f"{lower}_usd",
                    "option_type": "call" if cur.is_call[i] else "put",
                    "min_trade_amount": cur.model.option_min_amount, "maker_commission": 0.0003, "kind": "option",
                    "is_active": True, "instrument_name": name, "instrument_id": 100_000 + i,
                    "expiration_timestamp": expiry, "creation_timestamp": self._listed_ms.get(name, created),
                    "counter_currency": "USD", "contract_size": 1.0, "block_trade_tick_size": OPT_TICK_SMALL,
                    "block_trade_min_trade_amount": 25, "block_trade_commission": 0.0003, "base_currency": currency})
        if kind in (None, "future"):
            for j, (name, expiry) in enumerate(sorted(cur.future_expiry.items(), key=lambda kv: kv[1] or 1 << 62)):
                rows.append({
                    "tick_size": cur.model.future_tick_usd, "tick_size_steps": [], "taker_commission": 0.0005,
                    "settlement_period": "perpetual" if expiry == 0 else expiry_period(expiry, cur.created_ms),
                    "settlement_currency": currency, "rfq": False, "quote_currency": "USD",
                    "price_index": f"{lower}_usd", "min_trade_amount": cur.model.future_contract_usd,
                    "max_liquidation_commission": 0.0075, "max_leverage": 50, "maker_commission": 0.0,
                    "kind": "future", "is_active": True, "instrument_name": name, "instrument_id": 200_000 + j,
                    "future_type": "reversed", "instrument_type": "reversed",
                    "expiration_timestamp": PERPETUAL_EXPIRATION_MS if expiry == 0 else expiry,
                    "creation_timestamp": created, "counter_currency": "USD",
                    "contract_size": cur.model.future_contract_usd, "block_trade_tick_size": 0.01,
                    "block_trade_min_trade_amount": 200_000, "block_trade_commission": 0.00025,
                    "base_currency": currency})
        rows = [r for r in rows if r["instrument_name"] not in self._delisted]
        self._instrument_cache[key] = rows
        return rows

    def _valid_channel(self, ch: str) -> bool:
        parts = ch.split(".")
        if len(parts) == 3 and parts[0] in ("book", "ticker") and parts[2] in ("100ms", "agg2", "raw"):
            return (parts[1] in self._by_option or parts[1] in self._by_future) and parts[1] not in self._delisted
        if len(parts) == 5 and parts[0] == "book" and parts[2] == "none" and parts[3] in GROUPED_DEPTHS \
                and parts[4] in ("100ms", "agg2"):
            return (parts[1] in self._by_option or parts[1] in self._by_future) and parts[1] not in self._delisted
        if len(parts) == 4 and parts[:2] == ["instrument", "state"]:
            return parts[2] in ("option", "future", "any") and parts[3].upper() in self._cur
        return len(parts) == 2 and parts[0] == "deribit_price_index" and parts[1] in self._index_names

    def _handle(self, conn: _Conn, raw: Any) -> list[bytes]:
        """One request → the frames to send, in order (the response first)."""
        us_in = int(time.time() * 1_000_000)
        try:
            msg = orjson.loads(raw)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError):
            return [self._error(None, -32700, "Parse error", us_in)]
        self.counters["requests"] += 1
        req_id = msg.get("id")
        method = msg.get("method")
        params = msg.get("params") or {}
        if not isinstance(params, dict):
            return [self._error(req_id, -32602, "Invalid params", us_in, {"reason": "params must be an object"})]
        if self._rate_limit_next:
            self._rate_limit_next -= 1
            conn.close_after = (1008, "too_many_requests")  # Deribit ends the session after this error
            return [self._error(req_id, 10028, "too_many_requests", us_in)]
        after: list[bytes] = []
        if method == "public/test":
            if conn.test_outstanding:
                conn.test_outstanding = False
                waited_ms = int((time.monotonic() - conn.test_sent) * 1000)
                self.counters["test_answer_ms_max"] = max(self.counters["test_answer_ms_max"], waited_ms)
                self._bump("test_answers", notify=True)
            result: Any = {"version": VERSION}
        elif method == "public/hello":
            result = {"version": VERSION}
        elif method == "public/get_time":
            result = self.stamp_ms()
        elif method == "public/set_heartbeat":
            interval = params.get("interval")
            if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < self.min_heartbeat_s:
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": f"must be a number >= {self.min_heartbeat_s:g}", "param": "interval"})]
            if conn.heartbeat_task is not None:
                conn.heartbeat_task.cancel()
            conn.heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeats(conn, float(interval)))
            conn.tasks.append(conn.heartbeat_task)  # cancelled when the session ends
            result = "ok"
        elif method == "public/disable_heartbeat":
            if conn.heartbeat_task is not None:
                conn.heartbeat_task.cancel()
                conn.heartbeat_task = None
            conn.test_outstanding = False
            result = "ok"
        elif method == "public/get_instruments":
            currency = str(params.get("currency", "")).upper()
            kind = params.get("kind")
            if currency not in self._cur or kind not in (None, "option", "future"):
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": "wrong format", "param": "currency" if currency not in self._cur
                                     else "kind"})]
            result = [] if params.get("expired") is True else self._instrument_rows(currency, kind)
        elif method == "public/get_index_price":
            cur = self._index_names.get(str(params.get("index_name", "")))
            if cur is None:
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": "wrong format", "param": "index_name"})]
            result = {"index_price": round(cur.spot, 2), "estimated_delivery_price": round(cur.spot, 2)}
        elif method in ("public/subscribe", "public/unsubscribe"):
            channels = params.get("channels")
            if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
                return [self._error(req_id, -32602, "Invalid params", us_in,
                                    {"reason": "must be a list of strings", "param": "channels"})]
            if method == "public/subscribe":
                self.counters["subscribe_calls"] += 1
                result = [c for c in dict.fromkeys(channels) if self._valid_channel(c)]
                ts = self.stamp_ms()
                for ch in result:
                    if self._subscribe(conn, ch):
                        after.extend(self._initial_frames(ch, ts))
                self._bump("subscribed", 0, notify=True)
            else:
                self.counters["unsubscribe_calls"] += 1
                result = [c for c in dict.fromkeys(channels) if c in conn.subs]
                for ch in result:
                    self._unsubscribe(conn, ch)
        elif method == "public/unsubscribe_all":
            for ch in list(conn.subs):
                self._unsubscribe(conn, ch)
            result = "ok"
        else:
            return [self._error(req_id, -32601, "Method not found", us_in)]
        us_out = int(time.time() * 1_000_000)
        resp = orjson.dumps({"jsonrpc": "2.0", "id": req_id, "result": result, "usIn": us_in, "usOut": us_out,
                             "usDiff": us_out - us_in, "testnet": False})
        return [resp, *after]

    def _error(self, req_id: Any, code: int, message: str, us_in: int, data: Optional[dict] = None) -> bytes:
        self.counters["rpc_errors"] += 1
        err: dict[str, Any] = {"message": message, "code": code}
        if data:
            err["data"] = data
        us_out = int(time.time() * 1_000_000)
        return orjson.dumps({"jsonrpc": "2.0", "id": req_id, "error": err, "usIn": us_in, "usOut": us_out,
                             "usDiff": us_out - us_in, "testnet": False})

    def _subscriptions_changed(self) -> None:
        self._sub_lists = None

    def _initial_frames(self, ch: str, ts: int) -> list[bytes]:
        kind, _, rest = ch.partition(".")
        if kind == "instrument":
            return []  # notifications only when something is listed or delisted
        if kind == "book":
            self.counters["snapshots"] += 1
            inst, depth = book_channel(ch)
            data = self._snapshot_data(inst, ts) if depth is None else self._grouped_data(inst, ts, depth)
            return [notification(ch, data)]
        if kind == "ticker":
            return [notification(ch, self._ticker_data(rest.rsplit(".", 1)[0], ts))]
        cur = self._index_names[rest]
        return [notification(ch, {"index_name": rest, "price": round(cur.spot, 2), "timestamp": ts})]

    # ------------------------------------------------ generation

    def _channel_lists(self) -> tuple[list, list, list]:
        if self._sub_lists is None:
            books, tickers, indices = [], [], []
            variants: dict[str, list[str]] = {}
            for ch in sorted(self._subs):
                if ch.startswith("instrument.state."):
                    continue  # sent on listings and expiries only
                if ch.startswith("book."):
                    # one entry per instrument: its other book channels hear the same move
                    chans = variants.setdefault(book_channel(ch)[0], [])
                    if not chans:
                        books.append(ch)
                    chans.append(ch)
                    continue
                (tickers if ch.startswith("ticker.") else indices).append(ch)
            self._book_variants = {inst: chans for inst, chans in variants.items() if len(chans) > 1}
            self._sub_lists = (books, tickers, indices)
        return self._sub_lists

    def _message(self, ch: str, ts: int) -> Optional[bytes]:
        kind, _, rest = ch.partition(".")
        if kind == "book":
            inst, depth = book_channel(ch)
            data = self._change_data(inst, ts)
            if data is None:
                return None
            self.counters["book_messages"] += 1
            if self._sub_lists is None:
                self._channel_lists()  # subscriptions changed: refresh the book variants
            siblings = self._book_variants.get(inst) if self._book_variants else None
            if siblings:
                for other in siblings:  # the same move, in each other book channel's form
                    if other != ch:
                        other_depth = book_channel(other)[1]
                        self._deliver(other, notification(other, data if other_depth is None
                                                           else self._grouped_data(inst, ts, other_depth)))
            if depth is not None:
                data = self._grouped_data(inst, ts, depth)
            if self._msg_faults:
                fault = self._take_fault(inst, "book")
                if fault is not None:
                    return self._corrupt(fault[0], fault[1], ch, data, self._books.get(inst))
        elif kind == "ticker":
            inst = rest.rsplit(".", 1)[0]
            data = self._ticker_data(inst, ts)
            self.counters["ticker_messages"] += 1
            if self._msg_faults:
                fault = self._take_fault(inst, "ticker")
                if fault is not None:
                    return self._corrupt(fault[0], fault[1], ch, data, None)
        else:
            cur = self._index_names[rest]
            data = {"index_name": rest, "price": round(cur.spot, 2), "timestamp": ts}
            self.counters["index_messages"] += 1
        return notification(ch, data)

    async def _emit(self, n: int) -> None:
        books, tickers, indices = self._channel_lists()
        if not (books or tickers or indices):
            return
        ts = self.stamp_ms()
        rng = self._rng
        for ch in indices:
            self._deliver(ch, self._message(ch, ts))
        n -= len(indices)
        for j in range(max(n, 0)):
            books, tickers, _ = self._channel_lists()
            if books and (not tickers or rng.random() < self.book_share):
                ch = books[int(rng.random() * len(books))]
            elif tickers:
                ch = tickers[int(rng.random() * len(tickers))]
            else:
                break
            frame = self._message(ch, ts)
            if frame is not None:
                self._deliver(ch, frame)
            if j % 500 == 499:
                await asyncio.sleep(0)  # let requests and heartbeats through during big bursts

    # ------------------------------------------------ connections

    async def _heartbeats(self, conn: _Conn, interval_s: float) -> None:
        hb = orjson.dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "heartbeat"}})
        test = orjson.dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": "test_request"}})
        while not conn.closed:
            await asyncio.sleep(interval_s / 2)
            if conn.heartbeats_off:
                return  # a server whose heartbeat machinery died: the client must notice
            if conn.stalled_until > time.monotonic():
                continue  # stalled: nothing goes out, nothing is expected
            self._send(conn, hb)
            self.counters["heartbeats_sent"] += 1
            await asyncio.sleep(interval_s / 2)
            if conn.heartbeats_off:
                return
            if conn.stalled_until > time.monotonic():
                continue
            if conn.test_outstanding:
                # Like the real server: an unanswered test_request ends the session.
                self._bump("heartbeat_closes", notify=True)
                self._close(conn, 1000, "test_request not answered with public/test")
                return
            conn.test_outstanding = True
            conn.test_sent = time.monotonic()
            self._send(conn, test)
            self._bump("test_requests_sent", notify=True)

    def _new_conn(self, ws) -> _Conn:
        return _Conn(ws, self.conn_queue_max)

    # ------------------------------------------------ lifecycle (start, stop: SimServer)

    def _serve_options(self) -> dict:
        return {"ping_interval": 20, "ping_timeout": 20}

    def _listening(self) -> None:
        self.url = f"ws://{self.host}:{self.port}/ws/api/v2"

    # ------------------------------------------------ offline frames (no socket)
    # For recorded workloads (bench/workload.py) and replay files: the same frames a
    # subscriber would read, produced by the same code, at a timestamp the caller chooses.
    # Only for a simulator that is not started (like advance()).

    def offline_instruments_frame(self, currency: str, kind: Optional[str] = None, req_id: int = 1,
                                  ts_ms: int = 0) -> bytes:
        """The public/get_instruments response frame for `currency` (kind None = options and futures)."""
        self._offline_only("offline_instruments_frame")
        currency = currency.upper()
        if currency not in self._cur or kind not in (None, "option", "future"):
            raise ValueError(f"offline_instruments_frame({currency!r}, kind={kind!r}): currency must be one of "
                             f"{', '.join(self._cur)} and kind None, 'option' or 'future'")
        us = ts_ms * 1000
        return orjson.dumps({"jsonrpc": "2.0", "id": req_id, "result": self._instrument_rows(currency, kind),
                             "usIn": us, "usOut": us, "usDiff": 0, "testnet": False})

    def offline_initial_frame(self, channel: str, ts_ms: int) -> bytes:
        """What a new subscriber of `channel` reads first: book snapshot, ticker or index price."""
        self._offline_check(channel, "offline_initial_frame")
        return self._initial_frames(channel, ts_ms)[0]

    def offline_frame(self, channel: str, ts_ms: int) -> Optional[bytes]:
        """The next notification on `channel` at the current market state: a book change against
        what was last sent (None when nothing differs), a ticker, or an index price."""
        self._offline_check(channel, "offline_frame")
        return self._message(channel, ts_ms)

    def offline_shock(self, underlying: str, rel_move: float) -> None:
        """Move the spot of `underlying` by `rel_move` (0.01 = +1 %) at once and reprice every option."""
        self._offline_only("offline_shock")
        if not -0.5 < rel_move < 1.0:
            raise ValueError(f"offline_shock(rel_move={rel_move}): use a relative move in (-0.5, 1.0), e.g. 0.01")
        self._currency(underlying).spot *= 1.0 + rel_move
        self._reprice_all()

    def _offline_only(self, what: str) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{what}() is for a simulator that is not started; a started one sends its own frames")

    def _offline_check(self, channel: str, what: str) -> None:
        self._offline_only(what)
        if not self._valid_channel(channel):
            raise ValueError(f"{what}({channel!r}): not a channel of this simulator; use book.<instrument>.100ms, "
                             "book.<instrument>.none.<1|10|20>.100ms, ticker.<instrument>.100ms or "
                             "deribit_price_index.<btc_usd|eth_usd>")


# ---------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None, prog: str = "volgraph sim",
         defaults: Optional[dict[str, Any]] = None) -> int:
    """`volgraph sim`: run the simulator until interrupted (or --seconds); prints its URL.
    `defaults`: host, port, seed, rate, scale and currencies ("BTC,ETH") from graph.toml, handed
    over by flows/cli.py; without them (the module form) those options are required."""
    p = new_parser(prog, "Run a local Deribit look-alike (JSON-RPC v2 over websocket, options, futures and "
                         "index prices) driven by a known, arbitrage-free volatility surface, for tests and "
                         "benchmarks. Prints its ws:// URL, then its counters when it stops.")
    add_common_args(p, "messages per second across subscribed channels", defaults)
    add_configured(p, "--currencies", defaults, "comma-separated currencies to simulate, of " + ", ".join(MODELS))
    add_size_args(p, SCALES, defaults)
    p.add_argument("--min-heartbeat", type=float, default=10.0, help="smallest set_heartbeat interval accepted (s)")
    add_seconds_arg(p)
    p.add_argument("--faults", default=None,
                   help='a fault schedule, JSON or @file: [{"at_s": 5, "kind": "drop"}, {"at_s": 8, '
                        '"kind": "gap", "instrument": "BTC-27DEC24-100000-C"}, {"at_s": 9, "kind": "stall", '
                        '"seconds": 3}]; kinds: ' + ", ".join(Simulator.FAULTS) + " (default: no faults)")
    args = p.parse_args(argv)
    faults: list = []
    if args.faults:
        try:
            text = open(args.faults[1:]).read() if args.faults.startswith("@") else args.faults
        except OSError as exc:
            p.error(f"--faults {args.faults!r}: cannot read the file ({exc.strerror}); give @PATH of a JSON file")
        try:
            faults = orjson.loads(text)
            if not isinstance(faults, list) or not all(isinstance(f, dict) and "kind" in f for f in faults):
                raise ValueError("expected a list of objects with a 'kind'")
        except ValueError as exc:
            p.error(f"--faults {args.faults[:80]!r}: {exc}; e.g. '[{{\"at_s\": 5, \"kind\": \"drop\"}}]'")
    sim = Simulator(host=args.host, port=args.port, seed=args.seed, rate=args.rate,
                    currencies=split_list(args.currencies), scale=args.scale,
                    n_expiries=args.n_expiries, n_strikes=args.n_strikes, min_heartbeat_s=args.min_heartbeat,
                    faults=faults)
    n_opts = sum(len(c.names) for c in sim._cur.values())
    return serve_until_stopped(sim, args.seconds, lambda url: f"volgraph sim: {url}  ({n_opts} options, seed "
                               f"{args.seed}, {args.rate:g} msg/s)", "volgraph sim")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], prog="python -m connectors.sim.deribit"))
