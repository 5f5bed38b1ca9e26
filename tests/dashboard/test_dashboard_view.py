"""The dashboard's view in a real headless Chromium (Playwright driving Debian's chromium)
against a real Gateway on loopback, fed over /publish as the flow feeds it: the opening view
and the URL, axis ticks, fixed tenors, RR/BF charts and columns with units, calendar and
butterfly flags, diagnostics, venue attribution, ages on the exchange clock, stable table
rows, greying on disconnect or stale data and resync after a restart, and no 404 or console
error. Every wait is on a condition with a deadline; screenshots go to $VOLGRAPH_TEST_ARTIFACTS
(else the test's tmp dir)."""

from __future__ import annotations

import math
import os
import re
import shutil
import threading
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from connectors.gateway import web
from connectors.gateway.server import Gateway
from operators.events import CalendarCheck, ExpiryView, SmileFit, SurfacePatch, SurfaceSnapshot, TenorPoint, to_json
from tests.helpers.config import gateway_kwargs

pytestmark = pytest.mark.browser
import playwright.sync_api as playwright  # noqa: E402  (a dev dependency: `make test` installs it)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not shutil.which("chromium"):  # a failure, never a skip: a skipped browser test hides a broken dashboard
    pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does)", pytrace=False)
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]

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
         rr25: float = -0.0175, bid_venue=(), ask_venue=(), n_strikes: int = 9) -> ExpiryView:
    """An expiry with a real SVI smile of ATM vol `vol`, its quotes (bid/ask ±1 vol pt around the
    fit at strikes spread over ±2.5 standard deviations) and node values."""
    t = (expiry_ms - ts_ms) / (365 * DAY)
    b, s, rho = 2 * vol * vol * t, 0.1, -0.3
    a = vol * vol * t - b * s
    fwd = 100_000.0
    fit = SmileFit(venue, underlying, expiry_ms, 1, ts_ms, ts_ms, t, fwd, a, b, rho, 0.0, s, 0.21, n_quotes,
                   butterfly_ok, min_g, 0.8, inside_band_frac=0.75)
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

def start_gateway(port: int = 0) -> Gateway:
    gw = Gateway(**gateway_kwargs(host="127.0.0.1", port=port, publish_token=TOKEN, stale_after_ms=STALE_MS))
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
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    path = Path(os.environ.get("VOLGRAPH_TEST_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def page(browser, request, artifacts):
    """A page whose console errors and failed requests are collected (asserted empty at the end)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("console", lambda m: pg.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(f"page error: {e}"))
    pg.on("response", lambda r: pg.errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    yield pg
    pg.screenshot(path=str(artifacts / f"{request.node.name}.png"))
    ctx.close()


def wait(page, js: str, arg=None, timeout_ms: int = 15_000):
    page.wait_for_function(js, arg=arg, timeout=timeout_ms)


def table(page) -> dict[str, list[str]]:
    """The expiry table as {header label: [cell text per row]}."""
    return page.evaluate("""() => {
        const heads = [...document.querySelectorAll('#expiries thead th')].map((th) => th.textContent);
        const rows = [...document.querySelectorAll('#expiries tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent));
        return Object.fromEntries(heads.map((h, i) => [h, rows.map((r) => r[i])]));
    }""")


def selected(page):
    return page.evaluate("() => { const tr = document.querySelector('#expiries tbody tr.sel'); return tr && Number(tr.dataset.expiry); }")


def query(page) -> dict[str, str]:
    return dict(re.findall(r"([a-z]+)=([^&]*)", page.url.split("?", 1)[1] if "?" in page.url else ""))


def labels(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "els => els.map((e) => e.textContent)")


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
    assert page.locator("#smile polyline.svi").count() == 2  # the selected fit and the overlaid one
    assert page.locator("#smile polyline.overlay-curve").get_attribute("data-expiry") == str(E_30D)

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
    wait(page, "() => document.querySelectorAll('#smile .xtick').length > 2")

    def check(ticks: list[str]) -> list[float]:
        assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks
        assert not any(re.fullmatch(r"-0(\.0*)?k?", t) for t in ticks), ticks
        return [float(t.rstrip("k")) for t in ticks]

    # 40 minutes to expiry: k spans about ±0.01, the labels have the decimals the step needs
    ks = check(labels(page, "#smile .xtick"))
    steps = {round(b - a, 9) for a, b in zip(ks, ks[1:])}
    assert len(steps) == 1, ks  # evenly spaced
    assert 0.0 in ks and max(ks) < 0.05 and min(ks) > -0.05
    check(labels(page, "#smile .ytick"))

    # the term structure starts at 0 days (never negative), with the fixed tenors' axis
    days = check(labels(page, "#term .xtick"))
    assert days[0] == 0 and all(d >= 0 for d in days)

    page.locator(f"tr[data-expiry='{E_30D}'] td").first.click()
    page.locator("#axis button[data-axis=strike]").click()
    wait(page, "() => document.querySelector('#axis button.active').dataset.axis === 'strike'")
    strikes = check(labels(page, "#smile .xtick"))
    assert all(60 <= s <= 160 for s in strikes), strikes  # in thousands ("70k"), around the 100k forward

    page.locator("#axis button[data-axis=delta]").click()
    wait(page, "() => document.querySelector('#axis button.active').dataset.axis === 'delta'")
    deltas = labels(page, "#smile .xtick")
    assert "50Δ" in deltas and set(deltas) <= {"5ΔP", "10ΔP", "25ΔP", "50Δ", "25ΔC", "10ΔC", "5ΔC"}, deltas
    # bid, ask and mid points: one each per strike of the selected expiry
    assert page.locator("#smile circle.bid").count() == 9
    assert page.locator("#smile circle.ask").count() == 9
    assert page.locator("#smile circle.mid").count() == 9
    assert page.errors == []


def test_tenors_rr_bf_flags_and_diagnostics(gateway, publisher, page):
    views = [view(E_7D, T0, vol=0.5512, rr25=-0.0175), view(E_30D, T0, vol=0.5234, rr25=-0.021, calendar_ok=False),
             view(E_90D, T0, vol=0.51, rr25=-0.025, calendar_ok=False, butterfly_ok=False, min_g=-0.0123)]
    tenors = (TenorPoint(7, 0.5512, -0.0175, 0.0042), TenorPoint(30, 0.5234, -0.021, 0.0042),
              TenorPoint(60, 0.515, -0.023, 0.0043, calendar_flag=True))
    calendar = (CalendarCheck(E_7D, E_30D, True, 0.001), CalendarCheck(E_30D, E_90D, False, -0.0021))
    publisher.send(snapshot(views, tenors=tenors, calendar=calendar))
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelectorAll('#expiries tbody tr').length === 3 && document.querySelectorAll('#term rect.tenor').length === 3")

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
    assert cells["calendar"][0] == "ok" and all(c.startswith("arb Δw=-2.1e-3") for c in cells["calendar"][1:])
    assert "venues" not in cells  # a single-venue surface has no attribution to show

    tenor_rows = page.eval_on_selector_all("#tenors tbody tr", "els => els.map((tr) => [...tr.children].map((td) => td.textContent))")
    assert tenor_rows == [["7 d", "55.12", "-1.75", "0.42", "ok"], ["30 d", "52.34", "-2.10", "0.42", "ok"],
                          ["60 d", "51.50", "-2.30", "0.43", "arb"]]
    # term structure: a point per expiry, a square per fixed tenor (the flagged one marked),
    # a ring on the butterfly- and calendar-flagged expiries, the failing pair joined in red
    assert page.locator("#term circle.expiry-pt").count() == 3
    assert page.locator("#term rect.tenor.flagged").count() == 1
    assert page.locator("#term circle.flag:not(.cal)").count() == 1
    assert page.locator("#term circle.flag.cal").count() == 2
    assert page.locator("#term line.cal-arb").count() == 1
    # RR/BF chart: every vol-pts node but atm_vol per expiry, the tenors' rr25/bf25, flags
    nodes = page.eval_on_selector_all("#wings circle.node-pt", "els => els.map((e) => e.dataset.node)")
    assert sorted(nodes) == sorted(["rr25", "bf25", "rr10", "bf10"] * 3)
    assert page.locator("#wings rect.tenor").count() == 6
    assert page.locator("#wings line.flag-line").count() == 2
    assert "rr25 (vol pts)" in page.locator("#wings-legend").text_content()
    # a point of either chart selects its expiry
    page.locator(f"#term circle.expiry-pt[data-expiry='{E_90D}']").click()
    assert selected(page) == E_90D
    page.locator(f"#wings circle.node-pt[data-expiry='{E_30D}'][data-node='rr25']").click()
    assert selected(page) == E_30D
    assert page.locator("#term circle.expiry-pt.sel").get_attribute("data-expiry") == str(E_30D)

    # the combined surface: quotes attributed to venues, in the table and the smile
    attributed = view(E_7D, T0, venue="all", bid_venue=["deribit"] * 5 + ["okx"] * 4, ask_venue=["okx"] * 9)
    publisher.send(snapshot([attributed], venue="all"))
    page.locator("#tabs button", has_text="all:BTC").click()
    wait(page, "() => [...document.querySelectorAll('#expiries thead th')].some((th) => th.textContent === 'venues')")
    assert table(page)["venues"] == ["deribit 5 · okx 13"]
    legend = page.locator("#smile-legend").text_content()
    assert "deribit quote" in legend and "okx quote" in legend
    assert page.errors == []


def test_ages_are_on_the_exchange_clock_and_stale_data_greys_the_page(gateway, publisher, page):
    publisher.send(snapshot([view(E_7D, T0), view(E_30D, T0)]))
    page.goto(gateway.http_url)
    wait(page, "() => document.querySelector('#conn').textContent === 'live' && document.querySelectorAll('#expiries tbody tr').length === 2")
    cells = table(page)
    # two weeks behind the browser's clock, yet seconds old on the exchange's
    assert all(age_ms(a) < STALE_MS for a in cells["quote age"] + cells["fit age"]), cells
    assert not page.evaluate("document.body.classList.contains('greyed')")

    # patches keep arriving but carry no newer exchange time: the data is stale all the same
    epoch, stale = 1, False
    for epoch in range(2, 400):
        vol = 0.5 + epoch / 10_000
        publisher.send(patch(epoch, [view(E_7D, T0, vol=vol)]))
        wait(page, "(v) => document.querySelector('#expiries tbody tr').children[3].textContent === v", f"{100 * vol:.2f}")
        if page.evaluate("document.body.classList.contains('greyed')"):
            stale = True
            break
    assert stale and epoch > 2
    assert page.locator("#conn").text_content() == "stale"
    banner = page.locator("#banner").text_content()
    assert "stale" in banner and "no new exchange data" in banner
    assert age_ms(re.search(r"in ([\d.]+ m?s)", banner).group(1)) >= STALE_MS

    # newer exchange time: live again, and the ages restart from it
    publisher.send(patch(epoch + 1, [view(E_7D, T0 + 10_000)], ts_ms=T0 + 10_000))
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

    def stream():
        epoch = 100
        while not done.is_set():
            ts = T0 + epoch * 100
            flow.send(patch(epoch, [view(e, ts, vol=0.5 + (epoch % 50) / 1000) for e in expiries], ts_ms=ts))
            epoch += 1

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        before = gateway.counters["published.SurfacePatch"]
        assert gateway.wait_until(lambda g: g.counters["published.SurfacePatch"] > before + 10, timeout=10)
        handle.click()
        assert selected(page) == target
        assert query(page)["expiry"] == day(target)
        assert handle.evaluate("(tr) => tr.isConnected")
    finally:
        done.set()
        thread.join(10)
        flow.close()
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
        pub.close()
        gw.stop()
        wait(page, "() => document.body.classList.contains('greyed') && document.querySelector('#conn').textContent === 'disconnected'",
             timeout_ms=2_000)
        banner = page.locator("#banner").text_content()
        assert "disconnected" in banner and re.search(r"showing data [\d.]+ m?s old", banner), banner
        assert table(page)["atm_vol (vol pts)"] == ["55.12", "52.34"]  # kept on screen, greyed, not blanked
        page.screenshot(path=str(artifacts / "disconnected.png"))

        gw = start_gateway(port)  # a new gateway on the same port, with a newer surface
        pub = Publisher(gw)
        pub.send(snapshot([view(E_30D, T0 + 60_000, vol=0.6001)], ts_ms=T0 + 60_000))
        wait(page, "() => document.querySelector('#conn').textContent === 'live' && !document.body.classList.contains('greyed')"
                   " && document.querySelectorAll('#expiries tbody tr').length === 1", timeout_ms=20_000)
        assert table(page)["atm_vol (vol pts)"] == ["60.01"]  # the snapshot replaced the old surface whole
        assert selected(page) == E_30D  # the selected 7-day expiry is gone: the most liquid one left
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
