"""Members of a workspace and their roles.

Users are global (one name across the site); a membership gives one a role in one
workspace. Admins manage members below owner; only owners grant or take away the owner
role, and a workspace always keeps at least one owner. Removing a member revokes that
member's keys in the workspace, so adding the user back later does not revive old keys.
"""

from __future__ import annotations

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gureum.schemas.common import Page
from gureum.schemas.tenancy import MemberOut, UserCreate, UserRoleUpdate
from gureum.server.auth import Principal, at_least
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, Membership, User
from gureum.server.errors import Conflict, Forbidden, NotFound
from gureum.server.pagination import PageParams, paginate
from gureum.server.services.audit import record
from gureum.server.services.workspaces import lock


def _out(user: User, m: Membership) -> MemberOut:
    return MemberOut.model_validate(
        {
            "name": user.name,
            "email": user.email,
            "role": m.role,
            "is_site_admin": user.is_site_admin,
            "added_at": m.created_at,
        }
    )


def _require_owner_for(principal: Principal, *roles: str) -> None:
    if "owner" in roles and not at_least(principal.role, "owner"):
        raise Forbidden("only owners can grant or take away the owner role")


def _member(s: Session, principal: Principal, name: str) -> tuple[User, Membership]:
    row = s.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(User.name == name, Membership.workspace_id == principal.workspace_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"user '{name}' is not a member of workspace '{principal.workspace_name}'")
    user, membership = row
    return user, membership


def _keep_an_owner(s: Session, principal: Principal, m: Membership) -> None:
    """Refuse to demote or remove the last owner; callers hold the workspace lock."""
    owners = s.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.workspace_id == principal.workspace_id, Membership.role == "owner")
    )
    if m.role == "owner" and (owners or 0) <= 1:
        raise Conflict(
            f"that is the last owner of workspace '{principal.workspace_name}'; "
            "make someone else owner first"
        )


def add(db: Database, principal: Principal, body: UserCreate) -> MemberOut:
    principal.require("admin")
    _require_owner_for(principal, body.role)
    already = Conflict(
        f"user '{body.name}' is already a member of workspace '{principal.workspace_name}'"
    )
    try:
        with db.write() as s:
            user = s.scalar(select(User).where(User.name == body.name))
            created = user is None
            if user is None:
                user = User(name=body.name, email=body.email)
                s.add(user)
                s.flush()
            elif s.scalar(
                select(Membership.id).where(
                    Membership.user_id == user.id,
                    Membership.workspace_id == principal.workspace_id,
                )
            ):
                raise already
            m = Membership(user_id=user.id, workspace_id=principal.workspace_id, role=body.role)
            s.add(m)
            s.flush()
            record(s, principal, "user.add", "user", user.name, {"role": body.role, "new": created})
            return _out(user, m)
    except IntegrityError as exc:  # a concurrent add of the same user won the race
        raise already from exc


def list_members(db: Database, principal: Principal, params: PageParams) -> Page[MemberOut]:
    principal.require("viewer")
    stmt = select(Membership).where(Membership.workspace_id == principal.workspace_id)
    with db.read() as s:
        rows, cursor = paginate(s, stmt, Membership.id, params)
        users = {
            u.id: u for u in s.scalars(select(User).where(User.id.in_([m.user_id for m in rows])))
        }
    return Page(items=[_out(users[m.user_id], m) for m in rows], next_cursor=cursor)


def set_role(db: Database, principal: Principal, name: str, body: UserRoleUpdate) -> MemberOut:
    principal.require("admin")
    with db.write() as s:
        lock(s, principal.workspace_id)
        user, m = _member(s, principal, name)
        _require_owner_for(principal, m.role, body.role)
        if m.role == body.role:
            return _out(user, m)
        _keep_an_owner(s, principal, m)
        old = m.role
        m.role = body.role
        s.flush()
        record(s, principal, "user.set_role", "user", name, {"from": old, "to": body.role})
        return _out(user, m)


def remove(db: Database, principal: Principal, name: str) -> None:
    principal.require("admin")
    with db.write() as s:
        lock(s, principal.workspace_id)
        user, m = _member(s, principal, name)
        _require_owner_for(principal, m.role)
        _keep_an_owner(s, principal, m)
        live = (
            ApiKey.user_id == user.id,
            ApiKey.workspace_id == principal.workspace_id,
            ApiKey.revoked_at.is_(None),
        )
        revoked = list(s.scalars(select(ApiKey.key_id).where(*live)))
        s.execute(update(ApiKey).where(*live).values(revoked_at=utcnow()))
        s.delete(m)
        record(s, principal, "user.remove", "user", name, {"role": m.role, "revoked_keys": revoked})
