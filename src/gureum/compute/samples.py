"""Sample grids shown while a job trains: pictures a recipe writes under ``artifacts/samples``
(the image recipes' grid of each epoch) are stored as blobs and reported as ``output`` items as
soon as they are written, so the job page shows them before the job ends. At the end every
artifact is stored anyway (``work.upload``); a grid published here is not stored twice.

A background thread looks every second; a file is published once it has not been written for
``SETTLE_S`` (a grid being written is not taken half-way), and again when it is written anew.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gureum.compute.spec import Item
from gureum.storage.store import ArtifactStore

SCAN_S = 1.0
SETTLE_S = 0.5
FOLDER = "samples"
PICTURE = re.compile(r"\.(png|jpe?g|gif|webp)$", re.I)
MAX_PICTURE_BYTES = 64 << 20
log = logging.getLogger(__name__)


class SamplePublisher:
    """Publishes new or changed pictures under ``artifacts_dir/samples`` of one run (rank 0)."""

    def __init__(
        self,
        store: ArtifactStore,
        workspace_id: int,
        artifacts_dir: Path,
        add: Callable[[Item], None],
        scan_s: float = SCAN_S,
    ) -> None:
        self._store = store
        self._workspace_id = workspace_id
        self._root = artifacts_dir
        self._add = add
        self._scan_s = scan_s
        self._published: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gureum-samples", daemon=True)

    def start(self) -> SamplePublisher:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop looking (what is written after is stored with the other artifacts)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def scan(self) -> int:
        """One look: publish each new or rewritten picture left alone for a while; how many."""
        folder = self._root / FOLDER
        if folder.is_symlink() or not folder.is_dir():
            return 0
        published = 0
        # Regular files only, never through a link (rglob does not enter linked folders): this
        # runs with the platform's rights, and what it reads becomes a downloadable output.
        for path in sorted(p for p in folder.rglob("*") if PICTURE.search(p.name)):
            try:
                st = path.lstat()
            except OSError:
                continue  # removed meanwhile
            if not stat.S_ISREG(st.st_mode):
                continue
            now = (st.st_size, st.st_mtime_ns)
            settled = time.time_ns() - st.st_mtime_ns >= SETTLE_S * 1e9
            if not settled or self._published.get(path) == now or st.st_size > MAX_PICTURE_BYTES:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # replaced by a link or removed since
            with os.fdopen(fd, "rb") as fh:
                info = self._store.write_blob(
                    self._workspace_id,
                    iter(lambda: fh.read(1 << 20), b""),
                    max_bytes=MAX_PICTURE_BYTES,
                )
            self._published[path] = now
            rel = path.relative_to(self._root).as_posix()
            self._add({"type": "output", "path": rel, "sha256": info.sha256, "size": info.size})
            published += 1
        return published

    def _loop(self) -> None:
        while not self._stop.wait(self._scan_s):
            try:
                self.scan()
            except Exception:  # a full disk or a store hiccup must not end the training
                log.warning("publishing sample grids failed; retrying", exc_info=True)
