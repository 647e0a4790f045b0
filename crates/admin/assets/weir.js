// The weir status page: reads the JSON API, follows /api/v1/events, and
// sends an operator's changes with the token typed into the page. Plain
// browser JavaScript, no build step; every value from weir is written as
// text (never as HTML), since backend names and probe reasons come from
// outside.
"use strict";

const API = "/api/v1";
// A full refresh this often, besides the one each event triggers.
const REFRESH_MS = 5000;
// A read not answered by then is given up, so that the next refresh runs
// (a browser holds at most six connections to one host: with that many
// tabs following events, a read would otherwise wait for good).
const FETCH_MS = 8000;
// How long a refused event stream waits before it is asked for again (weir
// says Retry-After: 5; the page asks a little sooner, it is one request).
const FOLLOW_AGAIN_MS = 3000;
const EVENTS_SHOWN = 50;

const state = {
  listenerTotals: new Map(), // name -> [connections_total, at]
  refreshTimer: null,
  busy: false,
  source: null, // the EventSource, while the tab is shown
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

function duration(ms) {
  const s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function micros(us) {
  return us >= 1000 ? (us / 1000).toFixed(1) + " ms" : us + " µs";
}

// Non-zero counters of a map, as "reason n, reason n".
function nonZero(map) {
  const parts = Object.entries(map || {}).filter(([, n]) => n > 0);
  return parts.length ? parts.map(([k, n]) => `${k} ${n}`).join(", ") : "-";
}

async function getJSON(path) {
  const r = await fetch(API + path, { cache: "no-store", signal: AbortSignal.timeout(FETCH_MS) });
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error((body && body.error && body.error.message) || r.statusText);
  return body;
}

function message(text, ok) {
  const m = $("message");
  m.textContent = text;
  m.className = ok ? "ok" : "error";
}

// ---- rendering ----

function renderSummary(s) {
  const dl = $("summary");
  dl.replaceChildren();
  const items = [
    ["version", s.version],
    ["up", duration(s.uptime_ms)],
    ["config", "generation " + s.config_generation],
    ["last reload", s.last_reload ? (s.last_reload.ok ? "ok " : "FAILED ") + ago(s.last_reload.at_ms) : "none"],
    ["connections", `${s.active_connections} open, ${s.connections_total} total`],
    ["ready", s.ready ? "yes" : "no (shutting down)"],
  ];
  for (const [k, v] of items) dl.append(el("dt", {}, k), el("dd", { "data-field": k.replace(" ", "_") }, v));
}

function renderAlerts(pools) {
  const box = $("alerts");
  box.replaceChildren();
  for (const p of pools) {
    if (p.serving === 0) {
      box.append(el("p", { class: "alert", "data-pool": p.name },
        `Pool ${p.name} has no serving backend (${nonZero(p.backends_by_state)}): its connections are refused.`));
    }
  }
}

function renderListeners(listeners, now) {
  const body = $("listeners").tBodies[0];
  body.replaceChildren();
  for (const l of listeners) {
    const prev = state.listenerTotals.get(l.name);
    let rate = "-";
    if (prev && now > prev[1]) rate = ((l.connections_total - prev[0]) * 1000 / (now - prev[1])).toFixed(1);
    state.listenerTotals.set(l.name, [l.connections_total, now]);
    body.append(el("tr", { "data-listener": l.name },
      el("td", {}, l.name), el("td", {}, l.bind.join(" ")), el("td", {}, l.protocol),
      el("td", {}, l.active_connections),
      el("td", {}, l.max_connections + (l.max_connections !== l.configured_max_connections ? " (set at runtime)" : "")),
      el("td", { class: "rate" }, rate), el("td", {}, l.connections_total),
      el("td", { class: "rejected" }, nonZero(l.rejected)),
      el("td", {}, nonZero(l.firewall_blocked))));
  }
}

function renderRoutes(routes) {
  const body = $("routes").tBodies[0];
  body.replaceChildren();
  for (const r of routes) {
    const match = [];
    if (r.match_source.length) match.push("source " + r.match_source.join(" "));
    if (r.match_sni.length) match.push("sni " + r.match_sni.join(" "));
    if (r.match_alpn.length) match.push("alpn " + r.match_alpn.join(" "));
    body.append(el("tr", {},
      el("td", {}, r.listener), el("td", {}, r.name), el("td", {}, r.mode),
      el("td", {}, match.join("; ") || "everything"), el("td", {}, r.pools.join(" ")),
      el("td", {}, r.connections_total)));
  }
}

const BACKEND_COLUMNS = ["Backend", "Health", "Admin", "Weight", "Last probe", "Connections", "Last transitions", "Actions"];

function poolSection(p) {
  let s = document.querySelector(`section.pool[data-pool="${CSS.escape(p.name)}"]`);
  if (s) return s;
  const head = el("tr", {}, ...BACKEND_COLUMNS.map((c) => el("th", {}, c)));
  s = el("section", { class: "pool", "data-pool": p.name },
    el("h3", {}, el("span", { class: "name" }, p.name), " ", el("span", { class: "badge pool-state" })),
    el("p", { class: "pool-info" }),
    el("div", { class: "scroll" }, el("table", { class: "backends" }, el("thead", {}, head), el("tbody"))));
  $("pools").append(s);
  return s;
}

function actionButton(pool, backend, action, label) {
  const b = el("button", { type: "button", "data-action": action }, label);
  b.addEventListener("click", () => act(pool, backend, action));
  return b;
}

function backendRow(tbody, pool, b) {
  let row = tbody.querySelector(`tr[data-backend="${CSS.escape(b.name)}"]`);
  if (row) return row;
  const weight = el("input", { type: "number", min: "0", max: "1000", class: "weight-input", placeholder: "weight" });
  weight.setAttribute("aria-label", `weight of ${b.name}`);
  const setWeight = el("button", { type: "button", "data-action": "weight" }, "Set");
  setWeight.addEventListener("click", () => act(pool, b.name, "weight", weight.value));
  // data-label names each cell where a phone shows rows as cards.
  const cell = (cls, label, ...children) => el("td", { class: cls, "data-label": label }, ...children);
  row = el("tr", { "data-backend": b.name, "data-pool": pool },
    cell("name", "Backend", el("strong", {}, b.name), el("div", { class: "sub where" })),
    cell("health", "Health"), cell("admin", "Admin"),
    cell("weight", "Weight"), cell("probe", "Last probe"),
    cell("conns", "Connections"), cell("transitions", "Last transitions"),
    cell("actions", "Actions",
      actionButton(pool, b.name, "drain", "Drain"), actionButton(pool, b.name, "enable", "Enable"),
      actionButton(pool, b.name, "disable", "Disable"), el("span", { class: "weight-set" }, weight, setWeight)));
  tbody.append(row);
  return row;
}

function setCell(row, cls, text, tone) {
  const c = row.querySelector("td." + cls);
  if (c.textContent !== String(text)) c.textContent = text;
  if (tone !== undefined) c.dataset.tone = tone;
}

function renderPools(pools, backends) {
  const seen = new Set();
  for (const p of pools) {
    seen.add(p.name);
    const s = poolSection(p);
    const badge = s.querySelector(".pool-state");
    if (p.serving === 0) {
      badge.textContent = "NO SERVING BACKEND";
      badge.dataset.tone = "bad";
    } else {
      badge.textContent = `serving ${p.serving}/${p.backends}`;
      badge.dataset.tone = p.serving < p.backends ? "warn" : "good";
    }
    const tier = p.active_tier === undefined || p.active_tier === null ? "none" : p.active_tier;
    const last = p.last_tier_change ? ` · tier changed ${ago(p.last_tier_change.at_ms)}: ${p.last_tier_change.cause}` : "";
    s.querySelector(".pool-info").textContent = `${p.balance} · health check ${p.health_check} · active tier ${tier}${last}`;
    const tbody = s.querySelector("tbody");
    const mine = backends.filter((b) => b.pool === p.name);
    const names = new Set(mine.map((b) => b.name));
    for (const row of [...tbody.rows]) if (!names.has(row.dataset.backend)) row.remove();
    for (const b of mine) {
      const row = backendRow(tbody, p.name, b);
      row.dataset.state = b.state;
      const where = row.querySelector(".where");
      const from = b.origin && b.origin !== "config" ? ` · ${b.origin}` : "";
      const w0 = `${b.address} · tier ${b.tier}${from}`;
      if (where.textContent !== w0) where.textContent = w0;
      setCell(row, "health", b.health + (b.serving ? "" : b.health === "up" ? " (not serving)" : ""),
        b.health === "up" ? "good" : b.health === "down" ? "bad" : "warn");
      setCell(row, "admin", b.admin, b.admin === "enabled" ? "good" : "warn");
      const set = b.weight_override !== null ? b.weight_override : b.weight;
      let w = String(b.effective_weight);
      if (b.weight_override !== null) w += ` (set at runtime; configured ${b.weight})`;
      else if (b.effective_weight !== set) w += ` of ${set}`;
      setCell(row, "weight", w);
      const pr = b.last_probe;
      const checks = `checks: ${b.checks_passed} ok, ${b.checks_failed} failed`;
      setCell(row, "probe", pr ? `${pr.ok ? "ok" : "failed"}: ${pr.reason}\n${micros(pr.duration_us)} · ${ago(pr.at_ms)}\n${checks}` : "none yet",
        pr ? (pr.ok ? "good" : "bad") : "warn");
      // l7 routes count requests where L4 routes count connections.
      const conns = [`${b.active_connections} connections open, ${b.connections_total} total`];
      if (b.active_requests > 0 || b.responses_total > 0) {
        conns.push(`${b.active_requests} requests in flight, ${b.responses_total} responses`);
      }
      if (b.connection_limit > 0) {
        const queued = b.queue_depth > 0 ? `, ${b.queue_depth} queued for it` : "";
        conns.push(`${b.active_connections + b.active_requests} of ${b.connection_limit} in use${queued}`);
      }
      conns.push(`${bytes(b.sent_bytes)} in, ${bytes(b.received_bytes)} out`);
      setCell(row, "conns", conns.join("\n"));
      const t = b.last_transitions.slice(-3).reverse()
        .map((x) => `${ago(x.at_ms)}: ${x.from || "-"} → ${x.to || "-"} (${x.cause})`).join("\n");
      setCell(row, "transitions", t || "-");
    }
  }
  for (const s of [...document.querySelectorAll("section.pool")]) if (!seen.has(s.dataset.pool)) s.remove();
}

async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [status, listeners, routes, pools, backends] = await Promise.all([
      getJSON("/status"), getJSON("/listeners"), getJSON("/routes"), getJSON("/pools"), getJSON("/backends"),
    ]);
    const now = Date.now();
    renderSummary(status);
    renderAlerts(pools.pools);
    renderPools(pools.pools, backends.backends);
    renderListeners(listeners.listeners, now);
    renderRoutes(routes.routes);
    $("updated").textContent = new Date(now).toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("updated").textContent = "failed: " + e.message;
  } finally {
    state.busy = false;
  }
}

// Soon, once: a burst of events gives one refresh.
function refreshSoon() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; refresh(); }, 150);
}

// ---- changes ----

async function act(pool, backend, action, value) {
  const headers = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  let body = "";
  if (action === "weight") {
    if (value === "") {
      body = JSON.stringify({ weight: null });
    } else {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 0) { message("The weight must be a whole number (empty: back to the configured weight).", false); return; }
      body = JSON.stringify({ weight: n });
    }
  }
  const path = `/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend)}/${action}`;
  try {
    const r = await fetch(API + path, { method: "POST", headers, body, cache: "no-store" });
    const answer = await r.json().catch(() => null);
    if (r.ok) {
      message(`${pool}/${backend}: ${action === "weight" ? "weight set" : action} done (now ${answer.state}, weight ${answer.effective_weight}).`, true);
    } else {
      const why = (answer && answer.error && answer.error.message) || r.statusText;
      message(`${pool}/${backend}: ${action} refused (${r.status}): ${why}`, false);
    }
  } catch (e) {
    message(`${pool}/${backend}: ${action} failed: ${e.message}`, false);
  }
  refresh();
}

// ---- live events ----

function describe(kind, e) {
  const k = e.kind[kind];
  switch (kind) {
    case "backend": {
      const t = k.transition;
      return `${k.pool}/${k.backend}: ${t.kind} ${t.from || "-"} → ${t.to || "-"} (${t.cause})`;
    }
    case "tier":
      return `${k.pool}: active tier ${k.from ?? "none"} → ${k.to ?? "none"} (${k.cause})`;
    case "reload":
      return k.ok ? `reload: generation ${k.generation}` : `reload failed: ${k.error}`;
    case "firewall":
      return `firewall: ${k.change} ${k.rule ? k.rule.action + " " + k.rule.network : ""}`;
    default:
      return kind;
  }
}

function follow() {
  const live = $("live");
  const source = new EventSource(API + "/events");
  state.source = source;
  source.onopen = () => { live.textContent = "live"; live.className = "badge good"; refreshSoon(); };
  source.onerror = () => {
    live.textContent = "reconnecting"; live.className = "badge warn";
    // An answer that is no stream (503 while weir starts, or with too many
    // streams open) closes an EventSource for good: follow again later.
    if (source.readyState === EventSource.CLOSED && state.source === source) {
      state.source = null;
      setTimeout(() => { if (!document.hidden && !state.source) follow(); }, FOLLOW_AGAIN_MS);
    }
  };
  for (const kind of ["backend", "tier", "reload", "firewall"]) {
    source.addEventListener(kind, (msg) => {
      let e;
      try { e = JSON.parse(msg.data); } catch { return; }
      const list = $("events");
      list.prepend(el("li", { "data-kind": kind },
        el("time", {}, new Date(e.at_ms).toLocaleTimeString()), " ", describe(kind, e)));
      while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
      refreshSoon();
    });
  }
}

// A hidden tab lets go of its event stream (and stops refreshing), so that
// tabs left open in the background do not hold the browser's connections to
// weir; shown again, it follows and refreshes at once.
function visibility() {
  if (document.hidden) {
    if (state.source) { state.source.close(); state.source = null; }
    $("live").textContent = "paused";
    $("live").className = "badge warn";
  } else if (!state.source) {
    follow();
    refresh();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("auth").addEventListener("submit", (e) => e.preventDefault());
  refresh();
  follow();
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  document.addEventListener("visibilitychange", visibility);
});
