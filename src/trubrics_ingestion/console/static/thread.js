// A thread: its events in order, each Prompt with its Generation, model and latency.
import { describeSource, el, getJSON, pageLink, pageSubject, shortTime, showError } from "./console.js";

const { id, project } = pageSubject("/console/threads/");
document.getElementById("title").textContent = id;
document.getElementById("project").textContent = `in project ${project}`;
const conversation = document.getElementById("conversation");

function message(role, who, text, when) {
  const box = el("div", null, `message ${role}`);
  const head = el("div", null, "who");
  head.append(who, el("span", shortTime(when), "muted"));
  box.append(head, el("div", text ?? "", "text"));
  return box;
}

function turn(prompt, generation) {
  const box = el("section", null, "turn");
  if (prompt) {
    const who = el("span");
    who.append("user ", pageLink("users", prompt.user_id, project), ` · ${prompt.event}`);
    box.append(message("prompt", who, prompt.properties.$text, prompt.timestamp));
  }
  if (generation) {
    const p = generation.properties;
    const latency = typeof p["latency(s)"] === "number" ? ` · ${p["latency(s)"]} s` : "";
    const who = el("span", `assistant · ${p.$assistant_id ?? "?"}${latency} · ${generation.event}`);
    box.append(message("generation", who, p.$text, generation.timestamp));
  }
  return box;
}

function other(event) {
  const line = el("div", null, "other-event");
  line.append(
    el("span", shortTime(event.timestamp), "muted"),
    el("strong", event.event),
    el("span", "by "),
    pageLink("users", event.user_id, project),
    el("code", JSON.stringify(event.properties)),
  );
  return line;
}

function render(found) {
  document.getElementById("source").textContent = describeSource(found);
  const byId = new Map(found.events.map((event) => [event.id, event]));
  const shown = new Set();
  const parts = [];
  for (const event of found.events) {
    if (shown.has(event.id)) continue;
    const p = event.properties || {};
    if (typeof p.$generation_id === "string") {
      const generation = byId.get(p.$generation_id);
      if (generation) shown.add(generation.id);
      parts.push(turn(event, generation));
    } else if (typeof p.$prompt_id === "string") {
      parts.push(turn(byId.get(p.$prompt_id), event));
    } else {
      parts.push(other(event));
    }
  }
  if (parts.length === 0) parts.push(el("p", "No events of this thread found.", "muted"));
  conversation.replaceChildren(...parts);
}

getJSON(`/console/api/threads/${encodeURIComponent(id)}?project=${encodeURIComponent(project)}`)
  .then(render)
  .catch((error) => showError(conversation, error));
