"""Blobs: the content-addressed bytes behind dataset files.

Uploads are verified (the bytes must hash to the name they were sent under) and land
atomically, per workspace. Uploading a blob changes no metadata, so it writes no audit row;
the push that makes a version of it does.

Garbage collection and version creation are kept apart by a lock on the workspace row:
a push holds it shared while it checks its blobs and inserts its rows, collection holds it
exclusively while it decides which blobs nothing uses and removes them. So a blob is never
removed from under a version that is being created (on SQLite every write transaction is
already exclusive).
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

from sqlalchemy import select, union
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
    store: ArtifactStore,
    settings: Settings,
    principal: Principal,
    sha256: str,
    body: IO[bytes],
) -> BlobOut:
    """Stream one blob in; blocking, so run it in a worker thread."""
    principal.require("developer")
    try:
        info = store.write_blob(
            principal.workspace_id,
            _chunks(body),
            max_bytes=settings.max_file_bytes,
            expected_sha256=sha256,
        )
    except BlobTooLarge as exc:
        raise too_large(settings.max_file_bytes) from exc
    except BlobHashMismatch as exc:
        raise HashMismatch(str(exc)) from exc
    return BlobOut(sha256=info.sha256, size=info.size)


def put_batch(
    store: ArtifactStore, settings: Settings, principal: Principal, body: IO[bytes]
) -> BatchOut:
    """Store each member of an uncompressed tar whose names are the members' sha256.

    Members already verified stay stored if a later one fails: they are correct content, and
    the client's retry then sends only what is still missing.
    """
    principal.require("developer")
    stored: list[BlobOut] = []
    total = 0
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
                fh = tf.extractfile(member)
                if fh is None:  # pragma: no cover - regular members always have data
                    raise BadRequest(f"batch member {member.name!r} has no data")
                info = store.write_blob(
                    principal.workspace_id,
                    _chunks(fh),
                    max_bytes=settings.max_file_bytes,
                    expected_sha256=member.name,
                )
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


def referenced(session: Session, workspace_id: int, digests: Iterable[str]) -> set[str]:
    """Which of ``digests`` a dataset file, model file or job output of the workspace uses."""
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
        used.update(session.scalars(union(datasets, models, outputs)))
    return used


def collect_garbage(
    db: Database, store: ArtifactStore, workspace_id: int, candidates: Iterable[str]
) -> list[str]:
    """Remove the candidate blobs that no file row of the workspace uses; return them."""
    todo = set(candidates)
    if not todo:
        return []
    with db.write() as s:
        lock_workspace(s, workspace_id, exclusive=True)
        gone = sorted(todo - referenced(s, workspace_id, todo))
        for digest in gone:
            store.delete_blob(workspace_id, digest)
    return gone
