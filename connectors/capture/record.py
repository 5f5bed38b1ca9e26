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
from typing import Any, Iterator, Optional, Sequence, TextIO, Union

from connectors.capture.replay import write_frames

VENUES = ("deribit", "okx")
_PROGRESS_EVERY_S = 1.0


def _client(venue: str, url: Optional[str], keys: Optional[Sequence[str]], tap, client_kwargs: dict):
    if venue == "deribit":
        from connectors.venues.deribit import DEFAULT_URL, DeribitClient

        return DeribitClient(url or DEFAULT_URL, tuple(keys or ("BTC", "ETH")), frame_tap=tap, **client_kwargs)
    from connectors.venues.okx import DEFAULT_URL, OkxClient

    return OkxClient(url or DEFAULT_URL, tuple(keys or ("BTC-USD", "ETH-USD")), frame_tap=tap, **client_kwargs)


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def record(venue: str, out: Union[str, Path], *, url: Optional[str] = None, seconds: Optional[float] = None,
           currencies: Optional[Sequence[str]] = None, families: Optional[Sequence[str]] = None,
           stop: Optional[threading.Event] = None, progress: Optional[TextIO] = sys.stderr,
           **client_kwargs: Any) -> dict:
    """Record `venue` ("deribit" with `currencies`, or "okx" with `families`) from `url` (the
    venue's public endpoint by default) into `out` until `seconds` pass, `stop` is set or Ctrl-C.

    Other keyword arguments go to the venue's client (max_expiries, max_strikes, heartbeat_s, …).
    A progress line (frames, bytes, elapsed) goes to `progress` (None: silent). The file is
    written under a temporary name and renamed when complete. Returns the counters: frames,
    bytes (raw frame bytes), seconds, events (parsed by the client and dropped here),
    file_bytes, out, and client (the client's own counters at the end).
    """
    if venue not in VENUES:
        raise ValueError(f"venue={venue!r}: use one of {', '.join(VENUES)}")
    if venue == "deribit" and families:
        raise ValueError("families= is for venue 'okx'; Deribit records currencies=('BTC', 'ETH')")
    if venue == "okx" and currencies:
        raise ValueError("currencies= is for venue 'deribit'; OKX records families=('BTC-USD', 'ETH-USD')")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds={seconds}: must be > 0, or None to record until stopped")
    out = Path(out)
    stop = stop or threading.Event()
    frames: "queue.SimpleQueue[tuple[int, str]]" = queue.SimpleQueue()
    # The tap runs on the client's loop: one put on a lock-free queue, nothing that can raise.
    client = _client(venue, url, families if venue == "okx" else currencies,
                     lambda ts_ms, frame: frames.put((ts_ms, frame)), client_kwargs)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`volgraph record --venue deribit|okx --out FILE [--url URL] [--seconds N]
    [--currencies BTC,ETH | --families BTC-USD,…]`."""
    p = argparse.ArgumentParser(prog="volgraph record",
                                description="Record a venue's raw websocket frames (with receive timestamps) "
                                            "to a gzip JSON-lines file for `volgraph replay`.")
    p.add_argument("--venue", required=True, choices=VENUES)
    p.add_argument("--out", required=True, help="the recording to write, e.g. deribit-btc.jsonl.gz")
    p.add_argument("--url", default=None, help="websocket URL (default: the venue's public endpoint)")
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--currencies", default=None, help="Deribit currencies, comma-separated (default BTC,ETH)")
    keys.add_argument("--families", default=None, help="OKX instrument families (default BTC-USD,ETH-USD)")
    p.add_argument("--max-expiries", type=int, default=None, help="record only the nearest N expiries")
    p.add_argument("--max-strikes", type=int, default=None, help="record only the N strikes nearest the index")
    args = p.parse_args(argv)
    if args.venue == "deribit" and args.families:
        p.error("--families is for --venue okx; Deribit takes --currencies BTC,ETH")
    if args.venue == "okx" and args.currencies:
        p.error("--currencies is for --venue deribit; OKX takes --families BTC-USD,ETH-USD")
    if args.seconds is not None and not args.seconds > 0:
        p.error(f"--seconds {args.seconds}: must be > 0 (or leave it out to record until Ctrl-C)")
    split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)
    try:
        counts = record(args.venue, args.out, url=args.url, seconds=args.seconds,
                        currencies=split(args.currencies), families=split(args.families),
                        max_expiries=args.max_expiries, max_strikes=args.max_strikes)
    except ValueError as exc:
        p.error(str(exc))
    c = counts["client"]
    print(f"volgraph record: {counts['frames']:,} frames ({_human_bytes(counts['bytes'])} raw, "
          f"{_human_bytes(counts['file_bytes'])} on disk) in {counts['seconds']:.1f} s -> {counts['out']}; "
          f"connects {c.get('connects', 0)}, reconnects {c.get('reconnects', 0)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
