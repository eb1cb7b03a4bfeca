// Operations pages: setting the workspace's budget (owners and admins), revoking API keys
// (admins), approving, rejecting and following a pipeline run, and the capacity planner's
// chart. Every change is a call to the REST API with the page's CSRF token (G.form, G.button);
// the API decides who may, so a button a page should not have shown still changes nothing.
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
    G.form(form, {
      error: document.getElementById("budget-form-error"),
      read: (form) => ({
        monthly: amount(form.elements.monthly, "The monthly limit"),
        per_job: amount(form.elements.per_job, "The per-job limit"),
      }),
      send: async (body) => {
        const path = "/v1/workspaces/" + encodeURIComponent(form.dataset.workspace) + "/budget";
        return (await G.api("PUT", path, body)).json();
      },
      done: (out) => {
        G.say("Budget saved: " + (out.monthly === null ? "no monthly limit" : out.monthly + " " + out.currency + " a month") + ".");
        setTimeout(() => location.reload(), 600);
      },
    });
  }

  function wireRevoke(button) {
    G.button(button, {
      confirm: button.dataset.confirm,
      send: async () => (await G.api("DELETE", "/v1/keys/" + encodeURIComponent(button.dataset.revoke))).json(),
      done: (out) => {
        button.parentElement.replaceChildren("revoked " + G.when(out.revoked_at));
        G.say("Key " + out.key_id + " revoked.");
      },
    });
  }

  function wireRun(box) {
    const path = "/v1/pipelines/" + encodeURIComponent(box.dataset.name) + "/runs/" + box.dataset.run;
    for (const button of document.querySelectorAll("button[data-approve]")) {
      const approve = button.dataset.approve === "1";
      G.button(button, {
        confirm: approve ? "" : "Reject the candidate? The run ends and production stays.",
        send: () => G.api("POST", path + "/approve", { approve }),
        done: () => {
          G.say(approve ? "Approved." : "Rejected.");
          setTimeout(() => location.reload(), 600);
        },
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
