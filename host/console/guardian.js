// The guardian's view: the inbox, live from the push stream, with a card per request (a summary
// in words, and every param exactly as the agent sent it); approve (retyping large amounts), deny
// or counter-offer; the history with receipts checked in the browser; and per-device thresholds.
// Amounts are the API's money views, formatted and parsed with their own exponent (ui.js).

import { ApiError, get, post, put, stream } from "/console/api.js";
import { announce, dialog, field, h, left, majorInput, money, parseMajor, statusBadge, tabbedView, when } from "/console/ui.js";
import { b64decode, leafHash, openCheckpoint, verifyInclusion } from "/console/verify.js";

/** Payments of at least this many minor units (of any currency) must be retyped to be approved. */
export const RETYPE_FROM = 50000;

function describe(a) {
  if (a.action === "payment" && a.amount) return `pay ${money(a.amount)} to ${a.recipient}`;
  if (a.action === "cred.put") return `store a ${a.params.category} credential for ${a.params.service}`;
  if (a.action === "memory.write") return `write "${a.params.key}" in the ${a.params.namespace} memory`;
  if (a.action === "capability.mint") return `mint ${a.params.capability} at scope ${a.params.requested_scope} of ${a.params.parent_scope}`;
  return `do ${a.action}`;
}

// Characters that do not show as themselves (controls, bidi overrides, zero-width and other
// format characters, spaces other than U+0020, private or unassigned code points): on the card
// they are written as \u{…} escapes, so what a guardian reads is what the params hold. (JSON's
// own line breaks stay: inside strings JSON has already escaped them.)
const HIDDEN = /(?![\n ])[\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/gu;

function visible(text) {
  return text.replace(HIDDEN, (c) => `\\u{${c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}}`);
}

/** A param's value as exact text: strings quoted, numbers as sent, nested values as indented JSON. */
function paramText(value) {
  return visible(JSON.stringify(value, null, 2) ?? String(value));
}

/**
 * Every param of the action, in full and as text (text nodes only, never markup): the summary
 * above is for reading at a glance, this is what the token will bind.
 */
function paramsList(params) {
  if (params === null || typeof params !== "object" || Array.isArray(params)) {
    return h("dl", { class: "params" }, h("dt", {}, "params"), h("dd", {}, paramText(params)));
  }
  const keys = Object.keys(params);
  if (!keys.length) return h("p", { class: "hint" }, "No params.");
  return h("dl", { class: "params" }, keys.flatMap((key) => [
    h("dt", {}, /^\S(.*\S)?$/su.test(key) ? visible(key) : paramText(key)),
    h("dd", {}, paramText(params[key])),
  ]));
}

function reasons(a) {
  const items = a.rules.map((r) => h("li", {}, h("strong", {}, r.rule_id), ` (${r.source}): ${r.reason}`));
  for (const p of a.plugins) {
    if (p.shadow || p.decision === "allow") continue;
    items.push(h("li", {}, h("strong", {}, `${p.name} v${p.version}`),
      p.error_code ? ` failed (${p.error_code})` : `: ${p.decision}${p.reason ? " — " + p.reason : ""}`));
  }
  return items.length ? h("ul", { class: "why" }, items) : h("p", { class: "hint" }, "No rule explained it.");
}

export function guardianView(root, me, onExpired) {
  const controller = new AbortController();
  const cards = new Map();
  const inboxList = h("div", { class: "cards", "aria-live": "polite", id: "inbox-cards" });
  const empty = h("p", { class: "hint", id: "inbox-empty" }, "Nothing is waiting for you.");
  const flags = h("div", { id: "flags" });
  const message = h("div", { id: "guardian-message", role: "status" });
  const { sections: tabs, show } = tabbedView(
    root,
    "Guardian",
    [
      { name: "inbox", label: "Inbox", heading: "Waiting for you", id: "t-inbox", content: [flags, message, empty, inboxList] },
      { name: "history", label: "History", heading: "Your decisions", id: "t-history" },
      { name: "devices", label: "Devices", heading: "Your devices", id: "t-devices" },
    ],
    (name) => {
      if (name === "history") renderHistory();
      if (name === "devices") renderDevices();
    },
  );

  function say(kind, text) {
    message.replaceChildren(h("p", { class: `notice ${kind}` }, text));
    announce(text);
  }

  function setFlags(list) {
    flags.replaceChildren(...list.map((f) => h("p", { class: "notice warn", role: "alert" },
      `${f.actor} (${f.vendor}) sent ${f.last_hour} requests in the last hour — its usual is about ${f.baseline_per_hour}. `
      + "It may be stuck, or trying to wear you down.")));
  }

  function card(a, fresh) {
    const countdown = h("span", { class: "countdown" });
    const tick = () => {
      const ms = a.expires_at - Date.now();
      countdown.textContent = left(ms);
      countdown.classList.toggle("soon", ms < 60000);
    };
    tick();
    const timer = setInterval(tick, 1000);
    const title = `${a.actor} wants to ${describe(a)}`;
    const el = h("article", { class: "card" + (fresh ? " new" : ""), "data-approval": a.id, "aria-label": title },
      h("h3", {}, title),
      a.amount ? h("p", { class: "amount" }, money(a.amount)) : null,
      h("dl", {},
        h("dt", {}, "Device"), h("dd", {}, `${a.actor} (${a.vendor})`),
        h("dt", {}, "Action"), h("dd", {}, a.action),
        a.recipient ? [h("dt", {}, "To"), h("dd", {}, a.recipient)] : null,
        h("dt", {}, "Via"), h("dd", {}, a.tool ? `${a.surface}, ${a.tool}` : a.surface),
        h("dt", {}, "Decide within"), h("dd", {}, countdown),
        a.similar_requests ? [h("dt", {}, "Asked again"),
          h("dd", {}, `${a.similar_requests} more time${a.similar_requests === 1 ? "" : "s"} with small changes, merged into this request`)] : null),
      h("p", {}, h("strong", {}, "Exactly what it asks:")),
      paramsList(a.params),
      h("p", {}, h("strong", {}, "Why you are asked:")),
      reasons(a),
      h("div", { class: "actions" },
        h("button", { type: "button", class: "good", onclick: () => approve(a) }, "Approve"),
        h("button", { type: "button", class: "danger", onclick: () => deny(a) }, "Deny"),
        a.action === "payment" ? h("button", { type: "button", class: "secondary", onclick: () => counter(a) }, "Counter-offer") : null));
    el.stop = () => clearInterval(timer);
    return el;
  }

  function refreshEmpty() {
    empty.hidden = cards.size > 0;
  }

  function add(a, fresh) {
    if (cards.has(a.id)) return;
    const el = card(a, fresh);
    cards.set(a.id, el);
    inboxList.append(el);
    refreshEmpty();
    if (fresh) announce(`New request: ${a.actor} wants to ${describe(a)}`);
  }

  function remove(id) {
    const el = cards.get(id);
    if (!el) return;
    el.stop();
    el.remove();
    cards.delete(id);
    refreshEmpty();
  }

  function setInbox(inbox) {
    for (const id of [...cards.keys()]) remove(id);
    inbox.pending.forEach((a) => add(a, false));
    setFlags(inbox.flags);
    refreshEmpty();
  }

  async function decide(a, body, done) {
    try {
      const settled = await post(`/v1/approvals/${a.id}/decision`, body);
      remove(a.id);
      say("ok", `${done}: ${a.actor} — ${describe(a)} (${settled.status}).`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return onExpired();
      if (e instanceof ApiError && (e.code === "already_decided" || e.code === "approval_timeout")) remove(a.id);
      const winner = e.body && e.body.approval ? ` It is ${e.body.approval.status.replace("_", " ")}${e.body.approval.decider ? " by " + e.body.approval.decider : ""}.` : "";
      say("bad", `${e.message}.${winner}`);
    }
  }

  async function approve(a) {
    if (a.action === "payment" && a.amount && a.amount.minor_units >= RETYPE_FROM) {
      const confirmed = await dialog(`Approve ${money(a.amount)}?`, (close) => {
        const [label, input] = field(`Type the amount (${money(a.amount)}) to approve it`, { inputmode: "decimal", autocomplete: "off", name: "retype" });
        const ok = h("button", { type: "submit", class: "good", disabled: true }, "Approve");
        input.addEventListener("input", () => {
          ok.disabled = parseMajor(input.value, a.amount) !== a.amount.minor_units;
        });
        const form = h("form", { method: "dialog" },
          h("p", {}, `${a.actor} wants to ${describe(a)}.`), label, input,
          h("div", { class: "actions" }, ok, h("button", { type: "button", class: "secondary", onclick: () => close(false) }, "Cancel")));
        form.addEventListener("submit", (ev) => { ev.preventDefault(); if (!ok.disabled) close(true); });
        setTimeout(() => input.focus(), 0);
        return form;
      });
      if (!confirmed) return;
    }
    await decide(a, { decision: "approve" }, "Approved");
  }

  async function deny(a) {
    const reason = await dialog("Deny this request?", (close) => {
      const [label, input] = field("Reason (optional; the device is told)", { multiline: true, name: "reason", maxlength: 1000 });
      input.classList.add("short");
      const form = h("form", { method: "dialog" },
        h("p", {}, `${a.actor} wants to ${describe(a)}.`), label, input,
        h("div", { class: "actions" },
          h("button", { type: "submit", class: "danger" }, "Deny"),
          h("button", { type: "button", class: "secondary", onclick: () => close(undefined) }, "Cancel")));
      form.addEventListener("submit", (ev) => { ev.preventDefault(); close(input.value.trim()); });
      setTimeout(() => input.focus(), 0);
      return form;
    });
    if (reason === undefined) return;
    await decide(a, reason ? { decision: "deny", reason } : { decision: "deny" }, "Denied");
  }

  async function counter(a) {
    const amount = await dialog("Offer a smaller amount", (close) => {
      const [label, input] = field(`Amount to allow instead (less than ${money(a.amount)})`, { inputmode: "decimal", autocomplete: "off", name: "counter" });
      const error = h("p", { class: "error", role: "alert" });
      const form = h("form", { method: "dialog" }, label, input, error,
        h("div", { class: "actions" },
          h("button", { type: "submit", class: "good" }, "Offer"),
          h("button", { type: "button", class: "secondary", onclick: () => close(undefined) }, "Cancel")));
      form.addEventListener("submit", (ev) => {
        ev.preventDefault();
        const minor = parseMajor(input.value, a.amount);
        if (minor === null || minor <= 0 || minor >= a.amount.minor_units) {
          error.textContent = `Enter an amount above 0 and below ${money(a.amount)}.`;
          return;
        }
        close(minor);
      });
      setTimeout(() => input.focus(), 0);
      return form;
    });
    if (amount === undefined) return;
    await decide(a, { decision: "revise", params: { ...a.params, amount } }, `Offered ${money({ ...a.amount, minor_units: amount })} instead`);
  }

  async function checkReceipt(a, out) {
    out.replaceChildren(h("p", { class: "hint" }, "Checking…"));
    try {
      const r = await get(`/v1/approvals/${a.id}/receipt`);
      const checkpoint = await openCheckpoint(r.receipt.checkpoint, r.log_key);
      let all = true;
      for (const e of r.receipt.entries) {
        const ok = await verifyInclusion(e.index, checkpoint.size, await leafHash(b64decode(e.entry)), e.proof.map(b64decode), checkpoint.root);
        all = all && ok;
      }
      out.replaceChildren(all
        ? h("p", { class: "notice ok" }, `Verified: ${r.receipt.entries.length} audit entries of this decision are in the log signed by ${checkpoint.origin} (checkpoint of ${checkpoint.size} entries).`)
        : h("p", { class: "notice bad" }, "The receipt does not verify."));
    } catch (e) {
      out.replaceChildren(h("p", { class: "notice bad" }, `The receipt does not verify: ${e.message}`));
    }
  }

  async function renderHistory() {
    const section = tabs.history;
    const list = h("ul", { class: "list" });
    section.replaceChildren(section.firstChild, list);
    try {
      const items = await get("/v1/inbox/history");
      if (!items.length) list.append(h("li", { class: "hint" }, "No decisions yet."));
      for (const a of items) {
        const out = h("div");
        list.append(h("li", { class: "row", "data-approval": a.id },
          h("div", { class: "row-head" }, h("span", {}, `${a.actor}: ${describe(a)}`), statusBadge(a.status)),
          h("p", { class: "hint" }, a.decision_method === "timeout" ? `Timed out ${when(a.decided_at)}` : `${a.decider} decided ${when(a.decided_at)}${a.decision_reason ? ": " + a.decision_reason : ""}`),
          h("button", { type: "button", class: "secondary", onclick: () => checkReceipt(a, out) }, "Check receipt"),
          out));
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return onExpired();
      list.append(h("li", { class: "error" }, e.message));
    }
  }

  async function renderDevices() {
    const section = tabs.devices;
    const list = h("div", { class: "cards" });
    section.replaceChildren(section.firstChild, h("p", { class: "hint" }, "Ask me before payments above an amount you choose (within the limits the device's maker allows)."), list);
    try {
      for (const d of await get("/v1/guardian/actors")) {
        const own = (d.overrides && d.overrides.spend_thresholds) || {};
        // One field per currency with a threshold in force; the money views carry the exponent.
        const fields = (d.spend_thresholds || []).map((m) => {
          const mine = own[m.currency] !== undefined;
          const [label, input] = field(`Ask me for payments above (${m.currency})`, {
            inputmode: "decimal", name: `threshold-${m.currency}`, autocomplete: "off",
            value: mine ? majorInput({ ...m, minor_units: own[m.currency] }) : "",
            placeholder: mine ? "the vendor's default" : `the vendor's: ${money(m)}`,
          });
          return { m, label, input };
        });
        const out = h("p", { role: "status" });
        const form = h("form", { class: "card", "data-actor": d.actor, "aria-label": `Device ${d.actor}` },
          h("h3", {}, d.actor), h("p", { class: "hint" }, `${d.vendor}${d.context_tags.length ? " · " + d.context_tags.join(", ") : ""}`),
          fields.length ? fields.flatMap((f) => [f.label, f.input])
            : h("p", { class: "hint" }, "The device's maker sets no spend threshold: every payment asks you."),
          out,
          fields.length ? h("div", { class: "actions" }, h("button", { type: "submit" }, "Save")) : null);
        form.addEventListener("submit", async (ev) => {
          ev.preventDefault();
          const thresholds = { ...own };
          const set = [];
          for (const { m, input } of fields) {
            if (!input.value.trim()) { delete thresholds[m.currency]; continue; }
            const minor = parseMajor(input.value, m);
            if (minor === null) {
              out.className = "error";
              out.textContent = `Enter an amount in ${m.currency}, e.g. ${majorInput({ ...m, minor_units: 300 * 10 ** m.exponent })}, or leave it empty for the vendor's.`;
              return;
            }
            thresholds[m.currency] = minor;
            set.push(money({ ...m, minor_units: minor }));
          }
          const doc = { ...(d.overrides || {}), spend_thresholds: thresholds };
          try {
            await put(`/v1/actors/${encodeURIComponent(d.actor)}/overrides?vendor=${encodeURIComponent(d.vendor)}`, doc);
            out.className = "notice ok";
            out.textContent = set.length ? `Saved: you are asked above ${set.join(" and ")}.` : "Saved: the vendor's thresholds apply.";
          } catch (e) {
            if (e instanceof ApiError && e.status === 401) return onExpired();
            out.className = "error";
            out.textContent = e.message;
          }
        });
        list.append(form);
      }
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return onExpired();
      list.append(h("p", { class: "error" }, e.message));
    }
  }

  // Live: the stream starts with the whole inbox and keeps it current; reconnect on drops.
  (async () => {
    while (!controller.signal.aborted) {
      try {
        await stream("/v1/inbox/stream", (name, data) => {
          if (name === "inbox") setInbox(data);
          else if (name === "pending") add(data, true);
          else if (name === "settled") remove(data.id);
          else if (name === "flagged") get("/v1/inbox").then((i) => setFlags(i.flags)).catch(() => {});
        }, controller.signal);
      } catch (e) {
        if (controller.signal.aborted) return;
        if (e instanceof ApiError && e.status === 401) return onExpired();
      }
      if (controller.signal.aborted) return;
      // The stream ends when the session does; ask once more to find out.
      try { await get("/v1/whoami"); } catch (e) { if (e instanceof ApiError && e.status === 401) return onExpired(); }
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();

  show("inbox");
  return () => {
    controller.abort();
    for (const id of [...cards.keys()]) remove(id);
  };
}
