"""Endpoints over REST with a fake Ray Serve behind the controller, and the internal API that
replicas call (keys out, usage in). SQLite always, PostgreSQL when GUREUM_TEST_DATABASE_URL is set.

The controller's thread is never started: tests call ``tick()`` themselves.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum.config import Settings
from gureum.schemas.metering import UsageIn
from gureum.server.app import create_app
from gureum.server.controllers.endpoints import EndpointController
from gureum.server.db.base import utcnow
from gureum.server.db.session import Database
from gureum.server.db.tables_serving import Endpoint
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from gureum.server.services.bootstrap import bootstrap
from gureum.server.services.endpoints import endpoint_token
from gureum.serving.backend import AppSpec, AppState, Route
from tests.conftest import Cloud
from tests.integration.test_consumers_api import member_key

DATA_URL = "http://127.0.0.1:8100"


@dataclass
class FakeServing:
    """Stands in for Ray Serve: records what the controller applies and deletes; the test says
    how each application fares (``run``, ``fail``, ``gone``).

    Ray Serve's applications are named ``ep-<id>`` (``--canary``, ``--shadow``); tests speak of
    them as ``shop`` and ``shop--canary`` (``label``), translated with what ``apply`` saw. An
    application keeps the endpoint id and owner its user_config recorded, as Ray Serve does."""

    data_url: str = DATA_URL
    applied: list[AppSpec] = field(default_factory=list)
    deleted_apps: list[str] = field(default_factory=list)
    apps: dict[str, AppState] = field(default_factory=dict)
    # every endpoints -> cold-start bound table the router was given
    routes: list[dict[str, float]] = field(default_factory=list)
    tables: list[dict[str, Route]] = field(default_factory=list)
    # application name -> what ``apply`` raises for it (Ray Serve refusing it)
    refuse: dict[str, Exception] = field(default_factory=dict)
    # application name <-> the test's label for it, and what it recorded
    labels: dict[str, str] = field(default_factory=dict)
    recorded: dict[str, tuple[int | None, str | None]] = field(default_factory=dict)

    def apply(self, app: AppSpec) -> None:
        label = app.replica.endpoint + (
            "" if app.replica.role == "primary" else f"--{app.replica.role}"
        )
        if label in self.refuse:
            raise self.refuse[label]
        self.labels[app.name] = label
        self.recorded[app.name] = (app.traffic.endpoint_id, app.traffic.owner)
        self.applied.append(app)
        if app.name not in self.apps or self.apps[app.name].status == "DELETING":
            self._set(app.name, "DEPLOYING", "", 0)

    def delete(self, name: str) -> None:
        self.deleted_apps.append(name)
        if name in self.apps:
            self._set(name, "DELETING", "", 0)

    def route(self, routes: dict[str, Route]) -> None:
        self.tables.append(dict(routes))
        self.routes.append({name: r.bound_s for name, r in routes.items()})

    def states(self) -> dict[str, AppState]:
        return dict(self.apps)

    def _set(self, app: str, status: str, message: str, running: int) -> None:
        self.apps[app] = AppState(status, message, running, *self.recorded.get(app, (None, None)))

    # -- what the test makes happen --

    def app(self, label: str) -> str:
        """The application name of ``label`` (``shop``, ``shop--canary``)."""
        names = [a for a, lb in self.labels.items() if lb == label]
        assert names, f"nothing applied for {label}"
        return names[-1]

    @property
    def deleted(self) -> list[str]:
        return [self.labels.get(a, a) for a in self.deleted_apps]

    def run(self, label: str, running: int = 1) -> None:
        self._set(self.app(label), "RUNNING", "", running)

    def fail(self, label: str, message: str) -> None:
        self._set(self.app(label), "DEPLOY_FAILED", message, 0)

    def gone(self, label: str) -> None:
        self.apps.pop(self.app(label), None)

    def last(self, label: str) -> AppSpec:
        return [a for a in self.applied if self.labels[a.name] == label][-1]

    def names(self) -> list[str]:
        return [self.labels[a.name] for a in self.applied]


@dataclass
class Env:
    cloud: Cloud
    fake: FakeServing
    controller: EndpointController
    http: TestClient

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            self.controller.tick()

    def deploy(self, model: str = "m:1", name: str = "shop", status: int = 201, **body: Any) -> Any:
        r = self.http.post("/v1/endpoints", json={"name": name, "model": model, **body})
        assert r.status_code == status, r.text
        return r.json()

    def get(self, name: str = "shop") -> Any:
        r = self.http.get(f"/v1/endpoints/{name}")
        assert r.status_code == 200, r.text
        return r.json()

    def events(self, name: str = "shop") -> list[tuple[str, str]]:
        r = self.http.get(f"/v1/endpoints/{name}/events")
        assert r.status_code == 200, r.text
        return [(e["kind"], e["message"]) for e in r.json()]

    def row(self, name: str = "shop") -> Endpoint:
        db: Database = self.cloud.app.state.db
        with db.read() as s:
            ep = s.scalar(select(Endpoint).where(Endpoint.name == name))
            assert ep is not None
            s.expunge(ep)
        return ep

    def token(self, name: str = "shop") -> str:
        return endpoint_token(self.cloud.app.state.serving.secret, self.row(name))

    def replica(self, name: str = "shop", token: str | None = None) -> TestClient:
        """An HTTP client as a replica of ``name`` holds it: the endpoint's token."""
        c = TestClient(self.cloud.app, raise_server_exceptions=False)
        c.headers["Authorization"] = f"Bearer {token or self.token(name)}"
        return c

    def ship(self, records: list[UsageIn], name: str = "shop", **batch: Any) -> Any:
        body = {"records": [r.model_dump(mode="json") for r in records], **batch}
        r = self.replica(name).post(f"/v1/internal/endpoints/{name}/usage", json=body)
        assert r.status_code == 200, r.text
        return r.json()

    def ready(self, model: str = "m:1", name: str = "shop", **body: Any) -> Any:
        """Deploy and let the fake report the application running."""
        self.deploy(model, name, **body)
        self.tick()
        self.fake.run(name)
        self.tick()
        out = self.get(name)
        assert out["state"] == "ready", out
        return out


def register(
    http: TestClient, model: str, recipe: str | None = "tabular", data: bytes | None = None
) -> int:
    """A model version from one uploaded file; its version number."""
    data = data or secrets.token_bytes(32)
    digest = hashlib.sha256(data).hexdigest()
    assert http.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
    files = [{"path": "model.joblib", "sha256": digest, "size": len(data)}]
    body: dict[str, Any] = {"files": files}
    if recipe is not None:
        body["recipe"] = recipe
    r = http.post(f"/v1/models/{model}/versions", json=body)
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


def usage_record(
    version_id: int,
    label: str,
    *,
    role: Literal["primary", "canary"] = "primary",
    status: int = 200,
    latency_ms: float = 10.0,
    consumer_id: int | None = None,
    consumer: str = "member:admin",
) -> UsageIn:
    return UsageIn(
        id=secrets.token_hex(10),
        time=utcnow(),
        consumer_id=consumer_id,
        consumer_name=consumer,
        model_version_id=version_id,
        model_label=label,
        role=role,
        route="predict",
        status=status,
        units=1.0,
        unit="row",
        latency_ms=latency_ms,
    )


def make_env(settings: Settings) -> Iterator[Env]:
    # These tests upload stand-in "tabular" files; whether uploaded pickles may be served is
    # the models tests' concern (issue 10 item 2), so that check is off here.
    with pytest.MonkeyPatch.context() as mp:
        for module in (models_service, endpoints_service):
            mp.setattr(module, "require_loadable", lambda *a, **k: None, raising=False)
        yield from _make_env(settings)


def _make_env(settings: Settings) -> Iterator[Env]:
    fake = FakeServing()
    # Not entered as a context manager: the lifespan (and the controller's thread) never runs.
    app = create_app(settings, serving=fake)
    token = bootstrap(app.state.db)
    assert token is not None
    cloud = Cloud(app, settings, token)
    controller = app.state.serving.controller
    assert isinstance(controller, EndpointController)
    http = cloud.http()
    register(http, "m")
    register(http, "m")
    yield Env(cloud, fake, controller, http)
    app.state.db.dispose()


@pytest.fixture
def env(settings: Settings) -> Iterator[Env]:
    yield from make_env(settings)


# -- deploying ------------------------------------------------------------------------------------


def test_deploy_creates_the_endpoint_then_updates_it(env: Env) -> None:
    created = env.deploy("m:1")
    assert (created["name"], created["model"], created["version"]) == ("shop", "m", 1)
    assert (created["model_label"], created["recipe"]) == ("m:1", "tabular")
    assert (created["state"], created["workspace"]) == ("deploying", "default")
    assert created["url"] == f"{DATA_URL}/v1/endpoints/shop"
    assert created["canary"] is None and created["previous"] is None
    assert created["replicas"] == {"primary": 0, "canary": 0, "shadow": 0}
    assert created["config"]["autoscaling"]["min_replicas"] == 1
    # The same version again changes nothing.
    same = env.deploy("m:1", status=200)
    assert same["state"] == "deploying" and env.row().generation == 1
    # A new configuration is an update.
    config = {"autoscaling": {"min_replicas": 0, "max_replicas": 3}}
    updated = env.deploy("m:1", status=200, config=config)
    assert updated["config"]["autoscaling"]["max_replicas"] == 3
    assert env.row().generation == 2
    # A new version goes beside the current one at 0 % until it has loaded.
    rolling = env.deploy("m:2", status=200)
    assert rolling["version"] == 1 and rolling["state"] == "updating"
    assert rolling["canary"] == {"version": 2, "label": "m:2", "percent": 0.0}
    kinds = [k for k, _ in env.events()]
    assert kinds == ["deploy", "rollout"]
    listed = env.http.get("/v1/endpoints").json()
    assert [e["name"] for e in listed["items"]] == ["shop"]


def test_the_first_tick_applies_what_the_endpoint_says(env: Env) -> None:
    config = {
        "resources": {"cpus": 0.5},
        "autoscaling": {"min_replicas": 0, "max_replicas": 2},
        "batching": {"max_batch_size": 4, "max_wait_ms": 2},
    }
    env.deploy("m:1", config=config)
    env.tick()
    app = env.fake.last("shop")
    assert env.fake.names() == ["shop"]
    assert app.route_prefix == "/v1/endpoints/shop"
    assert (app.replica.role, app.traffic.model.label, app.traffic.model.recipe) == (
        "primary",
        "m:1",
        "tabular",
    )
    assert app.replica.token == env.token()
    assert app.replica.endpoint == "shop"
    assert [f.path for f in app.traffic.model.files] == ["model.joblib"]
    assert (app.resources.cpus, app.autoscaling.max_replicas) == (0.5, 2)
    assert (app.traffic.max_batch_size, app.traffic.canary_app) == (4, None)
    # Applied once: another tick with nothing changed applies nothing.
    env.tick()
    assert len(env.fake.applied) == 1
    assert env.get()["state"] == "deploying"
    env.fake.run("shop", running=2)
    env.tick()
    ready = env.get()
    assert ready["state"] == "ready" and ready["replicas"]["primary"] == 2
    assert env.events()[-1] == ("ready", "serving")


def test_the_router_knows_each_endpoints_cold_start_bound(env: Env) -> None:
    env.tick()
    assert env.fake.routes == [{}]
    env.deploy("m:1")
    env.deploy("m:1", name="slow", config={"cold_start_timeout_s": 600})
    env.tick()
    assert env.fake.routes[-1] == {"shop": 120.0, "slow": 600.0}
    calls = len(env.fake.routes)
    env.tick()
    assert len(env.fake.routes) == calls  # told again only when it changes
    env.http.patch("/v1/endpoints/shop", json={"config": {"cold_start_timeout_s": 30}})
    env.tick()
    assert env.fake.routes[-1] == {"shop": 30.0, "slow": 600.0}
    env.http.delete("/v1/endpoints/slow")
    env.tick()
    assert env.fake.routes[-1] == {"shop": 30.0}  # a deleted endpoint answers 404 at once


def test_a_failing_first_deploy_says_why(env: Env) -> None:
    env.deploy("m:1")
    env.tick()
    env.fake.fail("shop", "  RuntimeError: cannot load model.joblib\n")
    env.tick()
    out = env.get()
    assert out["state"] == "failed"
    assert out["message"] == "RuntimeError: cannot load model.joblib"
    assert env.events()[-1] == ("failed", "RuntimeError: cannot load model.joblib")


@pytest.mark.parametrize(
    "name",
    [
        "x--canary",  # once the Serve application of endpoint x's canary
        "gureum-router",  # the data plane's router application
        "gureum",
        "gureum-anything",
        "ep-1",  # reads like an endpoint's application
        "ep-12-shadow",
        "a" * 64,  # over a DNS label
    ],
)
def test_names_that_could_take_over_serve_applications_are_refused(env: Env, name: str) -> None:
    r = env.http.post("/v1/endpoints", json={"name": name, "model": "m:1"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    env.tick()
    assert env.fake.applied == []


def test_the_schema_shows_the_name_rules_and_plain_names_still_work(env: Env) -> None:
    schema = env.http.get("/v1/openapi.json").json()["components"]["schemas"]["EndpointCreate"]
    name = schema["properties"]["name"]
    assert (name["pattern"], name["maxLength"]) == ("^[a-z0-9]+(-[a-z0-9]+)*$", 63)
    assert name["not"]["pattern"].startswith("^(gureum")
    for ok in ("a" * 63, "epic", "my-gureum", "ep", "x-canary"):
        env.deploy("m:1", name=ok)


def test_applications_are_named_by_endpoint_id_and_routes_by_name(env: Env) -> None:
    """Two workspaces' endpoints: each Serve application is named for its endpoint's id and
    records it; the data-plane path is the (globally unique) name, mapped by the router to that
    endpoint's application only."""
    admin = env.cloud.client()
    admin.workspaces.create("other")
    other = env.cloud.http(admin.keys.create("o", workspace="other").token)
    register(other, "theirs")
    assert (
        other.post("/v1/endpoints", json={"name": "theirs", "model": "theirs"}).status_code == 201
    )
    env.deploy("m:1")
    env.tick()
    mine, theirs = env.row("shop"), env.row("theirs")
    assert mine.workspace_id != theirs.workspace_id
    shop, their_app = env.fake.last("shop"), env.fake.last("theirs")
    assert (shop.name, shop.route_prefix) == (f"ep-{mine.id}", "/v1/endpoints/shop")
    assert (their_app.name, their_app.route_prefix) == (f"ep-{theirs.id}", "/v1/endpoints/theirs")
    assert shop.traffic.endpoint_id == mine.id and their_app.traffic.endpoint_id == theirs.id
    assert shop.traffic.owner and shop.traffic.owner != their_app.traffic.owner
    table = env.fake.tables[-1]
    assert {n: r.app for n, r in table.items()} == {
        "shop": f"ep-{mine.id}",
        "theirs": f"ep-{theirs.id}",
    }
    assert table["shop"].max_request_bytes == 8 * 1024 * 1024
    # The other workspace can neither take the name nor name an endpoint like a canary of it.
    for name, status in (("shop", 409), ("shop--canary", 422), (f"ep-{mine.id}", 422)):
        r = other.post("/v1/endpoints", json={"name": name, "model": "theirs"})
        assert r.status_code == status, r.text
    # Deleting theirs removes their applications only.
    assert other.delete("/v1/endpoints/theirs").status_code == 202
    env.tick()
    assert env.fake.deleted_apps == [f"ep-{theirs.id}"]
    assert "theirs" not in env.fake.tables[-1] and "shop" in env.fake.tables[-1]


def test_the_name_is_taken_when_another_workspace_owns_it(env: Env) -> None:
    admin = env.cloud.client()
    admin.workspaces.create("other")
    other = env.cloud.http(admin.keys.create("o", workspace="other").token)
    register(other, "theirs")
    r = other.post("/v1/endpoints", json={"name": "shop", "model": "theirs"})
    assert r.status_code == 201, r.text
    r = env.http.post("/v1/endpoints", json={"name": "shop", "model": "m:1"})
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "conflict" and "taken" in r.json()["error"]["message"]
    # Nor does this workspace see it.
    assert env.http.get("/v1/endpoints/shop").status_code == 404
    assert env.http.get("/v1/endpoints").json()["items"] == []


@pytest.mark.parametrize("recipe", [None, "script"])
def test_only_versions_of_built_in_recipes_are_served(env: Env, recipe: str | None) -> None:
    register(env.http, "byo", recipe=recipe)
    r = env.http.post("/v1/endpoints", json={"name": "byo", "model": "byo:1"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert "byo:1 was made by" in error["message"] and "tabular" in error["message"]
    assert env.http.get("/v1/endpoints/byo").status_code == 404


def test_unknown_models_and_versions_are_404(env: Env) -> None:
    for model in ("ghost", "ghost:1", "m:9"):
        r = env.http.post("/v1/endpoints", json={"name": "shop", "model": model})
        assert r.status_code == 404, model
        assert r.json()["error"]["code"] == "not_found"
    r = env.http.post("/v1/endpoints", json={"name": "shop", "model": "m:newest"})
    assert r.status_code == 422


def test_bad_requests_are_422_in_the_error_shape(env: Env) -> None:
    for body in (
        {"name": "Bad_Name", "model": "m"},
        {"name": "shop"},
        {"name": "shop", "model": "m", "canary_percent": 100},
        {"name": "shop", "model": "m", "canary_percent": 5, "shadow": True},
        {"name": "shop", "model": "m", "config": {"autoscaling": {"min_replicas": 3}}},
        {"name": "shop", "model": "m", "colour": "red"},
    ):
        r = env.http.post("/v1/endpoints", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["code"] == "invalid_request", body
    # A canary or shadow needs an endpoint already serving.
    r = env.http.post("/v1/endpoints", json={"name": "shop", "model": "m:2", "canary_percent": 5})
    assert r.status_code == 422 and "already serves" in r.json()["error"]["message"]
    env.deploy("m:1")
    same = env.http.post(
        "/v1/endpoints", json={"name": "shop", "model": "m:1", "canary_percent": 5}
    )
    assert same.status_code == 422 and "a canary must be another" in same.text


def test_without_a_version_the_production_one_else_the_latest_is_deployed(env: Env) -> None:
    assert env.deploy("m", name="latest")["version"] == 2
    r = env.http.post("/v1/models/m/versions/1/promote", json={"stage": "production"})
    assert r.status_code == 200, r.text
    assert env.deploy("m", name="prod")["version"] == 1


def test_viewers_read_but_cannot_deploy_or_change(env: Env) -> None:
    env.deploy("m:1")
    viewer = env.cloud.http(member_key(env.cloud, "vic", "viewer"))
    r = viewer.post("/v1/endpoints", json={"name": "mine", "model": "m:1"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for method, path in (
        ("PATCH", "/v1/endpoints/shop"),
        ("DELETE", "/v1/endpoints/shop"),
        ("POST", "/v1/endpoints/shop/rollback"),
        ("POST", "/v1/endpoints/shop/promote"),
    ):
        assert viewer.request(method, path, json={}).status_code == 403, path
    assert viewer.get("/v1/endpoints/shop").json()["name"] == "shop"
    assert len(viewer.get("/v1/endpoints/shop/events").json()) == 1
    developer = env.cloud.http(member_key(env.cloud, "dev", "developer"))
    assert developer.post("/v1/endpoints", json={"name": "mine", "model": "m:1"}).status_code == 201
    anonymous = env.cloud.http(False)  # type: ignore[arg-type]
    assert anonymous.get("/v1/endpoints").status_code == 401


def test_changes_that_need_a_canary_or_history_are_409_without_one(env: Env) -> None:
    env.ready("m:1")
    for path in ("/v1/endpoints/shop/promote", "/v1/endpoints/shop/rollback"):
        r = env.http.post(path)
        assert r.status_code == 409, path
        assert r.json()["error"]["code"] == "conflict"
    r = env.http.patch("/v1/endpoints/shop", json={"canary_percent": 20})
    assert r.status_code == 409 and "no canary" in r.json()["error"]["message"]
    for path in ("/v1/endpoints/ghost", "/v1/endpoints/ghost/events"):
        assert env.http.get(path).status_code == 404


def test_patch_changes_the_configuration_and_the_canary_share(env: Env) -> None:
    env.ready("m:1")
    r = env.http.patch("/v1/endpoints/shop", json={"config": {"autoscaling": {"max_replicas": 4}}})
    assert r.status_code == 200 and r.json()["state"] == "updating"
    env.tick()
    assert env.fake.last("shop").autoscaling.max_replicas == 4
    env.deploy("m:2", status=200, canary_percent=5)
    r = env.http.patch("/v1/endpoints/shop", json={"canary_percent": 25})
    assert r.status_code == 200 and r.json()["canary"]["percent"] == 25
    env.tick()
    assert env.fake.last("shop").traffic.canary_percent == 25
    assert env.events()[-1] == ("canary", "canary at 25% of traffic")


def test_events_are_listed_in_order_and_after_a_seq(env: Env) -> None:
    env.ready("m:1")
    env.deploy("m:2", status=200, canary_percent=10)
    env.http.post("/v1/endpoints/shop/rollback")
    events = env.http.get("/v1/endpoints/shop/events").json()
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["kind"] for e in events] == ["deploy", "ready", "canary", "rollback"]
    assert events[0]["message"] == "deploying m:1" and events[0]["data"] == {"version": 1}
    assert events[3]["message"] == "canary m:2 rolled back"
    later = env.http.get("/v1/endpoints/shop/events", params={"after_seq": 2}).json()
    assert [e["seq"] for e in later] == [3, 4]


# -- the internal API replicas call ----------------------------------------------------------------


def test_the_internal_api_takes_only_the_endpoints_own_token(env: Env) -> None:
    env.deploy("m:1")
    env.deploy("m:1", name="other")
    good = env.token()
    anonymous = TestClient(env.cloud.app, raise_server_exceptions=False)
    for client in (
        anonymous,
        env.replica(token="gst_" + "0" * 64),
        env.replica(token=env.token("other")),  # another endpoint's replica
        env.http,  # a workspace API key is not a replica's token
    ):
        for method, path in (("GET", "access"), ("POST", "usage")):
            r = client.request(method, f"/v1/internal/endpoints/shop/{path}", json={})
            assert r.status_code == 401, (path, client.headers.get("authorization"))
            assert r.json()["error"]["code"] == "unauthorized"
    assert env.replica(token=good).get("/v1/internal/endpoints/shop/access").status_code == 200
    assert env.replica(token=good).get("/v1/internal/endpoints/ghost/access").status_code == 401
    assert "/v1/internal/endpoints/{name}/access" not in env.http.get("/v1/openapi.json").text


def test_the_snapshot_lists_this_workspaces_member_and_consumer_keys_only(env: Env) -> None:
    admin = env.cloud.client()
    env.deploy("m:1")
    acme = admin.consumers.create("acme", rate_limit=5, monthly_quota=100)
    admin.users.add("dev", role="developer")
    dev_key = admin.keys.create("dev-key", user="dev", data_plane=True).token
    revoked = admin.keys.create("old")
    admin.keys.revoke(revoked.key_id)
    admin.workspaces.create("other")
    foreign_member = admin.keys.create("o", workspace="other")
    foreign = env.cloud.client(foreign_member.token).consumers.create("foreign")

    r = env.replica().get("/v1/internal/endpoints/shop/access")
    assert r.status_code == 200, r.text
    snap = r.json()
    assert snap["endpoint"] == "shop" and snap["replicas"] == 1
    keys = {k["key_id"]: k for k in snap["keys"]}
    dev_id = dev_key.split("_")[1]
    assert set(keys) == {acme.key_id, dev_id}  # the admin's key is not a data-plane key
    assert not {revoked.key_id, foreign_member.key_id, foreign.key_id} & set(keys)
    consumer = keys[acme.key_id]
    assert (consumer["kind"], consumer["consumer_name"]) == ("consumer", "acme")
    assert (consumer["rate_limit"], consumer["monthly_quota"]) == (5.0, 100)
    assert (
        consumer["secret_hash"] == hashlib.sha256(acme.token.split("_", 2)[2].encode()).hexdigest()
    )
    member = keys[dev_id]
    assert (member["kind"], member["consumer_id"], member["consumer_name"]) == (
        "member",
        None,
        "member:dev",
    )
    assert member["rate_limit"] == env.cloud.settings.data_plane_key_rate_limit
    assert member["monthly_quota"] is None


def test_the_snapshot_carries_the_running_primary_replicas(env: Env) -> None:
    env.ready("m:1")
    env.fake.run("shop", running=3)
    env.tick()
    snap = env.replica().get("/v1/internal/endpoints/shop/access").json()
    assert snap["replicas"] == 3


def test_usage_ingest_is_idempotent(env: Env) -> None:
    env.ready("m:1")
    version_id = env.row().version_id
    records = [usage_record(version_id, "m:1", latency_ms=float(i)) for i in range(1, 5)]
    records.append(usage_record(version_id, "m:1", status=500))
    gauges = [{"replica": "shop-primary-abc", "role": "primary", "in_flight": 2}]
    assert env.ship(records, gauges=gauges) == {"accepted": 5, "duplicates": 0}
    assert env.ship(records) == {"accepted": 0, "duplicates": 5}
    assert env.ship([*records[:2], usage_record(version_id, "m:1")]) == {
        "accepted": 1,
        "duplicates": 2,
    }
    stats = env.http.get("/v1/endpoints/shop/stats").json()
    [primary] = stats["versions"]
    assert (primary["label"], primary["role"]) == ("m:1", "primary")
    assert (primary["requests"], primary["errors"]) == (6, 1)
    assert stats["queue_depth"] == 2
    usage = env.cloud.client().usage.report(endpoint="shop")
    assert sum(row.requests for row in usage.rows) == 6


def test_a_malformed_usage_batch_is_refused_whole(env: Env) -> None:
    env.deploy("m:1")
    good = usage_record(env.row().version_id, "m:1").model_dump(mode="json")
    bad = {**good, "id": "x" * 8, "status": 99}
    r = env.replica().post("/v1/internal/endpoints/shop/usage", json={"records": [good, bad]})
    assert r.status_code == 422
    again = env.ship([usage_record(env.row().version_id, "m:1")])
    assert again == {"accepted": 1, "duplicates": 0}


def test_an_endpoint_made_again_under_its_name_has_a_new_token(env: Env, tmp_path: Path) -> None:
    env.deploy("m:1")
    old = env.token()
    env.http.delete("/v1/endpoints/shop")
    env.tick(2)
    assert env.http.get("/v1/endpoints/shop").status_code == 404
    env.deploy("m:1")
    assert env.token() != old
    r = env.replica(token=old).get("/v1/internal/endpoints/shop/access")
    assert r.status_code == 401
