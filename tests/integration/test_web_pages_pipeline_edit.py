"""The pipeline page's edit form and the drift page's chart through the front door (no
browser): developers and up get the form, filled with the pipeline's settings, and its PATCH
needs the session's CSRF token; a viewer sees no form and is refused; the drift page carries
the chart's container and scripts (no inline script). SQLite and PostgreSQL."""

from __future__ import annotations

import re

from tests.integration.test_consumers_api import member_key
from tests.integration.test_endpoints_api import Env
from tests.integration.test_pipelines_api import capture
from tests.integration.test_web_pages import signed
from tests.integration.test_web_pages_ops import flywheel
from tests.integration.web_helpers import csrf_of

__all__ = ["flywheel"]  # the fixture, shared with test_web_pages_ops


def _value(html: str, name: str) -> str:
    found = re.search(rf'<input id="[^"]+" name="{name}"[^>]*value="([^"]*)"', html)
    assert found, f"no field {name}"
    return found.group(1)


def test_developers_edit_the_pipeline_from_its_page(flywheel: Env) -> None:
    cloud = flywheel.cloud
    dev = signed(cloud, member_key(cloud, "dev", "developer"))
    page = dev.get("/pipelines/weekly")
    assert page.status_code == 200
    assert 'id="pipeline-edit-form"' in page.text
    assert 'data-patch="/v1/pipelines/weekly"' in page.text
    assert '<script src="/static/pipeline_edit.js' in page.text
    assert _value(page.text, "canary_percent") == "10.0"
    assert _value(page.text, "model") == "returns"
    assert 'name="enabled" type="checkbox" data-was="true" checked' in page.text
    assert re.search(r'<dd id="triggers">on</dd>', page.text)

    # The form's call, as pipeline_edit.js makes it: the session and its CSRF token.
    body = {"canary_percent": 25, "schedule": "0 3 * * 1", "enabled": False}
    assert dev.patch("/v1/pipelines/weekly", json=body).status_code == 403  # no CSRF token
    token = csrf_of(dev, "/pipelines/weekly")
    bad = dev.patch(
        "/v1/pipelines/weekly", json={"canary_percent": 100}, headers={"X-CSRF-Token": token}
    )
    assert bad.status_code == 422 and "canary_percent" in bad.text
    done = dev.patch("/v1/pipelines/weekly", json=body, headers={"X-CSRF-Token": token})
    assert done.status_code == 200, done.text
    page = dev.get("/pipelines/weekly")
    assert _value(page.text, "canary_percent") == "25.0"
    assert _value(page.text, "schedule") == "0 3 * * 1"
    assert 'name="enabled" type="checkbox" data-was="false">' in page.text
    assert re.search(r'<dd id="triggers">paused', page.text)


def test_a_viewer_sees_no_edit_form_and_is_refused(flywheel: Env) -> None:
    cloud = flywheel.cloud
    viewer = signed(cloud, member_key(cloud, "vera", "viewer"))
    page = viewer.get("/pipelines/weekly")
    assert page.status_code == 200
    assert "pipeline-edit-form" not in page.text and "pipeline_edit.js" not in page.text
    token = csrf_of(viewer, "/pipelines/weekly")
    r = viewer.patch(
        "/v1/pipelines/weekly", json={"canary_percent": 5}, headers={"X-CSRF-Token": token}
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


def test_the_drift_page_carries_the_chart(flywheel: Env) -> None:
    owner = signed(flywheel.cloud)
    capture(flywheel)
    page = owner.get("/pipelines/weekly/drift?window=3600")
    assert page.status_code == 200, page.text
    chart = re.search(r'<div id="drift-chart"[^>]*>', page.text)
    assert chart, page.text
    assert 'data-endpoint="shop"' in chart.group(0) and 'data-window="3600"' in chart.group(0)
    assert 'data-buckets="24"' in chart.group(0)
    for script in ("vendor/uPlot.iife.min.js", "charts.js", "drift_chart.js"):
        assert f'<script src="/static/{script}' in page.text
    assert "<script>" not in page.text  # the CSP forbids inline script
    day = owner.get("/pipelines/weekly/drift")
    assert 'data-window="86400"' in day.text
    assert owner.get("/static/drift_chart.js").status_code == 200
