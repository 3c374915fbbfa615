// Small DOM helpers shared by the views: building elements, money and time in words, dialogs,
// announcements for screen readers, and bar charts drawn as SVG.

/** Creates an element: `h("button", {class: "good", onclick}, "Approve")`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * A tab bar over sections, put into `root`: `tabs = [{name, label, heading, id, content}]`, the
 * first shown at first. `onShow(name)` runs whenever a tab is shown. Returns the sections by
 * name and `show(name)`.
 */
export function tabbedView(root, navLabel, tabs, onShow) {
  const sections = {};
  const nav = h("nav", { class: "tabs", "aria-label": navLabel });
  tabs.forEach(({ name, label, heading, id, content = [] }, i) => {
    sections[name] = h("section", { "aria-labelledby": id, hidden: i > 0 }, h("h2", { id }, heading), ...content);
    nav.append(h("button", { type: "button", class: "secondary", "data-tab": name, onclick: () => show(name) }, label));
  });
  root.replaceChildren(nav, ...Object.values(sections));
  function show(name) {
    for (const [tab, section] of Object.entries(sections)) section.hidden = tab !== name;
    for (const b of nav.querySelectorAll("button")) {
      if (b.dataset.tab === name) b.setAttribute("aria-current", "page");
      else b.removeAttribute("aria-current");
    }
    onShow(name);
  }
  return { sections, show };
}

const SYMBOLS = { CNY: "¥", JPY: "¥", USD: "$", EUR: "€", GBP: "£" };
const DIGITS = { JPY: 0, KRW: 0 };

/** The number of minor units in one major unit of `currency`. */
export function minorPerMajor(currency) {
  return 10 ** (DIGITS[currency] ?? 2);
}

/** `{minor_units: 60000, currency: "CNY"}` as "¥600.00". */
export function money(m) {
  if (!m) return "";
  const digits = DIGITS[m.currency] ?? 2;
  const major = (m.minor_units / 10 ** digits).toFixed(digits);
  const symbol = SYMBOLS[m.currency];
  return symbol ? `${symbol}${major}` : `${major} ${m.currency}`;
}

/** Major units typed by a person ("600", "600.00", "¥600") as minor units, or null. */
export function parseMajor(text, currency) {
  const cleaned = String(text).replace(/[^0-9.]/g, "");
  if (!/^\d+(\.\d+)?$/.test(cleaned)) return null;
  const digits = DIGITS[currency] ?? 2;
  const [whole, frac = ""] = cleaned.split(".");
  if (frac.length > digits) return null;
  return Number(whole) * 10 ** digits + Number(frac.padEnd(digits, "0") || 0);
}

/** A timestamp (ms) as a local date and time. */
export function when(ms) {
  return ms ? new Date(ms).toLocaleString() : "";
}

/** Milliseconds as "4:59" or "1 h 02 min". */
export function left(ms) {
  if (ms <= 0) return "expired";
  const s = Math.floor(ms / 1000);
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** Tells screen readers. */
export function announce(text) {
  const status = document.getElementById("status");
  if (status) status.textContent = text;
}

/**
 * Opens a modal dialog built by `build(close)`; resolves with what `close(value)` was given
 * (undefined when dismissed with Escape or Cancel).
 */
export function dialog(title, build) {
  return new Promise((resolve) => {
    const id = "dlg-" + Math.random().toString(36).slice(2);
    const d = h("dialog", { "aria-labelledby": id });
    let settled = false;
    const close = (value) => {
      if (settled) return;
      settled = true;
      d.close();
      d.remove();
      resolve(value);
    };
    d.append(h("h2", { id }, title), build(close));
    d.addEventListener("close", () => close(undefined));
    document.body.append(d);
    d.showModal();
  });
}

/** A labelled input; returns [label, input]. */
export function field(label, attrs = {}) {
  const id = "f-" + Math.random().toString(36).slice(2);
  const input = h(attrs.multiline ? "textarea" : "input", { id, ...attrs, multiline: undefined });
  return [h("label", { for: id }, label), input];
}

const COLORS = { allow: "#1f7a3a", escalate: "#b86e00", deny: "#b3261e", error: "#5b5f6b" };

const SVG = "http://www.w3.org/2000/svg";
const CHART_WIDTH = 320;
const LABEL_WIDTH = 96;

/** An SVG element with `attrs`. */
function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A chart's SVG for `rows` rows of `rowHeight`, read out as `label`. */
function chartSvg(rows, rowHeight, label) {
  return svgEl("svg", {
    viewBox: `0 0 ${CHART_WIDTH} ${rows * rowHeight + 4}`,
    class: "chart",
    role: "img",
    "aria-label": label,
  });
}

/** A row's text at `x`, `y` in a chart. */
function chartText(x, y, text) {
  return svgEl("text", { x, y, "font-size": 12, fill: "#14161a" }, text);
}

/**
 * Horizontal stacked bars, one per row: `rows = [{label, parts: {allow, escalate, deny, error}}]`.
 * The chart has a text alternative; the legend names the colours.
 */
export function mixChart(rows, title) {
  const rowHeight = 26;
  const summary = rows
    .map((r) => `${r.label}: ${Object.entries(r.parts).map(([k, v]) => `${v} ${k}`).join(", ")}`)
    .join("; ");
  const svg = chartSvg(rows.length, rowHeight, `${title}. ${summary}`);
  rows.forEach((r, i) => {
    const total = Object.values(r.parts).reduce((a, b) => a + b, 0);
    const y = i * rowHeight + 2;
    svg.append(chartText(0, y + 16, r.label));
    let x = LABEL_WIDTH;
    for (const [kind, count] of Object.entries(r.parts)) {
      if (!total || !count) continue;
      const w = ((CHART_WIDTH - LABEL_WIDTH) * count) / total;
      svg.append(svgEl("rect", { x, y: y + 3, width: Math.max(w, 1), height: rowHeight - 8, fill: COLORS[kind] || "#888" }));
      x += w;
    }
  });
  const legend = h(
    "ul",
    { class: "legend", "aria-hidden": "true" },
    Object.keys(COLORS).map((k) => h("li", {}, h("span", { class: `swatch s-${k}` }), k)),
  );
  return h("figure", { style: undefined }, svg, legend);
}

/**
 * Horizontal bars of absolute values: `rows = [{label, value}]`, scaled to the largest, each
 * labelled with its value and `unit`. The chart has a text alternative.
 */
export function barChart(rows, title, unit) {
  const rowHeight = 24;
  const svg = chartSvg(rows.length, rowHeight, `${title}. ${rows.map((r) => `${r.label}: ${r.value} ${unit}`).join("; ")}`);
  const max = Math.max(1, ...rows.map((r) => r.value));
  rows.forEach((r, i) => {
    const y = i * rowHeight + 2;
    const w = Math.max(((CHART_WIDTH - LABEL_WIDTH - 64) * r.value) / max, r.value ? 1 : 0);
    svg.append(
      chartText(0, y + 15, r.label),
      svgEl("rect", { x: LABEL_WIDTH, y: y + 3, width: w, height: rowHeight - 8, fill: "#0b57d0" }),
      chartText(LABEL_WIDTH + w + 4, y + 15, `${r.value} ${unit}`),
    );
  });
  return h("figure", {}, h("figcaption", { class: "hint" }, title), svg);
}

/** A status as a coloured badge. */
export function statusBadge(status) {
  const kind = {
    allowed: "ok", approved: "ok", revised: "ok",
    denied: "bad", timed_out: "bad", rate_limited: "bad",
    pending: "warn", active: "ok", shadow: "warn", inactive: "plain",
  }[status] || "plain";
  return h("span", { class: `badge ${kind}` }, status.replace("_", " "));
}
