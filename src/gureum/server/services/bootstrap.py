"""First start: a default workspace, an admin user and the admin's key."""

from __future__ import annotations

from sqlalchemy import func, select

from gureum.server.auth import new_key
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, Membership, User, Workspace
from gureum.server.services.audit import record

DEFAULT_WORKSPACE = "default"
ADMIN_USER = "admin"


def bootstrap(db: Database) -> str | None:
    """Create the first workspace, user and key when the database has no user yet.

    Returns the new key's token (shown once), or None when the database was already set up.
    """
    with db.write() as s:
        if s.scalar(select(func.count()).select_from(User)):
            return None
        ws = Workspace(name=DEFAULT_WORKSPACE)
        user = User(name=ADMIN_USER, is_site_admin=True)
        s.add_all([ws, user])
        s.flush()
        s.add(Membership(user_id=user.id, workspace_id=ws.id, role="owner"))
        key = new_key()
        s.add(
            ApiKey(
                key_id=key.key_id,
                secret_hash=key.secret_hash,
                name="bootstrap admin key",
                user_id=user.id,
                workspace_id=ws.id,
                role="owner",
            )
        )
        record(
            s,
            None,
            "system.bootstrap",
            "workspace",
            ws.name,
            {"user": user.name},
            workspace_id=ws.id,
        )
        return key.token
