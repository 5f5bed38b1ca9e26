"""The dashboard in a real headless Chromium: it connects to the gateway, shows the
snapshot's expiries, and follows live patches (Playwright driving Debian's chromium); and a
node added to graph.toml alone reaches the gateway, PostgreSQL and a dashboard column."""

import shutil

import pytest
from websockets.sync.client import connect as ws_connect

from operators.events import ExpiryView, SmileFit, SurfacePatch, to_json

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser

import playwright.sync_api as playwright  # noqa: E402  (a dev dependency: `make test` installs it)
from tests.helpers.config import RR15_NODE_TOML, postgres_sink
from tests.helpers.gateway import serve_gateway

if not shutil.which("chromium"):  # a failure, never a skip: a skipped browser test hides a broken dashboard
    pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does)", pytrace=False)

T0 = 1_795_300_000_000
DAY = 86_400_000


VOL_PTS = {name: "vol pts" for name in ("atm_vol", "rr25", "bf25", "rr10", "bf10")}
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


def view(expiry_ms, atm_vol, **analytics):
    fit = SmileFit("deribit", "BTC", expiry_ms, 1, T0, T0, (expiry_ms - T0) / (365 * DAY), 100_000.0,
                   0.02, 0.1, -0.3, 0.0, 0.2, 0.21, 25, True, 0.05, 0.8)
    values = {"atm_vol": atm_vol, "rr25": -0.0175, "bf25": 0.0042, "rr10": -0.03, "bf10": 0.01, **analytics}
    return ExpiryView(expiry_ms, fit, analytics=values, units=VOL_PTS,
                      strikes=(90_000.0, 100_000.0, 110_000.0), bid_iv=(0.55, 0.5, 0.52), ask_iv=(0.57, 0.52, 0.54))


def patch(epoch, views):
    return SurfacePatch("deribit", "BTC", epoch, T0, T0, expiries=tuple(views), index_px=99_950.0)


@pytest.fixture
def gateway():
    yield from serve_gateway("t")


def test_dashboard_shows_surface_and_follows_patches(gateway):
    gw, http_url = gateway
    ws_url = http_url.replace("http://", "ws://").rstrip("/") + "/publish"
    e1, e2 = T0 + 7 * DAY, T0 + 30 * DAY
    with ws_connect(ws_url, additional_headers={"Authorization": "Bearer t"}) as pub:
        pub.send(to_json(patch(1, [view(e1, 0.5512), view(e2, 0.5234)])))
        assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 1, timeout=10)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
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


def table_cells(page):
    """The expiry table as {header label: [cell text per row]}."""
    return page.evaluate("""() => {
        const heads = [...document.querySelectorAll('#expiries thead th')].map((th) => th.textContent);
        const rows = [...document.querySelectorAll('#expiries tbody tr')].map(
            (tr) => [...tr.children].map((td) => td.textContent));
        return Object.fromEntries(heads.map((h, i) => [h, rows.map((r) => r[i])]));
    }""")


def test_a_node_added_to_graph_toml_reaches_gateway_postgres_and_dashboard(gateway, pg_db, tmp_path):
    """The whole change to add an analytic is a [nodes.X] table in graph.toml: the flow then
    publishes it to the gateway by name, PostgreSQL stores it queryable by name, and the
    dashboard shows a column for it (with its unit), while a renamed-away atm_vol makes the
    term structure say what is missing instead of drawing nothing."""
    from bytewax.testing import TestingSource, run_main

    from connectors.gateway.publisher import GatewaySink
    from connectors.postgres import connect
    from flows.config import load_config
    from flows.surface import build_flow
    from tests.helpers.market import NOW, SPOT, TENORS, market

    gw, http_url = gateway
    graph = tmp_path / "graph.toml"
    graph.write_text(RR15_NODE_TOML)
    config = load_config(graph)
    publish = http_url.replace("http://", "ws://").rstrip("/") + "/publish"
    pg_sink = postgres_sink(pg_db, tmp_path / "spill", config=config)
    flow = build_flow(config, TestingSource(market()), [GatewaySink(publish, token="t"), pg_sink], now_ms=lambda: NOW)
    run_main(flow)  # a finite input: the sinks flush and close when it ends

    # 1. the gateway: every expiry's rr15, by name, next to the default nodes
    expected = {(u, len(TENORS)) for u in SPOT}
    assert gw.wait_until(lambda g: {(u, len(s.expiries)) for u in SPOT if (s := g.state("deribit", u))} == expected,
                         timeout=30)
    snap = gw.state("deribit", "BTC")
    rr15 = {v.expiry_ms: v.analytics["rr15"] for v in snap.expiries}
    for v in snap.expiries:
        assert v.analytics["rr15"] < v.analytics["rr25"] < 0  # further in the put wing: more negative
        assert v.units["rr15"] == "vol pts"

    # 2. PostgreSQL, queried by the node's name
    with connect(pg_db) as conn:
        stored = dict(conn.execute(
            "SELECT DISTINCT ON (expiry_ms) expiry_ms, value FROM expiry_nodes"
            " WHERE node = %s AND venue = 'deribit' AND underlying = 'BTC' ORDER BY expiry_ms, epoch DESC",
            ("rr15",)).fetchall())
    assert stored == rr15

    # 3. the dashboard: a column labelled with the node's name and unit, values in vol points
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.goto(http_url)
            page.locator("#tabs button", has_text="deribit:BTC").click(timeout=15_000)
            page.wait_for_function(
                "() => [...document.querySelectorAll('#expiries thead th')].some((th) => th.textContent === 'rr15 (vol pts)')"
                " && document.querySelectorAll('#expiries tbody tr').length === %d" % len(TENORS), timeout=15_000)
            cells = table_cells(page)
            assert cells["rr15 (vol pts)"] == [f"{100 * rr15[e]:.2f}" for e in sorted(rr15)]
            assert list(cells)[3:9] == [f"{n} (vol pts)" for n in ("atm_vol", "rr25", "bf25", "rr10", "bf10", "rr15")]
            assert page.locator("#term-missing").count() == 0
            assert page.locator("#term circle.expiry-pt").count() == len(TENORS)

            # a graph.toml without atm_vol: the term structure says so, the table follows the data
            with ws_connect(publish, additional_headers={"Authorization": "Bearer t"}) as pub:
                e1 = T0 + 7 * DAY
                renamed = ExpiryView(e1, view(e1, 0.5).fit, analytics={"atm": 0.5}, units={"atm": "vol pts"})
                pub.send(to_json(SurfacePatch("deribit", "XRP", 1, T0, T0, expiries=(renamed,))))
                page.locator("#tabs button", has_text="deribit:XRP").click(timeout=15_000)
                page.locator("#term-missing").wait_for(timeout=15_000)
                assert "atm_vol" in page.locator("#term-missing").text_content()
                assert table_cells(page)["atm (vol pts)"] == ["50.00"]
        finally:
            browser.close()
