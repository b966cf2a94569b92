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

// Run `tick` now and every `every` ms; a failed tick shows its error and keeps polling.
function poll(main, tick, every = POLL_MS) {
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
    timer = setTimeout(run, every);
  };
  run();
  return () => clearTimeout(timer);
}

function card(k, v) {
  return el("div", { class: "card" }, el("div", { class: "v", text: v }), el("div", { class: "k", text: k }));
}

// ---- fleet -------------------------------------------------------------------------------

const FLEET_COLUMNS = [
  { key: "id", label: "Device", width: "16%" },
  { key: "status", label: "Status", width: "7%" },
  { key: "board", label: "Board", width: "15%" },
  { key: "active_bundle", label: "Bundle", width: "18%" },
  { key: "power_w", label: "Power / budget (W)", num: true, width: "16%" },
  { key: "tokens_per_s", label: "Tokens/s", num: true, width: "9%" },
  { key: "temp_c", label: "Temp (°C)", num: true, width: "9%" },
  { key: "last_seen", label: "Last seen", num: true, width: "10%" },
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

// One prebuilt row, cloned per device: much cheaper than building 5,000 rows node by node.
const FLEET_ROW = (() => {
  const tr = document.createElement("tr");
  for (const c of FLEET_COLUMNS) tr.append(el("td", { class: c.num ? "num" : "" }));
  tr.firstChild.append(document.createElement("a"));
  return tr;
})();

function fleetRow(d) {
  const tr = FLEET_ROW.cloneNode(true);
  tr.dataset.device = d.id;
  const [idCell, status, board, bundle, power, tps, temp, seen] = tr.children;
  const link = idCell.firstChild;
  link.href = `/devices/${encodeURIComponent(d.id)}`;
  link.textContent = d.id;
  status.className = `status-${d.status}`;
  status.textContent = d.status;
  board.textContent = d.board || "–";
  board.title = d.board;
  bundle.textContent = d.active_bundle || "–";
  bundle.title = d.active_bundle || "";
  power.textContent = `${fmt(d.power_w)} / ${fmt(d.budget_w)}`;
  if (d.power_w !== null && d.budget_w) {
    const bar = el("span", { class: "bar" + (d.power_w > d.budget_w ? " over" : "") }, el("span"));
    bar.firstChild.style.width = `${Math.round(Math.min(1, d.power_w / d.budget_w) * 100)}%`;
    power.append(bar);
  }
  tps.textContent = fmt(d.tokens_per_s);
  temp.textContent = fmt(d.temp_c);
  seen.textContent = ago(d.last_seen);
  if (d.last_seen) seen.title = when(d.last_seen);
  return tr;
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

// The table draws only the rows in view (plus a margin) between two spacer rows, so its
// cost does not grow with the fleet: laying out 5,000 full rows took seconds on a small machine.
const ROW_H = 30; // px; the CSS fixes the rows' height to this
const OVERSCAN = 30;

function spacer(height) {
  const tr = el("tr", { class: "spacer" }, el("td", { colSpan: FLEET_COLUMNS.length }));
  tr.style.height = `${height}px`;
  return tr;
}

function fleetView(main) {
  const state = { devices: [], shown: [], sort: "id", desc: false, filter: "", status: "" };
  const cards = el("div", { class: "cards", id: "fleet-cards" });
  const search = el("input", { type: "search", placeholder: "filter: id, board, bundle", id: "fleet-filter", size: 30 });
  const status = el("select", { id: "fleet-status" },
    el("option", { value: "", text: "any status" }), el("option", { value: "online", text: "online" }),
    el("option", { value: "offline", text: "offline" }));
  const count = el("span", { class: "muted", id: "fleet-count" });
  const head = el("tr");
  const body = el("tbody");
  // Fixed layout: column widths come from the header, so rows need no measuring pass.
  const table = el("table", { id: "fleet-table", class: "fixed" }, el("thead", {}, head), body);
  const wrap = el("div", { class: "table-wrap", id: "fleet-wrap" }, table);
  for (const c of FLEET_COLUMNS) {
    const th = el("th", { class: c.num ? "num" : "", text: c.label, "data-key": c.key });
    th.style.width = c.width;
    th.addEventListener("click", () => {
      state.desc = state.sort === c.key ? !state.desc : false;
      state.sort = c.key;
      render();
    });
    head.append(th);
  }
  search.addEventListener("input", () => { state.filter = search.value.trim().toLowerCase(); render(); });
  status.addEventListener("change", () => { state.status = status.value; render(); });
  let pending = false;
  wrap.addEventListener("scroll", () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; paintRows(); });
  });
  main.replaceChildren(el("h1", { text: "Fleet" }), cards, el("div", { class: "toolbar" }, search, status, count), wrap);

  function paintRows() {
    const shown = state.shown;
    const first = Math.max(0, Math.floor(wrap.scrollTop / ROW_H) - OVERSCAN);
    const visible = Math.ceil((wrap.clientHeight || 800) / ROW_H) + 2 * OVERSCAN;
    const last = Math.min(shown.length, first + visible);
    const frag = document.createDocumentFragment();
    if (first > 0) frag.append(spacer(first * ROW_H));
    for (let i = first; i < last; i++) frag.append(fleetRow(shown[i]));
    if (last < shown.length) frag.append(spacer((shown.length - last) * ROW_H));
    body.replaceChildren(frag);
  }

  function render() {
    const f = state.filter;
    const shown = state.devices.filter((d) =>
      (!state.status || d.status === state.status) &&
      (!f || d.id.includes(f) || (d.board || "").toLowerCase().includes(f) ||
       (d.active_bundle || "").toLowerCase().includes(f)));
    shown.sort(compare(state.sort, state.desc));
    state.shown = shown;
    table.dataset.rows = String(shown.length);
    paintRows();
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
    // "fleet-rendered" (the bench reads it): the first frame painted with the table in it.
    if (!performance.getEntriesByName("fleet-rendered").length) {
      requestAnimationFrame(() => setTimeout(() => {
        performance.mark("fleet-rendered");
        document.body.dataset.ready = "fleet";
      }, 0));
    } else {
      document.body.dataset.ready = "fleet";
    }
  }

  return poll(main, async () => {
    state.devices = await allDevices();
    if (!performance.getEntriesByName("fleet-fetched").length) performance.mark("fleet-fetched");
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
    showlegend: data.length > 1, legend: { orientation: "h", x: 1, xanchor: "right", y: 1.15 },
    xaxis: { type: "date" }, uirevision: "keep" };
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
  const applied = `applied v${desired.applied_version}`;
  if (desired.version === null) return applied;
  const budget = desired.power_budget_w === null ? "" : `, budget ${fmt(desired.power_budget_w)} W`;
  return `v${desired.version}: ${desired.target || "no bundle"}${budget} (${applied})`;
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
      ["tags", dev.tags.join(", ") || "–"],
      ["labels", Object.entries(dev.labels).map(([k, v]) => `${k}=${v}`).join(", ") || "–"],
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

// ---- rollouts ------------------------------------------------------------------------------

const RESULT_ORDER = ["committed", "installing", "directed", "pending", "failed", "timed_out", "refused",
  "rolled_back", "skipped", "revoked"];

function countsText(counts) {
  const keys = Object.keys(counts).sort((a, b) => RESULT_ORDER.indexOf(a) - RESULT_ORDER.indexOf(b));
  return keys.map((k) => `${counts[k]} ${k}`).join(", ") || "–";
}

function waveCard(w, current) {
  const done = (w.counts.committed || 0);
  const pct = w.size ? Math.round((100 * done) / w.size) : 0;
  const bar = el("span", { class: "bar wide" }, el("span"));
  bar.firstChild.style.width = `${pct}%`;
  return el("div", { class: "wave" + (current ? " current" : ""), "data-wave": String(w.index),
    "data-state": w.state },
    el("div", { class: "v", text: `wave ${w.index + 1}: ${w.state}` }),
    el("div", { class: "k", text: `${w.size} devices, ${done} committed` }), bar,
    el("div", { class: "k", text: countsText(w.counts) }));
}

function rolloutView(main, id) {
  const title = el("h1", { id: "rollout-title" });
  const facts = el("dl", { class: "kv", id: "rollout-facts" });
  const waves = el("div", { class: "waves", id: "rollout-waves" });
  const devices = el("div", { id: "rollout-devices" });
  main.replaceChildren(title, facts, el("h2", { text: "Waves" }), waves, el("h2", { text: "Devices" }), devices);
  return poll(main, async () => {
    const r = await api(`/api/v1/rollouts/${encodeURIComponent(id)}`);
    title.textContent = `Rollout ${r.id}: ${r.bundle} to ${r.group}`;
    const rows = [["status", r.status + (r.reason ? ` (${r.reason})` : "")], ["waves", r.waves_spec],
      ["max failures", `${Math.round(r.max_failure_ratio * 100)}%`], ["wave timeout", `${r.wave_timeout_s} s`],
      ["started", when(r.created)], ["updated", ago(r.updated)]];
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    waves.replaceChildren(...r.waves.map((w) => waveCard(w, w.index === r.current_wave && r.status === "running")));
    const body = el("tbody");
    for (const w of r.waves) {
      for (const d of w.devices) {
        body.append(el("tr", { "data-device": d.device_id },
          el("td", {}, el("a", { href: `/devices/${encodeURIComponent(d.device_id)}`, text: d.device_id })),
          el("td", { class: "num", text: String(w.index + 1) }),
          el("td", { class: `outcome-${d.result}`, text: d.result }),
          el("td", { text: d.detail })));
      }
    }
    const head = el("tr", {}, ...["device", "wave", "outcome", "detail"].map((h) => el("th", { text: h })));
    devices.replaceChildren(el("table", { id: "rollout-table" }, el("thead", {}, head), body));
    document.body.dataset.ready = "rollout";
    document.body.dataset.status = r.status;
  }, 1000); // waves move in seconds
}

function rolloutsView(main) {
  const list = el("div", { id: "rollouts" });
  main.replaceChildren(el("h1", { text: "Rollouts" }), list);
  return poll(main, async () => {
    const body = el("tbody");
    for (const r of (await api("/api/v1/rollouts")).rollouts) {
      body.append(el("tr", { "data-rollout": String(r.id) },
        el("td", {}, el("a", { href: `/rollouts/${r.id}`, text: String(r.id) })),
        el("td", { text: r.bundle }), el("td", { text: r.group }), el("td", { text: r.status }),
        el("td", { text: `${Math.min(r.current_wave + 1, r.wave_count)} / ${r.wave_count}` }),
        el("td", { text: countsText(r.counts) }), el("td", { text: ago(r.updated) })));
    }
    const head = el("tr", {}, ...["id", "bundle", "group", "status", "wave", "devices", "updated"]
      .map((h) => el("th", { text: h })));
    list.replaceChildren(el("table", {}, el("thead", {}, head), body));
    document.body.dataset.ready = "rollouts";
  });
}

// ---- groups and power ----------------------------------------------------------------------------

function groupView(main, name) {
  const title = el("h1", { id: "group-title", text: `Group ${name}` });
  const cards = el("div", { class: "cards", id: "group-cards" });
  const chart = el("div", { class: "chart wide", id: "chart-allocation" });
  const table = el("div", { id: "group-devices" });
  main.replaceChildren(title, cards, el("h2", { text: "Power by device" }), chart, table);
  return poll(main, async () => {
    const g = await api(`/api/v1/groups/${encodeURIComponent(name)}/power`);
    cards.replaceChildren(card("budget", g.budget_w === null ? "none" : `${fmt(g.budget_w)} W`),
      card("allocated", `${fmt(g.allocated_w)} W`), card("measured draw", `${fmt(g.draw_w)} W`),
      card("devices online", `${g.devices.filter((d) => d.online).length} / ${g.devices.length}`));
    const body = el("tbody");
    for (const d of g.devices) {
      body.append(el("tr", { "data-device": d.device_id },
        el("td", {}, el("a", { href: `/devices/${encodeURIComponent(d.device_id)}`, text: d.device_id })),
        el("td", { text: d.board }), el("td", { class: d.online ? "status-online" : "status-offline",
          text: d.online ? "online" : "offline" }),
        el("td", { class: "num", text: fmt(d.priority) }), el("td", { class: "num", text: fmt(d.floor_w) }),
        el("td", { class: "num", text: fmt(d.cap_w) }),
        el("td", { class: "num", text: fmt(d.allocated_w) }), el("td", { class: "num", text: fmt(d.draw_w) })));
    }
    const head = el("tr", {}, ...["device", "board", "status", "priority", "floor (W)", "cap (W)",
      "allocated (W)", "draw (W)"].map((h) => el("th", { text: h })));
    table.replaceChildren(el("table", { id: "group-table" }, el("thead", {}, head), body));
    await loadPlotly();
    const x = g.devices.map((d) => d.device_id);
    Plotly.react(chart, [
      { type: "bar", name: "allocated", x, y: g.devices.map((d) => d.allocated_w) },
      { type: "bar", name: "draw", x, y: g.devices.map((d) => d.draw_w) },
    ], { barmode: "group", margin: { l: 50, r: 20, t: 20, b: 80 }, legend: { orientation: "h" },
      yaxis: { title: { text: "W" } }, xaxis: { type: "category" }, uirevision: "keep" },
    { displaylogo: false, responsive: true });
    document.body.dataset.ready = "group";
  });
}

function groupsView(main) {
  const list = el("div", { id: "groups" });
  main.replaceChildren(el("h1", { text: "Groups" }), list);
  return poll(main, async () => {
    const body = el("tbody");
    for (const g of (await api("/api/v1/groups")).groups) {
      body.append(el("tr", { "data-group": g.name },
        el("td", {}, el("a", { href: `/groups/${encodeURIComponent(g.name)}`, text: g.name })),
        el("td", { text: g.rules.join(", ") || "–" }), el("td", { class: "num", text: String(g.members.length) }),
        el("td", { class: "num", text: g.budget_w === null ? "–" : fmt(g.budget_w) })));
    }
    const head = el("tr", {}, ...["group", "rules", "devices", "budget (W)"].map((h) => el("th", { text: h })));
    list.replaceChildren(el("table", {}, el("thead", {}, head), body));
    document.body.dataset.ready = "groups";
  });
}

// ---- router ----------------------------------------------------------------------------------

const VIEWS = [
  [/^\/$/, (main) => fleetView(main)],
  [/^\/devices\/([^/]+)$/, (main, m) => deviceView(main, decodeURIComponent(m[1]))],
  [/^\/rollouts$/, (main) => rolloutsView(main)],
  [/^\/rollouts\/([^/]+)$/, (main, m) => rolloutView(main, decodeURIComponent(m[1]))],
  [/^\/groups$/, (main) => groupsView(main)],
  [/^\/groups\/([^/]+)$/, (main, m) => groupView(main, decodeURIComponent(m[1]))],
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
