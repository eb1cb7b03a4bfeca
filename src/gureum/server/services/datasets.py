"""Datasets and their immutable versions: reading, deleting, and references to them.

Lists are one indexed query a page (version facts come from correlated subqueries, never
one query per row). Deleting a version frees the blobs nothing else in the workspace uses,
after the delete has committed; a version that a job or model references cannot go.
Creating versions lives in ``dataset_push``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.datasets import DatasetOut, FileOut, VersionOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetFile, DatasetReference, DatasetVersion, User
from gureum.server.errors import Conflict, NotFound, Unprocessable
from gureum.server.pagination import AnySelect, PageParams, paginate, paginate_rows
from gureum.server.services import audit
from gureum.server.services.blobs import collect_garbage
from gureum.storage.store import ArtifactStore

LATEST = "latest"
_SHOWN_PROBLEMS = 100


# -- reading ------------------------------------------------------------------------------

_V = DatasetVersion


def _dataset_columns() -> AnySelect:
    """Datasets with their version facts as correlated subqueries: one indexed query a page."""
    where = _V.dataset_id == Dataset.id
    return select(
        Dataset.name,
        Dataset.description,
        Dataset.created_at,
        select(func.max(_V.version)).where(where).scalar_subquery().label("latest"),
        select(func.count(_V.id)).where(where).scalar_subquery().label("count"),
        select(func.max(_V.created_at)).where(where).scalar_subquery().label("updated"),
    )


def _dataset_out(row: Any) -> DatasetOut:
    updated: datetime = row.updated or row.created_at
    return DatasetOut(
        name=row.name,
        description=row.description,
        latest_version=row.latest,
        version_count=row.count,
        created_at=row.created_at,
        updated_at=updated,
    )


def list_datasets(db: Database, principal: Principal, params: PageParams) -> Page[DatasetOut]:
    stmt = _dataset_columns().where(Dataset.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate_rows(s, stmt, Dataset.name, params)
    return Page(items=[_dataset_out(r) for r in rows], next_cursor=cursor)


def get_dataset(db: Database, principal: Principal, name: str) -> DatasetOut:
    stmt = _dataset_columns().where(
        Dataset.workspace_id == principal.workspace_id, Dataset.name == name
    )
    with db.read() as s:
        row = s.execute(stmt).one_or_none()
    if row is None:
        raise NotFound(f"no dataset {name!r} in this workspace")
    return _dataset_out(row)


def find_dataset(session: Session, workspace_id: int, name: str) -> Dataset:
    ds = session.scalar(
        select(Dataset).where(Dataset.workspace_id == workspace_id, Dataset.name == name)
    )
    if ds is None:
        raise NotFound(f"no dataset {name!r} in this workspace")
    return ds


def parse_ref(ref: str | int) -> int | None:
    """A version number, or None for "latest"; 422 for anything else."""
    if isinstance(ref, int) or ref.isdigit():
        number = int(ref)
        if number >= 1:
            return number
    elif ref == LATEST:
        return None
    raise Unprocessable(f"version must be a number from 1 or {LATEST!r}, not {ref!r}")


def resolve_version(
    session: Session, workspace_id: int, name: str, ref: str | int = LATEST
) -> DatasetVersion:
    """The version row for ``name`` and ``ref`` ("latest" or a number) in a workspace, or 404.

    For other services (jobs, models) that record what they use with ``add_reference``.
    """
    number = parse_ref(ref)
    ds = find_dataset(session, workspace_id, name)
    stmt = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
    if number is None:
        stmt = stmt.order_by(DatasetVersion.version.desc()).limit(1)
    else:
        stmt = stmt.where(DatasetVersion.version == number)
    version = session.scalar(stmt)
    if version is None:
        what = "has no versions" if number is None else f"has no version {number}"
        raise NotFound(f"dataset {name!r} {what}")
    return version


def version_out(v: DatasetVersion, dataset: str, pushed_by: str | None) -> VersionOut:
    return VersionOut.model_validate(
        {
            "dataset": dataset,
            "version": v.version,
            "kind": v.kind,
            "file_count": v.file_count,
            "total_bytes": v.total_bytes,
            "schema": v.schema_,
            "split": v.split,
            "preview": v.preview,
            "message": v.message,
            "pushed_by": pushed_by,
            "created_at": v.created_at,
            "source": v.source,
        }
    )


def list_versions(
    db: Database, principal: Principal, name: str, params: PageParams
) -> Page[VersionOut]:
    with db.read() as s:
        ds = find_dataset(s, principal.workspace_id, name)
        stmt = (
            select(DatasetVersion, User.name.label("user"), DatasetVersion.version)
            .outerjoin(User, User.id == DatasetVersion.pushed_by)
            .where(DatasetVersion.dataset_id == ds.id)
        )
        rows, cursor = paginate_rows(s, stmt, DatasetVersion.version, params, descending=True)
    items = [version_out(r[0], name, r.user) for r in rows]
    return Page(items=items, next_cursor=cursor)


def get_version(db: Database, principal: Principal, name: str, ref: str) -> VersionOut:
    with db.read() as s:
        v = resolve_version(s, principal.workspace_id, name, ref)
        user = s.scalar(select(User.name).where(User.id == v.pushed_by)) if v.pushed_by else None
    return version_out(v, name, user)


def list_files(
    db: Database, principal: Principal, name: str, ref: str, params: PageParams
) -> Page[FileOut]:
    with db.read() as s:
        v = resolve_version(s, principal.workspace_id, name, ref)
        stmt = select(DatasetFile).where(DatasetFile.version_id == v.id)
        rows, cursor = paginate(s, stmt, DatasetFile.path, params)
    return Page(items=[FileOut.model_validate(f) for f in rows], next_cursor=cursor)


# -- deleting and references --------------------------------------------------------------


def _refuse_if_referenced(s: Session, name: str, version_ids: list[int]) -> None:
    stmt = (
        select(DatasetVersion.version, DatasetReference.referrer_type, DatasetReference.referrer_id)
        .join(DatasetVersion, DatasetVersion.id == DatasetReference.version_id)
        .where(DatasetReference.version_id.in_(version_ids))
        .order_by(DatasetVersion.version, DatasetReference.id)
        .limit(_SHOWN_PROBLEMS)
    )
    refs = s.execute(stmt).all()
    if refs:
        first = refs[0]
        raise Conflict(
            f"{name}:{first.version} is referenced by {first.referrer_type} {first.referrer_id}",
            details={
                "references": [
                    {"version": r.version, "type": r.referrer_type, "id": r.referrer_id}
                    for r in refs
                ]
            },
        )


def _delete_versions(db: Database, principal: Principal, name: str, ref: str | None) -> set[str]:
    """Delete one version (or all, with the dataset when ``ref`` is None); return its blobs."""
    try:
        with db.write() as s:
            ds = find_dataset(s, principal.workspace_id, name)
            if ref is None:
                ids = list(s.scalars(select(DatasetVersion.id).where(_V.dataset_id == ds.id)))
                target = name
            else:
                v = resolve_version(s, principal.workspace_id, name, ref)
                ids, target = [v.id], f"{name}:{v.version}"
            _refuse_if_referenced(s, name, ids)
            digests: set[str] = set()
            if ids:
                digests = set(
                    s.scalars(
                        select(DatasetFile.sha256).where(DatasetFile.version_id.in_(ids)).distinct()
                    )
                )
                s.execute(delete(DatasetFile).where(DatasetFile.version_id.in_(ids)))
                s.execute(delete(DatasetVersion).where(DatasetVersion.id.in_(ids)))
            if ref is None:
                s.execute(delete(Dataset).where(Dataset.id == ds.id))
            audit.record(
                s,
                principal,
                "dataset.delete" if ref is None else "dataset.version.delete",
                "dataset" if ref is None else "dataset_version",
                target,
                {"versions": len(ids), "blobs": len(digests)},
            )
    except IntegrityError as exc:
        # A reference was added after our check; its foreign key refused the delete.
        raise Conflict(f"{name} is referenced by a job or model; try again later") from exc
    return digests


def delete_version(
    db: Database, store: ArtifactStore, principal: Principal, name: str, ref: str
) -> None:
    principal.require("developer")
    digests = _delete_versions(db, principal, name, ref)
    collect_garbage(db, store, principal.workspace_id, digests)


def delete_dataset(db: Database, store: ArtifactStore, principal: Principal, name: str) -> None:
    principal.require("developer")
    digests = _delete_versions(db, principal, name, None)
    collect_garbage(db, store, principal.workspace_id, digests)


def add_reference(session: Session, version_id: int, referrer_type: str, referrer_id: str) -> None:
    """Record that a job or model uses a version; the version can't be deleted until removed.

    Flushes only: the caller's transaction decides. Adding the same reference twice is a no-op.
    """
    exists = session.scalar(
        select(DatasetReference.id).where(
            DatasetReference.version_id == version_id,
            DatasetReference.referrer_type == referrer_type,
            DatasetReference.referrer_id == str(referrer_id),
        )
    )
    if exists is None:
        session.add(
            DatasetReference(
                version_id=version_id, referrer_type=referrer_type, referrer_id=str(referrer_id)
            )
        )
        session.flush()


def remove_reference(
    session: Session, version_id: int, referrer_type: str, referrer_id: str
) -> None:
    session.execute(
        delete(DatasetReference).where(
            DatasetReference.version_id == version_id,
            DatasetReference.referrer_type == referrer_type,
            DatasetReference.referrer_id == str(referrer_id),
        )
    )
    session.flush()
