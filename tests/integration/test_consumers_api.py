"""Plans, consumers and consumer keys through the REST API and the SDK, and the access
snapshot replicas poll. SQLite always, PostgreSQL when GUREUM_TEST_DATABASE_URL is set."""

from __future__ import annotations

import secrets
from datetime import timedelta

import pytest
from sqlalchemy import select

from gureum.client.errors import ConflictError, ForbiddenError, NotFoundError, UnauthorizedError
from gureum.schemas.consumers import split_consumer_key
from gureum.schemas.metering import AccessKey, UsageBatch, UsageIn
from gureum.server.auth import hash_secret
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables import AuditEvent, Model, ModelVersion, Workspace
from gureum.server.db.tables_serving import ConsumerKey, Endpoint, Plan
from gureum.server.services import consumers as svc
from gureum.server.services import usage
from tests.conftest import Cloud

# -- helpers shared with the usage, cost and CLI tests ------------------------------------------


def db_of(cloud: Cloud) -> Database:
    db: Database = cloud.app.state.db
    return db


def workspace_id(cloud: Cloud, name: str = "default") -> int:
    with db_of(cloud).read() as s:
        ws = s.scalar(select(Workspace.id).where(Workspace.name == name))
    assert ws is not None
    return int(ws)


def make_endpoint(cloud: Cloud, name: str, workspace: str = "default") -> Endpoint:
    """An endpoint row as the endpoint service would leave it (no Ray Serve involved)."""
    ws = workspace_id(cloud, workspace)
    with db_of(cloud).write() as s:
        model = Model(workspace_id=ws, name=f"{name}-model")
        s.add(model)
        s.flush()
        version = ModelVersion(
            model_id=model.id, version=1, format="torch", file_count=0, total_bytes=0
        )
        s.add(version)
        s.flush()
        endpoint = Endpoint(
            name=name,
            workspace_id=ws,
            model_id=model.id,
            version_id=version.id,
            token_hash=hash_secret(secrets.token_hex(8)),
        )
        s.add(endpoint)
        s.flush()
        s.expunge(endpoint)
    return endpoint


def record(
    endpoint: Endpoint,
    consumer_id: int | None,
    consumer: str,
    *,
    status: int = 200,
    units: float = 1.0,
    unit: str = "image",
    latency_ms: float = 10.0,
    ago: timedelta = timedelta(0),
    record_id: str | None = None,
) -> UsageIn:
    return UsageIn(
        id=record_id or secrets.token_hex(10),
        time=utcnow() - ago,
        consumer_id=consumer_id,
        consumer_name=consumer,
        model_version_id=endpoint.version_id,
        model_label=f"{endpoint.name}-model:1",
        route="predict",
        status=status,
        units=units,
        unit=unit,
        latency_ms=latency_ms,
    )


def consumer_id(cloud: Cloud, token: str) -> int:
    parsed = split_consumer_key(token)
    assert parsed is not None
    with db_of(cloud).read() as s:
        key = s.scalar(select(ConsumerKey).where(ConsumerKey.key_id == parsed[0]))
    assert key is not None
    return key.consumer_id


def ingest(cloud: Cloud, endpoint: Endpoint, *records: UsageIn) -> tuple[int, int]:
    with db_of(cloud).write() as s:
        out = usage.ingest(s, endpoint, UsageBatch(records=list(records)))
    return out.accepted, out.duplicates


def snapshot(cloud: Cloud, endpoint: Endpoint) -> dict[str, AccessKey]:
    with db_of(cloud).read() as s:
        return {k.key_id: k for k in svc.access_snapshot(s, endpoint)}


def member_key(cloud: Cloud, name: str, role: str) -> str:
    admin = cloud.client()
    admin.users.add(name, role=role)  # type: ignore[arg-type]
    return admin.keys.create(f"{name}-key", user=name).token


# -- plans ---------------------------------------------------------------------------------------


def test_plans_are_created_by_admins_and_read_by_viewers(cloud: Cloud) -> None:
    admin = cloud.client()
    plan = admin.plans.create(
        "gold", price_per_request=0.01, price_per_unit=0.002, rate_limit=5, monthly_quota=1000
    )
    assert (plan.name, plan.rate_limit, plan.monthly_quota) == ("gold", 5.0, 1000)
    assert plan.endpoints == [] and plan.currency == "USD"
    viewer = cloud.client(member_key(cloud, "vic", "viewer"))
    assert [p.name for p in viewer.plans.list()] == ["gold"]
    assert viewer.plans.get("gold").price_per_unit == 0.002
    with pytest.raises(ForbiddenError):
        viewer.plans.create("cheap")
    developer = cloud.client(member_key(cloud, "dev", "developer"))
    with pytest.raises(ForbiddenError):
        developer.plans.create("cheap")
    with pytest.raises(ConflictError, match="already exists"):
        admin.plans.create("gold")
    with pytest.raises(NotFoundError, match="plan 'silver' not found"):
        admin.plans.get("silver")


def test_plan_fields_are_validated_in_the_error_shape(cloud: Cloud) -> None:
    http = cloud.http()
    for body in (
        {"name": "p", "price_per_request": -1},
        {"name": "p", "rate_limit": 0},
        {"name": "p", "currency": "dollars"},
        {"name": "p", "endpoints": ["Not An Endpoint"]},
        {"name": "Bad Name"},
        {"name": "p", "colour": "red"},
    ):
        r = http.post("/v1/plans", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid_request"


# -- consumers -----------------------------------------------------------------------------------


def test_create_consumer_with_inline_plan_shows_the_key_once_and_stores_a_hash(
    cloud: Cloud,
) -> None:
    admin = cloud.client()
    created = admin.consumers.create(
        "acme", rate_limit=10, monthly_quota=500, price_per_request=0.05, endpoints=["gen"]
    )
    assert created.token.startswith(f"gck_{created.key_id}_")
    assert created.plan.name == "acme" and created.plan.rate_limit == 10
    assert created.plan.endpoints == ["gen"] and created.active_keys == 1
    secret = created.token.split("_", 2)[2]
    with db_of(cloud).read() as s:
        key = s.scalar(select(ConsumerKey).where(ConsumerKey.key_id == created.key_id))
        assert key is not None and key.secret_hash == hash_secret(secret)
        assert s.scalar(select(Plan.name).where(Plan.name == "acme")) == "acme"
        audit = s.scalars(select(AuditEvent).where(AuditEvent.action == "consumer.create")).all()
    assert [a.target for a in audit] == ["acme"]
    assert secret not in str(audit[0].details)
    # Reads never show the token or its hash again.
    for body in (
        cloud.http().get("/v1/consumers/acme").text,
        cloud.http().get("/v1/consumers").text,
        cloud.http().get("/v1/consumers/acme/keys").text,
    ):
        assert secret not in body and key.secret_hash not in body and "token" not in body
    assert admin.consumers.get("acme").active_keys == 1


def test_consumer_on_an_existing_plan_and_bad_inputs(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.plans.create("basic", price_per_request=0.01)
    shop = admin.consumers.create("shop", plan="basic", email="ops@shop.example")
    assert shop.plan.name == "basic" and shop.email == "ops@shop.example"
    with pytest.raises(NotFoundError, match="plan 'nope' not found"):
        admin.consumers.create("other", plan="nope")
    with pytest.raises(ConflictError, match="consumer 'shop' already exists"):
        admin.consumers.create("shop", plan="basic")
    # An inline plan named like an existing plan is refused, not silently shared.
    with pytest.raises(ConflictError, match="a plan named 'basic' already exists"):
        admin.consumers.create("basic", rate_limit=1)
    http = cloud.http()
    both = http.post("/v1/consumers", json={"name": "x", "plan": "basic", "rate_limit": 3})
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]
    null = http.post("/v1/consumers", json={"name": "x", "price_per_request": None})
    assert null.status_code == 422 and "cannot be null" in null.json()["error"]["message"]
    assert http.post("/v1/consumers", json={"name": "x", "rate_limit": -2}).status_code == 422
    assert [c.name for c in admin.consumers.list()] == ["shop"]  # nothing half-made


def test_only_admins_write_consumers_and_viewers_read(cloud: Cloud) -> None:
    cloud.client().consumers.create("acme")
    viewer = cloud.client(member_key(cloud, "vic", "viewer"))
    developer = cloud.client(member_key(cloud, "dev", "developer"))
    assert [c.name for c in viewer.consumers.list()] == ["acme"]
    assert [k.consumer for k in viewer.consumers.list_keys("acme")] == ["acme"]
    for client in (viewer, developer):
        with pytest.raises(ForbiddenError):
            client.consumers.create("mine")
        with pytest.raises(ForbiddenError):
            client.consumers.create_key("acme")
        with pytest.raises(ForbiddenError):
            client.consumers.update("acme", disabled=True)
        with pytest.raises(ForbiddenError):
            client.consumers.delete("acme")


def test_consumers_of_another_workspace_are_invisible(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.consumers.create("acme")
    admin.workspaces.create("other")
    other = cloud.client(admin.keys.create("o", workspace="other").token)
    assert other.consumers.list() == []
    with pytest.raises(NotFoundError):
        other.consumers.get("acme")
    other.consumers.create("acme")  # names are per workspace
    assert len(other.consumers.list()) == 1


def test_list_is_paginated(cloud: Cloud) -> None:
    admin = cloud.client()
    for i in range(3):
        admin.consumers.create(f"c{i}")
    first = cloud.http().get("/v1/consumers", params={"limit": 2}).json()
    assert [c["name"] for c in first["items"]] == ["c0", "c1"] and first["next_cursor"]
    rest = cloud.http().get("/v1/consumers", params={"cursor": first["next_cursor"]}).json()
    assert [c["name"] for c in rest["items"]] == ["c2"] and rest["next_cursor"] is None
    assert [c.name for c in admin.consumers.list()] == ["c0", "c1", "c2"]


def test_patch_changes_limits_plan_and_disabled(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.plans.create("gold", price_per_request=1.0)
    admin.consumers.create("acme", rate_limit=5, monthly_quota=100)
    # Limits of its own plan change in place; null means unlimited.
    changed = admin.consumers.update("acme", rate_limit=None, price_per_unit=0.5)
    assert changed.plan.name == "acme" and changed.plan.rate_limit is None
    assert (changed.plan.monthly_quota, changed.plan.price_per_unit) == (100, 0.5)
    # Switching to a shared plan, then changing limits again, gives it a plan of its own back
    # without touching the shared one.
    assert admin.consumers.update("acme", plan="gold").plan.name == "gold"
    admin.consumers.create("beta", plan="gold")
    own = admin.consumers.update("acme", rate_limit=2)
    assert (own.plan.name, own.plan.rate_limit, own.plan.price_per_request) == ("acme", 2.0, 1.0)
    assert admin.plans.get("gold").rate_limit is None
    # beta is on "gold"; a plan named "beta" does not exist: a private copy is made.
    assert admin.consumers.update("beta", monthly_quota=7).plan.name == "beta"
    assert admin.consumers.update("acme", disabled=True).disabled is True
    assert admin.consumers.update("acme", disabled=False, email="a@x.org").email == "a@x.org"
    with pytest.raises(NotFoundError):
        admin.consumers.update("acme", plan="nope")
    with pytest.raises(NotFoundError):
        admin.consumers.update("ghost", disabled=True)
    r = cloud.http().patch("/v1/consumers/acme", json={"plan": "gold", "rate_limit": 1})
    assert r.status_code == 422


def test_patch_never_changes_a_plan_other_consumers_are_on(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.consumers.create("acme", rate_limit=5)
    admin.consumers.create("beta", plan="acme")
    with pytest.raises(ConflictError, match="shared"):
        admin.consumers.update("acme", rate_limit=1)
    # beta gets a copy of its own instead; acme's plan stays as it was.
    copy = admin.consumers.update("beta", rate_limit=1)
    assert (copy.plan.name, copy.plan.rate_limit) == ("beta", 1.0)
    assert admin.plans.get("acme").rate_limit == 5
    # Now acme is alone on its plan: it changes in place.
    assert admin.consumers.update("acme", rate_limit=2).plan.rate_limit == 2


def test_keys_are_added_listed_and_revoked(cloud: Cloud) -> None:
    admin = cloud.client()
    first = admin.consumers.create("acme")
    second = admin.consumers.create_key("acme")
    assert second.token.startswith(f"gck_{second.key_id}_") and second.consumer == "acme"
    assert [k.key_id for k in admin.consumers.list_keys("acme")] == [first.key_id, second.key_id]
    revoked = admin.consumers.revoke_key("acme", first.key_id)
    assert revoked.revoked_at is not None
    again = admin.consumers.revoke_key("acme", first.key_id)  # idempotent
    assert again.revoked_at == revoked.revoked_at
    assert admin.consumers.get("acme").active_keys == 1
    with pytest.raises(NotFoundError, match="has no key"):
        admin.consumers.revoke_key("acme", "000000000000")
    with pytest.raises(NotFoundError):
        admin.consumers.list_keys("ghost")
    with db_of(cloud).read() as s:
        actions = s.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("consumer_key.%"))
        ).all()
    assert sorted(actions) == ["consumer_key.create", "consumer_key.revoke"]


def test_delete_disables_and_revokes_but_keeps_the_consumer(cloud: Cloud) -> None:
    admin = cloud.client()
    admin.consumers.create("acme")
    admin.consumers.create_key("acme")
    gone = admin.consumers.delete("acme")
    assert gone.disabled is True and gone.active_keys == 0
    assert all(k.revoked_at for k in admin.consumers.list_keys("acme"))
    with pytest.raises(ConflictError, match="disabled"):
        admin.consumers.create_key("acme")
    with pytest.raises(ConflictError):
        admin.consumers.create("acme")
    with pytest.raises(NotFoundError):
        admin.consumers.delete("ghost")


def test_a_consumer_key_never_authenticates_to_the_control_plane(cloud: Cloud) -> None:
    token = cloud.client().consumers.create("acme").token
    for path in ("/v1/whoami", "/v1/consumers", "/v1/usage"):
        r = cloud.http(token).get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized"
    # Even dressed up with the workspace key prefix, its key id is not an API key's.
    disguised = "gk_" + token.split("_", 1)[1]
    assert cloud.http(disguised).get("/v1/whoami").status_code == 401
    with pytest.raises(UnauthorizedError):
        cloud.client(token).consumers.list()


# -- the access snapshot -------------------------------------------------------------------------


def test_snapshot_lists_live_keys_with_limits_and_this_months_use(cloud: Cloud) -> None:
    admin = cloud.client()
    gen = make_endpoint(cloud, "gen")
    acme = admin.consumers.create("acme", rate_limit=3, monthly_quota=100)
    spare = admin.consumers.create_key("acme")
    beta = admin.consumers.create("beta")
    acme_id = consumer_id(cloud, acme.token)
    ingest(
        cloud,
        gen,
        record(gen, acme_id, "acme"),
        record(gen, acme_id, "acme"),
        record(gen, acme_id, "acme", status=500),  # errors do not use the quota
        record(gen, acme_id, "acme", ago=timedelta(days=40)),  # last month (or earlier)
        record(gen, None, "admin"),
    )
    keys = snapshot(cloud, gen)
    assert set(keys) == {acme.key_id, spare.key_id, beta.key_id}
    got = keys[acme.key_id]
    assert (got.kind, got.consumer_id, got.consumer_name) == ("consumer", acme_id, "acme")
    assert (got.rate_limit, got.monthly_quota, got.used_this_month) == (3.0, 100, 2)
    assert got.secret_hash == hash_secret(acme.token.split("_", 2)[2])
    assert keys[beta.key_id].used_this_month == 0 and keys[beta.key_id].rate_limit is None


def test_snapshot_leaves_out_revoked_disabled_and_other_workspaces(cloud: Cloud) -> None:
    admin = cloud.client()
    gen = make_endpoint(cloud, "gen")
    acme = admin.consumers.create("acme")
    spare = admin.consumers.create_key("acme")
    admin.consumers.revoke_key("acme", acme.key_id)
    paused = admin.consumers.create("paused")
    admin.consumers.update("paused", disabled=True)
    gone = admin.consumers.create("gone")
    admin.consumers.delete("gone")
    admin.workspaces.create("other")
    other = cloud.client(admin.keys.create("o", workspace="other").token)
    foreign = other.consumers.create("foreign")
    keys = snapshot(cloud, gen)
    assert set(keys) == {spare.key_id}
    assert not {acme.key_id, paused.key_id, gone.key_id, foreign.key_id} & set(keys)
    admin.consumers.update("paused", disabled=False)  # re-enabled: its key works again
    assert paused.key_id in snapshot(cloud, gen)


def test_snapshot_honours_the_plans_endpoints(cloud: Cloud) -> None:
    admin = cloud.client()
    gen, chat = make_endpoint(cloud, "gen"), make_endpoint(cloud, "chat")
    only_gen = admin.consumers.create("only-gen", endpoints=["gen"])
    both = admin.consumers.create("both", endpoints=["gen", "chat"])
    anything = admin.consumers.create("anything")
    assert set(snapshot(cloud, gen)) == {only_gen.key_id, both.key_id, anything.key_id}
    assert set(snapshot(cloud, chat)) == {both.key_id, anything.key_id}
    admin.consumers.update("only-gen", endpoints=[])  # empty: every endpoint
    assert only_gen.key_id in snapshot(cloud, chat)
