"""The model catalog (``gureum models list --catalog``): the workspace's deployable versions
(each model's production version, else its latest, when a recipe serves it), the built-in
recipes whose trained models serve, and the formats that serve once imported. Read from the
recipe specs, so a new recipe or format shows up without a change here."""

from __future__ import annotations

import math

from sqlalchemy import func, select

from gureum.recipes.spec import RecipeSpec
from gureum.recipes.specs import SPECS, serving_of
from gureum.schemas.catalog import CatalogEntry, CatalogResources
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import Model, ModelVersion

GiB = 1024**3
RUNTIME_GB = 0.5


def resources(total_bytes: int) -> CatalogResources:
    """What one replica needs for files of this size (rounded up to a quarter GiB)."""
    memory = RUNTIME_GB + 2 * total_bytes / GiB
    return CatalogResources(
        cpus=1.0 if total_bytes <= GiB else 2.0, memory_gb=math.ceil(memory * 4) / 4
    )


def _task(spec: RecipeSpec) -> str:
    return spec.description.split(";")[0]


def catalog(db: Database, principal: Principal) -> list[CatalogEntry]:
    out: list[CatalogEntry] = []
    with db.read() as s:
        production = (
            select(ModelVersion.model_id, func.max(ModelVersion.version).label("version"))
            .where(ModelVersion.stage == "production")
            .group_by(ModelVersion.model_id)
            .subquery()
        )
        latest = (
            select(ModelVersion.model_id, func.max(ModelVersion.version).label("version"))
            .group_by(ModelVersion.model_id)
            .subquery()
        )
        rows = s.execute(
            select(Model.name, ModelVersion)
            .join(ModelVersion, ModelVersion.model_id == Model.id)
            .outerjoin(production, production.c.model_id == Model.id)
            .join(latest, latest.c.model_id == Model.id)
            .where(Model.workspace_id == principal.workspace_id)
            .where(ModelVersion.version == func.coalesce(production.c.version, latest.c.version))
            .order_by(Model.name)
        ).all()
        for name, v in rows:
            serving = serving_of(v.recipe)
            spec = SPECS.get(v.recipe or "")
            if serving is None or spec is None:
                continue
            out.append(
                CatalogEntry(
                    kind="version",
                    name=f"{name}:{v.version}",
                    recipe=v.recipe,
                    task=_task(spec),
                    unit=serving.unit,
                    openai=serving.openai,
                    how=f"gureum deploy {name} --endpoint E",
                    total_bytes=v.total_bytes,
                    resources=resources(v.total_bytes),
                )
            )
    for spec in SPECS.values():
        if spec.serving is None:
            continue
        if spec.formats:
            for fmt in spec.formats:
                out.append(
                    CatalogEntry(
                        kind="format",
                        name=fmt,
                        recipe=spec.name,
                        task=_task(spec),
                        unit=spec.serving.unit,
                        openai=spec.serving.openai,
                        how=f"gureum models import NAME PATH ({fmt})",
                    )
                )
        elif spec.trainable:
            out.append(
                CatalogEntry(
                    kind="recipe",
                    name=spec.name,
                    recipe=spec.name,
                    task=_task(spec),
                    unit=spec.serving.unit,
                    openai=spec.serving.openai,
                    how=f"gureum train --recipe {spec.name} --dataset D --model NAME",
                )
            )
    return out
