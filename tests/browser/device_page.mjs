// The dashboard in a real Chromium: sign in through the login form (changing
// a one-time password when the server asks), then check a device's latest
// values, installed versions and uPlot charts, readings that arrive while
// the page is open growing its charts without a reload, an alert one of them
// fires marked on its chart and listed without a reload, the range buttons
// (by mouse and keyboard), the empty and missing cases, and the overview's
// presence counts, with no console errors or CSP violations.
//
// Started by tests/e2e/browser.rs, which runs a real server and sends real
// telemetry first. Input (environment):
//   DROVER_BASE_URL      http://127.0.0.1:PORT
//   DROVER_USERNAME, DROVER_PASSWORD, DROVER_NEW_PASSWORD (used if the server
//                        asks for a new password)
//   DROVER_EXPECT        JSON: {live:{id,name,latest:{metric:value},versions:[text],charts:[metric],
//                        health:{label:text},installed:[[name,kind,version]],fresh:metric,
//                        alert:{rule,metric,severity}},
//                        quiet:{id,latest:{metric:value}}, never:{id},
//                        overview:{total,accepted,online,offline,never}}
//   DROVER_LIVE_SIGNAL   a file this script creates once the live device's page
//                        is drawn; the test then sends that device a reading a
//                        second, of temp_c (the first firing the rule live.alert)
//                        and, after ten seconds, also of the metric live.fresh
//   DROVER_CHROMIUM      the browser (default /usr/bin/chromium)
//   DROVER_BROWSER_OUT   a directory for screenshots (optional)
// Exits 0 when every check holds; otherwise prints each failure and exits 1.

import { writeFileSync } from "node:fs";
import { check, env as envOf, finish, inChromium } from "./lib.mjs";

const env = (name, fallback) => envOf("device_page.mjs", name, fallback);

const base = env("DROVER_BASE_URL");
const username = env("DROVER_USERNAME");
const password = env("DROVER_PASSWORD");
const newPassword = process.env.DROVER_NEW_PASSWORD ?? "";
const expect = JSON.parse(env("DROVER_EXPECT"));
const liveSignal = env("DROVER_LIVE_SIGNAL");
const executablePath = env("DROVER_CHROMIUM", "/usr/bin/chromium");
const out = process.env.DROVER_BROWSER_OUT ?? "";

// Deep equality that ignores the order of object keys.
const canonical = (v) =>
  Array.isArray(v) ? v.map(canonical)
    : v && typeof v === "object" ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical(v[k])]))
      : v;
const same = (a, b) => JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));

// Failed requests other than the unknown-device page opened on purpose.
const badResponses = [];
const missing = `/devices/${expect.missing}`;

const { consoleErrors, dialogs } = await inChromium(
  {
    executablePath,
    out,
    // Chromium logs the 404 of the unknown-device page we open on purpose.
    ignoreConsole: (m, page) =>
      new URL(m.location().url || page.url(), base).pathname === missing && m.text().includes("404"),
    onPage: (page) =>
      page.on("response", (r) => {
        if (r.status() >= 400 && new URL(r.url()).pathname !== missing) badResponses.push(`${r.status()} ${r.url()}`);
      }),
  },
  async (page, shot) => {
  await signIn(page);
  await livePage(page, shot);
  await quietPages(page);
  await overview(page, shot);
  },
);

check(consoleErrors.length === 0, "no console errors or CSP violations", consoleErrors.join("\n  "));
check(dialogs.length === 0, "no dialogs opened (markup from device data never runs)", dialogs.join(", "));
check(badResponses.length === 0, "no failed requests", badResponses.join(", "));

finish();

async function signIn(page) {
  await page.goto(`${base}/login`);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await Promise.all([page.waitForURL((u) => !u.pathname.startsWith("/login")), page.click("button[type=submit]")]);
  if (new URL(page.url()).pathname === "/account") {
    check(newPassword !== "", "the server asks for a new password and one was given");
    await page.fill("#current_password", password);
    await page.fill("#new_password", newPassword);
    await page.fill("#confirm_password", newPassword);
    await Promise.all([page.waitForURL((u) => u.search.includes("done=password")), page.click("form[action='/account/password'] button[type=submit]")]);
  }
  const res = await page.goto(`${base}/`);
  check(res?.status() === 200, "signed in: the overview answers 200", res?.status());
}

async function livePage(page, shot) {
  const live = expect.live;
  const res = await page.goto(`${base}/devices/${live.id}`);
  check(res?.status() === 200, "the device page answers 200", res?.status());
  check((await page.textContent("h1"))?.trim() === live.name, "the device's name is shown as text", await page.textContent("h1"));

  const rows = await page.$$eval("#latest tbody tr", (trs) =>
    trs.map((tr) => Array.from(tr.querySelectorAll("td"), (td) => td.textContent.trim())),
  );
  const shown = Object.fromEntries(rows.map(([metric, value]) => [metric, value]));
  check(same(shown, live.latest), "the latest-values table shows each metric's newest reading", `${JSON.stringify(shown)} != ${JSON.stringify(live.latest)}`);
  for (const row of rows) {
    check(/ago|just now/.test(row[2]), `"when" of ${row[0]} reads as an age`, row[2]);
    for (const v of live.versions) {
      check(row[3].includes(v), `versions of ${row[0]} include "${v}"`, row[3]);
    }
  }
  check((await page.$$("#latest img, #latest script")).length === 0, "markup in version names stays text");

  const health = await page.$$eval("#health dt", (dts) =>
    Object.fromEntries(dts.map((dt) => [dt.textContent.trim(), dt.nextElementSibling?.textContent.trim() ?? ""])),
  );
  for (const [key, value] of Object.entries(live.health)) {
    check(health[key] === value, `health shows ${key}`, `${JSON.stringify(health[key])} != ${JSON.stringify(value)}`);
  }

  // The charts: one figure per metric, each with a drawn canvas.
  await page.waitForFunction(
    (n) => document.querySelectorAll("#charts .uplot canvas").length >= n,
    live.charts.length,
  ).catch(() => {});
  const charts = await page.$$eval("#charts figure.chart", (figs) =>
    figs.map((f) => {
      const canvas = f.querySelector(".uplot canvas");
      let inked = 0;
      if (canvas) {
        const ctx = canvas.getContext("2d");
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 3; i < data.length; i += 4) if (data[i] > 0) inked += 1;
      }
      const box = canvas?.getBoundingClientRect();
      return {
        metric: f.querySelector("figcaption code")?.textContent ?? "",
        width: box?.width ?? 0,
        height: box?.height ?? 0,
        inked,
      };
    }),
  );
  check(same(charts.map((c) => c.metric), live.charts), "one uPlot chart per metric, by name", JSON.stringify(charts.map((c) => c.metric)));
  for (const c of charts) {
    check(c.width > 100 && c.height > 50, `the chart of ${c.metric} has a size`, `${c.width}x${c.height}`);
    check(c.inked > 500, `the chart of ${c.metric} drew something`, `${c.inked} painted pixels`);
  }
  const status = await page.$eval("#charts [data-charts-status]", (el) => (el.hidden ? "" : el.textContent));
  check(status === "", "no chart status message is left showing", status);

  const installed = await page.$$eval("#installed tbody tr", (trs) =>
    trs.map((tr) => Array.from(tr.querySelectorAll("td"), (td) => td.textContent.trim())),
  );
  check(same(installed, live.installed), "installed versions come from the health report", JSON.stringify(installed));
  check((await page.textContent("#event-list"))?.includes("online"), "the events list its coming online");
  check((await page.textContent("#no-updates"))?.startsWith("No updates yet:"), "an empty update history says what fills it");
  await shot("device");

  await liveReadings(page, live, shot);
  await ranges(page, live, shot);
}

// Readings sent while the page is open: new points and a new chart, no reload.
async function liveReadings(page, live, shot) {
  await page.waitForFunction(() => document.querySelector("#live-status")?.textContent === "Live")
    .catch(() => {});
  check((await page.textContent("#live-status")) === "Live", "the live badge says Live", await page.textContent("#live-status"));
  await page.evaluate(() => { window.__droverNoReload = true; });
  const points = (metric) =>
    page.$eval(`#charts figure.chart[data-metric="${metric}"]`, (f) => Number(f.dataset.points)).catch(() => -1);
  const before = await points("temp_c");
  check(before === 30, "temp_c's chart starts with the thirty readings sent", before);
  check((await page.$$(`#charts figure.chart[data-metric="${live.fresh}"]`)).length === 0, `${live.fresh} is not charted yet`);
  // Loading the range again would draw new figures; this one must grow in place.
  const quiet = await page.$$eval("#charts figure.chart", (fs) => fs.map((f) => f.dataset.alerts));
  check(quiet.length > 0 && quiet.every((n) => n === "0"), "no chart marks an alert before one fires", JSON.stringify(quiet));
  check((await page.textContent("#no-alerts"))?.startsWith("No alerts: rules are under Alerts"), "the Alerts section says none fired");
  await page.$eval('#charts figure.chart[data-metric="temp_c"]', (f) => { f.dataset.testMark = "before"; });
  writeFileSync(liveSignal, "open\n");

  await page.waitForFunction(
    (n) => Number(document.querySelector('#charts figure.chart[data-metric="temp_c"]')?.dataset.points) > n,
    before,
    { timeout: 30_000 },
  ).catch(() => {});
  const grown = await page.$eval('#charts figure.chart[data-metric="temp_c"]', (f) => ({
    points: Number(f.dataset.points),
    same: f.dataset.testMark === "before",
    drawn: (f.querySelector(".uplot canvas")?.width ?? 0) > 0,
  })).catch(() => ({ points: -1, same: false, drawn: false }));
  check(grown.points > before, "a reading sent over MQTT becomes a new point of the open chart", `${before} → ${grown.points}`);
  check(grown.same && grown.drawn, "added to the chart drawn, not by loading the charts again", JSON.stringify(grown));
  await liveAlert(page, live, shot);

  await page.waitForSelector(`#charts figure.chart[data-metric="${live.fresh}"] .uplot canvas`, { timeout: 30_000 })
    .catch(() => {});
  const fresh = await points(live.fresh);
  check(fresh >= 1, `a metric first sent while the page is open (${live.fresh}) gets a chart`, fresh);
  const names = await page.$$eval("#charts figure.chart", (figs) => figs.map((f) => f.dataset.metric));
  check(same(names, [...live.charts, live.fresh].sort()), "the charts stay in name order", JSON.stringify(names));
  await page.waitForFunction(
    (m) => Array.from(document.querySelectorAll("#latest tbody td code"), (c) => c.textContent).includes(m),
    live.fresh,
    { timeout: 15_000 },
  ).catch(() => {});
  const latest = await page.$$eval("#latest tbody td code", (cs) => cs.map((c) => c.textContent));
  check(latest.includes(live.fresh), "the latest values follow without a reload", JSON.stringify(latest));
  check(await page.evaluate(() => window.__droverNoReload === true), "all of it without a reload");
}

// How many pixels of each chart's canvas are painted strongly red (the
// colours of a critical alert: --bad in the light and the dark theme).
function reddened(page) {
  return page.$$eval("#charts figure.chart", (figs) => Object.fromEntries(figs.map((f) => {
    const canvas = f.querySelector(".uplot canvas");
    let red = 0;
    if (canvas) {
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 0 && data[i] - data[i + 1] > 60 && data[i] - data[i + 2] > 60) red += 1;
      }
    }
    return [f.dataset.metric, red];
  })));
}

// The first live reading fires the rule live.alert: the open page marks it on
// its metric's chart (the same chart, drawn again) and lists it, no reload.
async function liveAlert(page, live, shot) {
  const want = live.alert;
  const figure = `#charts figure.chart[data-metric="${want.metric}"]`;
  await page.waitForFunction((sel) => document.querySelector(sel)?.dataset.alerts === "1", figure, { timeout: 30_000 })
    .catch(() => {});
  const marked = await page.$eval(figure, (f) => ({
    alerts: f.dataset.alerts,
    same: f.dataset.testMark === "before",
    legend: Array.from(f.querySelectorAll("[data-chart-alerts] p"), (p) => p.textContent),
  })).catch(() => ({ alerts: "", same: false, legend: [] }));
  check(marked.alerts === "1", `the ${want.metric} chart marks the alert that fired while it was open`, JSON.stringify(marked));
  check(marked.same, "on the chart drawn, not by loading the charts again", JSON.stringify(marked));
  check(marked.legend.length === 1 && marked.legend[0].startsWith(`alert: ${want.rule} (${want.severity}) fired `)
    && marked.legend[0].endsWith(", firing"), "a line under the chart names it, as text", JSON.stringify(marked.legend));
  const others = await page.$$eval(`#charts figure.chart:not([data-metric="${want.metric}"])`, (fs) => fs.map((f) => f.dataset.alerts));
  check(others.length > 0 && others.every((n) => n === "0"), "other metrics' charts mark nothing", JSON.stringify(others));
  const red = await reddened(page);
  // At least the line where it fired: the band to the right edge is a few
  // seconds, a pixel or two wide, on the hour's chart.
  check(red[want.metric] > 50, `the ${want.metric} chart paints it in the critical colour`, JSON.stringify(red));
  check(Object.entries(red).every(([m, n]) => m === want.metric || n === 0), "and no other chart does", JSON.stringify(red));

  await page.waitForSelector("#device-alert-list tbody tr", { timeout: 15_000 }).catch(() => {});
  const rows = await page.$$eval("#device-alert-list tbody tr", (trs) =>
    trs.map((tr) => Array.from(tr.querySelectorAll("td"), (td) => td.textContent.trim())));
  check(rows.length === 1 && rows[0][0] === want.rule && rows[0][1] === want.severity && rows[0][5] === "firing",
    "the Alerts section lists it, firing", JSON.stringify(rows));
  check((await page.$$("#device-alerts img, #device-alerts script, [data-chart-alerts] img")).length === 0,
    "markup in the rule's name stays text");
  check(await page.evaluate(() => window.__droverNoReload === true), "the alert shows without a reload");
  await shot("device-alert");
}

function pressed(page) {
  return page.$$eval("#chart-range button", (bs) =>
    bs.filter((b) => b.getAttribute("aria-pressed") === "true").map((b) => b.dataset.range));
}

// Waits until the charts show `range`, loaded.
function ready(page, range) {
  return page.waitForFunction((r) => {
    const el = document.getElementById("charts");
    return el?.dataset.range === r && el?.dataset.state === "ready";
  }, range, { timeout: 15_000 }).catch(() => {});
}

function captions(page) {
  return page.$$eval("#charts figcaption", (fs) => fs.map((f) => f.textContent));
}

// The range buttons: a labelled group, one pressed, by mouse and by keyboard.
async function ranges(page, live, shot) {
  const group = await page.$eval("#chart-range", (g) => ({
    role: g.getAttribute("role"),
    label: g.getAttribute("aria-label"),
    hidden: g.hidden,
    buttons: Array.from(g.querySelectorAll("button"), (b) => b.textContent.trim()),
  }));
  check(group.role === "group" && group.label === "Chart range" && !group.hidden, "the range buttons are a labelled group", JSON.stringify(group));
  check(same(group.buttons, ["1 h", "24 h", "7 d"]), "offering 1 h, 24 h and 7 d", JSON.stringify(group.buttons));
  check(same(await pressed(page), ["1h"]), "the hour is pressed first", JSON.stringify(await pressed(page)));

  await page.click('#chart-range button[data-range="24h"]');
  await ready(page, "24h");
  check(same(await pressed(page), ["24h"]), "a click presses 24 h and releases 1 h", JSON.stringify(await pressed(page)));
  const day = await captions(page);
  check(day.length === live.charts.length + 1 && day.every((c) => c.includes("5-minute buckets, with min and max")),
    "24 h charts five-minute buckets with min and max", JSON.stringify(day));
  check(new URL(page.url()).searchParams.get("range") === "24h", "the address keeps the range", page.url());
  await shot("device-24h");

  await page.focus('#chart-range button[data-range="7d"]');
  await page.keyboard.press("Space");
  await ready(page, "7d");
  check(same(await pressed(page), ["7d"]), "Space on 7 d presses it", JSON.stringify(await pressed(page)));
  const week = await captions(page);
  check(week.length > 0 && week.every((c) => c.includes("1-hour buckets")), "7 d charts one-hour buckets", JSON.stringify(week));

  await page.focus('#chart-range button[data-range="1h"]');
  await page.keyboard.press("Enter");
  await ready(page, "1h");
  check(same(await pressed(page), ["1h"]), "Enter on 1 h presses it again", JSON.stringify(await pressed(page)));
  const hour = await captions(page);
  check(hour.some((c) => c === "temp_c"), "the hour charts single readings again", JSON.stringify(hour));
  const marks = await page.$eval(`#charts figure.chart[data-metric="${live.alert.metric}"]`, (f) => f.dataset.alerts)
    .catch(() => "");
  check(marks === "1", "and the charts loaded again mark the alert", marks);
  check(await page.evaluate(() => window.__droverNoReload === true), "switching ranges reloads nothing but the charts");
}

async function quietPages(page) {
  // A device whose only reading is older than the charted hour.
  const quiet = expect.quiet;
  await page.goto(`${base}/devices/${quiet.id}`);
  const rows = await page.$$eval("#latest tbody tr", (trs) =>
    trs.map((tr) => Array.from(tr.querySelectorAll("td"), (td) => td.textContent.trim())),
  );
  check(same(Object.fromEntries(rows.map(([m, v]) => [m, v])), quiet.latest), "an old reading is still the latest value", JSON.stringify(rows));
  await ready(page, "1h");
  check((await page.textContent("#charts-status"))?.includes("No readings in the last hour"), "an hour without readings says so");
  check((await page.$$("#charts figure")).length === 0, "and draws no chart");
  await page.click('#chart-range button[data-range="24h"]');
  await ready(page, "24h");
  const day = await page.$$eval("#charts figure.chart", (figs) => figs.map((f) => f.dataset.metric));
  check(same(day, ["temp_c"]), "the last 24 hours chart its reading of two hours ago", JSON.stringify(day));

  // A device that never sent anything.
  await page.goto(`${base}/devices/${expect.never.id}`);
  check((await page.textContent("#no-readings"))?.includes("no readings yet"), "a silent device says it sent no readings yet");
  await ready(page, "1h");
  check((await page.textContent("#charts-status"))?.includes("No readings in the last hour"), "and that the last hour is empty");
  check((await page.textContent("#no-health"))?.startsWith("No health report yet:"), "and that no health report came yet");
  check((await page.textContent("#no-events"))?.startsWith("No events yet:"), "and that nothing happened yet");

  // A device that does not exist gets the dashboard's 404 page.
  const res = await page.goto(`${base}/devices/${expect.missing}`);
  check(res?.status() === 404, "an unknown device answers 404", res?.status());
  check((await page.textContent("h1"))?.includes("Not Found"), "with the error page", await page.textContent("h1"));
}

async function overview(page, shot) {
  const want = expect.overview;
  await page.goto(`${base}/`);
  const n = async (id) => Number((await page.textContent(`#${id} .n`))?.trim());
  const got = {
    total: await n("devices-total"),
    accepted: await n("devices-accepted"),
    online: await n("presence-online"),
    offline: await n("presence-offline"),
    never: await n("presence-never"),
  };
  check(same(got, want), "the overview counts devices by presence", `${JSON.stringify(got)} != ${JSON.stringify(want)}`);
  await shot("overview");
  // Each count links to the device list filtered the same way.
  for (const [presence, name] of [["online", expect.live.name], ["offline", expect.quiet.name], ["never", expect.never.name]]) {
    await page.goto(`${base}/`);
    await Promise.all([page.waitForURL((u) => u.pathname === "/devices"), page.click(`#presence-${presence}`)]);
    const names = await page.$$eval("table tbody tr td:first-child a", (as) => as.map((a) => a.textContent.trim()));
    check(same(names, [name]), `the ${presence} count links to a list of exactly those devices`, JSON.stringify(names));
    check((await page.$eval("#f-presence", (s) => s.value)) === presence, `the list's presence filter shows ${presence}`);
  }
}
