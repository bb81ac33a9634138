// Shared by the console's pages. Whatever came from events goes into the page as text
// (textContent), never as HTML: an event named "<img src=x onerror=...>" shows as that.

/** An element with its text (as text) and class. */
export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

/** A table row of cells; a cell is text, or a node put in as it is. */
export function row(cells, className) {
  const tr = el("tr", null, className);
  for (const cell of cells) {
    const td = el("td", null, typeof cell === "number" ? "num" : undefined);
    if (cell instanceof Node) td.append(cell);
    else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.append(td);
  }
  return tr;
}

/** A link to a console page for a thread or a user of a project. */
export function pageLink(kind, id, project) {
  const a = el("a", id);
  a.href = `/console/${kind}/${encodeURIComponent(id)}?project=${encodeURIComponent(project)}`;
  return a;
}

/** "2026-06-20T12:00:00.123456Z" as "2026-06-20 12:00:00.123". */
export function shortTime(iso) {
  return iso ? iso.replace("T", " ").slice(0, 23) : "";
}

/** The JSON of a console API, or an Error saying why not. */
export async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
  if (response.status === 401) {
    location.assign("/console");
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

/** The id in this page's path after prefix, and its ?project=. */
export function pageSubject(prefix) {
  const id = decodeURIComponent(location.pathname.slice(prefix.length).replace(/\/$/, ""));
  const project = new URLSearchParams(location.search).get("project") || "";
  return { id, project };
}

/** Where a page's events were read, and how far a search of the node's store went. */
export function describeSource(found) {
  let text = `Read from ${found.source}`;
  if (found.bound) text += `, searching ${found.bound}`;
  if (found.truncated) text += "; only the newest events are shown";
  for (const note of found.notes || []) text += `; ${note}`;
  return text + ".";
}

/** A page's error, shown in place of its content. */
export function showError(container, error) {
  container.replaceChildren(el("p", String(error.message || error), "error"));
}
