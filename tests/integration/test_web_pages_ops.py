"""The dashboard's pipelines, costs (budget and capacity plan) and admin pages through the front
door (no browser): what they show by role, the REST calls their buttons make with the session
(CSRF required, a viewer refused), bad input answered with a 4xx in words, and secrets never
shown. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum.config import Settings
from gureum.schemas.endpoints import ReplicaResources
from gureum.server.db.base import utcnow
from gureum.server.db.tables import ApiKey, Workspace
from gureum.server.services import costs
from gureum.web import pages_admin, pages_ops
from tests.conftest import Cloud
from tests.integration.test_consumers_api import member_key
from tests.integration.test_curate_api import _push_table, _register
from tests.integration.test_endpoints_api import Env, make_env
from tests.integration.test_pipelines_api import PARAMS, capture, controller
from tests.integration.test_planner_api import record_march
from tests.integration.test_web_pages import browser, cells, signed
from tests.integration.trained_models import mark_trained_by_job
from tests.integration.web_helpers import csrf_of, key_of_role

PIPELINE = {"name": "weekly", "model": "returns", "endpoint": "shop", "dataset": "orders"}


@pytest.fixture
def flywheel(settings: Settings, tmp_path: Path) -> Iterator[Env]:
    """A served model a job trained, and pipeline ``weekly`` retraining it (no cluster: the
    run's training job waits in the queue)."""
    for e in make_env(settings):
        rows = [
            [10 + i, "dress" if i % 2 else "shirt", "no" if i % 3 else "yes"] for i in range(40)
        ]
        _push_table(e, tmp_path, rows)
        _register(e, "returns", "tabular", "orders:1", **PARAMS)
        mark_trained_by_job(e.cloud.app.state.db, "returns", 1, PARAMS)
        e.ready("returns:1")
        created = e.http.post("/v1/pipelines", json={**PIPELINE, "approve": "manual"})
        assert created.status_code == 201, created.text
        yield e


def test_pipeline_pages_show_runs_steps_and_decisions(flywheel: Env) -> None:
    cloud = flywheel.cloud
    capture(flywheel)
    owner = signed(cloud)
    listed = owner.get("/pipelines")
    assert listed.status_code == 200
    assert [r[:4] for r in cells(listed.text, "pipelines")] == [
        ["weekly", "returns", "shop", "orders"]
    ]
    page = owner.get("/pipelines/weekly")
    assert page.status_code == 200
    assert 'data-action="/v1/pipelines/weekly/runs"' in page.text  # Start a run
    assert "No runs" in page.text

    # The start button's call, as the page makes it: the session and its CSRF token.
    start = "/v1/pipelines/weekly/runs"
    assert owner.post(start).status_code == 403  # no CSRF token
    started = owner.post(start, headers={"X-CSRF-Token": csrf_of(owner, "/pipelines/weekly")})
    assert started.status_code == 202, started.text
    controller(flywheel).tick()  # curate, then the training job is submitted (and queued)

    page = owner.get("/pipelines/weekly")
    [row] = cells(page.text, "runs")
    assert row[:3] == ["run 1", "running", "train"]
    assert 'data-action="/v1/pipelines/weekly/runs/1/cancel"' in page.text
    run = owner.get("/pipelines/weekly/runs/1")
    assert run.status_code == 200
    steps = {r[0]: r for r in cells(run.text, "steps")}
    assert list(steps) == ["curate", "train", "evaluate", "gate", "approval", "canary", "decide"]
    assert steps["curate"][1] == "succeeded" and "orders:2" in steps["curate"][4]
    assert steps["train"][1] == "running"
    job = re.search(r'href="/jobs/([^"]+)"', run.text)
    assert job  # the train step's job, deep-linked
    assert 'href="/datasets/orders/versions/2"' in run.text  # what the run curated
    assert 'href="/models/returns/versions/1"' in run.text  # production when it began
    events = cells(run.text, "events")
    assert events[0][3] == "state" and "started: by hand (admin)" in events[0][4]
    assert 'data-live="1"' in run.text and "/static/ops.js" in run.text

    viewer = signed(cloud, member_key(cloud, "vera", "viewer"))
    for path in ("/pipelines/weekly", "/pipelines/weekly/runs/1"):
        seen = viewer.get(path)
        assert seen.status_code == 200
        assert "data-action" not in seen.text and "data-approve" not in seen.text
    token = csrf_of(viewer)
    refused = viewer.post("/v1/pipelines/weekly/runs/1/cancel", headers={"X-CSRF-Token": token})
    assert refused.status_code == 403
    assert "developer role" in refused.json()["error"]["message"]

    cancel = "/v1/pipelines/weekly/runs/1/cancel"
    assert owner.post(cancel, headers={"X-CSRF-Token": csrf_of(owner)}).status_code == 200
    controller(flywheel).tick()
    run = owner.get("/pipelines/weekly/runs/1")
    assert "cancelled by admin" in run.text
    assert "data-live" not in run.text and "Cancel run" not in run.text
    assert cells(run.text, "events")[-1][4].startswith("cancelled: cancelled by admin")


def test_pipeline_pages_say_what_is_wrong(flywheel: Env) -> None:
    owner = signed(flywheel.cloud)
    missing = owner.get("/pipelines/nope")
    assert missing.status_code == 404 and "no pipeline &#39;nope&#39;" in missing.text
    assert owner.get("/pipelines/weekly/runs/7").status_code == 404
    assert owner.get("/pipelines/weekly/runs/latest").status_code == 404  # a page per number
    too_short = owner.get("/pipelines/weekly/drift?window=5")
    assert too_short.status_code == 422 and "60 seconds to 90 days" in too_short.text
    assert owner.get("/pipelines/weekly/drift?window=soon").status_code == 422
    drift = owner.get("/pipelines/weekly/drift")
    assert drift.status_code == 200
    capture(flywheel)
    drift = owner.get("/pipelines/weekly/drift?window=3600")
    assert drift.status_code == 200, drift.text
    facts = dict(re.findall(r"<dt>([^<]*)</dt><dd[^>]*>([^<]*)</dd>", drift.text))
    assert facts["Captured calls"] == "3" and facts["Trained on"].startswith("orders:1")
    assert facts["Score"] == "—"  # too few samples to say


def test_pipelines_list_pages(flywheel: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages_ops, "PAGE_SIZE", 1)
    second = flywheel.http.post("/v1/pipelines", json={**PIPELINE, "name": "daily"})
    assert second.status_code == 201, second.text
    web = signed(flywheel.cloud)
    first = web.get("/pipelines")
    assert [r[0] for r in cells(first.text, "pipelines")] == ["weekly"]
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert nxt
    assert [r[0] for r in cells(web.get(nxt.group(1)).text, "pipelines")] == ["daily"]


def spend(cloud: Cloud, amount: float) -> None:
    """``amount`` of endpoint compute this month (1 CPU at 1 a second)."""
    cloud.settings.price_cpu_hour = 3600.0
    with cloud.app.state.db.write() as s:
        ws = s.scalar(select(Workspace.id).where(Workspace.name == "default"))
        assert ws is not None
        end = utcnow() - timedelta(seconds=1)
        start = end - timedelta(seconds=amount)
        if start.month != end.month:  # the first seconds of a month: keep it in the month
            start, end = end, end + timedelta(seconds=amount)
        costs.record_endpoint(s, ws, "gen", start, end, 1, ReplicaResources(cpus=1))


def test_costs_page_shows_spend_and_sets_the_budget_by_role(cloud: Cloud) -> None:
    spend(cloud, 85.0)
    owner = signed(cloud)
    page = owner.get("/costs")
    assert page.status_code == 200
    assert cells(page.text, "endpoint-costs")[0][0] == "gen"
    assert cells(page.text, "endpoint-costs")[0][4] == "85.00"
    assert 'id="budget-form"' in page.text
    assert "none" in re.search(r'id="budget-monthly">([^<]*)<', page.text).group(1)  # type: ignore[union-attr]

    path = "/v1/workspaces/default/budget"
    body = {"monthly": 100, "per_job": 10}
    assert owner.put(path, json=body).status_code == 403  # no CSRF token
    token = csrf_of(owner, "/costs")
    bad = owner.put(path, json={"monthly": -1}, headers={"X-CSRF-Token": token})
    assert bad.status_code == 422 and "monthly" in bad.text
    developer = signed(cloud, member_key(cloud, "dev", "developer"))
    dev_page = developer.get("/costs")
    assert dev_page.status_code == 200 and 'id="budget-form"' not in dev_page.text
    refused = developer.put(path, json=body, headers={"X-CSRF-Token": csrf_of(developer)})
    assert refused.status_code == 403
    saved = owner.put(path, json=body, headers={"X-CSRF-Token": token})
    assert saved.status_code == 200, saved.text
    assert saved.json()["state"] == "warning"  # 85 of 100: past the 80% warning

    page = owner.get("/costs")
    assert re.search(r'id="budget-monthly">100.00 USD<', page.text)
    assert re.search(r'id="budget-per-job">10.00 USD<', page.text)
    assert 'id="budget-warning"' in page.text and "passed 80%" in page.text
    assert 'id="budget-meter"' in page.text
    kinds = [r[2] for r in cells(page.text, "budget-events")]
    assert kinds[:2] == ["warning", "set"] or kinds[:2] == ["set", "warning"]
    viewer = signed(cloud, member_key(cloud, "vera", "viewer"))
    seen = viewer.get("/costs")
    assert seen.status_code == 200 and 'id="budget-form"' not in seen.text
    assert re.search(r'id="budget-monthly">100.00 USD<', seen.text)


def test_costs_page_shows_the_capacity_plan_and_refuses_bad_input(cloud: Cloud) -> None:
    record_march(cloud)
    web = signed(cloud)
    march = web.get("/costs?period=2025-03&months=1")
    assert march.status_code == 200
    assert 'id="plan"' in march.text and 'id="plan-chart"' in march.text
    assert 'data-period="2025-03"' in march.text
    plan = {r[0]: r for r in cells(march.text, "plan")}
    assert plan["Size"][2] == "4 CPUs, 2 GPUs"  # a fleet for the peak
    assert "is cheaper over the window" in march.text
    assert [r[0] for r in cells(march.text, "job-costs")] == ["j-default"]
    # The chart's call, as ops.js makes it.
    assert web.get("/v1/plan?months=1&period=2025-03").json()["series"]["cpus"][:2] == [2.0, 2.0]
    now = web.get("/costs")
    assert now.status_code == 200 and 'id="no-plan"' in now.text and "no recorded usage" in now.text
    bad_month = web.get("/costs?period=2025-13")
    assert bad_month.status_code == 422 and "2025-13" in bad_month.text
    assert web.get("/costs?months=0").status_code == 422
    assert "1 to 36 months" in web.get("/costs?months=99").text


def test_admin_pages_list_members_keys_and_the_audit_log_to_admins_only(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = cloud.http()
    dev_token, dev_id = key_of_role(admin, "ci", "developer")
    owner = signed(cloud)
    page = owner.get("/admin")
    assert page.status_code == 200
    assert [r[0] for r in cells(page.text, "members")] == ["admin"]
    assert cells(page.text, "workspaces")[0][0] == "default (this one)"
    keys = owner.get("/admin/keys")
    assert keys.status_code == 200
    rows = {r[1]: r for r in cells(keys.text, "keys")}
    assert rows["ci"][2:4] == ["admin", "developer"]
    assert f'data-revoke="{dev_id}"' in keys.text
    # Never a secret or its hash.
    for token in (dev_token, cloud.admin_key):
        assert token.split("_", 2)[2] not in keys.text
    with cloud.app.state.db.read() as s:
        for hashed in s.scalars(select(ApiKey.secret_hash)):
            assert hashed not in keys.text

    for role in ("developer", "viewer"):
        web = signed(cloud, member_key(cloud, f"u-{role}", role))  # another user
        for path in ("/admin", "/admin/keys", "/admin/audit"):
            refused = web.get(path)
            assert refused.status_code == 403 and f"the {role} role" in refused.text
        assert 'href="/admin"' not in web.get("/").text
        # The revoke button's call: someone else's key is not theirs to see.
        token = csrf_of(web)
        gone = web.delete(f"/v1/keys/{dev_id}", headers={"X-CSRF-Token": token})
        assert gone.status_code in (403, 404), gone.text
    assert 'href="/admin"' in owner.get("/").text

    revoke = f"/v1/keys/{dev_id}"
    assert owner.delete(revoke).status_code == 403  # no CSRF token
    revoked = owner.delete(revoke, headers={"X-CSRF-Token": csrf_of(owner)})
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert cloud.http(dev_token).get("/v1/jobs").status_code == 401
    row = next(r for r in cells(owner.get("/admin/keys").text, "keys") if r[1] == "ci")
    assert row[7].startswith("revoked")

    audit = owner.get("/admin/audit?action=key.revoke")
    assert audit.status_code == 200
    [event] = cells(audit.text, "audit")
    assert event[1:4] == ["admin", event[2], "key.revoke"] and dev_id in event[4]
    monkeypatch.setattr(pages_admin, "PAGE_SIZE", 2)
    first = owner.get("/admin/audit")
    assert len(cells(first.text, "audit")) == 2
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert nxt
    assert cells(owner.get(nxt.group(1).replace("&amp;", "&")).text, "audit")
    bad = owner.get("/admin/audit?action=a%20b")
    assert bad.status_code == 422 and "not an audit action" in bad.text


def test_new_pages_need_a_session_and_carry_the_security_headers(flywheel: Env) -> None:
    cloud = flywheel.cloud
    paths = [
        "/pipelines",
        "/pipelines/weekly",
        "/pipelines/weekly/drift",
        "/costs",
        "/admin",
        "/admin/keys",
        "/admin/audit",
    ]
    anonymous: TestClient = browser(cloud)
    for path in paths:
        away = anonymous.get(path, follow_redirects=False)
        assert away.status_code == 303 and away.headers["location"].startswith("/login?next=")
    web = signed(cloud)
    for path in paths:
        page = web.get(path)
        assert page.status_code == 200, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text
    assert web.get("/static/ops.js").status_code == 200
