"""Gates cannot be faked (issue 10, item 8): a version's metrics are "measured" only when a
built-in recipe's train job registered it, else "reported"; a gate may require measured
metrics; only workspace admins change gates, and each change is audited with what it replaced.
Real databases (SQLite and PostgreSQL); a fake compute backend stands in for Ray."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gureum.client import Client
from gureum.client.errors import ForbiddenError
from gureum.server.db.tables import AuditEvent
from tests.integration.test_blobs_api import member_key
from tests.integration.test_job_controller import Env, FakeBackend, env
from tests.integration.test_models_api import register
from tests.integration.test_untrusted_models import train

__all__ = ["FakeBackend", "env"]  # the fixture, re-exported for pytest


class _Cloud:
    """What ``member_key`` needs of a cloud: its app."""

    def __init__(self, e: Env) -> None:
        self.app = e.http.app


def key(e: Env, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {member_key(_Cloud(e), role)}"}  # type: ignore[arg-type]


def promote(e: Env, ref: str, **body: Any) -> Any:
    return e.http.post(
        f"/v1/models/returns/versions/{ref}/promote", json={"stage": "production", **body}
    )


def gate_audits(e: Env) -> list[AuditEvent]:
    with e.controller.db.read() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == "model.gates.update"))
        return list(rows)


def test_only_admins_change_gates_and_each_change_is_audited(env: Env) -> None:
    train(env, "returns", {"accuracy": 0.75})
    developer = key(env, "developer")
    gates = {"gates": [{"metric": "accuracy", "op": ">=", "threshold": 0.1}]}
    for body in (gates, {"must_beat_production": {"metric": "accuracy"}}):
        r = env.http.patch("/v1/models/returns", json=body, headers=developer)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden" and "admin" in r.json()["error"]["message"]
    r = env.http.patch("/v1/models/returns", json={**gates, "description": "x"}, headers=developer)
    assert r.status_code == 403  # all or nothing: the description did not change either
    assert env.http.get("/v1/models/returns").json()["gates"] == []
    assert gate_audits(env) == []
    # A developer still edits the description.
    r = env.http.patch("/v1/models/returns", json={"description": "returns"}, headers=developer)
    assert r.status_code == 200 and r.json()["description"] == "returns"
    # A workspace admin sets gates; the audit row holds before and after.
    admin = key(env, "admin")
    measured = {"metric": "accuracy", "op": ">=", "threshold": 0.7, "measured": True}
    r = env.http.patch("/v1/models/returns", json={"gates": [measured]}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["gates"] == [measured]
    (row,) = gate_audits(env)
    assert row.target == "returns" and row.actor_key_id is not None
    assert row.details["before"]["gates"] == []
    assert row.details["after"]["gates"] == [measured]
    r = env.http.patch("/v1/models/returns", json={"gates": []}, headers=admin)
    assert r.status_code == 200
    assert [a.details["before"]["gates"] for a in gate_audits(env)] == [[], [measured]]
    # The SDK says the same to a developer.
    dev_client = Client("http://testserver", developer["Authorization"][7:], http=env.http)
    try:
        dev_client.models.update("returns", gates=[measured])
    except ForbiddenError as exc:
        assert "admin" in str(exc)
    else:
        raise AssertionError("a developer changed gates through the SDK")


def test_reported_metrics_fail_a_measured_gate_that_measured_ones_pass(env: Env) -> None:
    train(env, "returns", {"accuracy": 0.75})  # v1: measured by the platform
    fake = register(env.http, "returns", metrics={"accuracy": 0.99}, job_id="j-made-up")
    assert fake.status_code == 201, fake.text  # v2: imported, claims a better score
    assert fake.json()["metrics_source"] == "reported"
    gate = {"metric": "accuracy", "op": ">=", "threshold": 0.7, "measured": True}
    assert env.http.patch("/v1/models/returns", json={"gates": [gate]}).status_code == 200
    r = promote(env, "2")
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["code"] == "gate_failed"
    (failed,) = error["details"]["failed"]
    assert failed["measured"] is True and failed["actual"] == 0.99
    assert "reported" in failed["reason"] and "measured" in failed["reason"]
    r = promote(env, "1")
    assert r.status_code == 200, r.text
    assert r.json()["checks"][0]["passed"] is True and r.json()["checks"][0]["measured"] is True
    # The same threshold without ``measured`` takes reported numbers, as before.
    gate["measured"] = False
    assert env.http.patch("/v1/models/returns", json={"gates": [gate]}).status_code == 200
    assert promote(env, "2").status_code == 200


def test_must_beat_production_can_require_measured_metrics(env: Env) -> None:
    train(env, "returns", {"accuracy": 0.75})
    assert promote(env, "1").status_code == 200
    rule = {"metric": "accuracy", "higher_is_better": True, "measured": True}
    r = env.http.patch("/v1/models/returns", json={"must_beat_production": rule})
    assert r.status_code == 200, r.text
    assert register(env.http, "returns", metrics={"accuracy": 0.99}).status_code == 201
    r = promote(env, "2")
    assert r.status_code == 409
    assert "not measured" in r.json()["error"]["details"]["failed"][0]["reason"]
    train(env, "returns", {"accuracy": 0.8})  # v3, measured and better
    assert promote(env, "3").status_code == 200
