"""The audit trail: every mutation writes one row inside its own transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.server.auth import Principal
from gureum.server.db.session import Database
from gureum.server.db.tables import AuditEvent
from gureum.server.pagination import PageParams, paginate


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
    session.add(
        AuditEvent(
            workspace_id=workspace_id if workspace_id is not None else (
                principal.workspace_id if principal else None
            ),
            actor_user_id=principal.user_id if principal else None,
            actor_key_id=principal.key_id if principal else None,
            action=action,
            target_type=target_type,
            target=target,
            details=details or {},
        )
    )


def list_events(
    db: Database, principal: Principal, params: PageParams, action: str | None = None
) -> tuple[Sequence[AuditEvent], str | None]:
    principal.require("admin")
    stmt = select(AuditEvent).where(AuditEvent.workspace_id == principal.workspace_id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    with db.read() as s:
        return paginate(s, stmt, AuditEvent.id, params, descending=True)
