"""The dashboard on the real system: a `volgraph run` process (both venue simulators, the
dataflow, the gateway; no PostgreSQL) and headless Chromium on its dashboard URL.

- every expiry of every surface is shown, and the table's values equal the gateway's state
  at the epoch the table shows (a reference client merges the same stream with
  operators/merge.py and keeps each epoch's state); so do the term structure and RR/BF
  charts' points (as Plotly holds them) at the epoch each chart shows;
- 10 s of exchange time of live patches with no console error, no failed request, never stale.

Every wait is on a condition with a deadline. Screenshots go to $VOLGRAPH_TEST_ARTIFACTS
(else the test's tmp dir)."""

from __future__ import annotations

import collections
import datetime as dt
import re
import signal
import subprocess
import sys
import threading
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from websockets.sync.client import connect as ws_connect

from operators.events import SurfaceSnapshot
from operators.merge import apply_patch
from tests.helpers.browser import chromium, require_chromium, watch
from tests.helpers.flowrun import DEADLINE_S
from tests.helpers.gateway import surface_event

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
require_chromium()


def js_fixed(x: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed: the exact binary value rounded half away from zero."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def expected_rows(state: SurfaceSnapshot, nodes: list[str]) -> list[dict[str, str]]:
    """What the table must show for `state`, in the page's formats (dashboard/app.js)."""
    rows = []
    for v in state.expiries:
        f = v.fit
        row = {
            "expiry": dt.datetime.fromtimestamp(v.expiry_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d"),
            "forward (USD)": js_fixed(f.forward, 1),
            "RMSE (vol pts)": js_fixed(f.rmse_vol_pts, 3),
            "quotes used": str(f.n_quotes),
            "in band (%)": "–" if f.inside_band_frac is None else js_fixed(100 * f.inside_band_frac, 0),
            "butterfly": "ok" if f.butterfly_ok else f"g={js_fixed(f.min_g, 3)}",
        }
        for name in nodes:
            x = v.analytics.get(name)
            row[f"{name} (vol pts)"] = "–" if x is None else js_fixed(100 * x, 2)
        rows.append(row)
    return rows


def js_precision4(x: float) -> str:
    """Number.prototype.toPrecision(4), exponent form included (|x| < 1e-6 or ≥ 1e4)."""
    import math

    if x == 0:
        return "0.000"
    e = math.floor(math.log10(abs(x)))
    if e < -6 or e >= 4:
        mantissa = js_fixed(x / 10 ** e, 3)
        if abs(float(mantissa)) >= 10:  # rounding carried into the next power
            e += 1
            mantissa = js_fixed(x / 10 ** e, 3)
        return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return js_fixed(x, 3 - e)


def expected_underlying(state: SurfaceSnapshot) -> list[list[str]]:
    """The term structure analytics rows (node, value, unit) for `state`, sorted by node."""
    rows = []
    for name, x in state.underlying_analytics.items():
        unit = state.underlying_units.get(name, "")
        rows.append([name, "–" if x is None else js_fixed(100 * x, 2) if unit == "vol pts" else js_precision4(x), unit])
    return sorted(rows)


def expected_iv_fit(state: SurfaceSnapshot, expiry_ms: int) -> list[str]:
    """The strike table's iv_fit column (vol pts) for that expiry of `state`."""
    view = next((v for v in state.expiries if v.expiry_ms == expiry_ms), None)
    if view is None:
        return []
    return ["–" if x is None else js_fixed(100 * x, 2) for x in view.strike_analytics.get("iv_fit", ())]


class ReferenceClient:
    """A /ws client merging snapshots and patches by the one rule, keeping every epoch's state."""

    def __init__(self, url: str):
        self.ws = ws_connect(url, max_size=None).__enter__()
        self.by_epoch: dict[str, dict[int, list[SurfaceSnapshot]]] = collections.defaultdict(dict)
        self.current: dict[str, SurfaceSnapshot] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for raw in self.ws:
                e = surface_event(raw)
                if e is None:
                    continue
                key = f"{e.venue}:{e.underlying}"
                with self.lock:
                    state = e if isinstance(e, SurfaceSnapshot) else apply_patch(self.current.get(key), e)
                    self.current[key] = state
                    history = self.by_epoch[key]
                    history.setdefault(state.epoch, []).append(state)
                    while len(history) > 2000:
                        history.pop(next(iter(history)))
        except Exception:  # noqa: BLE001 — the socket closing ends the reader
            pass

    def states_at(self, key: str, epoch: int) -> list[SurfaceSnapshot]:
        with self.lock:
            return list(self.by_epoch[key].get(epoch, []))

    def close(self):
        self.ws.__exit__(None, None, None)
        self.thread.join(timeout=10)


@pytest.fixture
def system(tmp_path):
    """`volgraph run` at the small scale on a free port, both venues (so the combined surfaces
    too), without PostgreSQL; yields its dashboard URL; SIGTERM stops the whole tree."""
    config = tmp_path / "graph.toml"
    config.write_text(f'[runtime]\nmetrics_port = 0\ndata_dir = "{tmp_path / "data"}"\n\n'
                      '[sources.deribit]\ncurrencies = ["BTC"]\n\n[sources.okx]\nfamilies = ["BTC-USD"]\n\n'
                      '[simulator]\nrate = 800\nscale = "small"\n')
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config), "--port", "0",
                             "--no-postgres"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read(stream):
        for line in stream:
            lines.append(line.rstrip("\n"))
            m = re.search(r"dashboard (http://\S+)", line)
            if m and not url:
                url.append(m.group(1).rstrip("/"))
                found.set()
        found.set()  # EOF: the run ended (the assert below says so)

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
    for t in readers:
        t.start()
    try:
        found.wait(DEADLINE_S)
        assert url, "volgraph run printed no dashboard URL:\n" + "\n".join(lines[-40:])
        yield url[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        for t in readers:
            t.join(timeout=10)


def test_live_system_every_expiry_shown_and_equal_to_the_gateway(system, artifacts):
    ref = ReferenceClient(system.replace("http://", "ws://") + "/ws")
    errors: list[str] = []
    try:
        with chromium() as browser:
            page = watch(browser.new_page(viewport={"width": 1400, "height": 900}), errors)
            page.goto(system)
            page.wait_for_function("() => document.querySelector('#expiries tbody tr.sel') && location.search.includes('expiry=')",
                                   timeout=DEADLINE_S * 1000)
            # 10 s of the selected surface's exchange time, live all along
            key = page.evaluate("() => window.volgraph.sel.key")
            first = page.evaluate("(k) => window.volgraph.surfaces.get(k).ts_exchange_ms", key)
            page.wait_for_function(
                "([k, t]) => { if (document.body.classList.contains('greyed')) throw new Error('greyed: ' + document.querySelector('#banner').textContent);"
                " return window.volgraph.surfaces.get(k).ts_exchange_ms >= t + 10000; }",
                arg=[key, first], timeout=DEADLINE_S * 1000)
            assert page.locator("#conn").text_content() == "live"

            tabs = page.eval_on_selector_all("#tabs button", "els => els.map((b) => b.dataset.key)")
            assert {"deribit:BTC", "okx:BTC", "all:BTC"} <= set(tabs), tabs
            for tab in tabs:
                page.locator(f"#tabs button[data-key='{tab}']").click()
                compared = compare_with_gateway(page, ref, tab)
                assert compared, f"{tab}: the page's epoch never matched a state the reference client saw"
                for chart in ("term", "wings"):
                    assert compare_chart_with_gateway(page, ref, tab, chart), \
                        f"{tab} {chart}: the chart's epoch never matched a state the reference client saw"
                page.screenshot(path=str(artifacts / f"live-{tab.replace(':', '-')}.png"))
    finally:
        ref.close()
    assert errors == []


def compare_with_gateway(page, ref: ReferenceClient, key: str) -> bool:
    """Read the table and the epoch it shows in one go; when the reference client saw that
    epoch, the rows must equal its state there (every expiry, every compared column). Retried
    only while the epoch is one the client has not seen (it may have been coalesced away)."""
    deadline = threading.Event()
    timer = threading.Timer(DEADLINE_S, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            page.wait_for_function("(k) => document.querySelector('#expiries tbody').dataset.key === k", arg=key,
                                   timeout=DEADLINE_S * 1000)
            shown = page.evaluate("""() => {
                const tbody = document.querySelector('#expiries tbody');
                const heads = [...document.querySelectorAll('#expiries thead th')].map((th) => th.textContent);
                const rows = [...tbody.children].map((tr) => Object.fromEntries([...tr.children].map((td, i) => [heads[i], td.textContent])));
                const und = document.querySelector('#underlying tbody'), st = document.querySelector('#strikes tbody');
                const sheads = [...document.querySelectorAll('#strikes thead th')].map((th) => th.textContent);
                return { epoch: Number(tbody.dataset.epoch), heads, rows,
                  underlying: { epoch: Number(und.dataset.epoch), key: und.dataset.key,
                    rows: [...und.children].map((tr) => [...tr.children].map((td) => td.textContent)) },
                  strikes: { epoch: Number(st.dataset.epoch), key: st.dataset.key, expiry: Number(st.dataset.expiry),
                    rows: [...st.children].map((tr) => Object.fromEntries([...tr.children].map((td, i) => [sheads[i], td.textContent]))) } };
            }""")
            states = ref.states_at(key, shown["epoch"])
            if not states:
                page.wait_for_function("(e) => Number(document.querySelector('#expiries tbody').dataset.epoch) !== e",
                                       arg=shown["epoch"], timeout=DEADLINE_S * 1000)
                continue
            nodes = [h.removesuffix(" (vol pts)") for h in shown["heads"][3:] if h.endswith(" (vol pts)") and not h.startswith("RMSE")]
            assert {"atm_vol", "rr25", "bf25", "rr10", "bf10"} <= set(nodes), shown["heads"]
            wanted = [expected_rows(s, nodes) for s in states]
            columns = list(wanted[-1][0]) if wanted[-1] else []
            got = [{c: row[c] for c in columns} for row in shown["rows"]]
            assert got in wanted, (key, shown["epoch"], got, wanted[-1])  # every expiry, every value
            assert got
            # the same frame's term structure analytics (level = "underlying", merged key by key)
            # and the selected expiry's iv_fit per strike (level = "instrument")
            und, strikes = shown["underlying"], shown["strikes"]
            assert und["epoch"] == strikes["epoch"] == shown["epoch"] and und["key"] == strikes["key"] == key
            assert und["rows"] and strikes["rows"]
            assert sorted(und["rows"]) in [expected_underlying(s) for s in states], (key, und, states[-1].underlying_analytics)
            assert [r["iv_fit (vol pts)"] for r in strikes["rows"]] in [expected_iv_fit(s, strikes["expiry"]) for s in states]
            return True
        return False
    finally:
        timer.cancel()


RR_BF_NODES = ("rr25", "bf25", "rr10", "bf10")


def chart_points(state: SurfaceSnapshot, node: str) -> dict:
    """The points a chart draws for one node of `state`: per expiry that has it, days to expiry
    on the exchange clock and the value in vol points (dashboard/app.js termFigure / wingsFigure)."""
    views = [v for v in state.expiries if v.analytics.get(node) is not None]
    return {"customdata": [v.expiry_ms for v in views],
            "x": [(v.expiry_ms - state.ts_exchange_ms) / 86_400_000 for v in views],
            "y": [100 * v.analytics[node] for v in views]}


def compare_chart_with_gateway(page, ref: ReferenceClient, key: str, chart: str) -> bool:
    """Read a chart's points (Plotly's gd.data) and the epoch it shows in one go; when the
    reference client saw that epoch, the term structure's expiry points (atm_vol) or the RR/BF
    chart's points per node must equal its state there: every expiry, every value. Retried only
    while the epoch is one the client has not seen."""
    deadline = threading.Event()
    timer = threading.Timer(DEADLINE_S, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            page.wait_for_function("([id, k]) => document.getElementById(id).dataset.key === k", arg=[chart, key],
                                   timeout=DEADLINE_S * 1000)
            shown = page.evaluate("""(id) => { const gd = document.getElementById(id);
                return { epoch: Number(gd.dataset.epoch), traces: gd.data.filter((t) => t.meta.kind === 'expiry' || t.meta.kind === 'node')
                  .map((t) => [t.meta.node || 'atm_vol', { customdata: t.customdata, x: t.x, y: t.y }]) }; }""", chart)
            states = ref.states_at(key, shown["epoch"])
            if not states:
                page.wait_for_function("([id, e]) => Number(document.getElementById(id).dataset.epoch) !== e",
                                       arg=[chart, shown["epoch"]], timeout=DEADLINE_S * 1000)
                continue
            got = dict(shown["traces"])
            nodes = ("atm_vol",) if chart == "term" else RR_BF_NODES
            assert set(nodes) <= set(got), (key, chart, sorted(got))
            got = {n: got[n] for n in nodes}
            assert all(got[n]["customdata"] for n in nodes), (key, chart, got)
            assert any(got == {n: chart_points(s, n) for n in nodes} for s in states), (
                key, chart, shown["epoch"], got, {n: chart_points(states[-1], n) for n in nodes})
            return True
        return False
    finally:
        timer.cancel()
