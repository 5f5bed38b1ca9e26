"""The Secret wiring docs/operations.md "Secrets" prescribes really authenticates: the flow gets
VOLGRAPH_GATEWAY_URL = ws://<gateway>/publish?token=<token> from the Secret volgraph-flow-env, the
gateway gets the same token as VOLGRAPH_PUBLISH_TOKEN from volgraph-gateway. A real gateway and
the flow's real publisher over loopback: the right token in the URL publishes, a wrong one is
refused and counted."""

from __future__ import annotations

from connectors.gateway.publisher import GatewayPublisher
from connectors.gateway.server import Gateway
from tests.helpers.config import gateway_kwargs

TOKEN = "0f3c9a1e2b7d4c5a8e6f1b2c3d4e5f60"


def test_token_in_the_publish_url_authenticates_the_flow(surface_factory):
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=0, publish_token=TOKEN))
    gw.start()
    f = surface_factory()
    good = GatewayPublisher(f"{gw.publish_url}?token={TOKEN}", None, retry_min_ms=1, retry_max_ms=1)
    bad = GatewayPublisher(f"{gw.publish_url}?token=wrong", None, retry_min_ms=1, retry_max_ms=1)
    try:
        patches = [f.patch(1, changed=[0]), f.patch(2, changed=[1])]
        good.write_batch(patches)
        assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 2, 10)
        assert gw.state("deribit", "BTC") == f.fold(patches)
        bad.write_batch([f.patch(3, changed=[2])])
        assert gw.wait_until(lambda g: g.counters["rejected.token"] >= 1, 10)
        assert gw.epoch("deribit", "BTC") == 2  # the refused publisher changed nothing
    finally:
        good.close()
        bad.close()
        gw.stop()
