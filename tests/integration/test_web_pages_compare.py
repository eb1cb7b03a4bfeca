"""The dashboard's run comparison, sample grids, downloads and create forms through the front
door (no browser): ``/jobs/compare`` with its params, final metrics (best marked) and grids,
bad input said in words with a 4xx, downloads as named attachments of this workspace only
(no path escapes), and the admin and pipelines forms' REST calls by role (CSRF required, a
key's secret never on a later page). SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from gureum.server.db.tables import Job, ModelVersion
from gureum.server.services import job_results
from tests.conftest import Cloud
from tests.integration.page_helpers import model_versions, push_table
from tests.integration.test_blobs_api import member_key
from tests.integration.test_web_pages import cells, signed
from tests.integration.web_helpers import csrf_of, key_of_role


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def stored(admin: TestClient, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    assert admin.put(f"/v1/blobs/{digest}", content=data).status_code in (200, 201)
    return digest


def trained(
    cloud: Cloud,
    params: dict[str, Any],
    curve: list[float],
    final: dict[str, Any],
    outputs: dict[str, bytes] | None = None,
) -> str:
    """A finished training job (no cluster): its metrics by step, final metrics and outputs,
    reported the way a running attempt reports them."""
    admin = cloud.client()
    job = admin.jobs.train("tabular", "rows", model="rows", params={"target": "label", **params})
    items: list[dict[str, Any]] = [
        {"type": "metrics", "step": (i + 1) * 10, "epoch": i, "values": {"loss": v}}
        for i, v in enumerate(curve)
    ]
    for path, data in (outputs or {}).items():
        digest = stored(cloud.http(), data)
        items.append({"type": "output", "path": path, "sha256": digest, "size": len(data)})
    with cloud.app.state.db.write() as s:
        row = s.get(Job, job.id)
        assert row is not None
        job_results.apply(s, row, items, 1 << 20)
        row.state, row.metrics = "succeeded", final
    return job.id


@pytest.fixture
def runs(cloud: Cloud, tmp_path: Path) -> list[str]:
    push_table(cloud.client(), tmp_path)
    first = trained(
        cloud,
        {"max_depth": 3},
        [0.9, 0.5],
        {"accuracy": 0.8, "loss": 0.5},
        {"samples/epoch-0001.png": png((255, 0, 0)), "samples/epoch-0002.png": png((0, 255, 0))},
    )
    second = trained(cloud, {"max_depth": 8}, [0.8, 0.6, 0.7], {"accuracy": 0.9, "loss": 0.7})
    return [first, second]


def test_compare_shows_params_final_metrics_with_the_best_and_grids(
    cloud: Cloud, runs: list[str]
) -> None:
    web = signed(cloud)
    jobs = web.get("/jobs")
    assert 'form="compare-form"' in jobs.text and 'action="/jobs/compare"' in jobs.text
    # The checkboxes submit ids once per job; the page links itself as ids=a,b.
    page = web.get("/jobs/compare", params=[("ids", runs[0]), ("ids", runs[1])])
    assert page.status_code == 200, page.text
    link = f"/jobs/compare?ids={runs[0]},{runs[1]}"
    assert f'href="{link}"' in page.text
    again = web.get(link)
    assert again.status_code == 200 and f'data-ids="{runs[0]},{runs[1]}"' in again.text
    assert cells(page.text, "final-metrics") == [
        ["accuracy", "0.8", "0.9 best"],  # more is better
        ["loss", "0.5 best", "0.7"],  # less is better
    ]
    params = {r[0]: r[1:] for r in cells(page.text, "params")}
    assert params["max_depth (differs)"] == ["3", "8"]
    assert params["target"] == ["label", "label"]
    # The latest epoch's grid of the first run; none for the second.
    grid = f"/v1/jobs/{runs[0]}/outputs/samples/epoch-0002.png"
    assert f'src="{grid}"' in page.text
    assert "epoch 2" in page.text and "No sample grid." in page.text
    assert web.get(grid).content == png((0, 255, 0))  # the session loads it
    # The curves come from the REST API the page's script reads with the session.
    curve = web.get(f"/v1/jobs/{runs[1]}/metrics").json()["items"]
    assert [m["values"]["loss"] for m in curve] == [0.8, 0.6, 0.7]


def test_model_versions_compare_by_the_jobs_that_trained_them(
    cloud: Cloud, runs: list[str]
) -> None:
    model_versions(cloud.http(), "clf", [{"accuracy": 0.5}, {"accuracy": 0.8}, {"accuracy": 0.9}])
    with cloud.app.state.db.write() as s:  # as the training jobs register them
        for number, jid in ((2, runs[0]), (3, runs[1])):
            v = s.scalar(select(ModelVersion).where(ModelVersion.version == number))
            assert v is not None
            v.job_id = jid
    web = signed(cloud)
    page = web.get("/jobs/compare?versions=clf:2,clf:3")
    assert page.status_code == 200, page.text
    assert f'data-ids="{runs[0]},{runs[1]}"' in page.text
    uploaded = web.get("/jobs/compare?versions=clf:1,clf:2")
    assert uploaded.status_code == 404
    assert "clf:1 was uploaded, not trained by a job here." in uploaded.text
    assert web.get("/jobs/compare?versions=clf:9,clf:2").status_code == 404
    # The version page shows the sample grids of the job that trained it.
    assert f'id="job-samples" data-job="{runs[0]}"' in web.get("/models/clf/versions/2").text
    assert 'id="job-samples"' not in web.get("/models/clf/versions/1").text


def test_compare_refuses_bad_input_in_words(cloud: Cloud, runs: list[str]) -> None:
    web = signed(cloud)
    unknown = web.get(f"/jobs/compare?ids={runs[0]},nope")
    assert unknown.status_code == 404
    assert "There is no job &#39;nope&#39; in this workspace" in unknown.text
    too_many = web.get("/jobs/compare?ids=" + ",".join([*runs, "a", "b", "c"]))
    assert too_many.status_code == 422
    assert "Pick 2 to 4 runs to compare; 5 were given." in too_many.text
    one = web.get(f"/jobs/compare?ids={runs[0]},{runs[0]}")
    assert one.status_code == 422 and "only 1 was given" in one.text
    assert web.get("/jobs/compare?ids=" + "x" * 500).status_code == 422
    assert web.get("/jobs/compare?versions=nocolon").status_code == 422
    # Another workspace's runs are not there for it.
    stranger = signed(cloud, member_key(cloud, "owner", workspace="rival"))
    assert stranger.get(f"/jobs/compare?ids={runs[0]},{runs[1]}").status_code == 404
    # No session: to the sign-in form, the comparison kept as where to go back.
    anonymous = TestClient(cloud.app).get(f"/jobs/compare?ids={runs[0]}", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")


def test_downloads_are_named_attachments_of_this_workspace_only(
    cloud: Cloud, runs: list[str], tmp_path: Path
) -> None:
    model_versions(cloud.http(), "clf", [{"accuracy": 0.5}])
    viewer = signed(cloud, member_key(cloud, "viewer"))  # reading is enough
    got = viewer.get(f"/download/jobs/{runs[0]}/samples/epoch-0001.png")
    assert got.status_code == 200
    assert got.content == png((255, 0, 0))
    assert got.headers["content-disposition"] == (
        "attachment; filename=\"epoch-0001.png\"; filename*=UTF-8''epoch-0001.png"
    )
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in got.headers["content-security-policy"]
    weights = viewer.get("/download/models/clf/versions/1/weights.bin")
    assert weights.status_code == 200 and len(weights.content) == 32
    assert 'filename="weights.bin"' in weights.headers["content-disposition"]
    table = viewer.get("/download/datasets/rows/versions/1/rows.csv")
    assert table.status_code == 200 and table.content.startswith(b"x,y,label\n")
    assert 'filename="rows.csv"' in table.headers["content-disposition"]
    # The pages link them.
    assert (
        "/download/models/clf/versions/1/weights.bin" in viewer.get("/models/clf/versions/1").text
    )
    assert (
        "/download/datasets/rows/versions/1/rows.csv"
        in viewer.get("/datasets/rows/versions/1").text
    )

    # A path is only a name looked up among the job's or version's files: nothing escapes.
    for bad in (
        f"/download/jobs/{runs[0]}/%2e%2e/%2e%2e/etc/passwd",
        f"/download/jobs/{runs[0]}/samples/..%2f..%2fgureum.db",
        "/download/models/clf/versions/1/..%2f..%2fgureum.db",
        "/download/datasets/rows/versions/1/%2fetc%2fpasswd",
        f"/download/jobs/{runs[0]}/" + "a" * 2000,
    ):
        r = viewer.get(bad)
        assert r.status_code == 404, bad
        assert "Not found" in r.text
    assert viewer.get("/download/datasets/rows/versions/two/rows.csv").status_code == 422
    # Another workspace's job, model and dataset do not exist for its members.
    stranger = signed(cloud, member_key(cloud, "owner", workspace="rival"))
    for path in (
        f"/download/jobs/{runs[0]}/samples/epoch-0001.png",
        "/download/models/clf/versions/1/weights.bin",
        "/download/datasets/rows/versions/1/rows.csv",
    ):
        assert stranger.get(path).status_code == 404, path
    anonymous = TestClient(cloud.app)
    r = anonymous.get("/download/models/clf/versions/1/weights.bin", follow_redirects=False)
    assert r.status_code == 303


def test_job_page_shows_preemptible_and_the_grids_section(cloud: Cloud, runs: list[str]) -> None:
    with cloud.app.state.db.write() as s:
        row = s.get(Job, runs[1])
        assert row is not None
        row.preemptible = False
    web = signed(cloud)
    first, second = web.get(f"/jobs/{runs[0]}").text, web.get(f"/jobs/{runs[1]}").text
    pre = re.compile(r'<dd id="job-preemptible">([^<]*)</dd>')
    assert pre.search(first).group(1).startswith("yes")  # type: ignore[union-attr]
    assert pre.search(second).group(1) == "no"  # type: ignore[union-attr]
    assert f'id="job-samples" data-job="{runs[0]}"' in first
    assert "/static/outputs.js" in first
    listed = web.get(f"/v1/jobs/{runs[0]}/outputs").json()["items"]
    assert [o["path"] for o in listed] == ["samples/epoch-0001.png", "samples/epoch-0002.png"]


def test_a_grid_written_again_while_training_is_updated(cloud: Cloud, runs: list[str]) -> None:
    newer = png((0, 0, 255))
    digest = stored(cloud.http(), newer)
    item = {"type": "output", "path": "samples/epoch-0002.png", "sha256": digest, "size": 1}
    with cloud.app.state.db.write() as s:
        row = s.get(Job, runs[0])
        assert row is not None
        job_results.apply(s, row, [{**item, "size": len(newer)}], 1 << 20)
    web = signed(cloud)
    assert web.get(f"/download/jobs/{runs[0]}/samples/epoch-0002.png").content == newer
    # At the end, the stored artifacts win (the grid's last bytes), and nothing is doubled.
    final = png((9, 9, 9))
    fd = stored(cloud.http(), final)
    with cloud.app.state.db.write() as s:
        row = s.get(Job, runs[0])
        assert row is not None
        out = {"path": "samples/epoch-0002.png", "sha256": fd, "size": len(final)}
        job_results.apply_success(s, row, {"metrics": {"accuracy": 0.8}, "outputs": [out]})
    paths = [o["path"] for o in web.get(f"/v1/jobs/{runs[0]}/outputs").json()["items"]]
    assert paths == ["samples/epoch-0001.png", "samples/epoch-0002.png"]
    assert web.get(f"/download/jobs/{runs[0]}/samples/epoch-0002.png").content == final


def test_admin_forms_add_a_member_and_show_a_new_key_once(cloud: Cloud) -> None:
    admin = signed(cloud)
    members = admin.get("/admin")
    assert 'id="member-form"' in members.text and 'data-post="/v1/users"' in members.text
    keys_page = admin.get("/admin/keys")
    assert 'id="key-form"' in keys_page.text and 'data-post="/v1/keys"' in keys_page.text
    for text in (members.text, keys_page.text):  # the script that sends them is served
        script = re.search(r'src="(/static/create\.js)\?v=', text)
        assert script and admin.get(script.group(1)).status_code == 200

    # The forms' calls, as create.js makes them: the session and the page's CSRF token.
    assert admin.post("/v1/users", json={"name": "alice", "role": "developer"}).status_code == 403
    token = csrf_of(admin, "/admin")
    added = admin.post(
        "/v1/users", json={"name": "alice", "role": "developer"}, headers={"X-CSRF-Token": token}
    )
    assert added.status_code == 201, added.text
    assert ["alice", "—", "developer"] in [
        r[:3] for r in cells(admin.get("/admin").text, "members")
    ]
    again = admin.post("/v1/users", json={"name": "alice"}, headers={"X-CSRF-Token": token})
    assert again.status_code == 409
    bad = admin.post("/v1/users", json={"name": "Bad Name"}, headers={"X-CSRF-Token": token})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"

    made = admin.post(
        "/v1/keys",
        json={"name": "laptop", "user": "alice", "expires_in_days": 30},
        headers={"X-CSRF-Token": token},
    )
    assert made.status_code == 201, made.text
    secret = made.json()["token"]
    assert secret.startswith("gk_")
    # The new key works, and no later page (keys, audit log) shows its secret.
    assert cloud.http(secret).get("/v1/whoami").json()["user"] == "alice"
    for path in ("/admin/keys", "/admin/audit", "/admin"):
        text = admin.get(path).text
        assert secret.split("_", 2)[2] not in text, path
    assert made.json()["key_id"] in admin.get("/admin/keys").text

    # Below admin: no admin page, and the API refuses the forms' calls.
    for role in ("viewer", "developer"):
        other = signed(cloud, key_of_role(cloud.http(), f"{role}-k", role)[0])
        assert other.get("/admin").status_code == 403
        assert other.get("/admin/keys").status_code == 403
        h = {"X-CSRF-Token": csrf_of(other, "/jobs")}
        refused = other.post("/v1/users", json={"name": "mallory"}, headers=h)
        assert refused.status_code == 403


def test_pipeline_form_for_developers_only(cloud: Cloud) -> None:
    admin = signed(cloud)
    page = admin.get("/pipelines")
    assert 'id="pipeline-form"' in page.text and 'data-post="/v1/pipelines"' in page.text
    viewer = signed(cloud, key_of_role(cloud.http(), "v", "viewer")[0])
    page = viewer.get("/pipelines")
    assert page.status_code == 200 and "pipeline-form" not in page.text
    body = {"name": "weekly", "model": "m", "endpoint": "shop", "dataset": "orders"}
    h = {"X-CSRF-Token": csrf_of(viewer, "/pipelines")}
    assert viewer.post("/v1/pipelines", json=body, headers=h).status_code == 403
    # The form's call for a developer: refused in words when the model does not exist.
    h = {"X-CSRF-Token": csrf_of(admin, "/pipelines")}
    r = admin.post("/v1/pipelines", json={**body, "on_drift": 0.3}, headers=h)
    assert r.status_code in (404, 422), r.text
    assert r.json()["error"]["message"]


def test_a_model_version_shows_its_own_pictures(cloud: Cloud) -> None:
    admin = cloud.http()
    picture, weights = png((1, 2, 3)), b"w" * 16
    files = [
        {"path": "samples/grid.png", "sha256": stored(admin, picture), "size": len(picture)},
        {"path": "weights.bin", "sha256": stored(admin, weights), "size": len(weights)},
    ]
    made = admin.post("/v1/models/gen/versions", json={"files": files})
    assert made.status_code == 201, made.text
    web = signed(cloud)
    page = web.get("/models/gen/versions/1").text
    assert f'<img src="/v1/blobs/{files[0]["sha256"]}" alt="samples/grid.png"' in page
    assert f"/v1/blobs/{files[1]['sha256']}" not in page  # not a picture
    assert 'data-job=""' in page  # uploaded: no job's grids to poll
    assert web.get(f"/v1/blobs/{files[0]['sha256']}").content == picture
