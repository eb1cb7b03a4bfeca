"""Pushing a dataset version: from blobs already uploaded, or from an archive body.

The version is described (scan) before the transaction opens, so the write itself is short:
bump the dataset's counter with ``UPDATE ... RETURNING`` (two concurrent pushes get two
numbers), insert the version and its file rows, write the audit row. Any failure rolls all
of it back; an archive push also discards what it staged and frees the blobs it placed.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, cast

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from gureum.config import Settings
from gureum.datasets import archive
from gureum.datasets.readers import LineTooLong
from gureum.datasets.scan import Entry, ScanResult, scan
from gureum.schemas.datasets import FileEntry, VersionOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetFile, DatasetVersion, Workspace
from gureum.server.errors import BadRequest, Conflict, PayloadTooLarge, Unprocessable
from gureum.server.services import audit
from gureum.server.services.blobs import (
    MissingBlobs,
    StorageQuotaExceeded,
    UnsafeArchiveError,
    check_new_references,
    collect_garbage,
    lock_workspace,
    storage_room,
    too_large,
)
from gureum.server.services.datasets import version_out
from gureum.server.services.versioned import get_or_create, next_version
from gureum.storage.store import ArtifactStore, BlobTooLarge, StagedBlob

_SHOWN_PROBLEMS = 100


@dataclass(frozen=True)
class PushOptions:
    message: str = ""
    validation_ratio: float = 0.2
    seed: int = 0
    description: str | None = None
    # Where a version the platform makes came from (see services.curate); None for a push.
    source: dict[str, Any] | None = None


def _problems(store: ArtifactStore, workspace_id: int, entries: Sequence[Entry]) -> None:
    """400 unless every named blob is in the store with the size the manifest says."""
    sizes: dict[str, int | None] = {}
    mismatched: list[dict[str, Any]] = []
    for e in entries:
        if e.sha256 not in sizes:
            sizes[e.sha256] = store.blob_size(workspace_id, e.sha256)
        stored = sizes[e.sha256]
        if stored is not None and stored != e.size:
            mismatched.append({"path": e.path, "size": e.size, "stored_size": stored})
    absent = [d for d, size in sizes.items() if size is None]
    if absent:
        raise MissingBlobs(
            f"{len(absent)} blob(s) are not uploaded; upload them and push again",
            details={"missing": absent},
        )
    if mismatched:
        raise BadRequest(
            f"{len(mismatched)} file size(s) disagree with the stored blobs",
            details={"size_mismatch": mismatched[:_SHOWN_PROBLEMS]},
        )


class LineTooLongError(Unprocessable):
    code = "line_too_long"


def scan_entries(
    store: ArtifactStore,
    settings: Settings,
    workspace_id: int,
    entries: Sequence[Entry],
    opts: PushOptions,
) -> ScanResult:
    _problems(store, workspace_id, entries)
    try:
        return scan(
            entries,
            lambda digest: store.open_blob(workspace_id, digest),
            validation_ratio=opts.validation_ratio,
            seed=opts.seed,
            max_line_bytes=settings.max_line_bytes,
        )
    except LineTooLong as exc:
        raise LineTooLongError(
            f"{exc.path}: line {exc.line} is longer than {exc.limit} bytes; split it, or ask "
            "an admin to raise GUREUM_MAX_LINE_BYTES",
            details={"path": exc.path, "line": exc.line, "max_line_bytes": exc.limit},
        ) from exc
    except FileNotFoundError:
        # A blob went away between the check and the read (a delete freed it): say which.
        _problems(store, workspace_id, entries)
        raise


def _next_number(s: Session, dataset_id: int) -> int:
    number = next_version(s, Dataset, dataset_id)
    if number is None:
        raise Conflict("the dataset was deleted while this push ran; push again")
    return int(number)


def commit_version(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    name: str,
    result: ScanResult,
    opts: PushOptions,
) -> VersionOut:
    workspace_id = principal.workspace_id
    with db.write() as s:
        lock_workspace(s, workspace_id, exclusive=False)
        quota = s.scalar(select(Workspace.max_storage_bytes).where(Workspace.id == workspace_id))
        check_new_references(s, workspace_id, {f.sha256: f.size for f in result.files}, quota)
        gone = sorted(
            {f.sha256 for f in result.files if not store.has_blob(workspace_id, f.sha256)}
        )
        if gone:
            raise MissingBlobs(
                f"{len(gone)} blob(s) were removed meanwhile; upload them and push again",
                details={"missing": gone},
            )
        ds = get_or_create(s, Dataset, principal, name)
        if opts.description is not None:
            ds.description = opts.description
        v = DatasetVersion(
            dataset_id=ds.id,
            version=_next_number(s, ds.id),
            kind=result.kind,
            file_count=len(result.files),
            total_bytes=sum(f.size for f in result.files),
            schema_=result.schema,
            split=result.split,
            preview=result.preview,
            message=opts.message,
            pushed_by=principal.user_id,
            source=opts.source,
        )
        s.add(v)
        s.flush()
        s.execute(
            insert(DatasetFile),
            [
                {
                    "version_id": v.id,
                    "path": f.path,
                    "sha256": f.sha256,
                    "size": f.size,
                    "kind": f.kind,
                    "label": f.label,
                    "split": f.split,
                }
                for f in result.files
            ],
        )
        audit.record(
            s,
            principal,
            "dataset.push",
            "dataset_version",
            f"{name}:{v.version}",
            {"files": v.file_count, "bytes": v.total_bytes, "kind": v.kind},
        )
    return version_out(v, name, principal.user_name)


def push_version(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    name: str,
    files: Sequence[FileEntry],
    opts: PushOptions,
) -> VersionOut:
    """A new version from blobs already uploaded (the manifest is validated by its schema)."""
    principal.require("developer")
    entries = [Entry(f.path, f.sha256, f.size) for f in files]
    result = scan_entries(store, settings, principal.workspace_id, entries, opts)
    return commit_version(db, store, principal, name, result, opts)


class _Staging:
    """Blobs an archive push has written: discarded, or freed again, if the push fails."""

    def __init__(self, store: ArtifactStore, workspace_id: int, max_bytes: int) -> None:
        self.store = store
        self.workspace_id = workspace_id
        self.max_bytes = max_bytes
        self.staged: list[StagedBlob] = []
        self.placed: set[str] = set()

    def sink(self, chunks: Iterator[bytes]) -> StagedBlob:
        writer = self.store.writer(self.workspace_id, self.max_bytes)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        staged = writer.stage()
        self.staged.append(staged)
        return staged

    def place(self) -> None:
        while self.staged:
            staged = self.staged.pop()
            if self.store.commit_tmp(staged.tmp, self.workspace_id, staged.info.sha256):
                self.placed.add(staged.info.sha256)

    def discard(self) -> None:
        while self.staged:
            self.store.discard(self.staged.pop().tmp)


@contextmanager
def _archive_errors(settings: Settings) -> Iterator[None]:
    try:
        yield
    except archive.UnsafeArchive as exc:
        raise UnsafeArchiveError(str(exc)) from exc
    except archive.QuotaExceeded as exc:
        raise StorageQuotaExceeded(str(exc)) from exc
    except archive.ArchiveTooLarge as exc:
        raise PayloadTooLarge(
            str(exc),
            details={
                "max_archive_bytes": settings.max_archive_bytes,
                "max_file_bytes": settings.max_file_bytes,
                "max_archive_entries": settings.max_archive_entries,
                "max_archive_ratio": settings.max_archive_ratio,
            },
        ) from exc
    except archive.BadArchive as exc:
        raise BadRequest(str(exc)) from exc
    except BlobTooLarge as exc:
        raise too_large(settings.max_file_bytes) from exc


def archive_limits(settings: Settings, quota_bytes: int | None = None) -> archive.ArchiveLimits:
    return archive.ArchiveLimits(
        max_file_bytes=settings.max_file_bytes,
        max_total_bytes=settings.max_archive_bytes,
        max_entries=settings.max_archive_entries,
        max_ratio=settings.max_archive_ratio,
        quota_bytes=quota_bytes,
    )


def push_archive(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    name: str,
    body: IO[bytes],
    fmt: str | None,
    opts: PushOptions,
) -> VersionOut:
    """A new version from a zip / tar / tar.gz body; blocking, so run it in a worker thread.

    Members are staged under temporary keys and only placed once the whole archive has
    proven safe and within limits (size, ratio, entries, names, the storage quota); a failure
    after that (a line too long, a conflict) frees what this push placed.
    Without ``fmt`` the format is told from the first bytes.
    """
    principal.require("developer")
    workspace_id = principal.workspace_id
    # Counted on the expanded bytes as they come, before dedup: a push never goes past it.
    room = storage_room(db, store, workspace_id)
    limits = archive_limits(settings, None if room is None else room[1])
    if fmt is None:
        if isinstance(body, io.BufferedReader):
            buffered = body
        else:
            buffered = io.BufferedReader(cast(io.RawIOBase, body), archive.CHUNK)
        fmt = archive.sniff_format(buffered.peek(8)[:8])
        body = buffered
    staging = _Staging(store, workspace_id, settings.max_file_bytes)
    try:
        with _archive_errors(settings):
            spool = store.key("tmp") if store.is_local else None
            members = archive.extract(body, fmt, limits, staging.sink, spool_dir=spool)
        if not members:
            raise BadRequest("the archive holds no files")
        staging.place()
        entries = [Entry(m.path, m.result.info.sha256, m.result.info.size) for m in members]
        result = scan_entries(store, settings, workspace_id, entries, opts)
        return commit_version(db, store, principal, name, result, opts)
    except BaseException:
        staging.discard()
        if staging.placed:
            collect_garbage(db, store, workspace_id, staging.placed)
        raise
