// Browser tests of the console: Playwright (playwright-core) driving the system Chromium
// against a real host on loopback. tests/console.rs starts the host, seeds it, and runs one
// phase of this script at a time (node console.mjs <phase>), passing what it needs in the
// environment. Every screen is saved at phone (375 px) and desktop (1280 px) widths; a phase
// fails on the first broken expectation, with the reason on stderr.

import { chromium } from "playwright-core";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env("CONSOLE_URL");
const SHOTS = env("SCREENSHOTS");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
mkdirSync(SHOTS, { recursive: true });

const WIDTHS = { phone: { width: 375, height: 812 }, desktop: { width: 1280, height: 860 } };

async function api(method, path, token, body) {
  const init = { method, headers: { authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + path, init);
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** Checks what every screen must be: nothing wider than the window, every field labelled. */
async function checkScreen(page, name) {
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `${name}: the page scrolls sideways by ${overflow}px at ${page.viewportSize().width}px`);
  const unlabelled = await page.$$eval("input, select, textarea", (els) =>
    els.filter((e) => e.type !== "hidden" && e.offsetParent !== null && !(e.labels && e.labels.length)).map((e) => e.name || e.id));
  assert.deepEqual(unlabelled, [], `${name}: fields without a label`);
}

/** Saves the screen at both widths (the page's width is restored afterwards). */
async function shots(page, name) {
  const original = page.viewportSize();
  for (const [label, size] of Object.entries(WIDTHS)) {
    await page.setViewportSize(size);
    await page.waitForTimeout(50);
    await checkScreen(page, `${name} (${label})`);
    await page.screenshot({ path: `${SHOTS}/${name}-${label}.png`, fullPage: true });
  }
  await page.setViewportSize(original);
}

async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

/** The page in use, for a screenshot when a phase fails. */
let current = null;

// The locale is pinned: amounts are written as en-US writes them ("CN¥600.00", "CLP 60,000").
async function signedIn(b, token, width = "phone") {
  const page = await b.newPage({ viewport: WIDTHS[width], locale: "en-US" });
  current = page;
  page.on("pageerror", (e) => { throw new Error(`page error: ${e.message}`); });
  await page.goto(`${BASE}/console/#token=${encodeURIComponent(token)}`);
  return page;
}

const money = (amount, currency = "CNY") => ({ action: "payment", params: { amount, currency, recipient: "toy-shop" } });

/** The text of every row of a card's params list, as {key: value}. */
const paramsOf = (card) => card.locator("dl.params").evaluate((dl) =>
  Object.fromEntries([...dl.querySelectorAll("dt")].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));

// ---- the guardian ------------------------------------------------------------------------------

async function guardian() {
  const agent = env("AGENT_TOKEN");
  const b = await browser();
  const page = await signedIn(b, env("GUARDIAN_TOKEN"));
  await page.locator("#main").getByText("Nothing is waiting for you.").waitFor();
  await page.locator("#who", { hasText: "Guardian parent-1" }).waitFor();
  // Signing in by link leaves no token in the address bar.
  assert.ok(!page.url().includes("token="), "the token stays out of the URL");

  // A ¥600 request appears without reloading.
  const asked = await api("POST", "/v1/approvals", agent, money(60000));
  assert.equal(asked.status, 202, JSON.stringify(asked.body));
  const id = asked.body.id;
  const card = page.locator(`article[data-approval="${id}"]`);
  await card.waitFor({ timeout: 10000 });
  await card.getByText("teddy-bear wants to pay CN¥600.00 to toy-shop").waitFor();
  await card.getByText("builtin.spend_threshold").waitFor();
  // Beside the summary, every param as sent.
  assert.deepEqual(await paramsOf(card), { amount: "60000", currency: '"CNY"', recipient: '"toy-shop"' });
  assert.match(await card.locator(".countdown").innerText(), /^\d+ h \d\d min$|^\d+:\d\d$/);
  await shots(page, "guardian-inbox");

  // The agent waits; the guardian approves, retyping the amount (keyboard only).
  const waiting = api("GET", `/v1/approvals/${id}?wait=10`, agent);
  await card.getByRole("button", { name: "Approve" }).focus();
  await page.keyboard.press("Enter");
  const dialogBox = page.getByRole("dialog");
  await dialogBox.waitFor();
  const confirm = dialogBox.getByRole("button", { name: "Approve" });
  assert.ok(await confirm.isDisabled(), "approving needs the amount typed");
  await dialogBox.getByLabel(/Type the amount/).fill("60");
  assert.ok(await confirm.isDisabled(), "a wrong amount does not approve");
  await shots(page, "guardian-retype");
  await dialogBox.getByLabel(/Type the amount/).fill("600");
  await confirm.click();
  const answer = await waiting;
  assert.equal(answer.body.status, "approved", JSON.stringify(answer.body));
  assert.ok(answer.body.token && answer.body.token.token, "the waiting agent got its token");
  await card.waitFor({ state: "detached" });
  await page.locator("#main").getByText(/Approved: teddy-bear/).waitFor();

  // Deny, with a reason the agent is told.
  const second = (await api("POST", "/v1/approvals", agent, money(70000))).body.id;
  const denyCard = page.locator(`article[data-approval="${second}"]`);
  await denyCard.waitFor();
  await denyCard.getByRole("button", { name: "Deny" }).click();
  await page.getByRole("dialog").getByLabel(/Reason/).fill("Not before your birthday");
  await page.getByRole("dialog").getByRole("button", { name: "Deny" }).click();
  await denyCard.waitFor({ state: "detached" });
  const denied = await api("GET", `/v1/approvals/${second}`, agent);
  assert.equal(denied.body.status, "denied");
  assert.equal(denied.body.decision_reason, "Not before your birthday");

  // A counter-offer of ¥300.
  const third = (await api("POST", "/v1/approvals", agent, money(80000))).body.id;
  const counterCard = page.locator(`article[data-approval="${third}"]`);
  await counterCard.waitFor();
  await counterCard.getByRole("button", { name: "Counter-offer" }).click();
  const offer = page.getByRole("dialog");
  await offer.getByLabel(/Amount to allow instead/).fill("900");
  await offer.getByRole("button", { name: "Offer" }).click();
  await offer.getByText(/Enter an amount above 0 and below/).waitFor();
  await offer.getByLabel(/Amount to allow instead/).fill("300");
  await shots(page, "guardian-counter-offer");
  await offer.getByRole("button", { name: "Offer" }).click();
  await counterCard.waitFor({ state: "detached" });
  const revised = await api("GET", `/v1/approvals/${third}`, agent);
  assert.equal(revised.body.status, "revised");
  assert.equal(revised.body.revised_params.amount, 30000);
  assert.ok(revised.body.token.token);

  // A currency without minor units (CLP): CLP 60,000, not 600.00; the retype wants 60,000.
  const clp = await api("POST", "/v1/approvals", agent, money(60000, "CLP"));
  assert.equal(clp.status, 202, JSON.stringify(clp.body));
  assert.deepEqual(clp.body.amount, { minor_units: 60000, currency: "CLP", exponent: 0 });
  const clpCard = page.locator(`article[data-approval="${clp.body.id}"]`);
  await clpCard.waitFor();
  await clpCard.getByText(/^teddy-bear wants to pay CLP\s60,000 to toy-shop$/).waitFor();
  assert.match(await clpCard.locator(".amount").innerText(), /^CLP\s60,000$/);
  const clpWaiting = api("GET", `/v1/approvals/${clp.body.id}?wait=10`, agent);
  await clpCard.getByRole("button", { name: "Approve" }).click();
  const clpRetype = page.getByRole("dialog");
  const clpConfirm = clpRetype.getByRole("button", { name: "Approve" });
  await clpRetype.getByText(/^Type the amount \(CLP\s60,000\) to approve it$/).waitFor();
  // What the old table showed (600.00), 100 times the amount, and a European "60.000".
  for (const wrong of ["600", "600.00", "6000000", "60.000", "-60000"]) {
    await clpRetype.getByLabel(/Type the amount/).fill(wrong);
    assert.ok(await clpConfirm.isDisabled(), `typing ${wrong} does not approve CLP 60,000`);
  }
  await clpRetype.getByLabel(/Type the amount/).fill("CLP 60,000");
  assert.ok(await clpConfirm.isEnabled(), "CLP 60,000 typed as shown approves");
  await clpRetype.getByLabel(/Type the amount/).fill("60000");
  await shots(page, "guardian-retype-clp");
  await clpConfirm.click();
  assert.equal((await clpWaiting).body.status, "approved");
  await clpCard.waitFor({ state: "detached" });

  // Three minor-unit digits (KWD): KWD 75.500, not 755.00; retyped, then countered at 50.250.
  const kwd = await api("POST", "/v1/approvals", agent, money(75500, "KWD"));
  assert.equal(kwd.status, 202, JSON.stringify(kwd.body));
  assert.deepEqual(kwd.body.amount, { minor_units: 75500, currency: "KWD", exponent: 3 });
  const kwdCard = page.locator(`article[data-approval="${kwd.body.id}"]`);
  await kwdCard.waitFor();
  await kwdCard.getByText(/^teddy-bear wants to pay KWD\s75\.500 to toy-shop$/).waitFor();
  assert.match(await kwdCard.locator(".amount").innerText(), /^KWD\s75\.500$/);
  await shots(page, "guardian-three-digits");
  await kwdCard.getByRole("button", { name: "Approve" }).click();
  const kwdRetype = page.getByRole("dialog");
  const kwdConfirm = kwdRetype.getByRole("button", { name: "Approve" });
  for (const wrong of ["755", "755.00", "7.55", "75.5001", "7550"]) {
    await kwdRetype.getByLabel(/Type the amount/).fill(wrong);
    assert.ok(await kwdConfirm.isDisabled(), `typing ${wrong} does not approve KWD 75.500`);
  }
  for (const right of ["75.5", "75.500", "KWD 75.500"]) {
    await kwdRetype.getByLabel(/Type the amount/).fill(right);
    assert.ok(await kwdConfirm.isEnabled(), `typing ${right} approves KWD 75.500`);
  }
  await kwdRetype.getByRole("button", { name: "Cancel" }).click();
  await kwdRetype.waitFor({ state: "detached" });
  await kwdCard.getByRole("button", { name: "Counter-offer" }).click();
  const kwdOffer = page.getByRole("dialog");
  await kwdOffer.getByLabel(/Amount to allow instead/).fill("80");
  await kwdOffer.getByRole("button", { name: "Offer" }).click();
  await kwdOffer.getByText(/^Enter an amount above 0 and below KWD\s75\.500\.$/).waitFor();
  await kwdOffer.getByLabel(/Amount to allow instead/).fill("50.25");
  await kwdOffer.getByRole("button", { name: "Offer" }).click();
  await kwdCard.waitFor({ state: "detached" });
  await page.locator("#main").getByText(/^Offered KWD\s50\.250 instead: teddy-bear/).waitFor();
  const kwdRevised = await api("GET", `/v1/approvals/${kwd.body.id}`, agent);
  assert.equal(kwdRevised.body.status, "revised");
  assert.equal(kwdRevised.body.revised_params.amount, 50250);

  // A generic action: every param in full, as text, markup and hidden characters included.
  const note = "a long note ".repeat(250) + "(the end)";
  const shared = await api("POST", "/v1/approvals", env("LAMP_TOKEN"), {
    action: "files.share",
    params: {
      path: "/photos/<b>x</b>.jpg",
      "<img src=x onerror=alert(1)>": "a key of markup",
      with: { expires_days: 30, people: ["grandma", "the <script>neighbour</script>"] },
      note,
      label: "invoice\u202Egnp.exe",
      public: false,
      nothing: null,
    },
  });
  assert.equal(shared.status, 202, JSON.stringify(shared.body));
  const sharedCard = page.locator(`article[data-approval="${shared.body.id}"]`);
  await sharedCard.waitFor();
  await sharedCard.getByText("desk-lamp wants to do files.share").waitFor();
  await sharedCard.getByText("builtin.undeclared_action").waitFor();
  await sharedCard.locator("dl.params").getByText('"/photos/<b>x</b>.jpg"', { exact: true }).waitFor();
  assert.deepEqual(await paramsOf(sharedCard), {
    path: '"/photos/<b>x</b>.jpg"',
    "<img src=x onerror=alert(1)>": '"a key of markup"',
    with: JSON.stringify({ expires_days: 30, people: ["grandma", "the <script>neighbour</script>"] }, null, 2),
    note: JSON.stringify(note),
    // The right-to-left override is named, not obeyed.
    label: '"invoice\\u{202E}gnp.exe"',
    public: "false",
    nothing: "null",
  });
  assert.equal(await sharedCard.locator("b, img, script").count(), 0, "params are text, never markup");
  const clipped = await sharedCard.locator("dl.params dd").evaluateAll((dds) =>
    dds.filter((dd) => dd.scrollHeight > dd.clientHeight + 1 || dd.scrollWidth > dd.clientWidth + 1).map((dd) => dd.textContent.slice(0, 40)));
  assert.deepEqual(clipped, [], "no param is cut off");
  await shots(page, "guardian-params");
  await sharedCard.getByRole("button", { name: "Deny" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Deny" }).click();
  await sharedCard.waitFor({ state: "detached" });

  // History, with the receipt checked in the browser.
  await page.getByRole("button", { name: "History" }).click();
  const row = page.locator(`li[data-approval="${id}"]`);
  await row.waitFor();
  await row.getByRole("button", { name: "Check receipt" }).click();
  await row.getByText(/^Verified: \d+ audit entries of this decision are in the log/).waitFor();
  await shots(page, "guardian-history");

  // Per-device threshold.
  await page.getByRole("button", { name: "Devices" }).click();
  const device = page.locator('form[data-actor="teddy-bear"]');
  await device.getByLabel("Ask me for payments above (CNY)").fill("300");
  await device.getByRole("button", { name: "Save" }).click();
  await device.getByText("Saved: you are asked above CN¥300.00.").waitFor();
  // The KWD threshold, edited in KWD's three digits.
  const kwdThreshold = device.getByLabel("Ask me for payments above (KWD)");
  assert.match(await kwdThreshold.getAttribute("placeholder"), /^the vendor's: KWD\s50\.000$/);
  await kwdThreshold.fill("40.0001");
  await device.getByRole("button", { name: "Save" }).click();
  await device.getByText(/^Enter an amount in KWD, e\.g\. 300\.000/).waitFor();
  await kwdThreshold.fill("40");
  await device.getByRole("button", { name: "Save" }).click();
  await device.getByText(/^Saved: you are asked above CN¥300\.00 and KWD\s40\.000\.$/).waitFor();
  await shots(page, "guardian-devices");
  const overrides = await api("GET", "/v1/actors/teddy-bear/overrides", env("GUARDIAN_TOKEN"));
  assert.deepEqual(overrides.body.overrides.spend_thresholds, { CNY: 30000, KWD: 40000 });
  const actors = await api("GET", "/v1/guardian/actors", env("GUARDIAN_TOKEN"));
  const teddy = actors.body.find((d) => d.actor === "teddy-bear");
  assert.deepEqual(teddy.spend_thresholds, [
    { minor_units: 30000, currency: "CNY", exponent: 2 },
    { minor_units: 40000, currency: "KWD", exponent: 3 },
  ]);
  const small = await api("POST", "/v1/approvals", agent, money(40000));
  assert.equal(small.body.status, "pending", "¥400 now needs the guardian");

  // A device sending unusually many requests shows a notice.
  await page.getByRole("button", { name: "Inbox" }).click();
  for (let i = 0; i < 30; i++) {
    await api("POST", "/v1/approvals", agent, { action: "lights.on", params: { room: `room-${i}` } });
  }
  await page.locator("#main").getByText(/teddy-bear \(demo-toys\) sent \d+ requests in the last hour/).waitFor({ timeout: 10000 });
  await shots(page, "guardian-flag");
  await b.close();
}

// ---- the vendor --------------------------------------------------------------------------------

async function vendor() {
  const b = await browser();
  const page = await signedIn(b, env("VENDOR_TOKEN"), "desktop");
  await page.locator("#who", { hasText: "Vendor demo-toys" }).waitFor();
  const upload = async (path) => {
    await page.getByLabel("Upload a plugin component (.wasm)").setInputFiles(path);
    await page.getByRole("button", { name: "Upload", exact: true }).click();
  };
  // A component that is not a risk classifier: the reason in plain words.
  await upload(env("WRONG_WORLD"));
  await page.locator("#main").getByText(/The host refused wrong_world\.wasm: the component does not implement the `risk-classifier` world/).waitFor();
  await shots(page, "vendor-upload-refused");

  await upload(env("EXAMPLE_PLUGIN"));
  await page.locator("#main").getByText("Uploaded velocity@1 (inactive).").waitFor();
  const v1 = page.locator('li[data-version="velocity@1"]');
  await v1.getByRole("button", { name: "Shadow velocity@1", exact: true }).click();
  await page.locator("#main").getByText("velocity@1 is now shadow (recorded, never deciding).").waitFor();
  await page.locator('li[data-version="velocity@1"] .badge', { hasText: "shadow" }).waitFor();
  await page.locator('li[data-version="velocity@1"]').getByRole("button", { name: "Activate velocity@1", exact: true }).click();
  await page.locator("#main").getByText("velocity@1 is now active.").waitFor();

  // Requests give the charts something to show.
  for (const amount of [1000, 2000, 3000]) {
    await api("POST", "/v1/approvals", env("AGENT_TOKEN"), money(amount));
  }
  await upload(env("EXAMPLE_PLUGIN_V2"));
  await page.locator("#main").getByText("Uploaded velocity@2 (inactive).").waitFor();
  await page.locator('li[data-version="velocity@2"]').getByRole("button", { name: "Activate velocity@2", exact: true }).click();
  await page.locator("#main").getByText("velocity@2 is now active.").waitFor();
  await page.getByRole("button", { name: "Roll back velocity" }).click();
  await page.locator("#main").getByText("velocity@1 is now active (rolled back).").waitFor();
  await page.locator('li[data-version="velocity@1"] .badge', { hasText: "active" }).waitFor();
  await page.locator('li[data-version="velocity@2"] .badge', { hasText: "inactive" }).waitFor();
  await page.getByRole("img", { name: /^Verdicts of velocity by version/ }).waitFor();
  await page.getByRole("img", { name: /^Call time of velocity/ }).waitFor();

  // A replay of a version over past requests.
  await page.locator('li[data-version="velocity@2"]').getByRole("button", { name: "Replay velocity@2", exact: true }).click();
  await page.locator("#main").getByText(/^Replayed \d+ past requests: 0 verdicts and 0 decisions would change/).waitFor();
  await shots(page, "vendor-plugins");

  // The policy editor: a mistake named, then a valid template.
  await page.getByRole("button", { name: "Policy" }).click();
  await page.locator("#main").getByText(/^Version \d+ is in force\.$/).waitFor();
  const editor = page.getByLabel(/Template \(JSON/);
  await editor.fill('{"spend_thresholds": {"CNY": "lots"}}');
  await page.getByRole("button", { name: "Save as a new version" }).click();
  await page.locator("#main").getByText(/spend_thresholds\.CNY: invalid type/).waitFor();
  await shots(page, "vendor-policy-error");
  await editor.fill('{"spend_thresholds": {"CNY": 50000}, "plugin_limits": {"deadline_ms": 10000}, "ttl_seconds": {"default": 3600}}');
  await page.getByRole("button", { name: "Save as a new version" }).click();
  await page.locator("#main").getByText(/^Saved as version \d+\.$/).waitFor();
  await shots(page, "vendor-policy");
  await b.close();
}

// ---- the platform ------------------------------------------------------------------------------

async function platform(expect) {
  const b = await browser();
  const page = await signedIn(b, env("ADMIN_TOKEN"), "desktop");
  await page.locator("#who", { hasText: "Platform team" }).waitFor();
  await page.getByLabel("Approval id").fill(env("APPROVAL_ID"));
  await page.getByLabel("Entry type").selectOption("decided");
  await page.getByRole("button", { name: "Search" }).click();
  const index = env("ENTRY_INDEX");
  const row = page.locator(`li[data-index="${index}"]`);
  await row.waitFor();
  await row.getByText(/approved by human/).waitFor();
  await row.getByRole("button", { name: `Details of #${index}` }).click();
  if (expect === "verified") {
    await row.locator('[data-verified="true"]').getByText(/^Verified: entry #\d+ is in the log/).waitFor();
    await shots(page, "platform-entry-verified");
    await page.getByRole("button", { name: "Plugin health" }).click();
    await page.locator('article[data-plugin^="demo-toys/velocity@"]').first().waitFor();
    await shots(page, "platform-plugin-health");
    await page.getByRole("button", { name: "Flags" }).click();
    await page.locator("#main").getByText(/demo-toys \/ teddy-bear: \d+ requests in an hour/).waitFor();
    await shots(page, "platform-flags");
  } else {
    await row.locator('[data-verified="false"]').getByText(/^Does not verify: the entry's bytes and the proof do not lead to the signed root/).waitFor();
    await shots(page, "platform-entry-tampered");
  }
  await b.close();
}

const phase = process.argv[2];
const phases = {
  guardian,
  vendor,
  "platform-verified": () => platform("verified"),
  "platform-tampered": () => platform("tampered"),
};
if (!phases[phase]) {
  console.error(`unknown phase ${phase}: one of ${Object.keys(phases).join(", ")}`);
  process.exit(2);
}
phases[phase]().then(
  () => process.exit(0),
  async (e) => {
    console.error(e.stack || e);
    if (current) {
      try {
        await current.screenshot({ path: `${SHOTS}/failed-${phase}.png`, fullPage: true });
        console.error(`the page when it failed: ${SHOTS}/failed-${phase}.png\n` + (await current.locator("#main").innerText()).slice(0, 3000));
      } catch { /* the page is gone */ }
    }
    process.exit(1);
  },
);
