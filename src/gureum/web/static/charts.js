// Line charts on the vendored uPlot (static/vendor, MIT). One helper: a chart that fills its
// container's width, follows resizes and takes new data without being rebuilt.
"use strict";

const Charts = (() => {
  const COLORS = ["#1f5fbf", "#d1495b", "#2e933c", "#8f5bd6", "#e0a100", "#00798c", "#6b4226"];

  function width(container) { return Math.max(280, container.clientWidth || 600); }

  // series: [{label, scale?}], x: "time" | "step"; axes: {y: label, y2?: label}
  function line(container, series, opts) {
    const o = opts || {};
    const time = o.x === "time";
    const scales = { x: { time } };
    const axes = [{ label: time ? undefined : (o.xLabel || "step") }, { label: o.y || "" }];
    // Whole-number x (versions): ticks only at integers.
    if (o.xWhole) axes[0].incrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000];
    if (o.y2) {
      // Counts (replicas) start at zero and keep a little headroom.
      scales.y2 = o.y2Count ? { range: (u, min, max) => [0, Math.max(2, (max || 0) + 1)] } : { auto: true };
      axes.push({ scale: "y2", side: 1, label: o.y2, grid: { show: false } });
    }
    const config = {
      width: width(container),
      height: o.height || 260,
      scales,
      axes,
      cursor: { drag: { x: true, y: false } },
      // The first draw with data stamps the container (ms since the navigation began): what
      // the browser tests and benchmarks/bench_dashboard.py wait for.
      hooks: { draw: [(u) => {
        if (u.data[0].length && !container.dataset.drawnAt) container.dataset.drawnAt = String(performance.now());
      }] },
      series: [{ label: time ? "time" : (o.xLabel || "step") }].concat(series.map((s, i) => ({
        label: s.label,
        scale: s.scale || "y",
        stroke: COLORS[i % COLORS.length],
        width: 2,
        spanGaps: true, // uPlot shows the points by itself while they are few
      }))),
    };
    const empty = [[]].concat(series.map(() => []));
    const plot = new uPlot(config, empty, container);
    let timer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(timer);
      timer = setTimeout(() => plot.setSize({ width: width(container), height: config.height }), 150);
    });
    return plot;
  }

  // New data for a chart. A few points (one poll, one day) would stretch the x axis over years:
  // the axis is made at least minSpan wide (seconds or steps) with an empty point before them.
  function set(plot, data, minSpan) {
    const xs = data[0];
    if (minSpan && xs.length && xs[xs.length - 1] - xs[0] < minSpan) {
      data = [[xs[xs.length - 1] - minSpan].concat(xs)].concat(data.slice(1).map((ys) => [null].concat(ys)));
    }
    plot.setData(data);
  }

  return { line, set };
})();
