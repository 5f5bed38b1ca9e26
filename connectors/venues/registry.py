"""The venue registry: the ONE place mapping a venue name to its parser, client, source,
simulator and graph.toml section. Adding a venue is one entry here (docs/adding-a-venue.md).

Everything a venue brings is named by an import path string ("module:attribute") and imported
only when asked for: importing the registry pulls in no venue module and no simulator (the
simulators in connectors/sim/ are only ever named here, never imported). It never does I/O and
never reads graph.toml itself (flows/config.py does; `source_from_config` receives the section).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class Venue:
    """What the flow, the CLI and the recorder need to know about one venue.

    name: the events' `venue` field, the source's partition prefix and [sources.<name>] in graph.toml.
    keys_field: the section's list of subscription keys (and the simulator's flag of the same name):
    Deribit "currencies", OKX "families". The *_path fields are "module:attribute" import paths.
    """

    name: str
    label: str                  # for people: "Deribit"
    keys_field: str             # "currencies" | "families"
    parse_frame_path: str       # parse_frame(raw, ts_recv_ms=None, max_bytes=…) -> list; never raises
    client_path: str            # Client(url=…, <keys_field>=…, frame_tap=…, **options): a base.VenueClient
    client_options_path: str    # client_options(section) -> the Client keyword arguments graph.toml sets
    source_from_config_path: str  # from_config(section, *, url=None, run_seconds=None, route_workers=1) -> source
    simulator_main_path: str    # main(argv, defaults=…) of the venue's simulator (defaults: from [simulator])
    sim_command: str            # the `volgraph` subcommand running that simulator ("sim", "sim-okx")
    sim_url_path: str           # the websocket path the simulator serves ("/ws/api/v2")
    sim_seed_offset: int        # added to [simulator] seed, so two simulators differ
    url_env: str                # the environment variable overriding the URL in flows.surface:flow

    @property
    def config_section(self) -> str:
        return f"sources.{self.name}"

    def parse_frame(self) -> Callable[..., list]:
        return _load(self.parse_frame_path)

    def client(self) -> type:
        return _load(self.client_path)

    def client_options(self) -> Callable[[Any], dict]:
        return _load(self.client_options_path)

    def source_from_config(self) -> Callable[..., Any]:
        return _load(self.source_from_config_path)

    def simulator_main(self) -> Callable[..., Any]:
        return _load(self.simulator_main_path)


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


VENUES: dict[str, Venue] = {v.name: v for v in (
    Venue(name="deribit", label="Deribit",
          keys_field="currencies",
          parse_frame_path="connectors.venues.deribit.parse:parse_frame",
          client_path="connectors.venues.deribit.client:DeribitClient",
          client_options_path="connectors.venues.deribit.source:client_options",
          source_from_config_path="connectors.venues.deribit.source:from_config",
          simulator_main_path="connectors.sim.deribit:main", sim_command="sim", sim_url_path="/ws/api/v2",
          sim_seed_offset=0, url_env="VOLGRAPH_URL"),
    Venue(name="okx", label="OKX",
          keys_field="families",
          parse_frame_path="connectors.venues.okx.parse:parse_frame",
          client_path="connectors.venues.okx.client:OkxClient",
          client_options_path="connectors.venues.okx.source:client_options",
          source_from_config_path="connectors.venues.okx.source:from_config",
          simulator_main_path="connectors.sim.okx:main", sim_command="sim-okx", sim_url_path="/ws/v5/public",
          sim_seed_offset=1, url_env="VOLGRAPH_OKX_URL"),
)}


def venue(name: str) -> Venue:
    """The registry entry of `name`; a ValueError naming the known venues otherwise."""
    try:
        return VENUES[name]
    except (KeyError, TypeError):
        raise ValueError(f"venue {name!r} is not known; known venues: {', '.join(VENUES)} "
                         "(a new one is added in connectors/venues/registry.py, see docs/adding-a-venue.md)") from None


def by_sim_command(command: str) -> Venue:
    """The venue whose simulator the `volgraph` subcommand `command` runs."""
    for v in VENUES.values():
        if v.sim_command == command:
            return v
    raise ValueError(f"{command!r} is not a simulator command; known: {', '.join(v.sim_command for v in VENUES.values())}")
