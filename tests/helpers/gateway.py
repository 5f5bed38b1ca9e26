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


def surface_event(raw: str):
    """A /ws message as the operators' event it carries (SurfaceSnapshot / SurfacePatch, the
    stream's seq fields dropped), or None for the protocol's own messages (Hello, Ping, …:
    docs/gateway-protocol.md)."""
    from operators.events import from_json

    if not raw.startswith(('{"type":"SurfaceSnapshot"', '{"type":"SurfacePatch"')):
        return None
    return from_json(raw)
