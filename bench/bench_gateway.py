"""Benchmark: the gateway's fan-out under load (issue #14): 1,000 concurrent websocket clients
on loopback while the flow's side publishes 20 patches/s per surface.

A real `volgraph gateway` process (the one `volgraph run` starts, with this benchmark's own
client limits on its command line: graph.toml's max_clients = 256 and max_clients_per_addr =
16 would refuse the load) takes SurfacePatch frames on /publish from this process (the
publisher, with the token by environment). The clients run in `--procs` other processes
(forked before anything else starts; one is enough on 2 cores), never in the gateway's. Each
is a minimal RFC 6455 connection (WireClient: about 2/5 of the CPU of websockets' client per
message, so the load generator is not the bottleneck) that follows the protocol's rule
(docs/gateway-protocol.md §2: snapshot, then patches with contiguous seq, a gap answered by
Resync) and merges by operators/merge.py's SurfaceState; decoding is shared per distinct
message within a client process (every client receives the same bytes), the merge is each
client's own. The slow client uses websockets' client.

The patches are realistic: the real Deribit BTC and ETH chains of tests/data (12 expiries
each, 18-65 strikes, bid/ask IVs solved from real prices by tests/helpers/real_chains.py),
3 expiries changed per patch with moved quotes and fit, every tenor and calendar check, the
index: 9-12 KB of JSON, the shape of the surface step's patches (operators/state/surface.py).
Each surface goes to every client (the dashboard subscribes to all streams); --surfaces 2
(deribit BTC and ETH) is the default load, 40 messages/s per client.

Rows: fan-out latency p50/p99/max (from the publisher's send to a client's receive, for every
patch and every normal client; a patch folded into a coalesced message or snapshot counts
when that message arrives), gateway CPU and RSS (from /proc), each process's CPU, every
client's final state against the gateway's (zero divergence), and one slow client that stops
reading: coalesced, then dropped, while the others' latency is the rows above. Prints a table
with the machine and the date; asserts nothing.

Never imports the gateway's server module (connectors/gateway/server.py): the gateway is
another process, reached only through its sockets and /status.

    .venv/bin/python bench/bench_gateway.py [--seconds 60] [--clients 1000] [--surfaces 2] [--procs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import multiprocessing as mp
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine  # noqa: E402
from flows.services import free_port  # noqa: E402

SURFACES = (("deribit", "BTC"), ("deribit", "ETH"), ("okx", "BTC"), ("okx", "ETH"), ("all", "BTC"), ("all", "ETH"))
TENORS = (1, 7, 14, 30, 60, 90, 180, 365)
CHANGED_PER_PATCH = 3
MS_PER_YEAR = 365 * 86_400_000
TOKEN = "bench-gateway-token"


# ---------------------------------------------------------------- realistic patches


class Chain:
    """One surface's expiries from a real Deribit chain, moved a little on every patch."""

    def __init__(self, venue: str, underlying: str, slices: list[dict], t0_ms: int, seed: int) -> None:
        self.venue, self.underlying = venue, underlying
        self.rng = random.Random(seed)
        self.expiries = []
        for s in slices:
            strikes = np.unique(s["strikes"])
            otm = {}  # strike -> (bid iv, ask iv) of the out-of-the-money option
            for k, call, bid, ask in zip(s["strikes"], s["is_call"], s["bid_iv"], s["ask_iv"]):
                if bool(call) == (k >= s["forward"]):
                    otm[float(k)] = (None if not np.isfinite(bid) else float(bid),
                                     float(ask) if np.isfinite(ask) else None)
            bids = [otm.get(float(k), (None, None))[0] for k in strikes]
            asks = [otm.get(float(k), (None, None))[1] for k in strikes]
            atm = float(np.nanmedian([a for a in asks if a is not None] or [0.5]))
            self.expiries.append(dict(expiry_ms=t0_ms + int(s["t_years"] * MS_PER_YEAR), t=s["t_years"],
                                      forward=s["forward"], strikes=tuple(float(k) for k in strikes),
                                      bid=bids, ask=asks, atm=atm))
        self.index = self.expiries[0]["forward"]
        self.turn = 0
        self.epoch = 0

    def _view(self, e: dict, now_ms: int):
        from operators.events import ExpiryView, SmileFit

        r = self.rng
        shift = r.gauss(0.0, 0.002)
        e["bid"] = [None if v is None else max(0.01, v + shift + r.gauss(0.0, 0.0005)) for v in e["bid"]]
        e["ask"] = [None if v is None else max(0.02, v + shift + r.gauss(0.0, 0.0005)) for v in e["ask"]]
        e["atm"] = max(0.05, e["atm"] + shift)
        w = e["atm"] ** 2 * e["t"]
        fit = SmileFit(self.venue, self.underlying, e["expiry_ms"], self.epoch, now_ms - 3, now_ms, e["t"],
                       e["forward"] * (1 + r.gauss(0, 1e-4)), 0.8 * w, 0.1 * e["t"] ** 0.5, -0.3 + r.gauss(0, 0.01),
                       r.gauss(0, 0.01), 0.1, 0.2 + 0.1 * r.random(), sum(v is not None for v in e["bid"]),
                       True, 0.05, 1.0 + r.random(), inside_band_frac=0.9 + 0.1 * r.random(), warm=True)
        analytics = {"atm_vol": e["atm"], "rr25": r.gauss(-0.02, 0.005), "bf25": abs(r.gauss(0.005, 0.001)),
                     "rr10": r.gauss(-0.04, 0.01), "bf10": abs(r.gauss(0.015, 0.003))}
        return ExpiryView(expiry_ms=e["expiry_ms"], fit=fit, analytics=analytics,
                          units={k: "vol pts" for k in analytics}, strikes=e["strikes"],
                          bid_iv=tuple(e["bid"]), ask_iv=tuple(e["ask"]))

    def _rest(self):
        from operators.events import CalendarCheck, TenorPoint

        r = self.rng
        tenors = tuple(TenorPoint(d, 0.5 + r.gauss(0, 0.01), r.gauss(-0.02, 0.005), abs(r.gauss(0.005, 0.001)))
                       for d in TENORS)
        exp = [e["expiry_ms"] for e in self.expiries]
        calendar = tuple(CalendarCheck(a, b, True, abs(r.gauss(0.001, 0.0005))) for a, b in zip(exp, exp[1:]))
        self.index *= 1 + r.gauss(0.0, 1e-4)
        return tenors, calendar

    def snapshot(self, now_ms: int):
        from operators.events import SurfaceSnapshot

        self.epoch += 1
        tenors, calendar = self._rest()
        return SurfaceSnapshot(self.venue, self.underlying, self.epoch, now_ms, now_ms,
                               tuple(self._view(e, now_ms) for e in self.expiries), tenors, calendar, self.index)

    def patch(self, now_ms: int):
        from operators.events import SurfacePatch

        self.epoch += 1
        n = len(self.expiries)
        changed = sorted({(self.turn + i * 5) % n for i in range(CHANGED_PER_PATCH)})
        self.turn += 1
        tenors, calendar = self._rest()
        return SurfacePatch(self.venue, self.underlying, self.epoch, now_ms, now_ms,
                            tuple(self._view(self.expiries[i], now_ms) for i in changed), (), tenors, calendar,
                            self.index)


def chains(n_surfaces: int) -> list[Chain]:
    from tests.helpers.data import SNAPSHOT
    from tests.helpers.real_chains import load_slices

    slices = load_slices(SNAPSHOT)
    t0_ms = int(datetime(2026, 8, 22, 15, 33, 51, tzinfo=timezone.utc).timestamp() * 1000)
    return [Chain(v, u, [s for s in slices if s["currency"] == u], t0_ms, seed=i)
            for i, (v, u) in enumerate(SURFACES[:n_surfaces])]


# ---------------------------------------------------------------- clients (other processes)


class WireClient(asyncio.Protocol):
    """A minimal RFC 6455 client connection for the load: the opening handshake, unmasked
    server frames (the gateway sends each message as one frame), masked client frames,
    Pong to every ping. It costs about 2/5 of websockets' client per message, so one
    client process can take the whole load and leave the other core to the gateway."""

    def __init__(self, host: str, path: str, on_text) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.on_text = on_text
        self.buf = bytearray()
        self.open = False
        self.opened = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))

    def send_text(self, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0xFE)) + n.to_bytes(2, "big")
        masked = (int.from_bytes(data, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf
        buf += data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(bytes(buf[:end]).decode(errors="replace")))
                self.transport.abort()
                return
            del buf[:end + 4]
            self.open = True
            self.opened.set_result(None)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if not b0 & 0x80:
                raise RuntimeError("a fragmented message: the gateway sends each message as one frame")
            if opcode == 1:
                self.on_text(self, payload, now)
            elif opcode == 9:  # ping -> pong with the same payload
                mask = os.urandom(4)
                self.transport.write(bytes((0x8A, 0x80 | len(payload))) + mask
                                     + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            elif opcode == 8:
                self.transport.close()
        del buf[:pos]


class BenchClient:
    """One /ws connection: the protocol's client rule with SurfaceState merges; receive times
    per (stream, seq) for the latency rows."""

    __slots__ = ("states", "seqs", "recv", "resyncing", "gaps", "done", "ws")

    def __init__(self, n_streams: int, max_seq: int) -> None:
        self.states: dict = {}
        self.seqs: dict = {}
        self.recv = np.zeros((n_streams, max_seq + 1), dtype=np.int64)  # time_ns when seq arrived
        self.resyncing: set = set()
        self.gaps = 0
        self.done = False
        self.ws = None


async def _client_proc_main(url: str, n: int, slow: int, streams: list[tuple[str, str]], max_seq: int, conn) -> None:
    from websockets.asyncio.client import connect

    from connectors.gateway.protocol import Resync, StreamPatch, StreamSnapshot, decode_server, encode
    from operators.events import to_json
    from operators.merge import SurfaceState

    index = {s: i for i, s in enumerate(streams)}
    cache: dict[bytes, object] = {}  # raw message -> decoded (all clients get the same bytes)
    clients = [BenchClient(len(streams), max_seq) for _ in range(n)]
    targets: dict = {}
    all_done = asyncio.Event()
    remaining = [n]

    def check_done(c: BenchClient) -> None:
        if targets and not c.done and all(c.seqs.get(k) == s for k, s in targets.items()):
            c.done = True
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    def on_text(c: BenchClient, wire: WireClient, raw: bytes, now: int) -> None:
        msg = cache.get(raw)
        if msg is None:
            msg = decode_server(raw)
            if len(cache) > 4096:
                cache.clear()
            cache[raw] = msg
        kind = type(msg)
        if kind is StreamPatch:
            key = (msg.venue, msg.underlying)
            have = c.seqs.get(key)
            if key in c.resyncing:
                return
            if have is None or msg.seq_from != have + 1:
                c.gaps += 1
                c.resyncing.add(key)
                wire.send_text(encode(Resync(msg.venue, msg.underlying)))
                return
            c.states[key].apply(msg)
            c.seqs[key] = msg.seq
            c.recv[index[key], msg.seq_from:msg.seq + 1] = now
        elif kind is StreamSnapshot:
            key = (msg.venue, msg.underlying)
            c.resyncing.discard(key)
            state = c.states.get(key)
            if state is None:
                state = c.states[key] = SurfaceState()
            state.replace(msg)
            row = c.recv[index[key]]
            start = (c.seqs.get(key) or 0) + 1
            if start <= msg.seq:  # the patches this snapshot stands for arrived now
                row[start:msg.seq + 1] = np.where(row[start:msg.seq + 1] == 0, now, row[start:msg.seq + 1])
            c.seqs[key] = msg.seq
        else:
            return  # Hello, Ping
        if targets:
            check_done(c)

    async def run_slow():
        """Reads Hello and the snapshots, then never reads again: its small receive buffer
        fills, then the gateway's write buffer; its queue coalesces, then it is dropped (seen
        by the parent in /status: coalesced, dropped_clients)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.split("//")[1].split("/")[0].split(":")
        sock.connect((host, int(port)))
        sock.setblocking(False)
        ws = await connect(url, sock=sock, max_size=None, compression=None, ping_interval=None, max_queue=1)
        for _ in range(1 + len(streams)):
            await ws.recv()
        ws.transport.pause_reading()
        return ws

    # connect everybody, a few at a time (the gateway's backlog is the kernel's)
    sem = asyncio.Semaphore(50)

    host, port = url.split("//")[1].split("/")[0].split(":")
    loop = asyncio.get_running_loop()

    async def start(c: BenchClient) -> None:
        async with sem:
            _t, wire = await loop.create_connection(
                lambda: WireClient(f"{host}:{port}", "/ws", lambda w, raw, now: on_text(c, w, raw, now)), host, int(port))
            c.ws = wire
            await asyncio.wait_for(wire.opened, 60)

    await asyncio.gather(*(start(c) for c in clients))
    slow_ws = await run_slow() if slow else None
    conn.send(("connected", n))
    # wait for the parent's final seqs (in a thread: the pipe blocks)
    final = await loop.run_in_executor(None, conn.recv)
    targets.update({tuple(k.split(":")): s for k, s in final.items()})
    for c in clients:
        check_done(c)
    try:
        await asyncio.wait_for(all_done.wait(), 60)
    except TimeoutError:
        pass
    digests: dict[str, dict[str, int]] = {}  # stream -> digest of a client's merged surface -> clients
    for c in clients:
        for key, state in c.states.items():
            by_digest = digests.setdefault(f"{key[0]}:{key[1]}", {})
            digest = hashlib.sha256(to_json(state.snapshot())).hexdigest()
            by_digest[digest] = by_digest.get(digest, 0) + 1
    pub, split_ns = conn.recv()  # stream -> publish time_ns per seq; when the slow client was dropped
    lat, before, after = [], [], []  # every delivery's latency; of patches published before / after the drop
    for c in clients:
        for i, s in enumerate(streams):
            p = pub[f"{s[0]}:{s[1]}"]
            got = c.recv[i, :len(p)]
            m = (p > 0) & (got > 0)
            lat.append(((got[m] - p[m]) / 1e6).astype(np.float32))
            b = m & (p < split_ns)
            before.append(((got[b] - p[b]) / 1e6).astype(np.float32))
            b = m & (p >= split_ns)
            after.append(((got[b] - p[b]) / 1e6).astype(np.float32))
    missing = 0  # patches published that a client never received, alone, folded or in a snapshot
    for c in clients:
        for i, s in enumerate(streams):
            p = pub[f"{s[0]}:{s[1]}"]
            missing += int(((p > 0) & (c.recv[i, :len(p)] == 0)).sum())
    conn.send(dict(done=sum(c.done for c in clients), clients=n, gaps=sum(c.gaps for c in clients),
                   digests=digests, latency_ms=np.concatenate(lat) if lat else np.zeros(0, np.float32),
                   before_drop_ms=np.concatenate(before) if before else np.zeros(0, np.float32),
                   after_drop_ms=np.concatenate(after) if after else np.zeros(0, np.float32),
                   missing=missing))
    for ws in [c.ws for c in clients] + [slow_ws]:
        if ws is not None and ws.transport is not None:
            ws.transport.abort()


def _client_proc(url, n, slow, streams, max_seq, conn) -> None:
    conn.recv()  # "go": the gateway is up and holds the surfaces
    try:
        asyncio.run(_client_proc_main(url, n, slow, streams, max_seq, conn))
    except Exception as exc:  # reported to the parent, which prints it
        conn.send(("error", repr(exc)))


# ---------------------------------------------------------------- the gateway process


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core, every process: /proc/stat)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())


def start_gateway(port: int, max_clients: int) -> subprocess.Popen:
    env = dict(os.environ, VOLGRAPH_PUBLISH_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "gateway", "--host", "127.0.0.1", "--port", str(port),
                             "--max-clients", str(max_clients), "--max-clients-per-addr", str(max_clients),
                             "--log-level", "WARNING"], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode} while starting")
        try:
            if status(port).get("pid") == proc.pid:
                return proc
        except OSError:
            pass
        time.sleep(0.1)  # start-up poll of another process
    proc.kill()
    raise SystemExit("the gateway did not answer /status within 60 s")


# ---------------------------------------------------------------- the run


class Publisher:
    """The flow's side: one /publish connection with the token, the surfaces' merged state
    (the reference the clients are compared with) and each patch's send time by seq."""

    def __init__(self, port: int, chain_list: list[Chain], max_seq: int) -> None:
        from operators.merge import SurfaceState

        self.port = port
        self.chains = chain_list
        self.states = {(c.venue, c.underlying): SurfaceState() for c in chain_list}
        self.seqs = {k: 0 for k in self.states}
        self.times = {f"{v}:{u}": np.zeros(max_seq + 1, dtype=np.int64) for v, u in self.states}
        self.sizes: list[int] = []
        self.ws = None

    async def open(self) -> None:
        """Connect and publish each surface whole (seq 1)."""
        from websockets.asyncio.client import connect

        from operators.events import to_json

        self.ws = await connect(f"ws://127.0.0.1:{self.port}/publish", compression=None, max_size=None,
                                additional_headers={"Authorization": f"Bearer {TOKEN}"})
        for c in self.chains:
            snap = c.snapshot(int(time.time() * 1000))
            self.states[(c.venue, c.underlying)].replace(snap)
            self.seqs[(c.venue, c.underlying)] = 1
            await self.ws.send(to_json(snap), text=True)

    async def run(self, rate: float, seconds: float, sample) -> None:
        """`rate` patches/s per surface for `seconds`, on a fixed schedule (no drift)."""
        from operators.events import to_json

        period = 1.0 / rate
        t_next = time.monotonic()
        end = t_next + seconds
        while t_next < end:
            for c in self.chains:
                key = (c.venue, c.underlying)
                patch = c.patch(int(time.time() * 1000))
                raw = to_json(patch)
                self.sizes.append(len(raw))
                self.states[key].apply(patch)
                self.seqs[key] += 1
                self.times[f"{key[0]}:{key[1]}"][self.seqs[key]] = time.time_ns()
                await self.ws.send(raw, text=True)
            sample()
            t_next += period
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))

    async def close(self) -> None:
        await self.ws.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="publishing time (default: %(default)s)")
    p.add_argument("--clients", type=int, default=1000, help="websocket clients, the slow one included (default: %(default)s)")
    p.add_argument("--surfaces", type=int, default=2, choices=range(1, len(SURFACES) + 1),
                   help="surfaces published, each to every client (default: %(default)s: deribit BTC and ETH)")
    p.add_argument("--rate", type=float, default=20.0, help="patches/s per surface (default: %(default)s)")
    p.add_argument("--procs", type=int, default=1, help="client processes (default: %(default)s)")
    args = p.parse_args(argv)

    chain_list = chains(args.surfaces)
    streams = [(c.venue, c.underlying) for c in chain_list]
    max_seq = int(args.seconds * args.rate) + 16
    normal = args.clients - 1
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    outs: list = []
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    shares = [normal // args.procs + (i < normal % args.procs) for i in range(args.procs)]
    for i, share in enumerate(shares):  # forked first: before any thread, socket or event loop here
        a, b = ctx.Pipe()
        proc = ctx.Process(target=_client_proc, args=(url, share, int(i == 0), streams, max_seq, b), daemon=True)
        proc.start()
        pipes.append(a)
        procs.append(proc)
    gateway = start_gateway(port, args.clients + 16)
    publisher = Publisher(port, chain_list, max_seq)
    samples: list[tuple[float, float]] = []
    firsts: dict[str, float] = {}  # /status counter -> seconds into the run it first went above 0
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(publisher.open())  # the surfaces exist before any client connects
        for a in pipes:
            a.send("go")
        for a in pipes:
            got = a.recv()
            if got[0] != "connected":
                raise SystemExit(f"a client process failed: {got}")
        st0 = status(port)
        cpu0 = {"gateway": cpu_s(gateway.pid), "publisher": time.process_time(), "machine": machine_busy_s(),
                **{f"clients{i}": cpu_s(pr.pid) for i, pr in enumerate(procs)}}
        t0 = time.monotonic()
        last = [t0]
        drop_ns = [2**62]  # when the slow client was seen dropped (time_ns); never: all patches are "before"

        def sample() -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0:
                last[0] = now
                samples.append((now - t0, rss_mb(gateway.pid)[0]))
                counters = status(port)
                for name in ("coalesced", "dropped_clients"):
                    if counters[name] > st0[name] and name not in firsts:
                        firsts[name] = now - t0
                        drop_ns[0] = time.time_ns() if name == "dropped_clients" else drop_ns[0]

        loop.run_until_complete(publisher.run(args.rate, args.seconds, sample))
        elapsed = time.monotonic() - t0
        cpu1 = {"gateway": cpu_s(gateway.pid), "publisher": time.process_time(), "machine": machine_busy_s(),
                **{f"clients{i}": cpu_s(pr.pid) for i, pr in enumerate(procs)}}
        final = {f"{k[0]}:{k[1]}": s for k, s in publisher.seqs.items()}
        for a in pipes:
            a.send(final)
        for a in pipes:
            a.send((publisher.times, drop_ns[0]))
        outs = [a.recv() for a in pipes]
        st1 = status(port)
        rss, hwm = rss_mb(gateway.pid)
        from operators.events import to_json

        reference = {f"{k[0]}:{k[1]}": hashlib.sha256(to_json(state.snapshot())).hexdigest()
                     for k, state in publisher.states.items()}
        gateway_view = loop.run_until_complete(fresh_client(url, len(streams)))
        loop.run_until_complete(publisher.close())
    finally:
        loop.close()
        gateway.terminate()
        try:
            gateway.wait(timeout=10)
        except subprocess.TimeoutExpired:
            gateway.kill()
        for pr in procs:
            pr.join(timeout=10)
            if pr.is_alive():
                pr.kill()
    errors = [o for o in outs if isinstance(o, tuple)]
    if errors:
        raise SystemExit(f"client process errors: {errors}")
    report(args, streams, publisher, outs, reference, gateway_view, st0, st1, cpu0, cpu1, elapsed, rss, hwm,
           samples, shares, firsts)
    return 0


async def fresh_client(url: str, n_streams: int) -> dict:
    """The gateway's state as a new client gets it: stream -> (seq, digest of the surface)."""
    from websockets.asyncio.client import connect

    from connectors.gateway.protocol import StreamSnapshot, decode_server
    from connectors.gateway.watch import _plain
    from operators.events import to_json

    out = {}
    async with connect(url, max_size=None, compression=None) as ws:
        while len(out) < n_streams:
            msg = decode_server(await ws.recv())
            if isinstance(msg, StreamSnapshot):
                out[f"{msg.venue}:{msg.underlying}"] = (msg.seq, hashlib.sha256(to_json(_plain(msg))).hexdigest())
    return out


def report(args, streams, publisher, outs, reference, gateway_view, st0, st1, cpu0, cpu1, elapsed, rss, hwm,
           samples, shares, firsts) -> None:
    lat = np.concatenate([o["latency_ms"] for o in outs])
    before = np.concatenate([o["before_drop_ms"] for o in outs])
    after = np.concatenate([o["after_drop_ms"] for o in outs])

    def pct(x: np.ndarray, q: float) -> float:
        return float(np.percentile(x, q)) if x.size else float("nan")

    done = sum(o["done"] for o in outs)
    normal = sum(o["clients"] for o in outs)
    diverged = 0
    for o in outs:
        for stream, hashes in o["digests"].items():
            diverged += sum(n for h, n in hashes.items() if h != reference[stream])
    gateway_ok = all(gateway_view[k] == (publisher.seqs[tuple(k.split(":"))], reference[k]) for k in reference)
    cpu = {k: (cpu1[k] - cpu0[k]) / elapsed * 100 for k in cpu0}
    sizes = np.array(publisher.sizes)
    c = st1
    print(f"# machine: {describe_machine()}")
    print(f"# date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"# load: {args.clients} clients ({normal} normal + 1 slow) in {args.procs} client process(es) "
          f"{shares}, {len(streams)} surfaces ({', '.join(f'{v}:{u}' for v, u in streams)}) x {args.rate:g} "
          f"patches/s for {elapsed:.1f} s; patch JSON {sizes.min() / 1024:.1f}-{sizes.max() / 1024:.1f} KB "
          f"(median {np.median(sizes) / 1024:.1f} KB)")
    rows = [
        ("fan-out latency p50, publish -> client receive", f"{np.percentile(lat, 50):.1f} ms", "-"),
        ("fan-out latency p99", f"{np.percentile(lat, 99):.1f} ms", "<= 100 ms"),
        ("fan-out latency max", f"{lat.max():.1f} ms", "-"),
        ("patch deliveries measured (patches x normal clients)", f"{lat.size:,}", "-"),
        ("deliveries missing at the end", f"{sum(o['missing'] for o in outs):,}", "0"),
        ("messages out of the gateway / s", f"{(c['patches_out'] - st0['patches_out']) / elapsed:,.0f}", "-"),
        ("gateway RSS at the end / peak", f"{rss:.0f} / {hwm:.0f} MB", "<= 300 MB"),
        ("gateway CPU (one event loop: 100 % = one core)", f"{cpu['gateway']:.0f} %", "-"),
        ("client processes CPU", " + ".join(f"{cpu[k]:.0f} %" for k in cpu if k.startswith("clients")), "-"),
        ("publisher (this process) CPU", f"{cpu['publisher']:.0f} %", "-"),
        (f"whole machine busy, all processes ({os.cpu_count()} cores = {100 * os.cpu_count()} %)",
         f"{cpu['machine']:.0f} %", "-"),
        ("clients at the final seq of every stream", f"{done} of {normal}", f"{normal}"),
        ("clients whose merged state differs from the gateway's", f"{diverged}", "0"),
        ("gateway's state (a new client's snapshot) = the publisher's", "yes" if gateway_ok else "NO", "yes"),
        ("gaps seen by clients (each answered by Resync)", f"{sum(o['gaps'] for o in outs)}", "0"),
        ("slow client: patches coalesced / clients dropped",
         f"{c.get('coalesced', 0)} / {c.get('dropped_clients', 0)}", "> 0 / 1"),
        ("normal clients' p99 while the slow one was connected / after",
         f"{pct(before, 99):.1f} / {pct(after, 99):.1f} ms" if after.size else "not dropped in this run",
         "unaffected"),
        ("slow client: first coalesced / dropped, s into the run",
         " / ".join("-" if n not in firsts else f"{firsts[n]:.0f} s" for n in ("coalesced", "dropped_clients")), "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'what':<{w}}  {'measured':>18}  {'goal':>10}")
    for what, value, goal in rows:
        print(f"{what:<{w}}  {value:>18}  {goal:>10}")
    if samples:
        print("# gateway RSS over the run (MB): " + " ".join(f"{r:.0f}" for _t, r in samples[:: max(1, len(samples) // 12)]))


if __name__ == "__main__":
    raise SystemExit(main())
