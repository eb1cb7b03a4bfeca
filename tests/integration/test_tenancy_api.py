"""Workspaces, users, keys and the audit log through the REST API and the SDK."""

from __future__ import annotations

import base64
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from gureum import Client
from gureum.client.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    GureumError,
    NotFoundError,
    UnauthorizedError,
)
from gureum.schemas.tenancy import Role
from gureum.server.auth import hash_secret
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, AuditEvent, Dataset
from tests.conftest import Cloud


def member_key(cloud: Cloud, name: str, role: Role, admin: Client | None = None) -> str:
    """Add ``name`` with ``role`` to the admin's workspace and return a key of theirs."""
    admin = admin or cloud.client()
    admin.users.add(name, role=role)
    return admin.keys.create(f"{name}-key", user=name).token


def db_of(cloud: Cloud) -> Database:
    db: Database = cloud.app.state.db
    return db


def error_of(resp: object) -> dict[str, object]:
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    err: dict[str, object] = body["error"]
    assert {"code", "message"} <= set(err)
    return err


# --- workspaces ---------------------------------------------------------------------------


def test_site_admin_creates_workspace_and_becomes_owner(cloud: Cloud) -> None:
    admin = cloud.client()
    ws = admin.workspaces.create("team-a")
    assert ws.name == "team-a" and ws.role == "owner"
    assert {w.name for w in admin.workspaces.list()} == {"default", "team-a"}
    assert admin.workspaces.get("team-a").role == "owner"
    with pytest.raises(ConflictError):
        admin.workspaces.create("team-a")


def test_workspace_name_is_validated_with_error_shape(cloud: Cloud) -> None:
    r = cloud.http().post("/v1/workspaces", json={"name": "Bad Name!"})
    assert r.status_code == 422
    assert error_of(r)["code"] == "invalid_request"
    r = cloud.http().post("/v1/workspaces", json={"name": "ok", "colour": "red"})
    assert r.status_code == 422


def test_only_site_admins_create_workspaces(cloud: Cloud) -> None:
    owner_key = member_key(cloud, "olga", "owner")
    with pytest.raises(ForbiddenError, match="site admins"):
        cloud.client(owner_key).workspaces.create("mine")


def test_members_see_only_their_workspaces(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.workspaces.create("secret-ws")
    bob = cloud.client(member_key(cloud, "bob", "admin"))
    assert [w.name for w in bob.workspaces.list()] == ["default"]
    with pytest.raises(NotFoundError, match="workspace 'secret-ws' not found"):
        bob.workspaces.get("secret-ws")
    # Same answer as for a workspace that does not exist: the name does not leak.
    with pytest.raises(NotFoundError, match="workspace 'nope' not found"):
        bob.workspaces.get("nope")
    r = cloud.http(bob._t.api_key).delete("/v1/workspaces/secret-ws")
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_workspace_delete_rules(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.workspaces.create("gone")
    inner = admin.keys.create("inner", workspace="gone").token
    # A key cannot delete the workspace it acts in.
    with pytest.raises(ConflictError, match="acts in"):
        cloud.client(inner).workspaces.delete("gone")
    # A workspace that still holds data is refused.
    with db_of(cloud).write() as s:
        ws_id = s.scalar(select(ApiKey.workspace_id).where(ApiKey.key_id == inner.split("_")[1]))
        s.add(Dataset(workspace_id=ws_id, name="pics"))
    with pytest.raises(ConflictError, match="not empty") as exc:
        admin.workspaces.delete("gone")
    assert exc.value.details == {"datasets": 1}
    with db_of(cloud).write() as s:
        s.query(Dataset).filter(Dataset.workspace_id == ws_id).delete()
    admin.workspaces.delete("gone")
    with pytest.raises(NotFoundError):
        admin.workspaces.get("gone")
    # Its keys went with it.
    assert cloud.http(inner).get("/v1/whoami").status_code == 401


def test_workspace_delete_needs_owner_there(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.workspaces.create("other")
    other = cloud.client(admin.keys.create("k", workspace="other").token)
    other.users.add("dora", role="admin")
    # dora is admin (not owner) of "other"; with her admin key of "default": refused.
    dora = cloud.client(member_key(cloud, "dora", "admin"))
    with pytest.raises(ForbiddenError, match="only an owner"):
        dora.workspaces.delete("other")
    # Viewer keys mutate nothing, workspaces included.
    viewer = cloud.client(member_key(cloud, "vic", "viewer"))
    with pytest.raises(ForbiddenError):
        viewer.workspaces.delete("other")
    admin.workspaces.get("other")


# --- users --------------------------------------------------------------------------------


def test_add_list_set_role_remove_user(cloud: Cloud) -> None:
    admin = cloud.client()
    added = admin.users.add("ann", role="developer", email="ann@example.com")
    assert (added.name, added.role, added.email) == ("ann", "developer", "ann@example.com")
    assert {(u.name, u.role) for u in admin.users.list()} == {
        ("admin", "owner"),
        ("ann", "developer"),
    }
    assert admin.users.set_role("ann", "admin").role == "admin"
    admin.users.remove("ann")
    assert [u.name for u in admin.users.list()] == ["admin"]
    with pytest.raises(NotFoundError):
        admin.users.remove("ann")
    with pytest.raises(ConflictError, match="already a member"):
        admin.users.add("admin", role="viewer")


def test_user_management_roles(cloud: Cloud) -> None:
    dev = cloud.client(member_key(cloud, "dev", "developer"))
    with pytest.raises(ForbiddenError):
        dev.users.add("x", role="viewer")
    viewer = cloud.client(member_key(cloud, "viv", "viewer"))
    with pytest.raises(ForbiddenError):
        viewer.users.add("x", role="viewer")
    with pytest.raises(ForbiddenError):
        viewer.users.set_role("dev", "viewer")
    assert {u.name for u in viewer.users.list()} >= {"dev", "viv"}  # viewers may read
    adm = cloud.client(member_key(cloud, "adm", "admin"))
    with pytest.raises(ForbiddenError, match="only owners"):
        adm.users.add("wannabe", role="owner")
    with pytest.raises(ForbiddenError, match="only owners"):
        adm.users.set_role("dev", "owner")
    with pytest.raises(ForbiddenError, match="only owners"):
        adm.users.set_role("admin", "viewer")
    with pytest.raises(ForbiddenError, match="only owners"):
        adm.users.remove("admin")
    assert adm.users.set_role("dev", "viewer").role == "viewer"
    # The owner may grant owner.
    assert cloud.client().users.set_role("adm", "owner").role == "owner"


def test_last_owner_cannot_be_demoted_or_removed(cloud: Cloud) -> None:
    admin = cloud.client()
    with pytest.raises(ConflictError, match="last owner"):
        admin.users.set_role("admin", "admin")
    with pytest.raises(ConflictError, match="last owner"):
        admin.users.remove("admin")
    admin.users.add("second", role="owner")
    second = cloud.client(admin.keys.create("s", user="second").token)
    assert admin.users.set_role("admin", "admin").role == "admin"
    # Now only an admin: its keys are capped, and it makes no keys for the owner any more.
    assert admin.keys.create("after").role == "admin"
    with pytest.raises(ForbiddenError, match="above your role"):
        admin.keys.create("after", user="second")
    with pytest.raises(ConflictError, match="last owner"):
        second.users.remove("second")


def test_concurrent_demotions_keep_one_owner(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.users.add("o2", role="owner")
    tokens = {"admin": cloud.admin_key, "o2": admin.keys.create("o2", user="o2").token}
    results: dict[str, str] = {}

    def demote_self(name: str) -> None:
        try:
            cloud.client(tokens[name]).users.set_role(name, "admin")
            results[name] = "ok"
        except GureumError as exc:
            results[name] = exc.code

    threads = [threading.Thread(target=demote_self, args=(n,)) for n in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["conflict", "ok"]
    owners = [u.name for u in admin.users.list() if u.role == "owner"]
    assert len(owners) == 1


def test_role_change_and_removal_take_effect_at_once(cloud: Cloud) -> None:
    admin = cloud.client()
    key = member_key(cloud, "eve", "admin")
    eve = cloud.client(key)
    eve.users.list()  # cached as admin now
    eve.users.add("helper", role="viewer")
    admin.users.set_role("eve", "viewer")
    with pytest.raises(ForbiddenError):
        eve.users.add("helper2", role="viewer")
    admin.users.remove("eve")
    with pytest.raises(UnauthorizedError):
        eve.users.list()
    # Adding her back does not revive the old key: removal revoked it.
    admin.users.add("eve", role="admin")
    with pytest.raises(UnauthorizedError, match="revoked"):
        eve.users.list()


# --- keys ---------------------------------------------------------------------------------


def test_key_token_shown_once_and_stored_hashed(cloud: Cloud) -> None:
    admin = cloud.client()
    created = admin.keys.create("ci", role="developer", expires_in_days=30)
    assert created.token.startswith(f"gk_{created.key_id}_")
    assert created.role == "developer" and created.user == "admin"
    assert created.expires_at is not None
    assert timedelta(days=29) < created.expires_at - datetime.now(UTC) <= timedelta(days=30)
    secret = created.token.split("_", 2)[2]
    listed = cloud.http().get("/v1/keys").json()
    text = json.dumps(listed)
    assert created.key_id in text
    assert secret not in text and "token" not in text and "hash" not in text
    with db_of(cloud).read() as s:
        raw = s.execute(select(ApiKey.__table__).where(ApiKey.key_id == created.key_id)).one()
        stored = json.dumps(list(raw), default=str)
        assert hash_secret(secret) in stored  # only the hash is kept
    assert secret not in stored and created.token not in stored
    me = cloud.client(created.token).whoami()
    assert me["role"] == "developer" and me["key_id"] == created.key_id


def test_key_defaults_to_callers_role(cloud: Cloud) -> None:
    dev = cloud.client(member_key(cloud, "dan", "developer"))
    mine = dev.keys.create("mine")
    assert (mine.user, mine.role, mine.workspace) == ("dan", "developer", "default")


def test_key_role_never_exceeds_user_or_caller(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.users.add("val", role="viewer")
    with pytest.raises(ForbiddenError, match="exceed its user's role"):
        admin.keys.create("too-much", user="val", role="developer")
    assert admin.keys.create("ok", user="val").role == "viewer"
    dev = cloud.client(member_key(cloud, "dex", "developer"))
    with pytest.raises(ForbiddenError):
        dev.keys.create("mine", role="admin")
    # A narrow key cannot mint a wider one, even for a user who has the wider role.
    narrow = cloud.client(admin.keys.create("narrow", role="developer").token)
    with pytest.raises(ForbiddenError, match="above your own role"):
        narrow.keys.create("wide", role="owner")


def test_keys_for_other_users_need_admin(cloud: Cloud) -> None:
    cloud.client().users.add("target", role="viewer")
    dev = cloud.client(member_key(cloud, "dev", "developer"))
    with pytest.raises(ForbiddenError, match="another user"):
        dev.keys.create("for-target", user="target")
    with pytest.raises(NotFoundError, match="user 'ghost' not found"):
        cloud.client().keys.create("x", user="ghost")


def test_viewer_cannot_create_or_revoke_keys(cloud: Cloud) -> None:
    viewer = cloud.client(member_key(cloud, "vera", "viewer"))
    with pytest.raises(ForbiddenError):
        viewer.keys.create("mine")
    own = viewer.keys.list()
    assert [k.user for k in own] == ["vera"]
    with pytest.raises(ForbiddenError):
        viewer.keys.revoke(own[0].key_id)


def test_key_in_other_workspace(cloud: Cloud) -> None:
    admin = cloud.client()
    with pytest.raises(NotFoundError, match="workspace 'nowhere' not found"):
        admin.keys.create("x", workspace="nowhere")
    admin.workspaces.create("lab")
    lab_key = admin.keys.create("lab", workspace="lab")
    assert lab_key.workspace == "lab" and lab_key.role == "owner"
    assert cloud.client(lab_key.token).whoami()["workspace"] == "lab"
    # A default-workspace admin who is not a member of lab: 404, the name does not leak.
    adm = cloud.client(member_key(cloud, "adm", "admin"))
    with pytest.raises(NotFoundError, match="workspace 'lab' not found"):
        adm.keys.create("x", workspace="lab")
    # A developer key may not reach into another workspace at all.
    cloud.client(lab_key.token).users.add("dev", role="admin")
    dev_here = cloud.client(member_key(cloud, "dev", "developer"))
    with pytest.raises(ForbiddenError, match="admin key"):
        dev_here.keys.create("x", workspace="lab")


def test_revoke_takes_effect_immediately(cloud: Cloud) -> None:
    admin = cloud.client()
    created = admin.keys.create("short-lived")
    user = cloud.client(created.token)
    assert user.whoami()["key_id"] == created.key_id  # now cached
    revoked = admin.keys.revoke(created.key_id)
    assert revoked.revoked_at is not None
    with pytest.raises(UnauthorizedError, match="revoked"):
        user.whoami()
    # Revoking again changes nothing.
    assert admin.keys.revoke(created.key_id).revoked_at == revoked.revoked_at


def test_own_key_revocable_others_not_visible(cloud: Cloud) -> None:
    admin = cloud.client()
    other = admin.keys.create("admins-own")
    dev = cloud.client(member_key(cloud, "dev", "developer"))
    with pytest.raises(NotFoundError):
        dev.keys.revoke(other.key_id)
    assert all(k.user == "dev" for k in dev.keys.list())
    assert len(admin.keys.list()) >= 3
    mine = dev.keys.create("second")
    assert dev.keys.revoke(mine.key_id).revoked_at is not None


def test_expired_key_is_401(cloud: Cloud) -> None:
    admin = cloud.client()
    soon = datetime.now(UTC) + timedelta(hours=1)
    created = admin.keys.create("exp", expires_at=soon)
    assert created.expires_at == soon
    user = cloud.client(created.token)
    user.whoami()  # cached, with its expiry
    with db_of(cloud).write() as s:
        s.execute(
            update(ApiKey)
            .where(ApiKey.key_id == created.key_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    cloud.app.state.auth.invalidate()
    with pytest.raises(UnauthorizedError, match="expired"):
        user.whoami()


def test_bad_expiry_is_rejected(cloud: Cloud) -> None:
    admin = cloud.client()
    with pytest.raises(BadRequestError, match="past"):
        admin.keys.create("old", expires_at=datetime.now(UTC) - timedelta(days=1))
    r = cloud.http().post(
        "/v1/keys",
        json={"name": "both", "expires_in_days": 1, "expires_at": "2999-01-01T00:00:00Z"},
    )
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_request"


def test_wrong_revoked_and_malformed_keys_are_401(cloud: Cloud) -> None:
    good = cloud.admin_key
    key_id = good.split("_")[1]
    for bad in ["gk_nope_nope", f"gk_{key_id}_wrongsecret", "", "Basic abc"]:
        r = cloud.http(bad or "x").get("/v1/users")
        assert r.status_code == 401, bad
        assert error_of(r)["code"] == "unauthorized"
    r = cloud.http(key=False).get("/v1/keys")  # type: ignore[arg-type]
    assert r.status_code == 401


# --- other workspaces ---------------------------------------------------------------------


def test_other_workspaces_objects_are_404(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.workspaces.create("far")
    far = cloud.client(admin.keys.create("far", workspace="far").token)
    far.users.add("faruser", role="developer")
    far_key = far.keys.create("fk", user="faruser")
    # From "default": far's user and key are not there.
    with pytest.raises(NotFoundError):
        admin.users.set_role("faruser", "viewer")
    with pytest.raises(NotFoundError):
        admin.users.remove("faruser")
    with pytest.raises(NotFoundError):
        admin.keys.revoke(far_key.key_id)
    assert "faruser" not in {u.name for u in admin.users.list()}
    assert far_key.key_id not in {k.key_id for k in admin.keys.list()}
    assert all(e.target != "faruser" for e in admin.audit.list())


# --- audit --------------------------------------------------------------------------------


def test_every_mutation_is_audited_without_secrets(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.users.add("aud", role="developer")
    admin.users.set_role("aud", "admin")
    key = admin.keys.create("aud-key", user="aud")
    admin.keys.revoke(key.key_id)
    admin.users.remove("aud")
    admin.workspaces.create("tmp-ws")
    tmp_key = admin.keys.create("tmp", workspace="tmp-ws")
    cloud.client(tmp_key.token).users.add("someone", role="viewer")
    admin.workspaces.create("tmp2")
    admin.workspaces.delete("tmp2")

    events = admin.audit.list()
    actions = [e.action for e in events]
    for action in [
        "user.add",
        "user.set_role",
        "key.create",
        "key.revoke",
        "user.remove",
        "workspace.create",
        "workspace.delete",
        "system.bootstrap",
    ]:
        assert action in actions, action
    by_action = {e.action: e for e in reversed(events)}
    assert by_action["user.set_role"].details == {"from": "developer", "to": "admin"}
    assert by_action["key.revoke"].target == key.key_id
    assert all(
        e.user == "admin" and e.key_id == cloud.admin_key.split("_")[1]
        for e in events
        if e.action != "system.bootstrap"
    )
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    # The new workspace's own log starts with its creation and the key made for it.
    tmp_events = cloud.client(tmp_key.token).audit.list()
    assert [e.action for e in tmp_events] == ["user.add", "key.create", "workspace.create"]

    # No token, secret or hash in any audit row, as stored.
    with db_of(cloud).read() as s:
        rows = s.scalars(select(AuditEvent)).all()
        dumped = json.dumps(
            [[r.action, r.target, r.details, r.actor_key_id] for r in rows], default=str
        )
        hashes = list(s.scalars(select(ApiKey.secret_hash)))
    for token in [cloud.admin_key, key.token, tmp_key.token]:
        assert token not in dumped
        assert token.split("_", 2)[2] not in dumped
    assert all(h not in dumped for h in hashes)


def test_audit_filter_paging_and_role(cloud: Cloud) -> None:
    admin = cloud.client()
    for i in range(5):
        admin.users.add(f"u{i}", role="viewer")
    assert [e.action for e in admin.audit.list(action="user.add")] == ["user.add"] * 5
    assert len(admin.audit.list(limit=3)) == 3
    page = cloud.http().get("/v1/audit", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    nxt = cloud.http().get("/v1/audit", params={"limit": 2, "cursor": page["next_cursor"]})
    assert nxt.json()["items"][0]["id"] < page["items"][-1]["id"]
    dev = cloud.client(member_key(cloud, "d", "developer"))
    with pytest.raises(ForbiddenError):
        dev.audit.list()


def test_lists_paginate(cloud: Cloud) -> None:
    admin = cloud.client()
    for i in range(3):
        admin.users.add(f"p{i}", role="viewer")
    page = cloud.http().get("/v1/users", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert len(admin.users.list()) == 4
    # Not a cursor's alphabet (the schema's pattern): 422; a cursor's shape but not one we
    # made (a name where an id goes, JSON of the wrong type, not JSON): 400, never a 500.
    r = cloud.http().get("/v1/keys", params={"cursor": "%%%"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_request"
    for forged in ('"abc"', "[1]", "true", "{}", "nope"):
        cursor = base64.urlsafe_b64encode(forged.encode()).decode()
        r = cloud.http().get("/v1/keys", params={"cursor": cursor})
        assert r.status_code == 400 and error_of(r)["code"] == "bad_request", forged


def test_viewer_cannot_mutate_anything(cloud: Cloud) -> None:
    admin = cloud.client()
    target = admin.keys.create("target")
    viewer = cloud.http(member_key(cloud, "only-looks", "viewer"))
    attempts = [
        ("POST", "/v1/workspaces", {"name": "v-ws"}),
        ("DELETE", "/v1/workspaces/default", None),
        ("POST", "/v1/users", {"name": "v-user", "role": "viewer"}),
        ("PATCH", "/v1/users/admin", {"role": "viewer"}),
        ("DELETE", "/v1/users/admin", None),
        ("POST", "/v1/keys", {"name": "v-key"}),
        ("DELETE", f"/v1/keys/{target.key_id}", None),
    ]
    for method, path, body in attempts:
        r = viewer.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert error_of(r)["code"] == "forbidden"
    assert viewer.get("/v1/users").status_code == 200
    assert [e.action for e in admin.audit.list(limit=1)] == ["key.create"]


def test_openapi_documents_tenancy(cloud: Cloud) -> None:
    spec = cloud.http(key=False).get("/v1/openapi.json").json()  # type: ignore[arg-type]
    for path in ["/v1/workspaces", "/v1/users/{name}", "/v1/keys/{key_id}", "/v1/audit"]:
        assert path in spec["paths"], path
    created = spec["components"]["schemas"]["KeyCreated"]["properties"]
    assert "token" in created
    assert "token" not in spec["components"]["schemas"]["KeyOut"]["properties"]
