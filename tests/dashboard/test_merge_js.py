"""The dashboard's merge (dashboard/app.js `applyPatch` and its caller `onMessage`), run
under Node.js on the same generated patch sequences (tests/helpers/patches.py) as the one
Python rule, operators/merge.py, and compared field by field (views with vol-at-size ladders,
merged by instrument).

Needs `node` (/usr/bin/node here; CI installs it): without it these tests FAIL, they do not
skip, so the browser's copy of the rule can never go unchecked. One node process serves
every example over a pipe (a line of JSON in, a line out), not one process per example.
"""

from __future__ import annotations

import functools
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.events import SurfaceSnapshot, to_dict, to_json
from operators.merge import apply_patch
from tests.helpers.patches import UNDERLYING, VENUE, event_sequences, patch_sequences, snapshots
from tests.helpers.node import node_driver

APP_JS = Path(__file__).resolve().parents[2] / "dashboard" / "app.js"
FIELDS = ("venue", "underlying", "epoch", "ts_exchange_ms", "ts_emit_ms", "expiries", "tenors", "calendar", "index_px",
          "underlying_analytics", "underlying_units")

DRIVER = r"""
const app = require(process.argv[1]);
const key = process.argv[2];
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const { start, events } = JSON.parse(line);
  let folded = start;  // applyPatch alone, patches only
  for (const e of events) folded = e.type === "SurfacePatch" ? app.applyPatch(folded, e) : e;
  app.surfaces.clear();  // the websocket path: onMessage per message
  if (start) app.onMessage(start);
  for (const e of events) app.onMessage(e);
  const shown = app.surfaces.has(key) ? app.surfaces.get(key) : null;
  process.stdout.write(JSON.stringify({ folded, shown }) + "\n");
});
"""


@pytest.fixture(scope="module")
def node():
    def run(ask, start, events) -> dict:
        line = b'{"start":' + (b"null" if start is None else to_json(start)) + b',"events":['
        return ask((line + b",".join(to_json(e) for e in events) + b"]}").decode())

    for ask in node_driver(DRIVER, str(APP_JS), f"{VENUE}:{UNDERLYING}",
                           why="check dashboard/app.js's merge against operators/merge.py"):
        yield lambda start, events: run(ask, start, events)


def same_surface(js: dict, py: SurfaceSnapshot) -> None:
    expected = to_dict(py)
    for field in FIELDS:
        assert js[field] == expected[field], field


@given(start=st.none() | snapshots(1, with_underlying=True, with_ladders=True),
       seq=patch_sequences(max_size=8, with_underlying=True, with_ladders=True))
def test_apply_patch_in_js_equals_the_python_rule(node, start, seq):
    result = node(start, seq)
    expected = functools.reduce(apply_patch, seq, start)
    assert result["folded"]["type"] == "SurfaceSnapshot"
    same_surface(result["folded"], expected)
    same_surface(result["shown"], expected)


@given(seq=event_sequences(with_underlying=True, with_ladders=True))
def test_on_message_in_js_equals_the_python_rule(node, seq):
    """Snapshots replace the surface, patches merge into it, as the gateway's clients do."""
    expected = None
    for event in seq:
        expected = event if isinstance(event, SurfaceSnapshot) else apply_patch(expected, event)
    same_surface(node(None, seq)["shown"], expected)


def test_the_driver_sees_app_js(node):
    """A hand-made case, so a broken driver cannot pass the properties vacuously."""
    raw = orjson.loads(b'{"type":"SurfacePatch","venue":"deribit","underlying":"BTC","epoch":1,"ts_exchange_ms":5,'
                       b'"ts_emit_ms":6,"expiries":[],"removed":[],"tenors":[],"calendar":[],"index_px":null,"v":1}')
    from operators.events import from_dict

    result = node(None, [from_dict(raw)])
    assert result["shown"]["epoch"] == 1 and result["shown"]["expiries"] == [] and result["folded"]["index_px"] is None
