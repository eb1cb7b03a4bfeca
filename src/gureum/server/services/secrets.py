"""Workspace secrets: set by developers and up, listed (names only) by any member, handed to
the workspace's script jobs as environment variables of their sandbox.

Values are stored encrypted (Fernet) under a key kept in ``GUREUM_HOME/settings/secrets.key``
(0600), not in the database, so a database dump or backup alone does not reveal them. Values
never appear in API answers, audit details, job params, events or logs (the script recipe
redacts them from the job's output).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select

from gureum.schemas.secrets import SECRET_NAME_PATTERN, SecretOut
from gureum.server.auth import Principal
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import User
from gureum.server.db.tables_site import WorkspaceSecret
from gureum.server.errors import NotFound, Unprocessable
from gureum.server.services import audit

KEY_FILE = Path("settings") / "secrets.key"
# Names the sandbox sets itself or that change how programs start: a secret must not shadow them.
RESERVED = frozenset(
    {
        "PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "PWD", "SHELL",
        "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
        "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS", "RANK", "LOCAL_RANK",
        "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    }
)  # fmt: skip
RESERVED_PREFIXES = ("GUREUM_", "RAY_", "PYTHON", "LD_")


def _key(home: Path) -> Fernet:
    """This site's key, made on first use (0600 in a 0700 folder)."""
    path = home / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    return Fernet(path.read_bytes().strip())


def check_name(name: str) -> None:
    if not re.fullmatch(SECRET_NAME_PATTERN, name):
        raise Unprocessable(
            f"secret name {name!r}: use A-Z, 0-9 and _, starting with a letter (max 64)",
            details={"pattern": SECRET_NAME_PATTERN},
        )
    if name in RESERVED or name.startswith(RESERVED_PREFIXES):
        raise Unprocessable(f"secret name {name!r} is reserved for the platform")


def put(db: Database, home: Path, principal: Principal, name: str, value: str) -> SecretOut:
    principal.require("developer")
    check_name(name)
    token = _key(home).encrypt(value.encode()).decode()
    ws = principal.workspace_id
    with db.write() as s:
        row = s.get(WorkspaceSecret, (ws, name), with_for_update=True)
        action = "secret.create" if row is None else "secret.update"
        if row is None:
            row = WorkspaceSecret(
                workspace_id=ws, name=name, ciphertext=token, updated_by=principal.user_id
            )
            s.add(row)
        else:
            row.ciphertext, row.updated_by, row.updated_at = token, principal.user_id, utcnow()
        s.flush()
        audit.record(s, principal, action, "secret", name)
        return SecretOut(name=name, updated_at=row.updated_at, updated_by=principal.user_name)


def list_names(db: Database, principal: Principal) -> list[SecretOut]:
    principal.require("viewer")
    with db.read() as s:
        rows = s.execute(
            select(WorkspaceSecret, User.name)
            .outerjoin(User, User.id == WorkspaceSecret.updated_by)
            .where(WorkspaceSecret.workspace_id == principal.workspace_id)
            .order_by(WorkspaceSecret.name)
        ).all()
        return [SecretOut(name=r.name, updated_at=r.updated_at, updated_by=u) for r, u in rows]


def delete(db: Database, principal: Principal, name: str) -> None:
    principal.require("developer")
    if not re.fullmatch(SECRET_NAME_PATTERN, name):  # no such name can exist (nor reach SQL)
        raise NotFound(f"no secret {name!r} in this workspace")
    with db.write() as s:
        row = s.get(WorkspaceSecret, (principal.workspace_id, name), with_for_update=True)
        if row is None:
            raise NotFound(f"no secret {name!r} in this workspace")
        s.delete(row)
        audit.record(s, principal, "secret.delete", "secret", name)


def values(db_session: object, home: Path, workspace_id: int) -> dict[str, str]:
    """Every secret of the workspace in clear, for a job's sandbox (the job controller)."""
    from sqlalchemy.orm import Session

    assert isinstance(db_session, Session)
    rows = db_session.scalars(
        select(WorkspaceSecret).where(WorkspaceSecret.workspace_id == workspace_id)
    ).all()
    if not rows:
        return {}
    key = _key(home)
    out: dict[str, str] = {}
    for r in rows:
        try:
            out[r.name] = key.decrypt(r.ciphertext.encode()).decode()
        except InvalidToken:
            continue  # encrypted under another site's key: unusable, never sent
    return out
