// volgraph dashboard: connects to the gateway's /ws, merges SurfaceSnapshot and
// SurfacePatch messages per (venue, underlying) exactly as operators/merge.py apply_patch
// does, and draws a table, an ATM term structure and a smile with inline SVG.
// Read-only: it never sends anything but websocket pings (handled by the browser).
"use strict";

const surfaces = new Map();   // "venue:underlying" -> snapshot-like object
const seenAt = new Map();     // "venue:underlying|expiry_ms" -> client time of last change (ms)
let selectedKey = null;
let selectedExpiry = null;
let lastMessageMs = 0;
let dirty = false;
let socket = null;
let retryMs = 500;

// ---------------------------------------------------------------- merge (= apply_patch)
// The browser's copy of the one merge rule (operators/merge.py): drop `removed`, then replace
// expiries by expiry_ms; tenors and calendar whole; index_px kept when the patch has none.
// tests/dashboard/test_merge_js.py runs applyPatch and onMessage under Node.js against the
// Python rule on generated patch sequences: change both together.

function applyPatch(snapshot, patch) {
  const byExpiry = new Map();
  if (snapshot) for (const v of snapshot.expiries) byExpiry.set(v.expiry_ms, v);
  for (const gone of patch.removed || []) byExpiry.delete(gone);
  for (const v of patch.expiries || []) byExpiry.set(v.expiry_ms, v);
  const keys = [...byExpiry.keys()].sort((a, b) => a - b);
  return {
    type: "SurfaceSnapshot", venue: patch.venue, underlying: patch.underlying, epoch: patch.epoch,
    ts_exchange_ms: patch.ts_exchange_ms, ts_emit_ms: patch.ts_emit_ms,
    expiries: keys.map((k) => byExpiry.get(k)),
    tenors: patch.tenors || [], calendar: patch.calendar || [],
    index_px: patch.index_px != null ? patch.index_px : (snapshot ? snapshot.index_px : null),
  };
}

function onMessage(msg) {
  if (msg.type !== "SurfaceSnapshot" && msg.type !== "SurfacePatch") return;
  const key = `${msg.venue}:${msg.underlying}`;
  const now = Date.now();
  let next;
  if (msg.type === "SurfaceSnapshot") {
    next = { ...msg, expiries: [...msg.expiries].sort((a, b) => a.expiry_ms - b.expiry_ms) };
  } else {
    next = applyPatch(surfaces.get(key), msg);
  }
  for (const v of msg.expiries || []) seenAt.set(`${key}|${v.expiry_ms}`, now);
  surfaces.set(key, next);
  if (selectedKey === null) selectedKey = key;
  lastMessageMs = now;
  dirty = true;
}

// ---------------------------------------------------------------- connection

function connect() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${proto}//${location.host}/ws`);
  socket.onopen = () => { retryMs = 500; setConn(true); };
  socket.onmessage = (e) => {
    try { onMessage(JSON.parse(e.data)); } catch (err) { console.warn("bad message", err); }
  };
  socket.onclose = () => {
    setConn(false);
    // A reconnect gets fresh snapshots: start clean so removed expiries do not linger.
    surfaces.clear();
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  };
}

function setConn(up) {
  const el = document.getElementById("conn");
  el.textContent = up ? "live" : "disconnected";
  el.className = `conn ${up ? "up" : "down"}`;
}

// ---------------------------------------------------------------- formatting

const pct = (x, d = 2) => (x == null ? "–" : (100 * x).toFixed(d));
const num = (x, d = 2) => (x == null ? "–" : Number(x).toFixed(d));
const fmtDate = (ms) => new Date(ms).toISOString().slice(0, 10);
const fmtAge = (ms) => (ms < 1000 ? `${ms | 0} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${(ms / 60000).toFixed(1)} min`);

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(tag === "svg" || attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) if (k !== "svg") node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}
const svgEl = (tag, attrs = {}, text) => el(tag, { ...attrs, svg: true }, text);

// ---------------------------------------------------------------- rendering

function render() {
  const now = Date.now();
  document.getElementById("age").textContent = lastMessageMs ? `last update ${fmtAge(now - lastMessageMs)} ago` : "";
  renderTabs();
  const surface = selectedKey ? surfaces.get(selectedKey) : null;
  document.getElementById("empty").style.display = surface ? "none" : "";
  if (!surface) return;
  if (selectedExpiry === null || !surface.expiries.some((v) => v.expiry_ms === selectedExpiry)) {
    selectedExpiry = surface.expiries.length ? surface.expiries[0].expiry_ms : null;
  }
  renderTable(surface, now);
  if (dirty) {
    renderTerm(surface);
    renderSmile(surface);
  }
  dirty = false;
}

function renderTabs() {
  const nav = document.getElementById("tabs");
  const keys = [...surfaces.keys()].sort();
  if (nav.dataset.keys === keys.join(",") && nav.dataset.sel === selectedKey) return;
  nav.replaceChildren(...keys.map((k) => {
    const b = el("button", { class: k === selectedKey ? "active" : "" }, k);
    b.onclick = () => { selectedKey = k; selectedExpiry = null; dirty = true; render(); };
    return b;
  }));
  nav.dataset.keys = keys.join(",");
  nav.dataset.sel = selectedKey;
}

// Node columns: one per graph.toml node present in the data (ExpiryView.analytics, by name),
// in the order the nodes come (graph.toml's topological order); the header is rebuilt only
// when that list changes. unit "vol pts": a decimal vol shown in vol points (×100); any other
// unit is shown beside the raw value.
const FIXED_HEAD = ["expiry", "T (y)", "forward"];
const FIXED_TAIL = ["RMSE (pts)", "quotes", "butterfly", "age"];

function nodeColumns(surface) {
  const cols = new Map(); // node name -> unit ("" if none)
  for (const v of surface.expiries) {
    const units = v.units || {};
    for (const name of Object.keys(v.analytics || {})) if (!cols.has(name)) cols.set(name, units[name] || "");
  }
  return [...cols].map(([name, unit]) => ({ name, unit }));
}

const nodeLabel = (c) => (c.unit ? `${c.name} (${c.unit})` : c.name);
const nodeValue = (x, unit) => (x == null ? "–" : unit === "vol pts" ? pct(x) : Number(x).toPrecision(4));

function renderHead(cols) {
  const row = document.querySelector("#expiries thead tr");
  const labels = [...FIXED_HEAD, ...cols.map(nodeLabel), ...FIXED_TAIL];
  if (row.dataset.labels === labels.join("\u0001")) return;
  row.replaceChildren(...labels.map((text, i) => {
    const c = i - FIXED_HEAD.length;
    return el("th", c >= 0 && c < cols.length ? { "data-node": cols[c].name } : {}, text);
  }));
  row.dataset.labels = labels.join("\u0001");
}

function renderTable(surface, now) {
  const cols = nodeColumns(surface);
  renderHead(cols);
  const rows = surface.expiries.map((v) => {
    const f = v.fit;
    const age = now - (seenAt.get(`${selectedKey}|${v.expiry_ms}`) || now);
    const tr = el("tr", { class: v.expiry_ms === selectedExpiry ? "sel" : "" });
    const analytics = v.analytics || {};
    const cells = [
      [fmtDate(v.expiry_ms)], [num(f.t_years, 4)], [num(f.forward, 1)],
      ...cols.map((c) => [nodeValue(analytics[c.name], c.unit)]),
      [num(f.rmse_vol_pts, 3)],
      [String(f.n_quotes)], [f.butterfly_ok ? "ok" : `g=${num(f.min_g, 3)}`, f.butterfly_ok ? "ok" : "bad"],
      [fmtAge(age), age > 60000 ? "stale" : ""],
    ];
    for (const [text, cls] of cells) tr.appendChild(el("td", cls ? { class: cls } : {}, text));
    tr.onclick = () => { selectedExpiry = v.expiry_ms; dirty = true; render(); };
    return tr;
  });
  document.querySelector("#expiries tbody").replaceChildren(...rows);
}

function scale(d0, d1, r0, r1) {
  const span = d1 - d0 || 1;
  return (x) => r0 + ((x - d0) / span) * (r1 - r0);
}

function extent(values, padFrac = 0.08) {
  const xs = values.filter((x) => x != null && Number.isFinite(x));
  if (!xs.length) return [0, 1];
  let lo = Math.min(...xs), hi = Math.max(...xs);
  const pad = (hi - lo || Math.abs(hi) || 1) * padFrac;
  return [lo - pad, hi + pad];
}

function axes(svg, xDom, yDom, x, y, xFmt, yFmt) {
  for (let i = 0; i <= 4; i++) {
    const yv = yDom[0] + ((yDom[1] - yDom[0]) * i) / 4;
    svg.appendChild(svgEl("line", { class: "grid", x1: 40, x2: 470, y1: y(yv), y2: y(yv) }));
    svg.appendChild(svgEl("text", { class: "axis", x: 36, y: y(yv) + 3, "text-anchor": "end" }, yFmt(yv)));
    const xv = xDom[0] + ((xDom[1] - xDom[0]) * i) / 4;
    svg.appendChild(svgEl("text", { class: "axis", x: x(xv), y: 236, "text-anchor": "middle" }, xFmt(xv)));
  }
}

const TERM_NODE = "atm_vol"; // graph.toml node the term structure plots (a decimal vol)

function renderTerm(surface) {
  const svg = document.getElementById("term");
  svg.replaceChildren();
  // The term structure plots the node named TERM_NODE; without one in the data, say so.
  if (surface.expiries.length && !surface.expiries.some((v) => v.analytics && TERM_NODE in v.analytics)) {
    svg.appendChild(svgEl("text", { class: "axis", x: 240, y: 120, "text-anchor": "middle", id: "term-missing" },
      `no node named ${TERM_NODE} in graph.toml: add [nodes.${TERM_NODE}] to plot the term structure`));
    return;
  }
  const pts = surface.expiries
    .filter((v) => v.analytics && v.analytics[TERM_NODE] != null)
    .map((v) => ({ days: (v.expiry_ms - surface.ts_exchange_ms) / 86400000, vol: v.analytics[TERM_NODE], e: v.expiry_ms }));
  if (!pts.length) return;
  const xDom = extent(pts.map((p) => p.days)), yDom = extent(pts.map((p) => p.vol));
  const x = scale(xDom[0], xDom[1], 44, 466), y = scale(yDom[0], yDom[1], 222, 8);
  axes(svg, xDom, yDom, x, y, (d) => d.toFixed(0), (v) => (100 * v).toFixed(1));
  svg.appendChild(svgEl("polyline", { class: "line", points: pts.map((p) => `${x(p.days)},${y(p.vol)}`).join(" ") }));
  for (const p of pts) {
    const c = svgEl("circle", { class: `pt${p.e === selectedExpiry ? " sel" : ""}`, cx: x(p.days), cy: y(p.vol), r: 3.5 });
    c.appendChild(svgEl("title", {}, `${fmtDate(p.e)}: ${pct(p.vol)}%`));
    c.onclick = () => { selectedExpiry = p.e; dirty = true; render(); };
    svg.appendChild(c);
  }
}

// Raw SVI total variance w(k) = a + b(ρ(k−m) + √((k−m)² + σ²)); vol = √(w/T).
function sviVol(f, k) {
  const d = k - f.m;
  const w = f.a + f.b * (f.rho * d + Math.sqrt(d * d + f.sigma * f.sigma));
  return w > 0 && f.t_years > 0 ? Math.sqrt(w / f.t_years) : null;
}

function renderSmile(surface) {
  const svg = document.getElementById("smile");
  svg.replaceChildren();
  const view = surface.expiries.find((v) => v.expiry_ms === selectedExpiry);
  document.getElementById("smile-title").textContent = view ? `${surface.underlying} ${fmtDate(view.expiry_ms)} (vol % vs k = ln K/F)` : "";
  if (!view) return;
  const f = view.fit;
  const ks = view.strikes.map((K) => Math.log(K / f.forward));
  const kDom = extent(ks.length ? ks : [-0.3, 0.3], 0.1);
  const curve = [];
  for (let i = 0; i <= 80; i++) {
    const k = kDom[0] + ((kDom[1] - kDom[0]) * i) / 80;
    const v = sviVol(f, k);
    if (v != null) curve.push([k, v]);
  }
  const vols = curve.map((p) => p[1]).concat(view.bid_iv, view.ask_iv);
  const yDom = extent(vols);
  const x = scale(kDom[0], kDom[1], 44, 466), y = scale(yDom[0], yDom[1], 222, 8);
  axes(svg, kDom, yDom, x, y, (k) => k.toFixed(2), (v) => (100 * v).toFixed(1));
  svg.appendChild(svgEl("polyline", { class: "svi", points: curve.map(([k, v]) => `${x(k)},${y(v)}`).join(" ") }));
  ks.forEach((k, i) => {
    for (const [iv, cls] of [[view.bid_iv[i], "bid"], [view.ask_iv[i], "ask"]]) {
      if (iv == null) continue;
      const c = svgEl("circle", { class: cls, cx: x(k), cy: y(iv), r: 2.5 });
      c.appendChild(svgEl("title", {}, `K=${view.strikes[i]} ${cls} ${pct(iv)}%`));
      svg.appendChild(c);
    }
  });
}

// Redraw at most once a frame; the table ages tick once a second even without messages.
function loop() {
  if (dirty) render();
  requestAnimationFrame(loop);
}
if (typeof window !== "undefined") {
  setInterval(() => { dirty = dirty || surfaces.size > 0; }, 1000);
  connect();
  requestAnimationFrame(loop);
} else if (typeof module !== "undefined") {
  // Under node (tests/dashboard/test_merge_js.py): expose the merge to check it against apply_patch.
  module.exports = { applyPatch, onMessage, surfaces };
}
