"""The venue registry: the ONE place mapping a venue name to its parser, client, source,
simulator and graph.toml section. Adding a venue is one entry here (docs/adding-a-venue.md).

Everything a venue brings is found by its name in the package layout and imported only when
asked for: importing the registry pulls in no venue module and no simulator (the
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

    name: the events' `venue` field, the source's partition prefix, [sources.<name>] in graph.toml
    and the package: a venue's code is found by the layout docs/adding-a-venue.md gives —
    connectors/venues/<name>/parse.py `parse_frame(raw, ts_recv_ms=None, max_bytes=…) -> list`
    (never raises) and, where a batch reads faster, `parse_frames(raws, ts_recv_ms, max_bytes) ->
    list` (the same events as parse_frame frame by frame) and `parse_columns(raws, ts_recv_ms, max_bytes)
    -> list` (the same with runs of book notifications as BookBatches), client.py `<client_class>(url=…, <keys_field>=…, frame_tap=…, **options)` (a
    base.VenueClient), source.py `client_options(section) -> kwargs` and `from_config(section, *,
    url=None, run_seconds=None, route_workers=1) -> source`; its simulator is
    connectors/sim/<name>.py `main(argv, defaults=…)` (defaults from [simulator]).
    keys_field: the section's list of subscription keys (and the simulator's flag of the same name):
    Deribit "currencies", OKX "families".
    """

    name: str
    label: str                  # for people: "Deribit"
    keys_field: str             # "currencies" | "families"
    client_class: str           # "DeribitClient", in connectors/venues/<name>/client.py
    sim_command: str            # the `volgraph` subcommand running the simulator ("sim", "sim-okx")
    sim_url_path: str           # the websocket path the simulator serves ("/ws/api/v2")
    sim_seed_offset: int        # added to [simulator] seed, so two simulators differ
    url_env: str                # the environment variable overriding the URL in flows.surface:flow

    @property
    def config_section(self) -> str:
        return f"sources.{self.name}"

    def parse_frame(self) -> Callable[..., list]:
        return self._load("parse", "parse_frame")

    def parse_frames(self) -> Callable[..., list]:
        """The batch parser a replay calls per source batch: the venue's own `parse_columns` (book
        notifications as BookBatches), else its `parse_frames`, else its parse_frame frame by frame."""
        module = importlib.import_module(f"connectors.venues.{self.name}.parse")
        batch = getattr(module, "parse_columns", None) or getattr(module, "parse_frames", None)
        if batch is not None:
            return batch
        parse_frame = module.parse_frame

        def frame_by_frame(raws: list, ts_recv_ms: list, max_bytes: int) -> list:
            return [ev for raw, ts in zip(raws, ts_recv_ms) for ev in parse_frame(raw, ts, max_bytes)]

        return frame_by_frame

    def client(self) -> type:
        return self._load("client", self.client_class)

    def client_options(self) -> Callable[[Any], dict]:
        return self._load("source", "client_options")

    def source_from_config(self) -> Callable[..., Any]:
        return self._load("source", "from_config")

    def simulator_main(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(f"connectors.sim.{self.name}"), "main")

    def _load(self, module: str, attr: str) -> Any:
        return getattr(importlib.import_module(f"connectors.venues.{self.name}.{module}"), attr)


VENUES: dict[str, Venue] = {v.name: v for v in (
    Venue(name="deribit", label="Deribit", keys_field="currencies", client_class="DeribitClient",
          sim_command="sim", sim_url_path="/ws/api/v2", sim_seed_offset=0, url_env="VOLGRAPH_URL"),
    Venue(name="okx", label="OKX", keys_field="families", client_class="OkxClient",
          sim_command="sim-okx", sim_url_path="/ws/v5/public", sim_seed_offset=1, url_env="VOLGRAPH_OKX_URL"),
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
