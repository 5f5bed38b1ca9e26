"""The dashboard in a real headless Chromium: it connects to the gateway, shows the
snapshot's expiries, and follows live patches (Playwright driving Debian's chromium); and a
node added to graph.toml alone reaches the gateway, PostgreSQL and a dashboard column."""


import pytest
from websockets.sync.client import connect as ws_connect

from operators.events import ExpiryView, SmileFit, SurfacePatch, to_json

pytestmark = pytest.mark.browser

from tests.dashboard.test_dashboard_view import drawn, one, traces
from tests.helpers.browser import chromium, require_chromium, watch
from tests.helpers.config import RR15_NODE_TOML, postgres_sink
from tests.helpers.gateway import serve_gateway

require_chromium()

T0 = 1_795_300_000_000
DAY = 86_400_000


VOL_PTS = {name: "vol pts" for name in ("atm_vol", "rr25", "bf25", "rr10", "bf10")}


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
        with chromium() as browser:
            page = browser.new_page()
            page.goto(http_url)
            rows = page.locator("#expiries tbody tr")
            rows.first.wait_for(timeout=15_000)
            assert rows.count() == 2
            first = rows.nth(0).inner_text()
            assert "55.12" in first and "-1.75" in first and "ok" in first
            assert "52.34" in rows.nth(1).inner_text()
            # a live patch changes one expiry: the page follows without a reload
            pub.send(to_json(patch(2, [view(e1, 0.6001)])))
            page.wait_for_function("() => document.querySelector('#expiries tbody tr').innerText.includes('60.01')",
                                   timeout=15_000)
            assert "52.34" in rows.nth(1).inner_text()
            # the charts (Plotly) follow too: the term structure has both expiries at their vols
            drawn(page, "term", epoch=2)
            term = one(page, "term", "expiry")
            assert term["customdata"] == [e1, e2] and term["y"] == pytest.approx([60.01, 52.34])
            assert term["x"] == pytest.approx([7, 30])
            drawn(page, "smile", epoch=2, expiry=e1)
            assert one(page, "smile", "bid")["y"] == pytest.approx([55.0, 50.0, 52.0])


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
    with chromium() as browser:
        page = browser.new_page()
        page.goto(http_url)
        page.locator("#tabs button", has_text="deribit:BTC").click(timeout=15_000)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#expiries thead th')].some((th) => th.textContent === 'rr15 (vol pts)')"
            " && document.querySelectorAll('#expiries tbody tr').length === %d" % len(TENORS), timeout=15_000)
        cells = table_cells(page)
        assert cells["rr15 (vol pts)"] == [f"{100 * rr15[e]:.2f}" for e in sorted(rr15)]
        # graph.toml's order: the shipped nodes first, the user's rr15 after all of them
        assert list(cells)[3:8] == [f"{n} (vol pts)" for n in ("atm_vol", "rr25", "bf25", "rr10", "bf10")]
        assert list(cells).index("rr15 (vol pts)") > list(cells).index("bf25_ask (vol pts)")
        drawn(page, "term", key="deribit:BTC", epoch=snap.epoch)
        assert page.locator("#term-note").is_hidden()
        term = one(page, "term", "expiry")  # every expiry, at the gateway's atm_vol
        assert term["customdata"] == [v.expiry_ms for v in snap.expiries] and len(term["x"]) == len(TENORS)
        assert term["y"] == pytest.approx([100 * v.analytics["atm_vol"] for v in snap.expiries])
        rr15_shown = {t["node"]: t for t in traces(page, "wings", "node")}["rr15"]
        assert rr15_shown["y"] == pytest.approx([100 * rr15[e] for e in sorted(rr15)])  # the new node is charted too

        # a graph.toml without atm_vol: the term structure says so, the table follows the data
        with ws_connect(publish, additional_headers={"Authorization": "Bearer t"}) as pub:
            e1 = T0 + 7 * DAY
            renamed = ExpiryView(e1, view(e1, 0.5).fit, analytics={"atm": 0.5}, units={"atm": "vol pts"})
            pub.send(to_json(SurfacePatch("deribit", "XRP", 1, T0, T0, expiries=(renamed,))))
            page.locator("#tabs button", has_text="deribit:XRP").click(timeout=15_000)
            drawn(page, "term", key="deribit:XRP")
            note = page.locator("#term-note")
            assert note.is_visible() and note.get_attribute("data-reason") == "missing-node"
            assert "no node named atm_vol in graph.toml" in note.text_content()
            assert traces(page, "term") == []
            assert table_cells(page)["atm (vol pts)"] == ["50.00"]


def js_fixed(x: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed: the exact binary value rounded half away from zero."""
    from decimal import ROUND_HALF_UP, Decimal

    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def js_precision4(x: float) -> str:
    """Number.prototype.toPrecision(4) for the test's values (1e-6 ≤ |x| < 1e4: no exponent)."""
    import math

    assert 1e-6 <= abs(x) < 1e4
    return js_fixed(x, 3 - math.floor(math.log10(abs(x))))


def node_text(x, unit: str) -> str:
    """dashboard/app.js nodeValue: "vol pts" in vol points (2 decimals), else 4 significant digits."""
    return "–" if x is None else js_fixed(100 * x, 2) if unit == "vol pts" else js_precision4(x)


UNDERLYING_UNITS = {"atm_slope_30_90": "vol/yr", "rr25_slope_30_90": "vol/yr", "atm_front_back": "vol/yr",
                    "fwd_vol_30_90": "vol pts"}
STRIKE_UNITS = {"iv_fit": "vol pts", "dvol_dk": "vol/ln(K/F)", "vega": "coin/vol"}


def leveled_view(expiry_ms, atm_vol, iv_fit, n_quotes=25):
    """An expiry with instrument-level values (one per strike, null where none) and their units."""
    base = view(expiry_ms, atm_vol)
    fit = SmileFit(**{**{f: getattr(base.fit, f) for f in base.fit.__struct_fields__}, "n_quotes": n_quotes})
    return ExpiryView(expiry_ms, fit, analytics={**base.analytics, "jw_v": 0.2345, "jw_psi": -0.0512},
                      units={**VOL_PTS, **STRIKE_UNITS, "jw_v": "var/yr"},
                      strikes=base.strikes, bid_iv=base.bid_iv, ask_iv=base.ask_iv,
                      strike_analytics={"iv_fit": iv_fit, "dvol_dk": (-0.41, -0.2875, None),
                                        "delta_call": (0.71, 0.5, 0.3), "vega": (0.0123, 0.0141, 0.0119)})


def shown_levels(page):
    """The term structure analytics and the selected expiry's strike table, with the epochs they show."""
    return page.evaluate("""() => {
        const und = document.querySelector('#underlying tbody');
        const st = document.querySelector('#strikes tbody');
        const heads = [...document.querySelectorAll('#strikes thead th')].map((th) => th.textContent);
        return {
            epoch: Number(und.dataset.epoch), strikesEpoch: Number(st.dataset.epoch), expiry: Number(st.dataset.expiry),
            underlying: [...und.children].map((tr) => [...tr.children].map((td) => td.textContent)),
            strikes: [...st.children].map((tr) => Object.fromEntries([...tr.children].map((td, i) => [heads[i], td.textContent]))),
            hidden: document.getElementById('underlying-panel').hidden,
        };
    }""")


def expected_levels(state):
    return sorted([name, node_text(value, state.underlying_units.get(name, "")), state.underlying_units.get(name, "")]
                  for name, value in state.underlying_analytics.items())


def test_underlying_and_instrument_levels_equal_the_gateways_state(gateway):
    """graph.toml's level = "underlying" values (merged key by key from patches) in the term
    structure analytics table, and the selected expiry's level = "instrument" values in the
    strike table, equal the gateway's merged state, through a patch that changes only some."""
    gw, http_url = gateway
    ws_url = http_url.replace("http://", "ws://").rstrip("/") + "/publish"
    e1, e2 = T0 + 7 * DAY, T0 + 30 * DAY
    first = SurfacePatch("deribit", "BTC", 1, T0, T0, index_px=99_950.0,
                         expiries=(leveled_view(e1, 0.5512, (0.5601, 0.5102, None), n_quotes=30),
                                   leveled_view(e2, 0.5234, (0.54, 0.5, 0.52))),
                         underlying_analytics={"atm_slope_30_90": -0.1234, "rr25_slope_30_90": 0.02345,
                                               "atm_front_back": 0.3456, "fwd_vol_30_90": 0.5012},
                         underlying_units=UNDERLYING_UNITS)
    # epoch 2: one underlying value and e1's strikes change; the rest must stay as they were
    second = SurfacePatch("deribit", "BTC", 2, T0 + 1000, T0 + 1000, index_px=99_951.0,
                          expiries=(leveled_view(e1, 0.5612, (0.5701, None, 0.5333), n_quotes=30),),
                          underlying_analytics={"fwd_vol_30_90": 0.4987})
    errors: list[str] = []
    with ws_connect(ws_url, additional_headers={"Authorization": "Bearer t"}) as pub:
        pub.send(to_json(first))
        assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 1, timeout=10)
        with chromium() as browser:
            page = watch(browser.new_page(viewport={"width": 1400, "height": 900}), errors, http=False)
            page.goto(http_url)
            for epoch in (1, 2):
                if epoch == 2:
                    pub.send(to_json(second))
                    assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 2, timeout=10)
                page.wait_for_function(
                    "(e) => Number(document.querySelector('#underlying tbody').dataset.epoch) === e"
                    " && Number(document.querySelector('#strikes tbody').dataset.epoch) === e", arg=epoch,
                    timeout=15_000)
                state = gw.state("deribit", "BTC")
                shown = shown_levels(page)
                assert not shown["hidden"]
                assert sorted(shown["underlying"]) == expected_levels(state)
                assert len(shown["underlying"]) == 4
                chosen = next(v for v in state.expiries if v.expiry_ms == shown["expiry"])
                assert chosen.expiry_ms == e1  # the most liquid expiry is selected
                assert [r["iv_fit (vol pts)"] for r in shown["strikes"]] == [
                    node_text(x, "vol pts") for x in chosen.strike_analytics["iv_fit"]]
                assert [r["vega (coin/vol)"] for r in shown["strikes"]] == [
                    "0.0123", "0.0141", "0.0119"]
                assert [r["bid IV (vol pts)"] for r in shown["strikes"]] == [
                    js_fixed(100 * x, 2) for x in chosen.bid_iv]
                assert [r["strike"] for r in shown["strikes"]] == ["90000", "100000", "110000"]
                assert {"delta_call", "dvol_dk (vol/ln(K/F))"} <= set(shown["strikes"][0])
            # the smile's points name their strike's instrument-level values on hover (the charts
            # redraw at most twice a second: wait for epoch 2's)
            drawn(page, "smile", epoch=2, expiry=e1)
            title = one(page, "smile", "bid")["text"][0]
            assert title.startswith("K=90000 bid 55.00%") and "<br>vega 0.0123 coin/vol" in title, title
            assert "<br>iv_fit 57.01 vol pts" in title, title
            assert state.underlying_analytics["atm_slope_30_90"] == -0.1234  # kept through the patch
            assert {r[0]: r[1] for r in shown["underlying"]}["fwd_vol_30_90"] == "49.87"
            # the SVI-JW columns: hidden by default (still in the DOM), shown by the toggle, kept in the URL
            jw = page.locator("#expiries thead th[data-node='jw_v']")
            assert jw.text_content() == "jw_v (var/yr)" and jw.is_hidden()
            assert table_cells(page)["jw_psi"] == ["-0.05120", "-0.05120"]
            page.locator("#jw-toggle").click()
            page.wait_for_function("() => location.search.includes('jw=1') && document.querySelector("
                                   "\"#expiries thead th[data-node='jw_v']\").offsetParent !== null", timeout=15_000)
            assert table_cells(page)["jw_v (var/yr)"] == ["0.2345", "0.2345"]
            page.locator("#jw-toggle").click()
            page.wait_for_function("() => !location.search.includes('jw=1')", timeout=15_000)
            assert jw.is_hidden()
    assert errors == []
