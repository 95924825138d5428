// What every browser script shares: its inputs from the environment, a list of
// named checks, and a run of Chromium (a fresh profile per launch, so parallel
// runs share nothing) that collects console errors, CSP violations and dialogs.

import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

/** An input of `script` from the environment; exits 2 naming it when missing. */
export function env(script, name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v === undefined || v === "") {
    console.error(`${script}: set ${name} (see the comment at the top of this file)`);
    process.exit(2);
  }
  return v;
}

const failures = [];
let checks = 0;

/** Records one named check. */
export function check(ok, what, detail) {
  checks += 1;
  if (ok) {
    console.log(`ok   ${what}`);
  } else {
    failures.push(`${what}${detail === undefined ? "" : `: ${detail}`}`);
    console.log(`FAIL ${what}${detail === undefined ? "" : `: ${detail}`}`);
  }
}

/** Records that the run stopped before its checks were done. */
export function stopped(e) {
  failures.push(`the run stopped: ${e instanceof Error ? e.stack : e}`);
}

/** The points the device page's chart of `metric` holds now (-1 when it has no chart). */
export function chartPoints(page, metric) {
  return page.$eval(`#charts figure.chart[data-metric="${metric}"]`, (f) => Number(f.dataset.points)).catch(() => -1);
}

/** Waits up to `timeout` ms for the chart of `metric` to hold more than `n` points. */
export function chartGrowsPast(page, metric, n, timeout = 30_000) {
  return page.waitForFunction(
    ([m, k]) => Number(document.querySelector(`#charts figure.chart[data-metric="${m}"]`)?.dataset.points) > k,
    [metric, n],
    { timeout },
  ).catch(() => {});
}

/** Prints the outcome and exits: 0 when every check held, 1 otherwise. */
export function finish() {
  if (failures.length > 0) {
    console.error(`\n${failures.length} of ${checks} browser checks failed:\n- ${failures.join("\n- ")}`);
    process.exit(1);
  }
  console.log(`\nall ${checks} browser checks passed`);
}

/**
 * Runs `body(page, shot)` in a headless Chromium and answers the console errors
 * (CSP violations included) and dialogs seen. `ignoreConsole(message, page)`
 * drops expected errors; `onPage(page)` adds listeners; `shot(name)` saves a
 * screenshot into `out` when it is set.
 */
export async function inChromium({ executablePath, out, ignoreConsole = () => false, onPage = () => {} }, body) {
  const consoleErrors = [];
  const dialogs = [];
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
    // CSP violations also reach the console, but this names the directive.
    await context.addInitScript(() => {
      document.addEventListener("securitypolicyviolation", (e) => {
        console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline code"}`);
      });
    });
    const page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(15_000);
    page.on("console", (m) => {
      if (m.type() !== "error" || ignoreConsole(m, page)) return;
      consoleErrors.push(`${m.location().url || page.url()}: ${m.text()}`);
    });
    page.on("pageerror", (e) => consoleErrors.push(`${page.url()}: uncaught ${e.message}`));
    page.on("dialog", (d) => {
      dialogs.push(d.message());
      d.dismiss().catch(() => {});
    });
    onPage(page);
    const shot = async (name) => {
      if (!out) return;
      mkdirSync(out, { recursive: true });
      await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
    };
    await body(page, shot);
  } catch (e) {
    stopped(e);
  } finally {
    if (context) await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
  return { consoleErrors, dialogs };
}
