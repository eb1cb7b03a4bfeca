"""Base models: registry versions a job's parameters name (the text-generator's ``base_model``).

A base model is a reference into the registry of the job's own workspace, resolved here at
submission (404 when that workspace has no such model, 422 when it is not a Hugging Face
folder) and pinned as "NAME:V" in the job's parameters; the controller hands that version's
files to the worker (``JobSpec.models``). A parameter never names a path on a worker, so a job
cannot read another workspace's files or anything else on the node.

A text-generator model that is loaded (deploy, evaluate, predict) must name its base the same
way and carry the base's files itself; a ``config.json`` that names a path is refused (422).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.compute.spec import BlobFile
from gureum.recipes.base import RecipeError
from gureum.recipes.spec import BaseModelParam
from gureum.recipes.specs import spec_of
from gureum.server.db.tables import Job, Model, ModelFile, ModelVersion
from gureum.server.errors import ApiError, Unprocessable
from gureum.server.services.models import find_model, resolve_version_row
from gureum.storage.store import ArtifactStore

BASE_FORMAT = "huggingface"
MAX_CONFIG_BYTES = 1 << 20


def resolve(s: Session, workspace_id: int, recipe: str, params: dict[str, Any]) -> str | None:
    """The pinned "NAME:V" of the base model ``params`` name, in the caller's workspace; None
    when there is none. The recipe's parameters already refused anything but NAME[:V]."""
    use = _base_of(recipe)
    ref = params.get(use.param) if use else None
    if ref is None:
        return None
    name, _, version = str(ref).partition(":")
    mv = resolve_version_row(s, find_model(s, workspace_id, name), version or "latest")
    label = f"{name}:{mv.version}"
    if mv.format != BASE_FORMAT:
        raise Unprocessable(
            f"base_model {label} is a {mv.format!r} model, not a Hugging Face model folder "
            "(import one with `gureum models import NAME FOLDER`)",
            details={"base_model": label, "format": mv.format},
        )
    if use is not None and use.base_recipe is not None and mv.recipe != use.base_recipe:
        raise Unprocessable(
            f"base_model {label} is served by {mv.recipe!r}; {recipe} trains on a model that "
            f"{use.base_recipe} serves (a diffusers folder imported with `gureum models import`)",
            details={"base_model": label, "recipe": mv.recipe},
        )
    return label


def _base_of(recipe: str | None) -> BaseModelParam | None:
    """How the recipe's parameters name a base model (its spec says), if they do."""
    spec = spec_of(recipe)
    return spec.base_model if spec else None


def job_models(s: Session, job: Job) -> dict[str, list[BlobFile]]:
    """The files of the base model a train job's parameters pin, for its worker; resolved
    again in the job's own workspace (registry versions are immutable)."""
    if job.kind != "train":
        return {}
    try:
        label = resolve(s, job.workspace_id, job.recipe, job.params or {})
        if label is None:
            return {}
        name, _, version = label.partition(":")
        mv = resolve_version_row(s, find_model(s, job.workspace_id, name), version)
    except ApiError:
        return {}  # gone since submission: the recipe fails the job, saying it has no base
    rows = s.execute(
        select(ModelFile.path, ModelFile.sha256, ModelFile.size).where(
            ModelFile.version_id == mv.id
        )
    ).all()
    return {label: [BlobFile(path=r.path, sha256=r.sha256, size=r.size) for r in rows]}


def check_loadable(
    s: Session, store: ArtifactStore, mv: ModelVersion, recipe: str | None, label: str
) -> None:
    """422 when a version loaded by a recipe that trains on base models (the text-generator)
    names its base in ``config.json`` as anything but a registry reference (a path would be
    read where it loads), or lacks the base's files."""
    use = _base_of(recipe)
    if use is None:
        return
    row = s.execute(
        select(ModelFile.sha256, ModelFile.size).where(
            ModelFile.version_id == mv.id, ModelFile.path == "config.json"
        )
    ).first()
    if row is None:
        return  # nothing names a base; the recipe refuses a folder without config.json
    workspace_id = s.scalar(select(Model.workspace_id).where(Model.id == mv.model_id))
    if workspace_id is None or row.size > MAX_CONFIG_BYTES:
        raise Unprocessable(f"{label}: config.json is over {MAX_CONFIG_BYTES >> 20} MiB")
    with store.open_blob(workspace_id, row.sha256) as fh:
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    try:
        config = json.loads(raw)
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        use.named_in(config)
    except RecipeError as exc:
        raise Unprocessable(f"{label}: {exc}", details={"model": label}) from None
    except ValueError as exc:
        raise Unprocessable(f"{label}: config.json is not a JSON object ({exc})") from None
    has_base = s.scalar(
        select(ModelFile.id).where(
            ModelFile.version_id == mv.id, ModelFile.path == f"{use.folder}/{use.marker}"
        )
    )
    if use.named_in(config) is not None and has_base is None:
        raise Unprocessable(
            f"{label}: a LoRA {recipe} model carries its base model's files in "
            f"{use.folder}/ (a platform train job puts them there); this version has none",
            details={"model": label},
        )
