"""The dashboard's view in a real headless Chromium (Playwright driving Debian's chromium)
against a real Gateway on loopback, fed over /publish as the flow feeds it: the opening view
and the URL, axis ticks, fixed tenors, RR/BF charts and columns with units, calendar and
butterfly flags, diagnostics, venue attribution, ages on the exchange clock, stable table
rows, chart points that select their expiry, greying on disconnect or stale data and resync
after a restart, the chart panels without Plotly.js, and no 404 or console error. The charts
are Plotly.js graph divs: the tests read what Plotly holds (gd.data, each trace's meta.kind,
x, y, customdata and hover text) and click at a point's pixel. Every wait is on a condition
with a deadline; screenshots go to $VOLGRAPH_TEST_ARTIFACTS (else the test's tmp dir)."""

from __future__ import annotations

import math
import re
import threading
import time
import urllib.request

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from websockets.sync.client import connect as ws_connect

from connectors.gateway import web
from connectors.gateway.server import Gateway
from operators.events import CalendarCheck, ExpiryView, SmileFit, SurfacePatch, SurfaceSnapshot, TenorPoint, to_json
from tests.helpers.browser import chromium, require_chromium, watch
from tests.helpers.config import gateway_kwargs

pytestmark = pytest.mark.browser

require_chromium()

# The exchange clock of these surfaces is two weeks behind the browser's: every age the page
# shows must come from ts_exchange_ms (a page using its own clock would show "13.x days").
T0 = 1_795_300_000_000  # 2026-11-21 22:26:40 UTC
DAY = 86_400_000
MINUTE = 60_000
VOL_PTS = {name: "vol pts" for name in ("atm_vol", "rr25", "bf25", "rr10", "bf10")}
TOKEN = "t"
STALE_MS = 1500  # the tests' sinks.gateway.stale_after_ms: short, so greying is quick to see


# ---------------------------------------------------------------- surfaces as the flow publishes them

def view(expiry_ms: int, ts_ms: int, *, vol: float = 0.55, n_quotes: int = 25, venue: str = "deribit",
         underlying: str = "BTC", butterfly_ok: bool = True, min_g: float = 0.05, calendar_ok: bool = True,
         rr25: float = -0.0175, bid_venue=(), ask_venue=(), n_strikes: int = 9, spline_w=()) -> ExpiryView:
    """An expiry with a real SVI smile of ATM vol `vol`, its quotes (bid/ask ±1 vol pt around the
    fit at strikes spread over ±2.5 standard deviations) and node values; spline_w: a spline on
    k ∈ [−0.1, 0.1] (SmileFit.spline_*), not in the quotes."""
    t = (expiry_ms - ts_ms) / (365 * DAY)
    b, s, rho = 2 * vol * vol * t, 0.1, -0.3
    a = vol * vol * t - b * s
    fwd = 100_000.0
    fit = SmileFit(venue, underlying, expiry_ms, 1, ts_ms, ts_ms, t, fwd, a, b, rho, 0.0, s, 0.21, n_quotes,
                   butterfly_ok, min_g, 0.8, inside_band_frac=0.75,
                   **({"spline_lo_k": -0.1, "spline_hi_k": 0.1, "spline_w": tuple(spline_w)} if spline_w else {}))
    half = 2.5 * vol * math.sqrt(t)
    strikes, bids, asks = [], [], []
    for i in range(n_strikes):
        k = -half + 2 * half * i / (n_strikes - 1)
        w = a + b * (rho * k + math.sqrt(k * k + s * s))
        iv = math.sqrt(w / t)
        strikes.append(round(fwd * math.exp(k), 1))
        bids.append(round(iv - 0.01, 6))
        asks.append(round(iv + 0.01, 6))
    analytics = {"atm_vol": vol, "rr25": rr25, "bf25": 0.0042, "rr10": 2 * rr25, "bf10": 0.0105}
    return ExpiryView(expiry_ms, fit, analytics=analytics, units=VOL_PTS, strikes=tuple(strikes),
                      bid_iv=tuple(bids), ask_iv=tuple(asks), calendar_ok=calendar_ok,
                      bid_venue=tuple(bid_venue), ask_venue=tuple(ask_venue))


def snapshot(views, ts_ms=T0, venue="deribit", underlying="BTC", **extra) -> SurfaceSnapshot:
    return SurfaceSnapshot(venue, underlying, 1, ts_ms, ts_ms, expiries=tuple(views), index_px=99_950.0, **extra)


def patch(epoch, views, ts_ms=T0, venue="deribit", underlying="BTC", **extra) -> SurfacePatch:
    return SurfacePatch(venue, underlying, epoch, ts_ms, ts_ms, expiries=tuple(views), index_px=99_950.0, **extra)


# ---------------------------------------------------------------- fixtures

def start_gateway(port: int = 0, stale_after_ms: int = STALE_MS) -> Gateway:
    """A real gateway on loopback (port 0: a free one) taking TOKEN's publisher."""
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=port, publish_token=TOKEN, stale_after_ms=stale_after_ms))
    gw.start()
    return gw


@pytest.fixture
def gateway():
    gw = start_gateway()
    yield gw
    gw.stop()


class Publisher:
    """The flow's side of /publish: send events, wait until the gateway has taken them."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.ws = ws_connect(gw.publish_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}).__enter__()

    def send(self, *events) -> None:
        for e in events:
            before = self.gw.counters[f"published.{type(e).__name__}"]
            self.ws.send(to_json(e))
            assert self.gw.wait_until(lambda g: g.counters[f"published.{type(e).__name__}"] > before, timeout=10)

    def close(self) -> None:
        self.ws.__exit__(None, None, None)


@pytest.fixture
def publisher(gateway):
    pub = Publisher(gateway)
    yield pub
    pub.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, request, artifacts):
    """A page whose console errors and failed requests are collected (asserted empty at the end)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.errors = []
    watch(pg, pg.errors)
    yield pg
    pg.screenshot(path=str(artifacts / f"{request.node.name}.png"))
    ctx.close()


def wait(page, js: str, arg=None, timeout_ms: int = 15_000):
    page.wait_for_function(js, arg=arg, timeout=timeout_ms)


TABLE_JS = """() => {
    const heads = [...document.querySelectorAll('#expiries thead th')].map((th) => th.textContent);
    const rows = [...document.querySelectorAll('#expiries tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent));
    return Object.fromEntries(heads.map((h, i) => [h, rows.map((r) => r[i])]));
}"""


def table(page) -> dict[str, list[str]]:
    """The expiry table as {header label: [cell text per row]}."""
    return page.evaluate(TABLE_JS)


def selected(page):
    return page.evaluate("() => { const tr = document.querySelector('#expiries tbody tr.sel'); return tr && Number(tr.dataset.expiry); }")


def query(page) -> dict[str, str]:
    return dict(re.findall(r"([a-z]+)=([^&]*)", page.url.split("?", 1)[1] if "?" in page.url else ""))


def labels(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map((e) => e.textContent)")


CHARTS = ("term", "wings", "smile")


def traces(page, chart: str, kind: str | None = None) -> list[dict]:
    """The traces Plotly holds on a chart's graph div (gd.data), each as its meta (kind, node,
    side, ...) with x, y, customdata, hover text and marker; only those of `kind` if given."""
    got = page.evaluate("""(id) => (document.getElementById(id).data || []).map((t) => ({ ...t.meta,
        x: t.x, y: t.y, customdata: t.customdata || null, text: t.hovertext || null, marker: t.marker || {} }))""", chart)
    return [t for t in got if kind is None or t["kind"] == kind]


def one(page, chart: str, kind: str) -> dict:
    [t] = traces(page, chart, kind)
    return t


def drawn(page, chart: str, **shown) -> None:
    """Wait until the chart's graph div shows that state (data-key, -epoch, -expiry, -axis:
    set once Plotly.react has drawn it)."""
    wait(page, "([id, want]) => { const d = document.getElementById(id).dataset;"
               " return !!d.revision && Object.entries(want).every(([k, v]) => d[k] === String(v)); }", [chart, shown])


def tick_labels(page, chart: str, axis: str = "x") -> list[str]:
    """The tick labels Plotly drew on a chart's axis, with its typographic minus as '-'."""
    return [t.replace("\u2212", "-") for t in labels(page, f"#{chart} .{axis}tick text")]


def click_point(page, chart: str, kind: str, index: int, hover: str, node: str | None = None,
                timeout_ms: int = 15_000) -> None:
    """A reader's click on a trace's point: the mouse moves to its pixel (Plotly's own SVG
    point), the hover label comes up with `hover` in it, and the button is pressed there."""
    page.locator(f"#{chart}").scroll_into_view_if_needed()
    box = page.evaluate("""([id, kind, node, j]) => { const gd = document.getElementById(id);
        const i = gd.data.findIndex((t) => t.meta.kind === kind && (node == null || t.meta.node === node));
        const pt = gd.querySelectorAll('.scatterlayer .trace')[i].querySelectorAll('path.point')[j];
        const r = pt.getBoundingClientRect(); return { x: r.x + r.width / 2, y: r.y + r.height / 2 }; }""",
                        [chart, kind, node, index])
    page.mouse.move(box["x"], box["y"])
    wait(page, "([id, text]) => { const h = document.querySelector(`#${id} .hoverlayer .hovertext`);"
               " return !!h && h.textContent.includes(text); }", [chart, hover], timeout_ms=timeout_ms)
    page.mouse.down()
    page.mouse.up()


def click_point_selects(page, chart: str, kind: str, index: int, hover: str, expiry: int, node: str | None = None,
                        tries: int = 3) -> None:
    """click_point until the point's expiry is the selected row, at most `tries` times: while
    patches flow, a redraw clears the hover label until the pointer moves again, and the
    gateway's reconnect banner can move the chart between the hover and the press — a reader
    moves the pointer and clicks again."""
    selected_js = "(e) => Number(document.querySelector('#expiries tbody tr.sel')?.dataset.expiry) === e"
    for attempt in range(tries):
        try:
            click_point(page, chart, kind, index, hover, node=node, timeout_ms=5_000)
            wait(page, selected_js, expiry, timeout_ms=5_000)
            return
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise


def day(ms: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def age_ms(text: str) -> float:
    value, unit = text.split()
    return float(value) * {"ms": 1, "s": 1e3, "min": 6e4, "h": 3.6e6}[unit]


E_40MIN, E_7D, E_30D, E_90D = T0 + 40 * MINUTE, T0 + 7 * DAY, T0 + 30 * DAY, T0 + 90 * DAY


def btc_and_eth(publisher):
    """deribit:BTC (88 quotes; its 7-day expiry has the most) and deribit:ETH (20 quotes)."""
    publisher.send(
        snapshot([view(T0 + 7 * DAY, T0, n_quotes=10, underlying="ETH", vol=0.6),
                  view(T0 + 30 * DAY, T0, n_quotes=10, underlying="ETH", vol=0.62)], underlying="ETH"),
        snapshot([view(E_40MIN, T0, n_quotes=6, vol=0.42), view(E_7D, T0, n_quotes=40, vol=0.5512),
                  view(E_30D, T0, n_quotes=30, vol=0.5234), view(E_90D, T0, n_quotes=12, vol=0.58)]),
    )


# ---------------------------------------------------------------- tests

def test_opens_on_the_most_liquid_expiry_and_the_url_keeps_the_view(gateway, publisher, page):
    btc_and_eth(publisher)
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelector('#expiries tbody tr.sel') && location.search.includes('expiry=')")
    assert page.locator("#tabs button.active").text_content() == "deribit:BTC"
    assert selected(page) == E_7D  # 40 quotes: not the 40-minute expiry with 6
    assert query(page) == {"venue": "deribit", "underlying": "BTC", "expiry": day(E_7D), "axis": "k"}

    page.locator("#axis button[data-axis=delta]").click()
    page.locator(f"tr[data-expiry='{E_30D}'] input.overlay").click()
    page.locator(f"tr[data-expiry='{E_90D}'] td").first.click()
    assert selected(page) == E_90D
    assert query(page) == {"venue": "deribit", "underlying": "BTC", "expiry": day(E_90D), "axis": "delta",
                           "overlay": day(E_30D)}

    page.reload()
    wait(page, "(e) => { const tr = document.querySelector('#expiries tbody tr.sel'); return tr && Number(tr.dataset.expiry) === e; }", E_90D)
    assert page.locator("#axis button.active").text_content() == "delta"
    assert page.locator(f"tr[data-expiry='{E_30D}'] input.overlay").is_checked()
    drawn(page, "smile", expiry=E_90D, axis="delta")
    svi = traces(page, "smile", "svi")  # the selected fit and the overlaid one (dashed)
    assert [(t["expiry"], t["overlay"]) for t in svi] == [(E_90D, False), (E_30D, True)]
    assert all(len(t["x"]) > 20 and all(0 <= x <= 1 for x in t["x"]) for t in svi)  # on the delta axis

    # a shared link opens on what it names
    page.goto(f"{gateway.http_url}/?venue=deribit&underlying=ETH&expiry={day(T0 + 30 * DAY)}&axis=strike")
    wait(page, "() => document.querySelector('#expiries tbody tr.sel')")
    assert page.locator("#tabs button.active").text_content() == "deribit:ETH"
    assert selected(page) == T0 + 30 * DAY
    assert page.locator("#axis button.active").text_content() == "strike"
    assert page.errors == []


def test_axes_have_sane_ticks_in_every_mode(gateway, publisher, page):
    btc_and_eth(publisher)
    page.goto(f"{gateway.http_url}/?venue=deribit&underlying=BTC&expiry={day(E_40MIN)}&axis=k")
    drawn(page, "smile", expiry=E_40MIN, axis="k")
    drawn(page, "term", key="deribit:BTC")

    def check(ticks: list[str]) -> list[float]:
        assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks
        assert not any(re.fullmatch(r"-0(\.0*)?k?", t) for t in ticks), ticks
        return [float(t.rstrip("k")) for t in ticks]

    # 40 minutes to expiry: k spans about ±0.01, the labels have the decimals the step needs
    ks = check(tick_labels(page, "smile"))
    steps = {round(b - a, 9) for a, b in zip(ks, ks[1:])}
    assert len(steps) == 1, ks  # evenly spaced
    assert 0.0 in ks and max(ks) < 0.05 and min(ks) > -0.05
    check(tick_labels(page, "smile", "y"))
    titles = page.evaluate("() => ['term', 'smile'].map((id) => { const l = document.getElementById(id).layout;"
                           " return [l.xaxis.title.text, l.yaxis.title.text]; })")
    assert titles == [["days to expiry", "ATM vol (%)"], ["log-moneyness k = ln(K/F)", "implied vol (%)"]]

    # the term structure starts at 0 days (never negative), with the fixed tenors' axis
    days = check(tick_labels(page, "term"))
    assert days[0] == 0 and all(d >= 0 for d in days)

    page.locator(f"tr[data-expiry='{E_30D}'] td").first.click()
    page.locator("#axis button[data-axis=strike]").click()
    drawn(page, "smile", expiry=E_30D, axis="strike")
    strikes = check(tick_labels(page, "smile"))
    assert all(60 <= s <= 160 for s in strikes), strikes  # in thousands ("70k"), around the 100k forward
    assert page.evaluate("() => document.getElementById('smile').layout.xaxis.title.text") == "strike (USD)"

    page.locator("#axis button[data-axis=delta]").click()
    drawn(page, "smile", expiry=E_30D, axis="delta")
    deltas = tick_labels(page, "smile")
    assert "50Δ" in deltas and set(deltas) <= {"5ΔP", "10ΔP", "25ΔP", "50Δ", "25ΔC", "10ΔC", "5ΔC"}, deltas
    # bid, ask and mid points: one each per strike of the selected expiry, at its quotes
    state = gateway.state("deribit", "BTC")
    quoted = next(v for v in state.expiries if v.expiry_ms == E_30D)
    for side, ivs in (("bid", quoted.bid_iv), ("ask", quoted.ask_iv),
                      ("mid", [(b + a) / 2 for b, a in zip(quoted.bid_iv, quoted.ask_iv)])):
        t = one(page, "smile", side)
        assert len(t["x"]) == 9 and t["y"] == pytest.approx([100 * x for x in ivs], abs=1e-9), side
        assert all(0 < x < 1 for x in t["x"]) and t["x"] == sorted(t["x"])  # deltas, rising with the strike
        assert t["text"][0].startswith(f"K={quoted.strikes[0]:g} {side} "), t["text"][0]
    assert page.errors == []


def test_tenors_rr_bf_flags_and_diagnostics(gateway, publisher, page):
    views = [view(E_7D, T0, vol=0.5512, rr25=-0.0175),
             view(E_30D, T0, vol=0.5234, rr25=-0.021, calendar_ok=False, spline_w=(1e-4, -2e-4, 1e-4, 0.0, 1e-4, 0.0)),
             view(E_90D, T0, vol=0.51, rr25=-0.025, calendar_ok=False, butterfly_ok=False, min_g=-0.0123)]
    tenors = (TenorPoint(7, 0.5512, -0.0175, 0.0042), TenorPoint(30, 0.5234, -0.021, 0.0042),
              TenorPoint(60, 0.515, -0.023, 0.0043, calendar_flag=True))
    calendar = (CalendarCheck(E_7D, E_30D, True, 0.001), CalendarCheck(E_30D, E_90D, False, -0.0021))
    publisher.send(snapshot(views, tenors=tenors, calendar=calendar))
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelectorAll('#expiries tbody tr').length === 3")
    drawn(page, "term", key="deribit:BTC", epoch=1)
    drawn(page, "wings", key="deribit:BTC", epoch=1)

    cells = table(page)
    assert list(cells)[3:8] == [f"{n} (vol pts)" for n in ("atm_vol", "rr25", "bf25", "rr10", "bf10")]
    assert cells["atm_vol (vol pts)"] == ["55.12", "52.34", "51.00"]
    assert cells["rr25 (vol pts)"] == ["-1.75", "-2.10", "-2.50"]
    assert cells["rr10 (vol pts)"] == ["-3.50", "-4.20", "-5.00"]
    assert cells["bf25 (vol pts)"] == ["0.42"] * 3 and cells["bf10 (vol pts)"] == ["1.05"] * 3
    assert cells["forward (USD)"] == ["100000.0"] * 3
    assert cells["days"] == ["7.00", "30.00", "90.00"]
    assert cells["RMSE (vol pts)"] == ["0.210"] * 3
    assert cells["quotes used"] == ["25"] * 3
    assert cells["in band (%)"] == ["75"] * 3
    assert cells["butterfly"] == ["ok", "ok", "g=-0.012"]
    assert cells["curve"] == ["SVI", "SVI + spline (6)", "SVI"]  # how each smile was made
    assert cells["calendar"][0] == "ok" and all(c.startswith("arb Δw=-2.1e-3") for c in cells["calendar"][1:])
    assert "venues" not in cells  # a single-venue surface has no attribution to show

    tenor_rows = page.eval_on_selector_all("#tenors tbody tr", "els => els.map((tr) => [...tr.children].map((td) => td.textContent))")
    assert tenor_rows == [["7 d", "55.12", "-1.75", "0.42", "ok"], ["30 d", "52.34", "-2.10", "0.42", "ok"],
                          ["60 d", "51.50", "-2.30", "0.43", "arb"]]
    # term structure: a point per expiry (days, ATM vol %), a square per fixed tenor (the flagged
    # one red), a ring on the butterfly- and calendar-flagged expiries whose hover says why, the
    # failing pair joined in red
    expiries = one(page, "term", "expiry")
    assert expiries["customdata"] == [E_7D, E_30D, E_90D]
    assert expiries["x"] == pytest.approx([7, 30, 90]) and expiries["y"] == pytest.approx([55.12, 52.34, 51.0])
    assert expiries["text"][0] == f"{day(E_7D)}: ATM 55.12 vol pts"
    tenor = one(page, "term", "tenor")
    assert tenor["x"] == [7, 30, 60] and tenor["y"] == pytest.approx([55.12, 52.34, 51.5])
    assert [c == "#f85149" for c in tenor["marker"]["color"]] == [False, False, True]
    assert "calendar arbitrage" in tenor["text"][2] and tenor["text"][0] == "7d fixed tenor: ATM 55.12 vol pts"
    butterfly = one(page, "term", "butterfly-flag")
    assert butterfly["customdata"] == [E_90D] and "butterfly arbitrage (min g -0.012)" in butterfly["text"][0]
    calendar_flag = one(page, "term", "calendar-flag")
    assert calendar_flag["customdata"] == [E_30D, E_90D] and all("calendar arbitrage" in t for t in calendar_flag["text"])
    pair = one(page, "term", "calendar-pair")
    assert pair["x"] == pytest.approx([30, 90, None]) and pair["y"] == pytest.approx([52.34, 51.0, None])
    assert f"between {day(E_30D)} and {day(E_90D)}" in pair["text"][0]
    # RR/BF chart: every vol-pts node but atm_vol per expiry, the tenors' rr25/bf25, flags
    nodes = {t["node"]: t for t in traces(page, "wings", "node")}
    assert sorted(nodes) == ["bf10", "bf25", "rr10", "rr25"]
    assert all(t["customdata"] == [E_7D, E_30D, E_90D] and t["x"] == pytest.approx([7, 30, 90]) for t in nodes.values())
    assert nodes["rr25"]["y"] == pytest.approx([-1.75, -2.1, -2.5]) and nodes["rr10"]["y"] == pytest.approx([-3.5, -4.2, -5.0])
    assert nodes["bf25"]["y"] == pytest.approx([0.42] * 3) and nodes["bf10"]["y"] == pytest.approx([1.05] * 3)
    wing_tenors = {t["node"]: t for t in traces(page, "wings", "tenor")}
    assert wing_tenors["rr25"]["y"] == pytest.approx([-1.75, -2.1, -2.3]) and wing_tenors["bf25"]["y"] == pytest.approx([0.42, 0.42, 0.43])
    bars = one(page, "wings", "flag-bar")
    why = {x: t for x, t in zip(bars["x"], bars["text"]) if x is not None}  # a bar per flagged expiry, saying why
    assert why == {30: f"{day(E_30D)}: calendar arbitrage", 90: f"{day(E_90D)}: butterfly and calendar arbitrage"}, why
    assert set(bars["customdata"]) - {None} == {E_30D, E_90D}
    assert "rr25 (vol pts)" in page.locator("#wings-legend").text_content()
    # a point of either chart selects its expiry (a real click at the point's pixel: plotly_click)
    assert one(page, "term", "selected")["customdata"] == [E_7D]
    click_point(page, "term", "expiry", 2, day(E_90D))
    wait(page, "(e) => Number(document.querySelector('#expiries tbody tr.sel').dataset.expiry) === e", E_90D)
    drawn(page, "wings", expiry=E_90D)
    click_point(page, "wings", "node", 1, f"{day(E_30D)} rr25", node="rr25")
    wait(page, "(e) => Number(document.querySelector('#expiries tbody tr.sel').dataset.expiry) === e", E_30D)
    drawn(page, "term", expiry=E_30D)
    assert one(page, "term", "selected")["customdata"] == [E_30D]  # the selected expiry highlighted
    assert one(page, "wings", "selected")["customdata"] == [E_30D] * 4
    assert query(page)["expiry"] == day(E_30D)

    # the combined surface: quotes attributed to venues, in the table and the smile
    attributed = view(E_7D, T0, venue="all", bid_venue=["deribit"] * 5 + ["okx"] * 4, ask_venue=["okx"] * 9)
    publisher.send(snapshot([attributed], venue="all"))
    page.locator("#tabs button", has_text="all:BTC").click()
    wait(page, "() => [...document.querySelectorAll('#expiries thead th')].some((th) => th.textContent === 'venues')")
    assert table(page)["venues"] == ["deribit 5 · okx 13"]
    drawn(page, "smile", key="all:BTC")
    legend = page.locator("#smile-legend").text_content()
    assert "deribit quote" in legend and "okx quote" in legend
    bids, asks = one(page, "smile", "bid"), one(page, "smile", "ask")  # each quote ringed in its venue's colour
    assert bids["marker"]["line"]["color"] == ["#ffd33d"] * 5 + ["#d2a8ff"] * 4
    assert asks["marker"]["line"]["color"] == ["#d2a8ff"] * 9
    assert bids["text"][0].endswith("(deribit)") and asks["text"][0].endswith("(okx)")
    assert page.errors == []


def test_ages_are_on_the_exchange_clock_and_stale_data_greys_the_page(gateway, publisher, page):
    publisher.send(snapshot([view(E_7D, T0), view(E_30D, T0)]))
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelectorAll('#expiries tbody tr').length === 2")
    # newer exchange data is live: two weeks behind the browser's clock, yet seconds old on the
    # exchange's. Each round publishes a newer exchange time and reads the table and the page's
    # state in one call: a loaded box can stall the page past STALE_MS between two reads (CI,
    # 2026-12-07: greyed by the time of the read after the one that saw fresh ages)
    epoch, ts, fresh = 1, T0, None
    deadline = time.monotonic() + 20 * STALE_MS / 1000
    while fresh is None and time.monotonic() < deadline:
        epoch, ts = epoch + 1, ts + 100
        vol = 0.5 + (epoch % 5_000) / 10_000
        publisher.send(patch(epoch, [view(E_7D, ts, vol=vol), view(E_30D, ts)], ts_ms=ts))
        wait(page, "(v) => document.querySelector('#expiries tbody tr').children[3].textContent === v", f"{100 * vol:.2f}")
        cells, state, greyed = page.evaluate(f"""() => [({TABLE_JS})(), document.querySelector('#conn').textContent,
                                                      document.body.classList.contains('greyed')]""")
        if state == "live" and not greyed:
            fresh = cells
    assert fresh is not None, "newer exchange data never showed as live"
    assert all(age_ms(a) < STALE_MS for a in fresh["quote age"] + fresh["fit age"]), fresh

    # patches keep arriving but carry no newer exchange time: the data is stale all the same
    # (bounded by wall time, not by a count: a fast box shows hundreds of patches within STALE_MS;
    # on a loaded one STALE_MS can pass before the first)
    stale = False
    deadline = time.monotonic() + 20 * STALE_MS / 1000
    while not stale and time.monotonic() < deadline:
        epoch += 1
        vol = 0.5 + (epoch % 5_000) / 10_000
        publisher.send(patch(epoch, [view(E_7D, ts, vol=vol)], ts_ms=ts))
        wait(page, "(v) => document.querySelector('#expiries tbody tr').children[3].textContent === v", f"{100 * vol:.2f}")
        stale = page.evaluate("document.body.classList.contains('greyed')")
    assert stale
    assert page.locator("#conn").text_content() == "stale"
    banner = page.locator("#banner").text_content()
    assert "stale" in banner and "no new exchange data" in banner
    assert age_ms(re.search(r"in ([\d.]+ m?s)", banner).group(1)) >= STALE_MS

    # newer exchange time: live again, and the ages restart from it
    publisher.send(patch(epoch + 1, [view(E_7D, ts + 10_000)], ts_ms=ts + 10_000))
    wait(page, "() => !document.body.classList.contains('greyed') && document.querySelector('#conn').textContent === 'live'")
    assert page.locator("#banner").is_hidden()
    assert page.errors == []


def test_rows_keep_their_identity_and_a_click_selects_first_try(gateway, publisher, page):
    expiries = [T0 + d * DAY for d in (1, 7, 14, 30, 60, 90)]
    publisher.send(snapshot([view(e, T0) for e in expiries]))
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelectorAll('#expiries tbody tr').length === 6")
    target = expiries[3]
    handle = page.query_selector(f"tr[data-expiry='{target}']")
    for epoch in range(2, 22):  # 20 patches, each changing every expiry
        ts = T0 + epoch * 100
        publisher.send(patch(epoch, [view(e, ts, vol=0.5 + epoch / 1000) for e in expiries], ts_ms=ts))
    wait(page, "() => document.querySelector('#expiries tbody tr').children[3].textContent === '52.10'")
    assert handle.evaluate("(tr) => tr.isConnected && tr === document.querySelector(`tr[data-expiry='${tr.dataset.expiry}']`)")
    assert handle.evaluate("(tr) => tr.children[3].textContent") == "52.10"  # updated in place

    # a click while patches flow selects on the first try
    done = threading.Event()
    flow = Publisher(gateway)

    def stream(epoch: int = 100, pace: threading.Event | None = None):
        while not done.is_set():
            ts = T0 + epoch * 100
            flow.send(patch(epoch, [view(e, ts, vol=0.5 + (epoch % 50) / 1000) for e in expiries], ts_ms=ts))
            epoch += 1
            if pace is not None:
                pace.wait(0.02)  # a steady 50 patches a second, not as fast as the gateway takes them

    # the charts are updated in place (Plotly.react: the same graph div and SVG), at most twice a second
    for chart in CHARTS:
        drawn(page, chart, epoch=21)
    charts = "() => ['term', 'wings', 'smile'].map((id) => document.querySelector(`#${id} .main-svg`))"
    page.evaluate(f"() => ({charts})().forEach((n) => {{ n.dataset.tag = 'kept'; }})")
    revisions = page.evaluate("() => ['term', 'wings', 'smile'].map((id) => Number(document.getElementById(id).dataset.revision))")
    # at a steady rate: flooded, a page on a busy machine falls behind, the gateway drops it (a slow
    # client) and its reconnect banner moves the rows under the pointer (the click timed out, 2026-12-07)
    thread = threading.Thread(target=stream, args=(100, threading.Event()), daemon=True)
    thread.start()
    try:
        before = gateway.counters["published.SurfacePatch"]
        assert gateway.wait_until(lambda g: g.counters["published.SurfacePatch"] > before + 10, timeout=10)
        wait(page, "(r) => ['term', 'wings', 'smile'].every((id, i) => Number(document.getElementById(id).dataset.revision) >= r[i] + 3)",
             revisions)
        for chart in CHARTS:
            started = page.evaluate("(id) => volgraph.charts[id].drawnMs", chart)[-4:]
            gaps = [b - a for a, b in zip(started, started[1:])]
            assert len(gaps) == 3 and min(gaps) >= 499, (chart, gaps)  # CHART_MIN_MS = 500 (timer resolution aside)
        assert page.evaluate(f"() => ({charts})().every((n) => n && n.isConnected && n.dataset.tag === 'kept')")

        handle.click()
        assert selected(page) == target
        assert query(page)["expiry"] == day(target)
        assert handle.evaluate("(tr) => tr.isConnected")
    finally:
        done.set()
        thread.join(10)

    # a chart point too, while patches flow and the charts redraw: one real click on the term
    # structure's, then the RR/BF chart's, at the same steady rate.
    done.clear()
    thread = threading.Thread(target=stream, args=(10_000, threading.Event()), daemon=True)
    thread.start()
    try:
        drawn(page, "term", expiry=target)
        revision = page.evaluate("() => Number(document.getElementById('term').dataset.revision)")
        wait(page, "(r) => Number(document.getElementById('term').dataset.revision) >= r + 2", revision)  # redrawing
        click_point_selects(page, "term", "expiry", 1, day(expiries[1]), expiries[1])
        click_point_selects(page, "wings", "node", 4, f"{day(expiries[4])} rr25", expiries[4], node="rr25")
        assert query(page)["expiry"] == day(expiries[4])
        assert page.evaluate("() => Number(document.getElementById('term').dataset.revision)") > revision + 2
    finally:
        done.set()
        thread.join(10)
        flow.close()
    # the charts catch up with the last patch: every expiry, at the gateway's values
    state = gateway.state("deribit", "BTC")
    for chart in CHARTS:
        drawn(page, chart, epoch=state.epoch, expiry=expiries[4])
    assert one(page, "term", "expiry")["y"] == pytest.approx([100 * v.analytics["atm_vol"] for v in state.expiries])
    assert one(page, "term", "expiry")["customdata"] == expiries
    assert one(page, "term", "selected")["customdata"] == [expiries[4]]
    wings = {t["node"]: t["y"] for t in traces(page, "wings", "node")}
    assert sorted(wings) == ["bf10", "bf25", "rr10", "rr25"]
    for node, ys in wings.items():
        assert ys == pytest.approx([100 * v.analytics[node] for v in state.expiries]), node
    assert page.errors == []


def test_disconnect_greys_with_age_and_a_new_gateway_resyncs(browser, artifacts):
    gw = start_gateway()
    port = gw.port
    pub = Publisher(gw)
    pub.send(snapshot([view(E_7D, T0, vol=0.5512), view(E_30D, T0, vol=0.5234)]))
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(gw.http_url)
        wait(page, "() => document.querySelector('#conn').textContent === 'live' && document.querySelectorAll('#expiries tbody tr').length === 2")
        for chart in CHARTS:
            drawn(page, chart, epoch=1)
        pub.close()
        gw.stop()
        wait(page, "() => document.body.classList.contains('greyed') && document.querySelector('#conn').textContent === 'disconnected'",
             timeout_ms=2_000)
        banner = page.locator("#banner").text_content()
        assert "disconnected" in banner and re.search(r"showing data [\d.]+ m?s old", banner), banner
        assert table(page)["atm_vol (vol pts)"] == ["55.12", "52.34"]  # kept on screen, greyed, not blanked
        assert one(page, "term", "expiry")["y"] == pytest.approx([55.12, 52.34])  # the charts too
        # the greying covers the charts: each graph div sits in the grey, half-transparent <main>
        wait(page, "() => { const m = getComputedStyle(document.querySelector('main'));"
                   " return m.filter === 'grayscale(1)' && Number(m.opacity) === 0.5; }")
        assert page.evaluate("() => ['term', 'wings', 'smile'].every((id) => document.getElementById(id).closest('main')"
                             " && document.getElementById(id).data.length > 0)")
        page.screenshot(path=str(artifacts / "disconnected.png"))

        gw = start_gateway(port)  # a new gateway on the same port, with a newer surface
        pub = Publisher(gw)
        pub.send(snapshot([view(E_30D, T0 + 60_000, vol=0.6001)], ts_ms=T0 + 60_000))
        wait(page, "() => document.querySelector('#conn').textContent === 'live' && !document.body.classList.contains('greyed')"
                   " && document.querySelectorAll('#expiries tbody tr').length === 1", timeout_ms=20_000)
        assert table(page)["atm_vol (vol pts)"] == ["60.01"]  # the snapshot replaced the old surface whole
        assert selected(page) == E_30D  # the selected 7-day expiry is gone: the most liquid one left
        drawn(page, "term", expiry=E_30D)
        assert one(page, "term", "expiry")["y"] == pytest.approx([60.01])
        wait(page, "() => getComputedStyle(document.querySelector('main')).filter === 'none'")
        page.screenshot(path=str(artifacts / "resynced.png"))
    finally:
        pub.close()
        gw.stop()
        ctx.close()
    assert errors == []


def test_favicon_and_assets_are_served_without_404(gateway, publisher, page):
    with urllib.request.urlopen(f"{gateway.http_url}/favicon.ico", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
        assert r.read().startswith(b"<svg")
    with urllib.request.urlopen(f"{gateway.http_url}/", timeout=10) as r:
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-cache"
    with urllib.request.urlopen(f"{gateway.http_url}/dashboard.json", timeout=10) as r:
        assert r.read() == b'{"surfaces":[],"stale_after_ms":1500,"plotly_js":"%s"}' % web.plotly_url().encode()
    btc_and_eth(publisher)
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelectorAll('#expiries tbody tr').length === 4")
    for epoch in range(2, 12):
        ts = T0 + epoch * 1000
        publisher.send(patch(epoch, [view(E_7D, ts, n_quotes=40, vol=0.55 + epoch / 1000)], ts_ms=ts))
    wait(page, "() => document.querySelector(`tr[data-expiry='%d']`).children[3].textContent === '56.10'" % E_7D)
    assert page.errors == []  # no 404 (favicon included), no console error


def test_without_plotly_each_chart_panel_says_why_and_the_tables_work(gateway, publisher, page):
    """Plotly.js that does not load (here: the request fails): every chart panel says so, the
    tables show the surface as before; nothing is fetched from another host instead."""
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.route("**/static/plotly.min.js*", lambda route: route.abort())
    publisher.send(snapshot([view(E_7D, T0, vol=0.5512), view(E_30D, T0, vol=0.5234)]))
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelectorAll('#expiries tbody tr').length === 2"
               " && ['term', 'wings', 'smile'].every((id) => document.getElementById(id + '-panel').dataset.state === 'error')")
    assert table(page)["atm_vol (vol pts)"] == ["55.12", "52.34"]
    for chart in CHARTS:
        note = page.locator(f"#{chart}-note")
        assert note.is_visible() and note.get_attribute("data-reason") == "plotly-error"
        assert note.text_content().startswith("chart off: could not load Plotly.js from the gateway (/static/plotly.min.js?v=")
        assert "retrying when it reconnects" in note.text_content()
        assert page.evaluate("(id) => document.getElementById(id).data === undefined", chart)  # nothing drawn
    assert page.locator("#surface3d-note").text_content().startswith("3D surface: could not load Plotly.js")
    assert all(u.startswith(gateway.http_url) for u in requested), requested
    # the aborted request is the only error the page saw
    assert [e for e in page.errors if "net::ERR_FAILED" not in e] == []
    page.errors.clear()


def test_a_missing_node_is_said_in_its_chart_panel(gateway, publisher, page):
    """An expiry without atm_vol or any other vol-pts node: the term structure and RR/BF panels
    say what graph.toml lacks, drawn nothing; the smile still draws."""
    v = view(E_7D, T0)
    bare = ExpiryView(E_7D, v.fit, analytics={"jw_v": 0.2}, units={"jw_v": "var/yr"}, strikes=v.strikes,
                      bid_iv=v.bid_iv, ask_iv=v.ask_iv)
    publisher.send(snapshot([bare]))
    page.goto(gateway.http_url)
    for chart in CHARTS:
        drawn(page, chart, key="deribit:BTC", epoch=1)
    term, wings = page.locator("#term-note"), page.locator("#wings-note")
    assert term.is_visible() and term.get_attribute("data-reason") == "missing-node"
    assert term.text_content() == "no node named atm_vol in graph.toml: add [nodes.atm_vol] to plot the term structure"
    assert wings.is_visible() and wings.text_content() == "no vol-pts nodes besides atm_vol in graph.toml"
    assert traces(page, "term") == [] and traces(page, "wings") == []
    assert page.locator("#smile-note").is_hidden() and len(one(page, "smile", "bid")["x"]) == 9
    assert page.errors == []
