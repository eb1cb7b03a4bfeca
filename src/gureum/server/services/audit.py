"""The audit trail: every mutation writes one row inside its own transaction.

Rows say who (user, key id), what (action, target) and when. They must never hold a secret:
``record`` drops any detail whose name looks like one, as a last line of defence.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.tenancy import AuditEventOut
from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import AuditEvent, User
from gureum.server.pagination import PageParams, paginate

SECRET_NAMES = ("token", "secret", "secret_hash", "password", "api_key", "credentials")


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return any(lowered == w or lowered.endswith("_" + w) for w in SECRET_NAMES)


def scrub(details: dict[str, Any]) -> dict[str, Any]:
    """Drop secret-looking entries, at any depth."""
    clean: dict[str, Any] = {}
    for k, v in details.items():
        if _is_secret(str(k)):
            continue
        clean[k] = scrub(v) if isinstance(v, dict) else v
    return clean


def record(
    session: Session,
    principal: Principal | None,
    action: str,
    target_type: str,
    target: str,
    details: dict[str, Any] | None = None,
    *,
    workspace_id: int | None = None,
) -> None:
    if workspace_id is None and principal is not None:
        workspace_id = principal.workspace_id
    session.add(
        AuditEvent(
            workspace_id=workspace_id,
            actor_user_id=(principal.user_id or None) if principal else None,
            actor_key_id=principal.key_id if principal else None,
            action=action,
            target_type=target_type,
            target=target,
            details=scrub(details or {}),
        )
    )


def list_events(
    db: Database, principal: Principal, params: PageParams, action: str | None = None
) -> Page[AuditEventOut]:
    """The caller's workspace's events, newest first (admins only)."""
    principal.require("admin")
    stmt = select(AuditEvent).where(AuditEvent.workspace_id == principal.workspace_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, AuditEvent.id, params, descending=True)
        ids = {e.actor_user_id for e in rows if e.actor_user_id is not None}
        users = s.execute(select(User.id, User.name).where(User.id.in_(ids)))
        names = {user_id: name for user_id, name in users}
    items = [
        AuditEventOut(
            id=e.id,
            created_at=e.created_at,
            user=names.get(e.actor_user_id) if e.actor_user_id is not None else None,
            key_id=e.actor_key_id,
            action=e.action,
            target_type=e.target_type,
            target=e.target,
            details=e.details,
        )
        for e in rows
    ]
    return Page(items=items, next_cursor=cursor)
