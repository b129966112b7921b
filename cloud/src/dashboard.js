// Read-only dashboard: everything comes from the JSON API with the admin key from this tab.
"use strict";
const STORE = "lockstock_admin_key";
const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function num(v) {
  return v === null || v === undefined ? "∞" : Number(v).toLocaleString();
}

function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(ms).toLocaleString();
}

async function api(path) {
  const key = sessionStorage.getItem(STORE);
  const resp = await fetch(path, { headers: { Authorization: "Bearer " + key }, cache: "no-store" });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    throw new Error((body && body.error && body.error.message) || ("HTTP " + resp.status));
  }
  return body;
}

function renderAgents(agents) {
  const tbody = $("agents");
  tbody.replaceChildren();
  for (const a of agents) {
    const tr = document.createElement("tr");
    const id = cell(tr, "");
    const code = document.createElement("code");
    code.textContent = a.agent_id;
    id.appendChild(code);
    let state = "active", cls = "ok";
    if (!a.activated) { state = "not activated"; cls = "muted"; }
    if (a.breaker) { state = "breaker open: " + a.breaker; cls = "bad"; }
    if (a.locked) { state = "locked: " + (a.lock_reason || ""); cls = "bad"; }
    cell(tr, state, cls);
    cell(tr, num(a.budget), "num");
    cell(tr, num(a.used), "num");
    cell(tr, num(a.reserved), "num");
    cell(tr, num(a.remaining), "num");
    cell(tr, num(a.seq), "num");
    cell(tr, ago(a.last_seen_ms));
    const s = a.sentinel;
    cell(tr, s.enabled ? ("on" + (s.max_per_minute ? ", cap " + s.max_per_minute + "/min" : "")) : "off");
    tbody.appendChild(tr);
  }
  if (!agents.length) {
    const tr = document.createElement("tr");
    cell(tr, "No agents yet.", "muted").colSpan = 9;
    tbody.appendChild(tr);
  }
}

function renderAlerts(alerts) {
  const tbody = $("alerts");
  tbody.replaceChildren();
  for (const al of alerts.slice().reverse()) {
    const tr = document.createElement("tr");
    cell(tr, new Date(al.time_ms).toLocaleString());
    cell(tr, al.agent_id);
    cell(tr, al.reason);
    tbody.appendChild(tr);
  }
  if (!alerts.length) {
    const tr = document.createElement("tr");
    cell(tr, "No alerts.", "muted").colSpan = 3;
    tbody.appendChild(tr);
  }
}

async function refresh() {
  if (!sessionStorage.getItem(STORE)) return;
  try {
    const [agents, alerts] = await Promise.all([api("/v1/agents"), api("/v1/alerts")]);
    renderAgents(agents.agents);
    renderAlerts(alerts.alerts);
    $("status").textContent = "Updated " + new Date().toLocaleTimeString() + ".";
    $("status").className = "muted";
  } catch (e) {
    $("status").textContent = e.message;
    $("status").className = "bad";
  }
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("key").value.trim();
  if (key) sessionStorage.setItem(STORE, key);
  $("key").value = "";
  refresh();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(STORE);
  $("agents").replaceChildren();
  $("alerts").replaceChildren();
  $("status").textContent = "Key forgotten.";
});
refresh();
setInterval(refresh, 5000);
