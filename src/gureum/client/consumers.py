"""SDK for plans, consumers (the workspace's customers) and their keys."""

from __future__ import annotations

import builtins
from typing import Any

from gureum.client.base import Transport, pages, segment
from gureum.schemas.capture import ForgetOut
from gureum.schemas.consumers import (
    ConsumerCreated,
    ConsumerKeyCreated,
    ConsumerKeyOut,
    ConsumerOut,
    PlanOut,
)

_UNSET: Any = object()


def _given(**fields: Any) -> dict[str, Any]:
    """Only what the caller passed: ``None`` is sent (it means unlimited), unset is not."""
    return {k: v for k, v in fields.items() if v is not _UNSET}


class _API:
    def __init__(self, t: Transport) -> None:
        self._t = t


class PlansAPI(_API):
    def create(
        self,
        name: str,
        *,
        price_per_request: float = 0.0,
        price_per_unit: float = 0.0,
        currency: str = "USD",
        rate_limit: float | None = None,
        monthly_quota: int | None = None,
        endpoints: builtins.list[str] | None = None,
    ) -> PlanOut:
        """A plan: prices, a rate limit (requests/s) and a monthly quota (None: unlimited),
        and the endpoints it allows (none listed: all of the workspace's)."""
        body = {
            "name": name,
            "price_per_request": price_per_request,
            "price_per_unit": price_per_unit,
            "currency": currency,
            "rate_limit": rate_limit,
            "monthly_quota": monthly_quota,
            "endpoints": endpoints or [],
        }
        return PlanOut.model_validate(self._t.json("POST", "/v1/plans", json=body))

    def list(self) -> builtins.list[PlanOut]:
        return [PlanOut.model_validate(p) for p in pages(self._t, "/v1/plans")]

    def get(self, name: str) -> PlanOut:
        return PlanOut.model_validate(self._t.json("GET", f"/v1/plans/{segment(name)}"))


class ConsumersAPI(_API):
    def create(
        self,
        name: str,
        *,
        plan: str | None = None,
        email: str | None = None,
        price_per_request: float = _UNSET,
        price_per_unit: float = _UNSET,
        currency: str = _UNSET,
        rate_limit: float | None = _UNSET,
        monthly_quota: int | None = _UNSET,
        endpoints: builtins.list[str] = _UNSET,
    ) -> ConsumerCreated:
        """A consumer with its first key (``token``: shown this once). Name an existing
        ``plan``, or give plan fields for a plan of its own (named after it)."""
        body = _given(
            price_per_request=price_per_request,
            price_per_unit=price_per_unit,
            currency=currency,
            rate_limit=rate_limit,
            monthly_quota=monthly_quota,
            endpoints=endpoints,
        )
        body["name"] = name
        if plan is not None:
            body["plan"] = plan
        if email is not None:
            body["email"] = email
        return ConsumerCreated.model_validate(self._t.json("POST", "/v1/consumers", json=body))

    def list(self) -> builtins.list[ConsumerOut]:
        return [ConsumerOut.model_validate(c) for c in pages(self._t, "/v1/consumers")]

    def get(self, name: str) -> ConsumerOut:
        return ConsumerOut.model_validate(self._t.json("GET", f"/v1/consumers/{segment(name)}"))

    def update(
        self,
        name: str,
        *,
        plan: str = _UNSET,
        email: str | None = _UNSET,
        disabled: bool = _UNSET,
        price_per_request: float = _UNSET,
        price_per_unit: float = _UNSET,
        currency: str = _UNSET,
        rate_limit: float | None = _UNSET,
        monthly_quota: int | None = _UNSET,
        endpoints: builtins.list[str] = _UNSET,
        capture: bool = _UNSET,
    ) -> ConsumerOut:
        """Switch plan, or change limits and prices (the consumer then gets a plan of its own),
        the email, ``disabled``, or ``capture`` (False: none of its calls is ever captured).
        Pass ``rate_limit=None`` for unlimited."""
        body = _given(
            plan=plan,
            email=email,
            disabled=disabled,
            capture=capture,
            price_per_request=price_per_request,
            price_per_unit=price_per_unit,
            currency=currency,
            rate_limit=rate_limit,
            monthly_quota=monthly_quota,
            endpoints=endpoints,
        )
        data = self._t.json("PATCH", f"/v1/consumers/{segment(name)}", json=body)
        return ConsumerOut.model_validate(data)

    def delete(self, name: str) -> ConsumerOut:
        """Disable the consumer and revoke its keys; its usage history stays."""
        data = self._t.json("DELETE", f"/v1/consumers/{segment(name)}")
        return ConsumerOut.model_validate(data)

    def forget(self, name: str) -> ForgetOut:
        """Erase the consumer's captured calls and feedback on every endpoint (and the stored
        bytes nothing else uses). The consumer and its keys stay; ``update(name,
        capture=False)`` stops capturing its calls from now on."""
        data = self._t.json("POST", f"/v1/consumers/{segment(name)}/forget")
        return ForgetOut.model_validate(data)

    def create_key(self, name: str) -> ConsumerKeyCreated:
        """Another key for the consumer; ``token`` is shown this once."""
        data = self._t.json("POST", f"/v1/consumers/{segment(name)}/keys")
        return ConsumerKeyCreated.model_validate(data)

    def list_keys(self, name: str) -> builtins.list[ConsumerKeyOut]:
        items = pages(self._t, f"/v1/consumers/{segment(name)}/keys")
        return [ConsumerKeyOut.model_validate(k) for k in items]

    def revoke_key(self, name: str, key_id: str) -> ConsumerKeyOut:
        path = f"/v1/consumers/{segment(name)}/keys/{segment(key_id)}"
        return ConsumerKeyOut.model_validate(self._t.json("DELETE", path))
