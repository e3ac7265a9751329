// A person in Chromium (playwright-core) completing an OAuth authorization at the proxy:
// the login form, then the consent; ends when the browser lands on the client's callback.
// Input (environment): PLAYWRIGHT, CHROMIUM, URL (the authorization URL the client printed),
// USER_NAME, PASSWORD, CALLBACK (the client's redirect URI). Prints what it saw; exit 1 on
// any failed check.
"use strict";
const assert = require("node:assert/strict");
const { chromium } = require(process.env.PLAYWRIGHT);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await ctx.newPage();
    const csp = [];
    page.on("console", (m) => { if (/Content.Security.Policy|Refused to/i.test(m.text())) csp.push(m.text()); });
    const first = await page.goto(process.env.URL);
    assert.equal(first.status(), 200);
    const headers = first.headers();
    assert.match(headers["content-security-policy"], /frame-ancestors 'none'/);
    await page.fill("input[name=username]", process.env.USER_NAME);
    await page.fill("input[name=password]", process.env.PASSWORD);
    await page.click("button[type=submit]");
    await page.waitForSelector("button[value=allow]");
    const consent = await page.textContent("main");
    assert.match(consent, /asks to use the app/);
    const landed = page.waitForURL((u) => u.href.startsWith(process.env.CALLBACK), { timeout: 20000 });
    await page.click("button[value=allow]");
    await landed;
    const url = new URL(page.url());
    assert.ok(url.searchParams.get("code"), page.url());
    assert.ok(url.searchParams.get("iss"), page.url());
    assert.deepEqual(csp, []);
    console.log(`landed on ${url.origin}${url.pathname} with a code`);
  } finally {
    await browser.close();
  }
})().catch((e) => { console.error(e); process.exit(1); });
