// Model pages: on a model, a chart of each numeric metric by version (from the REST API); on a
// model version, the promote buttons (developers and up), which show the gate's verdict from
// the API's answer: the checks that passed, or the ones that failed (409 gate_failed).
"use strict";

(() => {
  const model = document.getElementById("model");
  if (model) chart(model.dataset.name).catch((e) => G.say(e.message, true));
  const version = document.getElementById("model-version");
  if (version) wirePromote(version.dataset.name, version.dataset.version);

  async function chart(name) {
    const box = document.getElementById("metrics-chart");
    if (!box) return;
    const page = await G.json("/v1/models/" + encodeURIComponent(name) + "/versions?limit=100");
    const versions = page.items.slice().reverse(); // oldest first
    const isNum = (x) => typeof x === "number" && isFinite(x);
    const names = [...new Set(versions.flatMap((v) =>
      Object.keys(v.metrics).filter((k) => isNum(v.metrics[k]))))].sort().slice(0, 7);
    const plot = Charts.line(box, names.map((n) => ({ label: n })), { xLabel: "version", y: "value", xWhole: true });
    Charts.set(plot, [versions.map((v) => v.version)].concat(
      names.map((n) => versions.map((v) => (isNum(v.metrics[n]) ? v.metrics[n] : null)))));
  }

  function showChecks(summary, checks) {
    document.getElementById("verdict").hidden = false;
    document.getElementById("verdict-summary").textContent = summary;
    const cell = (v) => G.el("td", {}, v === null || v === undefined ? "—" : v);
    document.querySelector("#checks tbody").replaceChildren(...checks.map((c) => G.el("tr",
      { class: c.passed ? "pass" : "fail" }, cell(c.check), cell(c.metric + " " + c.op),
      cell(c.required), cell(c.actual), cell(c.passed ? "yes" : "no"), cell(c.reason))));
  }

  function wirePromote(name, number) {
    const path = "/v1/models/" + encodeURIComponent(name) + "/versions/" + number + "/promote";
    for (const button of document.querySelectorAll("button[data-promote]")) {
      button.addEventListener("click", async () => {
        const stage = button.dataset.promote;
        button.disabled = true;
        try {
          const out = await (await G.api("POST", path, { stage })).json();
          const archived = out.archived.length ? " Archived: v" + out.archived.join(", v") + "." : "";
          showChecks(name + ":" + number + " is now in " + out.version.stage + "." +
            (out.checks.length ? " Every check passed." : " No gate applies.") + archived, out.checks);
          G.say("Promoted to " + out.version.stage + ".");
          document.getElementById("stage-now").replaceChildren(G.stateBadge(out.version.stage));
          for (const b of document.querySelectorAll("button[data-promote]")) b.hidden = true;
        } catch (e) {
          const failed = (e.details && e.details.failed) || [];
          showChecks("Not promoted: " + e.message, failed);
          G.say(e.message, true);
          button.disabled = false;
        }
      });
    }
  }
})();
