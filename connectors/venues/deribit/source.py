"""The Deribit bytewax source, one partition per currency and worker slot, and what the registry
calls to build it from [sources.deribit]: `from_config`, and `client_options` for a lone client
(`volgraph record`). Arguments graph.toml sets are required (defaults live there only); the rules
shared with other venues are ClientSource's (connectors/venues/base.py). Never parses, no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from connectors.venues.base import SOURCE_BATCH_MAX, ClientPartition, ClientSource
from connectors.venues.deribit.client import DeribitClient
from connectors.venues.deribit.parse import grouped_depth


class DeribitSource(ClientSource):
    """One partition per currency ("deribit-BTC"), each owning its own DeribitClient; on a
    cluster (route_workers > 1) one per currency and worker slot (see ClientSource).

    snapshot() is None: a live source resubscribes after a restart and every book starts again
    from a fresh snapshot. `run_seconds` ends the partition (StopIteration) after that long,
    for tests and `--seconds` runs. `max_expiries`/`max_strikes` trim the chain for small runs.
    `book`: "incremental" (book.{instrument}.{interval}: a snapshot, then changes chained by
    change_id) or "grouped" (book.{instrument}.none.{N}.{interval}, N the Deribit depth ≥
    `depth`: every notification a whole snapshot of the top levels — no chain to break, and a
    move of every level costs one short frame instead of a delete and a new per level).
    Other keyword arguments go to DeribitClient.
    """

    def __init__(self, url: str, currencies: Iterable[str], *, depth: int, book: str, interval: str,
                 heartbeat_s: float, refresh_s: float, queue_max: int, max_frame_bytes: int,
                 run_seconds: Optional[float] = None,
                 max_expiries: Optional[int] = None, max_strikes: Optional[int] = None,
                 batch_max: int = SOURCE_BATCH_MAX, idle_ms: float = 5.0, route_workers: int = 1, **client_kwargs: Any):
        self.url = url
        self.currencies = tuple(c.upper() for c in currencies)
        super().__init__("deribit", self.currencies, queue_max=queue_max, max_frame_bytes=max_frame_bytes,
                         max_expiries=max_expiries, max_strikes=max_strikes, run_seconds=run_seconds,
                         batch_max=batch_max, idle_ms=idle_ms, refresh_s=refresh_s, client_kwargs=client_kwargs,
                         route_workers=route_workers)
        if book not in ("incremental", "grouped"):
            raise ValueError(f"book={book!r}: use \"grouped\" or \"incremental\"")
        # levels per side asked of the venue (grouped: rounded up to 1/10/20); an incremental book always
        # carries every level, and every level received is kept (a change can uncover any of them)
        self.depth = depth
        self.book_depth = grouped_depth(depth) if book == "grouped" else None
        self.interval = interval
        self.heartbeat_s = heartbeat_s

    def make_client(self, currency: str, slot: int) -> DeribitClient:
        return DeribitClient(self.url, (currency,), interval=self.interval, heartbeat_s=self.heartbeat_s,
                             book_depth=self.book_depth, **self.client_options(slot))


DeribitPartition = ClientPartition  # one started DeribitClient, drained in batches


def client_options(section: Any) -> dict[str, Any]:
    """The DeribitClient keyword arguments a [sources.deribit] section (flows/config.py
    DeribitSourceConfig) sets, url and currencies included."""
    return dict(url=section.url, currencies=tuple(section.currencies), interval=section.book_interval,
                heartbeat_s=section.heartbeat_s, refresh_s=section.refresh_s, queue_max=section.queue_max,
                max_frame_bytes=section.max_frame_bytes)


def from_config(section: Any, *, url: Optional[str] = None, run_seconds: Optional[float] = None,
                route_workers: int = 1) -> DeribitSource:
    """A DeribitSource from a [sources.deribit] section (flows/config.py DeribitSourceConfig);
    `url` overrides section.url (a local simulator)."""
    options = client_options(section)
    options["url"] = url or section.url
    return DeribitSource(**options, depth=section.depth, book=section.book, run_seconds=run_seconds,
                         route_workers=route_workers)
