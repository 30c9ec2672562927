// hostproxy dashboard: polls the admin JSON endpoints and renders routers, clients and the process.
//
// Every second it reads /admin/metrics.json (flat Linkerd keys) and keeps the previous sample, so
// rates and interval success rates are deltas computed here, as Linkerd's dashboard does. Every
// other second it reads /client_state.json and /admin/process.json. Everything is drawn with DOM
// calls and textContent (never innerHTML), so names from the config or from requests cannot inject
// markup. Values carry data-k="<scope>:<field>" attributes so that tests can read what is shown.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120;
const CAUSE_LEVEL = {
  "identification": "proxy", "naming/neg": "proxy", "naming/failed": "proxy", "naming/stale": "proxy",
  "overload": "proxy", "proxy/internal": "proxy",
  "connect/refused": "connection", "connect/timeout": "connection", "connect/unreachable": "connection",
  "tls": "connection", "upstream/reset": "connection",
  "timeout/request": "application", "timeout/attempt": "application", "upstream/5xx": "application",
};
const CAUSES = Object.keys(CAUSE_LEVEL);
const SCOPE_KEY = /^rt\/([^/]+)\/(server|service|client)\/(.+)\/requests$/;

const state = {
  prev: null,          // {t, m}: the previous metrics sample
  history: {},         // router -> {rate: [], success: [], p99: [], retries: []}
  clientState: {},
  process: null,
  prevProcess: null,
  polls: 0,
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function valueEl(key, text, cls) {
  const e = el("span", "value" + (cls ? " " + cls : ""), text);
  e.dataset.k = key;
  return e;
}

function tile(label, key, text, cls) {
  const t = el("div", "tile");
  t.append(el("span", "label", label), valueEl(key, text, cls));
  return t;
}

function num(m, key) {
  const v = m[key];
  return typeof v === "number" ? v : 0;
}

function fmtInt(n) { return Math.round(n).toLocaleString("en-US"); }
function fmtRate(n) { return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2); }
function fmtPct(x) { return x === null ? "—" : (x * 100).toFixed(x >= 0.9995 || x === 0 ? 0 : 1) + "%"; }
function fmtMs(v) { return typeof v === "number" ? (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " ms" : "—"; }
function fmtBytes(b) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i ? b.toFixed(1) : b.toFixed(0)) + " " + units[i];
}
function fmtAge(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
}

// -- the metrics model -------------------------------------------------------------------------------

function scopes(m) {
  const routers = {};
  for (const key of Object.keys(m)) {
    const match = SCOPE_KEY.exec(key);
    if (!match) continue;
    const [, router, kind, name] = match;
    const r = routers[router] || (routers[router] = {server: [], service: [], client: []});
    r[kind].push(name);
  }
  for (const r of Object.values(routers)) for (const k of Object.keys(r)) r[k].sort();
  return routers;
}

function sumOver(m, prefixes, field) {
  let total = 0;
  for (const p of prefixes) total += num(m, p + "/" + field);
  return total;
}

function maxOver(m, prefixes, field) {
  let best = null;
  for (const p of prefixes) {
    const v = m[p + "/" + field];
    if (typeof v === "number" && (best === null || v > best)) best = v;
  }
  return best;
}

function routerView(m, router, sc) {
  const servers = sc.server.map(s => "rt/" + router + "/server/" + s);
  const services = sc.service.map(s => "rt/" + router + "/service/" + s);
  const causes = {};
  for (const c of CAUSES) {
    const n = sumOver(m, servers, "failures/" + c);
    if (n > 0) causes[c] = n;
  }
  return {
    requests: sumOver(m, servers, "requests"),
    success: sumOver(m, servers, "success"),
    failures: sumOver(m, servers, "failures"),
    pending: sumOver(m, servers, "pending"),
    retries: sumOver(m, services, "retries/total"),
    p50: maxOver(m, servers, "request_latency_ms.p50"),
    p95: maxOver(m, servers, "request_latency_ms.p95"),
    p99: maxOver(m, servers, "request_latency_ms.p99"),
    causes: causes,
  };
}

function clientView(m, router, id) {
  const p = "rt/" + router + "/client/" + id;
  return {
    requests: num(m, p + "/requests"), success: num(m, p + "/success"), failures: num(m, p + "/failures"),
    p50: m[p + "/request_latency_ms.p50"], p99: m[p + "/request_latency_ms.p99"],
    size: m[p + "/loadbalancer/size"], available: m[p + "/loadbalancer/available"],
  };
}

function push(series, v) {
  series.push(v);
  if (series.length > HISTORY) series.shift();
}

// -- drawing -----------------------------------------------------------------------------------------

function sparkline(canvas, series, opts) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#e3e7ee";
  ctx.lineWidth = 1;
  for (let i = 1; i < 4; i++) {
    const y = Math.round(h * i / 4) + 0.5;
    ctx.beginPath(); ctx.moveTo(0, y); ctx.lineTo(w, y); ctx.stroke();
  }
  const pts = series.filter(v => v !== null);
  if (pts.length === 0) return;
  const max = opts.max !== undefined ? opts.max : Math.max(1e-9, ...pts) * 1.15;
  const min = opts.min !== undefined ? opts.min : 0;
  const step = w / (HISTORY - 1);
  const x0 = w - (series.length - 1) * step;
  ctx.beginPath();
  let started = false;
  series.forEach((v, i) => {
    if (v === null) return;
    const x = x0 + i * step;
    const y = h - 2 - (h - 4) * (v - min) / (max - min || 1);
    if (!started) { ctx.moveTo(x, y); started = true; } else ctx.lineTo(x, y);
  });
  ctx.strokeStyle = opts.color;
  ctx.lineWidth = 2;
  ctx.stroke();
}

function chart(title, key, series, text, opts) {
  const box = el("div", "chart");
  const head = el("div", "chart-head");
  head.append(el("span", "label", title), valueEl(key, text));
  const canvas = el("canvas");
  canvas.width = 280;
  canvas.height = 64;
  box.append(head, canvas);
  sparkline(canvas, series, opts);
  return box;
}

function causesTable(router, causes, deltas) {
  const names = Object.keys(causes);
  if (names.length === 0) {
    const ok = el("p", "muted", "no failures");
    ok.dataset.k = router + ":no-failures";
    return ok;
  }
  const table = el("table", "causes");
  const head = el("tr");
  for (const h of ["cause", "level", "total", "last interval"]) head.append(el("th", null, h));
  table.append(head);
  names.sort((a, b) => causes[b] - causes[a]);
  for (const c of names) {
    const row = el("tr");
    const level = CAUSE_LEVEL[c] || "proxy";
    row.append(el("td", "mono", c), el("td", null, ""), el("td", "num"), el("td", "num"));
    row.children[1].append(el("span", "badge level-" + level, level));
    row.children[2].append(valueEl(router + ":failures/" + c, fmtInt(causes[c])));
    row.children[3].append(valueEl(router + ":failures-delta/" + c, fmtInt(deltas[c] || 0)));
    table.append(row);
  }
  return table;
}

function endpointTable(client, entry) {
  const eps = entry.endpoints || {};
  const keys = Object.keys(eps);
  if (keys.length === 0) {
    const addrs = entry.addresses || [];
    if (addrs.length === 0) return el("p", "muted", "no endpoints");
    const list = el("ul", "plain");
    for (const a of addrs) list.append(el("li", "mono", a));
    return list;
  }
  const table = el("table", "endpoints");
  const head = el("tr");
  for (const h of ["endpoint", "weight", "load", "status", "accrual", "conns", "conn errors"]) {
    head.append(el("th", null, h));
  }
  table.append(head);
  for (const key of keys.sort()) {
    const ep = eps[key] || {};
    const pool = ep.pool || {};
    let accrual = ep.accrual;
    if (accrual && typeof accrual === "object") accrual = accrual.state;
    const status = ep.status || (ep.balancer && ep.balancer.status) || "—";
    const load = ep.load !== undefined && ep.load !== null ? ep.load : (ep.balancer ? ep.balancer.load : null);
    const row = el("tr");
    const name = el("td", "mono");
    name.append(valueEl(client + ":endpoint", key));
    const acc = el("td");
    acc.append(el("span", "badge accrual-" + (accrual || "alive"), accrual || "alive"));
    row.append(name, el("td", "num", ep.weight !== undefined ? ep.weight : "—"),
      el("td", "num", load === null || load === undefined ? "—" : load), el("td", null, status), acc,
      el("td", "num", pool.open !== undefined ? pool.open : "—"),
      el("td", "num" + (pool.connect_failures ? " bad" : ""),
        pool.connect_failures !== undefined ? pool.connect_failures : "—"));
    table.append(row);
  }
  return table;
}

function clientCard(m, prevM, dt, router, id) {
  const full = "/" + id;
  const v = clientView(m, router, id);
  const entry = state.clientState[full] || {};
  const card = el("div", "card");
  const head = el("div", "card-head");
  const title = valueEl(full + ":name", full, "mono client-name");
  head.append(title);
  const st = String(entry.state || "unknown");
  const stKey = st.toLowerCase().startsWith("failed") ? "failed" : st.toLowerCase();
  const badge = el("span", "badge state-" + stKey, st);
  badge.dataset.k = full + ":state";
  head.append(badge);
  if (entry.stale) head.append(el("span", "badge state-stale", "stale"));
  card.append(head);
  const prev = prevM ? clientView(prevM, router, id) : null;
  const dReq = prev ? v.requests - prev.requests : 0;
  const dOk = prev ? v.success - prev.success : 0;
  const tiles = el("div", "tiles small");
  tiles.append(
    tile("req/s", full + ":rate", prev && dt > 0 ? fmtRate(Math.max(0, dReq) / dt) : "—"),
    tile("success", full + ":success_rate", fmtPct(dReq > 0 ? dOk / dReq : (v.requests ? v.success / v.requests : null))),
    tile("requests", full + ":requests", fmtInt(v.requests)),
    tile("failures", full + ":failures", fmtInt(v.failures), v.failures ? "bad" : ""),
    tile("p50", full + ":p50", fmtMs(v.p50)),
    tile("p99", full + ":p99", fmtMs(v.p99)),
    tile("endpoints", full + ":available",
      v.size !== undefined ? (v.available !== undefined ? v.available : "?") + "/" + v.size : "—"),
  );
  card.append(tiles, endpointTable(full, entry));
  return card;
}

function routerSection(m, prevM, dt, router, sc) {
  const v = routerView(m, router, sc);
  const p = prevM ? routerView(prevM, router, scopes(prevM)[router] || {server: [], service: [], client: []}) : null;
  const h = state.history[router] || (state.history[router] = {rate: [], success: [], p99: [], retries: []});
  const dReq = p ? Math.max(0, v.requests - p.requests) : 0;
  const dOk = p ? Math.max(0, v.success - p.success) : 0;
  const dRetries = p ? Math.max(0, v.retries - p.retries) : 0;
  const rate = p && dt > 0 ? dReq / dt : null;
  const success = dReq > 0 ? dOk / dReq : null;
  if (p) {
    push(h.rate, rate);
    push(h.success, success);
    push(h.p99, v.p99);
    push(h.retries, dt > 0 ? dRetries / dt : null);
  }
  const deltas = {};
  for (const c of Object.keys(v.causes)) deltas[c] = p ? v.causes[c] - (p.causes[c] || 0) : 0;

  const section = el("section", "router");
  section.dataset.router = router;
  const title = el("h2");
  title.append(el("span", "muted", "router "), valueEl(router + ":label", router));
  section.append(title);

  const tiles = el("div", "tiles");
  const overall = v.requests ? v.success / v.requests : null;
  tiles.append(
    tile("requests/s", router + ":rate", rate === null ? "—" : fmtRate(rate)),
    tile("success (interval)", router + ":success_rate", fmtPct(success), success !== null && success < 0.99 ? "bad" : ""),
    tile("success (since start)", router + ":success_total", fmtPct(overall), overall !== null && overall < 0.99 ? "bad" : ""),
    tile("requests", router + ":requests", fmtInt(v.requests)),
    tile("failures", router + ":failures", fmtInt(v.failures), v.failures ? "bad" : ""),
    tile("pending", router + ":pending", fmtInt(v.pending)),
    tile("retries", router + ":retries", fmtInt(v.retries)),
    tile("p50", router + ":p50", fmtMs(v.p50)),
    tile("p95", router + ":p95", fmtMs(v.p95)),
    tile("p99", router + ":p99", fmtMs(v.p99)),
  );
  section.append(tiles);

  const charts = el("div", "charts");
  charts.append(
    chart("requests/s", router + ":chart-rate", h.rate, rate === null ? "—" : fmtRate(rate), {color: "#2f6fde"}),
    chart("success rate", router + ":chart-success", h.success, fmtPct(success), {color: "#1a9c5b", min: 0, max: 1}),
    chart("p99 latency", router + ":chart-p99", h.p99, fmtMs(v.p99), {color: "#c77d0a"}),
    chart("retries/s", router + ":chart-retries", h.retries,
      h.retries.length ? fmtRate(h.retries[h.retries.length - 1] || 0) : "—", {color: "#8a4fd8"}),
  );
  section.append(charts);

  const cols = el("div", "columns");
  const left = el("div", "panel");
  left.append(el("h3", null, "failures by cause"), causesTable(router, v.causes, deltas));
  const servicesBox = el("div", "panel");
  servicesBox.append(el("h3", null, "services"));
  const svcTable = el("table", "services");
  const sh = el("tr");
  for (const x of ["service", "requests", "success", "p99"]) sh.append(el("th", null, x));
  svcTable.append(sh);
  for (const s of sc.service) {
    const pre = "rt/" + router + "/service/" + s;
    const req = num(m, pre + "/requests");
    const ok = num(m, pre + "/success");
    const name = s === "unbound" ? "(unbound names)" : "/" + s;
    const row = el("tr");
    const c0 = el("td", "mono");
    c0.append(valueEl(router + ":service:" + name, name));
    const c1 = el("td", "num");
    c1.append(valueEl(router + ":service-requests:" + name, fmtInt(req)));
    row.append(c0, c1, el("td", "num" + (req && ok / req < 0.99 ? " bad" : ""), fmtPct(req ? ok / req : null)),
      el("td", "num", fmtMs(m[pre + "/request_latency_ms.p99"])));
    svcTable.append(row);
  }
  servicesBox.append(sc.service.length ? svcTable : el("p", "muted", "no requests yet"));
  cols.append(left, servicesBox);
  section.append(cols);

  const clients = el("div", "cards");
  for (const id of sc.client) clients.append(clientCard(m, prevM, dt, router, id));
  if (sc.client.length) {
    section.append(el("h3", null, "clients"), clients);
  }
  return section;
}

function renderProcess(now) {
  const p = state.process;
  if (!p) return;
  const set = (k, text) => {
    const e = document.querySelector('[data-k="process:' + k + '"]');
    if (e) e.textContent = text;
  };
  set("uptime", fmtAge(p.uptime_s));
  set("rss", fmtBytes(p.rss_bytes));
  const prev = state.prevProcess;
  if (prev && now - prev.t > 0) {
    const pct = 100 * (p.cpu_seconds - prev.p.cpu_seconds) / ((now - prev.t) / 1000);
    set("cpu", Math.max(0, pct).toFixed(1) + "% (" + p.cpu_seconds.toFixed(1) + " s)");
  } else {
    set("cpu", p.cpu_seconds.toFixed(1) + " s");
  }
  const fds = document.querySelector('[data-k="process:fds"]');
  if (fds) {
    fds.textContent = p.open_fds + " / " + p.fd_limit;
    fds.classList.toggle("bad", p.fd_limit > 0 && p.open_fds / p.fd_limit >= 0.8);
  }
  set("pid", String(p.pid));
  set("python", p.python);
}

async function getJSON(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

// A document the page can do without (admin.security may turn it off): null when it cannot be read.
function optionalJSON(path) {
  return getJSON(path).catch(() => null);
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const now = performance.now();
    const slow = state.polls % 2 === 0;
    const [m, cs, proc] = await Promise.all([
      getJSON("/admin/metrics.json"),
      slow ? optionalJSON("/client_state.json") : Promise.resolve(null),
      slow ? optionalJSON("/admin/process.json") : Promise.resolve(null),
    ]);
    if (cs) state.clientState = cs;
    if (proc) {
      if (state.process) state.prevProcess = {t: state.processAt, p: state.process};
      state.process = proc;
      state.processAt = now;
      renderProcess(now);
    }
    const prev = state.prev;
    const dt = prev ? (now - prev.t) / 1000 : 0;
    const sc = scopes(m);
    const main = document.getElementById("routers");
    const sections = Object.keys(sc).sort().map(r => routerSection(m, prev ? prev.m : null, dt, r, sc[r]));
    if (sections.length === 0) sections.push(el("p", "muted", "No requests routed yet."));
    main.replaceChildren(...sections);
    state.prev = {t: now, m: m};
    state.polls += 1;
    document.body.dataset.polls = String(state.polls);
    status.textContent = "live · updated " + new Date().toLocaleTimeString();
    status.className = "status ok";
  } catch (err) {
    status.textContent = "admin server unreachable: " + err.message;
    status.className = "status bad";
  }
  setTimeout(poll, POLL_MS);
}

poll();
