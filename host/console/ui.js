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

// Money: every amount comes from the API as a money view, `{minor_units, currency, exponent}`,
// where `exponent` is the currency's number of minor-unit digits (ISO 4217, as the host knows
// it). The console keeps no table of currencies: it formats and parses with that exponent and
// the browser's locale (Intl.NumberFormat).

/** The formatter of `currency` with exactly `exponent` fraction digits, or null if Intl refuses it. */
function formatter(currency, exponent) {
  try {
    return new Intl.NumberFormat(undefined, {
      style: "currency", currency, minimumFractionDigits: exponent, maximumFractionDigits: exponent,
    });
  } catch {
    return null;
  }
}

/** `minor_units` as an exact decimal string of major units: 75500 with exponent 3 is "75.500". */
function majorText(minorUnits, exponent) {
  const digits = BigInt(minorUnits).toString().padStart(exponent + 1, "0");
  return exponent ? `${digits.slice(0, -exponent)}.${digits.slice(-exponent)}` : digits;
}

/**
 * A money view as the locale writes it: `{minor_units: 60000, currency: "CNY", exponent: 2}` is
 * "CN¥600.00" in en-US, `{minor_units: 6000, currency: "CLP", exponent: 0}` "CLP 6,000". Without
 * an exponent it says the minor units, rather than guess a magnitude.
 */
export function money(m) {
  if (!m) return "";
  if (!Number.isInteger(m.exponent) || m.exponent < 0 || m.exponent > 20) return `${m.minor_units} minor units of ${m.currency}`;
  const text = majorText(m.minor_units, m.exponent);
  const f = formatter(m.currency, m.exponent);
  // Intl formats a decimal string exactly (no float rounding of large amounts).
  return f ? f.format(text) : `${text} ${m.currency}`;
}

/** The group and decimal separators the locale writes amounts of `currency` with. */
function separators(currency) {
  const f = formatter(currency, 1) || new Intl.NumberFormat(undefined, { minimumFractionDigits: 1 });
  const parts = f.formatToParts(1234567.5);
  return {
    group: (parts.find((p) => p.type === "group") || { value: "," }).value,
    decimal: (parts.find((p) => p.type === "decimal") || { value: "." }).value,
  };
}

/**
 * An amount typed by a person in major units of `currency` ("600", "600.00", "CN¥600",
 * "60,000", written as the locale writes it) as minor units, with `exponent` (the money view's)
 * fraction digits at most; null when it is not one unambiguous amount (a minus sign, more
 * fraction digits than the currency has, separators out of place).
 */
export function parseMajor(text, { currency, exponent }) {
  if (!Number.isInteger(exponent) || exponent < 0) return null;
  let s = String(text).trim();
  if (/[-\u2212]/.test(s)) return null;
  // A currency symbol or code before or after the number.
  s = s.replace(/^[\p{L}\p{Sc}\s]+/u, "").replace(/[\p{L}\p{Sc}\s]+$/u, "");
  const { group, decimal } = separators(currency);
  // Where the locale groups with a space, any space typed groups.
  if (/\s/u.test(group)) s = s.replace(/\s/gu, group);
  const [whole, frac = "", ...more] = s.split(decimal);
  if (more.length || !/^[0-9]*$/.test(frac) || frac.length > exponent) return null;
  const groups = whole.split(group);
  if (!groups.every((g) => /^[0-9]+$/.test(g))) return null;
  // Groups after the first: of three digits at the end, of two or three before (as in 12,34,567).
  if (groups.length > 1 && (groups[0].length > 3 || groups.at(-1).length !== 3
    || groups.slice(1, -1).some((g) => g.length < 2 || g.length > 3))) return null;
  const minor = BigInt(groups.join("")) * 10n ** BigInt(exponent) + BigInt(frac.padEnd(exponent, "0") || "0");
  return minor <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(minor) : null;
}

/**
 * A money view as a number to edit, written as `parseMajor` reads it back: the locale's digits
 * and decimal separator, no grouping, no symbol (40000 KWD fils is "40.000" in en-US).
 */
export function majorInput(m) {
  const text = majorText(m.minor_units, m.exponent);
  const f = formatter(m.currency, m.exponent);
  if (!f) return text;
  return f.formatToParts(text).filter((p) => ["integer", "decimal", "fraction"].includes(p.type)).map((p) => p.value).join("");
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
