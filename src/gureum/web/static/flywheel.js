// Endpoint page, the data flywheel's part: the feedback summary (read when the page opens),
// and for developers the capture settings (PATCH /v1/endpoints/E/capture) and curating the
// next dataset version from the captured calls (POST /v1/datasets/D/curate).
"use strict";

(() => {
  const root = document.getElementById("endpoint");
  const box = document.getElementById("capture");
  if (!root || !box) return;
  const name = root.dataset.name;
  const path = "/v1/endpoints/" + encodeURIComponent(name);

  const summary = document.getElementById("feedback-summary");
  G.json(path + "/feedback").then((f) => {
    if (!f.count) { summary.textContent = "none yet"; return; }
    const mean = f.mean_rating === null ? "no rating" : "mean rating " + f.mean_rating.toFixed(2) + " of 5";
    summary.textContent = f.count + (f.count === 1 ? " answer" : " answers") + " rated or labelled (" + mean + "; " + f.labelled
      + " labelled; " + f.captured + " of them captured)";
  }).catch((e) => { summary.textContent = "unavailable: " + e.message; });

  const capture = document.getElementById("capture-form");
  if (capture) {
    G.form(capture, {
      // Every setting is sent (unticked boxes as false), so the form says the whole truth.
      read: (form) => {
        const rate = Number(form.elements.rate.value.trim());
        if (form.elements.rate.value.trim() === "" || !Number.isFinite(rate) || rate < 0 || rate > 1) {
          throw new Error("The share of calls kept is a number from 0 to 1 (0.1 keeps one call in ten).");
        }
        const days = form.elements.retention_days.value.trim();
        if (days !== "" && !/^[0-9]+$/.test(days)) throw new Error("Keep records for a whole number of days, or leave it empty.");
        const redact = form.elements.redact.value.split(",").map((x) => x.trim()).filter((x) => x);
        return {
          rate,
          inputs: form.elements.inputs.checked,
          outputs: form.elements.outputs.checked,
          redact,
          retention_days: days === "" ? null : Number(days),
        };
      },
      send: async (body) => (await G.api("PATCH", path + "/capture", body)).json(),
      prefix: "Not saved: ",
      done: () => {
        G.say("Capture settings of " + name + " saved; replicas follow within seconds.");
        setTimeout(() => location.reload(), 600);
      },
    });
  }

  const curate = document.getElementById("curate-form");
  if (curate) {
    const result = document.getElementById("curate-result");
    G.form(curate, {
      again: true,
      busy: "Curating…",
      prefix: "No version made: ",
      read: (form) => {
        const dataset = form.elements.dataset.value.trim();
        if (!dataset) throw new Error("Name the dataset the new version goes to.");
        const body = { from_endpoint: name, labelled_only: form.elements.labelled_only.checked };
        if (form.elements.min_rating.value) body.min_rating = Number(form.elements.min_rating.value);
        const message = form.elements.message.value.trim();
        if (message) body.message = message;
        return { dataset, body };
      },
      send: async (p) => ({
        dataset: p.dataset,
        version: await (await G.api("POST", "/v1/datasets/" + encodeURIComponent(p.dataset) + "/curate", p.body)).json(),
      }),
      done: (out) => {
        const href = "/datasets/" + encodeURIComponent(out.dataset) + "/versions/" + out.version.version;
        result.replaceChildren(
          "Made ",
          G.el("a", { href, id: "curated-version" }, out.dataset + ":" + out.version.version),
          " (" + out.version.file_count + " files).",
        );
        result.hidden = false;
        G.say("Curated " + out.dataset + ":" + out.version.version + ".");
      },
    });
  }
})();
