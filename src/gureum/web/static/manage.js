// Managing from the browser (admins): a consumer's plan, limits, capture opt-out and keys
// (consumers page), a member's role and membership (admin page). Every change is one call to
// the REST API with the page's CSRF token (G.form, G.button); the API decides who may, so a
// control a page should not have shown still changes nothing, and its refusal is said in words.
// A consumer's new key is shown once in the page's "new key" box (create.js wires its buttons).
"use strict";

(() => {
  for (const box of document.querySelectorAll("details[data-consumer]")) wireConsumer(box);
  for (const row of document.querySelectorAll("tr[data-member]")) wireMember(row);

  const reload = () => setTimeout(() => location.reload(), 600);

  function wireConsumer(box) {
    const name = box.dataset.consumer;
    const path = "/v1/consumers/" + encodeURIComponent(name);
    const patch = async (body) => (await G.api("PATCH", path, body)).json();

    G.form(box.querySelector('form[data-manage="plan"]'), {
      read: (form) => {
        const plan = form.elements.plan.value.trim();
        if (!plan) throw new Error("Name the plan to switch " + name + " to.");
        return { plan };
      },
      send: patch,
      done: (out) => { G.say(name + " is now on plan " + out.plan.name + "."); reload(); },
    });

    G.form(box.querySelector('form[data-manage="limits"]'), {
      read: (form) => {
        const body = G.fields(form);
        if (!Object.keys(body).length) throw new Error("Fill in the limits to change; empty ones stay as they are.");
        return body;
      },
      send: patch,
      done: (out) => { G.say("Limits of " + name + " changed: it is on plan " + out.plan.name + "."); reload(); },
    });

    for (const button of box.querySelectorAll("button[data-capture]")) {
      const capture = button.dataset.capture === "1";
      G.button(button, {
        confirm: button.dataset.confirm,
        send: () => patch({ capture }),
        done: () => {
          G.say(capture ? "Calls of " + name + " may be captured again." : "Calls of " + name + " are never captured now.");
          reload();
        },
      });
    }

    const keys = box.querySelector("table.consumer-keys tbody");
    for (const button of keys.querySelectorAll("button[data-revoke-consumer-key]")) wireRevoke(button, path, name);

    const another = box.querySelector("button[data-new-consumer-key]");
    G.button(another, {
      send: async () => (await G.api("POST", path + "/keys")).json(),
      done: (out) => {
        const revoke = G.el("button", { type: "button", class: "danger", "data-revoke-consumer-key": out.key_id }, "Revoke");
        keys.append(G.el("tr", { "data-key": out.key_id }, G.el("td", {}, G.el("code", {}, out.key_id)),
          G.el("td", {}, G.when(out.created_at)), G.el("td", {}, "active ", revoke)));
        wireRevoke(revoke, path, name);
        showSecret(out.token, "Key " + out.key_id + " made for " + name + ".");
        another.disabled = false;
      },
    });
  }

  function wireRevoke(button, path, name) {
    const id = button.dataset.revokeConsumerKey;
    G.button(button, {
      confirm: "Revoke key " + id + " of " + name + "? Calls with it are refused at once, and its portal sessions end.",
      send: async () => (await G.api("DELETE", path + "/keys/" + encodeURIComponent(id))).json(),
      done: (out) => {
        button.parentElement.replaceChildren("revoked " + G.when(out.revoked_at));
        G.say("Key " + out.key_id + " of " + name + " revoked.");
      },
    });
  }

  // The secret in the page only, once: never in a URL or storage; "I have stored it" clears it.
  function showSecret(secret, message) {
    const token = document.getElementById("new-key-token");
    token.textContent = secret;
    document.getElementById("new-key").hidden = false;
    G.say(message);
    token.focus();
  }

  function wireMember(row) {
    const name = row.dataset.member;
    const path = "/v1/users/" + encodeURIComponent(name);
    const form = row.querySelector('form[data-manage="role"]');
    const select = form.elements.role;
    const self = row.dataset.self === "1";
    G.form(form, {
      read: () => {
        if (select.value === select.dataset.was) throw new Error(name + " is already " + select.value + ": choose another role.");
        return { role: select.value };
      },
      confirm: (body) => (self
        ? "Make yourself " + body.role + "? Your keys and this session get that role at once" +
          (body.role === "admin" || body.role === "owner" ? "." : ": you lose the admin pages.")
        : ""),
      send: async (body) => (await G.api("PATCH", path, body)).json(),
      done: (out) => { G.say(out.name + " is now " + out.role + "."); reload(); },
    });
    const problem = form.querySelector(".error");
    G.button(row.querySelector("button[data-remove-member]"), {
      error: problem,
      confirm: () => (self
        ? "Remove yourself from this workspace? Your keys here are revoked and you are signed out."
        : "Remove " + name + " from this workspace? Their keys here are revoked at once."),
      send: () => G.api("DELETE", path),
      done: () => {
        G.say(name + " removed.");
        if (self) setTimeout(() => location.assign("/login"), 600); else reload();
      },
    });
  }
})();
