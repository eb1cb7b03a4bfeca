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
import time
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
# A writer whose sidecar ships re-reads what was shipped at most this often (its bound).
RECOUNT_S = 0.5


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SpoolFile:
    """One append-only JSON-lines file, and the byte offset and the number of lines already
    shipped (``.offset``: "OFFSET LINES"; the process that ships may not be the one that
    writes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_path = path.with_suffix(".offset")

    def progress(self) -> tuple[int, int]:
        """(bytes, lines) shipped so far."""
        try:
            parts = self.offset_path.read_text().split()
            return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        except (FileNotFoundError, ValueError, IndexError):
            return 0, 0

    @property
    def shipped(self) -> int:
        return self.progress()[0]

    def mark(self, offset: int, lines: int = 0) -> None:
        tmp = self.offset_path.with_suffix(".offset.tmp")
        tmp.write_text(f"{offset} {lines}")
        os.replace(tmp, self.offset_path)

    @property
    def pid(self) -> int | None:
        """The writing process (files are named ``<endpoint>.<pid>.<seq>.jsonl``)."""
        parts = self.path.name.split(".")
        return int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None

    @property
    def seq(self) -> int:
        parts = self.path.name.split(".")
        return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else 0

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


class Shipper:
    """Ships the complete lines of an endpoint's spool files in one folder: those of its owner
    (a process's own, or the replica a sidecar serves) and those of writers that died. A file
    that is fully shipped and no longer written (an orphan, or one its owner rotated away from)
    is removed."""

    def __init__(self, folder: Path, endpoint: str, ship: Ship, owner_pid: int) -> None:
        self.folder = folder
        self.endpoint = endpoint
        self._ship = ship
        self.owner_pid = owner_pid
        self.shipped = 0  # lines

    def files(self) -> list[SpoolFile]:
        found = [SpoolFile(p) for p in self.folder.glob(f"{self.endpoint}.*.jsonl")]
        return sorted((f for f in found if f.pid is not None), key=lambda f: (f.pid, f.seq))

    def ship_all(self, current: SpoolFile | None = None) -> None:
        """``current``: the owner's file being written; by default the owner's newest."""
        files = self.files()
        own = [f for f in files if f.pid == self.owner_pid]
        if current is None and own:
            current = own[-1]
        for spool in files:
            mine = spool.pid == self.owner_pid
            if not mine and (spool.pid is None or alive(spool.pid)):
                continue  # another live writer's: its own shipper's
            done = self.ship_file(spool)
            if done and (spool.path != (current.path if current else None)):
                spool.remove()

    def ship_file(self, spool: SpoolFile) -> bool:
        """Ship every complete line; True once the file has nothing left."""
        while True:
            start, lines = spool.progress()
            items, end = spool.pending()
            if not items:
                return end >= _size(spool.path)
            self._ship(self.endpoint, items)
            spool.mark(end, lines + len(items))
            self.shipped += len(items)
            self.after(spool, end - start)

    def after(self, spool: SpoolFile, shipped_bytes: int) -> None:
        """Hook: what one shipment of ``spool`` freed (the writer's bound, in-process)."""


class UsageSpool:
    """Appends records to this process's spool file. ``ship`` None: another process (a
    sidecar) ships them, and what it shipped is read back from the offset files."""

    def __init__(
        self,
        folder: Path,
        endpoint: str,
        ship: Ship | None,
        interval_s: float = 1.0,
        max_bytes: int | None = None,
    ) -> None:
        self.folder = folder
        self.endpoint = endpoint
        folder.mkdir(parents=True, exist_ok=True)
        self._interval = interval_s
        self._lock = threading.Lock()
        self._seq = 0
        self._file = self._new_file()
        self._fh = open(self._file.path, "ab", buffering=0)  # noqa: SIM115 (lives as long as we do)
        self._size = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-shipper", daemon=True)
        self._shipper = _InProcess(self, ship) if ship is not None else None
        self.failures = 0
        self._max_bytes = max_bytes
        self._unshipped = 0  # bytes this process appended and has not shipped
        self._checked = 0.0
        self.dropped = 0
        self.appended = 0
        self._lines: dict[Path, int] = {}  # lines appended per own file (a sidecar ships)

    @property
    def shipped(self) -> int:
        """Lines shipped (by this process's thread, or as a sidecar's offsets say)."""
        if self._shipper is not None:
            return self._shipper.shipped
        return self.appended - self._pending_lines()

    def start(self) -> None:
        if self._shipper is not None:
            self._thread.start()

    def _new_file(self) -> SpoolFile:
        self._seq += 1
        return SpoolFile(self.folder / f"{self.endpoint}.{os.getpid()}.{self._seq}.jsonl")

    def append(self, kind: str, record: dict[str, Any]) -> bool:
        """One write() of a whole line: durable against the process dying once it returns.
        False (and counted in ``dropped``) when a bounded spool is full."""
        line = json.dumps({"kind": kind, **record}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            full = self._max_bytes is not None and self._unshipped + len(line) > self._max_bytes
            if full and (self._shipper is not None or not self._recount()):
                self.dropped += 1
                return False
            self._fh.write(line)
            self._unshipped += len(line)
            self._size += len(line)
            self.appended += 1
            self._lines[self._file.path] = self._lines.get(self._file.path, 0) + 1
            if self._shipper is None and self._size >= ROTATE_BYTES:
                self._rotate()  # the sidecar ships the old file to its end and removes it
        return True

    def _rotate(self) -> None:
        self._fh.close()
        self._file = self._new_file()
        self._fh = open(self._file.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0

    def _own_files(self) -> list[SpoolFile]:
        prefix = f"{self.endpoint}.{os.getpid()}."
        return [SpoolFile(p) for p in self.folder.glob(f"{prefix}*.jsonl")]

    def _pending_lines(self) -> int:
        """Lines appended by this process that its sidecar has not shipped (a removed file was
        shipped whole)."""
        with self._lock:
            files = dict(self._lines)
        left = 0
        for path, lines in files.items():
            spool = SpoolFile(path)
            if not path.exists():
                if path != self._file.path:
                    with self._lock:
                        self._lines.pop(path, None)
                continue
            left += max(0, lines - spool.progress()[1])
        return left

    def _recount(self) -> bool:
        """(A sidecar ships.) Re-read what it shipped, at most twice a second; True when the
        bound has room again. Called with the lock held."""
        now = time.monotonic()
        if now - self._checked < RECOUNT_S:
            return False
        self._checked = now
        left = sum(max(0, _size(f.path) - f.shipped) for f in self._own_files())
        self._unshipped = left
        return self._max_bytes is None or left < self._max_bytes

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
        if self._shipper is None:
            return
        self._shipper.ship_all(self._file)
        self._maybe_rotate()

    def _maybe_rotate(self) -> None:
        if _size(self._file.path) < ROTATE_BYTES or self._file.shipped < _size(self._file.path):
            return
        with self._lock:
            old = self._file
            self._rotate()
        old.remove()

    def freed(self, shipped_bytes: int) -> None:
        with self._lock:
            self._unshipped = max(0, self._unshipped - shipped_bytes)


class _InProcess(Shipper):
    """A spool's own shipping thread: its bound's bytes are freed as they ship."""

    def __init__(self, spool: UsageSpool, ship: Ship) -> None:
        super().__init__(spool.folder, spool.endpoint, ship, os.getpid())
        self._spool = spool

    def after(self, spool: SpoolFile, shipped_bytes: int) -> None:
        if spool.path == self._spool._file.path:
            self._spool.freed(shipped_bytes)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def of_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The items of one kind, without their kind."""
    return [{k: v for k, v in i.items() if k != "kind"} for i in items if i.get("kind") == kind]
