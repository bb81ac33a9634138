// A user's timeline, newest first, with links to their threads.
import { describeSource, getJSON, pageLink, pageSubject, row, shortTime, showError } from "./console.js";

const { id, project } = pageSubject("/console/users/");
document.getElementById("title").textContent = id;
document.getElementById("project").textContent = `in project ${project}`;
const rows = document.getElementById("rows");

function render(found) {
  document.getElementById("source").textContent = describeSource(found);
  const lines = found.events
    .slice()
    .reverse()
    .map((event) => {
      const thread = event.thread_id === null ? "" : pageLink("threads", event.thread_id, project);
      const text = (event.properties || {}).$text ?? "";
      return row([shortTime(event.timestamp), event.event, thread, text]);
    });
  if (lines.length === 0) lines.push(row(["No events of this user found.", "", "", ""], "muted"));
  rows.replaceChildren(...lines);
}

getJSON(`/console/api/users/${encodeURIComponent(id)}?project=${encodeURIComponent(project)}`)
  .then(render)
  .catch((error) => showError(rows.closest("main"), error));
