"""Getting local files into the server's blob store fast and in bounded memory.

A push hashes every file once, asks the server which blobs it lacks, and uploads only those:
small files are read once into a bounded batch and sent as one streamed tar, large files are
streamed with one PUT each. A few threads run batches side by side so that reading, hashing
and sending overlap.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from gureum.client.base import Transport
from gureum.client.errors import GureumError
from gureum.schemas.datasets import check_relative_path

CHUNK = 1024 * 1024
# Files under this size travel in tar batches; larger ones get their own streamed PUT.
SMALL_FILE = 1024 * 1024
BATCH_BYTES = 4 * 1024 * 1024
BATCH_FILES = 500
MISSING_CHUNK = 10_000
WORKERS = 4
TAR_BLOCK = 512

ARCHIVE_SUFFIXES = ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar", "tar"), (".zip", "zip"))

Progress = Callable[[int, int], None]
T = TypeVar("T")


class LocalPathError(GureumError):
    """The path to push does not exist, is empty, or holds nothing we can push."""


@dataclass(frozen=True)
class LocalFile:
    path: str  # relative POSIX path inside the pushed folder
    source: str  # where to read it
    size: int


@dataclass(frozen=True)
class HashedFile:
    path: str
    sha256: str
    size: int


def archive_format(path: Path) -> str | None:
    """The archive route's ``format`` for a file we send as-is, or None for a plain file."""
    name = path.name.lower()
    for suffix, fmt in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return fmt
    return None


def scan(path: Path) -> list[LocalFile]:
    """Every file to push under ``path`` (or ``path`` itself), sorted by relative path.

    Hidden names are skipped, as are links that leave the folder (they would publish files the
    user did not point at) and links to folders (they can loop).
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise LocalPathError(f"cannot read {path}: {exc.strerror}", code="not_found") from exc
    if stat.S_ISREG(st.st_mode):
        return _named([LocalFile(path.name, str(path), st.st_size)])
    if not stat.S_ISDIR(st.st_mode):
        raise LocalPathError(f"{path} is neither a file nor a folder", code="bad_request")
    root = os.path.realpath(path)
    files: list[LocalFile] = []
    stack = [(str(path), "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = prefix + entry.name
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([root, target]) != root:
                        continue
                    if entry.is_dir():
                        continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                    continue
                try:
                    est = entry.stat()
                except OSError:
                    continue
                if stat.S_ISREG(est.st_mode):
                    files.append(LocalFile(rel, entry.path, est.st_size))
    files.sort(key=lambda f: f.path)
    return _named(files)


def _named(files: list[LocalFile]) -> list[LocalFile]:
    """Refuse, before a byte is sent, a name the server refuses (control or bidi characters,
    too long to pull, not UTF-8), naming it safely."""
    for f in files:
        try:
            check_relative_path(f.path)
        except ValueError as exc:
            raise LocalPathError(f"cannot push {f.path!r}: {exc}", code="bad_request") from exc
    return files


def sha256_file(source: str, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Hash a file in 1 MB reads into one reused buffer; return (hex digest, size)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    with open(source, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
            size += n
            if on_bytes is not None:
                on_bytes(n)
    return h.hexdigest(), size


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % TAR_BLOCK)


def tar_size(sizes: Iterable[int]) -> int:
    """The exact length of :func:`tar_stream` over members of these sizes (for Content-Length)."""
    return sum(TAR_BLOCK + s + (-s % TAR_BLOCK) for s in sizes) + 2 * TAR_BLOCK


def tar_stream(members: Iterable[tuple[str, bytes]], chunk: int = CHUNK) -> Iterator[bytes]:
    """An uncompressed tar of ``(name, data)`` members, yielded in writes of about ``chunk``."""
    pending: list[bytes] = []
    pending_size = 0
    for name, data in members:
        for piece in (_tar_header(name, len(data)), data, _padding(len(data))):
            pending.append(piece)
            pending_size += len(piece)
        if pending_size >= chunk:
            yield b"".join(pending)
            pending, pending_size = [], 0
    pending.append(b"\0" * (2 * TAR_BLOCK))
    yield b"".join(pending)


def file_chunks(
    fh: BinaryIO, on_bytes: Callable[[int], None] | None = None, chunk: int = CHUNK
) -> Iterator[bytes]:
    while data := fh.read(chunk):
        if on_bytes is not None:
            on_bytes(len(data))
        yield data


class ProgressCounter:
    """Adds up bytes from several threads and reports (done, total) to the caller's callback."""

    def __init__(self, total: int, callback: Progress | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback
        self._lock = threading.Lock()
        self.report()

    def add(self, n: int) -> None:
        # Reported under the lock so the caller sees the counts in order.
        with self._lock:
            self.done += n
            if self._callback is not None:
                self._callback(self.done, self.total)

    def report(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total)


@dataclass
class UploadStats:
    files: int = 0
    blobs_sent: int = 0
    bytes_sent: int = 0


class BlobUploader:
    """Hashes files and uploads the blobs the server lacks; returns the manifest entries."""

    def __init__(self, transport: Transport, progress: Progress | None = None) -> None:
        self._t = transport
        self._progress = progress
        self.stats = UploadStats()
        self._stats_lock = threading.Lock()

    def upload(self, files: Sequence[LocalFile]) -> list[HashedFile]:
        counter = ProgressCounter(sum(f.size for f in files), self._progress)
        results: list[HashedFile] = []
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="gureum-upload") as pool:
            futures: list[Future[list[HashedFile]]] = []
            for group in _groups(files):
                if len(group) == 1 and group[0].size >= SMALL_FILE:
                    futures.append(pool.submit(self._large, group[0], counter))
                else:
                    futures.append(pool.submit(self._small_batch, group, counter))
            finish(futures)
        for fut in futures:
            results.extend(fut.result())
        self.stats.files = len(results)
        results.sort(key=lambda f: f.path)
        return results

    def _missing(self, digests: Sequence[str]) -> set[str]:
        missing: set[str] = set()
        unique = list(dict.fromkeys(digests))
        for i in range(0, len(unique), MISSING_CHUNK):
            body = {"sha256": unique[i : i + MISSING_CHUNK]}
            missing.update(self._t.json("POST", "/v1/blobs/missing", json=body)["missing"])
        return missing

    def _sent(self, blobs: int, nbytes: int) -> None:
        with self._stats_lock:
            self.stats.blobs_sent += blobs
            self.stats.bytes_sent += nbytes

    def _small_batch(self, group: list[LocalFile], counter: ProgressCounter) -> list[HashedFile]:
        """Read each file once: the bytes we hash are the bytes we send."""
        contents: dict[str, bytes] = {}
        hashed: list[HashedFile] = []
        for f in group:
            with open(f.source, "rb") as fh:
                data = fh.read()
            digest = hashlib.sha256(data).hexdigest()
            contents.setdefault(digest, data)
            hashed.append(HashedFile(f.path, digest, len(data)))
        missing = self._missing(list(contents))
        members = [(d, contents[d]) for d in contents if d in missing]
        if members:
            self._t.request(
                "POST",
                "/v1/blobs/batch",
                content=tar_stream(members),
                headers={
                    "Content-Type": "application/x-tar",
                    "Content-Length": str(tar_size(len(data) for _, data in members)),
                },
            )
            self._sent(len(members), sum(len(data) for _, data in members))
        counter.add(sum(f.size for f in group))
        return hashed

    def _large(self, f: LocalFile, counter: ProgressCounter) -> list[HashedFile]:
        digest, size = sha256_file(f.source)
        if digest in self._missing([digest]):
            with open(f.source, "rb", buffering=0) as fh:
                self._t.request(
                    "PUT",
                    f"/v1/blobs/{digest}",
                    content=file_chunks(fh, counter.add),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                )
            self._sent(1, size)
            counter.add(f.size - size)
        else:
            counter.add(f.size)
        return [HashedFile(f.path, digest, size)]


def finish(futures: Sequence[Future[T]]) -> None:
    """Wait for every task; on the first failure (or Ctrl-C) drop the ones not started yet."""
    try:
        for fut in as_completed(futures):
            fut.result()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _groups(files: Sequence[LocalFile]) -> Iterator[list[LocalFile]]:
    """Large files alone; small ones packed up to BATCH_BYTES / BATCH_FILES a group."""
    group: list[LocalFile] = []
    group_bytes = 0
    for f in files:
        if f.size >= SMALL_FILE:
            yield [f]
            continue
        if group and (group_bytes + f.size > BATCH_BYTES or len(group) >= BATCH_FILES):
            yield group
            group, group_bytes = [], 0
        group.append(f)
        group_bytes += f.size
    if group:
        yield group
