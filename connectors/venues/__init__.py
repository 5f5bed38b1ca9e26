"""Venue connectors: one package per venue (connectors/venues/<name>/: names, parse, client,
source), the shared client scaffolding (base.py), and the registry (registry.py) — the one place
that maps a venue name to its parser, client, source, simulator and graph.toml section.

Importing this package imports only the registry: no venue module, no simulator.
"""

from connectors.venues.registry import VENUES, Venue, venue

__all__ = ["VENUES", "Venue", "venue"]
