"""Fault injection for the Deribit simulator (connectors/sim/deribit.py): dropped connections,
stalls, stopped heartbeats, rate limits, change_id gaps, malformed, oversized, crossed and badly
priced frames, intraday listings and expiries; on command (`Simulator.inject`) or scheduled by
market tick (`faults=`, `--faults`). Random choices come from a generator seeded by the
simulator's seed, so the same schedule replays the same scenario byte for byte.

`DeribitFaults` is a mixin of `Simulator`: it reads and changes the simulator's books, markets
and subscriptions, and is a module of its own because what a faulty exchange does is one job
and serving a correct one another. Like every module of connectors/sim it must never import the
venue parsers (connectors/venues/*) or flows: the tests check that those parsers catch each fault.
"""

from __future__ import annotations

import random
import time
from typing import Any, Optional, Sequence

from connectors.sim.deribit_names import OPT_TICK_LARGE, book_channel, notification

MALFORMED_VARIANTS = ("truncated", "nan_literal", "garbage", "not_object", "wrong_type")


class DeribitFaults:
    """The fault half of the Deribit simulator. The server calls `_init_faults` once its
    instruments are listed, `_before_tick` before each market tick (scheduled faults, pause),
    `_take_fault`/`_corrupt` when it writes a message, and reads `_gap_next`,
    `_rate_limit_next`, `_delisted` and `_paused`."""

    FAULTS = ("gap", "drop", "rate_limit", "stall", "heartbeat_stop", "malformed", "oversized", "crossed",
              "bad_price", "listing", "expire")

    def inject(self, kind: str, instrument: Optional[str] = None, **params: Any) -> Any:
        """Inject a fault now; returns once it is in effect (its result, for listing/expire).

        Connection faults: "drop" (abort every connection, no close handshake); "stall"
        (seconds=N: send nothing, heartbeats included, for N s but keep the socket);
        "heartbeat_stop" (current sessions get no more heartbeats or test_requests);
        "rate_limit" (the next request gets error 10028 and the session is closed).
        Message faults on the next book change of `instrument` (None: any book;
        channel="ticker" for its next ticker instead): "gap" (a change_id is skipped);
        "malformed" (variant = truncated | nan_literal | garbage | not_object | wrong_type);
        "oversized" (bytes=N of padding in a real change); "crossed" (the change also carries a
        bid above the best ask that the book never had); "bad_price" (value = -0.001, 1e308,
        "0.05", "NaN", "Infinity", None, … in place of the first level's price, or of
        `field` of a ticker). Listings: "listing" (underlying=, new_expiry=False: a new strike
        above the first expiry's grid, or True: a new expiry a week after the last one;
        n_strikes=) lists calls and puts at once and sends instrument.state "created";
        "expire" (`instrument`, or underlying= and expiry_ms= for a whole expiry) delists them:
        instrument.state "settled", then `late` more frames (default 1) before they stop.
        Choices are drawn from a seeded generator: the same faults at the same ticks replay.
        """
        self._check_fault(kind, instrument)
        return self._call_on_loop(lambda: self._inject(kind, instrument, params), f"inject({kind!r})")

    def _check_fault(self, kind: str, instrument: Optional[str]) -> None:
        if kind not in self.FAULTS:
            raise ValueError(f"inject({kind!r}): known faults are {', '.join(self.FAULTS)}")
        if instrument is not None and instrument not in self._by_option and instrument not in self._by_future:
            raise ValueError(f"inject({kind!r}, {instrument!r}): unknown instrument")

    def _init_faults(self, seed: int, faults: Sequence[dict]) -> None:
        self._gap_next: set[str] = set()
        self._rate_limit_next = 0
        # Faults (see inject): per-instrument corruptions of the next message, a schedule by
        # market tick (the same schedule and seed replay the same scenario), and a log.
        self._msg_faults: dict[str, list[tuple[str, dict]]] = {}
        self._fault_rng = random.Random(f"{seed}-faults")
        self._schedule: list[tuple[int, str, Optional[str], dict]] = []
        for f in faults:
            f = dict(f)
            at_s = float(f.pop("at_s", 0.0))
            kind = f.pop("kind")
            self._check_fault(kind, f.get("instrument"))
            self._schedule.append((round(at_s * 1000.0 / self.tick_ms), kind, f.pop("instrument", None), f))
        self._schedule.sort(key=lambda x: x[0])
        self._delisted: set[str] = set()
        self._paused = False
        self.fault_log: list[dict] = []

    def _before_tick(self) -> bool:
        while self._schedule and self._schedule[0][0] <= self._ticks:
            _, kind, inst, params = self._schedule.pop(0)
            self._inject(kind, inst, dict(params))
        return not self._paused

    def _inject(self, kind: str, instrument: Optional[str], params: dict) -> Any:
        if kind == "malformed" and "variant" not in params:
            params = {**params, "variant": self._fault_rng.choice(MALFORMED_VARIANTS)}
        self._bump("faults_injected")
        self.counters["faults." + kind] += 1
        self.fault_log.append({"tick": self._ticks, "kind": kind, "instrument": instrument, **params})
        if kind == "gap":
            self._gap_next.add(instrument or "*")
            if instrument is not None:
                self._force_message(instrument, "book")
        elif kind == "drop":
            self._abort_all()
        elif kind == "rate_limit":
            self._rate_limit_next += 1
        elif kind == "stall":
            until = time.monotonic() + float(params.get("seconds", 5.0))
            for conn in self._conns:
                conn.stalled_until = until
        elif kind == "heartbeat_stop":
            for conn in self._conns:
                conn.heartbeats_off = True
        elif kind in ("malformed", "oversized", "crossed", "bad_price"):
            channel = params.get("channel", "book")
            self._msg_faults.setdefault(instrument or "*", []).append((kind, {**params, "channel": channel}))
            if instrument is not None:
                self._force_message(instrument, channel)
        elif kind == "listing":
            return self._list_new(params)
        elif kind == "expire":
            return self._expire(instrument, params)
        self._bump("faults_applied", 0, notify=True)
        return None

    def _force_message(self, instrument: str, channel: str) -> None:
        """Send the next message of `instrument` now (so a targeted fault shows at once)."""
        if self._loop is None:
            return
        prefix = f"{channel}.{instrument}."
        for ch in list(self._subs):
            if ch.startswith(prefix):
                frame = self._message(ch, self.stamp_ms())
                if frame is not None:
                    self._deliver(ch, frame)

    def _take_fault(self, instrument: str, channel: str) -> Optional[tuple[str, dict]]:
        for key in (instrument, "*"):
            queue = self._msg_faults.get(key)
            if queue:
                for i, (kind, params) in enumerate(queue):
                    if params["channel"] == channel:
                        del queue[i]
                        if not queue:
                            del self._msg_faults[key]
                        return kind, params
        return None

    def _corrupt(self, kind: str, params: dict, ch: str, data: dict, book: Optional[Any]) -> bytes:
        """The frame of `data` on `ch`, broken the way a faulty exchange breaks it."""
        self._bump("faults_applied", notify=True)
        sentinel = None
        grouped = ch.startswith("book.") and book_channel(ch)[1] is not None  # levels [price, amount]
        if kind == "crossed" and book is not None and book.asks:
            best_ask = min(book.asks)
            crossing = round(best_ask + OPT_TICK_LARGE, 4)
            data["bids"] = list(data["bids"]) + [[crossing, 1.0] if grouped else ["new", crossing, 1.0]]
        elif kind == "bad_price":
            value = params.get("value", -0.001)
            if value in ("NaN", "Infinity", "-Infinity"):  # not JSON; some encoders write them anyway
                sentinel, value = value, 1234567.8912345
            if ch.startswith("book."):
                side = "bids" if data["bids"] else "asks"
                level = list(data[side][0])
                level[0 if grouped else 1] = value
                data[side] = [level] + list(data[side][1:])
            else:
                data[params.get("field", "best_bid_price")] = value
        elif kind == "oversized":
            data["padding"] = "x" * int(params.get("bytes", 2 << 20))
        elif kind == "malformed" and params["variant"] == "wrong_type":
            data["change_id" if ch.startswith("book.") else "timestamp"] = str(data.get("change_id", 0))
        elif kind == "malformed" and params["variant"] == "nan_literal":
            sentinel = "NaN"
            data["bids" if ch.startswith("book.") and data.get("bids") else "timestamp"] = 1234567.8912345
        frame = notification(ch, data)
        if sentinel is not None:
            frame = frame.replace(b"1234567.8912345", sentinel.encode())
        if kind == "malformed":
            variant = params["variant"]
            if variant == "truncated":
                frame = frame[: len(frame) // 2]
            elif variant == "garbage":
                frame = bytes(self._fault_rng.randrange(256) for _ in range(64))
            elif variant == "not_object":
                frame = b"[" + frame + b"]"
        return frame

    def _list_new(self, params: dict) -> list[str]:
        cur = self._currency(params.get("underlying", next(iter(self._cur))))
        n = int(params.get("n_strikes", 2 if params.get("new_expiry") or "expiry_ms" in params else 1))
        if params.get("new_expiry") or "expiry_ms" in params:
            # expiry_ms: any time, e.g. seconds ahead, for tests of expiry handling (not 08:00)
            expiry = int(params.get("expiry_ms", max(cur.expiries) + 7 * 86_400_000))
            strikes = cur.listing_strikes(expiry, n, self._model_ms)
        else:
            expiry = cur.expiries[0]
            ks = cur.strikes_by_expiry[expiry]
            step = ks[1] - ks[0] if len(ks) > 1 else cur.model.strike_step_min
            strikes = [ks[-1] + step * (i + 1) for i in range(n)]
        new = cur.add_options(expiry, strikes)
        listed = self.stamp_ms()
        for name in new:
            self._by_option[name] = (cur, cur.index_of[name])
            self._listed_ms[name] = listed
        self._instrument_cache.clear()
        self._reprice_all()
        self._state_notify(cur.name, "option", new, "created")
        self._bump("faults_applied", notify=True)
        return new

    def _expire(self, instrument: Optional[str], params: dict) -> list[str]:
        if instrument is not None:
            names = [instrument]
            cur = self._by_option[instrument][0] if instrument in self._by_option else self._by_future[instrument]
        else:
            cur = self._currency(params.get("underlying", next(iter(self._cur))))
            expiry = int(params.get("expiry_ms", cur.expiries[0]))
            names = [n for n in cur.names if cur.expiries[int(cur.exp_idx[cur.index_of[n]])] == expiry]
            if expiry in cur.futures:
                names.append(cur.futures[expiry])
        names = [n for n in names if n not in self._delisted]
        self._delisted.update(names)
        self._instrument_cache.clear()
        for kind in ("option", "future"):
            gone = [n for n in names if (n in self._by_option) == (kind == "option")]
            if gone:
                self._state_notify(cur.name, kind, gone, "settled")
        ts = self.stamp_ms()
        late = int(params.get("late", 1))
        for name in names:
            for ch in [c for c in self._subs if c.split(".")[1:2] == [name]]:
                for _ in range(late):  # what is already in flight still arrives after the notice
                    frame = self._message(ch, ts)
                    if frame is not None:
                        self._deliver(ch, frame)
                        self.counters["late_frames_sent"] += 1
                for conn in list(self._subs.get(ch, ())):
                    self._unsubscribe(conn, ch)
        self._bump("faults_applied", notify=True)
        return names

    def _state_notify(self, currency: str, kind: str, names: list[str], state: str) -> None:
        ts = self.stamp_ms()
        for ch in (f"instrument.state.{kind}.{currency.lower()}", f"instrument.state.any.{currency.lower()}"):
            for name in names:
                self._deliver(ch, notification(ch, {"timestamp": ts, "state": state, "instrument_name": name}))
                self.counters["state_notifications"] += len(self._subs.get(ch, ()))
