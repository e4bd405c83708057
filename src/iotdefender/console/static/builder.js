// iotdefender console: the behavior builder, and the live backtest preview it drives.
// Plain browser JavaScript, no build step. Loaded after console.js, whose helpers it uses
// (esc, csrf, utc, RANGES, timeScale). The form's <textarea name="behaviors"> stays the one source the
// form submits; the builder writes AWS-shaped behaviors into it and reads them back from it, so the
// JSON view and the builder can never disagree. Every rule (which operators a metric takes, what a
// duration may be ...) comes from /console/api/builder/catalog and the API's own
// ValidateSecurityProfileBehaviors (/console/api/builder/validate): nothing is re-implemented here.
"use strict";

(() => {
  const STATISTICS = ["p0", "p0.1", "p0.01", "p1", "p10", "p50", "p90", "p99", "p99.9", "p99.99", "p100"];
  const DURATIONS = [300, 600, 900, 1800, 3600];
  // Criteria describe *normal* behavior: a datapoint alarms when the comparison fails.
  const ALARMS_WHEN = { "less-than": "at or above", "less-than-equals": "above", "greater-than": "at or below", "greater-than-equals": "below" };
  const OPERATOR_WORDS = {
    "less-than": "less than (normal below)", "less-than-equals": "at most (normal up to)", "greater-than": "greater than (normal above)",
    "greater-than-equals": "at least (normal from)", "in-port-set": "only these ports", "not-in-port-set": "none of these ports",
    "in-cidr-set": "only these addresses", "not-in-cidr-set": "none of these addresses", "in-set": "only these values", "not-in-set": "none of these values",
  };
  const LIST_TYPES = { ports: "22, 80, 443", cidrs: "10.0.0.0/8, 192.168.1.0/24", numbers: "1, 2.5, 10", strings: "admin, guest" };

  const debounce = (fn, ms) => { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); }; };
  const post = (url, body, signal) => fetch(url, { method: "POST", signal, headers: { "content-type": "application/json", "x-csrf-token": csrf() }, body: JSON.stringify(body) });
  const words = (name) => name.replace(/^aws:/, "").replace(/^num-/, "number of ").replace(/-/g, " ").replace(/\b(tcp|udp|ip)\b/g, (m) => m.toUpperCase());
  const listOf = (text) => String(text ?? "").split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
  const numberOr = (text) => { const n = Number(text); return text === "" || Number.isNaN(n) ? text : n; };

  function valueOf(type, text) {
    if (type === "count" || type === "number") return text === "" ? {} : { [type]: numberOr(text) };
    if (type === "strings" || type === "cidrs") return { [type]: listOf(text) };
    return { [type]: listOf(text).map(numberOr) };
  }
  function textOf(value) {
    if (!value || typeof value !== "object") return "";
    for (const k of ["count", "number"]) if (value[k] != null) return String(value[k]);
    for (const k of Object.keys(LIST_TYPES)) if (Array.isArray(value[k])) return value[k].join(", ");
    return "";
  }
  const durationWords = (s) => (s % 3600 === 0 ? `${s / 3600} hour${s > 3600 ? "s" : ""}` : `${s / 60} minutes`);

  // What a behavior means, in plain words: when it alarms and when it clears.
  function sentence(b, metric) {
    const c = b.criteria || {};
    if (!metric) return b.metric ? `Watches ${b.metric}, which is not a defined metric.` : "Choose a metric.";
    let what = metric.side === "custom" ? metric.label : words(metric.name);
    const dim = b.metricDimension;
    if (dim && dim.dimensionName) what += ` on topics ${dim.operator === "NOT_IN" ? "outside" : "matching"} dimension ${dim.dimensionName}`;
    if (c.durationSeconds && !c.mlDetectionConfig) what += ` over ${durationWords(c.durationSeconds)}`;
    // The unit's singular and plural come from the server (english.unit_words): "1 port", "3 ports".
    const unit = (v) => (metric.unitWords ? ` ${Number(v) === 1 ? metric.unitWords.one : metric.unitWords.other}` : "");
    let when;
    if (c.mlDetectionConfig) {
      const level = c.mlDetectionConfig.confidenceLevel || "HIGH";
      when = `${what} leaves the normal band its model learned for the device at that hour of the week (${level} confidence: ${ML_LEVEL_WORDS[level] || ""})`;
    } else if (c.statisticalThreshold) {
      if (!ALARMS_WHEN[c.comparisonOperator]) return "Choose a comparison.";
      when = `${what} is ${ALARMS_WHEN[c.comparisonOperator]} the ${c.statisticalThreshold.statistic || "?"} of all devices' values`;
    } else if (ALARMS_WHEN[c.comparisonOperator]) {
      const v = textOf(c.value);
      if (v === "") return "Enter a threshold.";
      when = `${what} is ${ALARMS_WHEN[c.comparisonOperator]} ${v}${unit(v)}`;
    } else {
      const items = textOf(c.value) || "(none)";
      const noun = { "in-port-set": "a port", "not-in-port-set": "a port", "in-cidr-set": "an address", "not-in-cidr-set": "an address" }[c.comparisonOperator] || "a value";
      if (!c.comparisonOperator) return "Choose a comparison.";
      when = c.comparisonOperator.startsWith("not-")
        ? `${what} include ${noun} in {${items}}`
        : `${what} include ${noun} outside {${items}}`;
    }
    const n = c.consecutiveDatapointsToAlarm || 1;
    const m = c.consecutiveDatapointsToClear || 1;
    let out = `Alarms when ${when} ${n === 1 ? "in a single datapoint" : `for ${n} consecutive datapoints`}; clears after ${m === 1 ? "one compliant datapoint" : `${m} consecutive compliant datapoints`}.`;
    if (b.suppressAlerts) out += " No alerts are sent (violations are still recorded).";
    if (b.exportMetric) out += " Its values are exported.";
    return out;
  }

  const ML_LEVEL_WORDS = { LOW: "the most alarms", MEDIUM: "fewer alarms", HIGH: "the fewest alarms" };
  const option = (value, label, selected) => `<option value="${esc(value)}"${selected ? " selected" : ""}>${esc(label)}</option>`;

  class Builder {
    constructor(root, catalog, onChange, view = "builder") {
      this.root = root;
      this.catalog = catalog;
      this.onChange = onChange || (() => {});
      this.metrics = new Map(catalog.metrics.map((m) => [m.name, m]));
      this.textarea = root.querySelector("textarea[name=behaviors]");
      this.cards = root.querySelector(".builder-cards");
      this.errors = root.querySelector(".builder-errors");
      this.behaviors = this.parse(this.textarea.value) || [];
      this.validateSoon = debounce(() => this.validate(), 300);
      root.querySelector(".add-behavior").addEventListener("click", () => this.add());
      root.querySelectorAll("[data-view]").forEach((b) => b.addEventListener("click", () => this.show(b.dataset.view)));
      this.textarea.addEventListener("input", () => this.fromJson());
      this.cards.addEventListener("input", (e) => this.fromCard(e));
      this.cards.addEventListener("change", (e) => this.fromCard(e));
      this.cards.addEventListener("click", (e) => { const r = e.target.closest("[data-remove]"); if (r) this.remove(Number(r.dataset.remove)); });
      this.render();
      this.show(view);
      if (this.behaviors.length) this.validateSoon();
    }

    parse(text) {
      try {
        const doc = JSON.parse(text.trim() || "[]");
        const list = Array.isArray(doc) ? doc : doc && doc.behaviors;
        return Array.isArray(list) ? list : null;
      } catch (e) { return null; }
    }

    show(view) {
      this.root.querySelectorAll("[data-view]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.view === view)));
      this.root.querySelector(".builder-json").hidden = view !== "json";
      this.cards.hidden = view !== "builder";
      this.root.querySelector(".add-behavior").hidden = view !== "builder";
    }

    // The textarea was edited: rebuild the cards from it (when it parses).
    // While it does not parse, no check of the behaviors before it may clear that error: one
    // scheduled or in flight from an earlier edit answered after it and hid it (seen on a slow machine).
    fromJson() {
      const parsed = this.parse(this.textarea.value);
      this.unparsed = !parsed;
      if (!parsed) {
        this.setErrors(["The JSON is not a list of behaviors (as in create-security-profile --behaviors)."]);
        this.root.dataset.valid = "false";
        return;
      }
      this.behaviors = parsed;
      this.render();
      this.changed(false);
    }

    changed(writeJson = true) {
      if (writeJson) this.textarea.value = JSON.stringify(this.behaviors, null, 2);
      this.cards.querySelectorAll(".behavior").forEach((card, i) => {
        card.querySelector(".sentence").textContent = sentence(this.behaviors[i], this.metrics.get(this.behaviors[i].metric));
      });
      this.validateSoon();
      this.onChange(this.behaviors);
    }

    add() {
      const metric = this.catalog.metrics[0];
      const names = new Set(this.behaviors.map((b) => b.name));
      let i = this.behaviors.length + 1;
      while (names.has(`behavior-${i}`)) i += 1;
      this.behaviors.push({ name: `behavior-${i}`, metric: metric.name, criteria: { comparisonOperator: metric.operators[0], value: {} } });
      this.render();
      this.changed();
      this.cards.lastElementChild.querySelector("[data-field=name]").focus();
    }

    remove(index) {
      this.behaviors.splice(index, 1);
      this.render();
      this.changed();
    }

    // One field changed: read the whole card back into its behavior; redraw the card only when its
    // shape changes (another metric or criteria kind), so typing never loses focus.
    fromCard(event) {
      const card = event.target.closest(".behavior");
      if (!card) return;
      const index = Number(card.dataset.index);
      const before = this.behaviors[index];
      const after = this.read(card, before);
      this.behaviors[index] = after;
      const field = event.target.dataset.field;
      if (event.type === "change" && (field === "metric" || field === "kind" || field === "dimension")) card.replaceWith(this.card(after, index));
      this.changed();
    }

    read(card, before) {
      const get = (f) => card.querySelector(`[data-field="${f}"]`);
      const val = (f) => (get(f) ? get(f).value : "");
      if (card.dataset.opaque) return { ...before, name: val("name") };
      const metric = this.metrics.get(val("metric"));
      const b = { name: val("name"), metric: val("metric") };
      const criteria = {};
      const kind = val("kind") || "static";
      const operators = metric ? metric.operators : [];
      const operator = operators.includes(val("operator")) ? val("operator") : operators[0];
      if (kind === "ml") criteria.mlDetectionConfig = { confidenceLevel: val("confidence") || ((before.criteria || {}).mlDetectionConfig || {}).confidenceLevel || "HIGH" };
      else {
        criteria.comparisonOperator = operator;
        if (kind === "statistical") criteria.statisticalThreshold = { statistic: val("statistic") || "p90" };
        else if (metric && get("value")) criteria.value = valueOf(metric.valueType, get("value").value.trim());
      }
      if (metric && metric.duration && val("duration") && kind !== "ml") criteria.durationSeconds = Number(val("duration"));
      for (const [f, key] of [["to-alarm", "consecutiveDatapointsToAlarm"], ["to-clear", "consecutiveDatapointsToClear"]]) {
        if (val(f) !== "") criteria[key] = numberOr(val(f));
      }
      b.criteria = criteria;
      if (metric && metric.dimension && val("dimension")) b.metricDimension = { dimensionName: val("dimension"), operator: val("dimension-operator") || "IN" };
      if (get("suppress") && get("suppress").checked) b.suppressAlerts = true;
      if (get("export") && get("export").checked) b.exportMetric = true;
      return b;
    }

    render() {
      this.cards.replaceChildren(...this.behaviors.map((b, i) => this.card(b, i)));
      if (!this.behaviors.length) this.cards.innerHTML = '<p class="hint empty-builder">No behaviors yet: add one.</p>';
    }

    card(b, index) {
      const el = document.createElement("fieldset");
      el.className = "behavior";
      el.dataset.index = String(index);
      const c = b.criteria || {};
      const metric = this.metrics.get(b.metric);
      const head = `<legend>Behavior ${index + 1}</legend><div class="row"><label>Name <input data-field="name" value="${esc(b.name)}" maxlength="128" required></label>` +
        `<button type="button" class="link remove" data-remove="${index}">remove</button></div>`;
      const tail = '<p class="sentence"></p><p class="error behavior-error" role="alert" hidden></p><p class="preview" hidden></p>';
      if (!metric || (c.mlDetectionConfig && !this.catalog.mlDetect) || !b.criteria) {
        // Nothing the form can show faithfully (an undefined metric, ML Detect): kept as it is.
        el.dataset.opaque = "1";
        el.innerHTML = `${head}<p class="hint">This behavior can only be edited in the JSON view.</p><pre>${esc(JSON.stringify(b, null, 2))}</pre>${tail}`;
        el.querySelector(".sentence").textContent = sentence(b, metric);
        return el;
      }
      const groups = [["cloud", "Cloud-side metrics"], ["device", "Device-side metrics"], ["custom", "Custom metrics"]];
      const metricSelect = `<select data-field="metric">${groups.map(([side, label]) => {
        const list = this.catalog.metrics.filter((m) => m.side === side);
        return list.length ? `<optgroup label="${label}">${list.map((m) => option(m.name, `${m.label}${m.unit ? ` (${m.unit})` : ""} · ${m.valueType}`, m.name === b.metric)).join("")}</optgroup>` : "";
      }).join("")}</select>`;
      const kind = c.mlDetectionConfig ? "ml" : c.statisticalThreshold ? "statistical" : "static";
      const kinds = [["static", "Static threshold"]];
      if (metric.statistical) kinds.push(["statistical", "Statistical (percentile of the fleet)"]);
      if (metric.ml && this.catalog.mlDetect) kinds.push(["ml", "Machine learning"]);
      let criteria = `<label>Criteria <select data-field="kind">${kinds.map(([k, l]) => option(k, l, k === kind)).join("")}</select></label>`;
      if (kind === "ml") {
        const level = (c.mlDetectionConfig || {}).confidenceLevel || "HIGH";
        criteria += `<label>Confidence <select data-field="confidence">${["LOW", "MEDIUM", "HIGH"].map((l) => option(l, `${l} (${ML_LEVEL_WORDS[l]})`, l === level)).join("")}</select></label>`;
      } else {
        criteria += `<label>Normal when the value is <select data-field="operator">${metric.operators.map((o) => option(o, OPERATOR_WORDS[o] || o, o === c.comparisonOperator)).join("")}</select></label>`;
        if (kind === "statistical") {
          criteria += `<label>Statistic <select data-field="statistic">${STATISTICS.map((s) => option(s, s, s === (c.statisticalThreshold.statistic || "p90"))).join("")}</select></label>`;
        } else if (metric.valueType === "count" || metric.valueType === "number") {
          criteria += `<label>Threshold${metric.unit ? ` (${esc(metric.unit)})` : ""} <input data-field="value" type="number" step="${metric.valueType === "count" ? 1 : "any"}" ${metric.valueType === "count" ? 'min="0"' : ""} value="${esc(textOf(c.value))}"></label>`;
        } else {
          criteria += `<label>${{ ports: "Ports", cidrs: "CIDRs", numbers: "Numbers", strings: "Strings" }[metric.valueType]} <input data-field="value" value="${esc(textOf(c.value))}" placeholder="${LIST_TYPES[metric.valueType]}" size="32"></label>`;
        }
      }
      if (metric.duration && kind !== "ml") {
        criteria += `<label>Over <select data-field="duration">${option("", "each datapoint", !c.durationSeconds)}${DURATIONS.map((d) => option(d, durationWords(d), d === c.durationSeconds)).join("")}</select></label>`;
      }
      criteria += `<label>Datapoints to alarm <input data-field="to-alarm" type="number" min="1" max="10" placeholder="1" value="${esc(c.consecutiveDatapointsToAlarm ?? "")}"></label>` +
        `<label>to clear <input data-field="to-clear" type="number" min="1" max="10" placeholder="1" value="${esc(c.consecutiveDatapointsToClear ?? "")}"></label>`;
      let dimension = "";
      if (metric.dimension && this.catalog.dimensions.length) {
        const dim = b.metricDimension || {};
        dimension = `<label>Dimension <select data-field="dimension">${option("", "none", !dim.dimensionName)}${this.catalog.dimensions.map((d) => option(d, d, d === dim.dimensionName)).join("")}</select></label>` +
          (dim.dimensionName ? `<label>Topics <select data-field="dimension-operator">${option("IN", "matching", dim.operator !== "NOT_IN")}${option("NOT_IN", "not matching", dim.operator === "NOT_IN")}</select></label>` : "");
      }
      const flags = `<label class="inline"><input type="checkbox" data-field="suppress"${b.suppressAlerts ? " checked" : ""}> Suppress alerts</label>` +
        `<label class="inline"><input type="checkbox" data-field="export"${b.exportMetric ? " checked" : ""}> Export metric</label>`;
      el.innerHTML = `${head}<div class="row"><label>Metric ${metricSelect}</label>${dimension}</div><div class="row">${criteria}</div><div class="row">${flags}</div>${tail}`;
      el.querySelector(".sentence").textContent = sentence(b, metric);
      return el;
    }

    setErrors(general, perBehavior = new Map()) {
      this.errors.hidden = !general.length;
      this.errors.innerHTML = general.map((m) => `<span>${esc(m)}</span>`).join("<br>");
      this.cards.querySelectorAll(".behavior").forEach((card, i) => {
        const mine = perBehavior.get(i) || [];
        const box = card.querySelector(".behavior-error");
        box.hidden = !mine.length;
        box.textContent = mine.join(" ");
        card.classList.toggle("invalid", mine.length > 0);
      });
    }

    // What the form itself can tell: a value that is not a number where the metric takes
    // numbers. Sent to the API, it got botocore's Python-type message ("type: <class 'str'>,
    // valid types: <class 'int'>"), which also hid any other problem of the behavior.
    localErrors() {
      const per = new Map();
      this.behaviors.forEach((b, i) => {
        const value = (b.criteria || {}).value || {};
        const wrong = [];
        if (typeof value.count === "string" || typeof value.number === "string") wrong.push(`"${value.count ?? value.number}" is not a number.`);
        const whole = (value.ports || []).filter((p) => !Number.isInteger(p));
        if (whole.length) wrong.push(`Ports are whole numbers from 0 to 65535: ${whole.map((p) => `"${p}"`).join(", ")} ${whole.length === 1 ? "is" : "are"} not.`);
        const numbers = (value.numbers || []).filter((n) => typeof n !== "number");
        if (numbers.length) wrong.push(`Numbers only: ${numbers.map((n) => `"${n}"`).join(", ")} ${numbers.length === 1 ? "is" : "are"} not.`);
        if (wrong.length) per.set(i, wrong);
      });
      return per;
    }

    // The API's verdict, each message by the behavior it names (the rest above the list).
    async validate() {
      if (this.unparsed) return;
      if (!this.behaviors.length) { this.setErrors([]); this.root.dataset.valid = "true"; return; }
      const local = this.localErrors();
      if (local.size) { this.setErrors([], local); this.root.dataset.valid = "false"; return; }
      const sent = JSON.stringify(this.behaviors);
      const response = await post("/console/api/builder/validate", { behaviors: this.behaviors });
      const verdict = await response.json();
      // After the last await: an edit during either one (the body arrives after the headers) is newer.
      if (this.unparsed || JSON.stringify(this.behaviors) !== sent) return;  // changed meanwhile: a newer check follows
      const general = [];
      const per = new Map();
      for (const { errorMessage } of verdict.validationErrors || []) {
        const index = this.behaviors.findIndex((b) => b.name && (errorMessage.includes(`Behavior ${b.name} `) || errorMessage.includes(`behaviors.${b.name}`)));
        const at = index >= 0 ? index : (errorMessage.match(/behaviors\[(\d+)\]/) || [])[1];
        if (at != null && this.behaviors[Number(at)]) per.set(Number(at), [...(per.get(Number(at)) || []), errorMessage]);
        else general.push(errorMessage);
      }
      this.setErrors(general, per);
      this.root.dataset.valid = String(Boolean(verdict.valid));
    }
  }

  // -- live backtest preview -----------------------------------------------------------------
  // The range is fixed when chosen (not "now" at each keystroke) so the server keeps the prepared
  // history between previews and a threshold change costs one pass of the alarm state machine.
  function wirePreview(builder) {
    const range = document.getElementById("bt-range");
    const status = document.getElementById("bt-preview-status");
    let span = null;
    let inflight = null;
    let warm = false;  // the server has this range's history prepared
    const fix = () => {
      const end = Date.now() / 1000;
      span = { startTime: end - RANGES[range.value] / timeScale(), endTime: end };
      warm = false;
    };
    const run = debounce(async (behaviors) => {
      if (inflight) inflight.abort();
      if (!behaviors.length) { status.textContent = ""; return; }
      inflight = new AbortController();
      const spec = { ...span, behaviors };
      const profile = document.getElementById("bt-profile").value;
      if (profile) spec.securityProfileName = profile;
      status.textContent = warm ? "previewing…" : "reading this range's history (the first preview of a range takes longest)…";
      const asked = performance.now();
      let answer;
      try {
        const response = await post("/console/api/builder/preview", spec, inflight.signal);
        answer = await response.json();
        if (!response.ok) { status.textContent = `No preview: ${answer.message || response.status}`; return; }
      } catch (e) { if (e.name === "AbortError") return; throw e; }
      const cards = builder.cards.querySelectorAll(".behavior");
      answer.behaviors.forEach((b, i) => {
        const box = cards[i] && cards[i].querySelector(".preview");
        if (!box) return;
        box.hidden = false;
        box.classList.toggle("alarming", Boolean(b.supported && b.devicesInAlarm));
        if (!b.supported) box.textContent = `No live preview: ${b.reason}.`;
        else if (!b.datapoints) box.textContent = `Nothing to preview: ${b.note}.`;
        else {
          box.textContent = `Over the range: ${b.devicesInAlarm} of ${b.devicesEvaluated} devices would have alarmed (${b.alarms} alarms, ${b.datapoints} datapoints).`;
          // A count over a few minutes of history is not a count over the range: say how much there was.
          const covered = (b.historyEnd - b.historyStart) / (answer.endTime - answer.startTime);
          if (covered < 0.5) box.textContent += ` Only ${Math.max(1, Math.round(covered * 100))}% of the range has history (${utc(b.historyStart)} – ${utc(b.historyEnd)} UTC): the count may say little.`;
        }
      });
      warm = true;
      status.textContent = `Preview in ${((performance.now() - asked) / 1000).toFixed(2)} s (server ${answer.seconds} s).`;
      status.dataset.seconds = String(answer.seconds);
    }, 250);
    fix();
    range.addEventListener("change", () => { fix(); run(builder.behaviors); });
    builder.onChange = (behaviors) => run(behaviors);
    run(builder.behaviors);
  }

  async function start() {
    const root = document.getElementById("behavior-builder");
    if (!root) return;
    // A view chosen while the catalog loads is the one shown once it has (it was lost: the builder
    // then showed its cards and hid the JSON the operator had asked for).
    let view = "builder";
    const early = (e) => { const b = e.target.closest("[data-view]"); if (b) view = b.dataset.view; };
    root.addEventListener("click", early);
    const response = await fetch("/console/api/builder/catalog");
    if (!response.ok) { root.removeEventListener("click", early); return; }  // the raw JSON stays usable
    root.classList.add("ready");
    const catalog = await response.json();
    root.removeEventListener("click", early);
    const builder = new Builder(root, catalog, undefined, view);
    window.behaviorBuilder = builder;
    if (document.getElementById("bt-preview-status")) wirePreview(builder);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
