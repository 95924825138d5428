// The rollouts pages in a real Chromium: sign in as an operator, fill the
// create form (its htmx preview counts the target as the fields change),
// start the rollout, pause and resume it from its page, and watch it complete
// over real simulated devices; with no console errors, CSP violations or
// dialogs.
//
// Started by tests/e2e/browser.rs. Input (environment):
//   DROVER_BASE_URL      http://127.0.0.1:PORT
//   DROVER_USERNAME, DROVER_PASSWORD   an operator
//   DROVER_BUNDLE_ID     the bundle to roll out (for device type rpi4)
//   DROVER_EXPECT_MATCH  how many devices the target matches
//   DROVER_CHROMIUM      the browser (default /usr/bin/chromium)
//   DROVER_BROWSER_OUT   a directory for screenshots (optional)
// Exits 0 when every check holds; otherwise prints each failure and exits 1.

import { check, env as envOf, finish, inChromium } from "./lib.mjs";

const env = (name, fallback) => envOf("rollouts_page.mjs", name, fallback);

const base = env("DROVER_BASE_URL");
const username = env("DROVER_USERNAME");
const password = env("DROVER_PASSWORD");
const bundleId = env("DROVER_BUNDLE_ID");
const expectMatch = env("DROVER_EXPECT_MATCH");
const executablePath = env("DROVER_CHROMIUM", "/usr/bin/chromium");
const out = process.env.DROVER_BROWSER_OUT ?? "";


const { consoleErrors, dialogs } = await inChromium({ executablePath, out }, async (page, shot) => {

  await page.goto(`${base}/login`);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click("button[type=submit]")]);
  const res = await page.goto(`${base}/rollouts`);
  check(res?.status() === 200, "the rollouts page answers 200", res?.status());
  check((await page.textContent("main"))?.includes("No rollouts yet"), "an empty list says what a rollout is");

  // The preview follows the form.
  await page.fill("#r-name", "canary in chromium");
  await page.selectOption("#r-bundle", bundleId);
  await page.fill("#r-type", "rpi4");
  await page.fill("#r-phases", "50, 100");
  await page.dispatchEvent("#r-phases", "change");
  // Wait for the preview of the final fields (earlier keystrokes answer too, maybe later).
  await page.waitForFunction(
    (n) => {
      const text = document.querySelector("#preview")?.textContent ?? "";
      return text.includes(`${n} devices match`) && /phases of \d+, \d+ devices/.test(text);
    },
    expectMatch,
  );
  const preview = (await page.textContent("#preview")) ?? "";
  check(preview.includes(`${expectMatch} devices match`), "the preview counts the target", preview.trim());
  check(/phases of \d+, \d+ devices/.test(preview), "the preview shows the phase sizes", preview.trim());
  await shot("rollouts-form");

  await Promise.all([
    page.waitForURL((u) => /^\/rollouts\/[A-Za-z0-9]+$/.test(u.pathname)),
    page.click("form[action='/rollouts'] button[type=submit]"),
  ]);
  check((await page.textContent("h1"))?.includes("canary in chromium"), "the rollout's page opens", await page.textContent("h1"));
  const rolloutUrl = page.url();

  await Promise.all([page.waitForLoadState("load"), page.click("form[action$='/pause'] button")]);
  check((await page.textContent("h1"))?.includes("paused"), "pause from the page", await page.textContent("h1"));
  check((await page.$("form[action$='/resume'] button")) !== null, "a paused rollout offers Resume");
  await Promise.all([page.waitForLoadState("load"), page.click("form[action$='/resume'] button")]);

  // The page follows the rollout by itself (Server-Sent Events): no reloads.
  await page.evaluate(() => { window.__droverNoReload = true; });
  await page.waitForFunction(() => document.querySelector("#rollout-state")?.textContent.trim() === "completed", null, { timeout: 90_000 })
    .catch(() => {});
  const state = (await page.textContent("#rollout-state")) ?? "";
  check(state.trim() === "completed", "the rollout completes over the simulated devices", state);
  check(await page.evaluate(() => window.__droverNoReload === true), "its page followed without a reload");
  await page.goto(rolloutUrl);
  const rows = await page.$$eval("main table tbody tr", (trs) => trs.map((tr) => tr.textContent));
  check(rows.length === Number(expectMatch) && rows.every((r) => r.includes("succeeded")), "every device row says succeeded", JSON.stringify(rows));
  const events = (await page.textContent("ol.events")) ?? "";
  check(events.includes("paused") && events.includes("resumed") && events.includes("completed"), "the events list the transitions", events);
  await shot("rollout-page");
});

check(consoleErrors.length === 0, "no console errors or CSP violations", consoleErrors.join("\n  "));
check(dialogs.length === 0, "no dialogs opened", dialogs.join(", "));

finish();
