// iotdefender console: charts (uPlot), live violation events (Server-Sent Events), evidence, backtests.
// Plain browser JavaScript, no build step.
"use strict";

const RANGES = { "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "14d": 1209600 };
const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
const timeScale = () => parseFloat(document.body.dataset.timeScale || "1");
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const countOf = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;  // "1 alarm", "2 alarms"
const utc = (epoch) => (epoch == null ? "-" : new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19));
function metricValue(v) {
  if (!v || typeof v !== "object") return v == null ? "-" : String(v);
  for (const k of ["count", "number"]) if (v[k] != null) return String(v[k]);
  for (const k of ["ports", "cidrs", "numbers", "strings"]) if (v[k] != null) return v[k].join(" ") || "(empty)";
  return JSON.stringify(v);
}
const jsonOf = (id) => { const el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; };
const width = (el) => Math.max(320, el.clientWidth || 800);
// Charts in UTC, like every time the console prints; y axes wide enough for byte counts.
const utcDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");
// Time axes with a 24-hour clock and ISO dates, as every time the console prints (uPlot's default
// is the 12-hour US form). Rows: smallest tick step (s), its format, the formats when the year,
// month, day, hour, minute or second rolls over, and 1 = append the rollover to the format.
const TIME_TICKS = [
  [3600 * 24 * 365, "{YYYY}", null, null, null, null, null, null, 1],
  [3600 * 24 * 28, "{YYYY}-{MM}", null, null, null, null, null, null, 1],
  [3600 * 24, "{MM}-{DD}", "\n{YYYY}", null, null, null, null, null, 1],
  [3600, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [60, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  [1, "{HH}:{mm}:{ss}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
];
// Counts (devices, events, ports) get whole-number ticks only.
const WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12];
const axesFor = (whole, time = true) => [time ? { values: TIME_TICKS } : {}, whole ? { size: 80, incrs: WHOLE } : { size: 80 }];
const wholeNumbers = (columns) => columns.every((col) => col.every((v) => v == null || Number.isInteger(v)));
// The x series of a time chart: labelled UTC, with the time in the console's format.
const TIME_SERIES = { label: "UTC", value: (u, v) => utc(v) };
// uPlot's legend reads "--" until the cursor is over the chart: show the latest values instead.
const showLatest = (u) => { if (u.legend.idx == null && u.data[0].length) u.setLegend({ idx: u.data[0].length - 1 }); };
const LATEST_IN_LEGEND = { ready: [showLatest], setLegend: [showLatest] };

// A behavior's threshold as a dashed line, its alarm periods as red bands, an ML behavior's learned
// normal band (at its confidence level) as a green area: why a device alarmed.
function marksOptions(marks) {
  const thresholds = (marks && marks.thresholds) || [];
  const alarms = (marks && marks.alarms) || [];
  const bands = (marks && marks.bands) || [];
  const away = (marks && marks.away) || [];
  const draw = (u) => {
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    ctx.save();
    ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
    ctx.fillStyle = "rgba(100, 116, 139, 0.16)";  // away: the device was disconnected for the whole window
    for (const a of away) {
      const x0 = Math.max(left, u.valToPos(a.start, "x", true));
      const x1 = Math.min(left + width, u.valToPos(a.end, "x", true));
      if (x1 > x0) ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
    }
    ctx.fillStyle = "rgba(22, 163, 74, 0.14)";
    for (const b of bands) {
      const pts = b.points;
      if (pts.length < 2) continue;
      const x = (t) => u.valToPos(t, "x", true), y = (v) => u.valToPos(v, "y", true);
      ctx.beginPath();
      ctx.moveTo(x(pts[0][0]), y(pts[0][2]));
      for (let i = 1; i < pts.length; i++) ctx.lineTo(x(pts[i][0]), y(pts[i][2]));  // the upper edge, then back along the lower
      for (let i = pts.length - 1; i >= 0; i--) ctx.lineTo(x(pts[i][0]), y(pts[i][1]));
      ctx.closePath(); ctx.fill();
    }
    ctx.fillStyle = "rgba(220, 38, 38, 0.13)";
    for (const a of alarms) {
      const x0 = Math.max(left, u.valToPos(a.start, "x", true));
      const x1 = Math.min(left + width, u.valToPos(a.end, "x", true));
      if (x1 > x0) ctx.fillRect(x0, top, Math.max(x1 - x0, 2), height);
    }
    ctx.strokeStyle = "#dc2626"; ctx.fillStyle = "#991b1b"; ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
    for (const t of thresholds) {
      const y = u.valToPos(t.value, "y", true);
      if (y < top || y > top + height) continue;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + width, y); ctx.stroke();
      ctx.textAlign = "right";
      ctx.fillText(`${t.label}: ${t.value}`, left + width - 4, y - 4);
    }
    ctx.restore();
  };
  // The y axis always reaches the thresholds, so a line far above the data is still drawn.
  const values = thresholds.map((t) => t.value);
  const range = (u, min, max) => {
    const lo = Math.min(min ?? 0, ...values), hi = Math.max(max ?? 1, ...values);
    const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.1 || 1;
    return [lo - pad, hi + pad];
  };
  return { draw, range, count: { thresholds: thresholds.length, alarms: alarms.length, bands: bands.length, away: away.length } };
}

// The histogram's x axis is the metric's value: a threshold is a vertical line, and the axis reaches it.
function valueRange(histogram, thresholds) {
  return (u, min, max) => {
    const last = histogram.length ? histogram[histogram.length - 1].to : max;
    const lo = Math.min(min, ...thresholds.map((t) => t.value)), hi = Math.max(last, ...thresholds.map((t) => t.value));
    const pad = (hi - lo) * 0.04 || 1;
    return [lo - pad, hi + pad];
  };
}

function drawVerticalThresholds(u, thresholds) {
  const { ctx } = u;
  const { top, height } = u.bbox;
  ctx.save();
  ctx.strokeStyle = "#dc2626"; ctx.fillStyle = "#991b1b"; ctx.lineWidth = 1.5 * devicePixelRatio;
  ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
  ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
  for (const t of thresholds) {
    const x = u.valToPos(t.value, "x", true);
    ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
    ctx.fillText(`${t.label}: ${t.value}`, x + 4, top + 12 * devicePixelRatio);
  }
  ctx.restore();
}

function describeMarks(el, marks) {
  if (!marks || (!(marks.thresholds || []).length && !(marks.alarms || []).length && !(marks.bands || []).length)) return;
  const note = document.createElement("p"); note.className = "chart-marks hint";
  const parts = (marks.thresholds || []).map((t) => `threshold ${esc(t.label)}: ${esc(t.value)}`).concat(
    (marks.bands || []).map((b) => `<span class="ml-band">learned normal</span> ${esc(b.label)} at ${esc(b.level)} confidence (green): model version ${esc(b.version)}, trained ${utc(b.trainedAt)} UTC, drawn ${b.until == null ? "from then on" : `until ${utc(b.until)} UTC, when the next version replaced it`}`),
    (marks.alarms || []).map((a) => `<span class="state-alarm">in alarm</span> ${esc(a.label)} ${utc(a.start)} – ${utc(a.end)} UTC (${esc(durationText(a.end - a.start))})`),
    (marks.away || []).length ? [`<span class="away">away</span> (grey): ${marks.away.length} period${marks.away.length > 1 ? "s" : ""} the device was disconnected for whole windows, ${esc(durationText(marks.away.reduce((s, a) => s + a.end - a.start, 0)))} in all; their 0s are judged by rules, neither learned nor judged by ML Detect`] : []);
  note.innerHTML = parts.join(" · ");
  el.after(note);
}

function durationText(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

// Open violations' durations keep counting on an open page: each cell holds its age when it was
// drawn (data-age, from the server's clock, so a skewed browser clock does not matter) and since
// when (data-from, performance.now(); page load when absent).
function tickDurations() {
  const now = performance.now();
  document.querySelectorAll("td.duration[data-age]").forEach((td) => {
    td.textContent = durationText(Number(td.dataset.age) + (now - Number(td.dataset.from || 0)) / 1000);
  });
}
setInterval(tickDurations, 1000);

function lineChart(el, title, series, marks, span) {
  // series: {label: [[t, v], ...]} -> one aligned uPlot data set
  const labels = Object.keys(series);
  if (!labels.length || !window.uPlot) return;
  const m = marksOptions(marks);
  el.dataset.thresholds = m.count.thresholds; el.dataset.alarmPeriods = m.count.alarms; el.dataset.bands = m.count.bands;
  el.dataset.awayPeriods = m.count.away;
  describeMarks(el, marks);
  const times = [...new Set(labels.flatMap((l) => series[l].map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(times.map((t, i) => [t, i]));
  const data = [times, ...labels.map((l) => { const col = new Array(times.length).fill(null); series[l].forEach(([t, v]) => { col[index.get(t)] = v; }); return col; })];
  const colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4d7c0f", "#be185d", "#475569", "#a16207"];
  el.chart = new uPlot({ title, width: width(el), height: 220, tzDate: utcDate, axes: axesFor(wholeNumbers(data.slice(1))), hooks: { ...LATEST_IN_LEGEND, draw: [m.draw] }, scales: { x: span ? { time: true, range: () => span } : { time: true }, y: { range: m.range } }, series: [TIME_SERIES, ...labels.map((l, i) => ({ label: l, stroke: colors[i % colors.length], spanGaps: true, points: { show: times.length < 200 } }))] }, data, el);
}

function barChart(el, title, xs, columns) {
  if (!window.uPlot || !xs.length) return;
  const bars = uPlot.paths.bars({ size: [0.9, 60] });
  const colors = { "in-alarm": "#dc2626", "alarm-cleared": "#16a34a", "alarm-invalidated": "#94a3b8", devices: "#2563eb", alarms: "#dc2626" };
  el.chart = new uPlot({ title, width: width(el), height: 200, tzDate: utcDate, axes: axesFor(wholeNumbers(Object.values(columns))), hooks: LATEST_IN_LEGEND, series: [TIME_SERIES, ...Object.keys(columns).map((k) => ({ label: k, fill: colors[k] || "#2563eb", stroke: colors[k] || "#2563eb", paths: bars, points: { show: false } }))] },
    [xs, ...Object.values(columns)], el);
}

function drawPageCharts() {
  const rate = jsonOf("rate-data");
  if (rate) {
    const kinds = ["in-alarm", "alarm-cleared", "alarm-invalidated"];
    barChart(document.getElementById("rate-chart"), "events per slice", rate.map((r) => r.start), Object.fromEntries(kinds.map((k) => [k, rate.map((r) => r[k])])));
  }
  const metrics = jsonOf("metrics-data");
  if (metrics && metrics.distribution && metrics.distribution.devices) {
    const h = metrics.distribution.histogram;
    const el = document.getElementById("histogram-chart");
    const thresholds = (metrics.marks && metrics.marks.thresholds) || [];
    el.dataset.thresholds = thresholds.length;
    // Its legend names the series only: a bucket is not a moment, so there is no "latest" value to show.
    new uPlot({ title: "devices per value", width: width(el), height: 200, legend: { live: false }, scales: { x: { time: false, range: valueRange(h, thresholds) } },
      hooks: { draw: [(u) => drawVerticalThresholds(u, thresholds)] },
      series: [{ label: "value from" }, { label: "devices", fill: "#2563eb", stroke: "#2563eb", paths: uPlot.paths.bars({ size: [0.95, 80] }), points: { show: false } }],
      axes: axesFor(true, false) }, [h.map((b) => b.from), h.map((b) => b.devices)], el);
    lineChart(document.getElementById("series-chart"), "chosen devices", metrics.series, metrics.marks, metrics.span);
  }
  const thing = jsonOf("thing-series");
  if (thing) {
    const box = document.getElementById("thing-charts");
    for (const [metric, points] of Object.entries(thing.series)) {
      const el = document.createElement("div"); el.className = "chart"; el.dataset.metric = metric; box.appendChild(el);
      lineChart(el, metric, { [metric]: points }, thing.marks[metric], thing.span);
    }
  }
}

// -- live violation events ---------------------------------------------------------------------
function toast(text, kind) {
  const box = document.getElementById("toasts"); if (!box) return;
  const el = document.createElement("div"); el.className = `toast ${kind}`; el.textContent = text; box.appendChild(el);
  setTimeout(() => el.remove(), 6000);
}

function verificationCell(id) {
  const states = ["UNKNOWN", "BENIGN_POSITIVE", "FALSE_POSITIVE", "TRUE_POSITIVE"];
  const next = esc(location.pathname + location.search);
  return `<form method="post" action="/console/violations/${esc(id)}/verification" class="verify"><input type="hidden" name="csrf" value="${esc(csrf())}"><input type="hidden" name="next" value="${next}">` +
    `<select name="state" aria-label="verification state">${states.map((s) => `<option>${s}</option>`).join("")}</select> ` +
    `<input name="description" placeholder="note" size="12" maxlength="1000"> <button type="submit">Set</button></form>`;
}

function onViolation(e) {
  const ev = JSON.parse(e.data);
  const type = ev.violationEventType;
  toast(`${type}: ${ev.thingName} · ${ev.securityProfileName}/${ev.behaviorName}`, type);
  const recent = document.querySelector("#live-events tbody");
  if (recent) {
    recent.insertAdjacentHTML("afterbegin", `<tr class="fresh"><td>${utc(ev.violationEventTime)}</td><td><span class="tag ${esc(type)}">${esc(type)}</span></td><td><a href="/console/things/${encodeURIComponent(ev.thingName)}">${esc(ev.thingName)}</a></td><td>${esc(ev.securityProfileName)}</td><td>${esc(ev.behaviorName)}</td><td>${esc(ev.metricText ?? metricValue(ev.metricValue))}</td></tr>`);
  }
  const count = document.getElementById("active-count");
  if (count) {
    const active = Math.max(0, parseInt(count.textContent, 10) + (type === "in-alarm" ? 1 : -1));
    count.textContent = String(active);
    count.closest(".card").classList.toggle("in-violation", active > 0);  // red only when there are some
  }
  const table = document.getElementById("violations-table");
  if (!table) return;
  const f = table.dataset;
  if ((f.filterProfile && f.filterProfile !== ev.securityProfileName) || (f.filterThing && f.filterThing !== ev.thingName) || (f.filterBehavior && f.filterBehavior !== ev.behaviorName)) return;
  const body = table.querySelector("tbody");
  if (f.view === "active") {
    if (type === "in-alarm") {
      body.querySelector("tr.empty")?.remove();
      body.insertAdjacentHTML("afterbegin", `<tr class="fresh" data-violation="${esc(ev.violationId)}"><td>${document.getElementById("bulk-verify") ? `<input type="checkbox" name="violationId" value="${esc(ev.violationId)}" form="bulk-verify" class="pick" aria-label="select">` : ""}</td><td>${utc(ev.violationEventTime)}</td><td class="duration" data-age="0" data-from="${performance.now()}">0 s</td><td><a href="/console/things/${encodeURIComponent(ev.thingName)}">${esc(ev.thingName)}</a></td><td>${esc(ev.securityProfileName)}</td><td>${esc(ev.behaviorName)}</td><td>${esc(ev.metricText ?? metricValue(ev.metricValue))}</td><td>${verificationCell(ev.violationId)}</td><td><button type="button" class="link" data-evidence="${esc(ev.violationId)}">evidence</button></td></tr>`);
    } else {
      const row = body.querySelector(`tr[data-violation="${CSS.escape(ev.violationId)}"]`);
      if (row) { row.classList.add("ended"); row.title = `${type} at ${utc(ev.violationEventTime)}`; }
    }
  } else {
    body.querySelector("tr.empty")?.remove();
    body.insertAdjacentHTML("afterbegin", `<tr class="fresh" data-violation="${esc(ev.violationId)}"><td>${utc(ev.violationEventTime)}</td><td><span class="tag ${esc(type)}">${esc(type)}</span></td><td><a href="/console/things/${encodeURIComponent(ev.thingName)}">${esc(ev.thingName)}</a></td><td>${esc(ev.securityProfileName)}</td><td>${esc(ev.behaviorName)}</td><td>${esc(ev.metricText ?? metricValue(ev.metricValue))}</td><td>${verificationCell(ev.violationId)}</td><td><button type="button" class="link" data-evidence="${esc(ev.violationId)}">evidence</button></td></tr>`);
  }
}

function startLive() {
  const status = document.getElementById("live-status");
  if (!status || !window.EventSource) return;
  const source = new EventSource("/console/api/events");
  source.addEventListener("open", () => { status.classList.add("on"); status.classList.remove("off"); });
  source.addEventListener("error", () => { status.classList.add("off"); status.classList.remove("on"); });
  source.addEventListener("violation", onViolation);
}

// -- evidence ----------------------------------------------------------------------------------
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-evidence]");
  if (!button) return;
  const dialog = document.getElementById("evidence");
  const body = document.getElementById("evidence-body");
  // The server renders the explanation (escaped by Jinja): offending values marked, times in UTC.
  const response = await fetch(`/console/violations/${encodeURIComponent(button.dataset.evidence)}/evidence`);
  body.innerHTML = await response.text();
  if (dialog.showModal) dialog.showModal(); else dialog.setAttribute("open", "");
});

// -- backtests ---------------------------------------------------------------------------------
function parseThresholds(text) {
  const out = {};
  for (const part of (text || "").split(";")) {
    const [name, values] = part.split("=");
    if (!name || !values) continue;
    out[name.trim()] = values.split(",").map((v) => parseFloat(v)).filter((v) => !Number.isNaN(v));
  }
  return out;
}

function renderBacktest(result) {
  const box = document.getElementById("bt-results");
  box.hidden = false;
  box.innerHTML = `<h2>Result: ${result.devicesEvaluated} devices, ${utc(result.startTime)} – ${utc(result.endTime)} UTC, ${result.elapsedSeconds} s</h2>` +
    result.behaviors.map((b, i) => `<article class="bt-behavior"><h3>${esc(b.behaviorName)} <small>${esc(b.method)}</small></h3>` +
      (b.note ? `<p class="hint">${esc(b.note)}</p>` : "") +
      `<p><strong class="bt-devices">${b.devicesInAlarm}</strong> of ${b.devicesEvaluated} devices would have alarmed (${b.alarms} alarms, ${b.cleared} cleared, ${b.invalidated} invalidated, ${b.activeAtEnd} still active); ${b.firstAlarm == null ? "no alarm" : `first alarm ${utc(b.firstAlarm)} UTC`}; ${b.datapoints} datapoints.</p>` +
      `<div class="chart" id="bt-timeline-${i}"></div>` +
      (b.sweep.length ? `<table class="sweep"><thead><tr><th>Threshold</th><th>Devices in alarm</th><th>Alarms</th></tr></thead><tbody>${b.sweep.map((s) => `<tr class="${s.current ? "current" : ""}"><td>${esc(metricValue(s.threshold))}${s.current ? " (current)" : ""}</td><td>${s.devicesInAlarm}</td><td>${s.alarms}</td></tr>`).join("")}</tbody></table>` : "") +
      (b.topThings.length ? `<details><summary>Devices that would alarm</summary><table><tbody>${b.topThings.map((t) => `<tr><td><a href="/console/things/${encodeURIComponent(t.thingName)}">${esc(t.thingName)}</a></td><td>${countOf(t.alarms, "alarm")}</td><td>first ${utc(t.firstAlarm)}</td></tr>`).join("")}</tbody></table></details>` : "") +
      `</article>`).join("");
  result.behaviors.forEach((b, i) => barChart(document.getElementById(`bt-timeline-${i}`), "alarms over time", b.timeline.map((t) => t[0]), { alarms: b.timeline.map((t) => t[1]) }));
}

async function runBacktest(event) {
  event.preventDefault();
  const error = document.getElementById("bt-error");
  const progress = document.getElementById("bt-progress");
  const results = document.getElementById("bt-results");
  error.hidden = true;
  results.hidden = true;  // a new run never shows the previous one's result under its own error
  results.innerHTML = "";
  const spec = {};
  const profile = document.getElementById("bt-profile").value;
  if (profile) spec.securityProfileName = profile;
  const text = document.getElementById("bt-behaviors").value.trim();
  if (text && text !== "[]") {
    try { const doc = JSON.parse(text); spec.behaviors = Array.isArray(doc) ? doc : doc.behaviors; }
    catch (e) { error.textContent = `Behaviors are not valid JSON: ${e.message}`; error.hidden = false; return; }
  }
  const now = Date.now() / 1000;
  spec.endTime = now;
  spec.startTime = now - RANGES[document.getElementById("bt-range").value] / timeScale();
  const thresholds = parseThresholds(document.getElementById("bt-thresholds").value);
  if (Object.keys(thresholds).length) spec.thresholds = thresholds;
  const post = await fetch("/console/api/backtests", { method: "POST", headers: { "content-type": "application/json", "x-csrf-token": csrf() }, body: JSON.stringify(spec) });
  let job = await post.json();
  if (!post.ok) { error.textContent = job.message || JSON.stringify(job); error.hidden = false; return; }
  progress.hidden = false;
  while (job.status === "QUEUED" || job.status === "RUNNING") {
    progress.querySelector("progress").value = job.progress;
    progress.querySelector("span").textContent = `${(job.progress * 100).toFixed(0)}% ${job.message}`;
    await new Promise((r) => setTimeout(r, 300));
    job = await (await fetch(`/console/api/backtests/${job.backtestId}`)).json();
  }
  progress.querySelector("progress").value = 1;
  progress.querySelector("span").textContent = job.status === "SUCCEEDED" ? "done" : `${job.status}: ${job.message}`;
  if (job.status === "SUCCEEDED") renderBacktest(job.result);
  else { error.textContent = `${job.status}: ${job.message}`; error.hidden = false; }
}

function wireBacktest() {
  const form = document.getElementById("backtest-form");
  if (form) {
    form.addEventListener("submit", runBacktest);
    const pending = sessionStorage.getItem("iotdefender-backtest");
    if (pending) { document.getElementById("bt-behaviors").value = pending; sessionStorage.removeItem("iotdefender-backtest"); document.getElementById("bt-profile").value = ""; }
    document.getElementById("bt-profile").addEventListener("change", (e) => { location.search = e.target.value ? `?profile=${encodeURIComponent(e.target.value)}` : ""; });
  }
  const fromEditor = document.getElementById("backtest-these");
  if (fromEditor) fromEditor.addEventListener("click", () => {
    sessionStorage.setItem("iotdefender-backtest", document.querySelector('#profile-form textarea[name="behaviors"]').value);
    location.href = "/console/backtest";
  });
}

// Forms that destroy something ask first. A listener, not an inline onsubmit: the console's
// Content-Security-Policy allows no inline script.
function wireConfirmations() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => { if (!confirm(form.dataset.confirm)) event.preventDefault(); });
  });
}

// Bulk verification: the row checkboxes belong to the #bulk-verify form (form= attribute).
function wireBulkVerification() {
  const form = document.getElementById("bulk-verify");
  if (!form) return;
  const picks = () => [...document.querySelectorAll('input.pick[form="bulk-verify"]')];
  const update = () => {
    const chosen = picks().filter((p) => p.checked).length;
    document.getElementById("bulk-count").textContent = String(chosen);
    document.getElementById("bulk-submit").disabled = chosen === 0;
  };
  document.addEventListener("change", (event) => {
    if (event.target.id === "select-all") picks().forEach((p) => { p.checked = event.target.checked; });
    if (event.target.id === "select-all" || event.target.classList.contains("pick")) update();
  });
  update();
}

document.addEventListener("DOMContentLoaded", () => { drawPageCharts(); startLive(); wireBacktest(); wireConfirmations(); wireBulkVerification(); });
