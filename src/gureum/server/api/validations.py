"""Validation reports of model versions: ``gureum models validate`` and the last report."""

from __future__ import annotations

import functools
from typing import Annotated

from fastapi import APIRouter, Path, status

from gureum.schemas.common import NAME_PATTERN, ErrorBody
from gureum.schemas.validations import ValidationOut, ValidationRequest
from gureum.server.deps import DbDep, Developer, ServingDep, SettingsDep, StoreDep, Viewer
from gureum.server.services import validations as svc
from gureum.serving.validate_task import run_on_cluster

router = APIRouter(
    prefix="/models",
    tags=["models"],
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)

Name = Annotated[str, Path(pattern=NAME_PATTERN, description="model name (lowercase)")]
Ref = Annotated[str, Path(description='a version number, "latest" or "production"')]


@router.post(
    "/{name}/versions/{version}/validate",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        403: {"model": ErrorBody},
        409: {"model": ErrorBody, "description": "a validation of this version is running"},
        503: {"model": ErrorBody, "description": "no compute cluster to run it on"},
    },
)
def validate(
    name: Name,
    version: Ref,
    body: ValidationRequest,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    serving: ServingDep,
    principal: Developer,
) -> ValidationOut:
    """Load the version and smoke-test it on sample inputs, as a deploy's first replica does,
    in a Ray task; answers at once with the ``running`` report (poll the GET)."""
    runner = None
    if serving.cluster:
        runner = functools.partial(
            run_on_cluster,
            artifacts=settings.resolved_artifacts,
            cache_dir=str(settings.serving_dir),
        )
    return svc.start_manual(db, store, principal, name, version, body, runner)


@router.get("/{name}/versions/{version}/validation")
def last_validation(name: Name, version: Ref, db: DbDep, principal: Viewer) -> ValidationOut:
    """The version's newest validation report (of a deploy or of ``models validate``)."""
    return svc.latest(db, principal, name, version)
