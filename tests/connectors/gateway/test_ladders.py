"""Vol-at-size ladders on /publish (connectors/gateway/protocol.py check_surface): a seed-sized
expiry (300 books x 10 levels x 3 sizes, every value present) fits graph.toml's
publish_max_message_bytes and passes; a malformed ladder (a column a book short, a level row of
the wrong width, a negative price) is refused naming the field; any leaf replaced by anything
is refused or sound."""

from __future__ import annotations

import json
import math
import random
import tomllib
from pathlib import Path

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.gateway.protocol import Refused
from connectors.gateway.surfaces import validate_frame
from operators.events import ExpiryView, Ladders, SmileFit, SurfacePatch, level_matrix, to_json
from tests.helpers.patches import ladders
from tests.helpers.venues import json_paths

ROOT = Path(__file__).resolve().parents[3]
LIMIT = tomllib.loads((ROOT / "graph.toml").read_text())["sinks"]["gateway"]["publish_max_message_bytes"]
EXPIRY_MS = 1_798_272_000_000


def seed_ladders(books: int = 300, depth: int = 10, sizes=(1.0, 10.0, 50.0)) -> Ladders:
    rnd = random.Random(7)
    px = lambda: round(rnd.uniform(0.0005, 0.3) / 0.0005) * 0.0005  # noqa: E731
    size = lambda: round(rnd.uniform(0.1, 100.0), 1)  # noqa: E731
    vol = lambda: rnd.uniform(0.3, 1.5)  # noqa: E731
    levels = lambda f: level_matrix([[f() for _ in range(depth)] for _ in range(books)])  # noqa: E731
    walks = lambda f: level_matrix([[f() for _ in sizes] for _ in range(books)])  # noqa: E731
    strikes = tuple(50_000.0 + 500.0 * (i // 2) for i in range(books))
    return Ladders(level_depth=depth, sizes_contracts=sizes,
                   instrument=tuple(f"BTC-26JUN27-{k:.0f}-{'CP'[i % 2]}" for i, k in enumerate(strikes)),
                   venue=("deribit",) * books, strike=strikes, option_type=tuple("CP"[i % 2] for i in range(books)),
                   contract_size=(1.0,) * books, stale=(False,) * books,
                   bid_px=levels(px), bid_size_contracts=levels(size), bid_iv=levels(vol),
                   ask_px=levels(px), ask_size_contracts=levels(size), ask_iv=levels(vol),
                   bid_exec_px=walks(px), bid_exec_iv=walks(vol), ask_exec_px=walks(px), ask_exec_iv=walks(vol))


def patch_with(lad: Ladders) -> SurfacePatch:
    fit = SmileFit("deribit", "BTC", EXPIRY_MS, 1, 1_767_225_600_000, 1_767_225_600_000, 0.5, 95_000.0, 0.01, 0.1,
                   -0.3, 0.0, 0.2, 0.5, 150, True, 0.5, 1.0)
    return SurfacePatch("deribit", "BTC", 1, 1_767_225_600_000, 1_767_225_600_000,
                        expiries=(ExpiryView(EXPIRY_MS, fit, ladders=lad),))


def test_a_seed_sized_expiry_fits_the_publish_bound():
    raw = to_json(patch_with(seed_ladders()))
    print(f"one expiry, 300 books x 10 levels x 3 sizes: {len(raw)} bytes; publish_max_message_bytes {LIMIT}")
    assert len(raw) * 8 < LIMIT  # 8 such expiries in one frame still pass
    event = validate_frame(raw, LIMIT)
    assert event.expiries[0].ladders == seed_ladders()


def test_malformed_ladders_are_refused_naming_the_field():
    good = orjson.loads(to_json(patch_with(seed_ladders(books=4, depth=3))))
    # a ragged matrix is not a ladder at all (bad_event, from decoding); a well-formed one with
    # a wrong shape or value is a bad value
    cases = [("strike", lambda v: v[:-1], r"ladders\.strike: one entry per book", "bad_value"),
             ("bid_iv", lambda v: [v[0][:2]] + v[1:], r"rows differ in length - at `SurfacePatch\.expiries\[0\]"
                                                       r"\.ladders\.bid_iv`", "bad_event"),
             ("bid_iv", lambda v: [r[:2] for r in v], r"ladders\.bid_iv: per book 3 finite", "bad_value"),
             ("ask_px", lambda v: [[-0.1] + r[1:] for r in v], r"ladders\.ask_px", "bad_value"),
             ("ask_exec_iv", lambda v: v[:3], r"ladders\.ask_exec_iv: per book 3", "bad_value"),
             ("ask_iv", lambda v: [["0.5"] + r[1:] for r in v],
              r"rows of numbers or null \(Expected `float \| null`, got `str`\) - at `SurfacePatch\.expiries\[0\]"
              r"\.ladders\.ask_iv`", "bad_event")]
    for field, change, message, reason in cases:
        frame = json.loads(json.dumps(good))
        lad = frame["expiries"][0]["ladders"]
        lad[field] = change(lad[field])
        with pytest.raises(Refused, match=message) as exc:
            validate_frame(orjson.dumps(frame), LIMIT)
        assert exc.value.reason == reason, (field, exc.value)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_ladder_leaf_replaced_by_anything_is_refused_or_sound(data):
    frame = orjson.loads(to_json(patch_with(data.draw(ladders(3)))))
    paths = list(json_paths(frame["expiries"][0]["ladders"], leaves_only=True))
    path = data.draw(st.sampled_from(paths))
    node = frame["expiries"][0]["ladders"]
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = data.draw(st.none() | st.booleans() | st.integers(-10, 10) | st.floats() | st.text(max_size=3)
                               | st.lists(st.floats(), max_size=3))
    try:
        event = validate_frame(json.dumps(frame, allow_nan=True).encode(), LIMIT)
    except Refused as exc:
        assert exc.reason in ("bad_event", "bad_value"), exc
        return
    lad = event.expiries[0].ladders
    n = len(lad.instrument)
    for name in ("bid_px", "bid_iv", "ask_exec_iv"):
        rows = getattr(lad, name)  # null reads back as NaN
        assert len(rows) == n and all(math.isnan(v) or (math.isfinite(v) and v >= 0) for r in rows for v in r)
    assert msgspec.structs.asdict(lad)
