// fleetgen dashboard: one small script, no build step. Views are picked from the path.
// Everything a device reports goes into the page through textContent (never innerHTML),
// so a label such as "<script>" renders as text.
"use strict";

const POLL_MS = 5000;
const TOKEN_KEY = "fleetgen.token";

// ---- helpers -------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function fmt(v, digits = 1) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  if (s < 120) return `${s}s ago`;
  if (s < 7200) return `${Math.floor(s / 60)}m ago`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

function when(ts) {
  return new Date(ts * 1000).toLocaleString();
}

class Unauthorized extends Error {}

async function api(path) {
  const headers = { Accept: "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(path, { headers });
  if (r.status === 401) throw new Unauthorized(path);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${r.status} ${path}`);
  return body;
}

function setLive(ok) {
  document.getElementById("live").classList.toggle("on", ok);
}

function askToken(main) {
  const form = document.getElementById("token-form").content.firstElementChild.cloneNode(true);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    localStorage.setItem(TOKEN_KEY, form.elements.token.value.trim());
    location.reload();
  });
  main.replaceChildren(form);
}

// Run `tick` now and every POLL_MS; a failed tick shows its error and keeps polling.
function poll(main, tick) {
  let timer = null;
  const run = async () => {
    try {
      await tick();
      setLive(true);
    } catch (e) {
      setLive(false);
      if (e instanceof Unauthorized) {
        askToken(main);
        return;
      }
      const msg = main.querySelector(".error") || main.appendChild(el("p", { class: "error" }));
      msg.textContent = String(e.message || e);
    }
    timer = setTimeout(run, POLL_MS);
  };
  run();
  return () => clearTimeout(timer);
}

function card(k, v) {
  return el("div", { class: "card" }, el("div", { class: "v", text: v }), el("div", { class: "k", text: k }));
}

function powerCell(power, budget) {
  const td = el("td", { class: "num" }, `${fmt(power)} / ${fmt(budget)}`);
  if (power !== null && budget) {
    const ratio = Math.min(1, power / budget);
    const bar = el("span", { class: "bar" + (power > budget ? " over" : "") }, el("span"));
    bar.firstChild.style.width = `${Math.round(ratio * 100)}%`;
    td.append(bar);
  }
  return td;
}

// ---- fleet -------------------------------------------------------------------------------

const FLEET_COLUMNS = [
  { key: "id", label: "Device" },
  { key: "status", label: "Status" },
  { key: "board", label: "Board" },
  { key: "active_bundle", label: "Bundle" },
  { key: "power_w", label: "Power / budget (W)", num: true },
  { key: "tokens_per_s", label: "Tokens/s", num: true },
  { key: "temp_c", label: "Temp (°C)", num: true },
  { key: "last_seen", label: "Last seen", num: true },
];

async function allDevices() {
  const page = 10000;
  let offset = 0;
  let devices = [];
  for (;;) {
    const body = await api(`/api/v1/devices?limit=${page}&offset=${offset}`);
    devices = devices.concat(body.devices);
    offset += body.devices.length;
    if (offset >= body.total || body.devices.length === 0) return devices;
  }
}

function fleetRow(d) {
  const link = el("a", { href: `/devices/${encodeURIComponent(d.id)}`, text: d.id });
  return el("tr", { "data-device": d.id },
    el("td", {}, link),
    el("td", { class: `status-${d.status}`, text: d.status }),
    el("td", { text: d.board || "–", title: d.board }),
    el("td", { text: d.active_bundle || "–", title: d.active_bundle }),
    powerCell(d.power_w, d.budget_w),
    el("td", { class: "num", text: fmt(d.tokens_per_s) }),
    el("td", { class: "num", text: fmt(d.temp_c) }),
    el("td", { class: "num", text: ago(d.last_seen), title: d.last_seen ? when(d.last_seen) : "" }),
  );
}

function compare(key, desc) {
  const sign = desc ? -1 : 1;
  return (a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return a.id < b.id ? -1 : 1;
    if (x === null || x === undefined || x === "") return 1;
    if (y === null || y === undefined || y === "") return -1;
    return (x < y ? -1 : 1) * sign;
  };
}

function fleetView(main) {
  const state = { devices: [], sort: "id", desc: false, filter: "", status: "" };
  const cards = el("div", { class: "cards", id: "fleet-cards" });
  const search = el("input", { type: "search", placeholder: "filter: id, board, bundle", id: "fleet-filter", size: 30 });
  const status = el("select", { id: "fleet-status" },
    el("option", { value: "", text: "any status" }), el("option", { value: "online", text: "online" }),
    el("option", { value: "offline", text: "offline" }));
  const count = el("span", { class: "muted", id: "fleet-count" });
  const head = el("tr");
  const body = el("tbody");
  const table = el("table", { id: "fleet-table" }, el("thead", {}, head), body);
  for (const c of FLEET_COLUMNS) {
    const th = el("th", { class: c.num ? "num" : "", text: c.label, "data-key": c.key });
    th.addEventListener("click", () => {
      state.desc = state.sort === c.key ? !state.desc : false;
      state.sort = c.key;
      render();
    });
    head.append(th);
  }
  search.addEventListener("input", () => { state.filter = search.value.trim().toLowerCase(); render(); });
  status.addEventListener("change", () => { state.status = status.value; render(); });
  main.replaceChildren(el("h1", { text: "Fleet" }), cards, el("div", { class: "toolbar" }, search, status, count), table);

  function render() {
    const f = state.filter;
    const shown = state.devices.filter((d) =>
      (!state.status || d.status === state.status) &&
      (!f || d.id.includes(f) || (d.board || "").toLowerCase().includes(f) ||
       (d.active_bundle || "").toLowerCase().includes(f)));
    shown.sort(compare(state.sort, state.desc));
    const frag = document.createDocumentFragment();
    for (const d of shown) frag.append(fleetRow(d));
    body.replaceChildren(frag);
    for (const th of head.children) {
      th.classList.toggle("sorted", th.dataset.key === state.sort);
      th.classList.toggle("desc", th.dataset.key === state.sort && state.desc);
    }
    count.textContent = `${shown.length} of ${state.devices.length} devices`;
    const online = state.devices.filter((d) => d.status === "online").length;
    const power = state.devices.reduce((s, d) => s + (d.power_w || 0), 0);
    const budget = state.devices.reduce((s, d) => s + (d.budget_w || 0), 0);
    const tps = state.devices.reduce((s, d) => s + (d.tokens_per_s || 0), 0);
    cards.replaceChildren(card("online", `${online} / ${state.devices.length}`),
      card("power / budget", `${fmt(power, 0)} / ${fmt(budget, 0)} W`), card("tokens/s (fleet)", fmt(tps, 0)));
    document.body.dataset.ready = "fleet";
    if (!performance.getEntriesByName("fleet-rendered").length) performance.mark("fleet-rendered");
  }

  return poll(main, async () => {
    state.devices = await allDevices();
    render();
  });
}

// plotly.js is 4.6 MB: only pages with charts load it.
let plotlyLoading = null;
function loadPlotly() {
  if (!plotlyLoading) {
    plotlyLoading = new Promise((resolve, reject) => {
      const script = el("script", { src: "/static/vendor/plotly.min.js" });
      script.addEventListener("load", resolve);
      script.addEventListener("error", () => reject(new Error("plotly.js did not load")));
      document.head.append(script);
    });
  }
  return plotlyLoading;
}

// ---- one device ----------------------------------------------------------------------------

const CHARTS = [
  { id: "chart-power", title: "Power (W)", traces: [["power_w", "draw"]], budget: true },
  { id: "chart-tokens", title: "Tokens/s", traces: [["tokens_per_s", "tokens/s"]] },
  { id: "chart-latency", title: "Latency (ms)", traces: [["latency_ms", "latency"]] },
  { id: "chart-temp", title: "Temperature (°C)", traces: [["temp_c", "temperature"]] },
  { id: "chart-memory", title: "Memory (MB)", traces: [["mem_used_mb", "used"], ["mem_total_mb", "total"]] },
];
const RANGES = { "1 h": 3600, "6 h": 6 * 3600, "24 h": 86400, "7 d": 7 * 86400 };

function drawChart(spec, series, budget) {
  const x = series.t.map((t) => new Date(t * 1000));
  const data = spec.traces.map(([field, name]) => ({ x, y: series.series[field], name, type: "scatter",
    mode: "lines", connectgaps: false }));
  if (spec.budget && budget !== null && x.length) {
    data.push({ x: [x[0], x[x.length - 1]], y: [budget, budget], name: "budget", mode: "lines",
      line: { dash: "dash", color: "#c62828" } });
  }
  const layout = { title: { text: spec.title, font: { size: 14 } }, margin: { l: 50, r: 20, t: 40, b: 40 },
    showlegend: data.length > 1, legend: { orientation: "h" }, xaxis: { type: "date" }, uirevision: "keep" };
  Plotly.react(spec.id, data, layout, { displaylogo: false, responsive: true });
}

function eventsTable(events) {
  const body = el("tbody");
  for (const e of events) {
    body.append(el("tr", {},
      el("td", { text: when(e.ts) }),
      el("td", { class: `level-${e.level}`, text: e.level }),
      el("td", { text: e.kind }),
      el("td", { text: e.message }),
      el("td", { text: Object.keys(e.details).length ? JSON.stringify(e.details) : "" })));
  }
  const head = el("tr", {}, ...["time", "level", "kind", "message", "details"].map((h) => el("th", { text: h })));
  return el("table", { id: "events-table" }, el("thead", {}, head), body);
}

function desiredText(desired) {
  const doc = desired.document;
  const applied = `applied v${desired.applied_version}`;
  if (!doc) return applied;
  const budget = doc.power_budget_w === null ? "" : `, budget ${fmt(doc.power_budget_w)} W`;
  return `v${doc.version}: ${doc.target || "no bundle"}${budget} (${applied})`;
}

function deviceView(main, id) {
  let range = 3600;
  const title = el("h1", { id: "device-title", text: id });
  const facts = el("dl", { class: "kv", id: "device-facts" });
  const ranges = el("div", { class: "toolbar" }, el("span", { class: "muted", text: "range" }));
  for (const [label, seconds] of Object.entries(RANGES)) {
    const b = el("button", { type: "button", text: label });
    b.addEventListener("click", () => { range = seconds; refresh(); });
    ranges.append(b);
  }
  const charts = el("div", { class: "charts" }, ...CHARTS.map((c) => el("div", { class: "chart", id: c.id })));
  const events = el("div", { id: "device-events" });
  main.replaceChildren(title, facts, el("h2", { text: "Telemetry" }), ranges, charts,
    el("h2", { text: "Events" }), events);

  async function refresh() {
    const enc = encodeURIComponent(id);
    const dev = await api(`/api/v1/devices/${enc}`);
    const d = dev.device;
    const rep = dev.reported || {};
    const rows = [["status", d.status], ["board", d.board], ["bundle", d.active_bundle || "–"],
      ["health", d.health], ["agent", d.agent_version], ["slot", dev.slot || "–"],
      ["accelerators", (rep.accelerators || []).join(", ") || "–"],
      ["power / budget", `${fmt(d.power_w)} / ${fmt(d.budget_w)} W`],
      ["desired", desiredText(dev.desired)], ["last seen", ago(d.last_seen)]];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    const until = Date.now() / 1000;
    const step = Math.max(1, Math.round(range / 300));
    const series = await api(`/api/v1/devices/${enc}/telemetry?since=${until - range}&until=${until}&step=${step}`);
    await loadPlotly();
    for (const spec of CHARTS) drawChart(spec, series, d.budget_w);
    const ev = await api(`/api/v1/devices/${enc}/events?limit=200`);
    events.replaceChildren(ev.events.length ? eventsTable(ev.events) : el("p", { class: "muted", text: "no events" }));
    document.body.dataset.ready = "device";
    document.body.dataset.points = String(series.t.length);
  }

  return poll(main, refresh);
}

// ---- router ----------------------------------------------------------------------------------

const VIEWS = [
  [/^\/$/, (main) => fleetView(main)],
  [/^\/devices\/([^/]+)$/, (main, m) => deviceView(main, decodeURIComponent(m[1]))],
];

function start() {
  const main = document.getElementById("main");
  for (const [re, view] of VIEWS) {
    const m = location.pathname.match(re);
    if (m) {
      view(main, m);
      return;
    }
  }
  main.replaceChildren(el("p", { class: "error", text: `no page at ${location.pathname}` }));
}

document.addEventListener("DOMContentLoaded", start);
