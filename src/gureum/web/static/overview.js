// Overview: the workspace's requests, errors and revenue per day over the last 30 days, from
// the usage report without percentiles (one call; read from the per-day totals, fast however
// many records the month holds).
"use strict";

(() => {
  const box = document.getElementById("overview-chart");
  if (!box) return;
  const currency = box.dataset.currency;

  async function draw() {
    const since = new Date(Date.now() - 30 * 86400 * 1000).toISOString();
    const report = await G.json("/v1/usage?group_by=day&percentiles=false&since=" + encodeURIComponent(since));
    const byDay = new Map();
    for (const row of report.rows) {
      const day = Date.parse(row.day + "T00:00:00Z") / 1000;
      const d = byDay.get(day) || { requests: 0, errors: 0, revenue: 0 };
      d.requests += row.requests;
      d.errors += row.errors;
      if (row.currency === currency) d.revenue += row.amount;
      byDay.set(day, d);
    }
    const days = [...byDay.keys()].sort((a, b) => a - b);
    document.getElementById("overview-empty").hidden = days.length > 0;
    const chart = Charts.line(box, [
      { label: "requests" }, { label: "errors" }, { label: "revenue " + currency, scale: "y2" },
    ], { x: "time", y: "requests", y2: currency });
    const pick = (k) => days.map((d) => byDay.get(d)[k]);
    Charts.set(chart, [days, pick("requests"), pick("errors"), pick("revenue")], 7 * 86400);
  }

  draw().catch((e) => G.say(e.message, true));
})();
