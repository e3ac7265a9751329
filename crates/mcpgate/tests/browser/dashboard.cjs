// Drives the dashboard in Debian's Chromium with playwright-core, as a person would, against
// the real daemon the Rust test (tests/dashboard.rs) started and filled with MCP traffic.
//
// Input (environment): PLAYWRIGHT (the playwright-core directory), CHROMIUM, BASE (the
// proxy's https URL), SHOTS (where screenshots go), USERS (JSON: name -> TOTP secret),
// PASSWORD, XSS_TOOL (a hostile tool name).
// It talks to the test over stdio: it prints `STEP name` and waits for a `go` line when the
// test must make calls, and ends with `RESULT {json}`. Any failed check throws: exit 1.
"use strict";
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const readline = require("node:readline");
const { chromium } = require(process.env.PLAYWRIGHT);

const BASE = process.env.BASE;
const USERS = JSON.parse(process.env.USERS);
const PASSWORD = process.env.PASSWORD;
const XSS_TOOL = process.env.XSS_TOOL;
const SHOTS = process.env.SHOTS;

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (l) => { const w = waiting.shift(); if (w) w(l.trim()); });
function step(name) {
  process.stdout.write(`STEP ${name}\n`);
  return new Promise((resolve) => waiting.push(resolve));
}

function totp(secret, offsetSteps) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = "";
  for (const c of secret.replace(/=+$/, "").toUpperCase()) {
    bits += alphabet.indexOf(c).toString(2).padStart(5, "0");
  }
  const key = Buffer.alloc(Math.floor(bits.length / 8));
  for (let i = 0; i < key.length; i++) key[i] = parseInt(bits.slice(i * 8, i * 8 + 8), 2);
  const counter = Math.floor(Date.now() / 1000 / 30) + offsetSteps;
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const h = crypto.createHmac("sha1", key).update(msg).digest();
  const o = h[h.length - 1] & 15;
  const n = (h.readUInt32BE(o) & 0x7fffffff) % 1000000;
  return String(n).padStart(6, "0");
}

const problems = { foreign: [], dialogs: [], csp: [] };

async function newContext(browser, options = {}) {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 }, ...options });
  ctx.on("request", (r) => {
    if (!r.url().startsWith(BASE + "/")) problems.foreign.push(r.url());
  });
  ctx.on("page", watch);
  return ctx;
}

function watch(page) {
  page.on("dialog", async (d) => { problems.dialogs.push(d.message()); await d.dismiss(); });
  page.on("console", (m) => {
    if (m.type() === "error" && /Content.Security.Policy|Refused to/i.test(m.text())) problems.csp.push(m.text());
  });
}

// Logs in; with `start`, by opening that page first, which sends the browser to the login
// and, once logged in, back to it.
async function login(ctx, user, start) {
  const page = await ctx.newPage();
  for (const offset of [0, 1]) {
    if (start) {
      await page.goto(BASE + start);
      const at = new URL(page.url());
      assert.equal(at.pathname, "/login", `${start} asks for a login`);
      assert.equal(at.searchParams.get("next"), start, "and remembers where it was going");
    } else {
      await page.goto(BASE + "/login");
    }
    await page.fill("input[name=username]", user);
    await page.fill("input[name=password]", PASSWORD);
    await page.fill("input[name=otp]", totp(USERS[user], offset));
    await Promise.all([page.waitForLoadState("load"), page.click("button[type=submit]")]);
    await page.waitForLoadState("load");
    if (!new URL(page.url()).pathname.startsWith("/login")) break;
    const error = await page.textContent(".error").catch(() => "");
    // This step's code was used by the test's own CLI login: the next one is accepted.
    assert.match(error || "", /already used/, `login as ${user} failed: ${error}`);
  }
  const landed = new URL(page.url());
  assert.equal(landed.pathname + landed.search, start || "/", `${user} lands where they were going`);
  return page;
}

async function ids(page, selector) {
  return page.$$eval(`${selector} tr[data-event-id]`, (rows) => rows.map((r) => r.getAttribute("data-event-id")));
}

async function cells(page, selector, column) {
  return page.$$eval(`${selector} tr[data-event-id] td:nth-child(${column})`, (tds) => tds.map((t) => t.textContent));
}

async function shot(page, name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const result = {};
  const admin = await newContext(browser);
  const page = await login(admin, "alice");

  // The overview: every chart's numbers equal its table's.
  await shot(page, "overview");
  const bars = await page.$$eval("#calls-chart g.bucket", (gs) => gs.map((g) => ({
    bucket: g.getAttribute("data-bucket"), allowed: +g.getAttribute("data-allowed"), denied: +g.getAttribute("data-denied") })));
  const table = await page.$$eval("#calls-table tr[data-bucket]", (rows) => rows.map((r) => ({
    bucket: r.getAttribute("data-bucket"), allowed: +r.children[1].textContent, denied: +r.children[2].textContent })));
  const total = +(await page.textContent("#calls"));
  assert.equal(bars.reduce((n, b) => n + b.allowed + b.denied, 0), total, "the chart adds up to the total");
  assert.deepEqual(bars.filter((b) => b.allowed + b.denied > 0).map((b) => b.bucket).sort(), table.map((t) => t.bucket).sort());
  for (const t of table) {
    const b = bars.find((b) => b.bucket === t.bucket);
    assert.deepEqual([b.allowed, b.denied], [t.allowed, t.denied], `bucket ${t.bucket}`);
  }
  const toolBars = await page.$$eval("#tools-chart g[data-name]", (gs) => gs.map((g) => [g.getAttribute("data-name"), +g.getAttribute("data-allowed") + +g.getAttribute("data-denied")]));
  const toolRows = await page.$$eval("#tools-table tr[data-name]", (rs) => rs.map((r) => [r.getAttribute("data-name"), +r.children[1].textContent]));
  assert.deepEqual(toolBars, toolRows, "the top tools chart equals its table");
  result.overviewCalls = total;

  // The explorer: page through the filtered set, each event exactly once.
  const filter = "app=tools&tool=echo&user=bob";
  await page.goto(`${BASE}/audit?${filter}`);
  const seen = [];
  const pages = [];
  for (;;) {
    const got = await ids(page, "#rows");
    pages.push({ url: page.url(), ids: got });
    seen.push(...got);
    const next = await page.$("a[rel=next]");
    if (!next) break;
    const first = got[0];
    await Promise.all([page.waitForURL((u) => u.href !== pages[pages.length - 1].url), next.click()]);
    await page.waitForFunction((f) => {
      const r = document.querySelector("#rows tr[data-event-id]");
      return r && r.getAttribute("data-event-id") !== f;
    }, first);
  }
  result.explorerRows = seen.length;
  result.explorerUnique = new Set(seen).size;
  result.explorerPages = pages.length;
  // Back up one page with rel=prev, as a link.
  const prev = await page.$("a[rel=prev]");
  assert.ok(prev, "the last page links to the one before");
  // State is in the URL: a reload shows the same page and the same filters.
  await page.goto(pages[2].url);
  await page.reload();
  assert.deepEqual(await ids(page, "#rows"), pages[2].ids, "reload restores the page");
  assert.equal(await page.inputValue("input[name=app]"), "tools");
  assert.equal(await page.inputValue("input[name=tool]"), "echo");
  // Back restores the page before.
  const next = await page.$("a[rel=next]");
  await Promise.all([page.waitForURL((u) => u.href !== pages[2].url), next.click()]);
  await page.waitForFunction((f) => document.querySelector("#rows tr[data-event-id]")?.getAttribute("data-event-id") === f, pages[3].ids[0]);
  await page.goBack();
  await page.waitForFunction((f) => document.querySelector("#rows tr[data-event-id]")?.getAttribute("data-event-id") === f, pages[2].ids[0]);
  assert.deepEqual(await ids(page, "#rows"), pages[2].ids, "back restores the page");
  await page.goto(`${BASE}/audit?${filter}`);
  await shot(page, "audit");

  // One event: its JSON and its session's timeline.
  const firstId = (await ids(page, "#rows"))[0];
  await Promise.all([page.waitForURL(/\/audit\/events\//), page.click(`#rows tr[data-event-id="${firstId}"] a`)]);
  await page.waitForSelector("#event-json");
  assert.ok((await page.textContent("#event-json")).includes(firstId));
  assert.equal(await page.getAttribute("#timeline tr.current", "data-event-id"), firstId);
  result.timelineRows = (await ids(page, "#timeline")).length;
  await shot(page, "event");

  // Export: as many rows as the filter selects.
  const csv = await (await page.request.get(`${BASE}/audit/export?format=csv&${filter}`)).text();
  result.csvRows = csv.split("\r\n").filter((l) => l.length > 0).length - 1;
  const nd = await (await page.request.get(`${BASE}/audit/export?format=ndjson&${filter}`)).text();
  result.ndjsonRows = nd.split("\n").filter((l) => l.length > 0).length;

  // Hostile tool names are text: in the explorer's cells and in an event's JSON.
  await page.goto(`${BASE}/audit?tool=${encodeURIComponent(XSS_TOOL)}`);
  result.xssCells = await cells(page, "#rows", 6);
  result.xssImages = await page.$$eval("main img", (i) => i.length);
  await shot(page, "audit-hostile-name");
  await page.goto(`${BASE}/audit?q=onerror&user=bob`);
  result.xssEvents = [];
  for (const id of await ids(page, "#rows")) {
    await page.goto(`${BASE}/audit/events/${id}`);
    const json = JSON.parse(await page.textContent("#event-json"));
    const params = json.params || (json.message && json.message.params) || {};
    result.xssEvents.push({ name: params.name, images: await page.$$eval("main img", (i) => i.length) });
  }

  // The live tail: five new calls in order within 2 s; pause and resume lose nothing.
  const live = await admin.newPage();
  await live.goto(`${BASE}/audit/live?app=tools&user=bob&tool=read_file`);
  await live.waitForFunction(() => document.getElementById("live-status").textContent === "Live");
  const before = (await ids(live, "#live-rows")).length;
  await step("live-ready");
  const t0 = Date.now();
  await live.waitForFunction((n) => document.querySelectorAll("#live-rows tr[data-event-id]").length >= n, before + 5, { timeout: 2000 });
  result.liveMillis = Date.now() - t0;
  result.liveFirstFive = (await ids(live, "#live-rows")).slice(0, 5).reverse();
  await live.click("#live-toggle");
  assert.equal(await live.getAttribute("#live", "data-state"), "paused");
  await step("live-paused");
  await live.waitForTimeout(1500);
  assert.equal((await ids(live, "#live-rows")).length, before + 5, "nothing arrives while paused");
  await live.click("#live-toggle");
  await live.waitForFunction((n) => document.querySelectorAll("#live-rows tr[data-event-id]").length >= n, before + 7, { timeout: 3000 });
  const all = await ids(live, "#live-rows");
  result.liveAfterResume = all.slice(0, 7).reverse();
  assert.equal(new Set(all).size, all.length, "no duplicates");
  await shot(live, "live");
  await live.close();

  // Findings and inventory pages render.
  for (const p of ["findings", "apps", "users", "bots", "tokens", "locks", "roles"]) {
    const r = await page.goto(`${BASE}/${p}`);
    assert.equal(r.status(), 200, `/${p}`);
    await shot(page, p);
  }
  // An app's tools, with their annotations and the roles that allow each.
  await page.goto(`${BASE}/apps`);
  await page.click('#apps a[href="/apps/tools"]');
  await page.waitForSelector("#tools");
  result.appTools = await page.$$eval("#tools tr[data-name]", (rs) => Object.fromEntries(rs.map((r) => [
    r.getAttribute("data-name"),
    { hints: r.querySelector("td.hints").textContent, roles: r.querySelector("td.roles").textContent },
  ])));
  await shot(page, "app");
  // Who can call a tool: the gateway's decision for each identity.
  await page.goto(`${BASE}/roles/who?app=tools&tool=echo`);
  result.who = await page.$$eval("#who tr[data-name]", (rs) => Object.fromEntries(rs.map((r) => [r.getAttribute("data-name"), r.getAttribute("data-allowed")])));

  // The role editor: a wrong role is refused with a reason; a right one shows a diff, then saves.
  await page.goto(`${BASE}/roles/dev/edit`);
  const original = await page.inputValue("textarea[name=yaml]");
  await page.fill("textarea[name=yaml]", "kind: role\nversion: v8\nmetadata: {name: someone-else}\n");
  await page.click("button[value=preview]");
  await page.waitForSelector("#role-error");
  result.roleError = await page.textContent("#role-error");
  const edited = original.replace("description: developers", "description: developers, edited in the dashboard");
  assert.notEqual(edited, original, `the role text has a description: ${original}`);
  await page.fill("textarea[name=yaml]", edited);
  await page.click("button[value=preview]");
  await page.waitForSelector("#role-diff");
  result.roleDiff = await page.$$eval("#role-diff span.add", (s) => s.map((x) => x.textContent));
  await shot(page, "role-diff");
  await Promise.all([page.waitForURL(`${BASE}/roles`), page.click("button[value=save]")]);
  result.roleSaved = (await page.textContent('section.role[data-name="dev"] pre')).includes("edited in the dashboard");

  // An auditor reads everything and changes nothing.
  const aud = await newContext(browser);
  const ap = await login(aud, "carol", "/audit?decision=deny&user=bob");
  result.auditorEditor = (await ap.goto(`${BASE}/roles/dev/edit`)).status();
  result.auditorLocksForm = await (async () => { await ap.goto(`${BASE}/locks`); return ap.$$eval("form[action='/locks']", (f) => f.length); })();
  await ap.goto(`${BASE}/audit?${filter}`);
  result.auditorSeesBob = (await ids(ap, "#rows")).length;

  // Without JavaScript: the filters are a plain form, the pages plain links.
  const nojs = await newContext(browser, { javaScriptEnabled: false });
  const np = await login(nojs, "carol");
  await np.goto(`${BASE}/audit`);
  await np.fill("form.filters input[name=tool]", "echo");
  await np.fill("form.filters input[name=user]", "bob");
  await Promise.all([np.waitForURL(/tool=echo/), np.click("form.filters button[type=submit]")]);
  const first = await ids(np, "#rows");
  await Promise.all([np.waitForLoadState("load"), np.click("a[rel=next]")]);
  const second = await ids(np, "#rows");
  result.noScriptPages = [first.length, second.length, new Set([...first, ...second]).size];
  await nojs.close();

  // A user sees their own activity only, whatever they ask for.
  const usr = await newContext(browser);
  const up = await login(usr, "bob");
  await up.goto(`${BASE}/audit?user=alice`);
  result.userRowUsers = [...new Set(await cells(up, "#rows", 2))];
  result.userApps = (await up.goto(`${BASE}/apps`)).status();
  result.userEditor = (await up.goto(`${BASE}/roles/dev/edit`)).status();
  result.userWho = (await up.goto(`${BASE}/roles/who?app=tools&tool=echo`)).status();

  // A lock made on the locks page ends the user's dashboard session.
  await page.goto(`${BASE}/locks`);
  await page.selectOption("select[name=kind]", "user");
  await page.fill("input[name=name]", "bob");
  await page.fill("input[name=message]", "dashboard test");
  await Promise.all([page.waitForURL(`${BASE}/locks`), page.click("form[action='/locks'] button[type=submit]")]);
  await page.waitForSelector("#locks tr[data-name]");
  const locked = await up.goto(`${BASE}/audit`);
  result.lockedStatus = locked.status();
  result.lockedText = await up.textContent("main");
  await page.click("#locks button");
  await page.waitForURL(`${BASE}/locks`);
  await page.waitForFunction(() => document.querySelectorAll("#locks tr[data-name]").length === 0);
  result.lockedAfterUnlock = (await up.goto(`${BASE}/audit`)).url();

  // Logging out ends the session.
  await Promise.all([page.waitForURL(/\/login/), page.click("form.logout button")]);
  result.afterLogout = new URL((await page.goto(`${BASE}/audit`)).url()).pathname;

  result.problems = problems;
  await browser.close();
  process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
