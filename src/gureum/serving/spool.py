"""Records that survive a replica crash (usage, feedback, captured calls): appended to a local
file before the response leaves, shipped in batches by a background thread.

A spool file is named after the process that writes it; a replica that finds the file of a dead
process in the same folder ships what is left of it (a replica killed mid-batch loses nothing).
Records carry their own ids and the control plane ignores ids it already has, so shipping twice
is harmless. A spool may be bounded: past its bound it drops new records and counts them (capture
must never slow or fail a request, even while its storage is down for long).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gureum.schemas.metering import MAX_BATCH

# Under "ray.serve" so that it lands in the replica's log file next to Ray Serve's own lines.
log = logging.getLogger("ray.serve.gureum")
ROTATE_BYTES = 4 * 1024 * 1024

# ship(endpoint, items) -> None, each item with its "kind"; raises when they were not taken.
Ship = Callable[[str, list[dict[str, Any]]], None]
FIRST_READ = 8 * 1024 * 1024


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SpoolFile:
    """One append-only JSON-lines file and the byte offset already shipped (in ``.offset``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_path = path.with_suffix(".offset")

    @property
    def shipped(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def mark(self, offset: int) -> None:
        tmp = self.offset_path.with_suffix(".offset.tmp")
        tmp.write_text(str(offset))
        os.replace(tmp, self.offset_path)

    def pending(self, limit: int = MAX_BATCH) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` complete lines after the shipped offset, and the offset after them."""
        start = self.shipped
        size = FIRST_READ
        try:
            with open(self.path, "rb") as f:
                while True:  # at least one whole line, however long (a captured image)
                    f.seek(start)
                    data = f.read(size)
                    if b"\n" in data or len(data) < size:
                        break
                    size *= 2
        except FileNotFoundError:
            return [], start
        items: list[dict[str, Any]] = []
        pos = 0
        while len(items) < limit:
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # a line still being written
            line = data[pos:nl]
            pos = nl + 1
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("skipping a corrupt spooled line in %s", self.path)
        return items, start + pos

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.offset_path.unlink(missing_ok=True)


class UsageSpool:
    def __init__(
        self,
        folder: Path,
        endpoint: str,
        ship: Ship,
        interval_s: float = 1.0,
        max_bytes: int | None = None,
    ) -> None:
        self.folder = folder
        self.endpoint = endpoint
        folder.mkdir(parents=True, exist_ok=True)
        self._ship = ship
        self._interval = interval_s
        self._lock = threading.Lock()
        self._seq = 0
        self._file = self._new_file()
        self._fh = open(self._file.path, "ab", buffering=0)  # noqa: SIM115 (lives as long as we do)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-shipper", daemon=True)
        self.shipped = 0
        self.failures = 0
        self._max_bytes = max_bytes
        self._unshipped = 0  # bytes this process appended and has not shipped
        self.dropped = 0
        self.appended = 0

    def start(self) -> None:
        self._thread.start()

    def _new_file(self) -> SpoolFile:
        self._seq += 1
        return SpoolFile(self.folder / f"{self.endpoint}.{os.getpid()}.{self._seq}.jsonl")

    def append(self, kind: str, record: dict[str, Any]) -> bool:
        """One write() of a whole line: durable against the process dying once it returns.
        False (and counted in ``dropped``) when a bounded spool is full."""
        line = json.dumps({"kind": kind, **record}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._max_bytes is not None and self._unshipped + len(line) > self._max_bytes:
                self.dropped += 1
                return False
            self._fh.write(line)
            self._unshipped += len(line)
            self.appended += 1
        return True

    @property
    def pending_bytes(self) -> int:
        return self._unshipped

    def flush(self) -> None:
        """Ship now (tests, shutdown); returns when the spool is empty or shipping failed."""
        self._ship_all()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self._ship_all()
        finally:
            self._fh.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._ship_all()
            except Exception:
                self.failures += 1
                log.warning("shipping %s failed; records stay spooled", self.folder, exc_info=True)

    def _ship_all(self) -> None:
        for spool in self._orphans():
            if self._ship_file(spool):
                spool.remove()
        self._ship_file(self._file)
        self._maybe_rotate()

    def _ship_file(self, spool: SpoolFile) -> bool:
        """Ship every complete line; True once the file has nothing left."""
        while True:
            start = spool.shipped
            items, end = spool.pending()
            if not items:
                return end >= _size(spool.path)
            self._ship(self.endpoint, items)
            spool.mark(end)
            self.shipped += len(items)
            if spool is self._file:
                with self._lock:
                    self._unshipped = max(0, self._unshipped - (end - start))

    def _maybe_rotate(self) -> None:
        if _size(self._file.path) < ROTATE_BYTES or self._file.shipped < _size(self._file.path):
            return
        with self._lock:
            old, self._file = self._file, self._new_file()
            self._fh.close()
            self._fh = open(self._file.path, "ab", buffering=0)  # noqa: SIM115
        old.remove()

    def _orphans(self) -> list[SpoolFile]:
        """Spool files of this endpoint whose writing process is gone."""
        found = []
        for path in self.folder.glob(f"{self.endpoint}.*.jsonl"):
            parts = path.name.split(".")
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            pid = int(parts[1])
            if pid != os.getpid() and not _alive(pid):
                found.append(SpoolFile(path))
        return found


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def of_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The items of one kind, without their kind."""
    return [{k: v for k, v in i.items() if k != "kind"} for i in items if i.get("kind") == kind]
