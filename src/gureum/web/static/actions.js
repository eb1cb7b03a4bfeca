// Action forms: start a training job (jobs page) and deploy a model version (model version
// page). Each is one call to the REST API with the page's CSRF token (G.form); the API decides
// who may, so a form a page should not have shown still changes nothing. On success the
// browser goes to the new job's or endpoint's page, which follows it live.
"use strict";

(() => {
  const train = document.getElementById("train-form");
  if (train) wireTrain(train);
  const deploy = document.getElementById("deploy-form");
  if (deploy) wireDeploy(deploy);

  function number(input, label, { min = -Infinity, whole = false } = {}) {
    const text = input.value.trim();
    const value = Number(text);
    if (text === "" || !Number.isFinite(value) || value < min || (whole && !Number.isInteger(value))) {
      throw new Error(label + " must be " + (whole ? "a whole number" : "a number") +
        (min > -Infinity ? " of " + min + " or more" : "") + ".");
    }
    return value;
  }

  // KEY=VALUE lines, VALUE as JSON when it parses (3, 0.1, true, [1,2]) else text: what the
  // CLI's --param takes.
  function params(text) {
    const out = {};
    for (const [i, raw] of text.split("\n").entries()) {
      const line = raw.trim();
      if (!line || line.startsWith("#")) continue;
      const at = line.indexOf("=");
      const key = at > 0 ? line.slice(0, at).trim() : "";
      if (!key) throw new Error("Parameter line " + (i + 1) + " (“" + line + "”) is not KEY=VALUE.");
      const value = line.slice(at + 1).trim();
      try {
        const parsed = JSON.parse(value);
        out[key] = typeof parsed === "number" && !Number.isFinite(parsed) ? value : parsed;
      } catch (e) {
        out[key] = value;
      }
    }
    return out;
  }

  function wireTrain(form) {
    const hints = document.querySelectorAll("[data-recipe-params]");
    const showHint = () => {
      for (const h of hints) h.hidden = h.dataset.recipeParams !== form.elements.recipe.value;
    };
    form.elements.recipe.addEventListener("change", showHint);
    showHint();
    G.json("/v1/datasets?limit=100").then((page) => {
      const list = document.getElementById("tr-datasets");
      list.replaceChildren(...page.items.flatMap((d) => [G.el("option", { value: d.name }),
        d.latest_version ? G.el("option", { value: d.name + ":" + d.latest_version }) : null].filter(Boolean)));
    }).catch(() => { /* suggestions only */ });

    G.form(form, {
      error: document.getElementById("train-error"),
      prefix: "The job was not started: ",
      read: (form) => {
        const f = form.elements;
        const dataset = f.dataset.value.trim();
        if (!dataset) throw new Error("Name the dataset to train on (NAME or NAME:VERSION).");
        const body = {
          kind: "train",
          recipe: f.recipe.value,
          dataset,
          params: params(f.params.value),
          resources: { cpus: number(f.cpus, "CPUs per worker", { min: 0 }), gpus: number(f.gpus, "GPUs per worker", { min: 0 }) },
          workers: number(f.workers, "Workers", { min: 1, whole: true }),
          priority: number(f.priority, "Priority", { min: -1000, whole: true }),
        };
        if (f.model.value.trim()) body.model = f.model.value.trim();
        return body;
      },
      send: async (body) => (await G.api("POST", "/v1/jobs", body)).json(),
      done: (job) => {
        G.say("Job " + job.id + " started.");
        location.assign("/jobs/" + encodeURIComponent(job.id));
      },
    });
  }

  function wireDeploy(form) {
    G.form(form, {
      error: document.getElementById("deploy-error"),
      prefix: "Not deployed: ",
      read: (form) => {
        const f = form.elements;
        const name = f.name.value.trim();
        if (!/^[a-z0-9]+(-[a-z0-9]+)*$/.test(name) || name.length > 63) {
          throw new Error("The endpoint name must be up to 63 lowercase letters and digits, with single “-” between them.");
        }
        const min = number(f.min_replicas, "Min replicas", { min: 0, whole: true });
        const max = number(f.max_replicas, "Max replicas", { min: 1, whole: true });
        if (max < min) throw new Error("Max replicas must be at least min replicas.");
        const body = {
          name,
          model: form.dataset.model,
          config: {
            autoscaling: { min_replicas: min, max_replicas: max },
            resources: { cpus: number(f.cpus, "CPUs per replica", { min: 0 }) },
          },
        };
        if (f.canary_percent.value.trim() !== "") {
          const share = number(f.canary_percent, "Canary share", { min: 0 });
          if (!(share > 0 && share < 100)) throw new Error("The canary share is a percentage above 0 and below 100.");
          body.canary_percent = share;
        }
        return body;
      },
      send: async (body) => (await G.api("POST", "/v1/endpoints", body)).json(),
      done: (ep) => {
        G.say("Deploying " + ep.model_label + " as " + ep.name + ".");
        location.assign("/endpoints/" + encodeURIComponent(ep.name));
      },
    });
  }
})();
