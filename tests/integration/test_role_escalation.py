"""No path lets a role grant more than it holds: keys for every (caller, target) role pair.

A key acts as its user (the user's site-admin flag included), so minting a key *for* a user
is as strong as being that user. Each caller below tries to mint a key for a user of every
role, themselves included; only the allowed pairs get a key, and a refused one leaves none.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from gureum import Client
from gureum.client.errors import ForbiddenError
from gureum.server.db.session import Database
from gureum.server.db.tables import ApiKey, User
from tests.conftest import Cloud

SITE_ADMIN = "admin"  # made by bootstrap: owner of "default" and site admin
# Two members per workspace role: one acts, the other is a target of the same rank.
MEMBERS = {
    "owner": ("oscar", "olive"),
    "admin": ("adam", "ada"),
    "developer": ("dora", "dina"),
    "viewer": ("vic", "vera"),
}
RANK = {"viewer": 0, "developer": 1, "admin": 2, "owner": 3, "site-admin": 4}
TARGETS = {"site-admin": SITE_ADMIN} | {role: pair[1] for role, pair in MEMBERS.items()}


def _allowed(caller: str, target: str, self_: bool) -> bool:
    if caller == "viewer":
        return False  # viewers read; they make no keys at all
    if self_:
        return True
    if target == "site-admin":
        return False  # only the site admin makes keys of their own
    return RANK[caller] >= RANK["admin"] and RANK[target] <= RANK[caller]


def _key_count(db: Database, user: str) -> int:
    with db.read() as s:
        n = s.scalar(select(func.count()).select_from(ApiKey).join(User).where(User.name == user))
    return int(n or 0)


@pytest.fixture
def team(cloud: Cloud) -> dict[str, Client]:
    """A client per caller role in workspace 'default', the site admin's included."""
    admin = cloud.client()
    callers = {"site-admin": admin}
    for role, (caller, target) in MEMBERS.items():
        admin.users.add(caller, role=role)
        admin.users.add(target, role=role)
        callers[role] = cloud.client(admin.keys.create(f"{caller}-key", user=caller).token)
    return callers


@pytest.mark.parametrize("caller_role", list(RANK)[::-1])
def test_key_creation_for_every_role_pair(
    cloud: Cloud, team: dict[str, Client], caller_role: str
) -> None:
    db: Database = cloud.app.state.db
    me = SITE_ADMIN if caller_role == "site-admin" else MEMBERS[caller_role][0]
    cases = [(t, user, user == me) for t, user in TARGETS.items()]
    if me not in TARGETS.values():
        cases.append((caller_role, me, True))
    for target_role, user, self_ in cases:
        before = _key_count(db, user)
        attempt = f"{caller_role} -> {target_role}{' (self)' if self_ else ''}"
        if _allowed(caller_role, target_role, self_):
            key = team[caller_role].keys.create("granted", user=user)
            assert key.user == user, attempt
            assert RANK[key.role] <= min(RANK[caller_role], RANK[target_role]), attempt
            whoami = cloud.client(key.token).whoami()
            assert whoami["is_site_admin"] is (user == SITE_ADMIN), attempt
            assert _key_count(db, user) == before + 1, attempt
        else:
            with pytest.raises(ForbiddenError):
                team[caller_role].keys.create("escalate", user=user)
            assert _key_count(db, user) == before, attempt


def test_workspace_admin_cannot_become_site_admin(cloud: Cloud, team: dict[str, Client]) -> None:
    """The finding as reported: an admin minted a key of the site admin and created workspaces."""
    for role in ("owner", "admin"):
        with pytest.raises(ForbiddenError, match="site admin"):
            team[role].keys.create("root", user=SITE_ADMIN, role="developer")
        with pytest.raises(ForbiddenError):
            team[role].workspaces.create(f"taken-by-{role}")
    # Nor by a narrow key of the site admin's own: its role caps what it may mint.
    narrow = cloud.client(cloud.client().keys.create("narrow", role="developer").token)
    with pytest.raises(ForbiddenError):
        narrow.keys.create("wider", role="owner")


def test_site_admin_is_granted_by_no_api(cloud: Cloud) -> None:
    """Site admin comes from bootstrap only: no request body can set the flag."""
    http = cloud.http()
    resp = http.post("/v1/users", json={"name": "mallory", "is_site_admin": True})
    assert resp.status_code == 422
    assert http.post("/v1/users", json={"name": "mallory"}).status_code == 201
    resp = http.patch("/v1/users/mallory", json={"role": "owner", "is_site_admin": True})
    assert resp.status_code == 422
    key = cloud.client().keys.create("m", user="mallory")
    assert cloud.client(key.token).whoami()["is_site_admin"] is False
