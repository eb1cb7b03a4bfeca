// gureum dashboard: shared helpers. No inline script anywhere (the CSP forbids it); pages
// load this file and their own. Every call goes to this server's REST API with the session
// cookie; calls that change something carry the page's CSRF token.
"use strict";

const G = (() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  class ApiError extends Error {
    constructor(status, message, details) { super(message); this.status = status; this.details = details; }
  }

  function signInAgain() {
    const here = location.pathname + location.search;
    const form = document.body.dataset.signin || "/login"; // the portal has its own
    location.assign(form + "?ended=1&next=" + encodeURIComponent(here));
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let r;
    try {
      r = await fetch(path, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "The server cannot be reached. Check your connection; retrying.");
    }
    if (r.status === 401) { signInAgain(); throw new ApiError(401, "Your session has ended."); }
    if (!r.ok) {
      let message = r.status + " " + r.statusText;
      let details = null;
      try {
        const error = (await r.json()).error;
        message = error.message || message;
        details = error.details;
      } catch (e) { /* not JSON */ }
      if (r.status === 403) message = "Not allowed: " + message;
      throw new ApiError(r.status, message, details);
    }
    return r;
  }

  async function json(path) { return (await api("GET", path)).json(); }

  let flashTimer = 0;
  function say(message, bad) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.classList.toggle("bad", !!bad);
    box.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 4000);
  }

  // Element builder: text goes in as text, never as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function stateBadge(state) { return el("span", { class: "state state-" + state }, state); }

  function when(iso) {
    if (!iso) return "—";
    return iso.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, " UTC");
  }

  // The REST lists page by an opaque cursor; for tailing a list by its sequence number the
  // cursor "after seq N" is the URL-safe base64 of N's JSON (server/pagination.py).
  function afterCursor(seq) {
    return btoa(JSON.stringify(seq)).replace(/\+/g, "-").replace(/\//g, "_");
  }

  // Polls fn every intervalMs (bounded: never faster, one call in flight, paused while the
  // tab is hidden); stops when fn returns false. Errors are shown once and polling goes on.
  function poll(fn, intervalMs) {
    let stopped = false;
    let failing = false;
    async function tick() {
      if (stopped) return;
      if (!document.hidden) {
        try {
          if ((await fn()) === false) { stopped = true; return; }
          if (failing) { say("Connected again."); failing = false; }
        } catch (e) {
          if (e.status === 401) { stopped = true; return; }
          if (!failing) say(e.message, true);
          failing = true;
        }
      }
      setTimeout(tick, intervalMs);
    }
    tick();
    return () => { stopped = true; };
  }

  // A refused request's message with each field the API named ("params.epochs: ..."): the
  // field's path in the body, without the leading "body".
  function said(e) {
    if (!Array.isArray(e.details) || !e.details.length) return e.message;
    const fields = e.details.map((d) => {
      const loc = Array.isArray(d.loc) ? d.loc.filter((part, i) => !(i === 0 && part === "body")) : [];
      return loc.join(".") + ": " + (d.msg || d.message || "");
    });
    return e.message + ": " + fields.join("; ") + ".";
  }

  // A form's fields as a JSON body: by name, empty ones left out (the API's defaults apply),
  // a ticked checkbox as true, data-type="float"/"int" (or type=number) as a number,
  // data-type="list" as the comma-separated items.
  function fields(form) {
    const out = {};
    for (const input of form.elements) {
      if (!input.name || input.disabled) continue;
      if (input.type === "checkbox") { if (input.checked) out[input.name] = true; continue; }
      const text = input.value.trim();
      if (text === "") continue;
      const type = input.dataset.type || (input.type === "number" ? "int" : "");
      if (type === "list") {
        out[input.name] = text.split(",").map((x) => x.trim()).filter((x) => x);
      } else if (type) {
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
    const label = input.id ? form.querySelector('label[for="' + input.id + '"]') : null;
    return label ? label.textContent.trim() : input.name;
  }

  // One form, one call: on submit, read(form) builds the body (an Error it throws is said in
  // the form's error box and nothing is sent), the submit button is disabled (and relabelled
  // busy) while send(body) runs, then done(out). A refusal is said in the box, prefixed, and
  // the button is usable again; after a success it stays disabled (the page moves on) unless
  // again is set. The defaults: the fields as JSON, sent to data-post (with data-method, POST
  // unless it says PUT or PATCH), "Done." and a reload.
  function form(node, options) {
    const o = options || {};
    const problem = o.error || node.querySelector(".error");
    const button = node.querySelector("button[type=submit]");
    const label = button ? button.textContent : "";
    const read = o.read || fields;
    // Read as attributes: a form's control named like a property ("dataset") hides it.
    const data = (name) => node.getAttribute("data-" + name);
    const send = o.send || (async (payload) => (await api(data("method") || "POST", data("post"), payload)).json());
    const done = o.done || (() => {
      say(data("done") || "Done.");
      setTimeout(() => location.reload(), 600);
    });
    const fail = (message) => {
      if (!problem) { say(message, true); return; }
      problem.textContent = message;
      problem.hidden = false;
    };
    node.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (problem) { problem.hidden = true; problem.textContent = ""; }
      let payload;
      try {
        payload = await read(node);
      } catch (e) {
        fail(e.message);
        return;
      }
      const question = typeof o.confirm === "function" ? o.confirm(payload) : o.confirm;
      if (question && !window.confirm(question)) return;
      if (button) { button.disabled = true; if (o.busy) button.textContent = o.busy; }
      let sent = false;
      let failed = false;
      try {
        const out = await send(payload);
        sent = true;
        await done(out, payload);
      } catch (e) {
        failed = true;
        fail(sent ? e.message : (o.prefix || "") + said(e));
      } finally {
        if (button && (failed || o.again)) {
          button.disabled = false;
          if (o.busy) button.textContent = label;
        }
      }
    });
  }

  // One button, one call: an optional confirmation, the button disabled while send() runs,
  // then done(out); a refusal is said in words (in the error box given, else flashed) and the
  // button is usable again.
  function button(node, options) {
    const problem = options.error;
    node.addEventListener("click", async () => {
      const question = typeof options.confirm === "function" ? options.confirm() : options.confirm;
      if (question && !window.confirm(question)) return;
      if (problem) { problem.hidden = true; problem.textContent = ""; }
      node.disabled = true;
      try {
        const out = await options.send();
        await options.done(out);
      } catch (e) {
        if (problem) { problem.textContent = e.message; problem.hidden = false; } else say(e.message, true);
        node.disabled = false;
      }
    });
  }

  // <button data-action="/v1/..." data-confirm="..." data-done="..."> posts with the CSRF token.
  function wireActions(root, onDone) {
    for (const node of root.querySelectorAll("button[data-action]")) {
      button(node, {
        confirm: node.dataset.confirm,
        send: () => api("POST", node.dataset.action),
        done: () => {
          say(node.dataset.done || "Done.");
          if (node.dataset.reload) setTimeout(() => location.reload(), 600);
          if (onDone) onDone(node);
        },
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => wireActions(document));
  return { api, json, say, el, stateBadge, when, afterCursor, poll, said, fields, form, button, ApiError };
})();
