// volgraph dashboard: connects to the gateway's /ws (protocol: docs/gateway-protocol.md),
// merges SurfaceSnapshot and SurfacePatch messages per stream (venue, underlying) exactly as
// operators/merge.py apply_patch does, following each stream's contiguous `seq` (a gap: it
// drops that stream's patches and sends Resync until the snapshot comes), and draws, with
// Plotly.js 2D (SVG) scatter charts, an ATM term structure (with the fixed tenors), the RR/BF
// nodes per expiry and a smile (bid/ask/mid IVs and the SVI fit, several expiries overlaid,
// the execution-vol band, strike / k / delta axis); with plain DOM, a table with one row per
// expiry (expiry-level graph.toml nodes as columns, jw_* behind a toggle), the selected
// expiry's strikes (quotes and instrument-level nodes), the depth ladder of the selected
// strike's option books (vol at size: each level's price, size and vol, execution vols per
// size; greyed when stale; only with graph.toml [chain] level_depth / sizes_contracts), the
// fixed tenors and the underlying-level nodes ("term structure analytics"); and a 3D
// volatility surface from the SVI fits with Plotly.js on WebGL (drawn only when WebGL works
// and the panel is on screen). Plotly.js is the gateway's copy (/static/plotly.min.js, the
// file the `plotly` Python package ships), loaded at page start; without it the tables work
// and each chart panel says why it is empty.
//
// Never: sends anything on the websocket but Resync (pings are the browser's), loads anything
// from another origin (no CDN: the page works offline), holds a credential, or judges the age
// of data by the browser's wall clock: ages are on each venue's exchange clock (see clock()).
// Page state lives in the URL (?venue=&underlying=&expiry=&strike=&band=&axis=&overlay=&jw=), so a link or a
// reload shows the same view.
"use strict";

const surfaces = new Map();   // "venue:underlying" -> snapshot-like object
const fitSeen = new Map();    // "venue:underlying|expiry_ms" -> exchange-clock ms when the fit last changed here
const clocks = new Map();     // venue -> { ts: newest ts_exchange_ms seen, at: local monotonic ms when it was seen }
const seqs = new Map();       // "venue:underlying" -> the stream's seq this copy is at (messages that carry one)
const resyncing = new Set();  // streams whose snapshot was asked for after a gap in their seq
const DAY_MS = 86400000;
const TERM_NODE = "atm_vol";  // the graph.toml node the term structure plots (a decimal vol)
const monoMs = () => (typeof performance !== "undefined" ? performance.now() : Date.now());

// ---------------------------------------------------------------- merge (= apply_patch)
// The browser's copy of the one merge rule (operators/merge.py): drop `removed`, then replace
// expiries by expiry_ms; tenors and calendar whole; index_px kept when the patch has none;
// underlying_analytics and underlying_units (level = "underlying" nodes) updated key by key
// (a patch carries only the values that changed; a snapshot's replace them whole); a re-sent
// expiry's `ladders` (vol at size, columns per option book) are the old view's updated by
// instrument (mergeLadders: a known book keeps its place, new ones follow; none sent keeps the
// old; another level_depth or sizes_contracts replaces them whole), and go with their expiry
// when it is removed.
// tests/dashboard/test_merge_js.py runs applyPatch and onMessage under Node.js against the
// Python rule on generated patch sequences: change both together.

const LADDER_BOOK_FIELDS = ["instrument", "venue", "strike", "option_type", "contract_size", "stale",
  "bid_px", "bid_size_contracts", "bid_iv", "ask_px", "ask_size_contracts", "ask_iv",
  "bid_exec_px", "bid_exec_iv", "ask_exec_px", "ask_exec_iv"];

function mergeLadders(old, add) {
  if (!add || !add.instrument.length) return old != null ? old : add;
  if (!old || !old.instrument.length) return add;
  // a ladder of another shape (a config change across a restart) is replaced whole
  if (old.level_depth !== add.level_depth || old.sizes_contracts.join() !== add.sizes_contracts.join()) return add;
  const rows = new Map();  // instrument -> [ladders, index]; Map.set keeps a known key's place
  old.instrument.forEach((name, i) => rows.set(name, [old, i]));
  add.instrument.forEach((name, i) => rows.set(name, [add, i]));
  const out = { ...add };
  for (const f of LADDER_BOOK_FIELDS) out[f] = [...rows.values()].map(([src, i]) => src[f][i]);
  return out;
}

function mergedView(old, view) {
  if (!old || old.ladders == null) return view;
  const ladders = mergeLadders(old.ladders, view.ladders);
  return ladders === view.ladders ? view : { ...view, ladders };
}

function applyPatch(snapshot, patch) {
  const byExpiry = new Map();
  if (snapshot) for (const v of snapshot.expiries) byExpiry.set(v.expiry_ms, v);
  for (const gone of patch.removed || []) byExpiry.delete(gone);
  for (const v of patch.expiries || []) byExpiry.set(v.expiry_ms, mergedView(byExpiry.get(v.expiry_ms), v));
  const keys = [...byExpiry.keys()].sort((a, b) => a - b);
  return {
    type: "SurfaceSnapshot", venue: patch.venue, underlying: patch.underlying, epoch: patch.epoch,
    ts_exchange_ms: patch.ts_exchange_ms, ts_emit_ms: patch.ts_emit_ms,
    expiries: keys.map((k) => byExpiry.get(k)),
    tenors: patch.tenors || [], calendar: patch.calendar || [],
    index_px: patch.index_px != null ? patch.index_px : (snapshot ? snapshot.index_px : null),
    underlying_analytics: { ...((snapshot && snapshot.underlying_analytics) || {}), ...(patch.underlying_analytics || {}) },
    underlying_units: { ...((snapshot && snapshot.underlying_units) || {}), ...(patch.underlying_units || {}) },
  };
}

// ---------------------------------------------------------------- exchange clocks
// Each venue's clock is the newest ts_exchange_ms its messages carried, run forward by the
// local monotonic time since that value first arrived. Ages are measured on it: a feed that
// keeps sending old data ages (its clock does not advance), a browser whose wall clock is off
// does not matter, and with no messages at all (gateway gone) ages keep growing.

function observe(venue, tsMs) {
  if (tsMs == null) return;
  const c = clocks.get(venue);
  if (!c || tsMs > c.ts) clocks.set(venue, { ts: tsMs, at: monoMs() });
}

function clock(venue) {
  const c = clocks.get(venue);
  return c ? c.ts + (monoMs() - c.at) : null;
}

// The protocol's sequence rule: a patch covering seq_from..seq applies to the copy at
// seq_from − 1 (a stream not seen on this connection is at 0, empty); anything else is a gap,
// answered by one Resync and by dropping that stream's patches until its snapshot arrives.
function send(msg) {
  const socket = page.socket;
  if (socket && socket.readyState === 1) socket.send(JSON.stringify(msg));
}

function onMessage(msg) {
  if (msg.type === "Hello") { page.pingMs = msg.ping_interval_ms; seqs.clear(); resyncing.clear(); return; }
  if (msg.type === "Error") { console.warn(`volgraph: the gateway refused a message (${msg.reason}: ${msg.detail})`); return; }
  if (msg.type !== "SurfaceSnapshot" && msg.type !== "SurfacePatch") return;  // Ping, Subscribed, ...
  const key = `${msg.venue}:${msg.underlying}`;
  let base = surfaces.get(key);
  if (msg.type === "SurfacePatch" && msg.seq != null) {
    const from = msg.seq_from != null ? msg.seq_from : msg.seq;
    if (!seqs.has(key)) base = null;  // new on this connection: the gateway's copy started empty
    if (from !== (seqs.has(key) ? seqs.get(key) : 0) + 1 || resyncing.has(key)) {
      if (!resyncing.has(key)) {
        resyncing.add(key);
        page.resyncs += 1;
        send({ type: "Resync", venue: msg.venue, underlying: msg.underlying });
      }
      return;
    }
  }
  observe(msg.venue, msg.ts_exchange_ms);
  let next;
  if (msg.type === "SurfaceSnapshot") {
    resyncing.delete(key);
    next = { ...msg, expiries: [...msg.expiries].sort((a, b) => a.expiry_ms - b.expiry_ms),
      underlying_analytics: msg.underlying_analytics || {}, underlying_units: msg.underlying_units || {} };
    // a snapshot does not say when each fit was made: its newest quote's time is the best bound
    for (const v of next.expiries) fitSeen.set(`${key}|${v.expiry_ms}`, v.fit.ts_exchange_ms);
  } else {
    next = applyPatch(base, msg);
    const now = clock(msg.venue);
    for (const v of msg.expiries || []) fitSeen.set(`${key}|${v.expiry_ms}`, now);
  }
  if (msg.seq != null) seqs.set(key, msg.seq);
  surfaces.set(key, next);
  ui.dirty = true;
}

// ---------------------------------------------------------------- formatting

const ui = { dirty: false };
const num = (x, d = 2) => (x == null ? "–" : Number(x).toFixed(d));
const pct = (x, d = 2) => (x == null ? "–" : (100 * x).toFixed(d));
const fmtDate = (ms) => new Date(ms).toISOString().slice(0, 10);
const parseDate = (s) => (/^\d{4}-\d{2}-\d{2}$/.test(s || "") ? Date.parse(`${s}T00:00:00Z`) : null);
const fmtAge = (ms) => (ms == null ? "–" : ms < 1000 ? `${Math.max(0, ms) | 0} ms`
  : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : ms < 3600000 ? `${(ms / 60000).toFixed(1)} min` : `${(ms / 3600000).toFixed(1)} h`);
const sameDay = (ms, dayMs) => dayMs != null && ms >= dayMs && ms < dayMs + DAY_MS;

// ---------------------------------------------------------------- smile maths (display only)
// Raw SVI total variance w(k) = a + b(ρ(k−m) + √((k−m)² + σ²)) (plus the fit's spline, if any),
// vol = √(w/T); the delta axis
// uses the fitted vol at each strike: d1 = (−k + w/2)/√w and x = N(−d1) = 1 − call delta
// (undiscounted, forward), which rises with the strike from 0 (deep puts' wing) to 1.

function sviW(f, k) {
  const d = k - f.m;
  return f.a + f.b * (f.rho * d + Math.sqrt(d * d + f.sigma * f.sigma)) + splineW(f, k);
}

// A fit may carry a spline on [spline_lo_k, spline_hi_k]: w(k) += Σ spline_w[j]·B_j(k), uniform
// cubic B-splines on n + 3 equal intervals, zero at and beyond both ends (the formula of
// operators/kernels/bspline.py value_at, held to it by tests/dashboard/test_ticks_js.py).
function splineW(f, k) {
  const c = f.spline_w, n = c ? c.length : 0, lo = f.spline_lo_k, hi = f.spline_hi_k;
  if (!n || !(k > lo && k < hi)) return 0;
  const u = (k - lo) / ((hi - lo) / (n + 3)), top = Math.min(Math.floor(u), n - 1);
  let s = 0;
  for (let j = Math.max(top - 3, 0); j <= top; j++) {
    const t = u - j;
    const b = t < 1 ? t * t * t : t < 2 ? ((-3 * t + 12) * t - 12) * t + 4
      : t < 3 ? ((3 * t - 24) * t + 60) * t - 44 : t < 4 ? (4 - t) ** 3 : 0;
    s += c[j] * b;
  }
  return s / 6;
}

function sviVol(f, k) {
  const w = sviW(f, k);
  return w > 0 && f.t_years > 0 ? Math.sqrt(w / f.t_years) : null;
}

function normCdf(x) {  // Abramowitz–Stegun 7.1.26 via erf; |error| < 1.5e-7, enough for an axis
  const z = Math.abs(x) / Math.SQRT2;
  const t = 1 / (1 + 0.3275911 * z);
  const erf = 1 - (((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t) * Math.exp(-z * z);
  return x >= 0 ? 0.5 * (1 + erf) : 0.5 * (1 - erf);
}

function deltaX(f, k) {
  const w = sviW(f, k);
  if (!(w > 0)) return null;
  const d1 = (-k + w / 2) / Math.sqrt(w);
  return normCdf(-d1);
}

const DELTA_TICKS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95];
const fmtDelta = (x) => (Math.abs(x - 0.5) < 1e-9 ? "50Δ" : x < 0.5 ? `${Math.round(100 * x)}ΔP` : `${Math.round(100 * (1 - x))}ΔC`);

// ---------------------------------------------------------------- selection and the URL

const AXES = ["strike", "k", "delta"];
const sel = { key: null, expiry: null, strike: null, band: null, axis: "k", overlay: new Set(), locked: false, jw: false };
const page = { config: null, connected: false, retryMs: 500, retryAt: 0, firstDataMs: null, socket: null, badMessages: 0,
  resyncs: 0, pingMs: 0, heardMs: 0 };

function readUrl() {
  const q = new URLSearchParams(location.search);
  if (q.get("venue") && q.get("underlying")) { sel.key = `${q.get("venue")}:${q.get("underlying")}`; sel.locked = true; }
  const e = parseDate(q.get("expiry"));
  if (e != null) sel.expiry = e;
  if (AXES.includes(q.get("axis"))) sel.axis = q.get("axis");
  const strike = Number(q.get("strike"));
  if (q.get("strike") && Number.isFinite(strike) && strike > 0) sel.strike = strike;
  const band = Number(q.get("band"));
  if (q.get("band") && Number.isFinite(band) && band > 0) sel.band = band;
  for (const d of (q.get("overlay") || "").split(",")) { const o = parseDate(d); if (o != null) sel.overlay.add(o); }
  sel.jw = q.get("jw") === "1";
}

function writeUrl() {
  if (!sel.key) return;
  const [venue, underlying] = sel.key.split(":");
  const q = new URLSearchParams({ venue, underlying });
  if (sel.expiry != null) q.set("expiry", fmtDate(sel.expiry));
  if (sel.strike != null) q.set("strike", String(sel.strike));
  if (sel.band != null) q.set("band", String(sel.band));
  q.set("axis", sel.axis);
  if (sel.overlay.size) q.set("overlay", [...sel.overlay].sort((a, b) => a - b).map(fmtDate).join(","));
  if (sel.jw) q.set("jw", "1");
  const url = `${location.pathname}?${q}`;
  if (url !== `${location.pathname}${location.search}`) history.replaceState(null, "", url);
}

const quotesOf = (s) => s.expiries.reduce((n, v) => n + (v.fit.n_quotes || 0), 0);
const mostLiquid = (s) => s.expiries.reduce((best, v) => (!best || v.fit.n_quotes > best.fit.n_quotes ? v : best), null);

// The view opens on the most liquid expiry (most quotes used by its fit) of the most active
// surface (most quotes used over all its expiries). That choice waits until every surface the
// gateway had when the page loaded (/dashboard.json) has sent its snapshot, or 3 s of data,
// then stays put: later changes in liquidity do not move the view under the reader.
function autoSelect() {
  if (!sel.locked) {
    let best = null;
    for (const [k, s] of surfaces) if (s.expiries.length && (!best || quotesOf(s) > quotesOf(best[1]))) best = [k, s];
    if (best) sel.key = best[0];
    const expected = (page.config && page.config.surfaces) || [];
    const allIn = expected.length > 0 && expected.every((k) => surfaces.has(k));
    if (best && (allIn || monoMs() - page.firstDataMs > 3000)) sel.locked = true;
  }
  const s = surfaces.get(sel.key);
  if (!s || !s.expiries.length) return;
  // the expiry of the URL matches by day; a gone (settled) expiry falls back to the most liquid
  const hit = s.expiries.find((v) => v.expiry_ms === sel.expiry || sameDay(v.expiry_ms, sel.expiry));
  sel.expiry = hit ? hit.expiry_ms : mostLiquid(s).expiry_ms;
  sel.overlay = new Set([...sel.overlay].map((o) => (s.expiries.find((v) => v.expiry_ms === o || sameDay(v.expiry_ms, o)) || {}).expiry_ms)
    .filter((o) => o != null && o !== sel.expiry));
  if (sel.locked) writeUrl();
}

function select(changes) {
  Object.assign(sel, changes, { locked: true });
  ui.dirty = true;
  render(true);
}

// ---------------------------------------------------------------- connection

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${proto}//${location.host}/ws`);
  page.socket = socket;
  socket.onopen = () => {
    page.retryMs = 500;
    page.connected = true;
    page.heardMs = monoMs();
    ui.dirty = true;
    if (!page.config) loadConfig();  // the page loaded while the gateway was down
    else if (plotlyLib.retry) { plotlyLib.retry = false; plotlyLib.state = "waiting"; loadPlotly(); }
  };
  socket.onmessage = (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch (err) {
      page.badMessages += 1;  // counted and shown in the header; the page carries on
      console.warn(`volgraph: gateway message ${page.badMessages} is not JSON (${err.message}); ignored`);
      ui.dirty = true;
      return;
    }
    if (page.firstDataMs == null) page.firstDataMs = monoMs();
    page.heardMs = monoMs();
    onMessage(msg);
  };
  socket.onclose = () => {
    // Keep showing the last state, greyed with its age, until the new connection's snapshots
    // replace it (each surface's snapshot replaces it whole, so nothing stale lingers).
    page.connected = false;
    page.socket = null;
    const wait = page.retryMs * (0.8 + 0.4 * Math.random());
    page.retryAt = monoMs() + wait;
    page.retryMs = Math.min(page.retryMs * 2, 5000);
    setTimeout(connect, wait);
    ui.dirty = true;
    tick();
  };
}

async function loadConfig() {
  try {
    const r = await fetch("/dashboard.json", { cache: "no-store" });
    if (r.ok) page.config = await r.json();
  } catch (err) { /* the gateway is down: the websocket's reconnect loop reports it */ }
  if (page.config) loadPlotly();  // the charts need it from the start
  ui.dirty = true;
}

// ---------------------------------------------------------------- DOM helpers

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}
function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
function setClass(node, cls) { if (node.getAttribute("class") !== cls) node.setAttribute("class", cls); }

// ---------------------------------------------------------------- status: live, stale, disconnected

function staleness() {
  const s = surfaces.get(sel.key);
  const limit = page.config && page.config.stale_after_ms;
  const age = s ? clock(s.venue) - s.ts_exchange_ms : null;
  const stale = s != null && limit != null && age > limit;
  return { s, age, limit, stale };
}

function renderStatus() {
  const { s, age, limit, stale } = staleness();
  const conn = document.getElementById("conn");
  const banner = document.getElementById("banner");
  let state = "live", text = "";
  if (!page.connected) {
    state = "down";
    const retry = Math.max(0, page.retryAt - monoMs());
    text = `disconnected from the gateway — ${s ? `showing data ${fmtAge(age)} old` : "no data"}; reconnecting${retry > 0 ? ` in ${fmtAge(retry)}` : "…"}`;
  } else if (stale) {
    state = "stale";
    text = `stale — no new exchange data for ${sel.key} in ${fmtAge(age)} (limit ${fmtAge(limit)})`;
  }
  setText(conn, state === "live" ? "live" : state === "stale" ? "stale" : "disconnected");
  setClass(conn, `conn ${state}`);
  document.body.classList.toggle("greyed", state !== "live" && s != null);
  banner.hidden = state === "live";
  setText(banner, text);
  setText(document.getElementById("age"), (s ? `data as of ${fmtAge(age)} ago (exchange time)` : "")
    + (page.badMessages ? ` · ${page.badMessages} unreadable gateway messages ignored` : ""));
  for (const span of document.querySelectorAll(".chart-age")) setText(span, s ? `· ${fmtAge(age)} old` : "");
  const nav = document.getElementById("tabs");
  for (const b of nav.children) {
    const t = surfaces.get(b.dataset.key);
    b.classList.toggle("stale-tab", !!(t && limit != null && clock(t.venue) - t.ts_exchange_ms > limit));
  }
}

// ---------------------------------------------------------------- tabs

function renderTabs() {
  const nav = document.getElementById("tabs");
  const keys = [...surfaces.keys()].sort();
  if (nav.dataset.keys !== keys.join(",")) {
    nav.replaceChildren(...keys.map((k) => el("button", { "data-key": k, type: "button" }, k)));
    nav.dataset.keys = keys.join(",");
  }
  for (const b of nav.children) b.classList.toggle("active", b.dataset.key === sel.key);
}

// ---------------------------------------------------------------- the table
// Rows are keyed by expiry and kept across patches: a patch rewrites only the text of the
// cells whose value changed, so a row (and a click on it) survives any number of patches.
// Node columns: one per graph.toml node present in the data (ExpiryView.analytics, by name),
// labelled with its unit; unit "vol pts" is a decimal vol shown in vol points (×100).

const nodeValue = (x, unit) => (x == null ? "–" : unit === "vol pts" ? pct(x) : Number(x).toPrecision(4));
// Column groups the reader can hide: the SVI jump-wings parameters (jw_*) are off by default
// (a "JW params" toggle, ?jw=1 in the URL); hidden with CSS, so no row is rebuilt.
const nodeGroup = (name) => (/^jw_/.test(name) ? "jw" : "");

function nodeColumns(surface) {
  const cols = new Map(); // node name -> unit ("" if none)
  for (const v of surface.expiries) {
    const units = v.units || {};
    for (const name of Object.keys(v.analytics || {})) if (!cols.has(name)) cols.set(name, units[name] || "");
  }
  return [...cols].map(([name, unit]) => ({ name, unit }));
}

const forwardMethod = (v) => v.forward_method ?? v.fit.forward_method;
const repaired = (v) => v.repaired ?? v.fit.repaired;
const splineOf = (v) => ((v.fit.spline_w || []).length || null);  // the fit's spline coefficients, if any

function venueMix(v) {
  const counts = new Map();
  for (const name of [...(v.bid_venue || []), ...(v.ask_venue || [])]) if (name) counts.set(name, (counts.get(name) || 0) + 1);
  return [...counts].sort().map(([name, n]) => `${name} ${n}`).join(" · ");
}

// quotes attributed to a venue other than the surface's own (the combined `all` surfaces)
const mixed = (surface, v) => [...(v.bid_venue || []), ...(v.ask_venue || [])].some((n) => n && n !== surface.venue);

function calendarText(surface, v) {
  const bad = (surface.calendar || []).filter((c) => !c.ok && (c.expiry_ms_1 === v.expiry_ms || c.expiry_ms_2 === v.expiry_ms));
  if (!bad.length && v.calendar_ok !== false) return ["ok", "ok"];
  const worst = bad.length ? Math.min(...bad.map((c) => c.worst)) : null;
  return [`arb${worst != null ? ` Δw=${worst.toExponential(1)}` : ""}`, "bad"];
}

// column: [label, title, cell(surface, v, cx) -> [text, class]]; optional columns shown only
// when some expiry carries the field
function tableColumns(surface) {
  const has = (fn) => surface.expiries.some((v) => fn(v) != null);
  const cols = [
    ["expiry", "expiry date (08:00 UTC)", (s, v) => [fmtDate(v.expiry_ms)]],
    ["days", "days to expiry on the exchange clock", (s, v, cx) => [num((v.expiry_ms - cx.now) / DAY_MS, 2)]],
    ["forward (USD)", "the forward the fit used", (s, v) => [num(v.fit.forward, 1)]],
    ...nodeColumns(surface).map((c) => [c.unit ? `${c.name} (${c.unit})` : c.name, `graph.toml node ${c.name}`,
      (s, v) => [nodeValue((v.analytics || {})[c.name], c.unit)], c.name, false, nodeGroup(c.name)]),
    ["RMSE (vol pts)", "root-mean-square fit error", (s, v) => [num(v.fit.rmse_vol_pts, 3)]],
    ["quotes used", "quotes behind the fit", (s, v) => [String(v.fit.n_quotes)]],
    ["in band (%)", "share of two-sided quotes the fit sits inside", (s, v) => [pct(v.fit.inside_band_frac, 0)]],
  ];
  if (has(forwardMethod)) cols.push(["fwd method", "how the forward was found", (s, v) => [forwardMethod(v) ?? "–"]]);
  if (has(splineOf)) cols.push(["curve", "raw SVI, or raw SVI + a local spline on the quoted range where SVI alone left quotes outside their band",
    (s, v) => (splineOf(v) ? [`SVI + spline (${splineOf(v)})`, "warn"] : ["SVI"])]);
  if (has(repaired)) cols.push(["repaired", "the unconstrained fit had butterfly arbitrage and was replaced",
    (s, v) => (repaired(v) == null ? ["–"] : repaired(v) ? ["yes", "warn"] : ["no"])]);
  cols.push(
    ["butterfly", "g(k) ≥ 0: no butterfly arbitrage", (s, v) => (v.fit.butterfly_ok ? ["ok", "ok"] : [`g=${num(v.fit.min_g, 3)}`, "bad"])],
    ["calendar", "total variance not below the previous expiry's", (s, v) => calendarText(s, v)],
  );
  if (surface.expiries.some((v) => mixed(surface, v))) {  // a combined surface: which venue quoted what
    cols.push(["venues", "quotes per venue (bid and ask)", (s, v) => [venueMix(v) || "–"]]);
  }
  cols.push(
    ["fit age", "since this expiry's fit last changed, on the exchange clock", (s, v, cx) => {
      const t = fitSeen.get(`${cx.key}|${v.expiry_ms}`);
      const age = t == null ? null : cx.now - t;
      return [fmtAge(age), cx.limit != null && age > cx.limit ? "stale" : ""];
    }],
    ["quote age", "since the newest quote behind the fit, on the exchange clock", (s, v, cx) => {
      const age = cx.now - v.fit.ts_exchange_ms;
      return [fmtAge(age), cx.limit != null && age > cx.limit ? "stale" : ""];
    }],
    ["overlay", "draw this expiry's smile over the selected one", () => [""], null, true],
  );
  return cols;
}

function renderTable(surface) {
  const cols = tableColumns(surface);
  const head = document.querySelector("#expiries thead tr");
  const tbody = document.querySelector("#expiries tbody");
  const labels = cols.map((c) => c[0]).join("\u0001");
  if (head.dataset.labels !== labels) {
    head.replaceChildren(...cols.map(([label, title, , node, , group]) => {
      // "name (unit)": the unit on a second line, the header's text unchanged
      const th = el("th", node ? { title, "data-node": node } : { title });
      if (group) th.dataset.group = group;
      const m = /^(.*) (\(.*\))$/.exec(label);
      if (m) th.append(m[1], " ", el("span", { class: "unit" }, m[2])); else th.textContent = label;
      return th;
    }));
    head.dataset.labels = labels;
    tbody.replaceChildren();  // the columns changed: rows are rebuilt once, then kept again
  }
  const table = document.getElementById("expiries");
  table.classList.toggle("hide-jw", !sel.jw);
  const jwButton = document.getElementById("jw-toggle");
  jwButton.hidden = !cols.some((c) => c[5] === "jw");
  jwButton.classList.toggle("active", sel.jw);
  jwButton.setAttribute("aria-pressed", String(sel.jw));
  const cx = { key: sel.key, now: clock(surface.venue), limit: page.config && page.config.stale_after_ms };
  const rows = new Map([...tbody.children].map((tr) => [Number(tr.dataset.expiry), tr]));
  let prev = null;
  for (const v of surface.expiries) {
    let tr = rows.get(v.expiry_ms);
    rows.delete(v.expiry_ms);
    if (!tr) {
      tr = el("tr", { "data-expiry": String(v.expiry_ms) });
      for (const c of cols) {
        const td = tr.appendChild(el("td"));
        if (c[5]) td.dataset.group = c[5];
        if (c[4]) td.appendChild(el("input", { type: "checkbox", class: "overlay", "aria-label": `overlay ${fmtDate(v.expiry_ms)}` }));
      }
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
    cols.forEach((c, i) => {
      const td = tr.children[i];
      if (c[4]) { td.firstChild.checked = sel.overlay.has(v.expiry_ms); td.firstChild.disabled = v.expiry_ms === sel.expiry; return; }
      const [text, cls] = c[2](surface, v, cx);
      setText(td, text);
      setClass(td, cls || "");
    });
    tr.classList.toggle("sel", v.expiry_ms === sel.expiry);
  }
  for (const tr of rows.values()) tr.remove();
  tbody.dataset.key = sel.key;  // which state the rows show (tests compare it with the gateway's)
  tbody.dataset.epoch = String(surface.epoch);
}

// The fixed tenors (SurfacePatch.tenors, replaced whole by each patch), rows keyed by tenor.
function renderTenors(surface) {
  const tbody = document.querySelector("#tenors tbody");
  const tenors = surface.tenors || [];
  document.getElementById("tenors").hidden = !tenors.length;
  const rows = new Map([...tbody.children].map((tr) => [Number(tr.dataset.tenor), tr]));
  let prev = null;
  for (const t of [...tenors].sort((a, b) => a.tenor_days - b.tenor_days)) {
    let tr = rows.get(t.tenor_days);
    rows.delete(t.tenor_days);
    if (!tr) {
      tr = el("tr", { "data-tenor": String(t.tenor_days) });
      for (let i = 0; i < 5; i++) tr.appendChild(el("td"));
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
    const cells = [[`${t.tenor_days} d`], [pct(t.atm_vol)], [pct(t.rr25)], [pct(t.bf25)],
      t.calendar_flag ? ["arb", "bad"] : ["ok", "ok"]];
    cells.forEach(([text, cls], i) => { setText(tr.children[i], text); setClass(tr.children[i], cls || ""); });
  }
  for (const tr of rows.values()) tr.remove();
}

// Term structure analytics: graph.toml's level = "underlying" nodes (one value per surface,
// SurfacePatch.underlying_analytics merged key by key), a row per node kept by name.
function renderUnderlying(surface) {
  const values = surface.underlying_analytics || {}, units = surface.underlying_units || {};
  const names = Object.keys(values);
  document.getElementById("underlying-panel").hidden = !names.length;
  const tbody = document.querySelector("#underlying tbody");
  const rows = new Map([...tbody.children].map((tr) => [tr.dataset.node, tr]));
  let prev = null;
  for (const name of names) {
    let tr = rows.get(name);
    rows.delete(name);
    if (!tr) {
      tr = el("tr", { "data-node": name, title: `graph.toml node ${name} (level = "underlying")` });
      for (let i = 0; i < 3; i++) tr.appendChild(el("td"));
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
    const unit = units[name] || "";
    setText(tr.children[0], name);
    setText(tr.children[1], nodeValue(values[name], unit));
    setText(tr.children[2], unit);
  }
  for (const tr of rows.values()) tr.remove();
  tbody.dataset.key = sel.key;
  tbody.dataset.epoch = String(surface.epoch);
}

// Per strike of the selected expiry: its quotes (bid/ask IV, and the venue on a combined
// surface) and graph.toml's level = "instrument" nodes (ExpiryView.strike_analytics, aligned
// with strikes), labelled with their units. Rows keyed by strike, columns by node name: a
// patch rewrites cell text only.
function strikeValue(x, unit) {
  if (x == null) return "–";
  if (unit === "vol pts") return pct(x);
  const a = Math.abs(x);
  return a >= 1000 ? Number(x).toFixed(0) : a >= 1 ? Number(x).toFixed(3) : Number(x).toPrecision(3);
}

// the instrument-level values at strike i, for the smile points' hover titles
function strikeNote(view, i) {
  const units = view.units || {};
  return Object.entries(view.strike_analytics || {})
    .map(([n, xs]) => `\n${n} ${strikeValue(xs[i], units[n] || "")}${units[n] ? ` ${units[n]}` : ""}`).join("");
}

function renderStrikes(surface) {
  const view = surface.expiries.find((v) => v.expiry_ms === sel.expiry);
  const depth = view ? depthStrike(view) : null;
  const panel = document.getElementById("strikes-panel");
  panel.hidden = !view || !(view.strikes || []).length;
  if (panel.hidden) return;
  const units = view.units || {};
  const names = Object.keys(view.strike_analytics || {});
  const f = view.fit;
  const cols = [
    ["strike", "", (i, K) => (K >= 1000 ? Number(K).toFixed(0) : String(K))],
    ["k", "ln K/F", (i, K) => (f && f.forward > 0 ? num(Math.log(K / f.forward), 3) : "–")],
    ["bid IV", "vol pts", (i) => pct(view.bid_iv[i])],
    ["ask IV", "vol pts", (i) => pct(view.ask_iv[i])],
    ...names.map((n) => [n, units[n] || "", (i) => strikeValue(view.strike_analytics[n][i], units[n] || ""), n]),
  ];
  const head = document.querySelector("#strikes thead tr");
  const tbody = document.querySelector("#strikes tbody");
  const labels = cols.map(([n, u]) => `${n}|${u}`).join("\u0001");
  if (head.dataset.labels !== labels) {
    head.replaceChildren(...cols.map(([name, unit, , node]) => {
      const th = el("th", node ? { "data-node": node, title: `graph.toml node ${name} (level = "instrument")` } : {});
      th.append(name);
      if (unit) th.append(" ", el("span", { class: "unit" }, `(${unit})`));
      return th;
    }));
    head.dataset.labels = labels;
    tbody.replaceChildren();
  }
  setText(document.getElementById("strikes-title"), `${surface.underlying} ${fmtDate(view.expiry_ms)} (${surface.venue})`);
  const rows = new Map([...tbody.children].map((tr) => [Number(tr.dataset.strike), tr]));
  let prev = null;
  view.strikes.forEach((K, i) => {
    let tr = rows.get(K);
    rows.delete(K);
    if (!tr) {
      tr = el("tr", { "data-strike": String(K) });
      for (let j = 0; j < cols.length; j++) tr.appendChild(el("td"));
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
    cols.forEach((c, j) => setText(tr.children[j], c[2](i, K)));
    tr.classList.toggle("sel", K === depth);
  });
  for (const tr of rows.values()) tr.remove();
  tbody.dataset.key = sel.key;
  tbody.dataset.expiry = String(view.expiry_ms);
  tbody.dataset.epoch = String(surface.epoch);
}

// ---------------------------------------------------------------- depth ladder (vol at size)
// The selected expiry's ladders (ExpiryView.ladders, merged by instrument: mergeLadders) at one
// strike: the one picked in the strike table if it has books, else the one nearest the forward.
// One table per book (calls first), kept across renders: cells change text, rows are rebuilt only
// when the ladder's shape (level_depth, sizes_contracts) does.

const pxText = (x) => num(x, 4);    // coin premium
const sizeText = (x) => num(x, 1);  // contracts

function depthStrike(view) {
  const lad = view.ladders;
  if (!lad || !lad.strike.length) return null;
  if (sel.strike != null && lad.strike.includes(sel.strike)) return sel.strike;
  const f = view.fit && view.fit.forward > 0 ? view.fit.forward : lad.strike[0];
  return lad.strike.reduce((best, k) => (Math.abs(k - f) < Math.abs(best - f) ? k : best), lad.strike[0]);
}

const BOOK_CELLS = ["bid", "bid", "bid", "ask", "ask", "ask"];

function bookTable(lad) {
  const table = el("table", { class: "book" });
  table.appendChild(el("caption"));
  const head = table.appendChild(el("thead")).appendChild(el("tr"));
  for (const [name, unit, cls] of [["level", "", ""], ["bid IV", "vol pts", "bid"], ["bid size", "contracts", "bid"],
    ["bid px", "coin", "bid"], ["ask px", "coin", "ask"], ["ask size", "contracts", "ask"], ["ask IV", "vol pts", "ask"]]) {
    const th = head.appendChild(el("th", cls ? { class: cls } : {}, name));
    if (unit) th.append(" ", el("span", { class: "unit" }, `(${unit})`));
  }
  const body = table.appendChild(el("tbody"));
  for (let j = 0; j < lad.level_depth; j++) {
    const tr = body.appendChild(el("tr", { class: "level", "data-level": String(j + 1) }));
    tr.appendChild(el("td", {}, String(j + 1)));
    for (const cls of BOOK_CELLS) tr.appendChild(el("td", { class: cls }));
  }
  lad.sizes_contracts.forEach((size, j) => {
    const tr = body.appendChild(el("tr", { class: j === 0 ? "exec" : "exec more", "data-size": String(size),
      title: `the average price of trading ${size} contracts through the book, and its implied vol` }));
    tr.appendChild(el("td", {}, `size ${size}`));
    for (const cls of BOOK_CELLS) tr.appendChild(el("td", { class: cls }));
  });
  return table;
}

function fillBook(table, lad, i) {
  const type = lad.option_type[i] === "C" ? "call" : lad.option_type[i] === "P" ? "put" : lad.option_type[i];
  const stale = !!lad.stale[i];
  setText(table.querySelector("caption"), `${type} ${lad.instrument[i]} (${lad.venue[i]})${stale ? " — stale" : ""}`);
  table.classList.toggle("stale", stale);
  table.dataset.optionType = lad.option_type[i];
  const rows = table.tBodies[0].children;
  for (let j = 0; j < lad.level_depth; j++) {
    const td = rows[j].children;
    setText(td[1], pct(lad.bid_iv[i][j])); setText(td[2], sizeText(lad.bid_size_contracts[i][j]));
    setText(td[3], pxText(lad.bid_px[i][j])); setText(td[4], pxText(lad.ask_px[i][j]));
    setText(td[5], sizeText(lad.ask_size_contracts[i][j])); setText(td[6], pct(lad.ask_iv[i][j]));
  }
  lad.sizes_contracts.forEach((_, j) => {
    const td = rows[lad.level_depth + j].children;
    setText(td[1], pct(lad.bid_exec_iv[i][j])); setText(td[2], ""); setText(td[3], pxText(lad.bid_exec_px[i][j]));
    setText(td[4], pxText(lad.ask_exec_px[i][j])); setText(td[5], ""); setText(td[6], pct(lad.ask_exec_iv[i][j]));
  });
}

function renderDepth(surface) {
  const view = surface.expiries.find((v) => v.expiry_ms === sel.expiry);
  const panel = document.getElementById("depth-panel");
  const K = view ? depthStrike(view) : null;
  panel.hidden = K == null;
  if (panel.hidden) return;
  const lad = view.ladders;
  renderBandToggle(lad);
  const order = (i) => `${lad.option_type[i]}|${lad.venue[i]}|${lad.instrument[i]}`;
  const books = lad.strike.map((k, i) => i).filter((i) => lad.strike[i] === K).sort((a, b) => order(a).localeCompare(order(b)));
  const box = document.getElementById("depth-books");
  const shape = `${lad.level_depth}|${lad.sizes_contracts.join(",")}`;
  const have = new Map([...box.children].map((t) => [t.dataset.instrument, t]));
  let prev = null;
  for (const i of books) {
    const name = lad.instrument[i];
    let table = have.get(name);
    have.delete(name);
    if (!table || table.dataset.shape !== shape) {
      const fresh = bookTable(lad);
      fresh.dataset.instrument = name;
      fresh.dataset.shape = shape;
      if (table) table.replaceWith(fresh);
      table = fresh;
    }
    const want = prev ? prev.nextSibling : box.firstChild;
    if (want !== table) box.insertBefore(table, want);
    prev = table;
    fillBook(table, lad, i);
  }
  for (const t of have.values()) t.remove();
  setText(document.getElementById("depth-title"),
    `${K >= 1000 ? Number(K).toFixed(0) : K} ${surface.underlying} ${fmtDate(view.expiry_ms)} (${surface.venue})`);
  box.dataset.key = sel.key;
  box.dataset.expiry = String(view.expiry_ms);
  box.dataset.strike = String(K);
  box.dataset.epoch = String(surface.epoch);
}

// The smile's execution-vol band at sel.band contracts: per strike of the ladders, its
// out-of-the-money book (call at or above the forward, else put; the other when that one is
// stale or absent), the vols of selling (bid) and buying (ask) that size; [] when off.
function execBand(view, axis) {
  const lad = view.ladders;
  const j = lad && sel.band != null ? lad.sizes_contracts.indexOf(sel.band) : -1;
  if (j < 0) return [];
  const f = view.fit;
  const byStrike = new Map();
  lad.strike.forEach((K, i) => {
    if (lad.stale[i]) return;
    const otm = (K >= f.forward) === (lad.option_type[i] === "C");
    const have = byStrike.get(K);
    if (!have || (otm && !have.otm)) byStrike.set(K, { i, otm });
  });
  return [...byStrike.entries()].map(([K, { i }]) => ({ K, x: smileX(axis, f, K), bid: lad.bid_exec_iv[i][j], ask: lad.ask_exec_iv[i][j] }))
    .filter((b) => b.x != null && Number.isFinite(b.x) && (b.bid != null || b.ask != null)).sort((a, b) => a.x - b.x);
}

function renderBandToggle(lad) {
  const box = document.getElementById("band");
  const sizes = ["off", ...lad.sizes_contracts.map(String)];
  if (box.dataset.sizes !== sizes.join(",")) {
    box.replaceChildren(...sizes.map((s) => el("button", { type: "button", "data-size": s }, s === "off" ? "off" : `${s}`)));
    box.dataset.sizes = sizes.join(",");
  }
  for (const b of box.children) b.classList.toggle("active", b.dataset.size === (sel.band == null ? "off" : String(sel.band)));
}

// ---------------------------------------------------------------- charts (Plotly.js, 2D)
// The term structure, the RR/BF chart and the smile are Plotly.js `scatter` traces (SVG: no
// WebGL context), drawn on their graph <div>s with Plotly.react, so an update keeps the same
// div and nodes (no flicker) and the reader's zoom (uirevision) until the surface, expiry or
// axis changes. Each figure is built whole from the surface and the selection. Every trace
// carries meta = { kind, ... } and, where a point stands for an expiry, customdata = expiry_ms
// (a click on it selects that expiry: plotly_click); tests read them back from gd.data. Hover
// text says what a point is, and why a flag is there. Messages (a node missing from
// graph.toml, Plotly.js missing or failed to load) are text in the panel (#<chart>-note).
// Redraw rule: a chart redraws when its surface object or the selection changed, at most once
// per CHART_MIN_MS (500 ms, as the 3D panel: a redraw costs ~15 ms of main thread, and patches
// may come hundreds a second); a change inside that window is drawn by a timer when it ends,
// with the newest state, so a chart is never more than ~0.5 s behind the data. A reader's own
// change (select()) redraws at once. Each graph div's data-key/-epoch/-expiry/-axis/
// -revision say what it shows once drawn.

const CHART_IDS = ["term", "wings", "smile"];
const CHART_MIN_MS = 500;
const ACCENT = "#4fa3ff", BID = "#3fb950", ASK = "#f0883e", BAD = "#f85149", TENOR = "#ffd33d", MUTED = "#7d8794";
const PALETTE = ["#4fa3ff", "#f0883e", "#3fb950", "#d2a8ff", "#ffd33d", "#ff7b72", "#56d4dd", "#a5d6ff"];
const VENUE_COLOURS = { deribit: "#ffd33d", okx: "#d2a8ff" };
const venueColour = (name) => VENUE_COLOURS[name] || PALETTE[[...name].reduce((h, ch) => h + ch.charCodeAt(0), 0) % PALETTE.length];
const finite = (xs) => xs.filter((x) => x != null && Number.isFinite(x));
const daysOf = (surface, ms) => (ms - surface.ts_exchange_ms) / DAY_MS;
const hoverLines = (text) => text.replace(/\n/g, "<br>");  // Plotly breaks hover lines at <br>

const CHART_AXIS = { color: MUTED, gridcolor: "#2a323c", zerolinecolor: "#3a4450", linecolor: "#2a323c",
  tickfont: { size: 10 }, automargin: true, showspikes: false };
const CHART_CONFIG = { displaylogo: false, displayModeBar: false, responsive: true, scrollZoom: false };

function chartLayout(uirevision, xaxis, yaxis) {
  const axis = ({ title, ...rest }) => ({ ...CHART_AXIS, ...rest,
    title: { text: title || "", font: { size: 11, color: "#98a2ae" }, standoff: 4 } });
  return {
    paper_bgcolor: "#161c24", plot_bgcolor: "#161c24", font: { color: "#d8dee6", family: "system-ui, sans-serif", size: 11 },
    margin: { l: 48, r: 8, t: 8, b: 36 }, showlegend: false, hovermode: "closest", uirevision,
    hoverlabel: { bgcolor: "#0f1419", bordercolor: "#2a323c", font: { color: "#d8dee6", size: 11 }, align: "left" },
    xaxis: axis(xaxis), yaxis: axis(yaxis),
  };
}

// no traces, no axes; `note` (if any) is shown over the panel
function emptyFigure(uirevision, note = "", reason = "") {
  return { data: [], layout: chartLayout(uirevision, { visible: false }, { visible: false }), note, reason, legend: [] };
}

function badCalendar(surface) {
  const bad = new Set();
  for (const c of surface.calendar || []) if (!c.ok) { bad.add(c.expiry_ms_1); bad.add(c.expiry_ms_2); }
  for (const v of surface.expiries) if (v.calendar_ok === false) bad.add(v.expiry_ms);
  return bad;
}

// [label, swatch class, colour]: the legend under a chart, in HTML (Plotly's own is off)
function legend(id, items) {
  const box = document.getElementById(id);
  const key = items.map((i) => i.join("|")).join(";");
  if (box.dataset.key === key) return;
  box.replaceChildren(...items.map(([label, cls, colour]) => {
    const span = el("span", { class: "item" });
    const sw = span.appendChild(el("span", { class: `swatch ${cls}` }));
    if (colour && cls === "ring") sw.style.borderColor = colour;
    else if (colour) sw.style.background = colour;
    span.appendChild(document.createTextNode(label));
    return span;
  }));
  box.dataset.key = key;
}

// a marker trace (one point per x), Plotly's hover showing `text`
function markers(meta, xs, ys, text, marker, customdata) {
  return { type: "scatter", mode: "markers", meta, name: meta.kind, x: xs, y: ys, hovertext: text.map(hoverLines),
    hoverinfo: "text", marker, ...(customdata ? { customdata } : {}) };
}

// ATM term structure: atm_vol per expiry against days (a line through clickable points), the
// fixed tenors as squares under them, rings on butterfly / calendar flagged expiries and a
// dashed red segment between the two expiries of each failing calendar pair.
function termFigure(surface) {
  const rev = `${surface.venue}:${surface.underlying}`;
  if (surface.expiries.length && !surface.expiries.some((v) => v.analytics && TERM_NODE in v.analytics)) {
    return emptyFigure(rev, `no node named ${TERM_NODE} in graph.toml: add [nodes.${TERM_NODE}] to plot the term structure`, "missing-node");
  }
  const pts = surface.expiries.filter((v) => v.analytics && v.analytics[TERM_NODE] != null)
    .map((v) => ({ days: daysOf(surface, v.expiry_ms), vol: v.analytics[TERM_NODE], v }));
  const tenors = (surface.tenors || []).filter((t) => t.atm_vol != null);
  if (!pts.length && !tenors.length) return emptyFigure(rev, "no ATM vols yet", "no-values");
  const bad = badCalendar(surface);
  const data = [];
  const cal = { x: [], y: [], text: [], e: [] };  // failing calendar pairs, each segment then a gap
  for (const c of surface.calendar || []) {
    if (c.ok) continue;
    const a = pts.find((p) => p.v.expiry_ms === c.expiry_ms_1), b = pts.find((p) => p.v.expiry_ms === c.expiry_ms_2);
    if (!a || !b) continue;
    const why = `calendar arbitrage between ${fmtDate(a.v.expiry_ms)} and ${fmtDate(b.v.expiry_ms)} ${c.worst != null ? ` (worst Δw ${c.worst.toExponential(1)})` : ""}`;
    cal.x.push(a.days, b.days, null); cal.y.push(100 * a.vol, 100 * b.vol, null); cal.text.push(why, why, "");
    cal.e.push(a.v.expiry_ms, b.v.expiry_ms, null);
  }
  if (cal.x.length) {
    data.push({ type: "scatter", mode: "lines", meta: { kind: "calendar-pair" }, name: "calendar-pair", x: cal.x, y: cal.y,
      hovertext: cal.text, hoverinfo: "text", customdata: cal.e, line: { color: BAD, width: 3, dash: "dash" }, connectgaps: false });
  }
  data.push({ type: "scatter", mode: "lines", meta: { kind: "term-line" }, name: "term-line", x: pts.map((p) => p.days),
    y: pts.map((p) => 100 * p.vol), hoverinfo: "skip", line: { color: ACCENT, width: 2 } });
  // Plotly's hover (and so a click) picks the nearest point, the smaller marker where two sit
  // on the same spot: the expiry points (size 8) win over the tenor squares (9) and the flag
  // rings (15, 22), whose edges show why they are there
  if (tenors.length) {  // under the expiry points
    data.push(markers({ kind: "tenor" }, tenors.map((t) => t.tenor_days), tenors.map((t) => 100 * t.atm_vol),
      tenors.map((t) => `${t.tenor_days}d fixed tenor: ATM ${pct(t.atm_vol)} vol pts${t.calendar_flag ? " (calendar arbitrage between its expiries)" : ""}`),
      { symbol: "square", size: 9, color: tenors.map((t) => (t.calendar_flag ? BAD : TENOR)), line: { color: "#0f1419", width: 1 } }));
  }
  const flagged = (test) => pts.filter(test);
  for (const [kind, list, why, size] of [
    ["butterfly-flag", flagged((p) => !p.v.fit.butterfly_ok), (p) => `butterfly arbitrage (min g ${num(p.v.fit.min_g, 3)})`, 15],
    ["calendar-flag", flagged((p) => bad.has(p.v.expiry_ms)), () => "calendar arbitrage", 22],
  ]) {
    if (!list.length) continue;
    data.push(markers({ kind }, list.map((p) => p.days), list.map((p) => 100 * p.vol),
      list.map((p) => `${fmtDate(p.v.expiry_ms)}: ${why(p)}; ATM ${pct(p.vol)} vol pts`),
      { symbol: "circle-open", size, color: BAD, line: { width: kind === "butterfly-flag" ? 2 : 1.5 } },
      list.map((p) => p.v.expiry_ms)));
  }
  data.push(markers({ kind: "expiry" }, pts.map((p) => p.days), pts.map((p) => 100 * p.vol),
    pts.map((p) => `${fmtDate(p.v.expiry_ms)}: ATM ${pct(p.vol)} vol pts`), { size: 8, color: ACCENT },
    pts.map((p) => p.v.expiry_ms)));
  const chosen = pts.filter((p) => p.v.expiry_ms === sel.expiry);
  data.push(markers({ kind: "selected" }, chosen.map((p) => p.days), chosen.map((p) => 100 * p.vol),
    chosen.map((p) => `${fmtDate(p.v.expiry_ms)} (selected): ATM ${pct(p.vol)} vol pts`),
    { size: 10, color: "#ffffff", line: { color: ACCENT, width: 2 } }, chosen.map((p) => p.v.expiry_ms)));
  return { data, note: "", reason: "",
    layout: chartLayout(rev, { title: "days to expiry", rangemode: "tozero" }, { title: "ATM vol (%)" }),
    legend: [["expiries (atm_vol node)", "line"], ["fixed tenors", "tenor"], ["butterfly / calendar flag", "flag"]] };
}

// RR/BF chart: every "vol pts" node but the term node and the bid/ask ones, per expiry, against
// days (a line and points per node); the fixed tenors' rr25/bf25 as squares; a translucent red
// bar on each butterfly- or calendar-flagged expiry.
function wingsFigure(surface) {
  const rev = `${surface.venue}:${surface.underlying}`;
  // the mid fit's RR/BF only: the bid/ask smiles' (rr25_bid, ...) are in the table
  const nodes = nodeColumns(surface).filter((c) => c.unit === "vol pts" && c.name !== TERM_NODE && !/_(bid|ask)$/.test(c.name));
  if (!nodes.length) return emptyFigure(rev, `no vol-pts nodes besides ${TERM_NODE} in graph.toml`, "missing-node");
  const tenors = surface.tenors || [];
  const tenorSeries = ["rr25", "bf25"].filter((n) => tenors.some((t) => t[n] != null));
  const ys = finite([...surface.expiries.flatMap((v) => nodes.map((c) => (v.analytics || {})[c.name])),
    ...tenors.flatMap((t) => tenorSeries.map((n) => t[n]))]).map((v) => 100 * v);
  if (!ys.length) return emptyFigure(rev, "no RR/BF values yet", "no-values");
  // the y range is fixed here (0 included, 8% padding), so the flag bars span it
  const lo = Math.min(0, ...ys), hi = Math.max(0, ...ys), pad = 0.08 * (hi - lo || 1);
  const yRange = [lo - pad, hi + pad];
  const data = [];
  const bad = badCalendar(surface);
  const flag = { x: [], y: [], text: [], e: [] };
  for (const v of surface.expiries) {
    const why = [!v.fit.butterfly_ok && "butterfly", bad.has(v.expiry_ms) && "calendar"].filter(Boolean);
    if (!why.length) continue;
    const d = daysOf(surface, v.expiry_ms);
    for (let j = 0; j <= 16; j++) {  // vertices down the bar: its hover text shows all along it
      flag.x.push(d); flag.y.push(yRange[0] + ((yRange[1] - yRange[0]) * j) / 16);
      flag.text.push(`${fmtDate(v.expiry_ms)}: ${why.join(" and ")} arbitrage`); flag.e.push(v.expiry_ms);
    }
    flag.x.push(null); flag.y.push(null); flag.text.push(""); flag.e.push(null);
  }
  if (flag.x.length) {
    data.push({ type: "scatter", mode: "lines", meta: { kind: "flag-bar" }, name: "flag-bar", x: flag.x, y: flag.y,
      hovertext: flag.text, hoverinfo: "text", customdata: flag.e, connectgaps: false,
      line: { color: "rgba(248,81,73,0.3)", width: 6 } });
  }
  for (const tn of tenorSeries) {  // under the expiry points
    const ts = tenors.filter((t) => t[tn] != null);
    data.push(markers({ kind: "tenor", node: tn }, ts.map((t) => t.tenor_days), ts.map((t) => 100 * t[tn]),
      ts.map((t) => `${t.tenor_days}d fixed tenor ${tn}: ${pct(t[tn])} vol pts${t.calendar_flag ? " (calendar arbitrage between its expiries)" : ""}`),
      { symbol: "square", size: 8, color: ts.map((t) => (t.calendar_flag ? BAD : TENOR)), line: { color: "#0f1419", width: 1 } }));
  }
  const chosen = { x: [], y: [], text: [], e: [] };
  nodes.forEach((c, i) => {
    const colour = PALETTE[(i + 1) % PALETTE.length];
    const vs = surface.expiries.filter((v) => (v.analytics || {})[c.name] != null);
    const text = vs.map((v) => `${fmtDate(v.expiry_ms)} ${c.name}: ${pct(v.analytics[c.name])} vol pts`);
    data.push({ ...markers({ kind: "node", node: c.name }, vs.map((v) => daysOf(surface, v.expiry_ms)),
      vs.map((v) => 100 * v.analytics[c.name]), text, { size: 6, color: colour }, vs.map((v) => v.expiry_ms)),
    mode: "lines+markers", line: { color: colour, width: 1.5 } });
    vs.forEach((v, j) => {
      if (v.expiry_ms !== sel.expiry) return;
      chosen.x.push(daysOf(surface, v.expiry_ms)); chosen.y.push(100 * v.analytics[c.name]);
      chosen.text.push(`${text[j]} (selected)`); chosen.e.push(v.expiry_ms);
    });
  });
  data.push(markers({ kind: "selected" }, chosen.x, chosen.y, chosen.text,
    { size: 9, color: "rgba(0,0,0,0)", line: { color: "#ffffff", width: 1.5 } }, chosen.e));
  return { data, note: "", reason: "",
    layout: chartLayout(rev, { title: "days to expiry", rangemode: "tozero" },
      { title: "vol pts", range: yRange, autorange: false, zeroline: true, zerolinecolor: MUTED }),
    legend: [...nodes.map((c, i) => [`${c.name} (vol pts)`, "dot", PALETTE[(i + 1) % PALETTE.length]]),
      ...(tenorSeries.length ? [["fixed tenors", "tenor"]] : []), ["arbitrage flag", "flag"]] };
}

function smileX(axis, f, strike) {
  const k = Math.log(strike / f.forward);
  return axis === "strike" ? strike : axis === "k" ? k : deltaX(f, k);
}

// The delta axis's ticks: 50Δ first, then outwards, each at least 32 px from those kept (the
// wings crowd on a linear delta axis); `px` the plot's width in pixels.
function deltaTicks(lo, hi, px) {
  const at = (d) => ((d - lo) / (hi - lo || 1)) * px;
  const kept = [];
  for (const d of [0.5, ...DELTA_TICKS.filter((d) => d > 0.5), ...DELTA_TICKS.filter((d) => d < 0.5).reverse()]) {
    if (d >= lo && d <= hi && kept.every((k) => Math.abs(at(k) - at(d)) >= 32)) kept.push(d);
  }
  return kept.sort((a, b) => a - b);
}

// The smile panel's heading and axis toggle, every frame (with or without Plotly.js)
function renderSmileHead(surface) {
  for (const b of document.querySelectorAll("#axis button")) b.classList.toggle("active", b.dataset.axis === sel.axis);
  const view = surface.expiries.find((v) => v.expiry_ms === sel.expiry);
  const overlays = view ? surface.expiries.filter((v) => sel.overlay.has(v.expiry_ms) && v.expiry_ms !== view.expiry_ms).length : 0;
  setText(document.getElementById("smile-title"), view
    ? `${surface.underlying} ${fmtDate(view.expiry_ms)}${overlays ? ` + ${overlays} overlaid` : ""} (${surface.venue})` : "");
}

// The smile of the selected expiry: its SVI fit, bid / ask / mid IVs (on a combined surface
// each quote ringed in its venue's colour), the overlaid expiries' fits (dashed), and the
// execution-vol band of sel.band contracts; x in strike, k or delta (sel.axis).
function smileFigure(surface) {
  const view = surface.expiries.find((v) => v.expiry_ms === sel.expiry);
  const axis = sel.axis;
  const rev = `${surface.venue}:${surface.underlying}|${sel.expiry}|${axis}`;
  if (!view) return emptyFigure(rev);
  const overlays = surface.expiries.filter((v) => sel.overlay.has(v.expiry_ms) && v.expiry_ms !== view.expiry_ms);
  const f = view.fit;
  const quotes = view.strikes.map((K, i) => {
    const bid = view.bid_iv[i], ask = view.ask_iv[i];
    return { K, k: Math.log(K / f.forward), x: smileX(axis, f, K), bid, ask, mid: bid != null && ask != null ? (bid + ask) / 2 : null,
      bv: (view.bid_venue || [])[i], av: (view.ask_venue || [])[i], extra: strikeNote(view, i) };
  }).filter((q) => q.x != null && Number.isFinite(q.x));
  // the k range of the selected expiry's quotes (else ±0.3), padded; every curve is sampled in k
  // over it and mapped to the chosen axis, so the curves are smooth whatever the axis
  const ks = quotes.length ? quotes.map((q) => q.k) : [-0.3, 0.3];
  const kPad = (Math.max(...ks) - Math.min(...ks) || 0.2) * 0.06;
  const kLo = Math.min(...ks) - kPad, kHi = Math.max(...ks) + kPad;
  const curves = [view, ...overlays].map((v, i) => {
    // an overlaid fit is drawn only where its own quotes are (an SVI fit is not data past its
    // wings) and where the selected one's are
    let [a, b] = [kLo, kHi];
    if (i > 0 && v.strikes.length) {
      const own = v.strikes.map((K) => Math.log(K / v.fit.forward));
      const ownPad = (Math.max(...own) - Math.min(...own) || 0.2) * 0.06;
      a = Math.max(a, Math.min(...own) - ownPad);
      b = Math.min(b, Math.max(...own) + ownPad);
    }
    const pts = [];
    for (let j = 0; b > a && j <= 120; j++) {
      const k = a + ((b - a) * j) / 120;
      const vol = sviVol(v.fit, k);
      const px = smileX(axis, v.fit, v.fit.forward * Math.exp(k));
      if (vol != null && px != null && Number.isFinite(px)) pts.push([px, vol]);
    }
    return { v, pts, colour: i === 0 ? ACCENT : PALETTE[(i + 1) % PALETTE.length] };
  });
  const xsAll = [...curves[0].pts.map((p) => p[0]), ...quotes.map((q) => q.x)];
  let lo = Math.min(...xsAll), hi = Math.max(...xsAll);
  if (!(hi > lo)) { lo -= 0.5 * (Math.abs(lo) || 1); hi += 0.5 * (Math.abs(hi) || 1); }
  if (axis === "delta") { lo = Math.max(0, lo); hi = Math.min(1, hi); }
  for (const c of curves) c.pts = c.pts.filter(([px]) => px >= lo && px <= hi);
  const band = execBand(view, axis).filter((b) => b.x >= lo && b.x <= hi);
  const data = [];
  if (band.length) {  // the execution vols of trading sel.band contracts: the price of size
    const both = band.filter((b) => b.bid != null && b.ask != null);
    if (both.length > 1) {
      data.push({ type: "scatter", mode: "lines", meta: { kind: "band-fill", size: sel.band }, name: "band-fill",
        x: [...both.map((b) => b.x), ...both.slice().reverse().map((b) => b.x)],
        y: [...both.map((b) => 100 * b.ask), ...both.slice().reverse().map((b) => 100 * b.bid)],
        fill: "toself", fillcolor: "rgba(79,163,255,0.12)", line: { width: 0 }, hoverinfo: "skip" });
    }
    for (const side of ["bid", "ask"]) {
      const pts = band.filter((b) => b[side] != null);
      const what = `${side === "bid" ? "selling" : "buying"} ${sel.band} contracts: execution vol`;
      data.push({ ...markers({ kind: "band", side, size: sel.band }, pts.map((b) => b.x), pts.map((b) => 100 * b[side]),
        pts.map((b) => `K=${b.K} ${what} ${pct(b[side])}%`), { size: 4, color: side === "bid" ? BID : ASK }),
      mode: "lines+markers", line: { color: side === "bid" ? BID : ASK, width: 1.2, dash: "dot" } });
    }
  }
  curves.forEach((c, i) => {
    data.push({ type: "scatter", mode: "lines", meta: { kind: "svi", expiry: c.v.expiry_ms, overlay: i > 0 }, name: "svi",
      x: c.pts.map((p) => p[0]), y: c.pts.map((p) => 100 * p[1]),
      hovertext: c.pts.map((p) => `${fmtDate(c.v.expiry_ms)} SVI fit: ${pct(p[1])}%`), hoverinfo: "text",
      line: { color: c.colour, width: i ? 1.6 : 2, dash: i ? "dash" : "solid" } });
  });
  const attributed = mixed(surface, view);
  const mids = quotes.filter((q) => q.mid != null);
  data.push(markers({ kind: "mid" }, mids.map((q) => q.x), mids.map((q) => 100 * q.mid),
    mids.map((q) => `K=${q.K} mid ${pct(q.mid)}%${q.extra}`),
    { symbol: "circle-open", size: 5, color: "#ffffff", line: { width: 1 } }));
  for (const [side, colour] of [["bid", BID], ["ask", ASK]]) {
    const qs = quotes.filter((q) => q[side] != null);
    const ven = (q) => (side === "bid" ? q.bv : q.av);
    const line = attributed ? { color: qs.map((q) => (ven(q) ? venueColour(ven(q)) : colour)), width: 1.4 } : { width: 0 };
    data.push(markers({ kind: side }, qs.map((q) => q.x), qs.map((q) => 100 * q[side]),
      qs.map((q) => `K=${q.K} ${side} ${pct(q[side])}%${ven(q) ? ` (${ven(q)})` : ""}${q.extra}`),
      { size: 6, color: colour, line }));
  }
  const xaxis = axis === "strike" ? { title: "strike (USD)", tickformat: hi - lo >= 5000 ? "~s" : "" }
    : axis === "k" ? { title: "log-moneyness k = ln(K/F)" }
      : { title: "delta (put Δ left, call Δ right; 50Δ = ATM)", tickmode: "array",
        tickvals: deltaTicks(lo, hi, Math.max(200, document.getElementById("smile").clientWidth - 60)),
        ticktext: null };
  if (axis === "delta") xaxis.ticktext = xaxis.tickvals.map(fmtDelta);
  const items = [["SVI fit", "svi"], ["bid IV", "bid"], ["ask IV", "ask"], ["mid IV", "mid"]];
  if (band.length) items.push([`execution vols at ${sel.band} contracts (bid / ask)`, "band"]);
  if (attributed) {
    const names = [...new Set(quotes.flatMap((q) => [q.bv, q.av]).filter(Boolean))].sort();
    for (const n of names) items.push([`${n} quote (ring)`, "ring", venueColour(n)]);
  }
  for (const c of curves.slice(1)) items.push([`${fmtDate(c.v.expiry_ms)} fit`, "svi", c.colour]);
  return { data, note: "", reason: "", legend: items, layout: chartLayout(rev, xaxis, { title: "implied vol (%)" }) };
}

// ---------------------------------------------------------------- Plotly.js, and drawing the charts
// Plotly.js is the gateway's copy (/dashboard.json plotly_js: /static/plotly.min.js?v=<hash>,
// same origin, never a CDN), loaded as soon as /dashboard.json is in; the 2D charts and the 3D
// panel share it. Without it (the gateway has none, or it failed to load) every chart panel
// says why and the tables work as before.

// state: waiting | loading | ready | missing (the gateway has none) | error (why: the panels' text)
const plotlyLib = { state: "waiting", url: null, why: "", retry: false };
const CHART_FIGURES = { term: termFigure, wings: wingsFigure, smile: smileFigure };
// per chart: what it shows, when it last drew, its pending draw; drawnMs: when the last 20 draws started (tests read the spacing)
const charts = Object.fromEntries(CHART_IDS.map((id) => [id, { shown: null, lastMs: -1e9, timer: null, reacts: 0, wired: false,
  drawnMs: [] }]));

function loadPlotly() {
  if (typeof window.Plotly !== "undefined") plotlyLib.state = "ready";
  if (plotlyLib.state !== "waiting" || !page.config) return;
  if (!page.config.plotly_js) { plotlyLib.state = "missing"; ui.dirty = true; return; }
  const url = plotlyLib.url = page.config.plotly_js;
  plotlyLib.state = "loading";
  const script = el("script", { src: url, async: "" });
  script.onload = () => {
    plotlyLib.state = typeof window.Plotly === "undefined" ? "error" : "ready";
    if (plotlyLib.state === "error") plotlyLib.why = `${url} loaded but defined no Plotly: the gateway serves the wrong file`;
    ui.dirty = true;
    render(true);
  };
  script.onerror = () => {  // tried again when the websocket (re)connects
    plotlyLib.state = "error";
    plotlyLib.retry = true;
    plotlyLib.why = `could not load Plotly.js from the gateway (${url}); retrying when it reconnects`;
    script.remove();
    ui.dirty = true;
    render(true);
  };
  document.head.appendChild(script);
}

// what a chart panel says while it cannot draw ("" once Plotly.js is in)
function plotlyNote() {
  switch (plotlyLib.state) {
    case "ready": return "";
    case "missing": return "chart off: the gateway has no Plotly.js (pip install plotly where the gateway runs); the tables have the values";
    case "error": return `chart off: ${plotlyLib.why}; the tables have the values`;
    case "loading": return "loading Plotly.js from the gateway…";
    default: return page.config ? "" : "waiting for the gateway…";
  }
}

function chartNote(id, text, reason) {
  const note = document.getElementById(`${id}-note`);
  setText(note, text);
  note.hidden = !text;
  if (note.dataset.reason !== reason) note.dataset.reason = reason;
}

// the selection a chart's figure depends on (with the surface object: a change redraws)
const chartInputs = () => `${sel.key}|${sel.expiry}|${sel.axis}|${[...sel.overlay].sort().join(",")}|${sel.band}`;

function renderCharts(force) {
  const note = plotlyNote();
  for (const id of CHART_IDS) {
    const panel = document.getElementById(`${id}-panel`);
    if (panel.dataset.state !== plotlyLib.state) panel.dataset.state = plotlyLib.state;
    if (note) { chartNote(id, note, `plotly-${plotlyLib.state}`); legend(`${id}-legend`, []); continue; }
    const c = charts[id];
    const surface = sel.key ? surfaces.get(sel.key) : null;
    if (!surface) { chartNote(id, "", ""); continue; }
    if (c.shown && c.shown.surface === surface && c.shown.inputs === chartInputs()) continue;
    if (force || monoMs() - c.lastMs >= CHART_MIN_MS) { clearTimeout(c.timer); c.timer = null; drawChart(id); }
    else if (c.timer == null) c.timer = setTimeout(() => { c.timer = null; drawChart(id); }, Math.ceil(c.lastMs + CHART_MIN_MS - monoMs()));
  }
}

// A click on a point that stands for an expiry selects it (plotly_click). Plotly finds the
// clicked point by re-running its hover at the click; a redraw while the button is down
// (patches flowing) can clear or defer that hover, and Plotly then reports no click. So the
// expiry hovered when the button went down (what the hover label showed) is kept, and a click
// Plotly did not report selects that: one click selects, whatever the redraws.
function wireChartClicks(gd) {
  const expiryOf = (e) => { const p = ((e && e.points) || []).find((q) => q.customdata != null); return p ? Number(p.customdata) : null; };
  const press = { hovered: null, pressed: null, reported: false };
  gd.on("plotly_hover", (e) => { press.hovered = expiryOf(e); });
  gd.on("plotly_unhover", () => { press.hovered = null; });
  gd.addEventListener("pointerdown", () => { press.pressed = press.hovered; press.reported = false; }, true);
  gd.on("plotly_click", (e) => {
    const expiry = expiryOf(e);
    if (expiry == null) return;
    press.reported = true;
    select({ expiry });
  });
  // Plotly dispatches a click on its drag layer after handling one (not after a drag)
  gd.addEventListener("click", () => {
    if (!press.reported && press.pressed != null) select({ expiry: press.pressed });
    press.pressed = null; press.reported = false;
  });
}

function drawChart(id) {
  const surface = sel.key ? surfaces.get(sel.key) : null;
  if (!surface || plotlyLib.state !== "ready") return;
  const c = charts[id];
  c.lastMs = monoMs();
  c.drawnMs = [...c.drawnMs.slice(-19), c.lastMs];
  c.shown = { surface, inputs: chartInputs() };
  const fig = CHART_FIGURES[id](surface);
  chartNote(id, fig.note, fig.reason);
  legend(`${id}-legend`, fig.legend);
  const gd = document.getElementById(id);
  const shows = { key: `${surface.venue}:${surface.underlying}`, epoch: String(surface.epoch), expiry: String(sel.expiry),
    axis: sel.axis, note: fig.reason };
  window.Plotly.react(gd, fig.data, fig.layout, CHART_CONFIG).then(() => {
    if (!c.wired) { c.wired = true; if (id !== "smile") wireChartClicks(gd); }
    c.reacts += 1;
    Object.assign(gd.dataset, shows, { revision: String(c.reacts) });
  }, (err) => {
    console.warn(`volgraph: the ${id} chart failed to draw (${err && err.message})`);
    chartNote(id, `chart failed to draw: ${err && err.message}`, "draw-error");
  });
}

// ---------------------------------------------------------------- 3D surface (Plotly.js on WebGL)
// The selected surface as a Plotly `surface` trace: a row per expiry, each expiry's SVI fit
// sampled at SURFACE_POINTS log-moneyness values over its own quoted k range (padded 6%, as
// the smile chart; ±2.5 ATM standard deviations when it has no quotes), so x = days to expiry
// (as the term structure), y = k (or the smile's delta coordinate when the smile is on delta:
// 1 − call delta, from each fit), z = implied vol in vol pts. Expiries with a butterfly or
// calendar flag get a red line along their row. Plotly.js is the one the 2D charts use (see
// loadPlotly); the panel is drawn only when the browser has WebGL and the panel is on screen
// (it is the page's one WebGL context), then updated in place with Plotly.react at most twice
// a second (camera and layout kept). Without WebGL (Plotly would draw only its own "WebGL is
// not supported" box) the panel says why, in text and in data-webgl/data-renderer.
// tests/dashboard/test_surface3d_browser.py checks the drawn z against the SVI fits.

const SURFACE_POINTS = 41;     // samples per expiry row
const SURFACE_MIN_MS = 500;    // at most two Plotly.react calls a second
const surface3d = { visible: false, webgl: null, timer: null, lastMs: -1e9, shown: null, reacts: 0,
  drawnMs: [] };  // drawnMs: when the last 20 Plotly.react calls started (tests read the spacing)

// Whether this browser gives a WebGL context, and its renderer string (the unmasked one where
// WEBGL_debug_renderer_info is offered); the probe's context is released at once.
function probeWebgl() {
  try {
    const canvas = document.createElement("canvas");
    let api = "webgl2", gl = canvas.getContext("webgl2");
    if (!gl) { api = "webgl"; gl = canvas.getContext("webgl"); }
    if (!gl) return { ok: false, api: "none", renderer: "", reason: "this browser gives no WebGL context (disabled, or no GPU or software renderer allowed)" };
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    const renderer = String((info && gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) || gl.getParameter(gl.RENDERER) || "");
    const lose = gl.getExtension("WEBGL_lose_context");
    if (lose) lose.loseContext();
    return { ok: true, api, renderer, reason: "" };
  } catch (err) {
    return { ok: false, api: "none", renderer: "", reason: `creating a WebGL context failed (${err.message})` };
  }
}

function surface3dState(state, note = "") {
  const panel = document.getElementById("surface3d-panel");
  if (panel.dataset.state !== state) panel.dataset.state = state;
  const p = document.getElementById("surface3d-note");
  setText(p, note);
  p.hidden = !note;
}

// The grid Plotly draws: rows = expiries with a fit, columns = samples along k; x, y and z
// are 2D (each row has its own k range). Exported for tests under node as well.
function surfaceGrid(surface, axis) {
  const x = [], y = [], z = [], rows = [];
  for (const v of surface.expiries) {
    const f = v.fit;
    if (!f || !(f.t_years > 0) || !(f.forward > 0)) continue;
    let ks = (v.strikes || []).filter((K) => K > 0).map((K) => Math.log(K / f.forward));
    if (!ks.length) { const half = 2.5 * Math.sqrt(Math.max(sviW(f, 0), 1e-8)); ks = [-half, half]; }
    const pad = (Math.max(...ks) - Math.min(...ks) || 0.2) * 0.06;
    const lo = Math.min(...ks) - pad, hi = Math.max(...ks) + pad;
    const days = daysOf(surface, v.expiry_ms);
    const xr = [], yr = [], zr = [];
    for (let j = 0; j < SURFACE_POINTS; j++) {
      const k = lo + ((hi - lo) * j) / (SURFACE_POINTS - 1);
      const vol = sviVol(f, k);
      xr.push(days);
      yr.push(axis === "delta" ? deltaX(f, k) : k);
      zr.push(vol == null ? null : 100 * vol);
    }
    x.push(xr); y.push(yr); z.push(zr); rows.push(v);
  }
  return { x, y, z, rows };
}

const SCENE_AXIS = { color: "#7d8794", gridcolor: "#2a323c", zerolinecolor: "#3a4450", showbackground: true,
  backgroundcolor: "#0f1419", showspikes: false, tickfont: { size: 10 } };

function surface3dFigure(surface, axis) {
  const grid = surfaceGrid(surface, axis);
  const bad = badCalendar(surface);
  const flag = { x: [], y: [], z: [], text: [] };  // flagged rows, each followed by a null gap
  grid.rows.forEach((v, i) => {
    const why = [!v.fit.butterfly_ok && "butterfly", bad.has(v.expiry_ms) && "calendar"].filter(Boolean);
    if (!why.length) return;
    flag.x.push(...grid.x[i], null); flag.y.push(...grid.y[i], null); flag.z.push(...grid.z[i], null);
    flag.text.push(...grid.x[i].map(() => `${fmtDate(v.expiry_ms)}: ${why.join(" and ")} arbitrage`), null);
  });
  const yTitle = axis === "delta" ? "delta (1 − call Δ)" : "k = ln(K/F)";
  const data = [
    { type: "surface", name: "SVI", x: grid.x, y: grid.y, z: grid.z, colorscale: "Viridis", connectgaps: false,
      colorbar: { title: { text: "vol %", side: "right" }, thickness: 10, len: 0.8, tickfont: { color: "#7d8794", size: 10 },
        outlinewidth: 0 },
      hovertemplate: `%{x:.1f} d, ${axis === "delta" ? "Δ %{y:.2f}" : "k %{y:.3f}"}: %{z:.2f}%<extra></extra>` },
    { type: "scatter3d", mode: "lines", name: "arbitrage flag", x: flag.x, y: flag.y, z: flag.z, text: flag.text,
      line: { color: "#f85149", width: 6 }, hovertemplate: "%{text}<extra></extra>", showlegend: false },
  ];
  const layout = {
    paper_bgcolor: "#161c24", plot_bgcolor: "#161c24", font: { color: "#d8dee6", family: "system-ui, sans-serif", size: 11 },
    margin: { l: 0, r: 0, t: 0, b: 0 }, showlegend: false, uirevision: `${surface.venue}:${surface.underlying}|${axis}`,
    scene: {
      xaxis: { ...SCENE_AXIS, title: { text: "days to expiry" } },
      yaxis: { ...SCENE_AXIS, title: { text: yTitle } },
      zaxis: { ...SCENE_AXIS, title: { text: "implied vol (%)" } },
      aspectmode: "manual", aspectratio: { x: 1.7, y: 1.1, z: 0.7 },
      camera: { eye: { x: -1.3, y: -1.45, z: 0.7 }, center: { x: 0, y: 0, z: -0.12 } },
    },
  };
  return { data, layout, rows: grid.rows.length };
}

// Called by render() on every frame it runs, and when the panel scrolls into view.
function renderSurface3d() {
  const panel = document.getElementById("surface3d-panel");
  if (!surface3d.visible) return;  // loaded and drawn only once it is on screen
  if (!surface3d.webgl) {
    surface3d.webgl = probeWebgl();
    panel.dataset.webgl = surface3d.webgl.api;
    panel.dataset.renderer = surface3d.webgl.renderer;
  }
  if (!surface3d.webgl.ok) return surface3dState("no-webgl", `3D needs WebGL: ${surface3d.webgl.reason}`);
  if (!page.config) return;  // /dashboard.json not in yet
  if (!page.config.plotly_js) {
    return surface3dState("no-plotly", "3D surface off: the gateway has no Plotly.js (pip install plotly where the gateway runs; its log says so too)");
  }
  if (plotlyLib.state === "error") return surface3dState("error", `3D surface: ${plotlyLib.why}`);
  if (plotlyLib.state !== "ready") { loadPlotly(); return surface3dState("loading"); }
  const surface = sel.key ? surfaces.get(sel.key) : null;
  const axis = sel.axis === "delta" ? "delta" : "k";
  if (!surface || (surface3d.shown && surface3d.shown.surface === surface && surface3d.shown.axis === axis)) return;
  if (surface3d.timer == null) {  // one draw due at a time; it takes the newest state when it runs
    surface3d.timer = setTimeout(drawSurface3d, Math.max(0, Math.ceil(surface3d.lastMs + SURFACE_MIN_MS - monoMs())));
  }
}

function drawSurface3d() {
  surface3d.timer = null;
  const surface = sel.key ? surfaces.get(sel.key) : null;
  const axis = sel.axis === "delta" ? "delta" : "k";
  if (!surface || (surface3d.shown && surface3d.shown.surface === surface && surface3d.shown.axis === axis)) return;
  surface3d.lastMs = monoMs();
  surface3d.drawnMs = [...surface3d.drawnMs.slice(-19), surface3d.lastMs];
  surface3d.shown = { surface, axis };
  const { data, layout, rows } = surface3dFigure(surface, axis);
  setText(document.getElementById("surface3d-title"), `${surface.venue}:${surface.underlying}, ${rows} expiries`);
  const gd = document.getElementById("surface3d");
  window.Plotly.react(gd, data, layout, { displaylogo: false, responsive: true, scrollZoom: false,
    modeBarButtonsToRemove: ["resetCameraLastSave3d"] }).then(() => {
    const panel = document.getElementById("surface3d-panel");
    surface3d.reacts += 1;
    // which state the plot shows (tests compare it with the gateway's), and how many updates
    Object.assign(panel.dataset, { key: `${surface.venue}:${surface.underlying}`, epoch: String(surface.epoch),
      axis, revision: String(surface3d.reacts) });
    surface3dState(rows >= 2 ? "drawn" : "drawn-few", rows >= 2 ? "" : "a surface needs two or more expiries with a fit");
  }, (err) => {
    console.warn(`volgraph: the 3D surface failed to draw (${err && err.message})`);
    surface3dState("error", `3D surface failed to draw: ${err && err.message}`);
  });
}

function watchSurface3d() {
  const panel = document.getElementById("surface3d-panel");
  if (typeof IntersectionObserver === "undefined") { surface3d.visible = true; return; }
  new IntersectionObserver((entries) => {
    surface3d.visible = entries.some((e) => e.isIntersecting);
    if (surface3d.visible) renderSurface3d();
  }, { rootMargin: "200px" }).observe(panel);
}

// ---------------------------------------------------------------- render loop

function render(force = false) {
  if (page.firstDataMs == null && surfaces.size) page.firstDataMs = monoMs();
  autoSelect();
  renderTabs();
  const surface = sel.key ? surfaces.get(sel.key) : null;
  document.getElementById("empty").hidden = !!surface;
  renderStatus();
  renderCharts(force);  // with or without data: a panel says when Plotly.js is missing
  ui.dirty = false;
  if (!surface) return;
  renderTable(surface);
  renderTenors(surface);
  renderUnderlying(surface);
  renderStrikes(surface);
  renderDepth(surface);
  renderSmileHead(surface);
  renderSurface3d();
}

function tick() {
  // the gateway pings every ping_interval_ms: two intervals of silence mean a dead connection
  if (page.socket && page.connected && page.pingMs > 0 && monoMs() - page.heardMs > 2 * page.pingMs + 1000) page.socket.close();
  if (typeof document !== "undefined" && document.getElementById("conn")) render();
}

function loop() {
  if (ui.dirty) render();
  requestAnimationFrame(loop);
}

function wire() {
  document.querySelector("#expiries tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (!tr) return;
    const expiry = Number(tr.dataset.expiry);
    if (e.target.classList.contains("overlay")) {
      const overlay = new Set(sel.overlay);
      if (e.target.checked) overlay.add(expiry); else overlay.delete(expiry);
      select({ overlay });
    } else {
      select({ expiry });
    }
  });
  document.querySelector("#strikes tbody").addEventListener("click", (e) => {
    const tr = e.target.closest("tr");
    if (tr && tr.dataset.strike) select({ strike: Number(tr.dataset.strike) });
  });
  document.getElementById("band").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b) select({ band: b.dataset.size === "off" ? null : Number(b.dataset.size) });
  });
  document.getElementById("tabs").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (!b || b.dataset.key === sel.key) return;
    const s = surfaces.get(b.dataset.key);
    select({ key: b.dataset.key, expiry: s && s.expiries.length ? mostLiquid(s).expiry_ms : null, overlay: new Set() });
  });
  document.getElementById("jw-toggle").addEventListener("click", () => {
    sel.jw = !sel.jw;
    writeUrl();
    render(true);
  });
  document.getElementById("axis").addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b && AXES.includes(b.dataset.axis)) select({ axis: b.dataset.axis });
  });
}

if (typeof window !== "undefined") {
  readUrl();
  wire();
  watchSurface3d();
  window.volgraph = { surfaces, sel, page, clock, surface3d, charts, plotlyLib };  // read-only handle for tests and the console
  loadConfig().finally(() => { connect(); });
  setInterval(tick, 500);  // ages, staleness and the reconnect countdown move without messages
  requestAnimationFrame(loop);
} else if (typeof module !== "undefined") {
  // Under node (tests/dashboard/test_merge_js.py, test_ticks_js.py): the merge and the smile maths.
  module.exports = { applyPatch, onMessage, surfaces, seqs, page, deltaX, deltaTicks, sviVol, normCdf, fmtDelta, surfaceGrid };
}
