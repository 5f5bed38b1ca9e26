"""Shared scaffolding of the exchange simulators (connectors/sim/deribit.py for Deribit,
connectors/sim/okx.py for OKX): the websocket server on its own thread and asyncio loop,
connection handling (a bounded outgoing queue per client, slow clients cut off, abrupt drops),
subscriptions bookkeeping, the market clock and tick loop, and the inspection methods tests use
on the true surface. The command line is connectors/sim/cli.py.

Venue-free: nothing here knows a venue's requests, channels or frame shapes (the venue modules
write those, over their connectors.sim.market.Market models). It must never import the venue
parsers (connectors/venues/*) or flows: the tests compare the simulators with the parsers. That
is also why it does not share code with connectors/venues/base.py, the client side.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from typing import Any, Callable, Iterable, Optional

from websockets.exceptions import ConnectionClosed

from connectors.sim.expiries import YEAR_MS

log = logging.getLogger(__name__)


class SimConn:
    """One client connection: its bounded outgoing queue, its subscription keys, its tasks."""

    def __init__(self, ws, queue_max: int):
        self.ws = ws
        self.subs: set[str] = set()
        self.out: asyncio.Queue = asyncio.Queue(queue_max)
        self.closed = False
        self.opened = time.monotonic()
        self.last_out = time.monotonic()
        self.stalled_until = 0.0  # monotonic time until which nothing is sent (fault "stall")
        self.close_after: Optional[tuple[int, str]] = None  # set by a handler: reply, then close
        self.tasks: list[asyncio.Task] = []  # cancelled when the connection ends


class SimServer:
    """The venue-independent half of a simulator. A venue subclass calls `_init_server` first in
    its __init__, `_index_instruments` once it has listed its instruments, and provides:
    `_new_conn(ws)`, `_handle(conn, raw) -> [frames]`, `_initial_frames(key, ts)`, `_emit(n)`
    (one tick's market messages), `_reprice_all()`, `_model(underlying)` and `_models()` (its
    connectors.sim.market.Market models), `_target_prices(inst)`, `_serve_options()` and
    `_listening()` (set `url`). Optional: `_conn_tasks(conn)`, `_before_tick()`,
    `_subscriptions_changed()`.
    """

    label = "simulator"  # for messages
    thread_name = "sim"

    def _init_server(self, *, host: str, port: int, seed: int, rate: float, tick_ms: float,
                     conn_queue_max: int, max_message_bytes: int, now_ms: Optional[int],
                     counter_keys: Iterable[str]) -> None:
        if rate < 0:
            raise ValueError(f"rate={rate}: messages per second must be >= 0")
        self.host, self.port = host, port
        self.seed = seed
        self.rate = float(rate)
        self.tick_ms = float(tick_ms)
        self.conn_queue_max = conn_queue_max
        self.max_message_bytes = max_message_bytes
        self._fixed_clock = now_ms is not None
        self._start_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self._model_ms = self._start_ms
        self._ticks = 0
        self._conns: set = set()
        self._subs: dict[str, set] = {}  # subscription key → connections
        self.counters: collections.Counter = collections.Counter({k: 0 for k in counter_keys})
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._stopped: Optional[asyncio.Event] = None
        self._started = threading.Event()
        self._start_error: Optional[BaseException] = None
        self.url: Optional[str] = None

    def _index_instruments(self, holders: Iterable[Any], futures_of: Callable[[Any], Iterable[str]]) -> None:
        """Look-ups by instrument name over the venue's per-currency holders (each with
        `index_of`, option name → position): `_by_option` name → (holder, position) and
        `_by_future` future name → holder, for futures_of(holder)."""
        self._by_option: dict[str, tuple[Any, int]] = {}
        self._by_future: dict[str, Any] = {}
        for holder in holders:
            for name, i in holder.index_of.items():
                self._by_option[name] = (holder, i)
            for name in futures_of(holder):
                self._by_future[name] = holder

    # ------------------------------------------------ inspection (tests)

    def now_ms(self) -> int:
        """The model clock: wall clock when live, start + ticks × tick_ms with a fixed now_ms."""
        return self._model_ms

    def stamp_ms(self) -> int:
        """The exchange timestamp a frame sent now carries: the wall clock to the ms, or with a
        fixed now_ms the model clock (the prices are for that time: a wall-clock stamp made a
        client's time to expiry disagree with them)."""
        return self._model_ms if self._fixed_clock else int(time.time() * 1000)

    def expiries(self, underlying: str) -> list[int]:
        return list(self._model(underlying).expiries)

    def strikes(self, underlying: str, expiry_ms: int) -> list[float]:
        return list(self._model(underlying).strikes_by_expiry[expiry_ms])

    def spot(self, underlying: str) -> float:
        return self._model(underlying).spot

    def forward(self, underlying: str, expiry_ms: int) -> float:
        return float(self._model(underlying).forward(self._t_years(expiry_ms)))

    def true_svi(self, underlying: str, expiry_ms: int) -> tuple[float, float, float, float, float, float]:
        """Raw SVI (a, b, ρ, m, σ) of the true slice in k = ln(K/F), and its t_years, now."""
        t = self._t_years(expiry_ms)
        return (*self._model(underlying).raw_svi(t), t)

    def true_vol(self, underlying: str, expiry_ms: int, strike: float, forward: Optional[float] = None) -> float:
        """The true Black-76 vol (decimal) at `strike`; k is taken against `forward` if given
        (e.g. a ticker's underlying price, opt-summary fwdPx or a fit's forward), else the
        model's current forward."""
        cur = self._model(underlying)
        t = self._t_years(expiry_ms)
        fwd = float(cur.forward(t)) if forward is None else forward
        return math.sqrt(float(cur.total_variance(math.log(strike / fwd), t)) / t)

    def quote_levels(self, instrument: str) -> tuple[list[float], list[float]]:
        """The book prices (bids best first, asks best first) the market wants now; no side effects."""
        return self._target_prices(instrument)

    def advance(self, n_ticks: int = 1) -> None:
        """Step the market n ticks by hand (a simulator that is not started only)."""
        if self._thread is not None:
            raise RuntimeError("advance() is for a stopped simulator; a started one ticks on its own")
        for _ in range(n_ticks):
            self._step()
        self._reprice_all()

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float) -> bool:
        """Wait until predicate(counters) holds (re-checked on notable events and every 50 ms)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(dict(self.counters)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def _call_on_loop(self, fn: Callable[[], Any], what: str) -> Any:
        """fn() on the simulator's loop (its state belongs to that thread), its result or its
        exception; called directly when the simulator is not running."""
        loop = self._loop
        if loop is None or self._thread is None or not self._thread.is_alive():
            return fn()
        done = threading.Event()
        box: list = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # noqa: BLE001 — handed to the caller
                box.append((False, exc))
            done.set()

        loop.call_soon_threadsafe(run)
        if not done.wait(10.0):
            raise RuntimeError(f"{what} was not applied within 10 s: is the {self.label} loop stuck?")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _bump(self, key: str, n: int = 1, notify: bool = False) -> None:
        self.counters[key] += n
        if notify:
            with self._cond:
                self._cond.notify_all()

    # ------------------------------------------------ market clock

    def _t_years(self, expiry_ms: int) -> float:
        return max((expiry_ms - self._model_ms) / YEAR_MS, 1e-6)

    def _step(self) -> None:
        dt_years = self.tick_ms / YEAR_MS
        for cur in self._models():
            cur.step(dt_years)
        self._ticks += 1
        self.counters["ticks"] = self._ticks
        if self._fixed_clock:
            self._model_ms = self._start_ms + int(self._ticks * self.tick_ms)
        else:
            self._model_ms = int(time.time() * 1000)

    def _before_tick(self) -> bool:
        """Hook: work due before a tick; False skips the tick's market move (paused)."""
        return True

    async def _ticker_loop(self) -> None:
        tick_s = self.tick_ms / 1000.0
        next_t = time.monotonic()
        carry = 0.0
        while True:
            next_t += tick_s
            delay = next_t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)
                if delay < -1.0:  # far behind (a stalled machine): do not burst to catch up
                    next_t = time.monotonic()
            if not self._before_tick():
                continue
            self._step()
            self._reprice_all()
            carry += self.rate * tick_s
            n = int(carry)
            carry -= n
            await self._emit(n)

    # ------------------------------------------------ subscriptions and delivery

    def _subscribe(self, conn: SimConn, key: str) -> bool:
        """Add a subscription; False if the connection already had it."""
        if key in conn.subs:
            return False
        conn.subs.add(key)
        self._subs.setdefault(key, set()).add(conn)
        self._subscriptions_changed()
        return True

    def _unsubscribe(self, conn: SimConn, key: str) -> None:
        conn.subs.discard(key)
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self._subs[key]
        self._subscriptions_changed()

    def _subscriptions_changed(self) -> None:
        """Hook: drop whatever the venue caches about the subscription set."""

    def _deliver(self, key: str, frame: bytes) -> None:
        for conn in list(self._subs.get(key, ())):
            self._send(conn, frame)

    def _send(self, conn: SimConn, frame: bytes) -> None:
        if conn.closed:
            return
        try:
            conn.out.put_nowait(frame)
            conn.last_out = time.monotonic()
            self.counters["messages_sent"] += 1
        except asyncio.QueueFull:
            # A client that cannot keep up is cut off, never allowed to grow our memory.
            self._bump("slow_closes", notify=True)
            self._close(conn, 1008, "slow consumer")

    # ------------------------------------------------ connections

    def _close(self, conn: SimConn, code: int, reason: str) -> None:
        if conn.closed:
            return
        conn.closed = True
        asyncio.get_running_loop().create_task(conn.ws.close(code, reason))

    def _abort_all(self) -> None:
        """Fault "drop": every connection ends abruptly, like a network failure (no close handshake)."""
        self._bump("drops_injected", notify=True)
        for conn in list(self._conns):
            conn.closed = True
            transport = getattr(conn.ws, "transport", None)
            if transport is not None:
                transport.abort()

    def _conn_tasks(self, conn: SimConn) -> list:
        """Hook: coroutines that run for the life of a connection (besides its writer)."""
        return []

    async def _writer(self, conn: SimConn) -> None:
        ws, out = conn.ws, conn.out
        while True:
            frame = await out.get()
            stall = conn.stalled_until - time.monotonic()
            if stall > 0:  # a stalled exchange: the socket stays open, nothing comes out
                await asyncio.sleep(stall)
            await ws.send(frame, text=True)

    async def _serve_conn(self, ws) -> None:
        conn = self._new_conn(ws)
        self._conns.add(conn)
        self.counters["connections_open"] += 1
        self._bump("connections", notify=True)
        loop = asyncio.get_running_loop()
        conn.tasks.extend(loop.create_task(c) for c in [self._writer(conn), *self._conn_tasks(conn)])
        try:
            while not conn.closed:
                raw = await ws.recv(decode=False)
                frames = self._handle(conn, raw)
                if conn.close_after is not None:  # the reply goes out, then the session ends
                    conn.closed = True
                    await ws.send(frames[0], text=True)
                    await ws.close(*conn.close_after)
                    break
                for frame in frames:
                    self._send(conn, frame)
        except ConnectionClosed:  # a client that left or vanished: clean up below
            pass
        except Exception:  # a simulator bug: say so, and end only this session
            log.exception("%s session failed", self.label)
        finally:
            conn.closed = True
            for task in conn.tasks:
                task.cancel()
            for key in list(conn.subs):
                self._unsubscribe(conn, key)
            self._conns.discard(conn)
            self.counters["connections_open"] -= 1
            self._bump("disconnects", notify=True)

    # ------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> str:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__}.start() called twice")
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"{self.label} did not start within {timeout}s")
        if self._start_error is not None:
            raise RuntimeError(f"{self.label} failed to start on {self.host}:{self.port}: {self._start_error}")
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is not None and self._stopped is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # report start failures to start()
            self._start_error = exc
            self._started.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        from websockets.asyncio.server import serve

        self._stopped = asyncio.Event()
        if not self._fixed_clock:
            self._model_ms = int(time.time() * 1000)
        server = await serve(self._serve_conn, self.host, self.port, compression=None,
                             max_size=self.max_message_bytes,
                             write_limit=1 << 22,  # a deep write buffer: bursts of a tick go out at once
                             **self._serve_options())
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._listening()
        self._started.set()
        ticker = asyncio.get_running_loop().create_task(self._ticker_loop())
        try:
            await self._stopped.wait()
        finally:
            ticker.cancel()
            server.close()
            await server.wait_closed()
