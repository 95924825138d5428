// An operator's whole day in a real Chromium, without reloading where the
// dashboard is live: sign in through the form with the overview open, start
// a simulated device (`drover-agent simulate`) and watch it appear and go
// online; upload an artifact, sign a bundle and roll it out through the
// pages, watching the rollout complete; then a viewer sees no controls that
// change the fleet and is refused (403) when posting anyway. Screenshots of
// every main page go to DROVER_BROWSER_OUT.
//
// Started by tests/e2e/browser.rs. Input (environment):
//   DROVER_BASE_URL      http://127.0.0.1:PORT
//   DROVER_USERNAME, DROVER_PASSWORD   an admin
//   DROVER_VIEWER, DROVER_VIEWER_PASSWORD   a viewer
//   DROVER_SIM_CMD       JSON array: the simulator's command line
//   DROVER_DEVICE_TYPE   the simulated devices' type
//   DROVER_CHROMIUM      the browser (default /usr/bin/chromium)
//   DROVER_BROWSER_OUT   a directory for screenshots (optional)
// Exits 0 when every check holds; otherwise prints each failure and exits 1.

import { spawn } from "node:child_process";
import { check, env as envOf, finish, inChromium } from "./lib.mjs";

const env = (name, fallback) => envOf("fleet_journey.mjs", name, fallback);

const base = env("DROVER_BASE_URL");
const username = env("DROVER_USERNAME");
const password = env("DROVER_PASSWORD");
const viewer = env("DROVER_VIEWER");
const viewerPassword = env("DROVER_VIEWER_PASSWORD");
const simCmd = JSON.parse(env("DROVER_SIM_CMD"));
const deviceType = env("DROVER_DEVICE_TYPE");
const executablePath = env("DROVER_CHROMIUM", "/usr/bin/chromium");
const out = process.env.DROVER_BROWSER_OUT ?? "";

const number = async (page, selector) => Number((await page.textContent(`${selector} .n`))?.trim());

async function signIn(page, user, pass) {
  await page.goto(`${base}/login`);
  await page.fill("#username", user);
  await page.fill("#password", pass);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click("button[type=submit]")]);
}

// A page load sets this marker; a reload would lose it.
const mark = (page) => page.evaluate(() => { window.__droverNoReload = true; });
const stillSamePage = (page) => page.evaluate(() => window.__droverNoReload === true);

let sim;
const { consoleErrors, dialogs } = await inChromium({ executablePath, out }, async (page, shot) => {
  await signIn(page, username, password);
  await page.goto(`${base}/`);
  check((await page.textContent("main"))?.includes("Get started"), "an empty fleet's overview says how to start");
  await page.waitForFunction(() => document.querySelector("#live-status")?.textContent === "Live");
  check(true, "the overview is live");
  await shot("overview-empty");
  await mark(page);

  // A simulated device joins while the overview is open.
  const childEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("DROVER_")));
  sim = spawn(simCmd[0], simCmd.slice(1), { stdio: "ignore", env: childEnv });
  await page.waitForFunction(() => document.querySelector("#presence-online .n")?.textContent.trim() === "1", null, { timeout: 60_000 });
  check(await stillSamePage(page), "the device appears and goes online on the overview without a reload");
  check(await number(page, "#devices-total") === 1, "the overview counts one device", await number(page, "#devices-total"));
  await page.waitForSelector("#fleet-events li", { timeout: 30_000 });
  check((await page.textContent("#fleet-events"))?.includes("online"), "its coming online is among the recent events", await page.textContent("#fleet-events"));
  await shot("overview");

  // Its page: health and charts, live.
  await page.goto(`${base}/devices`);
  await shot("devices");
  await Promise.all([page.waitForLoadState("load"), page.click("main table tbody tr a")]);
  const devicePath = new URL(page.url()).pathname;
  check(/^\/devices\/[A-Za-z0-9_-]+$/.test(devicePath), "the list links the device's page", devicePath);
  await page.waitForSelector("#charts figure", { timeout: 30_000 }).catch(() => {});
  await shot("device");

  // Upload, bundle, rollout: all through the pages.
  await page.goto(`${base}/bundles`);
  const bytes = Buffer.from("weights of a model that runs\n".repeat(1000));
  await page.setInputFiles("#artifact-file", { name: "detector.onnx", mimeType: "application/octet-stream", buffer: bytes });
  const [upload] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/bundles/artifacts" && r.request().method() === "POST"),
    page.waitForEvent("load"),
    page.click("form[data-upload] button[type=submit]"),
  ]);
  check(upload.status() === 201, "the artifact uploads", upload.status());
  await page.waitForSelector("fieldset label.check");
  await page.fill("#b-name", "detector");
  await page.selectOption("#b-kind", "model");
  await page.fill("#b-version", "2.0.0");
  await page.fill("#b-types", deviceType);
  await page.check("fieldset input[name=artifact]");
  await Promise.all([page.waitForURL((u) => u.search.includes("done=created")), page.click("form[action='/bundles'] button[type=submit]")]);
  check((await page.textContent("h1"))?.trim() === "detector 2.0.0", "the bundle is signed and shown", await page.textContent("h1"));
  await shot("bundle");
  await page.goto(`${base}/bundles`);
  await shot("bundles");

  await page.goto(`${base}/rollouts`);
  await page.fill("#r-name", "detector to the fleet");
  await page.selectOption("#r-bundle", { label: "detector 2.0.0 (model)" });
  await page.fill("#r-type", deviceType);
  // A short soak after the install keeps it running long enough to watch it finish.
  await page.fill("#r-phases", "100:4");
  await page.dispatchEvent("#r-phases", "change");
  await page.waitForFunction(() => (document.querySelector("#preview")?.textContent ?? "").includes("1 devices match"));
  await Promise.all([
    page.waitForURL((u) => /^\/rollouts\/[A-Za-z0-9]+$/.test(u.pathname)),
    page.click("form[action='/rollouts'] button[type=submit]"),
  ]);
  const rolloutPath = new URL(page.url()).pathname;
  await mark(page);
  const first = (await page.textContent("#rollout-state"))?.trim();
  check(first === "running", "the new rollout's page opens while it runs", first);
  await page.waitForFunction(() => document.querySelector("#rollout-state")?.textContent.trim() === "completed", null, { timeout: 90_000 })
    .catch(() => {});
  const state = (await page.textContent("#rollout-state"))?.trim();
  check(state === "completed", "the rollout completes on its page", state);
  check(await stillSamePage(page), "its page followed the rollout without a reload");
  check((await page.textContent("#rollout-devices"))?.includes("succeeded"), "the device row says succeeded", await page.textContent("#rollout-devices"));
  await shot("rollout");
  await page.goto(`${base}/rollouts`);
  await shot("rollouts");

  // Overview after the rollout: the version in use.
  await page.goto(`${base}/`);
  await page.waitForFunction(() => /detector[\s\S]*2\.0\.0/.test(document.querySelector("figure.bars")?.textContent ?? ""), null, { timeout: 30_000 })
    .catch(() => {});
  const bars = (await page.textContent("figure.bars").catch(() => ""))?.replace(/\s+/g, " ") ?? "";
  check(bars.includes("detector 1 devices") && bars.includes("2.0.0") && bars.includes("1 (100%)"), "the overview charts the version in use", bars);
  await shot("overview-versions");
  for (const [path, name] of [["/tokens", "tokens"], ["/users", "users"], ["/audit", "audit"], ["/alerts", "alerts"], ["/account", "account"]]) {
    const res = await page.goto(`${base}${path}`);
    check(res?.status() === 200, `${path} answers 200`, res?.status());
    await shot(name);
  }

  // A viewer: no mutating controls, and a post anyway is refused.
  await page.click("form[action='/logout'] button");
  await signIn(page, viewer, viewerPassword);
  for (const path of ["/", "/devices", devicePath, "/bundles", "/rollouts", rolloutPath, "/tokens"]) {
    await page.goto(`${base}${path}`);
    const forms = await page.$$eval("main form[method=post], main form[method=POST], main [hx-post]", (fs) => fs.map((f) => f.getAttribute("action") ?? f.getAttribute("hx-post")));
    check(forms.length === 0, `a viewer sees no controls that change the fleet on ${path}`, JSON.stringify(forms));
  }
  await page.goto(`${base}${rolloutPath}`);
  const refused = await page.evaluate(async (path) => {
    const headers = JSON.parse(document.body.getAttribute("hx-headers") ?? "{}");
    const res = await fetch(`${path}/rollback`, { method: "POST", headers, credentials: "same-origin" });
    return res.status;
  }, rolloutPath);
  check(refused === 403, "a viewer posting anyway gets 403", refused);
  await shot("rollout-viewer");
});

if (sim) sim.kill("SIGTERM");

check(consoleErrors.filter((e) => !e.includes("403")).length === 0, "no console errors or CSP violations", consoleErrors.join("\n  "));
check(dialogs.length === 0, "no dialogs opened", dialogs.join(", "));

finish();
