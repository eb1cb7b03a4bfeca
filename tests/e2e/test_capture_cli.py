"""`gureum deploy --capture`, `gureum endpoints capture | feedback | captured`,
`gureum consumers update --no-capture` and `gureum consumers forget` against a real server, as
typed (no Ray: the deploy is recorded and never applied)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from gureum.schemas.capture import CaptureBatch, CapturedIn
from gureum.server.db.base import utcnow
from gureum.server.db.tables_serving import Consumer, Endpoint
from gureum.server.services import capture as capture_service
from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from tests.conftest import LiveServer
from tests.e2e.cli_runner import run, run_json
from tests.integration.test_endpoints_api import register


@pytest.fixture
def served(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model version the CLI can deploy (a stand-in file: nothing loads it here)."""
    for module in (models_service, endpoints_service):
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None, raising=False)
    register(live_server.cloud.http(), "m")


def test_capture_is_set_at_deploy_changed_and_shown(env: dict[str, str], served: None) -> None:
    deployed = run(env, "deploy", "m:1", "--endpoint", "shop", "--capture", "0.2")
    assert deployed.exit_code == 0, deployed.output
    shown = run_json(env, "endpoints", "capture", "shop")
    assert shown["config"]["rate"] == 0.2 and shown["captured"] == 0

    changed = run_json(
        env, "endpoints", "capture", "shop", "--rate", "0.5", "--no-inputs",
        "--redact", "email", "--redact", "customer.phone", "--retention-days", "30",
    )  # fmt: skip
    assert changed["config"] == {
        "rate": 0.5,
        "inputs": False,
        "outputs": True,
        "redact": ["email", "customer.phone"],
        "retention_days": 30,
    }
    # --capture on a later deploy changes the rate only; the other settings stay.
    again = run(env, "deploy", "m:1", "--endpoint", "shop", "--capture", "0.1", "-o", "json")
    assert again.exit_code == 0, again.output
    kept = run_json(env, "endpoints", "capture", "shop")["config"]
    assert kept == {**changed["config"], "rate": 0.1}

    table = run(env, "endpoints", "capture", "shop")
    assert table.exit_code == 0 and "email, customer.phone" in table.stdout
    assert "outputs" in table.stdout and "30 days" in table.stdout

    bad = run(env, "endpoints", "capture", "shop", "--rate", "1.5")
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    missing = run(env, "endpoints", "capture", "ghost", "-o", "json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"


def test_feedback_captured_and_opt_out(env: dict[str, str], served: None) -> None:
    assert run(env, "deploy", "m:1", "--endpoint", "shop").exit_code == 0
    summary = run_json(env, "endpoints", "feedback", "shop")
    assert (summary["count"], summary["mean_rating"], summary["recent"]) == (0, None, [])
    assert "calls with feedback" in run(env, "endpoints", "feedback", "shop").stdout
    assert run_json(env, "endpoints", "captured", "shop", "--limit", "5") == []
    assert "no captured calls" in run(env, "endpoints", "captured", "shop").stdout

    run_json(env, "consumers", "create", "acme")
    opted_out = run_json(env, "consumers", "update", "acme", "--no-capture")
    assert opted_out["capture"] is False
    assert run_json(env, "consumers", "show", "acme")["capture"] is False
    assert run_json(env, "consumers", "update", "acme", "--capture")["capture"] is True


def _captured(live_server: LiveServer, consumer: str, request_id: str) -> None:
    """One captured call of ``consumer`` on shop, as a replica stores and indexes it."""
    app = live_server.cloud.app
    with app.state.db.write() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.name == "shop"))
        cid = s.scalar(select(Consumer.id).where(Consumer.name == consumer))
        assert ep is not None
        line = json.dumps({"request_id": request_id, "input": {"text": "private"}}) + "\n"
        obj = app.state.store.write_blob(ep.workspace_id, [line.encode()], max_bytes=10**6)
        record = CapturedIn(
            request_id=request_id,
            time=utcnow(),
            consumer_id=cid,
            consumer_name=consumer,
            model_version_id=ep.version_id,
            route="predict",
            status=200,
            object=obj.sha256,
            line=0,
            size=len(line),
            has_inputs=True,
            has_outputs=False,
        )
        capture_service.ingest_captured(s, ep, CaptureBatch(records=[record]), app.state.store)


def test_forget_asks_first_and_says_the_consumer_stays(
    env: dict[str, str], served: None, live_server: LiveServer
) -> None:
    assert run(env, "deploy", "m:1", "--endpoint", "shop", "--capture", "1").exit_code == 0
    run_json(env, "consumers", "create", "acme")
    _captured(live_server, "acme", "req-000001")
    assert len(run_json(env, "endpoints", "captured", "shop")) == 1

    refused = run(env, "consumers", "forget", "acme", "-o", "json")
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["error"]["code"] == "confirmation_required"
    assert len(run_json(env, "endpoints", "captured", "shop")) == 1

    done = run_json(env, "consumers", "forget", "acme", "--yes")
    assert done == {"consumer": "acme", "records": 1, "feedback": 0, "blobs_removed": 1}
    assert run_json(env, "endpoints", "captured", "shop") == []
    table = run(env, "consumers", "forget", "acme", "-y")
    assert table.exit_code == 0, table.output
    assert "erased 0 captured call(s)" in table.stdout
    assert "stays a consumer and its keys keep working" in " ".join(table.stdout.split())
    assert run_json(env, "consumers", "show", "acme")["active_keys"] == 1
    missing = run(env, "consumers", "forget", "ghost", "--yes", "-o", "json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
