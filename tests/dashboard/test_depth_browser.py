"""The dashboard's depth ladder (vol at size) in a real headless Chromium: the selected strike's
option books (ExpiryView.ladders, merged by instrument from sparse patches) show each level's
bid/ask price, size and vol and the execution vols per size, equal to the gateway's merged state;
a patch carrying one book leaves the other books' tables (the same DOM nodes) as they were; a
stale book is greyed; a click on a row of the strike table picks the strike (kept in the URL);
the smile overlays the execution-vol band of a chosen size."""

from __future__ import annotations

import msgspec
import pytest
from websockets.sync.client import connect as ws_connect

from operators.events import Ladders, SurfacePatch, to_json
from tests.dashboard.test_dashboard_browser import DAY, T0, js_fixed, view
from tests.dashboard.test_dashboard_view import traces
from tests.helpers.browser import chromium, watch
from tests.helpers.gateway import serve_gateway

pytestmark = pytest.mark.browser

DEPTH, SIZES = 3, (1.0, 10.0)


def book_ladders(books: list[tuple[float, str, float, bool]]) -> Ladders:
    """Ladders of (strike, "C"/"P", a base price, stale) books: prices, sizes and vols made from the
    base; a stale book has no levels; the third level and the 10-contract walk of the bids absent."""
    def level(base, j, side):
        return None if j == 2 and side == "bid" else round(base + (0.0005 * j if side == "ask" else -0.0005 * j), 4)

    def rows(f):
        return tuple(tuple(None if stale else f(base, j) for j in range(DEPTH)) for _, _, base, stale in books)

    def walks(f):
        return tuple(tuple(None if stale else f(base, j) for j in range(len(SIZES))) for _, _, base, stale in books)

    return Ladders(
        level_depth=DEPTH, sizes_contracts=SIZES,
        instrument=tuple(f"BTC-6NOV26-{k:.0f}-{t}" for k, t, _, _ in books), venue=("deribit",) * len(books),
        strike=tuple(k for k, _, _, _ in books), option_type=tuple(t for _, t, _, _ in books),
        contract_size=(1.0,) * len(books), stale=tuple(s for _, _, _, s in books),
        bid_px=rows(lambda b, j: level(b, j, "bid")), bid_size_contracts=rows(lambda b, j: None if j == 2 else 2.5 + j),
        bid_iv=rows(lambda b, j: None if j == 2 else 0.5 - 0.01 * j - b),
        ask_px=rows(lambda b, j: level(b, j, "ask")), ask_size_contracts=rows(lambda b, j: 1.5 + 4 * j),
        ask_iv=rows(lambda b, j: 0.52 + 0.01 * j + b),
        bid_exec_px=walks(lambda b, j: None if j == 1 else b), bid_exec_iv=walks(lambda b, j: None if j == 1 else 0.5 - b),
        ask_exec_px=walks(lambda b, j: b + 0.0004 * (j + 1)), ask_exec_iv=walks(lambda b, j: 0.521 + 0.006 * j + b))


def with_ladders(v, lad, n_quotes=25):
    return msgspec.structs.replace(v, fit=msgspec.structs.replace(v.fit, n_quotes=n_quotes), ladders=lad)


def pct(x):  # a ladder value: NaN is none (null on the wire)
    return "–" if x != x else js_fixed(100 * x, 2)


def fixed(x, d):
    return "–" if x != x else js_fixed(x, d)


def expected_books(state, expiry_ms: int, strike: float) -> list[dict]:
    """What the panel must show for the gateway's merged ladders at one strike, calls first."""
    lad = next(v for v in state.expiries if v.expiry_ms == expiry_ms).ladders
    out = []
    for i in sorted((i for i, k in enumerate(lad.strike) if k == strike),
                    key=lambda i: (lad.option_type[i], lad.venue[i], lad.instrument[i])):
        rows = [[str(j + 1), pct(lad.bid_iv[i][j]), fixed(lad.bid_size_contracts[i][j], 1), fixed(lad.bid_px[i][j], 4),
                 fixed(lad.ask_px[i][j], 4), fixed(lad.ask_size_contracts[i][j], 1), pct(lad.ask_iv[i][j])]
                for j in range(lad.level_depth)]
        rows += [[f"size {s:g}", pct(lad.bid_exec_iv[i][j]), "", fixed(lad.bid_exec_px[i][j], 4),
                  fixed(lad.ask_exec_px[i][j], 4), "", pct(lad.ask_exec_iv[i][j])]
                 for j, s in enumerate(lad.sizes_contracts)]
        out.append({"instrument": lad.instrument[i], "stale": lad.stale[i], "rows": rows})
    return out


def expected_band(state, expiry_ms: int, size: float) -> dict:
    """Points of the smile's band per side: per strike its out-of-the-money live book (else the
    other live one), counted where that book has an execution vol at `size`."""
    view = next(v for v in state.expiries if v.expiry_ms == expiry_ms)
    lad, j = view.ladders, view.ladders.sizes_contracts.index(size)
    chosen: dict = {}
    for i, k in enumerate(lad.strike):
        if lad.stale[i]:
            continue
        otm = (k >= view.fit.forward) == (lad.option_type[i] == "C")
        if k not in chosen or (otm and not chosen[k][1]):
            chosen[k] = (i, otm)
    has = lambda v: v == v  # noqa: E731  (NaN: no execution vol)
    picked = [i for i, _ in chosen.values() if has(lad.bid_exec_iv[i][j]) or has(lad.ask_exec_iv[i][j])]
    return {"band-bid": sum(has(lad.bid_exec_iv[i][j]) for i in picked),
            "band-ask": sum(has(lad.ask_exec_iv[i][j]) for i in picked)}


def shown_books(page) -> dict:
    return page.evaluate("""() => {
        const box = document.getElementById('depth-books');
        return {
            epoch: Number(box.dataset.epoch), strike: Number(box.dataset.strike), expiry: Number(box.dataset.expiry),
            hidden: document.getElementById('depth-panel').hidden,
            books: [...box.children].map((t) => ({
                instrument: t.dataset.instrument, stale: t.classList.contains('stale'),
                opacity: Number(getComputedStyle(t).opacity),
                rows: [...t.tBodies[0].children].map((tr) => [...tr.children].map((td) => td.textContent)),
            })),
        };
    }""")


def same(shown: dict, expected: list[dict]) -> None:
    assert [{k: b[k] for k in ("instrument", "stale", "rows")} for b in shown["books"]] == expected
    for b in shown["books"]:
        assert (b["opacity"] < 1) == b["stale"]  # greyed exactly when stale


@pytest.fixture
def gateway():
    yield from serve_gateway("t")


def test_depth_ladder_equals_the_gateways_merged_state(gateway):
    gw, http_url = gateway
    publish = http_url.replace("http://", "ws://").rstrip("/") + "/publish"
    e1, e2 = T0 + 7 * DAY, T0 + 30 * DAY
    first = book_ladders([(90_000.0, "C", 0.1105, False), (90_000.0, "P", 0.0123, False),
                          (100_000.0, "C", 0.0512, False), (100_000.0, "P", 0.0498, False)])
    # epoch 2 carries two books only: 100000 C moves, 100000 P goes stale; the 90000 books stay
    second = book_ladders([(100_000.0, "P", 0.0, True), (100_000.0, "C", 0.0533, False)])
    errors: list[str] = []
    with ws_connect(publish, additional_headers={"Authorization": "Bearer t"}) as pub:
        pub.send(to_json(SurfacePatch("deribit", "BTC", 1, T0, T0, index_px=99_950.0,
                                      expiries=(with_ladders(view(e1, 0.5512), first, n_quotes=30),
                                                view(e2, 0.5234)))))
        assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 1, timeout=10)
        with chromium() as browser:
            page = watch(browser.new_page(viewport={"width": 1400, "height": 1200}), errors, http=False)
            page.goto(http_url)
            page.wait_for_function("() => Number(document.getElementById('depth-books').dataset.epoch) === 1",
                                   timeout=15_000)
            shown = shown_books(page)
            # no strike picked: the one nearest the forward (100000), calls first
            assert not shown["hidden"] and shown["expiry"] == e1 and shown["strike"] == 100_000.0
            same(shown, expected_books(gw.state("deribit", "BTC"), e1, 100_000.0))
            assert [b["instrument"] for b in shown["books"]] == ["BTC-6NOV26-100000-C", "BTC-6NOV26-100000-P"]
            assert shown["books"][0]["rows"][0] == ["1", "44.88", "2.5", "0.0512", "0.0512", "1.5", "57.12"]
            assert shown["books"][0]["rows"][3] == ["size 1", "44.88", "", "0.0512", "0.0516", "", "57.22"]
            page.evaluate("() => { for (const t of document.getElementById('depth-books').children) t.dataset.mark = 'kept'; }")
            pub.send(to_json(SurfacePatch("deribit", "BTC", 2, T0 + 1000, T0 + 1000, index_px=99_951.0,
                                          expiries=(with_ladders(view(e1, 0.5612), second, n_quotes=30),))))
            assert gw.wait_until(lambda g: g.epoch("deribit", "BTC") == 2, timeout=10)
            page.wait_for_function("() => Number(document.getElementById('depth-books').dataset.epoch) === 2",
                                   timeout=15_000)
            state = gw.state("deribit", "BTC")
            assert len(next(v for v in state.expiries if v.expiry_ms == e1).ladders.instrument) == 4  # merged
            shown = shown_books(page)
            same(shown, expected_books(state, e1, 100_000.0))
            assert [b["stale"] for b in shown["books"]] == [False, True]
            assert shown["books"][1]["rows"][0] == ["1", "–", "–", "–", "–", "–", "–"]
            assert page.evaluate("() => [...document.getElementById('depth-books').children]"
                                 ".every((t) => t.dataset.mark === 'kept')")  # the same tables, refilled
            # a click on the strike table's 90000 row picks that strike: the books the patch left alone
            page.locator("#strikes tbody tr[data-strike='90000']").click()
            page.wait_for_function("() => Number(document.getElementById('depth-books').dataset.strike) === 90000"
                                   " && location.search.includes('strike=90000')", timeout=15_000)
            assert page.locator("#strikes tbody tr.sel").get_attribute("data-strike") == "90000"
            same(shown_books(page), expected_books(gw.state("deribit", "BTC"), e1, 90_000.0))
            # the smile's execution-vol band at 10 contracts: one point per strike that has a vol there
            page.locator("#band button[data-size='10']").click()
            page.wait_for_function("() => location.search.includes('band=10')"
                                   " && (document.getElementById('smile').data || []).some((t) => t.meta.kind === 'band'"
                                   " && t.meta.size === 10)", timeout=15_000)
            band = {f"band-{t['side']}": len(t["x"]) for t in traces(page, "smile", "band") if t["size"] == 10}
            assert band == expected_band(gw.state("deribit", "BTC"), e1, 10.0) == {"band-bid": 0, "band-ask": 2}
            ask = next(t for t in traces(page, "smile", "band") if t["side"] == "ask")
            assert all("buying 10 contracts: execution vol" in text for text in ask["text"])
    assert errors == []
