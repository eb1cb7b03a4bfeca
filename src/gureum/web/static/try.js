// Endpoint page: the "try it" panel. The form is built for the endpoint's input kind (a prompt
// for text and prompted pictures, a class for class-conditional pictures, a picture for
// classifiers, JSON otherwise); Run posts the inputs to POST /v1/endpoints/{name}/try, which
// calls the endpoint as the signed-in member (the control plane holds the short-lived key: the
// page never sees one), and the answer is shown: pictures, text, or the JSON.
"use strict";

(() => {
  const box = document.getElementById("try");
  const form = document.getElementById("try-form");
  if (!box || !form) return;
  const name = document.getElementById("endpoint").dataset.name;
  const kind = box.dataset.kind;
  const problem = document.getElementById("try-error");
  const result = document.getElementById("try-result");
  const images = document.getElementById("try-images");
  const text = document.getElementById("try-text");
  const metaLine = document.getElementById("try-meta");

  function whole(input, label) {
    const value = Number(input.value);
    if (input.value.trim() === "" || !Number.isInteger(value)) throw new Error(label + " must be a whole number.");
    return value;
  }

  function readImage(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
      reader.onerror = () => reject(new Error("The picture cannot be read."));
      reader.readAsDataURL(file);
    });
  }

  async function inputs() {
    const f = form.elements;
    if (kind === "text") {
      const prompt = f.prompt.value;
      if (!prompt.trim()) throw new Error("Write a prompt.");
      return [{ prompt, max_tokens: whole(f.max_tokens, "Most tokens") }];
    }
    if (kind === "class-images") {
      const item = { count: whole(f.count, "Pictures"), seed: whole(f.seed, "Seed") };
      if (f.class.value.trim()) item.class = f.class.value.trim();
      return [item];
    }
    if (kind === "prompt-images") {
      if (!f.prompt.value.trim()) throw new Error("Write a prompt.");
      return [{ prompt: f.prompt.value, count: whole(f.count, "Pictures"), seed: whole(f.seed, "Seed") }];
    }
    if (kind === "image-in") {
      const file = f.image.files[0];
      if (!file) throw new Error("Choose a picture.");
      return [{ image: await readImage(file) }];
    }
    let parsed;
    try {
      parsed = JSON.parse(f.json.value);
    } catch (e) {
      throw new Error("The inputs are not valid JSON: " + e.message);
    }
    if (!Array.isArray(parsed) || !parsed.length) throw new Error("The inputs must be a JSON list with one item per prediction.");
    return parsed;
  }

  function show(out) {
    const pictures = [];
    const words = [];
    for (const o of out.outputs) {
      if (o && Array.isArray(o.images)) {
        for (const b64 of o.images) pictures.push(String(b64));
      } else if (o && typeof o.text === "string") {
        words.push(o.text);
      } else if (o && typeof o.label === "string") {
        words.push(o.label + " (" + (100 * Number(o.confidence || 0)).toFixed(1) + "%)");
      } else {
        words.push(JSON.stringify(o, null, 2));
      }
    }
    images.replaceChildren(...pictures.map((b64, i) => G.el("img", {
      src: "data:image/png;base64," + b64.replace(/^data:[^,]*,/, ""),
      alt: "generated picture " + (i + 1), width: "96", height: "96",
    })));
    text.textContent = words.join("\n\n");
    text.hidden = !words.length;
    const units = out.units === null || out.units === undefined ? "" : "; " + out.units + " " + (out.unit || "unit") + "(s)";
    metaLine.textContent = "Answered by " + (out.model || "the endpoint") + " in " + Math.round(out.latency_ms) +
      " ms" + units + ", metered as " + out.metered_as + ".";
    result.hidden = false;
  }

  // One call per Run; the button says it is running and is usable again after either answer.
  G.form(form, {
    error: problem,
    busy: "Running…",
    again: true,
    read: async () => ({ inputs: await inputs() }),
    send: async (body) => (await G.api("POST", "/v1/endpoints/" + encodeURIComponent(name) + "/try", body)).json(),
    done: show,
  });
})();
