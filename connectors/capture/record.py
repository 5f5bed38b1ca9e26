"""`volgraph record`: capture the raw frames a venue client receives, with their receive
timestamps, into a replay file (connectors/capture/replay.py's format: gzip JSON lines
{"ts_recv_ms", "frame"}) that `volgraph replay` and connectors.capture.replay.ReplaySource read back.

How: the venue's own client runs as in production (discovery, subscriptions, heartbeats,
resyncs, reconnects) with a `frame_tap` that hands every received frame to this module's writer
thread before it is parsed. The recording therefore starts with the instrument discovery the
replay source needs first (Deribit: the public/get_instruments responses; OKX: each REST
instruments response as the body text okx.parse_frame reads), then the first frames of each
subscription (book snapshots), then the live frames. The events the client produces meanwhile
are drained and dropped here, only counted.

The client's settings (URL, keys, queue and frame bounds, …) are graph.toml's [sources.<venue>]:
`volgraph record` (flows/cli.py) hands main() the loaded sections, and record() takes the client's
arguments explicitly; nothing here repeats a default of graph.toml, and it never imports flows.

Translation only: frames in, file out. It never computes anything about volatility and never
touches the events' contents; a failing write ends the recording loudly, never the venue loop.
"""

from __future__ import annotations

import argparse
import collections
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, TextIO, Union

from connectors.capture.replay import write_frames
from connectors.venues import VENUES as REGISTRY

VENUES = tuple(REGISTRY)  # connectors/venues/registry.py
_PROGRESS_EVERY_S = 1.0


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def record(venue: str, out: Union[str, Path], *, seconds: Optional[float] = None,
           stop: Optional[threading.Event] = None, progress: Optional[TextIO] = sys.stderr,
           **client_kwargs: Any) -> dict:
    """Record `venue` ("deribit" or "okx") into `out` until `seconds` pass, `stop` is set or Ctrl-C.

    The other keyword arguments are the venue client's: `url`, its key list by name (Deribit
    `currencies`, OKX `families`), the settings graph.toml gives it (the registry's
    client_options(section) returns them all) and any others (max_expiries, max_strikes, …).
    A progress line (frames, bytes, elapsed) goes to `progress` (None: silent). The file is
    written under a temporary name and renamed when complete. Returns the counters: frames,
    bytes (raw frame bytes), seconds, events (parsed by the client and dropped here),
    file_bytes, out, and client (the client's own counters at the end).
    """
    if venue not in VENUES:
        raise ValueError(f"venue={venue!r}: use one of {', '.join(VENUES)}")
    keys_field = REGISTRY[venue].keys_field
    for field in {v.keys_field for v in REGISTRY.values()} - {keys_field}:
        if field in client_kwargs:
            raise ValueError(f"{field}= is not for venue {venue!r}; give its {keys_field}= instead")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds={seconds}: must be > 0, or None to record until stopped")
    out = Path(out)
    stop = stop or threading.Event()
    frames: "queue.SimpleQueue[tuple[int, str]]" = queue.SimpleQueue()
    # The tap runs on the client's loop: one put on a lock-free queue, nothing that can raise.
    client = REGISTRY[venue].client()(frame_tap=lambda ts_ms, frame: frames.put((ts_ms, frame)), **client_kwargs)
    counts: collections.Counter = collections.Counter()
    started = time.monotonic()
    deadline = started + seconds if seconds is not None else None
    tty = progress is not None and getattr(progress, "isatty", lambda: False)()

    def show(final: bool = False) -> None:
        if progress is None:
            return
        line = (f"record {venue}: {counts['frames']:,} frames  {_human_bytes(counts['bytes'])}  "
                f"{time.monotonic() - started:.1f} s  -> {out}")
        if tty and not final:
            progress.write("\r" + line)
        else:
            progress.write(("\r" if tty else "") + line + "\n")
        progress.flush()

    def take(item: tuple[int, str]) -> tuple[int, str]:
        counts["frames"] += 1
        counts["bytes"] += len(item[1])
        return item

    def stream() -> Iterator[tuple[int, str]]:
        next_show = started + _PROGRESS_EVERY_S
        try:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wait_s = 0.1 if deadline is None else max(min(0.1, deadline - now), 0.0)
                try:
                    yield take(frames.get(timeout=wait_s))
                    while True:  # what else is queued, without waiting
                        yield take(frames.get_nowait())
                except queue.Empty:
                    pass
                counts["events"] += len(client.drain(1_000_000))  # not analysed here: dropped
                if now >= next_show:
                    show()
                    next_show = now + _PROGRESS_EVERY_S
        except KeyboardInterrupt:  # Ctrl-C ends the recording; the file is still completed
            pass
        client.stop()
        counts["events"] += len(client.drain(1_000_000))
        while True:  # frames received before the client stopped
            try:
                yield take(frames.get_nowait())
            except queue.Empty:
                break

    client.start()
    try:
        write_frames(out, stream())
    finally:
        client.stop()
    show(final=True)
    result = dict(counts)
    result.update(seconds=time.monotonic() - started, out=str(out), file_bytes=out.stat().st_size,
                  client=client.counters())
    return result


def main(argv: Optional[Sequence[str]] = None, *, sections: Optional[Mapping[str, Any]] = None) -> int:
    """`volgraph record --venue deribit|okx --out FILE [--url URL] [--seconds N]
    [--currencies BTC,ETH | --families BTC-USD,…]`. `sections`: venue name -> its graph.toml
    [sources.<venue>] section (flows/config.py), which `volgraph record` hands over: the client's
    settings and the defaults of --url and the key list come from there."""
    p = argparse.ArgumentParser(prog="volgraph record",
                                description="Record a venue's raw websocket frames (with receive timestamps) "
                                            "to a gzip JSON-lines file for `volgraph replay`.")
    p.add_argument("--venue", required=True, choices=VENUES, help="whose feed to record (required)")
    p.add_argument("--out", required=True, help="the recording to write, e.g. deribit-btc.jsonl.gz")
    p.add_argument("--url", default=None, help="websocket URL (default: graph.toml sources.<venue>.url)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--currencies", default=None,
                      help="Deribit currencies, comma-separated (default: graph.toml sources.deribit.currencies)")
    keys.add_argument("--families", default=None,
                      help="OKX instrument families (default: graph.toml sources.okx.families)")
    p.add_argument("--max-expiries", type=int, default=None, help="record only the nearest N expiries")
    p.add_argument("--max-strikes", type=int, default=None, help="record only the N strikes nearest the index")
    args = p.parse_args(argv)
    v = REGISTRY[args.venue]
    for field in ("currencies", "families"):
        if getattr(args, field) and field != v.keys_field:
            p.error(f"--{field} is not for --venue {v.name}; {v.label} takes --{v.keys_field}")
    if args.seconds is not None and not args.seconds > 0:
        p.error(f"--seconds {args.seconds}: must be > 0 (or leave it out to record until Ctrl-C)")
    if sections is None or v.name not in sections:
        p.error("the client's settings come from graph.toml [sources.%s]: run this as `volgraph record`" % v.name)
    options = v.client_options()(sections[v.name])
    if args.url:
        options["url"] = args.url
    keys = getattr(args, v.keys_field)
    if keys:
        options[v.keys_field] = tuple(x.strip() for x in keys.split(",") if x.strip())
    try:
        counts = record(args.venue, args.out, seconds=args.seconds, max_expiries=args.max_expiries,
                        max_strikes=args.max_strikes, **options)
    except ValueError as exc:
        p.error(str(exc))
    c = counts["client"]
    print(f"volgraph record: {counts['frames']:,} frames ({_human_bytes(counts['bytes'])} raw, "
          f"{_human_bytes(counts['file_bytes'])} on disk) in {counts['seconds']:.1f} s -> {counts['out']}; "
          f"connects {c.get('connects', 0)}, reconnects {c.get('reconnects', 0)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # without graph.toml's sections it says to run `volgraph record`
    raise SystemExit(main())
