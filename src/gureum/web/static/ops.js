// Operations pages: setting the workspace's budget (owners and admins), revoking API keys
// (admins), approving, rejecting and following a pipeline run, and the capacity planner's
// chart. Every change is a call to the REST API with the page's CSRF token (G.api); the API
// decides who may, so a button a page should not have shown still changes nothing.
"use strict";

(() => {
  const budget = document.getElementById("budget-form");
  if (budget) wireBudget(budget);
  for (const button of document.querySelectorAll("button[data-revoke]")) wireRevoke(button);
  const run = document.getElementById("pipeline-run");
  if (run) wireRun(run);
  const plan = document.getElementById("plan-chart");
  if (plan) planChart(plan).catch((e) => G.say(e.message, true));

  // An empty field is "no limit" (null); anything else must be a number, said in words.
  function amount(input, label) {
    const text = input.value.trim();
    if (text === "") return null;
    const value = Number(text);
    if (!Number.isFinite(value) || value < 0) throw new Error(label + " must be a number of 0 or more, or empty for no limit.");
    return value;
  }

  function wireBudget(form) {
    const problem = document.getElementById("budget-form-error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.hidden = true;
      const button = form.querySelector("button[type=submit]");
      let body;
      try {
        body = {
          monthly: amount(form.elements.monthly, "The monthly limit"),
          per_job: amount(form.elements.per_job, "The per-job limit"),
        };
      } catch (e) {
        problem.textContent = e.message;
        problem.hidden = false;
        return;
      }
      button.disabled = true;
      try {
        const path = "/v1/workspaces/" + encodeURIComponent(form.dataset.workspace) + "/budget";
        const out = await (await G.api("PUT", path, body)).json();
        G.say("Budget saved: " + (out.monthly === null ? "no monthly limit" : out.monthly + " " + out.currency + " a month") + ".");
        setTimeout(() => location.reload(), 600);
      } catch (e) {
        problem.textContent = said(e);
        problem.hidden = false;
        button.disabled = false;
      }
    });
  }

  // A refused request's message, with each field the API named: "per_job: Input should be
  // greater than 0".
  function said(e) {
    if (!Array.isArray(e.details) || !e.details.length) return e.message;
    const fields = e.details.map((d) => (Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : "") + ": " + d.msg);
    return e.message + ": " + fields.join("; ") + ".";
  }

  function wireRevoke(button) {
    button.addEventListener("click", async () => {
      if (!window.confirm(button.dataset.confirm)) return;
      button.disabled = true;
      try {
        const out = await (await G.api("DELETE", "/v1/keys/" + encodeURIComponent(button.dataset.revoke))).json();
        button.parentElement.replaceChildren("revoked " + G.when(out.revoked_at));
        G.say("Key " + out.key_id + " revoked.");
      } catch (e) {
        G.say(e.message, true);
        button.disabled = false;
      }
    });
  }

  function wireRun(box) {
    const path = "/v1/pipelines/" + encodeURIComponent(box.dataset.name) + "/runs/" + box.dataset.run;
    for (const button of document.querySelectorAll("button[data-approve]")) {
      button.addEventListener("click", async () => {
        const approve = button.dataset.approve === "1";
        if (!approve && !window.confirm("Reject the candidate? The run ends and production stays.")) return;
        button.disabled = true;
        try {
          await G.api("POST", path + "/approve", { approve });
          G.say(approve ? "Approved." : "Rejected.");
          setTimeout(() => location.reload(), 600);
        } catch (e) {
          G.say(e.message, true);
          button.disabled = false;
        }
      });
    }
    if (!box.dataset.live) return;
    // A run moves step by step: the page is reloaded when its state or step changes.
    G.poll(async () => {
      const out = await G.json(path);
      if (out.state !== box.dataset.state || (out.step || "") !== box.dataset.step) {
        location.reload();
        return false;
      }
      return true;
    }, 5000);
  }

  async function planChart(box) {
    const query = new URLSearchParams({ months: box.dataset.months });
    if (box.dataset.period) query.set("period", box.dataset.period);
    const report = await G.json("/v1/plan?" + query);
    const series = report.series;
    const start = Date.parse(series.start) / 1000;
    const xs = series.cpus.map((_, i) => start + i * 3600);
    const plot = Charts.line(box, [{ label: "CPUs" }, { label: "GPUs", scale: "y2" }],
      { x: "time", y: "CPUs in use", y2: "GPUs in use" });
    Charts.set(plot, [xs, series.cpus, series.gpus], 86400); // at least a day wide
  }
})();
