// Consumer portal: the chart of the consumer's own requests and cost per day (from
// /portal/api/usage, which only a portal session may read) and key rotation (CSRF header).
"use strict";

(() => {
  async function usage() {
    const report = await G.json("/portal/api/usage");
    const byDay = new Map();
    for (const row of report.rows) {
      const day = Date.parse(row.day + "T00:00:00Z") / 1000;
      const d = byDay.get(day) || { requests: 0, amount: 0 };
      d.requests += row.requests;
      d.amount += row.amount;
      byDay.set(day, d);
    }
    const days = [...byDay.keys()].sort((a, b) => a - b);
    const chart = Charts.line(document.getElementById("usage-chart"), [
      { label: "requests" }, { label: "cost", scale: "y2" },
    ], { x: "time", y: "requests", y2: "cost" });
    Charts.set(chart, [days, days.map((d) => byDay.get(d).requests),
      days.map((d) => byDay.get(d).amount)], 7 * 86400);
  }

  const rotate = document.getElementById("rotate");
  rotate.addEventListener("click", async () => {
    if (!window.confirm("Make a new key? The current key stops working at once.")) return;
    rotate.disabled = true;
    try {
      const made = await (await G.api("POST", "/portal/api/key/rotate")).json();
      document.getElementById("new-key-token").textContent = made.token;
      document.getElementById("key-id").textContent = made.key_id;
      document.getElementById("new-key").hidden = false;
      G.say("Key rotated: the old key no longer works.");
    } catch (e) {
      G.say(e.message, true);
      rotate.disabled = false;
    }
  });

  usage().catch((e) => G.say(e.message, true));
})();
