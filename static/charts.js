// The device page's charts: fetches the last hour of each metric as JSON
// (the CSP forbids inline scripts, so the data comes from the element's
// data-series URL) and draws one uPlot chart per metric. Text from the
// server only ever goes into textContent, never into markup.
"use strict";
(() => {
  const root = document.getElementById("charts");
  if (!root) return;
  const status = root.querySelector("[data-charts-status]");
  const say = (text) => {
    status.textContent = text;
    status.hidden = false;
  };
  if (typeof uPlot === "undefined") {
    say("The chart library did not load; reload the page.");
    return;
  }

  const css = getComputedStyle(document.documentElement);
  const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const accent = color("--accent", "#1f5f8b");
  const muted = color("--muted", "#5b6577");
  const line = color("--line", "#dde1e7");
  const text = color("--text", "#1d2430");
  const axis = { stroke: text, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
  const height = 180;

  const width = (el) => Math.max(200, Math.floor(el.clientWidth));

  function draw(data) {
    const series = Array.isArray(data.series) ? data.series : [];
    if (series.length === 0) {
      say("No readings in the last hour.");
      return;
    }
    status.hidden = true;
    const range = [data.from / 1000, data.to / 1000];
    const charts = [];
    for (const s of series) {
      const figure = document.createElement("figure");
      figure.className = "chart";
      const caption = document.createElement("figcaption");
      const name = document.createElement("code");
      name.textContent = s.metric;
      caption.append(name);
      if (s.step) {
        caption.append(` · mean of ${s.step / 60}-minute buckets, with min and max`);
      }
      const plot = document.createElement("div");
      figure.append(caption, plot);
      root.append(figure);

      const columns = [s.ts.map((t) => t / 1000), s.value];
      const lines = [{}, { label: s.step ? "mean" : "value", stroke: accent, width: 2, points: { show: !s.step } }];
      if (s.step && Array.isArray(s.min) && Array.isArray(s.max)) {
        columns.push(s.min, s.max);
        lines.push({ label: "min", stroke: muted, width: 1, dash: [4, 4] });
        lines.push({ label: "max", stroke: muted, width: 1, dash: [4, 4] });
      }
      const chart = new uPlot({
        width: width(plot),
        height,
        scales: { x: { time: true, range } },
        axes: [axis, axis],
        series: lines,
      }, columns, plot);
      charts.push([chart, plot]);
    }
    if (data.omitted > 0) {
      const more = document.createElement("p");
      more.className = "muted";
      more.textContent = `${data.omitted} more metrics have readings in the last hour; the API has them all.`;
      root.append(more);
    }
    // Charts follow the page's width (a phone turned, a window resized).
    if (typeof ResizeObserver !== "undefined") {
      const observer = new ResizeObserver(() => {
        for (const [chart, plot] of charts) chart.setSize({ width: width(plot), height });
      });
      observer.observe(root);
    }
  }

  fetch(root.dataset.series, {
    credentials: "same-origin",
    redirect: "manual",
    headers: { Accept: "application/json" },
  })
    .then((res) => {
      if (res.type === "opaqueredirect") {
        throw new Error("Your session has ended; reload the page to sign in again.");
      }
      if (!res.ok) {
        throw new Error(`The charts could not be loaded (HTTP ${res.status}); reload the page to try again.`);
      }
      return res.json();
    })
    .then(draw)
    .catch((err) => say(err instanceof Error ? err.message : "The charts could not be loaded."));
})();
