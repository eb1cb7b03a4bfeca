"""Plans, consumers and consumer keys: the token is in the create responses only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, status

from gureum.schemas.capture import ForgetOut
from gureum.schemas.common import ErrorBody, Page
from gureum.schemas.consumers import (
    ConsumerCreate,
    ConsumerCreated,
    ConsumerKeyCreated,
    ConsumerKeyOut,
    ConsumerOut,
    ConsumerUpdate,
    PlanCreate,
    PlanOut,
)
from gureum.server.deps import Admin, DbDep, StoreDep, Viewer
from gureum.server.pagination import PageParams, page_params
from gureum.server.services import capture_erasure
from gureum.server.services import consumers as svc

ERRORS: dict[int | str, dict[str, object]] = {
    404: {"model": ErrorBody},
    409: {"model": ErrorBody},
    422: {"model": ErrorBody},
}
plans_router = APIRouter(prefix="/plans", tags=["plans"], responses=ERRORS)
router = APIRouter(prefix="/consumers", tags=["consumers"], responses=ERRORS)

Params = Annotated[PageParams, Depends(page_params)]
PlanName = Annotated[str, Path(max_length=128, description="the plan's name")]
ConsumerName = Annotated[str, Path(max_length=128, description="the consumer's name")]
KeyId = Annotated[str, Path(max_length=32, description="the key's public id")]


@plans_router.post("", status_code=status.HTTP_201_CREATED)
def create_plan(body: PlanCreate, db: DbDep, principal: Admin) -> PlanOut:
    return svc.create_plan(db, principal, body)


@plans_router.get("")
def list_plans(db: DbDep, principal: Viewer, params: Params) -> Page[PlanOut]:
    return svc.list_plans(db, principal, params)


@plans_router.get("/{name}")
def get_plan(name: PlanName, db: DbDep, principal: Viewer) -> PlanOut:
    return svc.get_plan(db, principal, name)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_consumer(body: ConsumerCreate, db: DbDep, principal: Admin) -> ConsumerCreated:
    """A consumer and its first key (``token``: shown this once); its plan is named, or made
    from the plan fields given."""
    return svc.create(db, principal, body)


@router.get("")
def list_consumers(db: DbDep, principal: Viewer, params: Params) -> Page[ConsumerOut]:
    return svc.list_consumers(db, principal, params)


@router.get("/{name}")
def get_consumer(name: ConsumerName, db: DbDep, principal: Viewer) -> ConsumerOut:
    return svc.get(db, principal, name)


@router.patch("/{name}")
def update_consumer(
    name: ConsumerName, body: ConsumerUpdate, db: DbDep, principal: Admin
) -> ConsumerOut:
    return svc.update(db, principal, name, body)


@router.delete("/{name}")
def delete_consumer(name: ConsumerName, db: DbDep, principal: Admin) -> ConsumerOut:
    """Disable the consumer and revoke its keys; its usage history and invoices stay."""
    return svc.delete(db, principal, name)


@router.post("/{name}/forget")
def forget_consumer(name: ConsumerName, db: DbDep, store: StoreDep, principal: Admin) -> ForgetOut:
    """Erase the consumer's captured calls and feedback on every endpoint, with the stored
    bytes nothing else uses; the consumer and its keys stay."""
    return capture_erasure.forget(db, store, principal, name)


@router.post("/{name}/keys", status_code=status.HTTP_201_CREATED)
def create_key(name: ConsumerName, db: DbDep, principal: Admin) -> ConsumerKeyCreated:
    return svc.create_key(db, principal, name)


@router.get("/{name}/keys")
def list_keys(
    name: ConsumerName, db: DbDep, principal: Viewer, params: Params
) -> Page[ConsumerKeyOut]:
    return svc.list_keys(db, principal, name, params)


@router.delete("/{name}/keys/{key_id}")
def revoke_key(name: ConsumerName, key_id: KeyId, db: DbDep, principal: Admin) -> ConsumerKeyOut:
    return svc.revoke_key(db, principal, name, key_id)
