"""A real Gateway on a free loopback port, for fixtures: `yield from serve_gateway("token")`."""

from __future__ import annotations

from connectors.gateway.server import Gateway
from tests.helpers.config import gateway_kwargs


def serve_gateway(publish_token: str):
    """Start a Gateway on 127.0.0.1:<free port>, yield (gateway, its http url), stop it after."""
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=0, publish_token=publish_token))
    url = gw.start()
    try:
        yield gw, url
    finally:
        gw.stop()
