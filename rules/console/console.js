// The duty console: open alert episodes from the duty book's API (rules/duty_service.py),
// grouped by district and domain, with their escalation timers and the officers' actions.
"use strict";

const COLOURS = { critical: "#c62828", warning: "#f9a825", info: "#1e88e5" };
const state = { episodes: [], offset: 0, selected: null, map: null, markers: null };

function officer() {
  return document.getElementById("officer").value.trim();
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function serverNow() {
  return Date.now() + state.offset;
}

function duration(ms) {
  if (ms <= 0) return "now";
  const s = Math.round(ms / 1000);
  const m = Math.floor(s / 60);
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m}:${String(s % 60).padStart(2, "0")}`;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

async function act(episode, action, body) {
  const who = officer();
  if (!who) {
    setStatus("enter your name first");
    document.getElementById("officer").focus();
    return;
  }
  const resp = await fetch(`/api/episodes/${encodeURIComponent(episode.id)}/${action}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ who, ...body }),
  });
  const answer = await resp.json();
  setStatus(resp.ok ? `${action}: ${episode.rule} at ${episode.device || episode.district}` : answer.reason);
  await refresh();
  if (state.selected === episode.id) await showDetail(episode.id);
}

function button(td, label, onClick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", (event) => { event.stopPropagation(); onClick(); });
  td.appendChild(b);
}

function render() {
  const tbody = document.querySelector("#episodes tbody");
  tbody.replaceChildren();
  document.getElementById("empty").hidden = state.episodes.length > 0;
  const sorted = [...state.episodes].sort((a, b) =>
    a.district.localeCompare(b.district) || a.domain.localeCompare(b.domain) || a.opened_at - b.opened_at);
  let group = "";
  for (const ep of sorted) {
    if (`${ep.district}/${ep.domain}` !== group) {
      group = `${ep.district}/${ep.domain}`;
      const head = document.createElement("tr");
      head.className = "group";
      const td = cell(head, `${ep.district} · ${ep.domain}`);
      td.colSpan = 11;
      tbody.appendChild(head);
    }
    const row = document.createElement("tr");
    row.className = ep.severity + (state.selected === ep.id ? " selected" : "");
    row.dataset.id = ep.id;
    cell(row, ep.severity);
    cell(row, ep.district);
    cell(row, ep.domain);
    cell(row, ep.rule);
    cell(row, ep.device || "");
    cell(row, ep.alert_state === "resolved" ? `${ep.state} (alert cleared)` : ep.state).className = "state";
    cell(row, ep.owner || "").className = "owner";
    cell(row, ep.level_name).className = "level";
    cell(row, ep.next_escalation ? duration(ep.next_escalation - serverNow()) : "").className = "timer";
    cell(row, ep.crosses_at ? duration(ep.crosses_at - serverNow()) : "").className = "eta";
    const actions = cell(row, "");
    actions.className = "actions";
    if (ep.state === "new") button(actions, "Acknowledge", () => act(ep, "acknowledge", {}));
    button(actions, "Assign", () => {
      const to = window.prompt(`Assign ${ep.rule} to`);
      if (to) act(ep, "assign", { to });
    });
    button(actions, "Resolve", () => {
      const note = window.prompt("What was found and done?");
      if (note) act(ep, "resolve", { note });
    });
    row.addEventListener("click", () => showDetail(ep.id));
    tbody.appendChild(row);
  }
  drawMap();
}

function drawMap() {
  if (!window.L) return;
  if (!state.map) {
    state.map = L.map("map", { attributionControl: false }).setView([31.23, 121.47], 11);
    state.markers = L.layerGroup().addTo(state.map);
  }
  state.markers.clearLayers();
  const points = [];
  for (const ep of state.episodes) {
    if (ep.lat == null || ep.lon == null) continue;
    points.push([ep.lat, ep.lon]);
    L.circleMarker([ep.lat, ep.lon], { radius: 8, color: COLOURS[ep.severity] || "#555", fillOpacity: 0.8 })
      .bindTooltip(`${ep.device}: ${ep.rule}`).on("click", () => showDetail(ep.id)).addTo(state.markers);
  }
  if (points.length) state.map.fitBounds(points, { maxZoom: 15, padding: [20, 20] });
}

async function showDetail(id) {
  state.selected = id;
  const resp = await fetch(`/api/episodes/${encodeURIComponent(id)}`);
  if (!resp.ok) return;
  const ep = await resp.json();
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-title").textContent = `${ep.rule} · ${ep.device || ep.district}`;
  document.getElementById("detail-message").textContent = ep.message;
  const link = document.getElementById("detail-dashboard");
  link.hidden = !ep.dashboard;
  if (ep.dashboard) link.href = ep.dashboard;
  const list = document.getElementById("detail-history");
  list.replaceChildren();
  for (const h of ep.history) {
    const li = document.createElement("li");
    li.textContent = `${new Date(h.t).toLocaleString()} ${h.who}: ${h.action}${h.detail ? " — " + h.detail : ""}`;
    list.appendChild(li);
  }
  for (const row of document.querySelectorAll("#episodes tbody tr")) {
    row.classList.toggle("selected", row.dataset.id === id);
  }
}

async function refresh() {
  try {
    const resp = await fetch("/api/episodes");
    const data = await resp.json();
    state.offset = data.now - Date.now();
    state.episodes = data.episodes;
    render();
    setStatus(`${state.episodes.length} open · updated ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    setStatus(`the duty book does not answer (${err.message}); retrying`);
  }
}

function tick() {
  for (const row of document.querySelectorAll("#episodes tbody tr[data-id]")) {
    const ep = state.episodes.find((e) => e.id === row.dataset.id);
    if (!ep) continue;
    if (ep.next_escalation) row.querySelector(".timer").textContent = duration(ep.next_escalation - serverNow());
    if (ep.crosses_at) row.querySelector(".eta").textContent = duration(ep.crosses_at - serverNow());
  }
}

async function whoAmI() {
  // Signed in (the duty book lists its officers): act in that name only; else the typed one.
  const field = document.getElementById("officer");
  try {
    const me = await (await fetch("/api/me")).json();
    if (me.sign_in && me.who) {
      field.value = me.who;
      field.readOnly = true;
      field.title = "signed in";
      return;
    }
  } catch (err) {
    setStatus(`the duty book does not answer (${err.message})`);
  }
  field.value = localStorage.getItem("urbansense.officer") || "";
  field.addEventListener("change", () => localStorage.setItem("urbansense.officer", officer()));
}

whoAmI();
refresh();
setInterval(refresh, 2000);
setInterval(tick, 1000);
