// The overview: events per minute (a hand-made SVG chart), refusals, forwarding, keys.
import { el, getJSON, row, shortTime, showError } from "./console.js";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2d5be3", "#e3722d", "#1f9d55", "#b83280", "#6b46c1", "#c53030", "#2c7a7b", "#975a16"];
const WIDTH = 900, HEIGHT = 220, LEFT = 48, BOTTOM = 22, TOP = 8;

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  return node;
}

/** Minutes (as ISO texts, oldest first) ending at now's minute. */
function lastHour(now) {
  const end = Math.floor(Date.parse(now) / 60000) * 60000;
  return Array.from({ length: 60 }, (_, i) => new Date(end - (59 - i) * 60000).toISOString().slice(0, 16));
}

function drawChart(minutes, now) {
  const slots = lastHour(now);
  const series = new Map(); // "project · source" -> events per slot
  for (const { minute, project, source, events } of minutes) {
    const name = `${project} · ${source}`;
    if (!series.has(name)) series.set(name, new Array(60).fill(0));
    const slot = slots.indexOf(minute.slice(0, 16));
    if (slot >= 0) series.get(name)[slot] += events;
  }
  const peak = Math.max(1, ...[...series.values()].flat());
  const x = (i) => LEFT + (i * (WIDTH - LEFT - 8)) / 59;
  const y = (v) => TOP + (1 - v / peak) * (HEIGHT - TOP - BOTTOM);
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", class: "chart-svg" });
  chart.append(svg("line", { x1: LEFT, y1: y(0), x2: WIDTH - 8, y2: y(0), class: "axis" }));
  for (const value of [peak, Math.round(peak / 2)]) {
    chart.append(svg("line", { x1: LEFT, y1: y(value), x2: WIDTH - 8, y2: y(value), class: "grid" }));
    const label = svg("text", { x: LEFT - 6, y: y(value) + 4, class: "label", "text-anchor": "end" });
    label.textContent = String(value);
    chart.append(label);
  }
  for (const i of [0, 15, 30, 45, 59]) {
    const anchor = i === 59 ? "end" : "middle"; // the last minute's label stays inside
    const label = svg("text", { x: x(i), y: HEIGHT - 6, class: "label", "text-anchor": anchor });
    label.textContent = slots[i].slice(11);
    chart.append(label);
  }
  const legend = document.getElementById("legend");
  legend.replaceChildren();
  [...series.entries()].forEach(([name, values], index) => {
    const color = COLORS[index % COLORS.length];
    const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points, fill: "none", stroke: color, "stroke-width": 2 }));
    const item = el("span", name, "legend-item");
    item.style.setProperty("--swatch", color);
    legend.append(item);
  });
  if (series.size === 0) legend.append(el("span", "No events received in the last hour.", "muted"));
  document.getElementById("chart").replaceChildren(chart);
}

function fill(id, rows, empty, columns) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows);
  if (rows.length === 0) body.append(row([empty, ...new Array(columns - 1).fill("")], "muted"));
}

function render(data) {
  document.getElementById("now").textContent = `as of ${shortTime(data.now)} UTC`;
  document.getElementById("minutes-from").textContent = data.minutes_from;
  drawChart(data.minutes, data.now);
  fill("refusals", Object.entries(data.refusals).map(([reason, n]) => row([reason, n])), "none", 2);
  fill(
    "forwarding",
    data.forwarding.map((f) => row([f.engine, f.backlog_events, f.oldest_undelivered_age_s ?? "-"])),
    "not forwarding (no engine configured)",
    3,
  );
  document.getElementById("warnings").replaceChildren(...data.warnings.map((w) => el("li", w)));
  const keys = data.keys.map((k) =>
    row([k.id, k.project, k.hint, k.state, shortTime(k.created_at), k.last_used ? shortTime(k.last_used) : "-"]),
  );
  fill("keys", keys, data.keys_error || "no keys", 6);
}

async function refresh() {
  try {
    render(await getJSON("/console/api/overview"));
  } catch (error) {
    showError(document.querySelector("main"), error);
  }
}

refresh();
setInterval(refresh, 10000);
