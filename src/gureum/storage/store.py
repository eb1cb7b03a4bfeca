"""Artifact store over fsspec.

Blobs are addressed by their SHA-256 and kept per workspace, so an unchanged file is stored
once however many dataset versions use it, and one workspace can never probe another's
contents. Writes go to a temporary key first and are moved into place only after the hash
checks out, so a reader never sees a partial blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

TMP_MAX_AGE_SECONDS = 6 * 3600
CHUNK = 1024 * 1024
SHA256_HEX = 64


class BlobTooLarge(Exception):
    pass


class BlobHashMismatch(Exception):
    pass


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int


def is_sha256(value: str) -> bool:
    return len(value) == SHA256_HEX and all(c in "0123456789abcdef" for c in value)


class BlobWriter:
    """Streams one blob in: hashes as it writes, enforces a size limit, commits atomically."""

    def __init__(self, store: ArtifactStore, workspace_id: int, max_bytes: int) -> None:
        self._store = store
        self._workspace_id = workspace_id
        self._max_bytes = max_bytes
        self._tmp = store.tmp_key()
        self._fh: IO[bytes] = store.open_write(self._tmp)
        self._hash = hashlib.sha256()
        self.size = 0
        self._closed = False

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._max_bytes:
            self.abort()
            raise BlobTooLarge(f"file is larger than the limit of {self._max_bytes} bytes")
        self._hash.update(chunk)
        self._fh.write(chunk)

    def stage(self) -> StagedBlob:
        """Close and hash, but leave the bytes at their temporary key for the caller to place.

        Lets a caller check a whole batch (an archive) before any blob becomes visible.
        """
        self._fh.close()
        self._closed = True
        return StagedBlob(self._tmp, BlobInfo(self._hash.hexdigest(), self.size))

    def commit(self, expected_sha256: str | None = None) -> BlobInfo:
        staged = self.stage()
        digest = staged.info.sha256
        if expected_sha256 is not None and digest != expected_sha256:
            self._store.discard(self._tmp)
            raise BlobHashMismatch(f"content hashes to {digest}, not {expected_sha256}")
        self._store.commit_tmp(self._tmp, self._workspace_id, digest)
        return staged.info

    def abort(self) -> None:
        if not self._closed:
            self._fh.close()
            self._closed = True
        self._store.discard(self._tmp)


@dataclass(frozen=True)
class StagedBlob:
    tmp: str
    info: BlobInfo


class ArtifactStore:
    def __init__(self, url: str) -> None:
        self.url = url
        fs, root = fsspec.core.url_to_fs(url)
        self.fs: Any = fs
        self.root = root.rstrip("/")
        self.is_local = isinstance(fs, LocalFileSystem)
        if self.is_local:
            os.makedirs(self._join("tmp"), exist_ok=True)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def key(self, *parts: str) -> str:
        """Full path of an artifact under the store root (checkpoints, reports, ...)."""
        return self._join(*parts)

    def tmp_key(self) -> str:
        return self._join("tmp", uuid.uuid4().hex)

    def blob_key(self, workspace_id: int, sha256: str) -> str:
        return self._join("workspaces", str(workspace_id), "blobs", sha256[:2], sha256)

    def has_blob(self, workspace_id: int, sha256: str) -> bool:
        key = self.blob_key(workspace_id, sha256)
        if self.is_local:
            return os.path.exists(key)
        return bool(self.fs.exists(key))

    def missing(self, workspace_id: int, digests: Iterable[str]) -> list[str]:
        return [d for d in dict.fromkeys(digests) if not self.has_blob(workspace_id, d)]

    def open_write(self, key: str) -> IO[bytes]:
        if self.is_local:
            return open(key, "wb")
        fh: IO[bytes] = self.fs.open(key, "wb")
        return fh

    def discard(self, key: str) -> None:
        """Remove a temporary key if it is there."""
        if self.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.remove(key)
        elif self.fs.exists(key):
            self.fs.rm(key)

    def write_atomic(self, key: str, data: bytes) -> None:
        """Readers see all of ``data`` under ``key`` or nothing (object stores put atomically)."""
        if not self.is_local:
            self.fs.pipe_file(key, data)
            return
        os.makedirs(os.path.dirname(key), exist_ok=True)
        tmp = f"{key}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, key)

    def blob_size(self, workspace_id: int, sha256: str) -> int | None:
        """The stored size of a blob, or None when the workspace does not have it."""
        key = self.blob_key(workspace_id, sha256)
        if self.is_local:
            try:
                return os.stat(key).st_size
            except FileNotFoundError:
                return None
        try:
            return int(self.fs.size(key))
        except FileNotFoundError:
            return None

    def local_path(self, workspace_id: int, sha256: str) -> str | None:
        """A filesystem path to serve the blob from directly, when the store is local."""
        return self.blob_key(workspace_id, sha256) if self.is_local else None

    def writer(self, workspace_id: int, max_bytes: int) -> BlobWriter:
        return BlobWriter(self, workspace_id, max_bytes)

    def write_blob(
        self,
        workspace_id: int,
        chunks: Iterable[bytes],
        *,
        max_bytes: int,
        expected_sha256: str | None = None,
    ) -> BlobInfo:
        w = self.writer(workspace_id, max_bytes)
        try:
            for chunk in chunks:
                w.write(chunk)
        except BaseException:
            w.abort()
            raise
        return w.commit(expected_sha256)

    def commit_tmp(self, tmp: str, workspace_id: int, sha256: str) -> bool:
        """Move a verified temporary blob into place; False when the blob was already there."""
        final = self.blob_key(workspace_id, sha256)
        if self.is_local:
            if os.path.exists(final):
                self.discard(tmp)
                return False
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(tmp, final)
            return True
        if self.fs.exists(final):
            self.fs.rm(tmp)
            return False
        self.fs.mv(tmp, final)
        return True

    def open_blob(self, workspace_id: int, sha256: str) -> IO[bytes]:
        key = self.blob_key(workspace_id, sha256)
        if self.is_local:
            return open(key, "rb")
        fh: IO[bytes] = self.fs.open(key, "rb")
        return fh

    def iter_blob(self, workspace_id: int, sha256: str, chunk: int = CHUNK) -> Iterator[bytes]:
        with self.open_blob(workspace_id, sha256) as fh:
            while data := fh.read(chunk):
                yield data

    def delete_blob(self, workspace_id: int, sha256: str) -> None:
        self.discard(self.blob_key(workspace_id, sha256))

    def sweep_tmp(self, older_than: float = TMP_MAX_AGE_SECONDS) -> int:
        """Remove temporary uploads a crashed server left behind; returns how many.

        Only entries older than ``older_than`` seconds go, so uploads in flight are safe.
        """
        tmp = self._join("tmp")
        if not self.fs.exists(tmp):
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for info in self.fs.ls(tmp, detail=True):
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
            stamp = mtime.timestamp() if hasattr(mtime, "timestamp") else mtime
            if isinstance(stamp, int | float) and stamp < cutoff:
                self.fs.rm(info["name"], recursive=info.get("type") == "directory")
                removed += 1
        return removed

    def healthy(self) -> bool:
        try:
            self.fs.ls(self.root)
        except OSError:
            return False
        return True
