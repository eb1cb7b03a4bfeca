// Job page: state, events, logs tail and metric chart, polled at a bounded rate until the job
// ends (then once more, and stop).
"use strict";

(() => {
  const root = document.getElementById("job");
  const id = root.dataset.jobId;
  const base = "/v1/jobs/" + encodeURIComponent(id);
  const POLL_MS = 2000;
  const LOG_KEEP = 200000; // characters kept in the page
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  let lastEvent = 0;
  let preemptions = 0;
  let lastMetric = 0;
  let logOffset = 0;
  let finalRound = false;
  const metricKeys = [];
  const steps = [];
  const values = {}; // key -> array aligned with steps
  let chart = null;

  function show(id, text) {
    const node = document.getElementById(id);
    node.textContent = text || "";
    node.hidden = !text;
  }

  function renderJob(job) {
    const state = document.getElementById("job-state");
    state.replaceChildren(G.stateBadge(job.state));
    root.dataset.state = job.state;
    const p = job.progress || {};
    let progress = "step " + (p.step || 0) + (p.total_steps ? " of " + p.total_steps : "");
    if (p.loss !== null && p.loss !== undefined) progress += ", loss " + Number(p.loss).toPrecision(4);
    if (p.eta_s) progress += ", about " + Math.round(p.eta_s) + " s left";
    document.getElementById("job-progress").textContent = progress;
    document.getElementById("job-started").textContent = G.when(job.started_at);
    document.getElementById("job-finished").textContent = G.when(job.finished_at);
    document.getElementById("job-model").textContent = job.model_version || job.model || "—";
    show("job-wait", job.wait_reason);
    show("job-error", job.error);
    const cancel = document.getElementById("cancel");
    if (cancel && TERMINAL.has(job.state)) cancel.remove();
  }

  async function events() {
    for (let round = 0; round < 5; round++) {
      const q = "?limit=200" + (lastEvent ? "&cursor=" + G.afterCursor(lastEvent) : "");
      const page = await G.json(base + "/events" + q);
      const body = document.querySelector("#events tbody");
      for (const e of page.items) {
        body.append(G.el("tr", {}, G.el("td", {}, e.seq), G.el("td", {}, G.when(e.time)),
          G.el("td", {}, e.kind), G.el("td", {}, e.message)));
        lastEvent = e.seq;
        if (e.kind === "preempted") preemptions++;
      }
      document.getElementById("job-preempted").textContent = preemptions ? preemptions + " time(s): see the events" : "never";
      if (!page.next_cursor) return;
    }
  }

  async function logs() {
    const pre = document.getElementById("logs");
    for (let round = 0; round < 5; round++) {
      const r = await G.api("GET", base + "/logs?offset=" + logOffset);
      const text = await r.text();
      const next = Number(r.headers.get("X-Next-Offset"));
      if (!text || next === logOffset) return;
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      let all = pre.textContent + text;
      if (all.length > LOG_KEEP) all = all.slice(all.length - LOG_KEEP);
      pre.textContent = all;
      pre.hidden = false;
      document.getElementById("logs-empty").hidden = true;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
      logOffset = next;
    }
  }

  function redraw() {
    const container = document.getElementById("metric-chart");
    if (!steps.length) return;
    document.getElementById("metric-empty").hidden = true;
    if (!chart || chart.series.length !== metricKeys.length + 1) {
      if (chart) chart.destroy();
      chart = Charts.line(container, metricKeys.map((k) => ({ label: k })), { x: "step" });
    }
    Charts.set(chart, [steps.slice()].concat(metricKeys.map((k) => values[k].slice())), 1);
  }

  async function metrics() {
    let changed = false;
    for (let round = 0; round < 10; round++) {
      const q = "?limit=1000" + (lastMetric ? "&cursor=" + G.afterCursor(lastMetric) : "");
      const page = await G.json(base + "/metrics" + q);
      for (const m of page.items) {
        for (const k of Object.keys(m.values)) {
          if (!(k in values)) { metricKeys.push(k); values[k] = steps.map(() => null); }
        }
        steps.push(m.step);
        for (const k of metricKeys) values[k].push(k in m.values ? m.values[k] : null);
        lastMetric = m.seq;
        changed = true;
      }
      if (!page.next_cursor) break;
    }
    if (changed) redraw();
  }

  G.poll(async () => {
    const job = await G.json(base);
    renderJob(job);
    await Promise.all([events(), logs(), metrics()]);
    if (TERMINAL.has(job.state)) {
      if (finalRound) return false; // one more round after the end catches the last lines
      finalRound = true;
    }
    return true;
  }, POLL_MS);
})();
