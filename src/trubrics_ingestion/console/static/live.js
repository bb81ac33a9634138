// The live view: server-sent events from /console/api/live, newest first.
import { el, pageLink, row, shortTime } from "./console.js";

const MAX_ROWS = 500;
const rows = document.getElementById("rows");
const state = document.getElementById("state");
const pauseButton = document.getElementById("pause");
const form = document.getElementById("filters");
let source = null;
let paused = false;
let held = []; // messages received while paused, shown on resume (bounded like the table)
let heldSkipped = 0;

function entryRow(entry) {
  if (entry.kind === "refused") {
    const what = el("span", `refused ${entry.status} ${entry.reason}`, "refused-label");
    const detail = el("span", entry.detail ? ` ${entry.detail}` : "", "detail");
    const cell = el("span");
    cell.append(what, detail);
    return row([shortTime(entry.received_at), entry.project || "", cell, "", "", entry.path], "refused");
  }
  const user = pageLink("users", entry.user_id, entry.project);
  const thread = entry.thread_id === null ? "" : pageLink("threads", entry.thread_id, entry.project);
  const tr = row([shortTime(entry.time), entry.project, entry.event, user, thread, entry.source], "event");
  tr.title = entry.properties;
  return tr;
}

function skippedRow(count) {
  const tr = el("tr", null, "skipped");
  const td = el("td", `${count} events skipped`);
  td.colSpan = 6;
  tr.append(td);
  return tr;
}

function show(message) {
  const fresh = document.createDocumentFragment();
  for (let i = message.entries.length - 1; i >= 0; i--) fresh.append(entryRow(message.entries[i]));
  if (message.skipped > 0) fresh.append(skippedRow(message.skipped));
  rows.prepend(fresh);
  while (rows.rows.length > MAX_ROWS) rows.deleteRow(rows.rows.length - 1);
}

function receive(event) {
  const message = JSON.parse(event.data);
  if (!paused) {
    show(message);
    return;
  }
  held.push(...message.entries);
  heldSkipped += message.skipped;
  if (held.length > MAX_ROWS) {
    heldSkipped += held.length - MAX_ROWS;
    held = held.slice(held.length - MAX_ROWS);
  }
  state.textContent = `paused: ${held.length + heldSkipped} new events waiting`;
}

function connect() {
  if (source) source.close();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
  source = new EventSource(`/console/api/live?${params}`);
  source.onopen = () => { if (!paused) state.textContent = "live"; };
  source.onerror = () => { state.textContent = "reconnecting…"; };
  source.onmessage = receive;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  rows.replaceChildren();
  connect();
});

pauseButton.addEventListener("click", () => {
  paused = !paused;
  pauseButton.textContent = paused ? "Resume" : "Pause";
  if (paused) {
    state.textContent = "paused";
    return;
  }
  show({ entries: held, skipped: heldSkipped });
  held = [];
  heldSkipped = 0;
  state.textContent = "live";
});

connect();
