"""Blobs: the content-addressed bytes behind dataset files.

Uploads are verified (the bytes must hash to the name they were sent under) and land
atomically, per workspace. Uploading a blob changes no metadata, so it writes no audit row;
the push that makes a version of it does.

Garbage collection and version creation are kept apart by a lock on the workspace row:
a push holds it shared while it checks its blobs and inserts its rows, collection holds it
exclusively while it decides which blobs nothing uses and removes them. So a blob is never
removed from under a version that is being created (on SQLite every write transaction is
already exclusive). Captured calls (their batch objects and the blobs their lines refer to)
are users of blobs like dataset files: a blob shared by a dataset and a captured call stays
until both are gone, and their ingestion takes the same shared lock.
"""

from __future__ import annotations

import tarfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import IO, Any

from sqlalchemy import Select, func, select, union
from sqlalchemy.orm import Session

from gureum.config import Settings
from gureum.datasets.archive import open_tar_stream
from gureum.schemas.datasets import BatchOut, BlobOut, MissingOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import (
    Dataset,
    DatasetFile,
    DatasetVersion,
    Job,
    JobOutput,
    Model,
    ModelFile,
    ModelVersion,
    Workspace,
)
from gureum.server.db.tables_capture import CapturedBlob, CapturedRequest
from gureum.server.errors import BadRequest, NotFound, PayloadTooLarge
from gureum.storage.store import CHUNK, ArtifactStore, BlobHashMismatch, BlobTooLarge, is_sha256

_IN_CHUNK = 500


class HashMismatch(BadRequest):
    code = "hash_mismatch"


class MissingBlobs(BadRequest):
    code = "missing_blobs"


class UnsafeArchiveError(BadRequest):
    code = "unsafe_archive"


def lock_workspace(session: Session, workspace_id: int, *, exclusive: bool) -> None:
    """Row lock on the workspace (FOR SHARE / FOR UPDATE on PostgreSQL; a no-op on SQLite,
    where the write transaction is already exclusive)."""
    stmt = select(Workspace.id).where(Workspace.id == workspace_id)
    session.execute(stmt.with_for_update(read=not exclusive))


class StorageQuotaExceeded(PayloadTooLarge):
    code = "storage_quota_exceeded"


def dataset_content(workspace_id: int) -> Select[str, int]:
    """(sha256, size) of every file of the workspace's dataset versions."""
    return (
        select(DatasetFile.sha256, DatasetFile.size)
        .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(Dataset.workspace_id == workspace_id)
    )


def model_content(workspace_id: int) -> Select[str, int]:
    """(sha256, size) of every file of the workspace's model versions."""
    return (
        select(ModelFile.sha256, ModelFile.size)
        .join(ModelVersion, ModelVersion.id == ModelFile.version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.workspace_id == workspace_id)
    )


def _stored(workspace_id: int) -> Any:
    """Each distinct (sha256, size) a dataset file, model file or job output of the workspace
    uses: what it stores, shared content counted once."""
    outputs = (
        select(JobOutput.sha256, JobOutput.size)
        .join(Job, Job.id == JobOutput.job_id)
        .where(Job.workspace_id == workspace_id)
    )
    return union(dataset_content(workspace_id), model_content(workspace_id), outputs).subquery()


def storage_used(session: Session, workspace_id: int) -> int:
    stored = _stored(workspace_id)
    return int(session.scalar(select(func.coalesce(func.sum(stored.c.size), 0))) or 0)


class _OnDisk:
    """Bytes a workspace's blobs take in the store, measured now and then (a listing costs
    time) and counted up in between by what this process writes. Blobs uploaded but never
    pushed count too, so uploading alone cannot pass a quota."""

    TTL_S = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int], tuple[float, int]] = {}

    def get(self, store: ArtifactStore, workspace_id: int) -> int:
        key = (store.root, workspace_id)
        with self._lock:
            hit = self._seen.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.TTL_S:
            return hit[1]
        folder = store.key("workspaces", str(workspace_id), "blobs")
        size = int(store.fs.du(folder, total=True)) if store.fs.exists(folder) else 0
        with self._lock:
            self._seen[key] = (time.monotonic(), size)
        return size

    def add(self, store: ArtifactStore, workspace_id: int, size: int) -> None:
        key = (store.root, workspace_id)
        with self._lock:
            hit = self._seen.get(key)
            if hit is not None:
                self._seen[key] = (hit[0], hit[1] + size)


_ON_DISK = _OnDisk()


def storage_room(db: Database, store: ArtifactStore, workspace_id: int) -> tuple[int, int] | None:
    """(quota, bytes left under it) of the workspace's storage quota; None: no quota.

    What is used is the larger of what its versions and outputs reference and what its
    blobs take in the store.
    """
    with db.read() as s:
        quota = s.scalar(select(Workspace.max_storage_bytes).where(Workspace.id == workspace_id))
        if quota is None:
            return None
        referenced = storage_used(s, workspace_id)
    used = max(referenced, _ON_DISK.get(store, workspace_id))
    return int(quota), max(int(quota) - used, 0)


def quota_exceeded(quota: int, room: int, adding: int | None = None) -> StorageQuotaExceeded:
    more = f"{adding} more bytes" if adding is not None else "this upload"
    return StorageQuotaExceeded(
        f"{more} would pass the workspace's storage quota of {quota} bytes ({room} left); "
        "delete versions or ask an owner to raise it (gureum workspaces quotas WS "
        "--max-storage-gb N)",
        details={"max_storage_bytes": quota, "room_bytes": room},
    )


def check_new_references(
    session: Session, workspace_id: int, sizes: dict[str, int], quota: int | None
) -> None:
    """413 when referencing these blobs (sha256 -> size) would pass the storage quota."""
    if quota is None:
        return
    # Captured calls are not counted in storage_used, so their blobs count as new here.
    known = referenced(session, workspace_id, sizes, captured=False)
    new = {d: n for d, n in sizes.items() if d not in known}
    adding = sum(new.values())
    if not adding:
        return
    room = max(quota - storage_used(session, workspace_id), 0)
    if adding > room:
        raise quota_exceeded(quota, room, adding)


def batch_limit(settings: Settings) -> int:
    """The most a batch body may weigh: its members plus room for tar headers."""
    return settings.max_archive_bytes + settings.max_archive_bytes // 10


def too_large(limit: int, what: str = "file") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{what} is larger than the limit of {limit} bytes", details={"limit": limit}
    )


def missing(store: ArtifactStore, principal: Principal, digests: list[str]) -> MissingOut:
    principal.require("developer")
    return MissingOut(missing=store.missing(principal.workspace_id, digests))


def _chunks(body: IO[bytes]) -> Iterator[bytes]:
    while data := body.read(CHUNK):
        yield data


def put_blob(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    sha256: str,
    body: IO[bytes],
) -> BlobOut:
    """Stream one blob in; blocking, so run it in a worker thread."""
    principal.require("developer")
    quota = (
        None
        if store.has_blob(principal.workspace_id, sha256)
        else storage_room(db, store, principal.workspace_id)
    )
    max_bytes = settings.max_file_bytes if quota is None else min(settings.max_file_bytes, quota[1])
    try:
        info = store.write_blob(
            principal.workspace_id,
            _chunks(body),
            max_bytes=max_bytes,
            expected_sha256=sha256,
        )
    except BlobTooLarge as exc:
        if quota is not None and max_bytes < settings.max_file_bytes:
            raise quota_exceeded(*quota) from exc
        raise too_large(settings.max_file_bytes) from exc
    except BlobHashMismatch as exc:
        raise HashMismatch(str(exc)) from exc
    if quota is not None:
        _ON_DISK.add(store, principal.workspace_id, info.size)
    return BlobOut(sha256=info.sha256, size=info.size)


def put_batch(
    db: Database,
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    body: IO[bytes],
) -> BatchOut:
    """Store each member of an uncompressed tar whose names are the members' sha256.

    Members already verified stay stored if a later one fails: they are correct content, and
    the client's retry then sends only what is still missing.
    """
    principal.require("developer")
    stored: list[BlobOut] = []
    total = 0
    quota = storage_room(db, store, principal.workspace_id)
    try:
        with open_tar_stream(body, gzip=False) as tf:
            for member in tf:
                if len(stored) >= settings.max_archive_entries:
                    raise PayloadTooLarge(
                        f"a batch may hold at most {settings.max_archive_entries} blobs"
                    )
                if not member.isreg():
                    raise UnsafeArchiveError(f"batch member {member.name!r} is not a plain file")
                if not is_sha256(member.name):
                    raise BadRequest(f"batch member {member.name!r} is not named by its sha256")
                if member.size > settings.max_file_bytes:
                    raise too_large(settings.max_file_bytes, member.name)
                total += member.size
                if total > settings.max_archive_bytes:
                    raise too_large(settings.max_archive_bytes, "batch")
                if quota is not None and total > quota[1]:
                    raise quota_exceeded(*quota, adding=total)
                fh = tf.extractfile(member)
                if fh is None:  # pragma: no cover - regular members always have data
                    raise BadRequest(f"batch member {member.name!r} has no data")
                new = quota is not None and not store.has_blob(principal.workspace_id, member.name)
                info = store.write_blob(
                    principal.workspace_id,
                    _chunks(fh),
                    max_bytes=settings.max_file_bytes,
                    expected_sha256=member.name,
                )
                if new:
                    _ON_DISK.add(store, principal.workspace_id, info.size)
                stored.append(BlobOut(sha256=info.sha256, size=info.size))
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise BadRequest(f"the batch is not a readable tar stream: {exc}") from exc
    except BlobHashMismatch as exc:
        raise HashMismatch(str(exc)) from exc
    except BlobTooLarge as exc:
        raise too_large(settings.max_file_bytes) from exc
    return BatchOut(stored=stored)


def blob_size_or_404(store: ArtifactStore, principal: Principal, sha256: str) -> int:
    size = store.blob_size(principal.workspace_id, sha256) if is_sha256(sha256) else None
    if size is None:
        raise NotFound(f"no blob {sha256} in this workspace")
    return size


def referenced(
    session: Session, workspace_id: int, digests: Iterable[str], *, captured: bool = True
) -> set[str]:
    """Which of ``digests`` a dataset file, model file or job output of the workspace uses,
    or (with ``captured``) a captured call: its batch object or a blob its line refers to."""
    todo = list(digests)
    used: set[str] = set()
    for i in range(0, len(todo), _IN_CHUNK):
        chunk = todo[i : i + _IN_CHUNK]
        datasets = (
            select(DatasetFile.sha256)
            .join(DatasetVersion, DatasetVersion.id == DatasetFile.version_id)
            .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
            .where(Dataset.workspace_id == workspace_id, DatasetFile.sha256.in_(chunk))
        )
        models = (
            select(ModelFile.sha256)
            .join(ModelVersion, ModelVersion.id == ModelFile.version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Model.workspace_id == workspace_id, ModelFile.sha256.in_(chunk))
        )
        outputs = (
            select(JobOutput.sha256)
            .join(Job, Job.id == JobOutput.job_id)
            .where(Job.workspace_id == workspace_id, JobOutput.sha256.in_(chunk))
        )
        users: list[Select[str]] = [datasets, models, outputs]
        if captured:
            objects = select(CapturedRequest.object).where(
                CapturedRequest.workspace_id == workspace_id, CapturedRequest.object.in_(chunk)
            )
            blobs = (
                select(CapturedBlob.sha256)
                .join(CapturedRequest, CapturedRequest.request_id == CapturedBlob.request_id)
                .where(CapturedRequest.workspace_id == workspace_id, CapturedBlob.sha256.in_(chunk))
            )
            users += [objects, blobs]
        used.update(session.scalars(union(*users)))
    return used


def remove_unreferenced(
    session: Session, store: ArtifactStore, workspace_id: int, candidates: Iterable[str]
) -> list[str]:
    """Remove the candidate blobs that nothing of the workspace uses, in the caller's
    transaction (it holds the workspace exclusively from here on); return them. A caller
    that deletes the rows using them in the same transaction keeps both in step: if removing
    bytes fails, the rows come back and the removal can be retried."""
    todo = set(candidates)
    if not todo:
        return []
    lock_workspace(session, workspace_id, exclusive=True)
    gone = sorted(todo - referenced(session, workspace_id, todo))
    for digest in gone:
        store.delete_blob(workspace_id, digest)
    return gone


def collect_garbage(
    db: Database, store: ArtifactStore, workspace_id: int, candidates: Iterable[str]
) -> list[str]:
    """Remove the candidate blobs that nothing of the workspace uses; return them."""
    todo = set(candidates)
    if not todo:
        return []
    with db.write() as s:
        return remove_unreferenced(s, store, workspace_id, todo)
