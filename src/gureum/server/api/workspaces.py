"""Workspaces: create (site admins), list and show (members), delete (owners)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status

from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.jobs import WorkspaceQuotas, WorkspaceShare, WorkspaceShareOut
from gureum.schemas.tenancy import WorkspaceCreate, WorkspaceOut
from gureum.server.deps import AuthDep, DbDep, JobsDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import shares
from gureum.server.services import workspaces as svc

router = APIRouter(prefix="/workspaces", tags=["workspaces"], responses={404: {"model": ErrorBody}})


@router.post("", status_code=status.HTTP_201_CREATED)
def create_workspace(body: WorkspaceCreate, db: DbDep, principal: Viewer) -> WorkspaceOut:
    return svc.create(db, principal, body)


@router.get("")
def list_workspaces(
    db: DbDep, principal: Viewer, params: Annotated[PageParams, Depends(page_params)]
) -> Page[WorkspaceOut]:
    return svc.list_visible(db, principal, params)


@router.get("/{name}")
def get_workspace(name: str, db: DbDep, principal: Viewer) -> WorkspaceOut:
    return svc.get(db, principal, name)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_workspace(name: str, db: DbDep, auth: AuthDep, principal: Viewer) -> Response:
    svc.delete(db, principal, name)
    auth.invalidate()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{name}/quotas")
def get_quotas(name: str, db: DbDep, principal: Viewer) -> WorkspaceQuotas:
    return svc.get_quotas(db, principal, name)


@router.put("/{name}/quotas")
def set_quotas(
    name: str, body: WorkspaceQuotas, db: DbDep, jobs: JobsDep, principal: Viewer
) -> WorkspaceQuotas:
    out = svc.set_quotas(db, principal, name, body)
    if jobs is not None:
        jobs.wake()  # a raised ceiling may let queued jobs start
    return out


@router.get("/{name}/share")
def get_share(name: str, db: DbDep, principal: Viewer) -> WorkspaceShareOut:
    """The workspace's guaranteed share of the pool and what its running jobs borrow."""
    return shares.get_share(db, principal, name)


@router.put(
    "/{name}/share",
    responses={403: {"model": ErrorBody}, 409: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def set_share(
    name: str, body: WorkspaceShare, db: DbDep, jobs: JobsDep, principal: Viewer
) -> WorkspaceShareOut:
    """Set the workspace's guaranteed share of the pool (site admins); the shares together
    may not promise more than the cluster has (its nodes and those the autoscaler may add)."""
    nodes = jobs.nodes() if jobs is not None else None
    out = shares.set_share(db, principal, name, body, shares.capacity(nodes))
    if jobs is not None:
        jobs.wake()  # a job now within its share goes first
    return out
