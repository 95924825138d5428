// The bundles page in a real Chromium: sign in as an operator, upload an
// artifact through the page's upload form (static/upload.js, XMLHttpRequest
// with progress events, the CSRF token in a header), create and sign a bundle
// from it with the form, and open the bundle's page; with no console errors,
// CSP violations or dialogs (the file name carries markup that must stay text).
//
// Started by tests/e2e/browser.rs. Input (environment):
//   DROVER_BASE_URL      http://127.0.0.1:PORT
//   DROVER_USERNAME, DROVER_PASSWORD   an operator
//   DROVER_CHROMIUM      the browser (default /usr/bin/chromium)
//   DROVER_BROWSER_OUT   a directory for screenshots (optional)
// Exits 0 when every check holds; otherwise prints each failure and exits 1.

import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name, fallback) => {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === "") {
    console.error(`bundles_page.mjs: set ${name} (see the comment at the top of this file)`);
    process.exit(2);
  }
  return v;
};

const base = env("DROVER_BASE_URL");
const username = env("DROVER_USERNAME");
const password = env("DROVER_PASSWORD");
const executablePath = env("DROVER_CHROMIUM", "/usr/bin/chromium");
const out = process.env.DROVER_BROWSER_OUT ?? "";

const failures = [];
let checks = 0;
function check(ok, what, detail) {
  checks += 1;
  if (ok) {
    console.log(`ok   ${what}`);
  } else {
    failures.push(`${what}${detail === undefined ? "" : `: ${detail}`}`);
    console.log(`FAIL ${what}${detail === undefined ? "" : `: ${detail}`}`);
  }
}

const consoleErrors = [];
const dialogs = [];
const fileName = "<img src=x onerror=alert(1)>model.onnx";
const bytes = Buffer.alloc(3 * 1024 * 1024 + 5, 0);
for (let i = 0; i < bytes.length; i += 1) bytes[i] = (i * 13) & 0xff;
const digest = createHash("sha256").update(bytes).digest("hex");

const profile = mkdtempSync(join(tmpdir(), "drover-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 900 },
  });
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline code"}`);
    });
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(`${m.location().url || page.url()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => consoleErrors.push(`${page.url()}: uncaught ${e.message}`));
  page.on("dialog", (d) => {
    dialogs.push(d.message());
    d.dismiss().catch(() => {});
  });
  const shot = async (name) => {
    if (!out) return;
    mkdirSync(out, { recursive: true });
    await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
  };

  await page.goto(`${base}/login`);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click("button[type=submit]")]);
  const res = await page.goto(`${base}/bundles`);
  check(res?.status() === 200, "the bundles page answers 200", res?.status());
  check((await page.textContent("main"))?.includes("No bundles yet"), "an empty fleet says what to do first");

  // Upload through the page: the script posts the file and reloads on success.
  await page.setInputFiles("#artifact-file", { name: fileName, mimeType: "application/octet-stream", buffer: bytes });
  const [upload] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/bundles/artifacts" && r.request().method() === "POST"),
    page.waitForEvent("load"),
    page.click("form[data-upload] button[type=submit]"),
  ]);
  check(upload.status() === 201, "the upload is stored (201)", upload.status());
  await page.waitForSelector("fieldset label.check");
  const listed = await page.$$eval("main table tbody tr td:first-child", (tds) => tds.map((td) => td.textContent.trim()));
  check(listed.includes(fileName), "the artifact is listed with its name as text", JSON.stringify(listed));
  check((await page.$$("main img")).length === 0, "markup in the file name never becomes an element");
  await shot("bundles-uploaded");

  // Create and sign a bundle from it.
  await page.fill("#b-name", "detector");
  await page.selectOption("#b-kind", "model");
  await page.fill("#b-version", "1.4.0");
  await page.fill("#b-types", "rpi4, jetson-orin");
  await page.check("fieldset input[name=artifact]");
  await Promise.all([page.waitForURL((u) => u.search.includes("done=created")), page.click("form[action='/bundles'] button[type=submit]")]);
  check((await page.textContent("h1"))?.trim() === "detector 1.4.0", "the bundle's page opens after creating it", await page.textContent("h1"));
  check((await page.textContent("main"))?.includes(digest), "the payload digest is the sha256 of the bytes the browser sent");
  const download = await page.getAttribute("a[download]", "href");
  check(/^\/bundles\/[A-Za-z0-9]+\/download$/.test(download ?? ""), "the page links the .drover download", download);
  await shot("bundle-page");
} catch (e) {
  failures.push(`the run stopped: ${e instanceof Error ? e.stack : e}`);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

check(consoleErrors.length === 0, "no console errors or CSP violations", consoleErrors.join("\n  "));
check(dialogs.length === 0, "no dialogs opened", dialogs.join(", "));

if (failures.length > 0) {
  console.error(`\n${failures.length} of ${checks} browser checks failed:\n- ${failures.join("\n- ")}`);
  process.exit(1);
}
console.log(`\nall ${checks} browser checks passed`);
