"""The dashboard's side of the protocol's sequence rule (dashboard/app.js `onMessage`,
docs/gateway-protocol.md), run under Node.js: messages made by the gateway's own code
(connectors/gateway/surfaces.py), some of them lost on the way. Where nothing is lost the
page's copy equals the gateway's; at the first loss the page sends exactly one Resync for that
stream and applies nothing more of it until the snapshot, after which it equals the gateway's
again. Needs `node` (see tests/helpers/node.py: a missing node fails, never skips)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.gateway.surfaces import PatchMsg, Surface, encode_queued
from operators.events import to_dict
from tests.helpers.node import node_driver
from tests.helpers.patches import UNDERLYING, VENUE, patch_sequences, snapshots

APP_JS = Path(__file__).resolve().parents[2] / "dashboard" / "app.js"
KEY = f"{VENUE}:{UNDERLYING}"
FIELDS = ("venue", "underlying", "epoch", "ts_exchange_ms", "ts_emit_ms", "expiries", "tenors", "calendar", "index_px")

DRIVER = r"""
const app = require(process.argv[1]);
const key = process.argv[2];
const sent = [];
app.page.socket = { readyState: 1, send: (m) => sent.push(JSON.parse(m)) };  // the page's open websocket
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", (line) => {
  sent.length = 0;
  app.surfaces.clear();
  for (const m of JSON.parse(line)) app.onMessage(m);
  const shown = app.surfaces.has(key) ? app.surfaces.get(key) : null;
  process.stdout.write(JSON.stringify({ shown, seq: app.seqs.has(key) ? app.seqs.get(key) : null, sent }) + "\n");
});
"""

HELLO = orjson.dumps({"type": "Hello", "protocol": 1, "ping_interval_ms": 20000, "max_message_bytes": 4096,
                      "streams": [KEY], "venues": None, "underlyings": None})


@pytest.fixture(scope="module")
def node():
    for ask in node_driver(DRIVER, str(APP_JS), KEY, why="check dashboard/app.js's sequence rule"):
        yield lambda messages: ask("[" + ",".join(m.decode() for m in messages) + "]")


def same(js: dict, surface: Surface) -> None:
    expected = to_dict(surface.snapshot())
    for field in FIELDS:
        assert js[field] == expected[field], field


@settings(max_examples=120, deadline=None)
@given(start=snapshots(1), patches=patch_sequences(min_size=2, max_size=8), data=st.data())
def test_a_lost_patch_is_answered_by_one_resync_and_the_snapshot_heals(node, start, patches, data):
    surface = Surface()
    surface.replace(start)
    messages = [HELLO, surface.snapshot_json()]
    lost = data.draw(st.sets(st.integers(0, len(patches) - 1), max_size=3))
    applied = Surface()  # the gateway's state up to the last patch before the first loss
    applied.replace(start)
    for i, p in enumerate(patches):
        seq = surface.apply(p)
        if i not in lost:
            messages.append(PatchMsg(p, seq).raw)
        if not lost or i < min(lost):
            applied.apply(p)
    result = node(messages)
    if not lost:
        assert result["sent"] == [] and result["seq"] == surface.seq
        same(result["shown"], surface)
        return
    assert result["seq"] == 1 + min(lost)  # nothing applied past the gap
    same(result["shown"], applied)
    if all(i in lost for i in range(min(lost), len(patches))):
        assert result["sent"] == []  # nothing came after the loss: no gap seen yet (the next patch shows it)
        return
    assert result["sent"] == [{"type": "Resync", "venue": VENUE, "underlying": UNDERLYING}]
    healed = node(messages + [surface.snapshot_json()])  # the gateway's answer to the Resync
    assert healed["seq"] == surface.seq and len(healed["sent"]) == 1
    same(healed["shown"], surface)


def test_a_coalesced_patch_applies_and_a_stream_new_on_this_connection_starts_empty(node, surface_factory):
    f = surface_factory()
    surface = Surface()
    patches = [f.patch(1, changed=[0, 1])] + [f.patch(2 + i, changed=[i]) for i in range(3)]
    first, *msgs = [PatchMsg(p, surface.apply(p)) for p in patches]
    coalesced, absorbed = encode_queued(surface, msgs)
    assert absorbed == 2 and orjson.loads(coalesced)["seq_from"] == 2 and orjson.loads(coalesced)["seq"] == 4
    result = node([HELLO, first.raw, coalesced])
    assert result["sent"] == [] and result["seq"] == 4
    same(result["shown"], surface)
