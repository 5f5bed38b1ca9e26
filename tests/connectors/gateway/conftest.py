"""The gateway tests' fixture: `gateway(**options)` starts a real Gateway on a free loopback
port (options over graph.toml's [sinks.gateway]) and stops every one it started."""

from __future__ import annotations

import pytest

from connectors.gateway.server import Gateway
from tests.helpers.config import gateway_kwargs


@pytest.fixture
def gateway():
    started = []

    def make(**options) -> Gateway:
        g = Gateway(**gateway_kwargs(host="127.0.0.1", port=0, **options))
        g.start()
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()
