"""The model registry: models, their immutable versions with lineage, and their files.

A version's files are blobs of the workspace's content-addressed store, uploaded the same way
as dataset files. A version trained on a dataset version holds a reference to it, so that
dataset version cannot be deleted while the model version exists. Promotion lives in
``models_gates``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.datasets import FileEntry
from gureum.schemas.models import (
    ModelFileOut,
    ModelOut,
    ModelUpdate,
    ModelVersionOut,
    VersionCreate,
)
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, DatasetVersion, Model, ModelFile, ModelVersion, User
from gureum.server.errors import Conflict, NotFound, Unprocessable
from gureum.server.pagination import AnySelect, PageParams, paginate, paginate_rows
from gureum.server.services import audit
from gureum.server.services.blobs import MissingBlobs, lock_workspace
from gureum.server.services.datasets import add_reference, resolve_version
from gureum.server.services.versioned import get_or_create, next_version
from gureum.storage.store import ArtifactStore

LATEST = "latest"
PRODUCTION = "production"
REFERRER = "model_version"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
_PYTORCH_SUFFIXES = (".pt", ".pth", ".bin")
_MV = ModelVersion


# -- reading ------------------------------------------------------------------------------


def _model_columns() -> AnySelect:
    """Models with their version facts as correlated subqueries: one indexed query a page."""
    where = _MV.model_id == Model.id
    prod = select(func.max(_MV.version)).where(where, _MV.stage == PRODUCTION)
    return select(
        Model,
        Model.name,
        select(func.max(_MV.version)).where(where).scalar_subquery().label("latest"),
        prod.scalar_subquery().label("production"),
        select(func.count(_MV.id)).where(where).scalar_subquery().label("count"),
        select(func.max(_MV.created_at)).where(where).scalar_subquery().label("updated"),
    )


def _model_out(row: Any) -> ModelOut:
    m: Model = row[0]
    return ModelOut.model_validate(
        {
            "name": m.name,
            "description": m.description,
            "gates": m.gates,
            "must_beat_production": m.must_beat_production,
            "latest_version": row.latest,
            "production_version": row.production,
            "version_count": row.count,
            "created_at": m.created_at,
            "updated_at": row.updated or m.created_at,
        }
    )


def list_models(db: Database, principal: Principal, params: PageParams) -> Page[ModelOut]:
    stmt = _model_columns().where(Model.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate_rows(s, stmt, Model.name, params)
    return Page(items=[_model_out(r) for r in rows], next_cursor=cursor)


def get_model(db: Database, principal: Principal, name: str) -> ModelOut:
    stmt = _model_columns().where(Model.workspace_id == principal.workspace_id, Model.name == name)
    with db.read() as s:
        row = s.execute(stmt).one_or_none()
    if row is None:
        raise NotFound(f"no model {name!r} in this workspace")
    return _model_out(row)


def find_model(session: Session, workspace_id: int, name: str, *, lock: bool = False) -> Model:
    stmt = select(Model).where(Model.workspace_id == workspace_id, Model.name == name)
    model = session.scalar(stmt.with_for_update() if lock else stmt)
    if model is None:
        raise NotFound(f"no model {name!r} in this workspace")
    return model


def resolve_version_row(session: Session, model: Model, ref: str | int) -> ModelVersion:
    """A version by number, "latest", or "production"; 422 for other refs, 404 if absent."""
    stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
    text = str(ref)
    if text.isdigit() and int(text) >= 1:
        stmt = stmt.where(ModelVersion.version == int(text))
    elif text == LATEST:
        stmt = stmt.order_by(ModelVersion.version.desc()).limit(1)
    elif text == PRODUCTION:
        stmt = stmt.where(ModelVersion.stage == PRODUCTION).order_by(_MV.version.desc()).limit(1)
    else:
        raise Unprocessable(
            f"version must be a number from 1, {LATEST!r} or {PRODUCTION!r}, not {text!r}"
        )
    version = session.scalar(stmt)
    if version is None:
        what = {LATEST: "has no versions", PRODUCTION: "has no production version"}.get(
            text, f"has no version {text}"
        )
        raise NotFound(f"model {model.name!r} {what}")
    return version


def version_out(session: Session, v: ModelVersion, model: str) -> ModelVersionOut:
    """The response shape; looks up the creator's name and the dataset lineage."""
    user = (
        session.scalar(select(User.name).where(User.id == v.created_by)) if v.created_by else None
    )
    dataset = None
    if v.dataset_version_id is not None:
        row = session.execute(
            select(Dataset.name, DatasetVersion.version)
            .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
            .where(DatasetVersion.id == v.dataset_version_id)
        ).one()
        dataset = f"{row.name}:{row.version}"
    return ModelVersionOut.model_validate(
        {
            "model": model,
            "version": v.version,
            "stage": v.stage,
            "format": v.format,
            "recipe": v.recipe,
            "params": v.params,
            "metrics": v.metrics,
            "dataset": dataset,
            "job_id": v.job_id,
            "code_hash": v.code_hash,
            "file_count": v.file_count,
            "total_bytes": v.total_bytes,
            "message": v.message,
            "created_by": user,
            "created_at": v.created_at,
            "stage_changed_at": v.stage_changed_at,
        }
    )


def list_versions(
    db: Database, principal: Principal, name: str, params: PageParams
) -> Page[ModelVersionOut]:
    with db.read() as s:
        model = find_model(s, principal.workspace_id, name)
        stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
        rows, cursor = paginate(s, stmt, ModelVersion.version, params, descending=True)
        items = [version_out(s, v, name) for v in rows]
    return Page(items=items, next_cursor=cursor)


def get_version(db: Database, principal: Principal, name: str, ref: str) -> ModelVersionOut:
    with db.read() as s:
        model = find_model(s, principal.workspace_id, name)
        return version_out(s, resolve_version_row(s, model, ref), name)


def list_files(
    db: Database, principal: Principal, name: str, ref: str, params: PageParams
) -> Page[ModelFileOut]:
    with db.read() as s:
        model = find_model(s, principal.workspace_id, name)
        v = resolve_version_row(s, model, ref)
        stmt = select(ModelFile).where(ModelFile.version_id == v.id)
        rows, cursor = paginate(s, stmt, ModelFile.path, params)
    return Page(items=[ModelFileOut.model_validate(f) for f in rows], next_cursor=cursor)


# -- registering --------------------------------------------------------------------------


def _check_blobs(store: ArtifactStore, workspace_id: int, files: list[FileEntry]) -> None:
    sizes = {d: store.blob_size(workspace_id, d) for d in {f.sha256 for f in files}}
    absent = sorted(d for d, size in sizes.items() if size is None)
    if absent:
        raise MissingBlobs(
            f"{len(absent)} blob(s) are not uploaded; upload them and register again",
            details={"missing": absent},
        )
    wrong = [
        {"path": f.path, "size": f.size, "stored_size": sizes[f.sha256]}
        for f in files
        if sizes[f.sha256] != f.size
    ]
    if wrong:
        raise Unprocessable(
            f"{len(wrong)} file size(s) disagree with the stored blobs",
            details={"size_mismatch": wrong[:100]},
        )


def _safetensors_ok(store: ArtifactStore, workspace_id: int, sha256: str) -> bool:
    """A safetensors file starts with a little-endian u64 header length and a JSON header."""
    with store.open_blob(workspace_id, sha256) as fh:
        head = fh.read(8)
        if len(head) != 8:
            return False
        n = int.from_bytes(head, "little")
        if n <= 0 or n > _SAFETENSORS_MAX_HEADER:
            return False
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            return False
    return isinstance(header, dict)


def check_format(store: ArtifactStore, workspace_id: int, body: VersionCreate) -> None:
    """422 unless the files are what ``format`` says (by name, and a safetensors header)."""
    paths = [f.path.lower() for f in body.files]
    fmt = body.format
    if fmt == "huggingface":
        if "config.json" not in paths:
            raise Unprocessable("a huggingface model directory needs a config.json at its root")
        return
    wanted = {
        "safetensors": (".safetensors",),
        "pytorch": _PYTORCH_SUFFIXES,
        "onnx": (".onnx",),
    }.get(fmt)
    if wanted is None:
        return
    matching = [f for f in body.files if f.path.lower().endswith(wanted)]
    if not matching:
        raise Unprocessable(
            f"format {fmt!r} needs a file ending in {' or '.join(wanted)}",
            details={"paths": [f.path for f in body.files][:100]},
        )
    if fmt == "safetensors":
        bad = [f.path for f in matching if not _safetensors_ok(store, workspace_id, f.sha256)]
        if bad:
            raise Unprocessable(
                f"{bad[0]} is not a safetensors file (no valid header)", details={"paths": bad}
            )


def _next_number(s: Session, model_id: int) -> int:
    number = next_version(s, Model, model_id)
    if number is None:  # pragma: no cover - models are not deleted yet
        raise Conflict("the model was deleted while this version was registered")
    return int(number)


def _dataset_lineage(s: Session, workspace_id: int, ref: str) -> DatasetVersion:
    name, sep, version = ref.partition(":")
    if not name or (sep and not version):
        raise Unprocessable(f"dataset must be NAME or NAME:VERSION, not {ref!r}")
    return resolve_version(s, workspace_id, name, version or LATEST)


def register_version(
    db: Database, store: ArtifactStore, principal: Principal, name: str, body: VersionCreate
) -> ModelVersionOut:
    """A new version from blobs already uploaded, with its lineage and metrics."""
    principal.require("developer")
    workspace_id = principal.workspace_id
    _check_blobs(store, workspace_id, body.files)
    check_format(store, workspace_id, body)
    with db.write() as s:
        # Shared lock: blob garbage collection can't remove our blobs while we insert rows.
        lock_workspace(s, workspace_id, exclusive=False)
        gone = sorted({f.sha256 for f in body.files if not store.has_blob(workspace_id, f.sha256)})
        if gone:
            raise MissingBlobs(
                f"{len(gone)} blob(s) were removed meanwhile; upload them and register again",
                details={"missing": gone},
            )
        dataset = _dataset_lineage(s, workspace_id, body.dataset) if body.dataset else None
        model = get_or_create(s, Model, principal, name)
        if body.description is not None:
            model.description = body.description
        v = ModelVersion(
            model_id=model.id,
            version=_next_number(s, model.id),
            stage="none",
            format=body.format,
            recipe=body.recipe,
            params=body.params,
            metrics=body.metrics,
            dataset_version_id=dataset.id if dataset else None,
            job_id=body.job_id,
            code_hash=body.code_hash,
            file_count=len(body.files),
            total_bytes=sum(f.size for f in body.files),
            message=body.message,
            created_by=principal.user_id,
        )
        s.add(v)
        s.flush()
        s.execute(
            insert(ModelFile),
            [
                {"version_id": v.id, "path": f.path, "sha256": f.sha256, "size": f.size}
                for f in body.files
            ],
        )
        if dataset is not None:
            add_reference(s, dataset.id, REFERRER, str(v.id))
        out = version_out(s, v, name)
        audit.record(
            s,
            principal,
            "model.version.create",
            "model_version",
            f"{name}:{v.version}",
            {"format": v.format, "files": v.file_count, "dataset": out.dataset, "job": v.job_id},
        )
    return out


def update_model(db: Database, principal: Principal, name: str, body: ModelUpdate) -> ModelOut:
    principal.require("developer")
    changed: dict[str, Any] = {}
    with db.write() as s:
        model = find_model(s, principal.workspace_id, name)
        if body.description is not None:
            model.description = changed["description"] = body.description
        if body.gates is not None:
            model.gates = changed["gates"] = [g.model_dump() for g in body.gates]
        if "must_beat_production" in body.model_fields_set:
            must = body.must_beat_production
            model.must_beat_production = must.model_dump() if must else None
            changed["must_beat_production"] = model.must_beat_production
        audit.record(s, principal, "model.update", "model", name, changed)
    return get_model(db, principal, name)


def stamp(v: ModelVersion, stage: str, when: datetime) -> None:
    v.stage = stage
    v.stage_changed_at = when
