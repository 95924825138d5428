// The device page's charts: fetches each metric over the chosen range (1 h,
// 24 h or 7 d) as JSON from the element's data-series URL (the CSP forbids
// inline scripts) and draws one uPlot chart per metric. Readings that live.js
// hands over as "drover:readings" events are added without asking the
// server again: a new point on a chart of single readings, or a moved last
// bucket (mean, min, max) on a chart of buckets, on every range; the window
// slides forward and drops what falls out of it. A metric not charted yet,
// or an hour grown too busy to draw point by point, loads the range again.
// The device's alerts in the range (from the same answer) are marked on the
// chart of their metric: a band from firing to resolving (or to the right
// edge while firing) and a line where each fired, coloured by severity, with
// a line of text under the chart; when a live refresh of the page's Alerts
// section shows that an alert fired or resolved, they are fetched again.
// Text from the server only ever goes into textContent, never into markup.
"use strict";
(() => {
  const root = document.getElementById("charts");
  if (!root) return;
  const status = root.querySelector("[data-charts-status]");
  const picker = document.getElementById("chart-range");
  const say = (text) => {
    status.textContent = text;
    status.hidden = false;
  };
  if (typeof uPlot === "undefined") {
    say("The chart library did not load; reload the page.");
    return;
  }

  // The server's ranges (telemetry::views::ChartRange): length, and the
  // bucket width their windows start on (the hour starts anywhere).
  const RANGES = {
    "1h": { span: 3_600_000, align: 1, empty: "No readings in the last hour." },
    "24h": { span: 86_400_000, align: 300_000, empty: "No readings in the last 24 hours." },
    "7d": { span: 604_800_000, align: 3_600_000, empty: "No readings in the last 7 days." },
  };
  // As many charts as the server sends at most (views::MAX_CHARTS).
  const MAX_CHARTS = 24;
  // Twice the server's raw limit (views::RAW_LIMIT): past it a chart of single
  // readings is loaded again, and the server answers with one-minute buckets.
  const RAW_CEILING = 1440;

  const css = getComputedStyle(document.documentElement);
  const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const accent = color("--accent", "#1f5f8b");
  const muted = color("--muted", "#5b6577");
  const line = color("--line", "#dde1e7");
  const text = color("--text", "#1d2430");
  const severities = {
    critical: color("--bad", "#b42318"),
    warning: color("--warn", "#9a6700"),
    info: muted,
  };
  const severityOf = (a) => (Object.hasOwn(severities, a.severity) ? a.severity : "info");
  const band = /^#[0-9a-f]{6}$/i.test(accent)
    ? `rgba(${[1, 3, 5].map((i) => parseInt(accent.slice(i, i + 2), 16)).join(",")},0.14)`
    : "rgba(31,95,139,0.14)";
  const axis = { stroke: text, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
  const height = 180;
  const width = (el) => Math.max(200, Math.floor(el.clientWidth));

  let range = RANGES[root.dataset.range] ? root.dataset.range : "1h";
  // Window in the server's clock: the page's clock may be off, so the
  // server's "to" and the time since it answered place the window.
  let clockOffset = 0;
  let from = 0;
  let to = 0;
  const charts = new Map(); // metric → chart state, in the order drawn
  let loading = 0; // the number of the load under way (0: none)
  let loads = 0;
  let queued = []; // readings that arrived while loading
  let reloadTimer = 0;
  let drawFrame = 0;
  // The alerts of the newest answer shown, and the number of the fetch that
  // brought them: a load and a fetch of the alerts alone may cross.
  let alerts = [];
  let alertsAsked = 0;
  let alertsShown = 0;
  // As many text lines of alerts as a chart shows; the Alerts section lists them all.
  const LEGEND_LINES = 5;

  function slide(newest) {
    const r = RANGES[range];
    const now = Math.max(Date.now() + clockOffset, newest + 1);
    if (now <= to) return;
    to = now;
    const start = to - r.span;
    from = start - (start % r.align);
  }

  const bucketCaption = (step) =>
    step % 3600 === 0 ? `${step / 3600}-hour` : `${step / 60}-minute`;

  function addChart(s) {
    const figure = document.createElement("figure");
    figure.className = "chart";
    figure.dataset.metric = s.metric;
    const caption = document.createElement("figcaption");
    const name = document.createElement("code");
    name.textContent = s.metric;
    caption.append(name);
    const rolled = Boolean(s.step) && Array.isArray(s.min) && Array.isArray(s.max);
    if (rolled) {
      caption.append(` · mean of ${bucketCaption(s.step)} buckets, with min and max`);
    }
    const plot = document.createElement("div");
    const legend = document.createElement("div");
    legend.dataset.chartAlerts = "";
    figure.append(caption, plot, legend);
    root.append(figure);

    const lines = [{}, { label: rolled ? "mean" : "value", stroke: accent, width: 2, points: { show: !rolled } }];
    if (rolled) {
      lines.push({ label: "min", stroke: muted, width: 1, dash: [4, 4] });
      lines.push({ label: "max", stroke: muted, width: 1, dash: [4, 4] });
    }
    const c = {
      figure,
      plot,
      legend,
      alerts: [],
      step: rolled ? s.step * 1000 : 0,
      ts: s.ts.slice(),
      value: s.value.slice(),
      min: rolled ? s.min.slice() : null,
      max: rolled ? s.max.slice() : null,
      // Older servers sent no counts; one reading per bucket is the safe guess.
      count: rolled ? (Array.isArray(s.count) ? s.count.slice() : s.ts.map(() => 1)) : null,
    };
    c.chart = new uPlot({
      width: width(plot),
      height,
      // The axis always spans the whole window, however few the readings.
      scales: { x: { time: true, range: () => [from / 1000, to / 1000] } },
      axes: [axis, axis],
      series: lines,
      bands: rolled ? [{ series: [3, 2], fill: band }] : [],
      hooks: { draw: [(u) => markAlerts(u, c)] },
    }, columns(c), plot);
    figure.dataset.points = String(c.ts.length);
    charts.set(s.metric, c);
    showAlerts(c, s.metric);
  }

  // Keeps the alerts a chart can show: well-formed, and on a metric of
  // readings (health figures and heartbeats have no chart here).
  function usableAlerts(list) {
    if (!Array.isArray(list)) return [];
    return list.filter((a) =>
      a && typeof a.metric === "string" && typeof a.rule_name === "string"
      && !a.metric.startsWith("health.") && a.metric !== "heartbeat_missing"
      && Number.isFinite(a.fired_at) && (a.resolved_at == null || Number.isFinite(a.resolved_at)));
  }

  const clockFormat = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
  // "14:05" today, "Mar 3, 14:05" on another day (the week's charts).
  function clock(ms) {
    const d = new Date(ms);
    if (d.toDateString() === new Date().toDateString()) return d.toLocaleTimeString([], clockFormat);
    return d.toLocaleString([], { month: "short", day: "numeric", ...clockFormat });
  }

  // Gives chart `c` of `metric` its alerts: the count, the text lines under
  // it, and the marks drawn by markAlerts.
  function showAlerts(c, metric) {
    c.alerts = alerts.filter((a) => a.metric === metric);
    c.figure.dataset.alerts = String(c.alerts.length);
    const lines = c.alerts.slice(0, LEGEND_LINES).map((a) => {
      const p = document.createElement("p");
      p.className = `chart-alert severity-${severityOf(a)}`;
      const end = a.resolved_at == null ? "firing" : `resolved ${clock(a.resolved_at)}`;
      p.textContent = `alert: ${a.rule_name} (${severityOf(a)}) fired ${clock(a.fired_at)}, ${end}`;
      return p;
    });
    if (c.alerts.length > LEGEND_LINES) {
      const more = document.createElement("p");
      more.className = "muted";
      more.textContent = `and ${c.alerts.length - LEGEND_LINES} older alerts in this range`;
      lines.push(more);
    }
    c.legend.replaceChildren(...lines);
    c.legend.hidden = lines.length === 0;
  }

  // uPlot's draw hook: over the plotted area, a translucent band while each
  // alert fired and a line where it began firing, in its severity's colour.
  function markAlerts(u, c) {
    if (c.alerts.length === 0) return;
    const { ctx, bbox } = u;
    const left = bbox.left;
    const right = bbox.left + bbox.width;
    ctx.save();
    ctx.beginPath();
    ctx.rect(bbox.left, bbox.top, bbox.width, bbox.height);
    ctx.clip();
    for (const a of c.alerts) {
      const paint = severities[severityOf(a)];
      const start = u.valToPos(a.fired_at / 1000, "x", true);
      const end = a.resolved_at == null ? right : u.valToPos(a.resolved_at / 1000, "x", true);
      const x0 = Math.max(start, left);
      const x1 = Math.min(end, right);
      if (x1 > x0) {
        ctx.globalAlpha = 0.14;
        ctx.fillStyle = paint;
        ctx.fillRect(x0, bbox.top, x1 - x0, bbox.height);
      }
      if (start >= left && start <= right) {
        ctx.globalAlpha = 1;
        ctx.strokeStyle = paint;
        ctx.lineWidth = Math.max(1, Math.round(window.devicePixelRatio || 1));
        ctx.beginPath();
        ctx.moveTo(start, bbox.top);
        ctx.lineTo(start, bbox.top + bbox.height);
        ctx.stroke();
      }
    }
    ctx.restore();
  }

  // Takes the alerts of the answer to fetch number `n`, unless a later
  // fetch's are shown already.
  function takeAlerts(list, n) {
    if (n < alertsShown) return false;
    alertsShown = n;
    alerts = usableAlerts(list);
    return true;
  }

  function columns(c) {
    const cols = [c.ts.map((t) => t / 1000), c.value];
    if (c.step) cols.push(c.min, c.max);
    return cols;
  }

  function clear() {
    for (const c of charts.values()) {
      c.chart.destroy();
      c.figure.remove();
    }
    charts.clear();
    for (const el of root.querySelectorAll("[data-charts-more]")) el.remove();
  }

  function draw(data, n) {
    takeAlerts(data.alerts, n);
    clear();
    clockOffset = data.to - Date.now();
    from = data.from;
    to = data.to;
    const series = Array.isArray(data.series) ? data.series : [];
    if (series.length === 0) {
      say(RANGES[range].empty);
    } else {
      status.hidden = true;
    }
    for (const s of series) addChart(s);
    if (data.omitted > 0) {
      const more = document.createElement("p");
      more.className = "muted";
      more.dataset.chartsMore = "";
      more.textContent = `${data.omitted} more metrics have readings in this range; the API has them all.`;
      root.append(more);
    }
  }

  // The series and alerts of the range shown, as the server answers them.
  async function fetchSeries() {
    const url = new URL(root.dataset.series, location.href);
    url.searchParams.set("range", range);
    const res = await fetch(url, {
      credentials: "same-origin",
      redirect: "manual",
      headers: { Accept: "application/json" },
    });
    if (res.type === "opaqueredirect") {
      throw new Error("Your session has ended; reload the page to sign in again.");
    }
    if (!res.ok) {
      throw new Error(`The charts could not be loaded (HTTP ${res.status}); reload the page to try again.`);
    }
    return res.json();
  }

  async function load() {
    const mine = ++loads;
    const n = ++alertsAsked;
    loading = mine;
    root.setAttribute("aria-busy", "true");
    root.dataset.state = "loading";
    try {
      const data = await fetchSeries();
      if (mine !== loads) return; // a newer load (another range) won
      draw(data, n);
      root.dataset.state = "ready";
    } catch (err) {
      if (mine !== loads) return;
      clear();
      say(err instanceof Error ? err.message : "The charts could not be loaded.");
      root.dataset.state = "failed";
    } finally {
      if (mine === loads) {
        loading = 0;
        root.removeAttribute("aria-busy");
        const waiting = queued;
        queued = [];
        if (root.dataset.state === "ready") add(waiting);
      }
    }
  }

  // Loads the range again soon, once for a burst of readings.
  function reloadSoon() {
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = 0;
      load();
    }, 500);
  }

  // Index of the first element of sorted `list` not less than `t`.
  function lowerBound(list, t) {
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (list[mid] < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  function addReading(c, ts, value) {
    if (!c.step) {
      const i = lowerBound(c.ts, ts);
      // Already drawn: the load and the live stream both carried it.
      if (c.ts[i] === ts) return;
      c.ts.splice(i, 0, ts);
      c.value.splice(i, 0, value);
      return;
    }
    // Buckets start at multiples of the step, as the server's rollups do.
    // A reading both in a load's answer and in a live event right after it
    // is counted twice here: min and max stay right, the mean moves a hair.
    const b = ts - (((ts % c.step) + c.step) % c.step);
    const i = lowerBound(c.ts, b);
    if (c.ts[i] === b) {
      const n = c.count[i];
      c.value[i] = (c.value[i] * n + value) / (n + 1);
      c.count[i] = n + 1;
      c.min[i] = Math.min(c.min[i], value);
      c.max[i] = Math.max(c.max[i], value);
    } else {
      c.ts.splice(i, 0, b);
      c.value.splice(i, 0, value);
      c.count.splice(i, 0, 1);
      c.min.splice(i, 0, value);
      c.max.splice(i, 0, value);
    }
  }

  // Drops what the window has left behind: readings before its start, and
  // buckets that end before it.
  function prune(c) {
    const cut = lowerBound(c.ts, from - (c.step ? c.step - 1 : 0));
    if (cut === 0) return;
    for (const col of [c.ts, c.value, c.min, c.max, c.count]) {
      if (col) col.splice(0, cut);
    }
  }

  function redraw() {
    drawFrame = 0;
    for (const c of charts.values()) {
      prune(c);
      c.chart.setData(columns(c));
      c.figure.dataset.points = String(c.ts.length);
    }
  }

  function add(points) {
    if (points.length === 0) return;
    if (loading) {
      for (const p of points) queued.push(p);
      return;
    }
    let newest = 0;
    let unknown = false;
    for (const p of points) {
      if (!Array.isArray(p) || p.length !== 3) continue;
      const [metric, ts, value] = p;
      if (typeof metric !== "string" || !Number.isFinite(ts) || !Number.isFinite(value)) continue;
      newest = Math.max(newest, ts);
      const c = charts.get(metric);
      if (!c) {
        unknown = unknown || charts.size < MAX_CHARTS;
        continue;
      }
      if (ts < from) continue;
      addReading(c, ts, value);
      if (!c.step && c.ts.length > RAW_CEILING) unknown = true;
    }
    slide(newest);
    if (unknown) {
      queued = [];
      reloadSoon();
      return;
    }
    if (!drawFrame) drawFrame = requestAnimationFrame(redraw);
  }

  document.addEventListener("drover:readings", (event) => {
    add(Array.isArray(event.detail) ? event.detail : []);
  });

  // The Alerts section's key as the server last rendered it (live.js swaps
  // the section on every refresh of the device's parts).
  const alertsKey = () => document.getElementById("device-alerts")?.dataset.alertsKey ?? "";
  let alertsSeen = alertsKey();

  // Fetches the alerts again and marks them on the charts drawn, which stay
  // as they are (their readings keep arriving live).
  async function refreshAlerts() {
    const n = ++alertsAsked;
    const asked = range;
    try {
      const data = await fetchSeries();
      if (asked !== range || !takeAlerts(data.alerts, n)) return;
      for (const [metric, c] of charts) {
        showAlerts(c, metric);
        c.chart.redraw(false);
      }
    } catch (_) {
      // Asked again on the next refresh; a load brings them anyway.
      alertsSeen = "";
    }
  }

  // A refresh happens on every change to the device, readings included;
  // only a changed key (an alert fired or resolved) costs a fetch.
  document.addEventListener("drover:refreshed", () => {
    const key = alertsKey();
    if (key === alertsSeen) return;
    alertsSeen = key;
    refreshAlerts();
  });

  // A quiet device's chart still moves with the clock.
  setInterval(() => {
    if (loading || charts.size === 0) return;
    slide(0);
    if (!drawFrame) drawFrame = requestAnimationFrame(redraw);
  }, 30_000);

  // Charts follow the page's width (a phone turned, a window resized).
  if (typeof ResizeObserver !== "undefined") {
    new ResizeObserver(() => {
      for (const c of charts.values()) c.chart.setSize({ width: width(c.plot), height });
    }).observe(root);
  }

  if (picker) {
    const buttons = Array.from(picker.querySelectorAll("button[data-range]"));
    const press = () => {
      for (const b of buttons) b.setAttribute("aria-pressed", String(b.dataset.range === range));
    };
    for (const b of buttons) {
      b.addEventListener("click", () => {
        const next = b.dataset.range;
        if (!RANGES[next] || next === range) return;
        range = next;
        root.dataset.range = range;
        press();
        // The address keeps the range, so a reload or a shared link shows it.
        const here = new URL(location.href);
        here.searchParams.set("range", range);
        history.replaceState(history.state, "", here);
        load();
      });
    }
    press();
    picker.hidden = false;
  }

  load();
})();
