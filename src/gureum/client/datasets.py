"""Datasets in the SDK: push a folder, file or archive as a new version; read, pull, delete."""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from gureum.client.base import Transport, VersionRef, pages, segment
from gureum.client.errors import BadRequestError, GureumError
from gureum.client.upload import (
    CHUNK,
    WORKERS,
    BlobUploader,
    LocalPathError,
    Progress,
    ProgressCounter,
    archive_format,
    file_chunks,
    finish,
    scan,
)
from gureum.schemas.datasets import (
    MAX_FILES,
    DatasetOut,
    FileEntry,
    FileOut,
    PushRequest,
    VersionOut,
    check_relative_path,
)

# Creating a version can take the server a while (schema, split, preview of many files), so
# those requests wait longer for the answer. Given as a request extension, which is what
# httpx's own ``timeout=`` argument becomes.
PUSH_TIMEOUT = {"timeout": httpx.Timeout(60.0, connect=10.0, read=1800.0).as_dict()}


class DestinationNotEmpty(GureumError):
    """`pull` would write into a folder that already holds files."""


class IntegrityError(GureumError):
    """A downloaded blob does not hash to what the server said it would."""


class DatasetsAPI:
    def __init__(self, t: Transport) -> None:
        self._t = t

    # -- reading -----------------------------------------------------------------------------

    def list(self) -> list[DatasetOut]:
        return [DatasetOut.model_validate(d) for d in pages(self._t, "/v1/datasets")]

    def get(self, name: str) -> DatasetOut:
        return DatasetOut.model_validate(self._t.json("GET", f"/v1/datasets/{segment(name)}"))

    def versions(self, name: str) -> builtins.list[VersionOut]:
        items = pages(self._t, f"/v1/datasets/{segment(name)}/versions")
        return [VersionOut.model_validate(v) for v in items]

    def version(self, name: str, version: VersionRef = "latest") -> VersionOut:
        path = f"/v1/datasets/{segment(name)}/versions/{segment(version)}"
        return VersionOut.model_validate(self._t.json("GET", path))

    def files(self, name: str, version: VersionRef = "latest") -> builtins.list[FileOut]:
        items = pages(self._t, f"/v1/datasets/{segment(name)}/versions/{segment(version)}/files")
        return [FileOut.model_validate(f) for f in items]

    # -- curating ----------------------------------------------------------------------------

    def curate(
        self,
        name: str,
        *,
        from_endpoint: str,
        since: datetime | None = None,
        until: datetime | None = None,
        min_rating: int | None = None,
        labelled_only: bool = False,
        base: str | None = None,
        max_generated_share: float | None = None,
        message: str = "",
    ) -> VersionOut:
        """The next version of ``name`` from an endpoint's captured calls and feedback, merged
        with ``base`` ("NAME:V"; by default what the served model was trained on)."""
        body: dict[str, Any] = {
            "from_endpoint": from_endpoint,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "min_rating": min_rating,
            "labelled_only": labelled_only,
            "base": base,
            "max_generated_share": max_generated_share,
            "message": message,
        }
        body = {k: v for k, v in body.items() if v is not None}
        path = f"/v1/datasets/{segment(name)}/curate"
        return VersionOut.model_validate(self._t.json("POST", path, json=body))

    # -- pushing -----------------------------------------------------------------------------

    def push(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        message: str = "",
        validation_ratio: float = 0.2,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> VersionOut:
        """Create a new version from a folder, one file, or a .zip/.tar/.tar.gz/.tgz archive.

        Archives go to the server as-is (it extracts them safely); for folders and files only
        the blobs the server does not have yet are sent.
        """
        if not 0.0 <= validation_ratio < 1.0:
            raise BadRequestError(
                f"validation_ratio must be at least 0 and below 1, not {validation_ratio}",
                code="invalid_request",
            )
        source = Path(path)
        fmt = archive_format(source)
        if fmt is not None and source.is_file():
            return self._push_archive(name, source, fmt, message, validation_ratio, seed, progress)
        files = scan(source)
        if not files:
            raise LocalPathError(f"{source} holds no files to push", code="bad_request")
        if len(files) > MAX_FILES:
            raise LocalPathError(
                f"{source} holds {len(files)} files; a version holds at most {MAX_FILES}",
                code="bad_request",
            )
        for f in files:
            try:
                check_relative_path(f.path)
            except ValueError as exc:
                raise LocalPathError(
                    f"cannot push {f.path!r}: {exc}", code="invalid_request"
                ) from exc
        hashed = BlobUploader(self._t, progress).upload(files)
        try:
            request = PushRequest(
                files=[FileEntry(path=f.path, sha256=f.sha256, size=f.size) for f in hashed],
                message=message,
                validation_ratio=validation_ratio,
                seed=seed,
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise LocalPathError(
                f"cannot push {source}: {where}: {first['msg']}", code="invalid_request"
            ) from exc
        body = request.model_dump(mode="json", exclude_none=True)
        data = self._t.json(
            "POST", f"/v1/datasets/{segment(name)}/versions", json=body, extensions=PUSH_TIMEOUT
        )
        return VersionOut.model_validate(data)

    def _push_archive(
        self,
        name: str,
        source: Path,
        fmt: str,
        message: str,
        validation_ratio: float,
        seed: int,
        progress: Progress | None,
    ) -> VersionOut:
        size = source.stat().st_size
        counter = ProgressCounter(size, progress)
        params: dict[str, Any] = {
            "format": fmt,
            "validation_ratio": validation_ratio,
            "seed": seed,
            "message": message,
        }
        with open(source, "rb", buffering=0) as fh:
            data = self._t.json(
                "POST",
                f"/v1/datasets/{segment(name)}/versions/archive",
                params=params,
                content=file_chunks(fh, counter.add),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                extensions=PUSH_TIMEOUT,
            )
        return VersionOut.model_validate(data)

    # -- pulling -----------------------------------------------------------------------------

    def pull(
        self,
        name: str,
        version: VersionRef,
        dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> VersionOut:
        """Write the version's files under ``dest``, byte for byte; return the version pulled.

        Each file is verified against its sha256 and appears under its name only when complete.
        """
        target = Path(dest)
        if target.exists() and not target.is_dir():
            raise DestinationNotEmpty(f"{target} exists and is not a folder", code="conflict")
        if target.is_dir() and any(target.iterdir()) and not overwrite:
            raise DestinationNotEmpty(
                f"{target} is not empty; pass overwrite=True (CLI: --overwrite) to write into it",
                code="conflict",
            )
        ver = self.version(name, version)
        files = self.files(name, ver.version)
        target.mkdir(parents=True, exist_ok=True)
        root = target.resolve()
        first: dict[str, Path] = {}
        copies: list[tuple[str, Path, int]] = []
        for f in files:
            out = _inside(root, f.path)
            if f.sha256 in first:
                copies.append((f.sha256, out, f.size))
            else:
                first[f.sha256] = out
        counter = ProgressCounter(sum(f.size for f in files), progress)
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="gureum-pull") as pool:
            finish([pool.submit(self._download, sha, out, counter) for sha, out in first.items()])
        for sha, out, size in copies:
            _atomic_copy(first[sha], out)
            counter.add(size)
        return ver

    def _download(self, sha256: str, out: Path, counter: ProgressCounter) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.part"
        h = hashlib.sha256()
        try:
            with (
                self._t.stream("GET", f"/v1/blobs/{sha256}") as resp,
                open(tmp, "wb") as fh,
            ):
                for chunk in resp.iter_bytes(CHUNK):
                    h.update(chunk)
                    fh.write(chunk)
                    counter.add(len(chunk))
            if h.hexdigest() != sha256:
                raise IntegrityError(
                    f"{out.name}: downloaded content hashes to {h.hexdigest()}, not {sha256}",
                    code="integrity_error",
                )
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, name: str, version: VersionRef | None = None) -> None:
        """Delete one version, or the whole dataset when ``version`` is None.

        The server refuses (409) while a job or model references the version.
        """
        path = f"/v1/datasets/{segment(name)}"
        if version is not None:
            path += f"/versions/{segment(version)}"
        self._t.request("DELETE", path)


def _inside(root: Path, rel: str) -> Path:
    """``root / rel``, refusing any path the server sent that would land outside ``root``."""
    out = (root / rel).resolve()
    if out == root or not out.is_relative_to(root):
        raise IntegrityError(f"refusing to write {rel!r} outside {root}", code="unsafe_path")
    return out


def _atomic_copy(src: Path, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex}.part"
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
