"""Several gateway replicas (docs/gateway-protocol.md §9): the flow's sink publishes to every
endpoint, so each replica serves the full, current surface. Two real Gateways on 127.0.0.1,
real websockets: a client of either converges to the same state; a replica that starts late
(a URL of the list that was down, or an address a name gains, as a headless Service's does
when the HPA adds a pod) catches up from a snapshot; a replica that vanishes from the name is
let go; one replica down never holds the other back."""

from __future__ import annotations

import threading

from connectors.gateway.publisher import GatewaySink, PublisherSet
from connectors.gateway.server import Gateway
from operators.events import SurfaceSnapshot
from tests.connectors.gateway.test_gateway import Watcher
from tests.helpers.config import gateway_kwargs
from tests.helpers.resources import free_port

TOKEN = "replica-token"
DEADLINE_S = 30.0


def reference(f, events) -> SurfaceSnapshot:
    """The merged surface every replica must hold (the one merge rule)."""
    return f.fold(events)


def converged(watcher: Watcher, want: SurfaceSnapshot) -> bool:
    got = watcher.state.get((want.venue, want.underlying))
    return got is not None and got == want


def test_a_client_of_either_replica_converges_to_the_same_state(gateway, surface_factory):
    g1, g2 = gateway(publish_token=TOKEN), gateway(publish_token=TOKEN)
    pub = PublisherSet(f"{g1.publish_url},{g2.publish_url}", TOKEN, retry_min_ms=1, retry_max_ms=50)
    w1, w2 = Watcher(g1.ws_url), Watcher(g2.ws_url)
    f = surface_factory()
    events = [f.snapshot(1, expiries=[0, 1, 2])]
    pub.write_batch(events)
    for epoch in range(2, 40):
        patch = f.patch(epoch, changed=[epoch % 4, (epoch + 2) % 5], removed=[4] if epoch % 7 == 0 else [])
        events.append(patch)
        pub.write_batch([patch])
    want = reference(f, events)
    try:
        assert sorted(pub.endpoints()) == sorted([g1.publish_url, g2.publish_url])
        for w in (w1, w2):
            assert w.wait_for(lambda w: converged(w, want), DEADLINE_S), (w.state, want)
            assert w.gaps == 0
        # each replica numbers its own stream: both took the snapshot and 38 patches
        assert g1.seq("deribit", "BTC") == g2.seq("deribit", "BTC") == 39
        assert g1.state("deribit", "BTC") == g2.state("deribit", "BTC") == want
        assert pub.counters["dropped"] == 0 and pub.counters["connects"] == 2
    finally:
        w1.close()
        w2.close()
        pub.close()


def test_a_replica_that_starts_late_catches_up_from_a_snapshot(gateway, surface_factory):
    """The second URL has no gateway yet: its publisher counts drops and backs off, the first
    replica is served all along; once a gateway listens there, the next batch reconnects and
    sends the whole surface first, then patches."""
    g1 = gateway(publish_token=TOKEN)
    port2 = free_port()
    pub = PublisherSet([g1.publish_url, f"ws://127.0.0.1:{port2}/publish"], TOKEN, retry_min_ms=1, retry_max_ms=20)
    f = surface_factory()
    events = [f.snapshot(1, expiries=[0, 1, 2, 3])]
    pub.write_batch(events)
    for epoch in range(2, 20):
        events.append(f.patch(epoch, changed=[epoch % 5]))
        pub.write_batch(events[-1:])
    assert g1.wait_until(lambda g: g.seq("deribit", "BTC") == 19, DEADLINE_S)  # not held back by the other
    late = pub.publishers[f"ws://127.0.0.1:{port2}/publish"]
    assert late.counters["dropped"] > 0 and late.counters["connects"] == 0

    g2 = Gateway(**gateway_kwargs(host="127.0.0.1", port=port2, publish_token=TOKEN))
    g2.start()
    w1, w2 = Watcher(g1.ws_url), Watcher(g2.ws_url)
    try:
        epoch = 20

        def caught_up(g: Gateway) -> bool:
            return g.seq("deribit", "BTC") is not None

        while not g2.wait_until(caught_up, 0.05) and epoch < 20 + 2000:  # publish until the backoff expires
            events.append(f.patch(epoch, changed=[epoch % 5], index_px=90_000.0 + epoch))
            pub.write_batch(events[-1:])
            epoch += 1
        for epoch in range(epoch, epoch + 5):
            events.append(f.patch(epoch, changed=[epoch % 5]))
            pub.write_batch(events[-1:])
        want = reference(f, events)
        for w in (w1, w2):
            assert w.wait_for(lambda w: converged(w, want), DEADLINE_S), (w.state, want)
        assert late.counters["connects"] == 1
        # it began with the whole surface, then took the patches after it
        assert g2.counters["published.SurfaceSnapshot"] == 1
        assert g2.counters["published.SurfacePatch"] >= 5
        assert g2.state("deribit", "BTC") == g1.state("deribit", "BTC") == want
    finally:
        w1.close()
        w2.close()
        pub.close()
        g2.stop()


class Names:
    """A resolver the test controls: a headless Service's name and the pod addresses it has."""

    def __init__(self, *endpoints: tuple[str, int]) -> None:
        self.endpoints = list(endpoints)
        self.asked = threading.Event()

    def __call__(self, host: str, port: int):
        assert host == "gateway-headless.test"
        self.asked.set()
        return list(self.endpoints)


def test_a_name_with_several_addresses_is_one_endpoint_per_replica(gateway, surface_factory):
    """As the HPA scales a headless Service: a new address is a new replica, sent the snapshot
    first; an address gone is let go. The sink's resolver runs on its own thread."""
    g1, g2 = gateway(publish_token=TOKEN), gateway(publish_token=TOKEN)
    names = Names(("127.0.0.1", g1.port))
    sink = GatewaySink("ws://gateway-headless.test:8765/publish", TOKEN, resolver=names, resolve_every_s=0.02,
                       retry_min_ms=1, retry_max_ms=20)
    part = sink.build("gateway", 0, 1)
    pub = sink.publishers[0]
    f = surface_factory()
    events = [f.snapshot(1, expiries=[0, 1, 2])]
    w2 = Watcher(g2.ws_url)
    try:
        assert names.asked.wait(DEADLINE_S)
        part.write_batch(events)
        for epoch in range(2, 10):
            events.append(f.patch(epoch, changed=[epoch % 3]))
            part.write_batch(events[-1:])
        assert pub.endpoints() == [g1.publish_url]
        assert g1.wait_until(lambda g: g.seq("deribit", "BTC") == 9, DEADLINE_S)

        names.endpoints.append(("127.0.0.1", g2.port))  # the HPA adds a pod
        epoch = 10
        while g2.seq("deribit", "BTC") is None and epoch < 10 + 2000:
            events.append(f.patch(epoch, changed=[epoch % 3]))
            part.write_batch(events[-1:])
            epoch += 1
            g2.wait_until(lambda g: g.seq("deribit", "BTC") is not None, 0.05)
        want = reference(f, events)
        assert w2.wait_for(lambda w: converged(w, want), DEADLINE_S), (w2.state, want)
        assert g2.counters["published.SurfaceSnapshot"] == 1
        assert g1.state("deribit", "BTC") == g2.state("deribit", "BTC") == want

        names.endpoints[:] = [("127.0.0.1", g2.port)]  # and removes the first one
        gone = f"ws://127.0.0.1:{g1.port}/publish"
        while gone in pub.publishers and epoch < 10 + 4000:
            events.append(f.patch(epoch, changed=[epoch % 3]))
            part.write_batch(events[-1:])
            epoch += 1
            g1.wait_until(lambda g: g.publishers == 0, 0.05)
        assert gone not in pub.publishers
        assert g1.wait_until(lambda g: g.publishers == 0, DEADLINE_S)
        want = reference(f, events)
        assert w2.wait_for(lambda w: converged(w, want), DEADLINE_S), (w2.state, want)
        assert w2.gaps == 0
    finally:
        w2.close()
        part.close()
