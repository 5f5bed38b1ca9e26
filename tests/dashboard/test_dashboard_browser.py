"""The dashboard in a real headless Chromium: it connects to the gateway, shows the
snapshot's expiries, and follows live patches (Playwright driving Debian's chromium)."""

import shutil

import pytest
from websockets.sync.client import connect as ws_connect

from connectors.gateway.server import Gateway
from operators.events import ExpiryView, SmileFit, SurfacePatch, to_json

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency: make test installs it")
if not shutil.which("chromium"):
    pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)",
                allow_module_level=True)

T0 = 1_795_300_000_000
DAY = 86_400_000


def view(expiry_ms, atm_vol):
    fit = SmileFit("deribit", "BTC", expiry_ms, 1, T0, T0, (expiry_ms - T0) / (365 * DAY), 100_000.0,
                   0.02, 0.1, -0.3, 0.0, 0.2, 0.21, 25, True, 0.05, 0.8)
    return ExpiryView(expiry_ms, fit, atm_vol=atm_vol, rr25=-0.0175, bf25=0.0042, rr10=-0.03, bf10=0.01,
                      strikes=(90_000.0, 100_000.0, 110_000.0), bid_iv=(0.55, 0.5, 0.52), ask_iv=(0.57, 0.52, 0.54))


def patch(epoch, views):
    return SurfacePatch("deribit", "BTC", epoch, T0, T0, expiries=tuple(views), index_px=99_950.0)


@pytest.fixture
def gateway():
    gw = Gateway("127.0.0.1", 0, publish_token="t")
    url = gw.start()
    yield gw, url
    gw.stop()


def test_dashboard_shows_surface_and_follows_patches(gateway):
    gw, http_url = gateway
    ws_url = http_url.replace("http://", "ws://").rstrip("/") + "/publish"
    e1, e2 = T0 + 7 * DAY, T0 + 30 * DAY
    with ws_connect(ws_url, additional_headers={"Authorization": "Bearer t"}) as pub:
        pub.send(to_json(patch(1, [view(e1, 0.5512), view(e2, 0.5234)])))
        assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 1, timeout=10)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page()
                page.goto(http_url)
                rows = page.locator("table tbody tr")
                rows.first.wait_for(timeout=15_000)
                assert rows.count() == 2
                first = rows.nth(0).inner_text()
                assert "55.12" in first and "-1.75" in first and "ok" in first
                assert "52.34" in rows.nth(1).inner_text()
                # a live patch changes one expiry: the page follows without a reload
                pub.send(to_json(patch(2, [view(e1, 0.6001)])))
                page.wait_for_function("() => document.querySelector('table tbody tr').innerText.includes('60.01')",
                                       timeout=15_000)
                assert "52.34" in rows.nth(1).inner_text()
                assert page.locator("svg").count() >= 2  # term structure and smile charts drawn
            finally:
                browser.close()
