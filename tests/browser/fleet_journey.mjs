// An operator's whole day in a real Chromium, without reloading where the
// dashboard is live: sign in through the form with the overview open, start
// a simulated device (`drover-agent simulate`) and watch it appear and go
// online, then its chart grow on its page; make an enrollment token and copy
// its join command (with and without the clipboard API); upload an artifact,
// sign a bundle and roll it out through the pages, watching the rollout
// complete; then a viewer sees no controls that change the fleet on any page
// and is refused (403) when posting anyway. Screenshots of every main page go
// to DROVER_BROWSER_OUT.
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
import { chartGrowsPast, chartPoints, check, env as envOf, finish, inChromium } from "./lib.mjs";

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
  // The simulator sends temp_c a second: its chart must grow on the open page.
  await page.waitForSelector('#charts figure.chart[data-metric="temp_c"] .uplot canvas', { timeout: 30_000 }).catch(() => {});
  await page.waitForFunction(() => document.querySelector("#live-status")?.textContent === "Live").catch(() => {});
  check((await page.textContent("#live-status")) === "Live", "the device page is live", await page.textContent("#live-status"));
  await mark(page);
  const before = await chartPoints(page, "temp_c");
  check(before >= 1, "the simulated device's temp_c is charted", before);
  await chartGrowsPast(page, "temp_c", before);
  const after = await chartPoints(page, "temp_c");
  check(after > before, "its chart receives new points live", `${before} → ${after}`);
  check(await stillSamePage(page), "the chart grew without a reload");
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
  // An enrollment token made in the browser, and its join command's Copy
  // button, which must do something visible with and without the clipboard API.
  await page.goto(`${base}/tokens`);
  await Promise.all([page.waitForLoadState("load"), page.click("form[action='/tokens/enrollment'] button[type=submit]")]);
  const join = (await page.textContent("#join-command").catch(() => ""))?.trim() ?? "";
  check(join.includes("drover-agent") && join.includes("--token"), "a token made in the browser shows its join command", join);
  const copyButton = "button[data-copy='#join-command']";
  const copied = ["Copied", "Selected: press Ctrl+C"];
  await page.click(copyButton);
  await page.waitForFunction((b) => document.querySelector(b)?.textContent !== "Copy", copyButton, { timeout: 5_000 }).catch(() => {});
  const said = await page.textContent(copyButton);
  check(copied.includes(said), "the Copy button says what it did", said);
  // Over plain http on the LAN a browser offers no navigator.clipboard.
  await page.evaluate(() => {
    delete Navigator.prototype.clipboard;
    window.getSelection().removeAllRanges();
  });
  check(await page.evaluate(() => navigator.clipboard === undefined), "the clipboard API is gone, as over plain http");
  await page.click(copyButton);
  const plain = await page.evaluate((b) => ({ said: document.querySelector(b)?.textContent, selected: window.getSelection().toString().trim() }), copyButton);
  check(copied.includes(plain.said), "without the clipboard API the Copy button still says what it did", plain.said);
  check(plain.selected === join, "and selects the join command for Ctrl+C", plain.selected);
  await shot("tokens-join");

  for (const [path, name] of [["/tokens", "tokens"], ["/users", "users"], ["/audit", "audit"], ["/alerts", "alerts"], ["/account", "account"]]) {
    const res = await page.goto(`${base}${path}`);
    check(res?.status() === 200, `${path} answers 200`, res?.status());
    await shot(name);
  }

  // A viewer: no mutating controls, and a post anyway is refused.
  await page.click("form[action='/logout'] button");
  await signIn(page, viewer, viewerPassword);
  for (const path of ["/", "/devices", devicePath, "/bundles", "/rollouts", rolloutPath, "/tokens", "/alerts", "/users", "/webhooks"]) {
    const res = await page.goto(`${base}${path}`);
    // Every page shows a viewer the fleet, admin-only ones included (read-only).
    check(res?.status() === 200, `a viewer may read ${path}`, res?.status());
    const forms = await page.$$eval("main form[method=post], main form[method=POST], main [hx-post]", (fs) => fs.map((f) => f.getAttribute("action") ?? f.getAttribute("hx-post")));
    check(forms.length === 0, `a viewer sees no controls that change the fleet on ${path}`, JSON.stringify(forms));
  }
  // Posting anyway, with the session's CSRF token and a complete form, is refused.
  await page.goto(`${base}${rolloutPath}`);
  const posts = [
    [`${rolloutPath}/rollback`, {}],
    ["/alerts/rules", { name: "viewer rule", metric: "temp_c", op: ">", value: "80", for_seconds: "0", severity: "warning" }],
    ["/users", { username: "mallory", password: "mallory-password-123", role: "admin" }],
    ["/webhooks", { url: "http://127.0.0.1:9/viewer-hook", events: "alert" }],
  ];
  for (const [path, fields] of posts) {
    const { status, text } = await page.evaluate(async ([p, f]) => {
      const headers = JSON.parse(document.body.getAttribute("hx-headers") ?? "{}");
      const res = await fetch(p, { method: "POST", headers, body: new URLSearchParams(f), credentials: "same-origin" });
      return { status: res.status, text: await res.text() };
    }, [path, fields]);
    // Refused for the role, not for a missing CSRF token (also a 403).
    const why = / needs the \w+ role; you are a viewer/.exec(text)?.[0];
    check(status === 403 && why !== undefined, `a viewer posting to ${path} anyway gets 403 for the role`, `${status} ${why ?? text.slice(0, 200)}`);
  }
  const shown = {};
  for (const path of ["/alerts", "/users", "/webhooks"]) shown[path] = await (await page.request.get(`${base}${path}`)).text();
  check(!shown["/alerts"].includes("viewer rule") && !shown["/users"].includes("mallory") && !shown["/webhooks"].includes("viewer-hook"),
    "nothing a viewer posted took effect");
  await shot("rollout-viewer");
});

if (sim) sim.kill("SIGTERM");

check(consoleErrors.filter((e) => !e.includes("403")).length === 0, "no console errors or CSP violations", consoleErrors.join("\n  "));
check(dialogs.length === 0, "no dialogs opened", dialogs.join(", "));

finish();
