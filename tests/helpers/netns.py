"""A network link between two processes of one machine: two Linux network namespaces joined by
a veth pair, shaped with tc's token-bucket filter (tbf), for running a bytewax cluster's
processes as pods on a network rather than on loopback (issue #16, "Scale-out").

Needs root and iproute2 (`ip netns`, `ip link`, `tc`). Nothing is skipped: without them
`link()` raises NetnsUnavailable naming what is missing and the fix. The addresses live only
inside the two namespaces (a /30 of 10.231.x.0 that no interface of the host uses); the host's
own interfaces, routes and qdiscs are never touched. Teardown always runs: deleting a namespace
deletes its end of the veth pair, the other end and the qdisc with it.

This kernel has no netem, so tbf shapes the rate only; delay, where wanted, comes from a small
relay in user space (delayed_addresses: each chunk forwarded delay_ms after it arrived).
Test and benchmark support only (tests/flows/test_scale_out.py, bench/engine/cluster.py): never
imported by volgraph. Must never touch anything outside the two namespaces it made.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence


class NetnsUnavailable(RuntimeError):
    """The namespaces cannot be made here (not root, no iproute2, no veth support)."""


@dataclass(frozen=True)
class Link:
    """Two namespaces `ns[0]`, `ns[1]` with addresses `addr[0]`, `addr[1]` on either end of
    one veth pair, each end's egress shaped to `rate_mbit`."""

    ns: tuple[str, str]
    addr: tuple[str, str]
    rate_mbit: float
    devices: tuple[str, str]

    def prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program inside namespace i."""
        return ["ip", "netns", "exec", self.ns[i]]

    def qdisc(self, i: int) -> str:
        """`tc -s qdisc show` of namespace i's end: the shaping and its counters (bytes sent, drops)."""
        return _run(self.prefix(i) + ["tc", "-s", "qdisc", "show", "dev", self.devices[i]]).strip()

    def sent(self, i: int) -> dict[str, int]:
        """Namespace i's egress counters from its tbf qdisc: bytes, packets, dropped, overlimits."""
        m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)", self.qdisc(i))
        if m is None:
            raise NetnsUnavailable(f"no counters in `tc -s qdisc show` of {self.ns[i]}: {self.qdisc(i)!r}")
        return dict(zip(("bytes", "packets", "dropped", "overlimits"), (int(g) for g in m.groups())))


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsUnavailable(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def check_available() -> None:
    """Raise NetnsUnavailable with the fix unless root with iproute2 (ip, tc) is here."""
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(f"{', '.join(missing)} not found: install iproute2 (apt-get install iproute2)")
    if os.geteuid() != 0:
        raise NetnsUnavailable(f"network namespaces need root (euid {os.geteuid()}): run the scale-out link test "
                               "and bench as root, or in a container with CAP_NET_ADMIN")


def _free_subnet() -> int:
    """A third octet x such that no host interface holds an address in 10.231.x.0/24."""
    used = _run(["ip", "-o", "-4", "addr", "show"])
    for x in range(1 + os.getpid() % 200, 255):
        if f" 10.231.{x}." not in used:
            return x
    raise NetnsUnavailable("no free 10.231.x.0/24 subnet for the link; delete stale vg* namespaces (ip netns list)")


@contextlib.contextmanager
def link(rate_mbit: float, *, burst_kb: int = 64, latency_ms: int = 50, tag: str = "") -> Iterator[Link]:
    """Two namespaces joined by a veth pair shaped to `rate_mbit` each way (tbf, with `burst_kb`
    of bucket and `latency_ms` of queue), up for the duration of the block, always torn down."""
    check_available()
    name = f"vg{tag}{os.getpid() % 100000}"
    ns = (f"{name}a", f"{name}b")
    dev = (f"{name}a", f"{name}b")  # interface names ≤ 15 characters
    x = _free_subnet()
    addr = (f"10.231.{x}.1", f"10.231.{x}.2")
    made: list[str] = []
    try:
        for n in ns:
            _run(["ip", "netns", "add", n])
            made.append(n)
        _run(["ip", "link", "add", dev[0], "type", "veth", "peer", "name", dev[1]])
        for i in (0, 1):
            _run(["ip", "link", "set", dev[i], "netns", ns[i]])
            _run(["ip", "-n", ns[i], "addr", "add", f"{addr[i]}/30", "dev", dev[i]])
            _run(["ip", "-n", ns[i], "link", "set", dev[i], "up"])
            _run(["ip", "-n", ns[i], "link", "set", "lo", "up"])
            _run(["ip", "netns", "exec", ns[i], "tc", "qdisc", "add", "dev", dev[i], "root", "tbf",
                  "rate", f"{rate_mbit}mbit", "burst", f"{burst_kb}kb", "latency", f"{latency_ms}ms"])
        yield Link(ns=ns, addr=addr, rate_mbit=rate_mbit, devices=dev)
    finally:
        for n in made:  # the veth pair and its qdiscs go with the namespaces
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        # a pair made but not yet moved into a namespace is still in the host's: delete it there
        subprocess.run(["ip", "link", "del", dev[0]], capture_output=True)


# ---------------------------------------------------------------- a delaying TCP relay
# This kernel has no netem, so delay is added in user space: a relay inside one namespace
# accepts the cluster's connection and forwards each chunk `delay_ms` after it arrived, in
# both directions, keeping order and never throttling (chunks in flight overlap).


async def _pump(reader, writer, delay_s: float) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if data is None:  # a half close: the other direction stays open until it ends too
                if writer.can_write_eof():
                    writer.write_eof()
                return
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the delay being simulated, not synchronisation
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((loop.time() + delay_s, data or None))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def _relay(listen: tuple[str, int], target: tuple[str, int], delay_s: float, ready) -> None:
    import asyncio

    async def handle(client_r, client_w) -> None:
        for _ in range(600):  # the target process may still be starting: retry for up to a minute
            try:
                up_r, up_w = await asyncio.open_connection(*target)
                break
            except OSError:
                await asyncio.sleep(0.1)  # a retry interval while the peer starts
        else:
            client_w.close()
            return
        await asyncio.gather(_pump(client_r, up_w, delay_s), _pump(up_r, client_w, delay_s))
        up_w.close()
        client_w.close()

    server = await asyncio.start_server(handle, *listen)
    ready()
    async with server:
        await server.serve_forever()


def relay_main(argv: Sequence[str] | None = None) -> int:
    """python -m tests.helpers.netns LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS — prints "ready"
    once listening, then relays until killed."""
    import asyncio
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m tests.helpers.netns LISTEN_HOST:PORT TARGET_HOST:PORT DELAY_MS", file=sys.stderr)
        return 2
    (lh, lp), (th, tp) = (a.rsplit(":", 1) for a in args[:2])
    asyncio.run(_relay((lh, int(lp)), (th, int(tp)), float(args[2]) / 1000.0, lambda: print("ready", flush=True)))
    return 0


@contextlib.contextmanager
def delayed_addresses(ln: Link, port: int, delay_ms: float, *, relay_port: int = 2102) -> Iterator[list[list[str]]]:
    """Per process i, the bytewax address list (-a) that reaches the OTHER process through a
    relay in process i's namespace adding `delay_ms` each way; process i itself binds
    ln.addr[i]:port. Whichever process opens the connection, it crosses a relay, then the veth."""
    import sys

    relays = []
    try:
        for i in (0, 1):
            other = 1 - i
            relays.append(subprocess.Popen(
                ln.prefix(i) + [sys.executable, "-m", "tests.helpers.netns", f"{ln.addr[i]}:{relay_port}",
                                f"{ln.addr[other]}:{port}", str(delay_ms)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                cwd=str(Path(__file__).resolve().parents[2])))
        for r in relays:  # "ready" once listening; a relay that dies says why
            line = r.stdout.readline().strip()
            if line != "ready":
                raise NetnsUnavailable(f"the delay relay did not start: {line!r} {r.stderr.read()[-2000:]}")
        yield [[f"{ln.addr[0]}:{port}", f"{ln.addr[0]}:{relay_port}"],
               [f"{ln.addr[1]}:{relay_port}", f"{ln.addr[1]}:{port}"]]
    finally:
        for r in relays:
            r.kill()
            r.communicate()


if __name__ == "__main__":
    raise SystemExit(relay_main())
