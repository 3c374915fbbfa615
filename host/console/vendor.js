// The vendor's view: upload a plugin (the host's reason in plain words when it refuses one),
// the versions with their state, charts and lifecycle buttons, a replay of a version over past
// requests, and the policy template editor.

import { call, get, post, put } from "/console/api.js";
import { announce, barChart, h, mixChart, statusBadge, tabbedView, when } from "/console/ui.js";

export function vendorView(root, me) {
  const { sections: tabs, show } = tabbedView(
    root,
    "Vendor",
    [
      { name: "plugins", label: "Plugins", heading: "Plugins", id: "t-plugins" },
      { name: "policy", label: "Policy", heading: "Policy template", id: "t-policy" },
      { name: "flags", label: "Flags", heading: "Flagged devices", id: "t-flags" },
    ],
    (name) => ({ plugins: renderPlugins, policy: renderPolicy, flags: renderFlags })[name](),
  );

  const message = h("div", { id: "vendor-message", role: "status" });
  function say(kind, text) {
    message.replaceChildren(h("p", { class: `notice ${kind}` }, text));
    announce(text);
  }

  async function lifecycle(path, done) {
    try {
      const v = await post(path);
      say("ok", `${v.reference} is now ${v.state}${done ? " (" + done + ")" : ""}.`);
    } catch (e) {
      say("bad", e.message);
    }
    renderPlugins(false);
  }

  async function replay(v, out) {
    out.replaceChildren(h("p", { class: "hint" }, "Replaying past requests…"));
    try {
      const r = await post(`/v1/vendor/plugins/${encodeURIComponent(v.reference)}/replay?limit=500`);
      const rows = r.changed.map((c) => h("li", { class: "row" },
        h("div", { class: "row-head" }, h("code", {}, c.approval_id), h("span", {}, when(c.created_at))),
        h("p", {}, `${c.action}: the plugin said ${c.recorded_decision || "nothing"}, this version says `,
          h("strong", {}, c.replayed_decision), c.error_code ? ` (${c.error_code})` : "", c.replayed_rule ? ` (${c.replayed_rule})` : ""),
        h("p", {}, "Outcome: ", h("strong", {}, c.outcome_before), " → ", h("strong", {}, c.outcome_after))));
      out.replaceChildren(
        h("p", { class: `notice ${r.outcomes_changed ? "warn" : "ok"}`, "data-replay": v.reference },
          `Replayed ${r.compared} past requests: ${r.verdicts_changed} verdicts and ${r.outcomes_changed} decisions would change` +
          (r.failures ? `; the version failed on ${r.failures}.` : ".")),
        rows.length ? h("ul", { class: "list" }, rows) : "");
    } catch (e) {
      out.replaceChildren(h("p", { class: "error" }, e.message));
    }
  }

  function versionRow(v) {
    const s = v.stats;
    const out = h("div");
    const buttons = [];
    if (v.state !== "active") buttons.push(h("button", { type: "button", class: "good", onclick: () => lifecycle(`/v1/vendor/plugins/${encodeURIComponent(v.reference)}/activate`) }, `Activate ${v.reference}`));
    if (v.state !== "shadow") buttons.push(h("button", { type: "button", class: "secondary", onclick: () => lifecycle(`/v1/vendor/plugins/${encodeURIComponent(v.reference)}/shadow`, "recorded, never deciding") }, `Shadow ${v.reference}`));
    if (v.state !== "inactive") buttons.push(h("button", { type: "button", class: "secondary", onclick: () => lifecycle(`/v1/vendor/plugins/${encodeURIComponent(v.reference)}/deactivate`) }, `Deactivate ${v.reference}`));
    buttons.push(h("button", { type: "button", class: "secondary", onclick: () => replay(v, out) }, `Replay ${v.reference}`));
    return h("li", { class: "row", "data-version": v.reference },
      h("div", { class: "row-head" }, h("strong", {}, v.reference), statusBadge(v.state)),
      h("p", { class: "hint" }, `describe(): ${v.name} ${v.plugin_version} · uploaded ${when(v.uploaded_at)} · sha256 `, h("code", {}, v.sha256.slice(0, 16) + "…"), v.signed ? " · signed" : ""),
      h("p", {}, `${s.calls} calls · ${s.errors} errors` +
        (s.p50_us !== undefined ? ` · p50 ${s.p50_us} µs · p99 ${s.p99_us} µs` : "") +
        (s.agreement_with_active !== undefined ? ` · agrees with the active version on ${Math.round(s.agreement_with_active * 100)}% of ${s.compared_with_active} requests` : "")),
      s.error_codes.length ? h("p", { class: "hint" }, "Errors: " + s.error_codes.map(([c, n]) => `${c} ×${n}`).join(", ")) : null,
      h("div", { class: "actions" }, buttons),
      out);
  }

  async function renderPlugins(clearMessage = true) {
    const section = tabs.plugins;
    if (clearMessage) message.replaceChildren();
    const fileId = "plugin-file";
    const input = h("input", { id: fileId, type: "file", accept: ".wasm,application/wasm", name: "component" });
    const form = h("form", { "aria-label": "Upload a plugin" },
      h("label", { for: fileId }, "Upload a plugin component (.wasm)"), input,
      h("p", { class: "hint" }, "It becomes the next version of the plugin its describe() names, inactive until you shadow or activate it."),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Upload")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const file = input.files[0];
      if (!file) return say("bad", "Choose a .wasm file first.");
      try {
        const v = await call("POST", "/v1/vendor/plugins", await file.arrayBuffer(), { raw: true, headers: { "content-type": "application/wasm" } });
        say("ok", `Uploaded ${v.reference} (${v.state}).`);
      } catch (e) {
        say("bad", `The host refused ${file.name}: ${e.message}`);
      }
      renderPlugins(false);
    });
    const body = h("div", { id: "plugin-list" });
    section.replaceChildren(section.firstChild, form, message, body);
    try {
      const versions = await get("/v1/vendor/plugins");
      if (!versions.length) body.append(h("p", { class: "hint" }, "No plugins yet."));
      const byName = new Map();
      for (const v of versions) byName.set(v.name, [...(byName.get(v.name) || []), v]);
      for (const [name, list] of byName) {
        const chart = mixChart(list.map((v) => ({
          label: `v${v.version} ${v.state}`,
          parts: { allow: v.stats.allow, escalate: v.stats.escalate, deny: v.stats.deny, error: v.stats.errors },
        })), `Verdicts of ${name} by version`);
        const times = list.filter((v) => v.stats.p50_us !== undefined).flatMap((v) => [
          { label: `v${v.version} p50`, value: v.stats.p50_us },
          { label: `v${v.version} p99`, value: v.stats.p99_us },
        ]);
        body.append(h("article", { class: "card", "data-plugin": name },
          h("h3", {}, name),
          chart,
          barChart(list.map((v) => ({ label: `v${v.version}`, value: v.stats.calls })), `Calls of ${name} by version`, "calls"),
          barChart(list.map((v) => ({ label: `v${v.version}`, value: v.stats.errors })), `Errors of ${name} by version`, "errors"),
          times.length ? barChart(times, `Call time of ${name} (median and 99th percentile)`, "µs") : null,
          h("ul", { class: "list" }, list.slice().reverse().map(versionRow)),
          h("div", { class: "actions" }, h("button", { type: "button", class: "secondary", onclick: () => lifecycle(`/v1/vendor/plugins/${encodeURIComponent(name)}/rollback`, "rolled back") }, `Roll back ${name}`))));
      }
    } catch (e) {
      body.append(h("p", { class: "error" }, e.message));
    }
  }

  async function renderPolicy() {
    const section = tabs.policy;
    const id = "policy-text";
    const text = h("textarea", { id, spellcheck: "false", name: "policy" });
    const out = h("p", { role: "status", id: "policy-result" });
    const form = h("form", {},
      h("label", { for: id }, "Template (JSON; see README for every field)"), text, out,
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Save as a new version")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      try {
        JSON.parse(text.value);
      } catch (e) {
        out.className = "error";
        out.textContent = `Not JSON: ${e.message}`;
        return;
      }
      try {
        const saved = await put("/v1/vendor/policy", text.value);
        out.className = "notice ok";
        out.textContent = `Saved as version ${saved.version}.`;
        announce(out.textContent);
      } catch (e) {
        out.className = "error";
        out.textContent = e.message;
        announce(e.message);
      }
    });
    section.replaceChildren(section.firstChild, form);
    try {
      const policy = await get("/v1/vendor/policy");
      text.value = JSON.stringify(policy.template, null, 2);
      out.className = "hint";
      out.textContent = policy.version ? `Version ${policy.version} is in force.` : "The defaults are in force.";
    } catch (e) {
      out.className = "error";
      out.textContent = e.message;
    }
  }

  async function renderFlags() {
    const section = tabs.flags;
    const list = h("ul", { class: "list" });
    section.replaceChildren(section.firstChild, list);
    try {
      const flags = await get("/v1/vendor/flags");
      if (!flags.length) list.append(h("li", { class: "hint" }, "No device sent unusually many requests this week."));
      for (const f of flags) {
        list.append(h("li", { class: "row" }, `${f.actor}: ${f.last_hour} requests in an hour (usually about ${f.baseline_per_hour}) · ${when(f.raised_at)}`));
      }
    } catch (e) {
      list.append(h("li", { class: "error" }, e.message));
    }
  }

  show("plugins");
  return () => {};
}

