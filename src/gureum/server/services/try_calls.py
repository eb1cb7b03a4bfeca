"""A member tries an endpoint from the dashboard: the control plane calls the data plane for
them with a short-lived test key, so the call is checked, rate-limited and metered exactly as
the member's own calls are (``member:<user>`` in usage, not charged).

The test key is an ordinary data-plane API key of the member (``data_plane``, the role of the
key the member signed in with, expiring in ``KEY_TTL``): the database holds only its hash, so
replicas check it like any member key. Its token lives only in this process's memory (one per
member and workspace, reused until shortly before it expires) and is never returned, logged or
stored; a server restart simply mints another. Expired test keys of the member are deleted
when a new one is made, so they do not pile up in the key list.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete

from gureum.schemas.try_call import TryOut, TryRequest
from gureum.server.auth import Principal, new_key
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey
from gureum.server.errors import (
    ApiError,
    BadGateway,
    Conflict,
    NotFound,
    RateLimited,
    Unavailable,
    Unprocessable,
)
from gureum.server.services.audit import record
from gureum.server.services.endpoints import find_endpoint

KEY_NAME = "dashboard try-it"
KEY_TTL = timedelta(minutes=15)
RENEW_BEFORE = timedelta(minutes=3)  # a key with less left is replaced, not reused
WAIT_S = 60.0  # how long a try waits in all for a replica (scale from zero, a rollover)
CALL_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
IN_PROGRESS = "request_in_progress"


@dataclass(frozen=True)
class _Held:
    key_id: str
    token: str
    expires_at: datetime


class TestKeys:
    """The test keys this server holds, by (workspace, user): tokens in memory only."""

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self) -> None:
        self._held: dict[tuple[int, int], _Held] = {}
        self._lock = threading.Lock()

    def token(self, db: Database, principal: Principal) -> str:
        """A test key of the member with minutes left: the held one, else a new one."""
        principal.require("developer")
        slot = (principal.workspace_id, principal.user_id)
        with self._lock:
            held = self._held.get(slot)
            if held is not None and held.expires_at - utcnow() > RENEW_BEFORE:
                return held.token
            held = _mint(db, principal)
            self._held[slot] = held
            return held.token

    def drop(self, principal: Principal, token: str) -> None:
        """Forget a key the data plane refused (revoked by an admin, say): the next try mints."""
        slot = (principal.workspace_id, principal.user_id)
        with self._lock:
            held = self._held.get(slot)
            if held is not None and held.token == token:
                del self._held[slot]


def _mint(db: Database, principal: Principal) -> _Held:
    minted = new_key()
    now = utcnow()
    expires_at = now + KEY_TTL
    with db.write() as s:
        s.execute(
            delete(ApiKey).where(
                ApiKey.workspace_id == principal.workspace_id,
                ApiKey.user_id == principal.user_id,
                ApiKey.name == KEY_NAME,
                ApiKey.expires_at <= now,
            )
        )
        s.add(
            ApiKey(
                key_id=minted.key_id,
                secret_hash=minted.secret_hash,
                name=KEY_NAME,
                user_id=principal.user_id,
                workspace_id=principal.workspace_id,
                role=principal.role,
                expires_at=expires_at,
                data_plane=True,
            )
        )
        details = {"name": KEY_NAME, "expires_at": expires_at.isoformat(), "data_plane": True}
        record(s, principal, "key.create", "api_key", minted.key_id, details)
    return _Held(minted.key_id, minted.token, expires_at)


def check_endpoint(db: Database, principal: Principal, name: str, data_url: str | None) -> None:
    """The endpoint is the caller's and something serves it (404 / 409 before any key)."""
    principal.require("developer")
    with db.read() as s:
        find_endpoint(s, principal.workspace_id, name)
    if data_url is None:
        raise Conflict(f"endpoint {name!r} is not served: this server runs without a cluster")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    try:
        return max(0.2, float(value)) if value else None
    except ValueError:
        return None


def _error_of(resp: httpx.Response) -> tuple[str, str, Any]:
    try:
        error = resp.json()["error"]
        return str(error["code"]), str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError):
        return "error", f"the endpoint answered {resp.status_code}", None


async def _post(url: str, token: str, body: dict[str, Any]) -> httpx.Response:
    """One call with its Idempotency-Key, retried while no replica can take it yet (503 with
    Retry-After) or the first try is still running (409), up to ``WAIT_S``."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
    deadline = time.monotonic() + WAIT_S
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT) as http:
        while True:
            try:
                resp = await http.post(url, json=body, headers=headers)
            except httpx.TransportError as exc:
                raise BadGateway(
                    f"the endpoint's data plane cannot be reached ({type(exc).__name__})"
                ) from exc
            wait = None
            if resp.status_code == 503:
                wait = _retry_after(resp)
            elif resp.status_code == 409 and _error_of(resp)[0] == IN_PROGRESS:
                wait = _retry_after(resp) or 0.5
            if wait is None or time.monotonic() + wait > deadline:
                return resp
            await asyncio.sleep(wait)


def _answer(name: str, principal: Principal, resp: httpx.Response, started: float) -> TryOut:
    latency_ms = (time.perf_counter() - started) * 1000.0
    if resp.status_code < 400:
        try:
            data = resp.json()
            return TryOut(
                endpoint=name,
                model=data.get("model"),
                outputs=list(data["outputs"]),
                units=data.get("units"),
                unit=data.get("unit"),
                latency_ms=latency_ms,
                metered_as=f"member:{principal.user_name}",
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadGateway("the endpoint sent an answer that is not a prediction") from exc
    code, message, details = _error_of(resp)
    status = resp.status_code
    if status in (400, 404, 413, 422):  # the inputs, as the endpoint judged them
        error: ApiError = Unprocessable(message, details=details)
        error.status, error.code = status, code
        raise error
    if status == 429:
        after = resp.headers.get("retry-after")
        raise RateLimited(
            message, details=details, headers={"Retry-After": after} if after else None
        )
    if status == 503:
        raise Unavailable(f"no replica could take the call in time: {message}")
    raise BadGateway(f"the endpoint failed ({status}): {message}")


async def try_endpoint(
    db: Database,
    keys: TestKeys,
    principal: Principal,
    name: str,
    body: TryRequest,
    data_url: str | None,
) -> TryOut:
    """Call endpoint ``name`` with ``body`` as the member, through the data plane."""
    await asyncio.to_thread(check_endpoint, db, principal, name, data_url)
    url = f"{data_url}/v1/endpoints/{name}/predict"
    payload = body.model_dump(mode="json")
    started = time.perf_counter()
    for attempt in range(2):
        token = await asyncio.to_thread(keys.token, db, principal)
        resp = await _post(url, token, payload)
        if resp.status_code not in (401, 403) or attempt:
            break
        keys.drop(principal, token)  # refused: revoked, or the member's role fell; once more
    if resp.status_code in (401, 403):
        raise BadGateway(
            "the endpoint refused the dashboard's test key; the member needs the developer "
            "role or above in this workspace"
        )
    if resp.status_code == 404 and _error_of(resp)[0] == "not_found":
        raise NotFound(f"endpoint {name!r} is not served yet; wait until it is ready")
    return _answer(name, principal, resp, started)
