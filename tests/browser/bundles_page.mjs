// The bundles page in a real Chromium: sign in as an operator, upload an
// artifact through the page's upload form (static/upload.js, XMLHttpRequest
// with progress events, the CSRF token in a header) watching its progress bar
// reach the end, see an upload the server refuses show the server's message,
// create and sign a bundle
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
import { check, env as envOf, finish, inChromium } from "./lib.mjs";

const env = (name, fallback) => envOf("bundles_page.mjs", name, fallback);

const base = env("DROVER_BASE_URL");
const username = env("DROVER_USERNAME");
const password = env("DROVER_PASSWORD");
const executablePath = env("DROVER_CHROMIUM", "/usr/bin/chromium");
const out = process.env.DROVER_BROWSER_OUT ?? "";


const fileName = "<img src=x onerror=alert(1)>model.onnx";
const bytes = Buffer.alloc(3 * 1024 * 1024 + 5, 0);
for (let i = 0; i < bytes.length; i += 1) bytes[i] = (i * 13) & 0xff;
const digest = createHash("sha256").update(bytes).digest("hex");

// The server refuses names over 200 characters; its message must reach the page.
const tooLong = `${"n".repeat(196)}.onnx`;
const upload = "/bundles/artifacts";

// Records what the upload form shows (the bar's value and max, the status
// line) in sessionStorage, which outlives the reload after a success.
function watchUpload() {
  const form = document.querySelector("form[data-upload]");
  const bar = form.querySelector("progress");
  const status = form.querySelector("[data-upload-status]");
  const seen = [];
  const note = () => {
    seen.push({ hidden: bar.hidden, value: bar.value, max: bar.max, status: status.textContent });
    sessionStorage.setItem("upload-seen", JSON.stringify(seen));
  };
  new MutationObserver(note).observe(form, { attributes: true, childList: true, characterData: true, subtree: true });
}

const { consoleErrors, dialogs } = await inChromium({
  executablePath,
  out,
  // Chromium logs the refused upload's 400, which this script provokes.
  ignoreConsole: (m) => m.text().includes("400") && (m.location().url ?? "").includes(upload),
}, async (page, shot) => {

  await page.goto(`${base}/login`);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click("button[type=submit]")]);
  const res = await page.goto(`${base}/bundles`);
  check(res?.status() === 200, "the bundles page answers 200", res?.status());
  check((await page.textContent("main"))?.includes("No bundles yet"), "an empty fleet says what to do first");

  // Upload through the page: the script posts the file and reloads on success.
  await page.setInputFiles("#artifact-file", { name: fileName, mimeType: "application/octet-stream", buffer: bytes });
  await page.evaluate(watchUpload);
  const [stored] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === "/bundles/artifacts" && r.request().method() === "POST"),
    page.waitForEvent("load"),
    page.click("form[data-upload] button[type=submit]"),
  ]);
  check(stored.status() === 201, "the upload is stored (201)", stored.status());
  await page.waitForSelector("fieldset label.check");
  const seen = JSON.parse((await page.evaluate(() => sessionStorage.getItem("upload-seen"))) ?? "[]");
  const bars = seen.filter((s) => !s.hidden);
  const last = bars.at(-1) ?? {};
  check(bars.length > 0 && last.max === bytes.length && last.value === bytes.length,
    "the progress bar was shown and reached its end", JSON.stringify(last));
  const statuses = seen.map((s) => s.status);
  check(statuses.includes(`Uploading ${fileName}: 100 %`) && statuses.at(-1) === "Uploaded.",
    "the status line counted to 100 % and said Uploaded.", JSON.stringify([...new Set(statuses)]));
  const listed = await page.$$eval("main table tbody tr td:first-child", (tds) => tds.map((td) => td.textContent.trim()));
  check(listed.includes(fileName), "the artifact is listed with its name as text", JSON.stringify(listed));
  check((await page.$$("main img")).length === 0, "markup in the file name never becomes an element");
  await shot("bundles-uploaded");

  // An upload the server refuses: its message shows on the page, no reload.
  await page.evaluate(() => { window.__droverNoReload = true; });
  await page.setInputFiles("#artifact-file", { name: tooLong, mimeType: "application/octet-stream", buffer: Buffer.from("x") });
  const [refused] = await Promise.all([
    page.waitForResponse((r) => new URL(r.url()).pathname === upload && r.request().method() === "POST"),
    page.click("form[data-upload] button[type=submit]"),
  ]);
  const detail = (await refused.json().catch(() => ({}))).detail ?? "";
  check(refused.status() === 400 && detail === "name: must have at most 200 characters", "the server refuses a 201-character name", `${refused.status()} ${detail}`);
  await page.waitForFunction(() => document.querySelector("[data-upload-status]")?.textContent.startsWith("Upload failed"), null, { timeout: 5_000 }).catch(() => {});
  const shown = await page.textContent("[data-upload-status]");
  check(shown === `Upload failed: ${detail}`, "the page shows the server's message", shown);
  check(await page.evaluate(() => window.__droverNoReload === true), "and stays as it was, not reloaded");
  check(await page.isEnabled("form[data-upload] button[type=submit]"), "the upload button works again");
  await shot("bundles-upload-refused");

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
});

check(consoleErrors.length === 0, "no console errors or CSP violations", consoleErrors.join("\n  "));
check(dialogs.length === 0, "no dialogs opened", dialogs.join(", "));

finish();
