"""SDK for workspaces, users, API keys and the audit log."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from gureum.client.base import Transport, pages, segment
from gureum.schemas.jobs import WorkspaceQuotas, WorkspaceShareOut
from gureum.schemas.tenancy import (
    AuditEventOut,
    KeyCreated,
    KeyOut,
    MemberOut,
    Role,
    WorkspaceOut,
)


class _API:
    def __init__(self, t: Transport) -> None:
        self._t = t


class WorkspacesAPI(_API):
    def create(self, name: str) -> WorkspaceOut:
        """Create a workspace (site admins); you become its owner."""
        data = self._t.json("POST", "/v1/workspaces", json={"name": name})
        return WorkspaceOut.model_validate(data)

    def list(self) -> builtins.list[WorkspaceOut]:
        """Workspaces you are a member of (site admins: all)."""
        return [WorkspaceOut.model_validate(w) for w in pages(self._t, "/v1/workspaces")]

    def get(self, name: str) -> WorkspaceOut:
        return WorkspaceOut.model_validate(self._t.json("GET", f"/v1/workspaces/{segment(name)}"))

    def delete(self, name: str) -> None:
        self._t.json("DELETE", f"/v1/workspaces/{segment(name)}")

    def get_quotas(self, name: str) -> WorkspaceQuotas:
        """The ceilings the job queue holds the workspace's jobs against (None: no limit)."""
        data = self._t.json("GET", f"/v1/workspaces/{segment(name)}/quotas")
        return WorkspaceQuotas.model_validate(data)

    def set_quotas(self, name: str, quotas: WorkspaceQuotas | dict[str, Any]) -> WorkspaceQuotas:
        """Replace all of the workspace's quotas (admins); a field left out means no limit."""
        body = WorkspaceQuotas.model_validate(quotas).model_dump(mode="json")
        data = self._t.json("PUT", f"/v1/workspaces/{segment(name)}/quotas", json=body)
        return WorkspaceQuotas.model_validate(data)

    def get_share(self, name: str) -> WorkspaceShareOut:
        """Its guaranteed share of the pool, and what its running jobs use and borrow."""
        data = self._t.json("GET", f"/v1/workspaces/{segment(name)}/share")
        return WorkspaceShareOut.model_validate(data)

    def set_share(
        self, name: str, cpus: float | None = None, gpus: float | None = None
    ) -> WorkspaceShareOut:
        """Replace its guaranteed share (site admins); None is no guarantee."""
        body = {"cpus": cpus, "gpus": gpus}  # checked by the server (422 on a negative)
        data = self._t.json("PUT", f"/v1/workspaces/{segment(name)}/share", json=body)
        return WorkspaceShareOut.model_validate(data)


class UsersAPI(_API):
    """Members of the workspace your key acts in."""

    def add(self, name: str, role: Role = "developer", email: str | None = None) -> MemberOut:
        body = {"name": name, "role": role, "email": email}
        return MemberOut.model_validate(self._t.json("POST", "/v1/users", json=body))

    def list(self) -> builtins.list[MemberOut]:
        return [MemberOut.model_validate(u) for u in pages(self._t, "/v1/users")]

    def set_role(self, name: str, role: Role) -> MemberOut:
        data = self._t.json("PATCH", f"/v1/users/{segment(name)}", json={"role": role})
        return MemberOut.model_validate(data)

    def remove(self, name: str) -> None:
        self._t.json("DELETE", f"/v1/users/{segment(name)}")


class KeysAPI(_API):
    def create(
        self,
        name: str,
        *,
        role: Role | None = None,
        expires_in_days: int | None = None,
        expires_at: datetime | None = None,
        user: str | None = None,
        workspace: str | None = None,
        data_plane: bool = False,
    ) -> KeyCreated:
        """Create a key; ``token`` in the result is shown this once and never again.
        ``data_plane``: the key may also call the workspace's endpoints (developer or above),
        rate-limited and metered like a consumer."""
        fields: dict[str, Any] = {
            "name": name,
            "role": role,
            "expires_in_days": expires_in_days,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "user": user,
            "workspace": workspace,
            "data_plane": data_plane or None,
        }
        body = {k: v for k, v in fields.items() if v is not None}
        return KeyCreated.model_validate(self._t.json("POST", "/v1/keys", json=body))

    def list(self) -> builtins.list[KeyOut]:
        """All keys of the workspace for admins; your own keys otherwise."""
        return [KeyOut.model_validate(k) for k in pages(self._t, "/v1/keys")]

    def revoke(self, key_id: str) -> KeyOut:
        return KeyOut.model_validate(self._t.json("DELETE", f"/v1/keys/{segment(key_id)}"))


class AuditAPI(_API):
    def list(
        self, action: str | None = None, limit: int | None = None
    ) -> builtins.list[AuditEventOut]:
        """Events of your workspace, newest first; all of them unless ``limit`` is given."""
        params: dict[str, Any] = {"action": action} if action else {}
        if limit is None:
            return [AuditEventOut.model_validate(e) for e in pages(self._t, "/v1/audit", params)]
        events: builtins.list[AuditEventOut] = []
        params["limit"] = min(limit, 1000)
        while len(events) < limit:
            page = self._t.json("GET", "/v1/audit", params=params)
            events.extend(AuditEventOut.model_validate(e) for e in page["items"])
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return events[:limit]
