// Compare page: each metric the runs logged while training, one chart per metric with one
// series per run (steps on x), from the REST API with the session cookie.
"use strict";

(() => {
  const root = document.getElementById("compare");
  if (!root) return;
  const ids = root.dataset.ids.split(",").filter(Boolean);
  const MAX_CHARTS = 12;
  const MAX_ROUNDS = 20; // pages of 1000 points per run

  async function curves(id) {
    const base = "/v1/jobs/" + encodeURIComponent(id) + "/metrics?limit=1000";
    const byMetric = {}; // metric -> Map(step -> value)
    let cursor = null;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const page = await G.json(base + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      for (const m of page.items) {
        for (const [k, v] of Object.entries(m.values)) {
          (byMetric[k] = byMetric[k] || new Map()).set(m.step, v);
        }
      }
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    return byMetric;
  }

  function draw(runs) {
    const box = document.getElementById("curves");
    const names = [...new Set(runs.flatMap((r) => Object.keys(r)))].sort().slice(0, MAX_CHARTS);
    const empty = document.getElementById("curves-empty");
    if (!names.length) { empty.textContent = "None of these runs logged a metric while training."; return; }
    empty.hidden = true;
    for (const name of names) {
      const steps = [...new Set(runs.flatMap((r) => (r[name] ? [...r[name].keys()] : [])))].sort((a, b) => a - b);
      const figure = G.el("figure", { class: "curve", "data-metric": name });
      const chart = G.el("div", { class: "chart", role: "img", "aria-label": name + " by step, one line per run" });
      figure.append(G.el("figcaption", {}, name), chart);
      box.append(figure);
      const plot = Charts.line(chart, ids.map((id) => ({ label: id })), { x: "step", y: name, height: 220 });
      Charts.set(plot, [steps].concat(runs.map((r) => steps.map((s) => (r[name] && r[name].has(s) ? r[name].get(s) : null)))), 1);
    }
    root.dataset.charts = String(names.length); // for tests: every chart is drawn
  }

  Promise.all(ids.map(curves)).then(draw).catch((e) => {
    document.getElementById("curves-empty").textContent = "The curves could not be loaded: " + e.message;
    G.say(e.message, true);
  });
})();
