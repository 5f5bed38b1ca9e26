"""The venue registry: every entry finds its venue's code by the package layout, importing the
registry imports no venue, and an unknown name is refused with the known ones and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from connectors.venues.base import VenueClient
from connectors.venues.registry import VENUES, by_sim_command, venue


@pytest.mark.parametrize("name", sorted(VENUES))
def test_every_entry_resolves_by_the_layout(name):
    v = venue(name)
    assert issubclass(v.client(), VenueClient)
    assert v.parse_frame()(b"not json") and v.parse_frame()(b"not json")[0].reason == "malformed_json"
    for fn in (v.client_options(), v.source_from_config(), v.simulator_main()):
        assert callable(fn)
    assert by_sim_command(v.sim_command) is v and v.config_section == f"sources.{name}"


def test_importing_the_registry_imports_no_venue_and_no_simulator():
    code = ("import sys, connectors.venues.registry; "
            "print(sorted(m for m in sys.modules if m.startswith(('connectors.venues.', 'connectors.sim'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["connectors.venues.registry"]


def test_unknown_venue_names_the_known_ones_and_the_fix():
    with pytest.raises(ValueError, match=r"'kraken' is not known; known venues: deribit, okx.*adding-a-venue"):
        venue("kraken")
    with pytest.raises(ValueError, match="not a simulator command"):
        by_sim_command("sim-kraken")
