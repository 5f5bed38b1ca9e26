"""Deterministic benchmark workloads: recorded raw Deribit frames, made offline (no socket) by the
exchange simulator's own market and frame code (connectors.sim.deribit), cached as replay files
(connectors.capture.replay format) under .data/bench/ keyed by their parameters.

A workload file is what a live session would have recorded: the public/get_instruments
responses, the first frame of every subscribed channel (book snapshots, tickers, index), then
the live stream — ≈90 % book changes, option and future tickers, index prices, burst ticks —
with 1 % spot shocks where every book of the underlying is re-quoted at once.

Scenarios: "seed" (BTC ~4,000 and ETH ~2,000 options, 8 levels a side; a BTC shock re-quotes
4,008 books, 64,000+ levels; 3 M live frames, lengthened for longer runs) and "small"
(tests; 48 options per currency). `workload_for(scenario, seconds)` lengthens a workload so a
run of `seconds` at HEADROOM_MSG_S does not reach its end (a recording cannot be looped: the
books' change ids would go back).

split_recording() makes the per-partition files of a workload — the same frames, each file
with its own discovery preamble, as the live source's partitions would have recorded them:
one per currency, or one per (currency, worker slot) so each process reads only the
expiries it computes (connectors/venues/placement.py) — for the scale-out (2-process) runs.

    .venv/bin/python bench/workload.py --scenario seed          # build (or find) the cache

Benchmark input only: it never runs the dataflow and never opens a socket.
"""

from __future__ import annotations

import argparse
import calendar
import dataclasses
import gzip
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from connectors.venues.deribit import VENUE, parse_instrument_name  # noqa: E402
from connectors.capture.replay import recording_line, write_frames  # noqa: E402
from connectors.sim.deribit import Simulator  # noqa: E402
from connectors.venues.placement import Placement, slot_names  # noqa: E402

FORMAT_VERSION = 4
CACHE_DIR = REPO / ".data" / "bench"
START_MS = calendar.timegm((2026, 1, 5, 9, 0, 0)) * 1000  # a Monday, 09:00 UTC
TICK_MS = 100  # the simulator's market tick; frames inside a tick are spread evenly over it


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that determines the frames (the cache key is a hash of it)."""

    scale: str = "seed"  # connectors.sim.market.SCALES
    seed: int = 7
    n_messages: int = 1_000_000  # live frames after the preamble, shock frames not counted
    rate_msg_s: float = 50_000.0  # nominal exchange rate outside bursts (sets timestamps)
    book_share: float = 0.90
    future_ticker_share: float = 0.01  # the rest of the non-book frames are option tickers
    index_every_ticks: int = 10  # one deribit_price_index frame per currency per second
    burst_prob: float = 0.05  # a burst tick carries burst_mult × the frames in the same 100 ms
    burst_mult: float = 3.0
    shock_at: tuple[float, ...] = (0.25, 0.75)  # fractions of n_messages where a shock starts
    shock_underlying: str = "BTC"
    shock_move: float = 0.01  # +1 % spot, every book of the underlying re-quoted
    warmup_s: float = 0.0  # quiet traffic before the first live frame (shock files)
    warmup_rate_msg_s: float = 2_000.0
    currencies: tuple[str, ...] = ("BTC", "ETH")
    # the book channel recorded, as graph.toml's sources.deribit.book: "incremental" records
    # book.X.100ms (changes chained by change_id), "grouped" book.X.none.<book_depth>.100ms
    # (whole top-level snapshots)
    book: str = "incremental"
    book_depth: int = 10

    def key(self) -> str:
        fields = dataclasses.asdict(self)
        if self.book == "incremental":  # the recordings made before grouped books existed keep their key
            del fields["book"], fields["book_depth"]
        raw = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha1(raw).hexdigest()[:10]


SCENARIOS: dict[str, WorkloadSpec] = {
    "seed": WorkloadSpec(n_messages=3_000_000),
    "small": WorkloadSpec(scale="small", n_messages=40_000, rate_msg_s=5_000.0, shock_at=(0.5,)),
}


# a max-speed run of N seconds must not run out below this rate: the 2-process row ran 315,614–352,747
# msg/s on 2026-12-07 (docs/benchmarks.md, "Book notifications in columns") and read the 3.0 M frames
# 150,000 gave a 10 s run in under 10 s, its final flush then in its figures
HEADROOM_MSG_S = 400_000.0
HEADROOM_SCENARIOS = ("seed",)  # "small" is for tests: reaching its end early is fine there


def workload_for(scenario: str, seconds: Optional[float], n_messages: Optional[int] = None) -> WorkloadSpec:
    """The scenario's spec; with n_messages given, exactly that many live frames; otherwise
    lengthened (in whole millions) so `seconds` at HEADROOM_MSG_S stays inside it."""
    spec = SCENARIOS[scenario]
    if n_messages:
        return dataclasses.replace(spec, n_messages=n_messages)
    if seconds and scenario in HEADROOM_SCENARIOS:
        need = int(math.ceil(seconds * HEADROOM_MSG_S / 1e6)) * 1_000_000
        if need > spec.n_messages:
            return dataclasses.replace(spec, n_messages=need)
    return spec


def shock_spec(scenario: str) -> WorkloadSpec:
    """A file for the shock row alone: preamble, 6 s of quiet traffic (the engine settles),
    one shock, then 2 s of quiet traffic. The tests' "small" scenario settles for 2 s and
    ends 1 s after (its shock rows replay at real time: 5 of them were a third of the
    test suite's longest test)."""
    base = SCENARIOS[scenario]
    seed = base.scale == "seed"
    quiet = 2_000.0 if seed else 500.0
    n_after = int(quiet * (2 if seed else 1))
    return dataclasses.replace(base, n_messages=n_after, rate_msg_s=quiet, burst_prob=0.0, shock_at=(0.0,),
                               warmup_s=6.0 if seed else 2.0, warmup_rate_msg_s=quiet)


@dataclass
class Meta:
    spec: dict
    frames: int = 0
    preamble_frames: int = 0
    first_live_ts_ms: int = 0
    last_ts_ms: int = 0
    live_frames: int = 0
    avg_rate_msg_s: float = 0.0
    n_options: dict = field(default_factory=dict)
    depth: int = 0
    kinds: dict = field(default_factory=dict)
    shocks: list = field(default_factory=list)  # [{underlying, ts_ms, first_frame, n_frames, n_books, levels}]


def _channels(sim: Simulator, currency: str, spec: WorkloadSpec) -> tuple[list[str], list[str], list[str]]:
    options = sim.instrument_names(currency, "option")
    futures = sim.instrument_names(currency, "future")
    if spec.book == "grouped":
        books = [f"book.{n}.none.{spec.book_depth}.100ms" for n in options]
    else:
        books = [f"book.{n}.100ms" for n in options]
    opt_tickers = [f"ticker.{n}.100ms" for n in options]
    fut_tickers = [f"ticker.{n}.100ms" for n in futures]
    return books, opt_tickers, fut_tickers


def generate(spec: WorkloadSpec, meta: Meta, progress=None) -> Iterator[tuple[int, bytes]]:
    """Yield (ts_ms, frame) in order; fills `meta` as it goes. ts_recv_ms = exchange timestamp."""
    # offline: never started, so it never listens and its rate never paces anything (this generator does)
    sim = Simulator(host="127.0.0.1", port=0, rate=0, scale=spec.scale, seed=spec.seed, now_ms=START_MS,
                    currencies=spec.currencies, tick_ms=TICK_MS, book_share=spec.book_share)
    rng = random.Random(f"workload-{spec.seed}")
    meta.depth = sim.depth
    kinds = {"instruments": 0, "snapshot": 0, "book": 0, "option_ticker": 0, "future_ticker": 0, "index": 0,
             "shock": 0}
    n = 0

    def emit(ts: int, frame: Optional[bytes], kind: str):
        nonlocal n
        if frame is None:
            return None
        n += 1
        kinds[kind] += 1
        if progress is not None and n % 50_000 == 0:
            progress(n)
        return ts, frame

    # --- preamble: discovery, then every channel's first frame, in the client's order
    ts = START_MS
    req = 1
    per_cur = {}
    for cur in spec.currencies:
        for kind in ("option", "future"):
            yield emit(ts, sim.offline_instruments_frame(cur, kind, req_id=req, ts_ms=ts), "instruments")
            req += 1
    for cur in spec.currencies:
        books, opt_tickers, fut_tickers = _channels(sim, cur, spec)
        per_cur[cur] = (books, opt_tickers, fut_tickers)
        meta.n_options[cur] = len(books)
        for b, t in zip(books, opt_tickers):
            yield emit(ts, sim.offline_initial_frame(b, ts), "snapshot")
            yield emit(ts, sim.offline_initial_frame(t, ts), "option_ticker")
        for t in fut_tickers:
            yield emit(ts, sim.offline_initial_frame(t, ts), "future_ticker")
        yield emit(ts, sim.offline_initial_frame(f"deribit_price_index.{cur.lower()}_usd", ts), "index")
    meta.preamble_frames = n
    all_books = [b for cur in spec.currencies for b in per_cur[cur][0]]
    all_opt_tickers = [t for cur in spec.currencies for t in per_cur[cur][1]]
    all_fut_tickers = [t for cur in spec.currencies for t in per_cur[cur][2]]
    indices = [f"deribit_price_index.{cur.lower()}_usd" for cur in spec.currencies]

    def tick_frames(n_frames: int, tick_no: int):
        sim.advance(1)
        t0 = sim.now_ms()
        out = []
        if tick_no % spec.index_every_ticks == 0:
            out += [(ch, "index") for ch in indices]
        for _ in range(max(n_frames - len(out), 0)):
            r = rng.random()
            if r < spec.book_share:
                out.append((all_books[int(rng.random() * len(all_books))], "book"))
            elif r < spec.book_share + spec.future_ticker_share:
                out.append((all_fut_tickers[int(rng.random() * len(all_fut_tickers))], "future_ticker"))
            else:
                out.append((all_opt_tickers[int(rng.random() * len(all_opt_tickers))], "option_ticker"))
        for j, (ch, kind) in enumerate(out):
            ts_j = t0 + (j * TICK_MS) // max(len(out), 1)
            yield emit(ts_j, sim.offline_frame(ch, ts_j), kind)

    # --- warm-up: quiet traffic (shock files let the engine settle first)
    tick_no = 0
    for _ in range(int(spec.warmup_s * 1000 / TICK_MS)):
        tick_no += 1
        yield from tick_frames(max(int(spec.warmup_rate_msg_s * TICK_MS / 1000), 1), tick_no)

    # --- live stream
    live_start = n
    shock_marks = sorted(int(f * spec.n_messages) for f in spec.shock_at)
    per_tick = max(int(spec.rate_msg_s * TICK_MS / 1000), 1)
    first_live = None
    shocked = 0  # shock frames so far (not counted in n_messages)
    while n - live_start - shocked < spec.n_messages:
        if shock_marks and n - live_start - shocked >= shock_marks[0]:
            shock_marks.pop(0)
            before = n
            yield from _shock(sim, spec, per_cur[spec.shock_underlying], meta, emit, lambda: n)
            shocked += n - before
            continue
        tick_no += 1
        burst = rng.random() < spec.burst_prob
        k = min(int(per_tick * (spec.burst_mult if burst else 1.0)), spec.n_messages - (n - live_start - shocked))
        for item in tick_frames(k, tick_no):
            if first_live is None and item is not None:
                first_live = item[0]
            yield item
    meta.frames = n
    meta.live_frames = n - live_start
    meta.kinds = kinds
    meta.first_live_ts_ms = first_live or START_MS
    meta.last_ts_ms = sim.now_ms()
    span_s = max((meta.last_ts_ms - meta.first_live_ts_ms) / 1000.0, 1e-3)
    meta.avg_rate_msg_s = meta.live_frames / span_s


def _shock(sim: Simulator, spec: WorkloadSpec, channels, meta: Meta, emit, count):
    books, _, fut_tickers = channels
    und = spec.shock_underlying
    sim.advance(1)
    sim.offline_shock(und, spec.shock_move)
    ts = sim.now_ms()
    first = count()
    levels = 0
    by_depth = [0] * (sim.depth + 1)  # level prices within the top d of each side, d = 1..depth
    yield emit(ts, sim.offline_frame(f"deribit_price_index.{und.lower()}_usd", ts), "shock")
    for ch in fut_tickers:
        yield emit(ts, sim.offline_frame(ch, ts), "shock")
    last_frame: dict[str, int] = {}  # expiry_ms → index of its last shock frame
    for ch in books:
        frame = sim.offline_frame(ch, ts)
        if frame is not None:
            last_frame[str(parse_instrument_name(ch.split(".")[1])[1])] = count()
            bids, asks = sim.quote_levels(ch.split(".")[1])
            levels += len(bids) + len(asks)
            for d in range(1, sim.depth + 1):
                by_depth[d] += min(len(bids), d) + min(len(asks), d)
        yield emit(ts, frame, "shock")
    meta.shocks.append({"underlying": und, "ts_ms": ts, "first_frame": first, "n_frames": count() - first,
                        "n_books": len(books), "levels": levels, "move": spec.shock_move,
                        "levels_by_depth": {str(d): by_depth[d] for d in range(1, sim.depth + 1)},
                        "expiry_last_frame": last_frame})


def workload_path(spec: WorkloadSpec, name: str = "workload", cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"{name}_{spec.scale}_s{spec.seed}_n{spec.n_messages}_{spec.key()}_v{FORMAT_VERSION}.jsonl.gz"


def ensure_workload(spec: WorkloadSpec, name: str = "workload", cache_dir: Path = CACHE_DIR,
                    quiet: bool = False) -> tuple[Path, dict]:
    """The cached recording for `spec` (generated on first use) and its metadata."""
    path = workload_path(spec, name, cache_dir)
    meta_path = path.with_name(path.name.replace(".jsonl.gz", ".meta.json"))
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    meta = Meta(spec=dataclasses.asdict(spec))
    started = time.monotonic()

    def progress(k: int) -> None:
        if not quiet:
            print(f"\r# generating {path.name}: {k:,} frames ({time.monotonic() - started:.0f} s)",
                  end="", file=sys.stderr, flush=True)

    write_frames(path, (x for x in generate(spec, meta, progress) if x is not None))
    if not quiet:
        print(f"\r# generated {path.name}: {meta.frames:,} frames in {time.monotonic() - started:.1f} s"
              + " " * 10, file=sys.stderr, flush=True)
    meta_path.write_text(json.dumps(dataclasses.asdict(meta), indent=1))
    return path, dataclasses.asdict(meta)


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    """The --cache-dir option of a benchmark reading cached workloads."""
    parser.add_argument("--cache-dir", default=str(CACHE_DIR), help="where workloads are cached (default: .data/bench)")


def seed_shock(cache_dir: Path = CACHE_DIR) -> tuple[Path, dict, list[tuple[int, str]]]:
    """The seed scenario's shock recording (generated and cached if need be): its path, its meta
    and every frame as (ts_recv_ms, frame), in order."""
    path, meta = ensure_workload(shock_spec("seed"), "shock", cache_dir)
    records = [orjson.loads(line) for line in gzip.open(path, "rb").read().splitlines()]
    return path, meta, [(r["ts_recv_ms"], r["frame"]) for r in records]


_CURRENCY_RE = re.compile(rb'"instrument_name\\?":\\?"([A-Z0-9]+)-|"index_name\\?":\\?"([a-z0-9]+)_')
_NAME_RE = re.compile(rb'"instrument_name\\?":\\?"([A-Za-z0-9_.-]+)')
_LIST_RE = re.compile(rb'"result\\?":\[')
SPLIT_RULE = "placement; instrument lists per slot"  # in each split's meta: a cache split otherwise is redone


def recording_placements(path: Path, meta: dict, workers: int) -> Placement:
    """The expiry placement every slot's client would make of this recording: the options
    subscribed (each has a first frame in the preamble) counted per expiry and placed at the
    first live frame's time by connectors.venues.placement.Placement, as the live source does."""
    listings: dict[str, dict[int, set]] = {}
    with gzip.open(path, "rb") as fh:
        for i, line in enumerate(fh):
            if i >= meta["preamble_frames"]:
                break
            name = _NAME_RE.search(line)
            if name is None or _LIST_RE.search(line):
                continue
            underlying, expiry_ms, strike, _ = parse_instrument_name(name.group(1).decode())
            if strike is not None:
                listings.setdefault(underlying, {}).setdefault(expiry_ms, set()).add(name.group(1))
    placement = Placement(workers)
    for underlying, listing in sorted(listings.items()):
        # a recording keeps no listing times: every option is one listed before the start
        placement.assign(underlying, [(e, 0) for e, names in listing.items() for _ in names], meta["first_live_ts_ms"])
    return placement


def _frame_targets(line: bytes, lineno: int, path: Path, placement: Placement) -> tuple[str, Optional[int]]:
    """(currency, worker slot) a recorded line belongs to; slot None: every slot of the currency
    (instrument lists, index prices, perpetuals: what every partition's connection receives; an
    instrument list is cut to each slot's rows on the way, `_slot_lists`)."""
    m = _CURRENCY_RE.search(line)
    if m is None:
        raise ValueError(f"{path}:{lineno}: cannot tell which currency this frame belongs to (no "
                         "instrument_name or index_name); split_recording needs Deribit option, "
                         f"future or index frames: {line[:120]!r}")
    currency = (m.group(1) or m.group(2)).decode().upper()
    if placement.workers == 1 or m.group(2) is not None or _LIST_RE.search(line):
        return currency, None
    underlying, expiry_ms, _, _ = parse_instrument_name(_NAME_RE.search(line).group(1).decode())
    return currency, placement.slot_of(VENUE, underlying, expiry_ms)


def _slot_lists(line: bytes, placement: Placement) -> list[bytes]:
    """An instrument-list response as each slot's client announces it, one line per slot: the
    rows of the expiries placed on that slot and of none (perpetuals), as VenueClient.on_this_worker
    decides. Every slot's connection receives the whole list, but its client announces only what
    it reads; given the whole list, each process of a cluster run kept a chain for every expiry,
    half of them without a book, ticking on each index price (~1 ms each, 2026-12-07)."""
    row = orjson.loads(line)
    frame = orjson.loads(row["frame"])
    rows = frame.get("result") if isinstance(frame, dict) else None
    if not isinstance(rows, list):
        return [line] * placement.workers

    def slot(r) -> Optional[int]:
        try:
            underlying, expiry_ms, _, _ = parse_instrument_name(r["instrument_name"])
        except (KeyError, TypeError, ValueError):
            return None  # not an instrument row this rule reads: every slot keeps it
        return placement.slot_of(VENUE, underlying, expiry_ms)

    slots = [slot(r) for r in rows]
    return [recording_line(row["ts_recv_ms"], orjson.dumps(dict(frame, result=[r for r, k in zip(rows, slots)
                                                                              if k is None or k == worker])))
            for worker in range(placement.workers)]


def split_path(path: Path, part: str) -> Path:
    return path.with_name(path.name.replace(".jsonl.gz", f".{part}.jsonl.gz"))


def split_recording(path: Path, meta: dict, workers: int = 1, quiet: bool = False) -> dict[str, tuple[Path, dict]]:
    """Per-partition recordings of a workload (cached beside it): {part: (path, meta)}, as the
    live source's partitions would have recorded them — one per currency, or with `workers`
    > 1 one per (currency, worker slot) named by connectors.venues.placement.slot_names ("BTC.w0of2"): a
    slot keeps the options and futures of the expiries placed on it (`recording_placements`,
    the live source's rule), plus what every connection of that currency receives (instrument
    lists, index, perpetual), so slot k read on worker k never ships a book event to another
    process (flows/routing.py salts the chain keys to run there).

    Each keeps its frames in their order, so it starts with its own discovery preamble. Its
    meta is the workload's restated for the file: frames, preamble_frames, first_live_ts_ms,
    last_ts_ms, live_frames, avg_rate_msg_s, n_options of its currency, and the shocks of its
    currency with first_frame, n_frames and expiry_last_frame counted in the file."""
    currencies = list(meta["spec"]["currencies"])
    parts = {(c, k): name for c in currencies for k, name in enumerate(slot_names(c, workers))}
    slot_of_part = {name: k for (_, k), name in parts.items()}
    out = {name: (split_path(path, name), split_path(path, name).with_name(
        split_path(path, name).name.replace(".jsonl.gz", ".meta.json"))) for name in parts.values()}
    if all(p.exists() and m.exists() for p, m in out.values()):
        cached = {name: (p, json.loads(m.read_text())) for name, (p, m) in out.items()}
        # else split by an older rule: the hash (no placement), or every slot given whole instrument lists
        if workers == 1 or all(m.get("split_rule") == SPLIT_RULE for _, m in cached.values()):
            return cached
    started = time.monotonic()
    placement = recording_placements(path, meta, workers)
    shock_spans = [(s["first_frame"], s["first_frame"] + s["n_frames"], s) for s in meta["shocks"]]
    expiry_last = {i: (s, e) for s in meta["shocks"] for e, i in s.get("expiry_last_frame", {}).items()}
    shocks: dict[str, list[dict]] = {name: [] for name in out}
    counts = dict.fromkeys(out, 0)
    preamble = dict.fromkeys(out, 0)
    first_live: dict[str, Optional[int]] = dict.fromkeys(out)
    last_ts = dict.fromkeys(out, 0)
    tmps = {name: p.with_name(p.name + f".tmp{os.getpid()}") for name, (p, _) in out.items()}
    writers = {name: gzip.open(tmps[name], "wb", compresslevel=3) for name in out}
    try:
        with gzip.open(path, "rb") as fh:
            for i, line in enumerate(fh):
                if not line.strip():
                    continue
                cur, slot = _frame_targets(line, i + 1, path, placement)
                if cur not in currencies:
                    raise ValueError(f"{path}:{i + 1}: frame of {cur}, not one of the workload's "
                                     f"currencies {currencies}")
                names = [parts[(cur, slot)]] if slot is not None else [parts[(cur, k)] for k in range(workers)]
                ts = None if i < meta["preamble_frames"] else int(line[line.index(b":") + 1:line.index(b",")])
                lines = _slot_lists(line, placement) if workers > 1 and _LIST_RE.search(line) else None
                for name in names:
                    writers[name].write(line if lines is None else lines[slot_of_part[name]])
                    for lo, hi, shock in shock_spans:
                        if lo <= i < hi:
                            mine = _file_shock(shocks[name], shock)
                            if mine["n_frames"] == 0:
                                mine["first_frame"] = counts[name]
                            mine["n_frames"] += 1
                    if i in expiry_last:
                        shock, expiry = expiry_last[i]
                        _file_shock(shocks[name], shock)["expiry_last_frame"][expiry] = counts[name]
                    if ts is None:
                        preamble[name] += 1
                    else:
                        first_live[name] = first_live[name] or ts
                        last_ts[name] = ts
                    counts[name] += 1
    finally:
        for w in writers.values():
            w.close()
    result = {}
    for (cur, slot), name in parts.items():
        p, mpath = out[name]
        os.replace(tmps[name], p)
        first = first_live[name] or meta["first_live_ts_ms"]
        span_s = max((last_ts[name] - first) / 1000.0, 1e-3)
        m = dict(meta, frames=counts[name], preamble_frames=preamble[name], live_frames=counts[name] - preamble[name],
                 first_live_ts_ms=first, last_ts_ms=last_ts[name], avg_rate_msg_s=(counts[name] - preamble[name]) / span_s,
                 n_options={cur: meta["n_options"][cur]}, shocks=[s for s in shocks[name] if s["n_frames"]],
                 kinds={}, currency=cur, slot=slot, workers=workers, split_of=path.name,
                 placement={str(e): k for e, k in sorted(placement.placed(cur).items())}, split_rule=SPLIT_RULE)
        mpath.write_text(json.dumps(m, indent=1))
        result[name] = (p, m)
    if not quiet:
        held = {(cur, k): [n for e, n in placement.weights(cur).items() if placement.placed(cur)[e] == k]
                for cur, k in parts}
        said = []
        for key, name in parts.items():
            slot_note = f" ({len(held[key])} expiries, {sum(held[key]):,} options)" if key[1] is not None else ""
            said.append(f"{name} {result[name][1]['frames']:,} frames{slot_note}")
        print(f"# split {path.name} per partition in {time.monotonic() - started:.1f} s: " + ", ".join(said),
              file=sys.stderr, flush=True)
    return result


def _file_shock(file_shocks: list[dict], shock: dict) -> dict:
    """This file's copy of a workload shock (its frame indices are renumbered per file)."""
    for s in file_shocks:
        if s["ts_ms"] == shock["ts_ms"] and s["underlying"] == shock["underlying"]:
            return s
    mine = dict(json.loads(json.dumps(shock)), n_frames=0, expiry_last_frame={})
    file_shocks.append(mine)
    return mine


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Build (or find) a cached benchmark workload.")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="seed")
    p.add_argument("--messages", type=int, default=None, help="live frames (default: the scenario's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--split", action="store_true", help="also write the per-partition files")
    p.add_argument("--workers", type=int, default=1, help="with --split: one file per currency and worker slot")
    args = p.parse_args(argv)
    spec = workload_for(args.scenario, None, args.messages)
    if args.seed is not None:
        spec = dataclasses.replace(spec, seed=args.seed)
    for name, s in (("workload", spec), ("shock", shock_spec(args.scenario))):
        path, meta = ensure_workload(s, name)
        print(f"{path}  frames={meta['frames']:,} preamble={meta['preamble_frames']:,} "
              f"rate≈{meta['avg_rate_msg_s']:,.0f}/s options={meta['n_options']} shocks={meta['shocks']}")
        if args.split and name == "workload":
            for cur, (p2, m2) in split_recording(path, meta, args.workers).items():
                print(f"{p2}  frames={m2['frames']:,} preamble={m2['preamble_frames']:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
