"""Test helpers for model versions a platform train job would have written.

Since issue 10 the server unpickles (deploys, evaluates) only files a built-in recipe's train
job wrote, and gates may require metrics the platform measured. Tests that train a model
outside the platform (to save the minutes a real job takes) and serve it stand in for that
job here, explicitly, instead of turning the check off.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.client import Client
from gureum.schemas.jobs import Resources
from gureum.schemas.models import ModelVersionOut
from gureum.server.db.session import Database
from gureum.server.db.tables import Job, Model, ModelVersion, Workspace
from gureum.server.services.jobs import new_job_id


class Touch:
    """Unpickling this creates ``path``: what a crafted model file does (or something worse)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def crafted_tabular(folder: Path, marker: Path) -> Path:
    """A tabular model folder (valid config) whose ``model.joblib`` creates ``marker``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.joblib").write_bytes(pickle.dumps(Touch(marker)))
    (folder / "config.json").write_text(
        '{"recipe": "tabular", "params": {}, "target": "returned", "columns": {}}'
    )
    return folder


def _version_row(s: Session, workspace: str, model: str, version: int) -> ModelVersion:
    row = s.scalar(
        select(ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)
        .join(Workspace, Workspace.id == Model.workspace_id)
        .where(Workspace.name == workspace, Model.name == model)
        .where(ModelVersion.version == version)
    )
    assert row is not None, f"no {model}:{version} in {workspace}"
    return row


def mark_platform_trained(
    db: Database, model: str, version: int, *, recipe: str, workspace: str = "default"
) -> None:
    """Record ``model:version`` as written and measured by a platform job of ``recipe``.

    Only for tests: in the product only the job controller sets these marks.
    """
    with db.write() as s:
        row = _version_row(s, workspace, model, version)
        row.recipe, row.platform_written, row.metrics_source = recipe, True, "measured"


def register_trained(
    client: Client,
    db: Database,
    name: str,
    folder: Path,
    *,
    recipe: str,
    workspace: str = "default",
    **kwargs: Any,
) -> ModelVersionOut:
    """Upload ``folder`` as a version of ``name`` and mark it as a ``recipe`` train job's.

    It is registered without a recipe (so nothing refuses the upload), then marked.
    """
    v = client.models.register(name, folder, **kwargs)
    mark_platform_trained(db, name, v.version, recipe=recipe, workspace=workspace)
    return client.models.version(name, v.version)


def mark_trained_by_job(
    db: Database, model: str, version: int, params: dict[str, Any], workspace: str = "default"
) -> str:
    """Record ``model:version`` as made by a succeeded train job of its recipe with ``params``
    (what a retrain pipeline reuses as the last good configuration); the job's id.

    Only for tests that cannot spend a real job's minutes: the job controller writes these.
    """
    with db.write() as s:
        row = _version_row(s, workspace, model, version)
        job_id = new_job_id()
        model_row = s.get(Model, row.model_id)
        assert model_row is not None
        s.add(
            Job(
                id=job_id,
                workspace_id=model_row.workspace_id,
                kind="train",
                state="succeeded",
                recipe=row.recipe or "tabular",
                dataset_version_id=row.dataset_version_id,
                model_label=model,
                output_version=f"{model}:{version}",
                params=params,
                resources=Resources(cpus=0.5).model_dump(),
                progress={},
                metrics=dict(row.metrics),
                details={},
            )
        )
        row.job_id = job_id
        return job_id
