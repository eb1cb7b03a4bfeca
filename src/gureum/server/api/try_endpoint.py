"""Try an endpoint as a member: the dashboard's "try it" panel (and any member's key) sends
inputs here; the control plane calls the data plane with the member's short-lived test key and
returns the answer. Developers and up (a viewer cannot call endpoints); metered as the member."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from gureum.schemas.common import ErrorBody
from gureum.schemas.try_call import TryOut, TryRequest
from gureum.server.deps import DbDep, Developer, ServingDep
from gureum.server.services import try_calls as svc

router = APIRouter(
    prefix="/endpoints",
    tags=["endpoints"],
    responses={
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        409: {"model": ErrorBody},
        422: {"model": ErrorBody},
        429: {"model": ErrorBody},
        502: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
)
Name = Annotated[str, Path(max_length=63, description="the endpoint's name")]


def held_keys(request: Request) -> svc.TestKeys:
    """This server's held test keys (made on first use)."""
    keys: svc.TestKeys | None = getattr(request.app.state, "try_keys", None)
    if keys is None:
        keys = request.app.state.try_keys = svc.TestKeys()
    return keys


@router.post("/{name}/try")
async def try_endpoint(
    name: Name,
    body: TryRequest,
    request: Request,
    db: DbDep,
    serving: ServingDep,
    principal: Developer,
) -> TryOut:
    """Predict ``inputs`` on the endpoint as the calling member (``member:<user>`` in usage,
    rate-limited like the member's data-plane keys, not charged)."""
    return await svc.try_endpoint(db, held_keys(request), principal, name, body, serving.data_url)
