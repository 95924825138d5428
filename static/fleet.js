// The fleet metrics page's chart: one row per group of the table below it,
// on a common scale — a line from the smallest to the largest device mean,
// a box from the median (p50) to the 95th percentile, a dot at the mean.
// It reads the numbers from the table rows' data attributes (the CSP
// forbids inline scripts) and draws on a canvas; group names are painted as
// canvas text, never put into markup.
"use strict";
(() => {
  const figure = document.getElementById("fleet-chart");
  const table = document.getElementById("fleet-groups");
  if (!figure || !table) return;
  const canvas = figure.querySelector("canvas");
  const num = (v) => {
    const n = Number(v);
    return Number.isFinite(n) ? n : null;
  };
  const rows = [...table.querySelectorAll("tbody tr")]
    .map((tr) => ({
      key: (tr.querySelector("th")?.textContent ?? "").trim(),
      mean: num(tr.dataset.mean),
      p50: num(tr.dataset.p50),
      p95: num(tr.dataset.p95),
      min: num(tr.dataset.min),
      max: num(tr.dataset.max),
    }))
    .filter((r) => [r.mean, r.p50, r.p95, r.min, r.max].every((v) => v !== null));
  if (!canvas || rows.length === 0) return;
  // The scale spans the data with a margin, so close groups stay apart.
  const smallest = Math.min(...rows.map((r) => r.min));
  const largest = Math.max(...rows.map((r) => r.max));
  const margin = largest > smallest ? (largest - smallest) * 0.05 : Math.abs(largest) * 0.05 || 1;
  const lo = smallest - margin;
  const hi = largest + margin;

  const css = getComputedStyle(document.documentElement);
  const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  const accent = color("--accent", "#1f5f8b");
  const muted = color("--muted", "#5b6577");
  const line = color("--line", "#dde1e7");
  const text = color("--text", "#1d2430");
  const font = getComputedStyle(document.body).fontFamily || "sans-serif";

  const ROW = 30;
  const TOP = 8;
  const AXIS = 28;
  const label = (s) => (s.length > 24 ? `${s.slice(0, 23)}…` : s);
  // Ticks at a round step: 1, 2 or 5 times a power of ten, about five of them.
  function ticks() {
    const raw = (hi - lo) / 5;
    const p = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw) ?? raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
    return out;
  }
  const tickText = (t) => String(Number(t.toPrecision(6)));

  function draw() {
    figure.hidden = false;
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(320, Math.floor(figure.clientWidth));
    const height = TOP + rows.length * ROW + AXIS;
    canvas.width = Math.floor(width * dpr);
    canvas.height = Math.floor(height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const g = canvas.getContext("2d");
    if (!g) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, width, height);
    g.font = `13px ${font}`;
    const left = Math.min(
      width / 3,
      12 + Math.max(...rows.map((r) => g.measureText(label(r.key)).width)),
    );
    const right = width - 16;
    const x = (v) => left + ((v - lo) / (hi - lo)) * (right - left);
    const bottom = TOP + rows.length * ROW;

    g.lineWidth = 1;
    g.strokeStyle = line;
    g.fillStyle = muted;
    g.textAlign = "center";
    g.textBaseline = "top";
    for (const t of ticks()) {
      const px = Math.round(x(t)) + 0.5;
      g.beginPath();
      g.moveTo(px, TOP);
      g.lineTo(px, bottom);
      g.stroke();
      g.fillText(tickText(t), px, bottom + 6);
    }

    rows.forEach((r, i) => {
      const mid = TOP + i * ROW + ROW / 2;
      g.fillStyle = text;
      g.textAlign = "right";
      g.textBaseline = "middle";
      g.fillText(label(r.key), left - 10, mid);
      g.strokeStyle = muted;
      g.lineWidth = 1.5;
      g.beginPath();
      g.moveTo(x(r.min), mid);
      g.lineTo(x(r.max), mid);
      g.moveTo(x(r.min), mid - 6);
      g.lineTo(x(r.min), mid + 6);
      g.moveTo(x(r.max), mid - 6);
      g.lineTo(x(r.max), mid + 6);
      g.stroke();
      g.fillStyle = accent;
      g.globalAlpha = 0.35;
      g.fillRect(x(r.p50), mid - 8, Math.max(2, x(r.p95) - x(r.p50)), 16);
      g.globalAlpha = 1;
      g.strokeStyle = accent;
      g.strokeRect(x(r.p50), mid - 8, Math.max(2, x(r.p95) - x(r.p50)), 16);
      g.beginPath();
      g.arc(x(r.mean), mid, 4.5, 0, 2 * Math.PI);
      g.fillStyle = text;
      g.fill();
    });
  }

  draw();
  let frame = 0;
  window.addEventListener("resize", () => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(draw);
  });
})();
