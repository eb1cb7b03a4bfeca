// Sample grids and outputs of a job (job page) or of the job that trained a model version
// (model version page): polled from the REST API while the job runs, so the grid of each new
// epoch shows up as training goes; each output downloads through /download/jobs/...
"use strict";

(() => {
  const box = document.getElementById("job-samples");
  if (!box || !box.dataset.job) return;
  const id = box.dataset.job;
  const base = "/v1/jobs/" + encodeURIComponent(id);
  const POLL_MS = 5000;
  const MAX_GRIDS = 24;
  const PICTURE = /\.(png|jpe?g|gif|webp)$/i;
  const EPOCH = /(?:^|\/)epoch-(\d+)\.[a-z]+$/i;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const path = (p) => p.split("/").map(encodeURIComponent).join("/");
  let shown = ""; // what is drawn now, to redraw only on a change

  function size(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  // The grid of each epoch, newest first, then the final grids (all classes, then each class).
  function grids(outputs) {
    const pictures = outputs.filter((o) => o.path.startsWith("samples/") && PICTURE.test(o.path));
    const epochs = pictures.filter((o) => EPOCH.test(o.path))
      .map((o) => ({ o, n: Number(EPOCH.exec(o.path)[1]) })).sort((a, b) => b.n - a.n)
      .map(({ o, n }) => ({ o, caption: "epoch " + n }));
    const rest = pictures.filter((o) => !EPOCH.test(o.path))
      .sort((a, b) => (a.path === "samples/all.png" ? -1 : b.path === "samples/all.png" ? 1 : a.path.localeCompare(b.path)))
      .map((o) => ({ o, caption: o.path === "samples/all.png" ? "final samples, a row per class" : o.path.slice(8) }));
    return rest.slice(0, 1).concat(epochs, rest.slice(1)).slice(0, MAX_GRIDS);
  }

  function render(outputs) {
    const key = outputs.map((o) => o.path + ":" + o.sha256).join("|");
    if (key === shown) return;
    shown = key;
    const figures = grids(outputs).map(({ o, caption }) => G.el("figure", {},
      G.el("a", { href: "/download/jobs/" + encodeURIComponent(id) + "/" + path(o.path) },
        G.el("img", { src: base + "/outputs/" + path(o.path) + "?sha=" + o.sha256.slice(0, 12),
          alt: "Sample grid: " + caption, loading: "lazy" })),
      G.el("figcaption", {}, caption)));
    document.getElementById("samples").replaceChildren(...figures);
    document.getElementById("samples-empty").hidden = figures.length > 0;
    const table = document.getElementById("outputs");
    if (!table) return;
    table.querySelector("tbody").replaceChildren(...outputs.map((o) => G.el("tr", {},
      G.el("td", {}, G.el("a", { href: "/download/jobs/" + encodeURIComponent(id) + "/" + path(o.path), download: "" }, o.path)),
      G.el("td", {}, size(o.size)))));
    table.hidden = !outputs.length;
    document.getElementById("outputs-empty").hidden = outputs.length > 0;
  }

  async function outputs() {
    const all = [];
    let cursor = null;
    for (let round = 0; round < 10; round++) {
      const page = await G.json(base + "/outputs?limit=200" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      all.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    return all;
  }

  let finalRound = false;
  G.poll(async () => {
    render(await outputs());
    // The job page keeps data-state current; a model version's job has ended already.
    const job = document.getElementById("job");
    const state = job ? job.dataset.state : "succeeded";
    if (TERMINAL.has(state)) {
      if (finalRound) return false;
      finalRound = true;
    }
    return true;
  }, POLL_MS);
})();
