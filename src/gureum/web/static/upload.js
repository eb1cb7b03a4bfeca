// Datasets page: push a folder or files as a new dataset version, through the same REST calls
// `gureum datasets push` makes: hash every file (SHA-256), ask which blobs the server lacks
// (POST /v1/blobs/missing), upload those (PUT /v1/blobs/{sha256}, the server checks the hash),
// then create the version from the list of paths (POST /v1/datasets/{name}/versions). One
// .zip/.tar/.tar.gz goes as-is to the archive route, which unpacks it safely. Nothing becomes a
// version until that last call succeeds, so a failed upload leaves no version behind.
"use strict";

const Upload = (() => {
  const NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
  const ARCHIVES = [[".tar.gz", "tar.gz"], [".tgz", "tar.gz"], [".tar", "tar"], [".zip", "zip"]];
  const WORKERS = 4; // uploads side by side
  const MISSING_CHUNK = 10000; // digests per "which are missing" question (the API's limit)
  const SUBTLE_MAX = 64 * 1024 * 1024; // larger files are hashed in slices (bounded memory)
  const SLICE = 4 * 1024 * 1024;

  // SHA-256, incremental: WebCrypto has no streaming digest and exists only on secure origins
  // (https, localhost); a control plane reached over plain http on the LAN has none.
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  class Sha256 {
    constructor() {
      this.h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
      this.buf = new Uint8Array(64);
      this.n = 0;
      this.length = 0;
      this.w = new Uint32Array(64);
    }

    update(data) {
      let i = 0;
      this.length += data.length;
      if (this.n) {
        const take = Math.min(64 - this.n, data.length);
        this.buf.set(data.subarray(0, take), this.n);
        this.n += take;
        i = take;
        if (this.n < 64) return this;
        this.block(this.buf, 0);
        this.n = 0;
      }
      for (; i + 64 <= data.length; i += 64) this.block(data, i);
      if (i < data.length) { this.buf.set(data.subarray(i), 0); this.n = data.length - i; }
      return this;
    }

    block(d, o) {
      const w = this.w, h = this.h;
      for (let t = 0; t < 16; t++) {
        const j = o + 4 * t;
        w[t] = (d[j] << 24) | (d[j + 1] << 16) | (d[j + 2] << 8) | d[j + 3];
      }
      for (let t = 16; t < 64; t++) {
        const x = w[t - 15], y = w[t - 2];
        const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
        const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
        w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
      }
      let a = h[0], b = h[1], c = h[2], e0 = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
      for (let t = 0; t < 64; t++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const ch = (e & f) ^ (~e & g);
        const t1 = (k + S1 + ch + K[t] + w[t]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const maj = (a & b) ^ (a & c) ^ (b & c);
        const t2 = (S0 + maj) | 0;
        k = g; g = f; f = e; e = (e0 + t1) | 0; e0 = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += e0; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
    }

    hex() {
      const bits = this.length * 8;
      const tail = new Uint8Array(this.n < 56 ? 64 - this.n : 128 - this.n);
      tail[0] = 0x80;
      const view = new DataView(tail.buffer);
      view.setUint32(tail.length - 8, Math.floor(bits / 0x100000000));
      view.setUint32(tail.length - 4, bits >>> 0);
      this.update(tail);
      return Array.from(this.h, (x) => x.toString(16).padStart(8, "0")).join("");
    }
  }

  function hexOf(buffer) {
    return Array.from(new Uint8Array(buffer), (x) => x.toString(16).padStart(2, "0")).join("");
  }

  async function hashFile(file, onBytes) {
    if (window.crypto && crypto.subtle && file.size <= SUBTLE_MAX) {
      const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
      onBytes(file.size);
      return hexOf(digest);
    }
    const sha = new Sha256();
    for (let at = 0; at < file.size; at += SLICE) {
      const piece = new Uint8Array(await file.slice(at, at + SLICE).arrayBuffer());
      sha.update(piece);
      onBytes(piece.length);
    }
    return sha.hex();
  }

  // A folder's files are named from inside it, as `gureum datasets push NAME FOLDER` names
  // them; hidden names (".DS_Store", ".git/...") are left out as the CLI leaves them out.
  function entries(folderFiles, plainFiles) {
    const picked = [];
    for (const file of folderFiles) {
      const parts = (file.webkitRelativePath || file.name).split("/");
      const inside = parts.length > 1 ? parts.slice(1) : parts;
      if (inside.some((p) => p.startsWith("."))) continue;
      picked.push({ file, path: inside.join("/") });
    }
    for (const file of plainFiles) {
      if (!file.name.startsWith(".")) picked.push({ file, path: file.name });
    }
    return picked;
  }

  function archiveFormat(name) {
    const lower = name.toLowerCase();
    const found = ARCHIVES.find(([suffix]) => lower.endsWith(suffix));
    return found ? found[1] : null;
  }

  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";

  // A body sent with upload progress (fetch has none), answered as G.api answers.
  function send(method, path, body, type, onProgress) {
    return new Promise((resolve, reject) => {
      const x = new XMLHttpRequest();
      x.open(method, path);
      x.setRequestHeader("Accept", "application/json");
      x.setRequestHeader("X-CSRF-Token", csrf);
      x.setRequestHeader("Content-Type", type);
      if (onProgress) x.upload.onprogress = (e) => onProgress(e.loaded);
      x.onload = () => {
        let out = null;
        try { out = JSON.parse(x.responseText); } catch (e) { /* not JSON */ }
        if (x.status >= 200 && x.status < 300) { resolve(out); return; }
        const error = (out && out.error) || {};
        let message = error.message || x.status + " " + x.statusText;
        if (x.status === 401) message = "Your session has ended: sign in again, then push again.";
        if (x.status === 403) message = "Not allowed: " + message;
        reject(new G.ApiError(x.status, message, error.details));
      };
      x.onerror = () => reject(new G.ApiError(0, "The server cannot be reached. Check your connection and push again."));
      x.send(body);
    });
  }

  // What went wrong, in words: the API's message with each field it named.
  function said(e) {
    if (!Array.isArray(e.details) || !e.details.length) return e.message;
    const fields = e.details.map((d) => (Array.isArray(d.loc) ? d.loc.slice(1).join(".") : "") + ": " + d.msg);
    return e.message + ": " + fields.join("; ") + ".";
  }

  function sizeOf(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + units[i];
  }

  async function pool(items, workers, fn) {
    let next = 0;
    async function run() { while (next < items.length) await fn(items[next++]); }
    await Promise.all(Array.from({ length: Math.min(workers, items.length) }, run));
  }

  function wire(form) {
    const progress = document.getElementById("up-progress");
    const status = document.getElementById("up-status");
    const problem = document.getElementById("up-error");
    const button = form.querySelector("button[type=submit]");
    const tell = (text) => { status.textContent = text; };
    const show = (done, total) => { progress.max = Math.max(total, 1); progress.value = done; };

    async function push(name, picked, message) {
      const base = "/v1/datasets/" + encodeURIComponent(name) + "/versions";
      if (picked.length === 1 && archiveFormat(picked[0].file.name)) {
        const file = picked[0].file;
        const query = new URLSearchParams({ format: archiveFormat(file.name), message });
        tell("Sending " + file.name + " (" + sizeOf(file.size) + "); the server unpacks it.");
        return send("POST", base + "/archive?" + query, file, "application/octet-stream",
          (loaded) => show(loaded, file.size));
      }
      const total = picked.reduce((n, p) => n + p.file.size, 0);
      let read = 0;
      for (const [i, p] of picked.entries()) {
        tell("Reading " + (i + 1) + " of " + picked.length + " files (" + sizeOf(total) + ")…");
        p.sha256 = await hashFile(p.file, (n) => { read += n; show(read, total); });
      }
      const unique = new Map(picked.map((p) => [p.sha256, p.file]));
      const digests = [...unique.keys()];
      const missing = [];
      for (let i = 0; i < digests.length; i += MISSING_CHUNK) {
        const r = await G.api("POST", "/v1/blobs/missing", { sha256: digests.slice(i, i + MISSING_CHUNK) });
        missing.push(...(await r.json()).missing);
      }
      const sending = missing.reduce((n, sha) => n + unique.get(sha).size, 0);
      const kept = digests.length - missing.length;
      let sent = 0;
      const live = new Map();
      const update = () => {
        const now = sent + [...live.values()].reduce((a, b) => a + b, 0);
        show(now, sending);
        tell("Uploading " + sizeOf(now) + " of " + sizeOf(sending) +
          (kept ? " (" + kept + " files the server already has are not sent again)" : "") + "…");
      };
      update();
      await pool(missing, WORKERS, async (sha) => {
        const file = unique.get(sha);
        await send("PUT", "/v1/blobs/" + sha, file, "application/octet-stream",
          (loaded) => { live.set(sha, loaded); update(); });
        live.delete(sha);
        sent += file.size;
        update();
      });
      tell("Making the version (the server reads the schema and splits the data)…");
      const files = picked.map((p) => ({ path: p.path, sha256: p.sha256, size: p.file.size }));
      return (await G.api("POST", base, { files, message })).json();
    }

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      problem.hidden = true;
      const name = form.elements.name.value.trim();
      const folder = [...form.elements.folder.files];
      const plain = [...form.elements.files.files];
      const fail = (text) => { problem.textContent = text; problem.hidden = false; };
      if (!NAME.test(name)) {
        fail("The dataset name must be 1 to 64 lowercase letters, digits, “.”, “_” or “-”, starting with a letter or digit.");
        return;
      }
      if (folder.length && plain.length) { fail("Choose a folder or files, not both."); return; }
      const picked = entries(folder, plain);
      if (!picked.length) { fail("Choose a folder or files to push (hidden files are left out)."); return; }
      button.disabled = true;
      progress.hidden = false;
      show(0, 1);
      try {
        const v = await push(name, picked, form.elements.message.value.trim());
        show(1, 1);
        tell("Pushed " + v.dataset + ":" + v.version + ": " + v.file_count + " files, " + v.kind + ".");
        G.say("Pushed " + v.dataset + ":" + v.version + ".");
        setTimeout(() => location.assign("/datasets/" + encodeURIComponent(v.dataset) + "/versions/" + v.version), 600);
      } catch (e) {
        tell("No version was made.");
        fail(said(e));
        progress.hidden = true;
        button.disabled = false;
      }
    });
  }

  const form = document.getElementById("upload-form");
  if (form) wire(form);
  return { Sha256, hashFile, entries };
})();
