"""API keys: created with their token shown once, listed without secrets, revoked at once.

A key never carries more than both its user's role in its workspace and the creator's own
role there: nobody mints a key stronger than themselves. A key acts as its user, so keys of
other users need admin+ and are refused for users above the caller and for site admins (only
a site admin makes keys of their own: otherwise a workspace admin could become site admin);
keys in another workspace need an admin key and the caller's user to be admin+ there (a
site admin counts as owner where not a member). Keys a caller may not list are 404 to them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.tenancy import KeyCreate, KeyCreated, KeyOut
from gureum.server.auth import Principal, at_least, new_key, role_rank
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, User, Workspace
from gureum.server.errors import Forbidden, NotFound, Unprocessable
from gureum.server.pagination import PageParams, paginate
from gureum.server.services import workspaces
from gureum.server.services.audit import record


def _out(key: ApiKey, user: str, workspace: str) -> KeyOut:
    return KeyOut.model_validate(
        {
            "key_id": key.key_id,
            "name": key.name,
            "user": user,
            "workspace": workspace,
            "role": key.role,
            "created_at": key.created_at,
            "expires_at": key.expires_at,
            "revoked_at": key.revoked_at,
            "last_used_at": key.last_used_at,
            "data_plane": key.data_plane,
        }
    )


def _expiry(body: KeyCreate) -> datetime | None:
    if body.expires_in_days is not None:
        return utcnow() + timedelta(days=body.expires_in_days)
    if body.expires_at is None:
        return None
    at = body.expires_at if body.expires_at.tzinfo else body.expires_at.replace(tzinfo=UTC)
    if at <= utcnow():
        raise Unprocessable("expires_at is in the past")
    return at


def _target_workspace(s: Session, principal: Principal, name: str | None) -> tuple[Workspace, str]:
    """The workspace the key will act in, and the caller's role there."""
    if name is None or name == principal.workspace_name:
        ws = s.get(Workspace, principal.workspace_id)
        assert ws is not None  # the principal's key holds a foreign key to it
        return ws, principal.role
    if not at_least(principal.role, "admin"):
        raise Forbidden("creating a key in another workspace needs an admin key")
    ws = workspaces.find(s, name)
    role = workspaces.role_cap(s, principal.user_id, principal.is_site_admin, ws.id) if ws else None
    if ws is None or role is None:
        raise workspaces.not_found(name)
    if not at_least(role, "admin"):
        raise Forbidden(f"creating keys in workspace '{name}' needs the admin role there")
    return ws, role


def _target_user(s: Session, principal: Principal, name: str | None, caller_role: str) -> User:
    if name is None or name == principal.user_name:
        user = s.get(User, principal.user_id)
        assert user is not None
        return user
    if not at_least(caller_role, "admin"):
        raise Forbidden("creating a key for another user needs the admin role")
    user = s.scalar(select(User).where(User.name == name))
    if user is None:
        raise NotFound(f"user '{name}' not found")
    if user.is_site_admin:
        # A key acts as its user: one for a site admin would carry site-wide powers.
        raise Forbidden(f"only '{user.name}' can create keys for a site admin")
    return user


def create(db: Database, principal: Principal, body: KeyCreate) -> KeyCreated:
    principal.require("developer")
    expires_at = _expiry(body)
    with db.write() as s:
        ws, caller_role = _target_workspace(s, principal, body.workspace)
        user = _target_user(s, principal, body.user, caller_role)
        user_role = workspaces.role_cap(s, user.id, user.is_site_admin, ws.id)
        if user_role is None:
            raise NotFound(f"user '{user.name}' is not a member of workspace '{ws.name}'")
        if user.id != principal.user_id and role_rank(user_role) > role_rank(caller_role):
            raise Forbidden(
                f"'{user.name}' is {user_role} in '{ws.name}', above your role ({caller_role}): "
                "keys for other users are made only by someone at least as high"
            )
        role: str = body.role or min(user_role, caller_role, key=role_rank)
        if role_rank(role) > role_rank(user_role):
            raise Forbidden(
                f"a key cannot exceed its user's role: '{user.name}' is {user_role} in '{ws.name}'"
            )
        if role_rank(role) > role_rank(caller_role):
            raise Forbidden(f"you cannot create a key above your own role ({caller_role})")
        if body.data_plane and not at_least(role, "developer"):
            raise Forbidden("a data-plane key needs the developer role or above")
        minted = new_key()
        key = ApiKey(
            key_id=minted.key_id,
            secret_hash=minted.secret_hash,
            name=body.name,
            user_id=user.id,
            workspace_id=ws.id,
            role=role,
            expires_at=expires_at,
            data_plane=body.data_plane,
        )
        s.add(key)
        s.flush()
        details = {
            "name": body.name,
            "user": user.name,
            "role": role,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "data_plane": body.data_plane,
        }
        record(s, principal, "key.create", "api_key", key.key_id, details, workspace_id=ws.id)
        if ws.id != principal.workspace_id:  # the caller's log shows what this key did too
            details["workspace"] = ws.name
            record(s, principal, "key.create", "api_key", key.key_id, details)
        info = _out(key, user.name, ws.name)
    return KeyCreated(**info.model_dump(), token=minted.token)


def list_keys(db: Database, principal: Principal, params: PageParams) -> Page[KeyOut]:
    principal.require("viewer")
    stmt = select(ApiKey).where(ApiKey.workspace_id == principal.workspace_id)
    if not at_least(principal.role, "admin"):
        stmt = stmt.where(ApiKey.user_id == principal.user_id)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, ApiKey.id, params)
        users = s.execute(select(User.id, User.name).where(User.id.in_([k.user_id for k in rows])))
        names = {user_id: name for user_id, name in users}
    items = [_out(k, names[k.user_id], principal.workspace_name) for k in rows]
    return Page(items=items, next_cursor=cursor)


def revoke(db: Database, principal: Principal, key_id: str) -> KeyOut:
    """Revoke a key; revoking one already revoked changes nothing (and audits nothing)."""
    principal.require("developer")
    with db.write() as s:
        row = s.execute(
            select(ApiKey, User.name)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_id == key_id, ApiKey.workspace_id == principal.workspace_id)
        ).one_or_none()
        if row is None or (
            row[0].user_id != principal.user_id and not at_least(principal.role, "admin")
        ):
            raise NotFound(f"key '{key_id}' not found")
        key, user_name = row
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            s.flush()
            details = {"name": key.name, "user": user_name}
            record(s, principal, "key.revoke", "api_key", key.key_id, details)
        return _out(key, user_name, principal.workspace_name)
