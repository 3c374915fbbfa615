// The platform team's view: the audit explorer (filters; an entry's detail with its inclusion
// proof checked here, in the browser, against the signed checkpoint), plugin health across
// vendors, and volume flags.

import { get } from "/console/api.js";
import { announce, h, mixChart, tabbedView, when } from "/console/ui.js";
import { b64decode, verifyEntry } from "/console/verify.js";

const TYPES = ["request_received", "plugin_classified", "rule_fired", "decided", "rate_limited", "merged",
  "policy_changed", "overrides_changed", "plugin_uploaded", "plugin_state_changed", "payload_redacted"];

function summary(entry) {
  const e = entry.event || {};
  const bits = [e.vendor, e.actor, e.approval_id].filter(Boolean);
  if (e.type === "decided") bits.push(`${e.status} by ${e.method}${e.decider ? " (" + e.decider + ")" : ""}`);
  if (e.type === "plugin_classified") bits.push(`${e.plugin} v${e.plugin_version}: ${e.result.type === "verdict" ? e.result.decision : "failed " + e.result.code}`);
  if (e.type === "rule_fired") bits.push(`${e.rule_id}: ${e.decision}`);
  if (e.type === "request_received") bits.push(e.action);
  return bits.join(" · ");
}

export function platformView(root) {
  const { sections: tabs, show } = tabbedView(
    root,
    "Platform",
    [
      { name: "audit", label: "Audit", heading: "Audit explorer", id: "t-audit" },
      { name: "health", label: "Plugin health", heading: "Plugin health", id: "t-health" },
      { name: "flags", label: "Flags", heading: "Flagged devices", id: "t-pflags" },
    ],
    (name) => {
      if (name === "health") renderHealth();
      if (name === "flags") renderFlags();
    },
  );

  // ---- the explorer
  const filters = {};
  const form = h("form", { class: "filters", "aria-label": "Filter audit entries" });
  for (const [name, label] of [["vendor", "Vendor"], ["actor", "Device"], ["approval_id", "Approval id"], ["plugin", "Plugin"], ["rule", "Rule"], ["decision", "Decision or status"]]) {
    const id = `flt-${name}`;
    filters[name] = h("input", { id, name, autocomplete: "off" });
    form.append(h("div", {}, h("label", { for: id }, label), filters[name]));
  }
  filters.type = h("select", { id: "flt-type", name: "type" }, h("option", { value: "" }, "any"), TYPES.map((t) => h("option", { value: t }, t)));
  form.append(h("div", {}, h("label", { for: "flt-type" }, "Entry type"), filters.type));
  for (const [name, label] of [["since", "From"], ["until", "Until"]]) {
    filters[name] = h("input", { id: `flt-${name}`, name, type: "datetime-local" });
    form.append(h("div", {}, h("label", { for: `flt-${name}` }, label), filters[name]));
  }
  form.append(h("div", { class: "actions" }, h("button", { type: "submit" }, "Search")));
  const results = h("div", { id: "audit-results", "aria-live": "polite" });
  tabs.audit.append(form, results);

  async function search(after) {
    const q = new URLSearchParams();
    for (const [name, input] of Object.entries(filters)) {
      if (!input.value) continue;
      q.set(name, name === "since" || name === "until" ? String(new Date(input.value).getTime()) : input.value.trim());
    }
    q.set("limit", "100");
    if (after !== undefined) q.set("after", String(after));
    if (after === undefined) results.replaceChildren(h("p", { class: "hint" }, "Searching…"));
    try {
      const page = await get(`/v1/audit/entries?${q}`);
      const list = h("ul", { class: "list" });
      for (const e of page.entries) {
        const detail = h("div");
        list.append(h("li", { class: "row", "data-index": String(e.index) },
          h("div", { class: "row-head" }, h("strong", {}, `#${e.index} ${e.entry.event.type}`), h("span", { class: "hint" }, when(e.entry.at_ms))),
          h("p", {}, summary(e.entry)),
          h("button", { type: "button", class: "secondary", onclick: () => open(e, detail) }, `Details of #${e.index}`),
          detail));
      }
      const more = page.next_after !== undefined
        ? h("button", { type: "button", class: "secondary", onclick: (ev) => { ev.target.remove(); search(page.next_after); } }, "More")
        : null;
      if (after === undefined) {
        results.replaceChildren(page.entries.length ? list : h("p", { class: "hint" }, "No entry matches."), more || "");
        announce(`${page.entries.length} entries found`);
      } else {
        results.append(list, more || "");
      }
    } catch (e) {
      results.replaceChildren(h("p", { class: "error" }, e.message));
    }
  }

  async function open(e, detail) {
    const verdict = h("div", { role: "status" }, h("p", { class: "hint" }, "Checking the entry against the signed checkpoint…"));
    detail.replaceChildren(h("pre", { class: "json" }, JSON.stringify(e.entry, null, 2)), verdict);
    try {
      const vkey = (await get("/.well-known/audit-log-key")).trim();
      const checkpoint = await get("/v1/audit/checkpoint");
      const proof = await get(`/v1/audit/proofs/inclusion?index=${e.index}&size=${checkpoint.size}`);
      const result = await verifyEntry({
        index: e.index,
        bytes: b64decode(e.bytes),
        proof: proof.proof.map(b64decode),
        note: checkpoint.checkpoint,
        vkey,
      });
      verdict.replaceChildren(result.ok
        ? h("p", { class: "notice ok", "data-verified": "true" }, `Verified: entry #${e.index} is in the log ${result.checkpoint.origin}, whose checkpoint of ${result.checkpoint.size} entries is signed by its key (checked in this browser).`)
        : h("p", { class: "notice bad", "data-verified": "false" }, `Does not verify: ${result.reason}.`));
      announce(result.ok ? "Verified" : "Does not verify");
    } catch (err) {
      verdict.replaceChildren(h("p", { class: "notice bad", "data-verified": "false" }, `Does not verify: ${err.message}`));
    }
  }

  form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });

  async function renderHealth() {
    const section = tabs.health;
    const body = h("div", { class: "cards" });
    section.replaceChildren(section.firstChild, h("p", { class: "hint" }, "Every plugin version called in the last day: the last hour against the 23 hours before."), body);
    try {
      const versions = await get("/v1/audit/plugins");
      if (!versions.length) body.append(h("p", { class: "hint" }, "No plugin was called in the last day."));
      for (const v of versions) {
        const mix = (w) => ({ allow: w.allow, escalate: w.escalate, deny: w.deny, error: w.errors });
        body.append(h("article", { class: "card", "data-plugin": `${v.vendor}/${v.plugin}@${v.version}` },
          h("h3", {}, `${v.plugin} v${v.version}`),
          h("p", { class: "hint" }, `${v.vendor} · mean ${v.mean_time_us} µs`),
          v.anomalies.length ? h("p", {}, v.anomalies.map((a) => h("span", { class: "badge bad" }, a.replace("_", " ")))) : h("p", {}, h("span", { class: "badge ok" }, "steady")),
          mixChart([
            { label: `last hour (${v.recent.calls})`, parts: mix(v.recent) },
            { label: `before (${v.earlier.calls})`, parts: mix(v.earlier) },
          ], `Verdicts of ${v.plugin} v${v.version}`)));
      }
    } catch (e) {
      body.append(h("p", { class: "error" }, e.message));
    }
  }

  async function renderFlags() {
    const section = tabs.flags;
    const list = h("ul", { class: "list" });
    section.replaceChildren(section.firstChild, list);
    try {
      const flags = await get("/v1/audit/flags");
      if (!flags.length) list.append(h("li", { class: "hint" }, "No device sent unusually many requests this week."));
      for (const f of flags) {
        list.append(h("li", { class: "row" }, `${f.vendor} / ${f.actor}: ${f.last_hour} requests in an hour (usually about ${f.baseline_per_hour}) · ${when(f.raised_at)}`));
      }
    } catch (e) {
      list.append(h("li", { class: "error" }, e.message));
    }
  }

  show("audit");
  search();
  return () => {};
}
