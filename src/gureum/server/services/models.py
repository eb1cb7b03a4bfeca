"""The model registry: models, their immutable versions with lineage, and their files.

A version's files are blobs of the workspace's content-addressed store, uploaded the same way
as dataset files. A version trained on a dataset version holds a reference to it, so that
dataset version cannot be deleted while the model version exists. Promotion lives in
``models_gates``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from gureum.recipes import hf_folder
from gureum.recipes.registry import unpickles
from gureum.recipes.specs import SPECS, for_format, spec_of
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
from gureum.server.services.model_formats import check_format, huggingface_recipe
from gureum.server.services.versioned import get_or_create, next_version
from gureum.storage.store import ArtifactStore

LATEST = "latest"
PRODUCTION = "production"
MEASURED = "measured"
REPORTED = "reported"
REFERRER = "model_version"
_MV = ModelVersion


class UntrustedModel(Unprocessable):
    code = "untrusted_model_files"


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
            "platform_written": v.platform_written,
            "metrics_source": v.metrics_source,
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


def require_loadable(recipe: str | None, platform_written: bool, label: str) -> None:
    """422 when ``recipe`` would unpickle files that no platform job wrote.

    Pickle runs code on load, and built-in recipes load outside any sandbox (replicas, evaluate
    workers): only the files of a built-in train job are trusted that far.
    """
    if recipe and unpickles(recipe) and not platform_written:
        raise UntrustedModel(
            f"{label}: recipe {recipe!r} loads its model with pickle, which runs code; it loads "
            "only files a platform train job wrote, and these were uploaded. Train it on the "
            "platform, or import weights in a safe format (safetensors, onnx)",
            details={"recipe": recipe, "platform_written": False},
        )


def _recipe_of(body: VersionCreate) -> str | None:
    """The recipe that serves the version: the one it names, else the one that serves its
    format without code (an imported ``onnx`` file), when only one does (which of several
    serves a Hugging Face folder depends on its task). A recipe made only for imported formats
    needs files of one of them."""
    if body.recipe is None:
        spec = for_format(body.format)
        alone = spec is not None and sum(body.format in s.formats for s in SPECS.values()) == 1
        return spec.name if spec is not None and alone else None
    spec = spec_of(body.recipe)
    if spec is not None and spec.formats and not spec.trainable and body.format not in spec.formats:
        raise Unprocessable(
            f"recipe {body.recipe!r} serves files of format {', '.join(spec.formats)}, "
            f"not {body.format!r}",
            details={"recipe": body.recipe, "format": body.format},
        )
    return body.recipe


HF_RECIPES = frozenset(hf_folder.TASKS.values())


def _hf_task(
    store: ArtifactStore, workspace_id: int, body: VersionCreate, named: str | None
) -> str:
    """A Hugging Face folder is served by the recipe of its task (``config.json``)."""
    task = huggingface_recipe(store, workspace_id, body)
    if named is not None and named != task:
        raise Unprocessable(
            f"recipe {named!r} does not serve this folder: its architecture is served by {task}",
            details={"recipe": named, "served_by": task},
        )
    return task


def register_version(
    db: Database,
    store: ArtifactStore,
    principal: Principal,
    name: str,
    body: VersionCreate,
    *,
    job: str | None = None,
    platform_job: str | None = None,
) -> ModelVersionOut:
    """A new version from blobs already uploaded, with its lineage and metrics.

    Only the server passes ``job`` (it registers what a finished train job wrote) and
    ``platform_job`` (that job ran a built-in recipe: its files may be unpickled and its
    metrics are measured). Everything registered over the API is "reported", whatever
    ``job_id`` the caller names.
    """
    principal.require("developer")
    workspace_id = principal.workspace_id
    trusted = platform_job is not None and platform_job == job == body.job_id
    recipe = _recipe_of(body)
    require_loadable(recipe, trusted, f"{name} (new version)")
    _check_blobs(store, workspace_id, body.files)
    check_format(store, workspace_id, body)
    if body.format == "huggingface" and recipe in (None, *HF_RECIPES):
        recipe = _hf_task(store, workspace_id, body, recipe)
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
            recipe=recipe,
            params=body.params,
            metrics=body.metrics,
            dataset_version_id=dataset.id if dataset else None,
            job_id=body.job_id,
            code_hash=body.code_hash,
            registered_by_job=job is not None and job == body.job_id,
            platform_written=trusted,
            metrics_source=MEASURED if trusted else REPORTED,
            file_count=len(body.files),
            total_bytes=sum(f.size for f in body.files),
            message=body.message,
            created_by=principal.user_id or None,  # SYSTEM_USER_ID: no user
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
            {
                "format": v.format,
                "files": v.file_count,
                "dataset": out.dataset,
                "job": v.job_id,
                "platform_written": trusted,
            },
        )
    return out


def update_model(db: Database, principal: Principal, name: str, body: ModelUpdate) -> ModelOut:
    """Description: developers. Gates and the must-beat rule guard production, so changing
    them needs a workspace admin, and the change is audited with what it replaced."""
    principal.require("developer")
    sets_must = "must_beat_production" in body.model_fields_set
    if body.gates is not None or sets_must:
        principal.require("admin")
    changed: dict[str, Any] = {}
    with db.write() as s:
        model = find_model(s, principal.workspace_id, name, lock=True)
        before = {"gates": model.gates, "must_beat_production": model.must_beat_production}
        if body.description is not None:
            model.description = changed["description"] = body.description
        if body.gates is not None:
            model.gates = changed["gates"] = [g.model_dump() for g in body.gates]
        if sets_must:
            must = body.must_beat_production
            model.must_beat_production = must.model_dump() if must else None
            changed["must_beat_production"] = model.must_beat_production
        if body.gates is not None or sets_must:
            audit.record(
                s,
                principal,
                "model.gates.update",
                "model",
                name,
                {"before": before, "after": {**before, **changed}, **changed},
            )
        else:
            audit.record(s, principal, "model.update", "model", name, changed)
    return get_model(db, principal, name)


def stamp(v: ModelVersion, stage: str, when: datetime) -> None:
    v.stage = stage
    v.stage_changed_at = when
