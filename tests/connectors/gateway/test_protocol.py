"""The client protocol (docs/gateway-protocol.md) over real websockets on 127.0.0.1: the
committed JSON Schema is the one the code generates and every message a gateway sends meets
it; each stream's seq is contiguous, a coalesced patch says what it covers, a dropped patch
makes the client resync; subscriptions; pings; and the parsers (client messages, published
frames) refuse arbitrary input with their own error only (hypothesis)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from connectors.gateway.protocol import (
    Hello,
    Ping,
    ProtocolError,
    Refused,
    StreamPatch,
    StreamSnapshot,
    Subscribed,
    decode_client,
    decode_server,
    encode,
    schema_document,
    schema_json,
)
from connectors.gateway.surfaces import validate_frame, with_seq
from connectors.gateway.watch import StreamClient
from operators.events import SurfacePatch, SurfaceSnapshot, to_json
from tests.connectors.gateway.test_gateway import Watcher, publisher  # noqa: F401 (fixture)
from tests.helpers.venues import json_paths

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "docs" / "gateway-protocol.schema.json"


# ---------------------------------------------------------------- the schema


def test_the_committed_schema_is_the_generated_one():
    """docs/gateway-protocol.schema.json is generated from the types the server uses; after a
    change to them, regenerate it: python -c "from connectors.gateway.protocol import
    schema_json; open('docs/gateway-protocol.schema.json','wb').write(schema_json())" """
    assert SCHEMA_FILE.read_bytes() == schema_json()
    doc = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    server = doc["$defs"]["ServerMessage"]["discriminator"]["mapping"]
    assert set(server) == {"Hello", "SurfaceSnapshot", "SurfacePatch", "Subscribed", "Ping", "Error"}
    assert set(doc["$defs"]["ClientMessage"]["discriminator"]["mapping"]) == {"Subscribe", "Resync", "Pong"}
    assert {"seq", "seq_from"} <= set(doc["$defs"]["StreamPatch"]["required"])


def validator(kind: str) -> jsonschema.Draft202012Validator:
    """A validator of one kind of message ("ServerMessage", "ClientMessage", ...) by the schema."""
    return jsonschema.Draft202012Validator({"$defs": schema_document()["$defs"], "$ref": f"#/$defs/{kind}"})


def test_the_spliced_seq_is_what_msgspec_encodes(surface_factory):
    """The gateway splices seq into the event's JSON instead of re-encoding: byte-equal."""
    f = surface_factory()
    patch, snap = f.patch(4, changed=[0, 2], removed=[1]), f.snapshot(3, expiries=[0, 1])
    as_patch = StreamPatch(**{k: getattr(patch, k) for k in SurfacePatch.__struct_fields__}, seq=9, seq_from=7)
    as_snap = StreamSnapshot(**{k: getattr(snap, k) for k in SurfaceSnapshot.__struct_fields__}, seq=3)
    assert with_seq(to_json(patch), 9, 7) == encode(as_patch)
    assert with_seq(to_json(snap), 3) == encode(as_snap)
    assert decode_server(with_seq(to_json(patch), 9, 7)) == as_patch
    validator("ServerMessage").validate(orjson.loads(encode(as_patch)))


# ---------------------------------------------------------------- sequence numbers


def test_every_message_meets_the_schema_and_seq_is_contiguous_per_stream(gateway, surface_factory):
    g = gateway()
    btc, eth = surface_factory(underlying="BTC"), surface_factory(underlying="ETH", seed=3)
    check = validator("ServerMessage")
    with publisher(g) as pub:
        pub.send(to_json(btc.snapshot(1, expiries=[0, 1, 2])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 1, 10)
        with connect(g.ws_url, max_size=None) as ws:
            hello = decode_server(ws.recv(timeout=10))
            assert isinstance(hello, Hello) and hello.protocol == 1 and hello.streams == ("deribit:BTC",)
            first = decode_server(ws.recv(timeout=10))
            assert isinstance(first, StreamSnapshot) and first.seq == 1
            for i in range(10):
                pub.send(to_json(btc.patch(2 + i, changed=[i % 3])), text=True)
                pub.send(to_json(eth.patch(2 + i, changed=[i % 2])), text=True)
            assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 11 and g.seq("deribit", "ETH") == 10, 10)
            seqs = {("deribit", "BTC"): 1}
            while seqs != {("deribit", "BTC"): 11, ("deribit", "ETH"): 10}:
                raw = ws.recv(timeout=10)
                check.validate(orjson.loads(raw))
                msg = decode_server(raw)
                assert isinstance(msg, StreamPatch)
                key = (msg.venue, msg.underlying)
                assert msg.seq_from == seqs.get(key, 0) + 1 and msg.seq >= msg.seq_from  # contiguous, no gap
                seqs[key] = msg.seq


def test_a_dropped_patch_makes_the_client_resync(gateway, surface_factory):
    """The reference client (connectors/gateway/watch.py StreamClient) over a real socket,
    with one patch thrown away as if lost: it sees the gap, sends Resync, gets a snapshot and
    ends equal to the gateway's state."""
    g = gateway()
    f = surface_factory()
    with publisher(g) as pub, connect(g.ws_url, max_size=None) as ws:
        client = StreamClient(lambda raw: ws.send(raw, text=True))

        def take_until(predicate) -> list:
            """Read messages into the client until predicate(message) holds; return them."""
            seen = []
            while not seen or not predicate(seen[-1]):
                raw = ws.recv(timeout=10)
                seen.append(decode_server(raw))
                client.on_message(raw)
            return seen

        pub.send(to_json(f.snapshot(1, expiries=[0, 1, 2])), text=True)
        take_until(lambda m: isinstance(m, StreamSnapshot))
        pub.send(to_json(f.patch(2, changed=[0])), text=True)
        lost = decode_server(ws.recv(timeout=10))  # lost on the way: never given to the client
        assert isinstance(lost, StreamPatch) and (lost.seq_from, lost.seq) == (2, 2)
        for i in range(6):
            pub.send(to_json(f.patch(3 + i, changed=[i % 3], removed=[1] if i == 4 else [])), text=True)
        assert g.wait_until(lambda g: g.seq("deribit", "BTC") == 8, 10)
        final = g.state("deribit", "BTC")
        take_until(lambda m: isinstance(m, StreamSnapshot))  # the answer to the Resync the gap caused
        assert client.gaps == 1 and g.counters["resyncs"] == 1
        while client.surfaces[("deribit", "BTC")] != final:
            take_until(lambda m: True)
        assert client.seqs[("deribit", "BTC")] == 8 and not client.resyncing


def test_subscriptions_filter_streams_and_subscribe_sends_the_new_snapshots(gateway, surface_factory):
    g = gateway()
    with publisher(g) as pub:
        for venue, underlying in (("deribit", "BTC"), ("deribit", "ETH"), ("okx", "BTC")):
            pub.send(to_json(surface_factory(venue=venue, underlying=underlying).snapshot(1, expiries=[0])), text=True)
        assert g.wait_until(lambda g: len(g.surfaces) == 3, 10)
        okx = Watcher(g.ws_url + "?venue=okx")
        btc = Watcher(g.ws_url + "?underlying=BTC")
        assert okx.wait_for(lambda w: len(w.other) >= 1 and len(w.kinds) >= 1)
        assert btc.wait_for(lambda w: len(w.kinds) >= 2)
        pub.send(to_json(surface_factory(underlying="ETH").patch(2, changed=[1])), text=True)
        pub.send(to_json(surface_factory(venue="okx").patch(2, changed=[1])), text=True)
        assert okx.wait_for(lambda w: w.seq.get(("okx", "BTC")) == 2)
        assert btc.wait_for(lambda w: w.seq.get(("okx", "BTC")) == 2)
        assert set(okx.state) == {("okx", "BTC")} and set(btc.state) == {("deribit", "BTC"), ("okx", "BTC")}
        assert okx.other[0].venues == ("okx",) and okx.other[0].underlyings is None

        okx.ws.send(b'{"type":"Subscribe","underlyings":["ETH"]}', text=True)
        assert okx.wait_for(lambda w: ("deribit", "ETH") in w.state)
        assert any(isinstance(m, Subscribed) and m.underlyings == ("ETH",) for m in okx.other)
        assert okx.state[("deribit", "ETH")] == g.state("deribit", "ETH")
        assert okx.seq[("deribit", "ETH")] == 2 and okx.gaps == 0 and btc.gaps == 0
    okx.close()
    btc.close()


def test_the_server_pings(gateway):
    g = gateway(ping_interval_s=0.05)
    w = Watcher(g.ws_url)
    assert w.wait_for(lambda w: sum(isinstance(m, Ping) for m in w.other) >= 2)
    assert isinstance(w.other[0], Hello) and w.other[0].ping_interval_ms == 50
    w.ws.send(b'{"type":"Pong","ts_ms":1}', text=True)  # answering is allowed, and optional
    assert w.wait_for(lambda w: sum(isinstance(m, Ping) for m in w.other) >= 3)
    assert not w.closed.is_set() and g.status()["client_errors"] == {}
    w.close()


def test_a_resync_of_an_unknown_stream_is_counted_not_fatal(gateway):
    g = gateway()
    w = Watcher(g.ws_url)
    w.ws.send(b'{"type":"Resync","venue":"nope","underlying":"X"}', text=True)
    assert g.wait_until(lambda g: g.counters["client_errors.unknown_stream"] == 1, 10)
    assert not w.closed.is_set()
    w.close()


# ---------------------------------------------------------------- parsers: only their own error


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300)
       | st.sampled_from(["Subscribe", "Resync", "Pong", "Hello", "X"]).flatmap(
           lambda t: st.dictionaries(st.sampled_from(["venues", "underlyings", "venue", "underlying", "ts_ms", "x"]),
                                     st.none() | st.integers() | st.text(max_size=40)
                                     | st.lists(st.text(max_size=40), max_size=70), max_size=3)
           .map(lambda d: json.dumps({"type": t, **d}))))
def test_client_messages_parse_or_raise_protocol_error(message):
    try:
        decode_client(message)
    except ProtocolError as exc:
        assert exc.reason == "malformed" and exc.detail


NUMBERS = (st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.just("1e999") | st.just("-1e999")
           | st.text(max_size=5) | st.none() | st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400), st.integers(64, 1 << 20))
def test_published_frames_of_arbitrary_bytes_are_refused_with_refused_only(message, limit):
    try:
        validate_frame(message, limit)
    except Refused as exc:
        assert exc.reason and exc.detail


@settings(max_examples=300, deadline=None)
@given(data=st.data(), seed=st.integers(0, 50))
def test_published_frames_with_any_value_anywhere_are_refused_or_sound(data, seed, surface_factory):
    """Take a valid patch, replace one leaf (number, string, null) by anything: the validator
    either refuses it with Refused or returns an event whose every number is finite."""
    import math

    frame = orjson.loads(to_json(surface_factory(seed=seed).patch(5, changed=[0, 1], removed=[2])))
    paths = [p for p in json_paths(frame, leaves_only=True) if p and p[0] != "type"]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(NUMBERS)
    node = frame
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = "__RAW__"
    raw = orjson.dumps(frame).replace(b'"__RAW__"', value.encode() if isinstance(value, str) and "e999" in value
                                      else json.dumps(value).encode())
    try:
        event = validate_frame(raw, 1 << 20)
    except Refused as exc:
        assert exc.reason in ("bad_event", "bad_value", "bad_name") or exc.reason.startswith("unsupported."), exc
        return
    floats = [x for x in _leaves(msgspec.to_builtins(event)) if isinstance(x, float)]
    assert all(math.isfinite(x) for x in floats)


def _leaves(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _leaves(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _leaves(v)
    else:
        yield node


def test_refusals_name_the_field_and_the_fix(surface_factory):
    f = surface_factory()
    frame = orjson.loads(to_json(f.patch(5, changed=[0])))
    frame["expiries"][0]["bid_iv"][1] = -0.2
    with pytest.raises(Refused, match=r"expiries\[\d+\]: an IV is negative") as exc:
        validate_frame(orjson.dumps(frame), 1 << 20)
    assert exc.value.reason == "bad_value"
    frame = orjson.loads(to_json(f.patch(5, changed=[0])))
    frame["venue"] = "<script>"
    with pytest.raises(Refused, match="venue = '<script>'"):
        validate_frame(orjson.dumps(frame), 1 << 20)
    with pytest.raises(Refused, match="publish_max_message_bytes is 100") as exc:
        validate_frame(to_json(f.patch(5, changed=[0])), 100)
    assert exc.value.reason == "oversized"
    raw = to_json(f.patch(5, changed=[0])).replace(b'"index_px":95000.0', b'"index_px":1e999')
    with pytest.raises(Refused, match="infinity"):
        validate_frame(raw, 1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120), st.text(max_size=60), st.text(max_size=60))
def test_handshake_parsers_answer_or_refuse_cleanly(text, header, token):
    """The query (subscription filters), the Origin and the Authorization header of any
    handshake: a value or ProtocolError, never another exception."""
    from connectors.gateway.auth import origin_allowed, own_origins, token_ok
    from connectors.gateway.server import _filters

    try:
        venues, underlyings = _filters(text)
        assert venues is None or all(venues)
    except ProtocolError as exc:
        assert exc.reason == "bad_query"
    assert origin_allowed(text, own_origins("127.0.0.1", 8765)) in (True, False)
    assert token_ok(header, text, token or "t") in (True, False)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300)
       | st.sampled_from(["Hello", "SurfacePatch", "SurfaceSnapshot", "Ping", "Error", "Subscribed"]).map(
           lambda t: json.dumps({"type": t, "seq": 1, "seq_from": 1, "venue": "d", "underlying": "B"})))
def test_the_reference_client_survives_any_server_message(message):
    from connectors.gateway.watch import StreamClient

    sent = []
    client = StreamClient(sent.append)
    assert client.on_message(message) is None or client.surfaces
    assert sent == []
