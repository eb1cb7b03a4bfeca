// Pipeline drift page: the drift score over time (GET /v1/endpoints/E/drift/history), one
// point per window (none where it had too few captured calls), with the PSI of the features
// that drifted most and, when the pipeline has one, its on_drift threshold. The container is
// stamped data-points (how many windows had a score) once drawn, for the browser tests.
"use strict";

(() => {
  const box = document.getElementById("drift-chart");
  if (!box) return;
  const q = "?window_s=" + encodeURIComponent(box.dataset.window) +
    "&buckets=" + encodeURIComponent(box.dataset.buckets);
  const path = "/v1/endpoints/" + encodeURIComponent(box.dataset.endpoint) + "/drift/history" + q;
  const threshold = box.dataset.threshold ? Number(box.dataset.threshold) : null;

  async function draw() {
    const h = await G.json(path);
    // Each point at the end of its window (what "now" means for the report).
    const xs = h.points.map((p) => Date.parse(p.until) / 1000);
    const scored = h.points.filter((p) => p.score !== null).length;
    document.getElementById("drift-chart-empty").hidden = scored > 0;
    const names = [];
    for (const p of h.points) for (const k of Object.keys(p.features)) if (!names.includes(k)) names.push(k);
    // The score (the largest PSI) last, so it is drawn over the feature it equals.
    const series = names.map((n) => ({ label: "PSI " + n })).concat([{ label: "score" }]);
    const data = [xs]
      .concat(names.map((n) => h.points.map((p) => (n in p.features ? p.features[n] : null))))
      .concat([h.points.map((p) => p.score)]);
    if (threshold !== null) {
      series.push({ label: "trigger " + threshold });
      data.push(xs.map(() => threshold));
    }
    const chart = Charts.line(box, series, { x: "time", y: "PSI" });
    Charts.set(chart, data, h.bucket_s);
    box.dataset.points = String(scored);
  }

  draw().catch((e) => G.say(e.message, true));
})();
