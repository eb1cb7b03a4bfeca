"""Filtered lists the dashboard shows that the REST lists do not filter: models and datasets
by a part of their name, a model's versions by stage. Each reuses its service's own query and
output (so a row here is the row the API gives) and pages by the same cursor."""

from __future__ import annotations

from sqlalchemy import select

from gureum.schemas.common import Page
from gureum.schemas.datasets import DatasetOut
from gureum.schemas.models import ModelOut, ModelVersionOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Dataset, Model, ModelVersion
from gureum.server.pagination import PageParams, paginate, paginate_rows
from gureum.server.services import datasets, models


def _contains(text: str) -> str:
    """A LIKE pattern that matches ``text`` literally (its % and _ escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def list_models(
    db: Database, principal: Principal, params: PageParams, q: str = ""
) -> Page[ModelOut]:
    principal.require("viewer")
    stmt = models._model_columns().where(Model.workspace_id == principal.workspace_id)
    if q:
        stmt = stmt.where(Model.name.like(_contains(q), escape="\\"))
    with db.read() as s:
        rows, cursor = paginate_rows(s, stmt, Model.name, params)
    return Page(items=[models._model_out(r) for r in rows], next_cursor=cursor)


def list_datasets(
    db: Database, principal: Principal, params: PageParams, q: str = ""
) -> Page[DatasetOut]:
    principal.require("viewer")
    stmt = datasets._dataset_columns().where(Dataset.workspace_id == principal.workspace_id)
    if q:
        stmt = stmt.where(Dataset.name.like(_contains(q), escape="\\"))
    with db.read() as s:
        rows, cursor = paginate_rows(s, stmt, Dataset.name, params)
    return Page(items=[datasets._dataset_out(r) for r in rows], next_cursor=cursor)


def list_model_versions(
    db: Database, principal: Principal, name: str, params: PageParams, stage: str = ""
) -> Page[ModelVersionOut]:
    """Newest first, as ``GET /v1/models/{name}/versions``, optionally of one stage."""
    principal.require("viewer")
    with db.read() as s:
        model = models.find_model(s, principal.workspace_id, name)
        stmt = select(ModelVersion).where(ModelVersion.model_id == model.id)
        if stage:
            stmt = stmt.where(ModelVersion.stage == stage)
        rows, cursor = paginate(s, stmt, ModelVersion.version, params, descending=True)
        items = [models.version_out(s, v, name) for v in rows]
    return Page(items=items, next_cursor=cursor)
