"""bench/workload.py split_recording: each worker slot's recording is what that slot's live
client would hand the flow — the books of the expiries placed on it and, from the instrument
lists every connection receives, only the instruments it announces (its own expiries' options
and futures, and the perpetual every slot reads). Replayed, each slot's partition lists no
expiry of the other slot, so no process keeps a chain without books."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.workload import ensure_workload, split_recording, workload_for  # noqa: E402
from connectors.capture.replay import ReplaySource  # noqa: E402
from connectors.venues.deribit.names import parse_instrument_name  # noqa: E402
from operators.events import BookUpdate, Instrument, expand_books  # noqa: E402


def _replayed(path: Path) -> tuple[dict[tuple[str, str, int], int], set[int]]:
    """(underlying, kind, expiry) → Instruments announced, and the expiries of the books, in a
    recording."""
    src = ReplaySource(path)
    part = src.build_part("split", src.list_parts()[0], None)
    listed: dict[tuple[str, str, int], int] = {}
    booked: set[int] = set()
    try:
        while True:
            for ev in expand_books(part.next_batch()):  # BookBatches as their BookUpdates
                if type(ev) is Instrument:
                    key = (ev.underlying, ev.kind, ev.expiry_ms)
                    listed[key] = listed.get(key, 0) + 1
                elif type(ev) is BookUpdate:
                    booked.add(parse_instrument_name(ev.instrument)[1])
    except StopIteration:
        pass
    finally:
        part.close()
    return listed, booked


def test_each_slot_announces_only_the_expiries_placed_on_it(tmp_path):
    path, meta = ensure_workload(workload_for("small", None, 2_000), "workload", tmp_path, quiet=True)
    whole, _ = _replayed(path)
    parts = split_recording(path, meta, 2, quiet=True)
    for currency in ("BTC", "ETH"):
        slots = [parts[f"{currency}.w{k}of2"] for k in range(2)]
        placed = {int(e): k for e, k in slots[0][1]["placement"].items()}
        assert slots[1][1]["placement"] == slots[0][1]["placement"] and set(placed.values()) == {0, 1}
        seen = []
        for k, (split, _) in enumerate(slots):
            listed, booked = _replayed(split)
            mine = {e for e, slot in placed.items() if slot == k}
            assert {u for u, _, _ in listed} == {currency}
            options = {e for (_, kind, e) in listed if kind == "option"}
            assert options == mine, (currency, k)  # none of the other slot's expiries
            assert booked and booked <= mine, (currency, k)  # and every book it carries is one of them
            assert {e for (_, kind, e) in listed if kind == "future"} <= mine
            assert (currency, "perpetual", 0) in listed  # what every slot reads
            seen.append(listed)
        # between them the slots announce the whole listing of the currency, each instrument once
        # (the perpetual once per slot)
        for key, n in whole.items():
            if key[0] != currency or key[1] == "perpetual":
                continue
            assert sum(s.get(key, 0) for s in seen) == n, key
