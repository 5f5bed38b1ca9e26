"""The dashboard's 3D volatility surface (Plotly.js on WebGL) in a real headless Chromium
against a real Gateway: the gateway serves the plotly.min.js that the `plotly` package ships
(never a CDN); Chromium really has WebGL (SwiftShader through ANGLE, no GPU needed); the
panel draws each expiry's SVI smile as a row whose z the test recomputes from the gateway's
own fits; the WebGL canvas holds real pixels; a patch updates the plot in place; without
WebGL the panel says why while the 2D charts (Plotly's SVG scatter) still draw; without
plotly.min.js every chart panel says why and the rest of the page works.

Every wait is on a condition with a deadline (Playwright's wait_for_function); screenshots go
to $VOLGRAPH_TEST_ARTIFACTS (else the test's tmp dir). Never imports plotly's Python code."""

from __future__ import annotations

import json
import logging
import math
import re
import struct
import threading
import urllib.error
import urllib.request
import zlib

import pytest

from connectors.gateway import web
from operators.events import CalendarCheck
from connectors.gateway.server import Gateway
from tests.dashboard.test_dashboard_view import DAY, T0, Publisher, drawn, one, patch, snapshot, table, traces, view
from tests.dashboard.test_dashboard_view import start_gateway as view_gateway
from tests.helpers.browser import COMMON_ARGS, chromium, require_chromium, watch

pytestmark = pytest.mark.browser

require_chromium()

# WebGL with no GPU: ANGLE over SwiftShader (Chromium's CPU Vulkan), allowed explicitly
# (--enable-unsafe-swiftshader: newer Chromiums refuse the software fallback otherwise).
WEBGL_ARGS = [*COMMON_ARGS, "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
              "--ignore-gpu-blocklist"]
NO_WEBGL_ARGS = [*COMMON_ARGS, "--disable-webgl"]
SOFTWARE_RENDERERS = re.compile(r"SwiftShader|ANGLE|llvmpipe|Mesa", re.I)
PANEL = "#surface3d-panel"
STALE_MS = 3_600_000
WAIT_MS = 30_000  # Plotly.js is 4+ MB to parse on a busy CI core
E_7D, E_30D, E_90D, E_180D = (T0 + d * DAY for d in (7, 30, 90, 180))


# ---------------------------------------------------------------- the maths, in Python

def svi_vol_pts(fit, k: float) -> float:
    """Raw SVI implied vol at log-moneyness k, in vol points (as app.js sviVol × 100)."""
    d = k - fit.m
    w = fit.a + fit.b * (fit.rho * d + math.sqrt(d * d + fit.sigma * fit.sigma))
    return 100 * math.sqrt(w / fit.t_years)


def delta_x(fit, k: float) -> float:
    """1 − call delta (undiscounted, forward) from the fitted vol at k (as app.js deltaX)."""
    d = k - fit.m
    w = fit.a + fit.b * (fit.rho * d + math.sqrt(d * d + fit.sigma * fit.sigma))
    d1 = (-k + w / 2) / math.sqrt(w)
    return 0.5 * (1 + math.erf(-d1 / math.sqrt(2)))


# ---------------------------------------------------------------- pixels

def png_rgb(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """(width, height, RGB pixels) of an 8-bit, non-interlaced RGB or RGBA PNG, as Chromium's
    screenshots are. Enough of PNG to count colours; no imaging library needed."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 3 if colour == 2 else 4
    raw, stride, prev, pixels = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels += [tuple(line[x * bpp:x * bpp + 3]) for x in range(width)]
        prev = line
    return width, height, pixels


# ---------------------------------------------------------------- fixtures

def start_gateway() -> Gateway:
    """The view tests' gateway with a long stale limit: the page would grey (grayscale) stale
    data, and the pixel check looks for the surface's colours."""
    return view_gateway(stale_after_ms=STALE_MS)


@pytest.fixture
def gateway():
    gw = start_gateway()
    yield gw
    gw.stop()


@pytest.fixture
def publisher(gateway):
    pub = Publisher(gateway)
    yield pub
    pub.close()


def open_page(browser, url: str):
    """A page whose console errors, page errors and failed requests are collected, and whose
    requests are listed (page.requested)."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.errors, page.requested = [], []
    watch(page, page.errors)
    page.on("request", lambda r: page.requested.append(r.url))
    page.goto(url)
    return page


def wait(page, js: str, arg=None):
    page.wait_for_function(js, arg=arg, timeout=WAIT_MS)


def panel(page) -> dict:
    return page.evaluate(f"() => ({{ ...document.querySelector('{PANEL}').dataset }})")


def plotted(page) -> dict:
    """The surface and flag traces as Plotly holds them on the graph div (gd.data)."""
    return page.evaluate("""() => { const gd = document.getElementById('surface3d');
        const [s, f] = gd.data; return { x: s.x, y: s.y, z: s.z, type: s.type, flag: { type: f.type, x: f.x, z: f.z } }; }""")


def check_against_gateway(page, gw, axis: str = "k") -> None:
    """Every row of the plotted grid is one expiry of the gateway's surface, at its days to
    expiry, over its quoted k range, with z = that expiry's SVI vol (vol pts)."""
    state = gw.state("deribit", "BTC")
    got = plotted(page)
    assert got["type"] == "surface"
    assert len(got["z"]) == len(state.expiries) and len(got["z"]) >= 2
    for v, xs, ys, zs in zip(state.expiries, got["x"], got["y"], got["z"]):
        assert len(zs) == len(ys) == len(xs) >= 20
        assert xs == pytest.approx([(v.expiry_ms - state.ts_exchange_ms) / DAY] * len(xs), rel=1e-12)
        quoted = [math.log(K / v.fit.forward) for K in v.strikes]
        if axis == "k":
            assert ys[0] < min(quoted) and ys[-1] > max(quoted)  # the row spans the expiry's quotes
            assert zs == pytest.approx([svi_vol_pts(v.fit, k) for k in ys], rel=1e-9)
        else:  # delta: the same k samples, mapped through each fit; z unchanged
            ks = [min(quoted) + (max(quoted) - min(quoted)) * (j / (len(ys) - 1) * 1.12 - 0.06) for j in range(len(ys))]
            assert ys == pytest.approx([delta_x(v.fit, k) for k in ks], abs=1e-6)
            assert zs == pytest.approx([svi_vol_pts(v.fit, k) for k in ks], rel=1e-9)


# ---------------------------------------------------------------- tests

def test_gateway_serves_plotly_from_the_package_and_the_page_names_no_other_host(gateway):
    with urllib.request.urlopen(f"{gateway.http_url}/dashboard.json", timeout=10) as r:
        url = json.loads(r.read())["plotly_js"]
    assert re.fullmatch(r"/static/plotly\.min\.js\?v=[0-9a-f]{12}", url), url
    with urllib.request.urlopen(f"{gateway.http_url}{url}", timeout=30) as r:
        body = r.read()
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/javascript; charset=utf-8"
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"  # versioned by ?v=
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert len(body) > 1_000_000 and re.match(rb"/\*\*\s*\* plotly\.js v\d", body), body[:80]
    assert body == web.find_plotly_js("plotly").read_bytes()  # the package's own file, not a copy
    assert not list(web.DASHBOARD_DIR.glob("plotly*")), "plotly.min.js must not be copied into dashboard/"

    # the page and its assets load nothing from another host
    for name in ("index.html", "app.js", "style.css"):
        with urllib.request.urlopen(f"{gateway.http_url}/static/{name}", timeout=10) as r:
            text = r.read().decode()
        urls = set(re.findall(r"https?://[^\s\"'`<>)]+", text))
        assert not urls, f"{name} names external URLs: {sorted(urls)}"
        assert "//cdn" not in text.lower()


def test_3d_surface_draws_the_svi_fits_with_webgl(gateway, publisher, artifacts):
    views = [view(E_7D, T0, vol=0.55), view(E_30D, T0, vol=0.53, calendar_ok=False),
             view(E_90D, T0, vol=0.56, butterfly_ok=False, min_g=-0.01), view(E_180D, T0, vol=0.58)]
    publisher.send(snapshot(views, calendar=(CalendarCheck(E_7D, E_30D, False, -0.002),)))
    with chromium(WEBGL_ARGS) as browser:
        page = open_page(browser, gateway.http_url)
        wait(page, "() => { const d = document.querySelector('#surface3d-panel').dataset;"
                   " return d.state === 'drawn' && d.key === 'deribit:BTC' && d.epoch === '1'; }")
        # WebGL is real: a context with a renderer string, the software one on a machine without a GPU
        info = panel(page)
        renderer = info["renderer"]
        print(f"WebGL: {info['webgl']} renderer: {renderer!r} chromium flags: {WEBGL_ARGS}")
        (artifacts / "surface3d-webgl-renderer.txt").write_text(f"{info['webgl']}\n{renderer}\n{' '.join(WEBGL_ARGS)}\n")
        assert info["webgl"] in ("webgl2", "webgl") and renderer.strip(), info
        assert SOFTWARE_RENDERERS.search(renderer), f"unexpected WebGL renderer {renderer!r}"
        assert page.locator("#surface3d-note").is_hidden()
        assert "WebGL is not supported" not in page.locator(PANEL).inner_text()

        # the drawn grid is the gateway's SVI fits; the flagged expiries (calendar pair, butterfly) are marked
        check_against_gateway(page, gateway)
        flag = plotted(page)["flag"]
        assert flag["type"] == "scatter3d"
        days = {round(x) for x in flag["x"] if x is not None}
        assert days == {7, 30, 90}, days

        # the WebGL canvas has real pixels: the surface's colour scale in the middle of the scene
        canvas = page.locator("#surface3d canvas").first
        page.wait_for_function("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))")
        assert not page.evaluate("document.body.classList.contains('greyed')")
        box = canvas.bounding_box()
        assert box["width"] > 300 and box["height"] > 200, box
        middle = {"x": box["x"] + box["width"] / 4, "y": box["y"] + box["height"] / 4,
                  "width": box["width"] / 2, "height": box["height"] / 2}
        shot = page.screenshot(clip=middle)
        (artifacts / "surface3d-middle.png").write_bytes(shot)
        width, height, pixels = png_rgb(shot)
        colours = set(pixels)
        coloured = sum(1 for px in pixels if max(px) - min(px) > 60)  # the theme's greys are not
        assert len(colours) > 50, f"the 3D canvas is nearly blank: {len(colours)} colours"
        assert coloured > 0.03 * width * height, f"no surface drawn: {coloured} coloured pixels of {width * height}"
        page.screenshot(path=str(artifacts / "surface3d.png"))

        # a patch: the same graph div and canvas, updated in place (Plotly.react), to the new fit
        nodes = "() => [document.getElementById('surface3d'), document.querySelector('#surface3d canvas')]"
        page.evaluate(f"() => {{ const [gd, c] = ({nodes})(); gd.dataset.tag = 'kept'; c.dataset.tag = 'kept'; }}")
        publisher.send(patch(2, [view(E_30D, T0, vol=0.61, calendar_ok=False)]))
        wait(page, "() => document.querySelector('#surface3d-panel').dataset.epoch === '2'")
        check_against_gateway(page, gateway)
        assert page.evaluate(f"() => ({nodes})().every((n) => n && n.isConnected && n.dataset.tag === 'kept')")
        assert page.locator("#surface3d canvas").count() == 1

        # patches streaming: Plotly.react at most twice a second, on the same nodes
        before = int(panel(page)["revision"])
        done = threading.Event()

        def stream():
            epoch = 3
            while not done.is_set():
                publisher.send(patch(epoch, [view(E_30D, T0, vol=0.6 + (epoch % 20) / 1000, calendar_ok=False)]))
                epoch += 1

        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        try:
            wait(page, "(n) => Number(document.querySelector('#surface3d-panel').dataset.revision) >= n", before + 3)
        finally:
            done.set()
            thread.join(10)
        started = page.evaluate("() => volgraph.surface3d.drawnMs")
        gaps = [b - a for a, b in zip(started, started[1:])]
        assert len(gaps) >= 3 and min(gaps) >= 499, gaps  # SURFACE_MIN_MS = 500 (timer resolution aside)
        assert page.evaluate(f"() => ({nodes})().every((n) => n && n.isConnected && n.dataset.tag === 'kept')")
        wait(page, "(e) => document.querySelector('#surface3d-panel').dataset.epoch === String(e)", gateway.state("deribit", "BTC").epoch)
        check_against_gateway(page, gateway)

        # the smile's delta axis: y becomes 1 − call delta from each fit, z unchanged
        page.locator("#axis button[data-axis=delta]").click()
        wait(page, "() => document.querySelector('#surface3d-panel').dataset.axis === 'delta'")
        # one WebGL context on the page: the 2D charts are SVG (Plotly's scatter, no scattergl)
        assert page.evaluate("() => document.querySelectorAll('canvas').length === document.querySelectorAll('#surface3d canvas').length")
        assert page.evaluate("() => ['term', 'wings', 'smile'].every((id) => document.getElementById(id).data.every((t) => t.type === 'scatter'))")
        check_against_gateway(page, gateway, axis="delta")
        page.screenshot(path=str(artifacts / "surface3d-delta.png"))
        assert page.errors == []


def test_without_webgl_the_panel_says_why_and_the_2d_charts_draw(gateway, publisher, artifacts):
    publisher.send(snapshot([view(E_7D, T0), view(E_30D, T0)]))
    with chromium(NO_WEBGL_ARGS) as browser:
        page = open_page(browser, gateway.http_url)
        wait(page, "() => document.querySelector('#surface3d-panel').dataset.state === 'no-webgl'"
                   " && document.querySelectorAll('#expiries tbody tr').length === 2")
        assert panel(page)["webgl"] == "none"
        note = page.locator("#surface3d-note")
        assert note.is_visible() and note.inner_text().startswith("3D needs WebGL: "), note.inner_text()
        # Plotly.js is loaded for the 2D charts (SVG: no WebGL needed), from the gateway only
        assert [u for u in page.requested if "plotly" in u] == [gateway.http_url + json.loads(
            urllib.request.urlopen(f"{gateway.http_url}/dashboard.json", timeout=10).read())["plotly_js"]]
        assert table(page)["atm_vol (vol pts)"] == ["55.00", "55.00"]  # the 2D page works as before
        drawn(page, "smile", key="deribit:BTC")
        assert len(traces(page, "smile", "svi")) == 1 and len(one(page, "smile", "bid")["x"]) == 9
        drawn(page, "term", key="deribit:BTC")
        assert one(page, "term", "expiry")["y"] == pytest.approx([55.0, 55.0])
        assert page.evaluate("() => document.getElementById('surface3d').data === undefined")  # no 3D drawn
        assert "WebGL is not supported" not in page.locator(PANEL).inner_text()
        page.screenshot(path=str(artifacts / "surface3d-no-webgl.png"))
        assert page.errors == []


def test_without_plotly_js_the_gateway_logs_the_fix_and_the_page_still_works(monkeypatch, caplog, artifacts):
    # a package name that is not installed: the gateway's real lookup finds nothing
    monkeypatch.setattr(web, "PLOTLY_PACKAGE", "volgraph_test_no_such_plotly")
    web._plotly_js.cache_clear()  # so the lookup, and its log line, happen in this test
    gw = start_gateway()
    pub = Publisher(gw)
    try:
        pub.send(snapshot([view(E_7D, T0), view(E_30D, T0)]))
        with caplog.at_level(logging.ERROR, logger="volgraph.gateway"):
            with urllib.request.urlopen(f"{gw.http_url}/dashboard.json", timeout=10) as r:
                assert json.loads(r.read())["plotly_js"] is None
        assert any("plotly.min.js not found" in m and "pip install" in m for m in caplog.messages), caplog.messages
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{gw.http_url}/static/plotly.min.js", timeout=10)
        assert refused.value.code == 404 and b"pip install" in refused.value.read()
        with chromium(WEBGL_ARGS) as browser:
            page = open_page(browser, gw.http_url)
            wait(page, "() => document.querySelector('#surface3d-panel').dataset.state === 'no-plotly'"
                       " && document.querySelectorAll('#expiries tbody tr').length === 2")
            assert "pip install plotly" in page.locator("#surface3d-note").inner_text()
            assert not any("plotly" in u for u in page.requested), page.requested
            # every 2D chart panel says why it is empty; the tables work
            for chart in ("term", "wings", "smile"):
                note = page.locator(f"#{chart}-note")
                assert note.is_visible() and note.get_attribute("data-reason") == "plotly-missing"
                assert "the gateway has no Plotly.js (pip install plotly" in note.inner_text()
            assert table(page)["atm_vol (vol pts)"] == ["55.00", "55.00"]
            page.screenshot(path=str(artifacts / "surface3d-no-plotly.png"))
            assert page.errors == []
    finally:
        pub.close()
        gw.stop()
