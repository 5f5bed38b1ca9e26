"""OkxSource: a partition per instrument family and worker slot. `from_config([sources.okx])`
and `client_options` are the registry's way in. No parsing and no I/O here: OkxClient does both.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from connectors.venues.base import SOURCE_BATCH_MAX, ClientPartition, ClientSource
from connectors.venues.okx.client import OkxClient
from connectors.venues.okx.names import family_coin


class OkxSource(ClientSource):
    """One partition per instrument family ("okx-BTC-USD"), each owning its own OkxClient.

    snapshot() is None: a live source resubscribes after a restart and every book starts again
    from a fresh snapshot. `run_seconds` ends the partition after that long (tests, `--seconds`).
    `max_expiries`/`max_strikes` trim the chain. Other keyword arguments go to OkxClient.
    """

    def __init__(self, url: str, families: Iterable[str], *, refresh_s: float, queue_max: int, max_frame_bytes: int,
                 run_seconds: Optional[float] = None, max_expiries: Optional[int] = None,
                 max_strikes: Optional[int] = None, batch_max: int = SOURCE_BATCH_MAX, idle_ms: float = 5.0,
                 route_workers: int = 1, **client_kwargs: Any):
        self.url = url
        self.families = tuple(families)
        for fam in self.families:
            family_coin(fam)
        super().__init__("okx", self.families, queue_max=queue_max, max_frame_bytes=max_frame_bytes,
                         max_expiries=max_expiries, max_strikes=max_strikes, run_seconds=run_seconds,
                         batch_max=batch_max, idle_ms=idle_ms, refresh_s=refresh_s, client_kwargs=client_kwargs,
                         route_workers=route_workers)

    def make_client(self, family: str, slot: int) -> OkxClient:
        return OkxClient(self.url, (family,), **self.client_options(slot))


OkxPartition = ClientPartition  # one started OkxClient, drained in batches


def client_options(section: Any) -> dict[str, Any]:
    """The OkxClient keyword arguments an [sources.okx] section (flows/config.py OkxSourceConfig)
    sets, url and families included."""
    return dict(url=section.url, families=tuple(section.families), refresh_s=section.refresh_s,
                queue_max=section.queue_max, max_frame_bytes=section.max_frame_bytes)


def from_config(section: Any, *, url: Optional[str] = None, run_seconds: Optional[float] = None,
                route_workers: int = 1) -> OkxSource:
    """An OkxSource from a [sources.okx] section (flows/config.py OkxSourceConfig); `url`
    overrides section.url (a local simulator)."""
    options = client_options(section)
    options["url"] = url or section.url
    return OkxSource(**options, run_seconds=run_seconds, route_workers=route_workers)
