// Endpoint page: the endpoint's state and message, polled every 3 s (bounded, paused while the
// tab is hidden), so a deploy, a rollover or a failure shows without a reload.
"use strict";

(() => {
  const root = document.getElementById("endpoint");
  const badge = document.getElementById("ep-state");
  if (!root || !badge) return;
  const path = "/v1/endpoints/" + encodeURIComponent(root.dataset.name);
  let state = badge.textContent.trim();
  G.poll(async () => {
    const ep = await G.json(path);
    if (ep.state !== state) {
      badge.replaceChildren(G.stateBadge(ep.state));
      if (ep.state === "ready") G.say("Endpoint " + ep.name + " is ready: " + ep.model_label + ".");
      if (ep.state === "failed") G.say("Endpoint " + ep.name + " failed: " + (ep.message || "see its events") + ".", true);
      state = ep.state;
    }
    return true;
  }, 3000);
})();
