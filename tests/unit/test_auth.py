"""API keys and the Authenticator: format, hashing, effective role, caching, expiry."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from gureum.server import auth as auth_module
from gureum.server.auth import (
    Authenticator,
    at_least,
    hash_secret,
    new_key,
    role_rank,
    split_token,
)
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, Membership, User
from gureum.server.errors import Forbidden, Unauthorized
from gureum.server.services.audit import scrub
from tests.conftest import Cloud


def test_new_key_shape_and_hash() -> None:
    key = new_key()
    prefix, key_id, secret = key.token.split("_", 2)
    assert prefix == "gk" and key_id == key.key_id and len(secret) >= 40
    assert key.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in key.secret_hash
    assert new_key().token != key.token


def test_split_token() -> None:
    assert split_token("gk_abc_def_ghi") == ("abc", "def_ghi")  # secrets may hold '_'
    for bad in ["", "gk", "gk_abc", "gk__x", "gk_abc_", "xx_abc_def"]:
        assert split_token(bad) is None, bad


def test_role_order() -> None:
    assert [role_rank(r) for r in ("viewer", "developer", "admin", "owner")] == [0, 1, 2, 3]
    assert at_least("owner", "admin") and not at_least("developer", "admin")


def test_scrub_drops_secrets_at_any_depth() -> None:
    dirty = {
        "name": "ci",
        "token": "x",
        "secret_hash": "y",
        "nested": {"api_key": "z", "keep": 1, "db_password": "p"},
        "max_tokens": 5,
    }
    assert scrub(dirty) == {"name": "ci", "nested": {"keep": 1}, "max_tokens": 5}


def _auth(cloud: Cloud) -> tuple[Authenticator, Database]:
    return cloud.app.state.auth, cloud.app.state.db


def test_header_forms(cloud: Cloud) -> None:
    auth, _ = _auth(cloud)
    assert auth.authenticate(f"Bearer {cloud.admin_key}").user_name == "admin"
    assert auth.authenticate(f"bearer  {cloud.admin_key} ").role == "owner"
    for header in [None, "", "Bearer", "Bearer ", f"Token {cloud.admin_key}", "gk_a_b"]:
        with pytest.raises(Unauthorized):
            auth.authenticate(header)


def test_effective_role_is_the_lower_of_key_and_membership(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.users.add("kim", role="admin")
    token = admin.keys.create("k", user="kim", role="admin").token
    auth, db = _auth(cloud)
    p = auth.authenticate(f"Bearer {token}")
    assert p.role == "admin" and p.workspace_name == "default" and not p.is_site_admin
    with db.write() as s:
        kim = s.scalar(select(User.id).where(User.name == "kim"))
        s.execute(update(Membership).where(Membership.user_id == kim).values(role="viewer"))
    # Cached for a few seconds; invalidate() (what role changes call) applies it at once.
    auth.invalidate()
    p = auth.authenticate(f"Bearer {token}")
    assert p.role == "viewer"
    with pytest.raises(Forbidden):
        p.require("developer")


def test_cached_key_still_expires_on_time(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    token = cloud.client().keys.create("brief", expires_in_days=1).token
    auth, _ = _auth(cloud)
    assert auth.authenticate(f"Bearer {token}").key_id == token.split("_")[1]  # now cached
    later = utcnow() + timedelta(days=1, seconds=1)
    monkeypatch.setattr(auth_module, "utcnow", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        auth.authenticate(f"Bearer {token}")


def test_wrong_secret_for_a_real_key_id(cloud: Cloud) -> None:
    auth, _ = _auth(cloud)
    key_id = cloud.admin_key.split("_")[1]
    with pytest.raises(Unauthorized, match="invalid"):
        auth.authenticate(f"Bearer gk_{key_id}_{'x' * 43}")


def test_last_used_is_recorded(cloud: Cloud) -> None:
    auth, db = _auth(cloud)
    auth.authenticate(f"Bearer {cloud.admin_key}")
    with db.read() as s:
        used = s.scalar(
            select(ApiKey.last_used_at).where(ApiKey.key_id == cloud.admin_key.split("_")[1])
        )
    assert used is not None and utcnow() - used < timedelta(minutes=1)


def test_key_stored_as_hash_only(cloud: Cloud) -> None:
    created = cloud.client().keys.create("h")
    secret = created.token.split("_", 2)[2]
    _, db = _auth(cloud)
    with db.read() as s:
        row = s.execute(select(ApiKey.__table__).where(ApiKey.key_id == created.key_id)).one()
    values = [str(v) for v in row]
    assert hash_secret(secret) in values
    assert all(secret not in v and created.token not in v for v in values)
