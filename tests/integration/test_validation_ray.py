"""Validation before deploy on a real Ray Serve behind a live control plane, through the front
door (REST and the SDK, as `gureum deploy` and `gureum models validate` do): a version whose
smoke test fails never takes traffic, the deploy answers with the failed checks and the
endpoint keeps answering with the old version; `models validate` records a report as a Ray
task. The control-plane rules alone are in test_validations_api.py."""

from __future__ import annotations

import pytest

from gureum.client.endpoints import EndpointFailed
from tests.integration.test_serving_ray import (  # noqa: F401 (fixtures)
    ROWS,
    SMALL,
    Cloud,
    cloud,
    deploy,
    model_dirs,
    predict,
    serve_port,
    wait_for,
)

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

SAMPLES = ROWS * 4  # rows of the orders table without its target


def test_a_version_that_fails_its_smoke_test_never_takes_traffic(
    cloud: Cloud,  # noqa: F811
) -> None:
    ep = deploy(cloud, "t-valid", config=SMALL, sample_inputs=SAMPLES)
    first = predict(ep["url"], cloud.data_key)
    assert first.status_code == 200 and first.json()["model"] == "orders:1"
    client = cloud.client()
    passed = client.models.validation("orders", 1)
    assert (passed.state, passed.kind, passed.endpoint, passed.samples) == (
        "passed",
        "deploy",
        "t-valid",
        4,
    )
    names = [c.name for c in passed.checks]
    # output_schema too where the recipe's spec declares its output type.
    assert {"load", "predict", "outputs", "units", "latency", "memory"} <= set(names)
    assert all(c.passed for c in passed.checks) and names[0] == "load"
    assert passed.latency_max_ms is not None and passed.latency_max_ms > 0

    cloud.register("faulty")  # v2: loads, then fails on every row
    with pytest.raises(EndpointFailed) as failed:
        client.endpoints.deploy(
            "t-valid", "orders:2", sample_inputs=SAMPLES, wait=True, timeout_s=240
        )
    message = failed.value.message
    assert (
        "deploy of version 2 failed validation before taking traffic: predict: input 0:" in message
    )
    assert message.endswith("version 1 keeps serving")
    out = client.endpoints.get("t-valid")
    assert (out.version, out.canary) == (1, None)
    events = client.endpoints.events("t-valid")
    assert events[-1].kind == "failed" and events[-1].data["checks"][0]["name"] == "predict"
    # The old version answers, and only it ever did.
    again = predict(ep["url"], cloud.data_key)
    assert again.status_code == 200 and again.json()["model"] == "orders:1"
    report = client.models.validation("orders", 2)
    assert (report.state, report.passed) == ("failed", False)
    assert [c.name for c in report.checks if not c.passed] == ["predict"]


def test_models_validate_runs_as_a_ray_task_and_records_the_report(
    cloud: Cloud,  # noqa: F811
) -> None:
    client = cloud.client()
    good = client.models.validate("orders", 1, sample_inputs=SAMPLES, timeout_s=240)
    assert (good.state, good.passed, good.kind, good.endpoint) == ("passed", True, "manual", None)
    assert good.samples == 4 and good.load_ms is not None
    cloud.register("broken")  # v2: its model file is not a model
    bad = client.models.validate("orders", 2, sample_inputs=SAMPLES, timeout_s=240)
    assert (bad.state, bad.passed) == ("failed", False)
    assert [c.name for c in bad.checks] == ["load"] and not bad.checks[0].passed
    # Kept with the version: what `gureum models show orders:2` prints.
    assert client.models.validation("orders", 2).id == bad.id
