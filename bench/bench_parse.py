"""Benchmark: Deribit frames into the books, one frame at a time against a batch at a time.

In one process, alternating, on the seed shock recording (bench/workload.py, cached): each set of
frames is read in source batches of SOURCE_BATCH_MAX frames and every batch's book updates are
applied to a BookStore (the chain step's books, operators/state/book.py), two ways:

  frame by frame   connectors.venues.deribit.parse_frame per frame — msgspec decodes the levels,
                   each side becomes a small array — then the store's apply (what a live client
                   does with a frame that arrives alone);
  batch            parse_frames per batch — msgspec decodes the envelopes, one compiled pass reads
                   every level list of the batch into one array (connectors/venues/deribit/levels.py)
                   — then the same apply (what a live client does with 16 or more frames waiting);
  columns          parse_columns per batch — the same, its runs of book notifications left as
                   BookBatches (operators/events.py), no BookUpdate per frame — then the store's
                   apply_columns per BookBatch (what a replay does).

All give the same events (tests/connectors/venues/test_deribit_levels.py). The sets: the first
snapshots (every book's levels after discovery, with the tickers between them), the quiet changes
before the shock (~4 levels a frame) and the shock (every BTC book re-quoted: ~21 levels a frame). Figures are
the best of --passes passes (the machine drifts; the best pass is the least disturbed), per
frame and per set. Prints a table with the machine, the date and the command; asserts nothing.

    .venv/bin/python bench/bench_parse.py [--passes 15] [--cache-dir .data/bench]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe_machine  # noqa: E402
from bench.workload import add_cache_dir, seed_shock  # noqa: E402
from connectors.venues.base import SOURCE_BATCH_MAX  # noqa: E402
from connectors.venues.deribit import levels  # noqa: E402
from connectors.venues.deribit.parse import parse_columns, parse_frame, parse_frames  # noqa: E402
from operators.events import BookBatch, BookUpdate  # noqa: E402
from operators.state.book import BookStore  # noqa: E402


def frame_by_frame(raws: list, stamps: list) -> list:
    return [ev for raw, ts in zip(raws, stamps) for ev in parse_frame(raw, ts, 1 << 26)]


def batch(raws: list, stamps: list) -> list:
    return parse_frames(raws, stamps, 1 << 26)


def columns(raws: list, stamps: list) -> list:
    return parse_columns(raws, stamps, 1 << 26)


def one_pass(parse, raws: list, stamps: list) -> tuple[float, float, int]:
    """Seconds parsing, seconds applying, book updates applied: the frames in source batches."""
    store = BookStore(levels_on=True)
    rows: dict[str, int] = {}

    def row_of(name: str) -> int:
        row = rows.get(name)
        if row is None:
            row = rows[name] = store.add(None)
        return row

    parse_s = apply_s = 0.0
    n_books = 0
    for lo in range(0, len(raws), SOURCE_BATCH_MAX):
        started = time.perf_counter()
        events = parse(raws[lo:lo + SOURCE_BATCH_MAX], stamps[lo:lo + SOURCE_BATCH_MAX])
        parsed = time.perf_counter()
        books = [e for e in events if type(e) is BookUpdate]
        at = [row_of(b.instrument) for b in books]
        batches = [(e, np.array([row_of(name) for name in e.instruments], np.int64)) for e in events
                   if type(e) is BookBatch]
        started_apply = time.perf_counter()
        if books:
            store.apply(books, at)
        for batch_, batch_rows in batches:
            store.apply_columns(batch_, batch_rows)
        parse_s += parsed - started
        apply_s += time.perf_counter() - started_apply
        n_books += len(books) + sum(len(b) for b, _ in batches)
    return parse_s, apply_s, n_books


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Deribit frames into the books: frame by frame against batches.")
    p.add_argument("--passes", type=int, default=15, help="passes per way and set; the best counts (default: 15)")
    add_cache_dir(p)
    args = p.parse_args(argv)
    path, meta, frames = seed_shock(Path(args.cache_dir))
    raws, stamps = [frame for _, frame in frames], [ts for ts, _ in frames]
    shock = meta["shocks"][0]
    first, end = shock["first_frame"], shock["first_frame"] + shock["n_frames"]
    preamble = meta["preamble_frames"]
    snapshots = [i for i in range(preamble) if '"subscription"' in raws[i][:80]]  # not the listings
    sets = {"first snapshots": snapshots, "quiet changes": range(preamble, first), "shock": range(first, end)}
    levels.warm_up()
    gc.freeze()
    gc.set_threshold(300_000, 20, 20)  # as flows/surface.py tune_gc
    print(f"# Deribit frames into the books — {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"# machine: {describe_machine()}")
    print(f"# command: bench/bench_parse.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"# {path.name}: source batches of {SOURCE_BATCH_MAX:,} frames; best of {args.passes} passes, the three ways "
          "alternating")
    print()
    head = (f"{'set':16s} | {'frames':>6s} | {'levels/frame':>12s} | {'way':14s} | {'parse ms':>8s} | {'µs/frame':>8s} "
            f"| {'apply ms':>8s} | {'µs/frame':>8s} | {'total ms':>8s}")
    print(head)
    print("-" * len(head))
    for name, idx in sets.items():
        r, s = [raws[i] for i in idx], [stamps[i] for i in idx]
        n_levels = sum(len(e.bids) + len(e.asks) for e in batch(r, s) if type(e) is BookUpdate)
        best = {"frame by frame": (1e9, 1e9), "batch": (1e9, 1e9), "columns": (1e9, 1e9)}
        for _ in range(args.passes):
            for way, parse in (("frame by frame", frame_by_frame), ("batch", batch), ("columns", columns)):
                parse_s, apply_s, _n = one_pass(parse, r, s)
                best[way] = (min(best[way][0], parse_s), min(best[way][1], apply_s))
        for way, (parse_s, apply_s) in best.items():
            print(f"{name:16s} | {len(r):6,d} | {n_levels / len(r):12.1f} | {way:14s} | {1e3 * parse_s:8.1f} | "
                  f"{1e6 * parse_s / len(r):8.2f} | {1e3 * apply_s:8.1f} | {1e6 * apply_s / len(r):8.2f} | "
                  f"{1e3 * (parse_s + apply_s):8.1f}")
    print()
    print("parse = the frames' events (ticker and index frames too, as in the stream); apply = BookStore.apply "
          "of each batch's book updates, or apply_columns of each BookBatch (level vols on; the rows looked up before); "
          "levels/frame = book levels per frame of the set")
    return 0


if __name__ == "__main__":
    sys.exit(main())
