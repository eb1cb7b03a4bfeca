// Create forms: a member and an API key (admin pages), a consumer (consumers page), a retrain
// pipeline (pipelines page).
// Each <form data-post="/v1/..."> is sent as JSON with the page's CSRF token (G.form); empty
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

  // The fields as JSON to data-post (G.form); a new key's or consumer's secret is shown once,
  // anything else is said and the page follows (data-go: the new thing's page) or reloads.
  function wire(form) {
    G.form(form, {
      done: (out) => {
        if (form.id === "key-form") return showKey(form, out);
        if (form.id === "consumer-form") {
          return showSecret(form, out.token, "Consumer " + out.name + " added with key " + out.key_id + ".");
        }
        // Attributes, not form.dataset: the pipeline form has a control named "dataset".
        const go = form.getAttribute("data-go");
        G.say(form.getAttribute("data-done") || "Done.");
        if (go) setTimeout(() => location.assign(go + encodeURIComponent(out.name)), 400);
        else setTimeout(() => location.reload(), 600);
      },
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
