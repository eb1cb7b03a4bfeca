// Pipeline page (developers and up): the edit form and the delete button, through G.form and
// G.button. Only the fields changed from the value the page was drawn with (data-was) are sent,
// as a PATCH; an emptied optional field is sent as null (cleared). A refusal is said in words,
// with each field the API named; a success reloads the page to show the change. Deleting asks
// first and goes back to the pipelines list (a run in progress is refused in words).
"use strict";

(() => {
  const remove = document.getElementById("pipeline-delete");
  if (remove) {
    const name = document.getElementById("pipeline").getAttribute("data-name");
    G.button(remove, {
      confirm: remove.getAttribute("data-confirm"),
      error: document.getElementById("pipeline-delete-error"),
      send: () => G.api("DELETE", "/v1/pipelines/" + encodeURIComponent(name)),
      done: () => {
        G.say("Pipeline " + name + " deleted.");
        location.assign("/pipelines");
      },
    });
  }
  const form = document.getElementById("pipeline-edit-form");
  if (!form) return;
  // Attributes, not form.dataset: a form's named fields shadow its properties (a field is
  // called "dataset").
  const target = form.getAttribute("data-patch");
  const done = form.getAttribute("data-done") || "Saved.";

  function labelOf(input) {
    const label = input.id ? form.querySelector('label[for="' + input.id + '"]') : null;
    return (label || input.closest("label") || input).textContent.trim() || input.name;
  }

  // The changed fields as a JSON body; an Error names a field that is not a number.
  function changes() {
    const out = {};
    for (const input of form.elements) {
      if (!input.name || input.disabled || input.dataset.was === undefined) continue;
      if (input.type === "checkbox") {
        if (String(input.checked) !== input.dataset.was) out[input.name] = input.checked;
        continue;
      }
      const text = input.value.trim();
      if (text === input.dataset.was.trim()) continue;
      if (text === "") { out[input.name] = null; continue; }
      const type = input.dataset.type || (input.type === "number" ? "int" : "");
      if (!type) { out[input.name] = text; continue; }
      const value = Number(text);
      if (!Number.isFinite(value)) throw new Error(labelOf(input) + " must be a number.");
      if (String(value) !== String(Number(input.dataset.was))) out[input.name] = value;
    }
    return out;
  }

  G.form(form, {
    read: () => {
      const body = changes();
      if (!Object.keys(body).length) throw new Error("Nothing was changed.");
      return body;
    },
    send: async (body) => (await G.api("PATCH", target, body)).json(),
    done: () => {
      G.say(done);
      setTimeout(() => location.reload(), 500);
    },
  });
})();
