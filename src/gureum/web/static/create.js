// Create forms: a member and an API key (admin pages), a consumer (consumers page), a retrain
// pipeline (pipelines page).
// Each <form data-post="/v1/..."> is sent as JSON with the page's CSRF token (G.api); empty
// fields are left out so the API's defaults apply. The API decides who may: a viewer gets its
// 403 in words. A new key's secret is put in the page once, never in a URL or storage.
"use strict";

(() => {
  for (const form of document.querySelectorAll("form[data-post]")) wire(form);
  const copy = document.getElementById("new-key-copy");
  if (copy) {
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(document.getElementById("new-key-token").textContent);
        G.say("Copied.");
      } catch (e) {
        G.say("Copying was refused by the browser: select the key and copy it by hand.", true);
      }
    });
    document.getElementById("new-key-done").addEventListener("click", () => {
      document.getElementById("new-key-token").textContent = "";
      document.getElementById("new-key").hidden = true;
      location.reload();
    });
  }

  function body(form) {
    const out = {};
    for (const input of form.elements) {
      if (!input.name || input.disabled) continue;
      if (input.type === "checkbox") { if (input.checked) out[input.name] = true; continue; }
      const text = input.value.trim();
      if (text === "") continue;
      const type = input.dataset.type || (input.type === "number" ? "int" : "");
      if (type) {
        const value = Number(text);
        if (!Number.isFinite(value)) throw new Error(labelOf(form, input) + " must be a number.");
        out[input.name] = value;
      } else {
        out[input.name] = text;
      }
    }
    return out;
  }

  function labelOf(form, input) {
    const label = form.querySelector('label[for="' + input.id + '"]');
    return label ? label.textContent.trim() : input.name;
  }

  // The API's message with each field it named: "name: String should match pattern ...".
  function said(e) {
    if (!Array.isArray(e.details) || !e.details.length) return e.message;
    const fields = e.details.map((d) => (Array.isArray(d.loc) ? d.loc[d.loc.length - 1] : "") + ": " + d.msg);
    return e.message + ": " + fields.join("; ") + ".";
  }

  function wire(form) {
    const problem = form.querySelector(".error");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.hidden = true;
      const button = form.querySelector("button[type=submit]");
      let payload;
      try {
        payload = body(form);
      } catch (e) {
        problem.textContent = e.message;
        problem.hidden = false;
        return;
      }
      button.disabled = true;
      try {
        const out = await (await G.api("POST", form.dataset.post, payload)).json();
        if (form.id === "key-form") return showKey(form, out);
        if (form.id === "consumer-form") {
          return showSecret(form, out.token, "Consumer " + out.name + " added with key " + out.key_id + ".");
        }
        G.say(form.dataset.done || "Done.");
        if (form.dataset.go) setTimeout(() => location.assign(form.dataset.go + encodeURIComponent(out.name)), 400);
        else setTimeout(() => location.reload(), 600);
      } catch (e) {
        problem.textContent = said(e);
        problem.hidden = false;
        button.disabled = false;
      }
    });
  }

  // A secret shown once, in the page only (an API key's or a new consumer's first key).
  function showSecret(form, secret, message) {
    const token = document.getElementById("new-key-token");
    token.textContent = secret;
    document.getElementById("new-key").hidden = false;
    form.reset();
    form.querySelector("button[type=submit]").disabled = false;
    G.say(message);
    token.focus();
  }

  function showKey(form, out) {
    showSecret(form, out.token, "Key " + out.key_id + " created for " + out.user + " (" + out.role + ").");
    const body = document.querySelector("#keys tbody");
    if (body) {
      body.prepend(G.el("tr", { "data-key": out.key_id },
        G.el("td", {}, G.el("code", {}, out.key_id)), G.el("td", {}, out.name), G.el("td", {}, out.user),
        G.el("td", {}, out.role), G.el("td", {}, G.when(out.created_at)), G.el("td", {}, "—"),
        G.el("td", {}, out.expires_at ? G.when(out.expires_at) : "never"), G.el("td", {}, "active")));
    }
  }
})();
