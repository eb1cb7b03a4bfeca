// Endpoint page: live latency and replicas (stats polled every 5 s, kept for 30 minutes in the
// page) and daily traffic of the last 30 days (metered usage).
"use strict";

(() => {
  const root = document.getElementById("endpoint");
  const name = root.dataset.name;
  const base = "/v1/endpoints/" + encodeURIComponent(name);
  const POLL_MS = 5000;
  const KEEP = 360;
  const t = [], p50 = [], p95 = [], replicas = [];
  const live = Charts.line(document.getElementById("live-chart"), [
    { label: "p50 ms" }, { label: "p95 ms" }, { label: "replicas", scale: "y2" },
  ], { x: "time", y: "ms", y2: "replicas", y2Count: true });

  function cell(v) { return G.el("td", {}, v === null || v === undefined ? "—" : v); }
  function ms(v) { return v === null || v === undefined ? null : Number(v).toFixed(1); }

  async function stats() {
    const s = await G.json(base + "/stats?window_s=300");
    const body = document.querySelector("#versions tbody");
    body.replaceChildren(...s.versions.map((v) => G.el("tr", {}, cell(v.label), cell(v.role),
      cell(v.requests), cell(v.errors), cell(ms(v.p50_ms)), cell(ms(v.p95_ms)), cell(ms(v.p99_ms)))));
    const r = s.replicas;
    document.getElementById("ep-replicas").textContent =
      r.primary + " primary, " + r.canary + " canary, " + r.shadow + " shadow";
    document.getElementById("ep-extra").textContent = "Cold starts in the window: " + s.cold_starts +
      (s.last_cold_start_ms ? " (last " + Math.round(s.last_cold_start_ms) + " ms)" : "") +
      "; queue depth " + s.queue_depth + ".";
    const primary = s.versions.find((v) => v.role === "primary");
    t.push(Date.now() / 1000);
    p50.push(primary ? primary.p50_ms : null);
    p95.push(primary ? primary.p95_ms : null);
    replicas.push(r.primary + r.canary + r.shadow);
    for (const a of [t, p50, p95, replicas]) if (a.length > KEEP) a.shift();
    Charts.set(live, [t.slice(), p50.slice(), p95.slice(), replicas.slice()], 300);
  }

  async function traffic() {
    const since = new Date(Date.now() - 30 * 86400 * 1000).toISOString();
    const q = "?group_by=day&endpoint=" + encodeURIComponent(name) + "&since=" + encodeURIComponent(since);
    const report = await G.json("/v1/usage" + q);
    const byDay = new Map();
    for (const row of report.rows) {
      const day = Date.parse(row.day + "T00:00:00Z") / 1000;
      const d = byDay.get(day) || { requests: 0, errors: 0, p95: null };
      d.requests += row.requests;
      d.errors += row.errors;
      d.p95 = Math.max(d.p95 || 0, row.latency_p95_ms);
      byDay.set(day, d);
    }
    const days = [...byDay.keys()].sort((a, b) => a - b);
    document.getElementById("traffic-empty").hidden = days.length > 0;
    const chart = Charts.line(document.getElementById("traffic-chart"), [
      { label: "requests" }, { label: "errors" }, { label: "p95 ms", scale: "y2" },
    ], { x: "time", y: "requests", y2: "ms" });
    Charts.set(chart, [days, days.map((d) => byDay.get(d).requests),
      days.map((d) => byDay.get(d).errors), days.map((d) => byDay.get(d).p95)], 7 * 86400);
  }

  traffic().catch((e) => G.say(e.message, true));
  G.poll(async () => { await stats(); return true; }, POLL_MS);
})();
