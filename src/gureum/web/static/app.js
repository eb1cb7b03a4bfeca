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

  // <button data-action="/v1/..." data-confirm="..." data-done="..."> posts with the CSRF token.
  function wireActions(root, onDone) {
    for (const button of root.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
        button.disabled = true;
        try {
          await api("POST", button.dataset.action);
          say(button.dataset.done || "Done.");
          if (button.dataset.reload) setTimeout(() => location.reload(), 600);
          if (onDone) onDone(button);
        } catch (e) {
          say(e.message, true);
          button.disabled = false;
        }
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => wireActions(document));
  return { api, json, say, el, stateBadge, when, afterCursor, poll, ApiError };
})();
