"""The dashboard's models, datasets and consumers pages through the front door (no browser):
what they show, their filters and pages, deep links per version, roles, and the promote call
the model version page makes (CSRF, the gate's verdict in the answer)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from gureum.server.services import endpoints as endpoints_service
from gureum.server.services import models as models_service
from gureum.web import catalog
from tests.conftest import Cloud
from tests.integration.page_helpers import gate, model_versions, push_table
from tests.integration.portal_helpers import make_consumer, ship_consumer_usage
from tests.integration.web_helpers import csrf_of, key_of_role, recorded_endpoint, sign_in


def browser(cloud: Cloud) -> TestClient:
    return TestClient(cloud.app, base_url="http://testserver", raise_server_exceptions=True)


def signed(cloud: Cloud, key: str | None = None) -> TestClient:
    web = browser(cloud)
    assert sign_in(web, key or cloud.admin_key).status_code == 303
    return web


def cells(html: str, table_id: str) -> list[list[str]]:
    """The text of each body row of the table ``table_id``."""
    found = re.search(rf'<table id="{table_id}">(.*?)</table>', html, re.S)
    assert found, f"no table {table_id}"
    body = found.group(1).split("<tbody>", 1)[-1]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    return [
        [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", r, re.S)
        ]
        for r in rows
    ]


def test_models_list_filters_and_pages(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "PAGE_SIZE", 2)
    admin = cloud.http()
    for name in ("alpha-clf", "beta-clf", "gamma-gen"):
        model_versions(admin, name, [{"accuracy": 0.5}])
    web = signed(cloud)
    first = web.get("/models")
    assert [r[0] for r in cells(first.text, "models")] == ["alpha-clf", "beta-clf"]
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert nxt
    second = web.get(nxt.group(1).replace("&amp;", "&"))
    assert [r[0] for r in cells(second.text, "models")] == ["gamma-gen"]
    assert 'rel="next"' not in second.text
    assert [r[0] for r in cells(web.get("/models?q=clf").text, "models")] == [
        "alpha-clf",
        "beta-clf",
    ]
    assert "No models whose name contains" in web.get("/models?q=100%25").text  # % is literal


def test_a_model_page_compares_versions_and_links_each(cloud: Cloud, tmp_path: Path) -> None:
    push_table(cloud.client(), tmp_path)
    model_versions(
        cloud.http(),
        "clf",
        [{"accuracy": 0.8, "loss": 0.5}, {"accuracy": 0.93, "loss": 0.2, "note": "text"}],
        dataset="rows:1",
    )
    web = signed(cloud)
    page = web.get("/models/clf")
    assert page.status_code == 200
    assert cells(page.text, "compare") == [["accuracy", "0.8", "0.93"], ["loss", "0.5", "0.2"]]
    assert [r[0] for r in cells(page.text, "versions")] == ["clf:2", "clf:1"]  # newest first
    assert 'href="/models/clf/versions/1"' in page.text
    assert 'id="metrics-chart"' in page.text
    assert [r[0] for r in cells(web.get("/models/clf?stage=none").text, "versions")] == [
        "clf:2",
        "clf:1",
    ]
    assert "No production versions" in web.get("/models/clf?stage=production").text
    assert web.get("/models/clf?stage=bogus").status_code == 404
    version = web.get("/models/clf/versions/2")
    assert version.status_code == 200
    assert 'href="/datasets/rows/versions/1"' in version.text  # lineage, deep-linked
    assert web.get("/models/clf/versions/7").status_code == 404
    assert web.get("/models/nope").status_code == 404


def test_promote_buttons_by_role_and_the_gates_verdict(cloud: Cloud) -> None:
    admin = cloud.http()
    model_versions(admin, "clf", [{"accuracy": 0.8}, {"accuracy": 0.93}])
    gate(admin, "clf", "accuracy", 0.9)
    owner = signed(cloud)
    assert 'data-promote="production"' in owner.get("/models/clf/versions/1").text
    viewer_key, _ = key_of_role(admin, "v", "viewer")
    viewer = signed(cloud, viewer_key)
    page = viewer.get("/models/clf/versions/1")
    assert page.status_code == 200
    assert "data-promote" not in page.text
    promote = "/v1/models/clf/versions/1/promote"
    body = {"stage": "production"}
    assert (
        viewer.post(promote, json=body, headers={"X-CSRF-Token": csrf_of(viewer)}).status_code
        == 403
    )
    assert owner.post(promote, json=body).status_code == 403  # no CSRF token
    token = csrf_of(owner)
    failed = owner.post(promote, json=body, headers={"X-CSRF-Token": token})
    assert failed.status_code == 409
    error = failed.json()["error"]
    assert error["code"] == "gate_failed"
    assert [c["actual"] for c in error["details"]["failed"]] == [0.8]
    passed = owner.post(
        "/v1/models/clf/versions/2/promote", json=body, headers={"X-CSRF-Token": token}
    )
    assert passed.status_code == 200, passed.text
    assert [c["passed"] for c in passed.json()["checks"]] == [True]
    assert "data-promote" not in owner.get("/models/clf/versions/2").text  # already there


def test_datasets_pages_show_versions_files_and_the_first_rows(
    cloud: Cloud, tmp_path: Path
) -> None:
    client = cloud.client()
    push_table(client, tmp_path, "rows")
    push_table(client, tmp_path, "rows")  # same content, a second version
    push_table(client, tmp_path, "other")
    web = signed(cloud)
    listed = web.get("/datasets?q=row")
    assert [r[0] for r in cells(listed.text, "datasets")] == ["rows"]
    ds = web.get("/datasets/rows")
    assert [r[0] for r in cells(ds.text, "versions")] == ["rows:2", "rows:1"]
    assert [r[2] for r in cells(ds.text, "versions")] == ["1", "1"]  # files
    version = web.get("/datasets/rows/versions/1")
    assert version.status_code == 200
    assert cells(version.text, "preview")[:2] == [["0", "0", "0"], ["1", "1", "1"]]
    assert [r[0] for r in cells(version.text, "files")] == ["rows.csv"]
    assert web.get("/datasets/rows/versions/3").status_code == 404
    assert web.get("/datasets/nope").status_code == 404


@pytest.mark.usefixtures("loadable_anything")
def test_consumers_page_shows_usage_and_invoices_of_the_month(cloud: Cloud) -> None:
    admin = cloud.http()
    recorded_endpoint(admin)
    make_consumer(admin, "acme", price_per_request=0.25, monthly_quota=1000)
    make_consumer(admin, "idle")
    ship_consumer_usage(cloud, "acme", 4)
    viewer_key, _ = key_of_role(admin, "v", "viewer")
    page = signed(cloud, viewer_key).get("/consumers")
    assert page.status_code == 200
    rows = {r[0]: r for r in cells(page.text, "consumers")}
    assert rows["acme"][5:8] == ["5", "1", "1.00 USD"]  # calls (4 served, 1 failed), billed
    assert rows["idle"][5] == "0"
    invoices = {r[0]: r for r in cells(page.text, "invoices")}
    assert invoices["acme"][-1] == "1.00 USD"
    assert invoices["idle"][-1] == "0.00 USD"
    empty = signed(cloud).get("/consumers?period=2020-01")
    assert all(r[5] == "0" for r in cells(empty.text, "consumers"))
    assert signed(cloud).get("/consumers?period=2020-13").status_code == 422


@pytest.fixture
def loadable_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    # The endpoint only needs to exist for metering; its files are stand-ins.
    for module in (models_service, endpoints_service):
        monkeypatch.setattr(module, "require_loadable", lambda *a, **k: None)


def test_new_pages_need_a_session_and_carry_the_security_headers(
    cloud: Cloud, tmp_path: Path
) -> None:
    push_table(cloud.client(), tmp_path)
    model_versions(cloud.http(), "clf", [{"accuracy": 0.5}])
    paths = [
        "/models",
        "/models/clf",
        "/models/clf/versions/1",
        "/datasets",
        "/datasets/rows",
        "/datasets/rows/versions/1",
        "/consumers",
    ]
    anonymous = browser(cloud)
    for path in paths:
        assert anonymous.get(path, follow_redirects=False).status_code == 303
    web = signed(cloud)
    for path in paths:
        page = web.get(path)
        assert page.status_code == 200, path
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text


def test_an_image_dataset_version_shows_thumbnails_the_session_can_load(
    cloud: Cloud, tmp_path: Path
) -> None:

    folder = tmp_path / "pics"
    for label, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (8, 8), color).save(folder / label / f"{label}.png")
    cloud.client().datasets.push("pics", folder)
    web = signed(cloud)
    page = web.get("/datasets/pics/versions/1")
    assert page.status_code == 200
    sources = re.findall(r'<img src="(/v1/blobs/[0-9a-f]{64})"', page.text)
    assert len(sources) == 2
    for src in sources:
        image = web.get(src)  # the session cookie loads it, as the browser does
        assert image.status_code == 200
        assert image.content.startswith(b"\x89PNG")
    assert browser(cloud).get(sources[0]).status_code == 401  # no session, no image
