"""Datasets over REST: pushing versions, reading them back, deleting, and every way it fails."""

from __future__ import annotations

import io
import random
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from gureum.server.db.tables import (
    AuditEvent,
    Dataset,
    DatasetFile,
    DatasetVersion,
)
from gureum.server.services.datasets import add_reference, remove_reference, resolve_version
from tests.conftest import Cloud, LiveServer
from tests.integration.test_blobs_api import limit, member_key, sha, stored_blobs, tmp_files


def png(color: tuple[int, int, int], size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


GARMENTS = {
    "shirt/a.png": png((200, 0, 0)),
    "shirt/b.png": png((180, 0, 0)),
    "dress/a.png": png((0, 200, 0)),
    "dress/b.png": png((0, 180, 0)),
}


def upload(h: TestClient | httpx.Client, files: dict[str, bytes]) -> None:
    for data in files.values():
        r = h.put(f"/v1/blobs/{sha(data)}", content=data)
        assert r.status_code == 201, r.text


def manifest(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [{"path": p, "sha256": sha(d), "size": len(d)} for p, d in files.items()]


def push(
    h: TestClient | httpx.Client, name: str, files: dict[str, bytes], **opts: Any
) -> httpx.Response:
    upload(h, files)
    return h.post(f"/v1/datasets/{name}/versions", json={"files": manifest(files), **opts})


def counts(cloud: Cloud) -> tuple[int, int, int]:
    with cloud.app.state.db.read() as s:
        return (
            s.scalar(select(func.count()).select_from(Dataset)) or 0,
            s.scalar(select(func.count()).select_from(DatasetVersion)) or 0,
            s.scalar(select(func.count()).select_from(DatasetFile)) or 0,
        )


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar_gz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def push_archive(h: TestClient, name: str, body: bytes, **params: Any) -> httpx.Response:
    return h.post(f"/v1/datasets/{name}/versions/archive", content=body, params=params)


# -- pushing and reading ------------------------------------------------------------------


def test_push_then_read_back_everything(cloud: Cloud) -> None:
    h = cloud.http()
    r = push(h, "garments", GARMENTS, message="first", description="our designs")
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["dataset"] == "garments" and v["version"] == 1 and v["kind"] == "images"
    assert v["file_count"] == 4 and v["total_bytes"] == sum(len(d) for d in GARMENTS.values())
    assert v["schema"]["classes"] == {"dress": 2, "shirt": 2}
    assert v["schema"]["image_sizes"] == {"24x24": 4}
    assert v["split"]["unit"] == "file" and v["split"]["train"] + v["split"]["validation"] == 4
    assert v["pushed_by"] == "admin" and v["message"] == "first"
    assert len(v["preview"]["images"]) == 4 and v["preview"]["images"][0]["thumbnail"]

    assert h.get("/v1/datasets/garments/versions/1").json() == v
    assert h.get("/v1/datasets/garments/versions/latest").json() == v
    d = h.get("/v1/datasets/garments").json()
    assert d["name"] == "garments" and d["description"] == "our designs"
    assert d["latest_version"] == 1 and d["version_count"] == 1
    assert d["updated_at"] == v["created_at"]

    files = h.get("/v1/datasets/garments/versions/1/files").json()
    assert files["next_cursor"] is None
    assert [f["path"] for f in files["items"]] == sorted(GARMENTS)
    first = files["items"][0]
    assert first["kind"] == "image" and first["label"] == "dress"
    assert first["split"] in ("train", "validation")
    # Pulling back: every file's bytes are identical.
    for f in files["items"]:
        assert h.get(f"/v1/blobs/{f['sha256']}").content == GARMENTS[f["path"]]


def test_csv_dataset_records_columns_and_row_split(cloud: Cloud) -> None:
    body = b"garment,price,returned\n" + b"".join(
        f"shirt,{10 + i}.5,{'yes' if i % 3 else 'no'}\n".encode() for i in range(200)
    )
    r = push(cloud.http(), "orders", {"orders.csv": body}, validation_ratio=0.3, seed=4)
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["kind"] == "table"
    assert v["schema"]["columns"] == [
        {"name": "garment", "dtype": "str"},
        {"name": "price", "dtype": "float"},
        {"name": "returned", "dtype": "str"},
    ]
    assert v["schema"]["rows"] == 200
    assert v["split"]["unit"] == "row" and v["split"]["seed"] == 4
    assert v["split"]["train"] + v["split"]["validation"] == 200
    assert v["preview"]["rows"][0] == {"garment": "shirt", "price": 10.5, "returned": "no"}


def test_versions_count_up_and_unchanged_files_are_stored_once(cloud: Cloud) -> None:
    h = cloud.http()
    assert push(h, "garments", GARMENTS).status_code == 201
    changed = dict(GARMENTS)
    changed["shirt/c.png"] = png((1, 2, 3))
    r = push(h, "garments", changed)
    assert r.status_code == 201 and r.json()["version"] == 2
    assert len(stored_blobs(cloud)) == len(GARMENTS) + 1
    # The split of a file does not change from one version to the next.
    one = {
        f["path"]: f["split"]
        for f in h.get("/v1/datasets/garments/versions/1/files").json()["items"]
    }
    two = {
        f["path"]: f["split"]
        for f in h.get("/v1/datasets/garments/versions/2/files").json()["items"]
    }
    assert {p: two[p] for p in one} == one

    versions = h.get("/v1/datasets/garments/versions").json()
    assert [v["version"] for v in versions["items"]] == [2, 1]
    d = h.get("/v1/datasets/garments").json()
    assert d["latest_version"] == 2 and d["version_count"] == 2


def test_pagination_of_datasets_versions_and_files(cloud: Cloud) -> None:
    h = cloud.http()
    data = {"a.txt": b"a\n"}
    for name in ["d3", "d1", "d2"]:
        assert push(h, name, data).status_code == 201
    for _ in range(2):
        assert push(h, "d1", data).status_code == 201
    page = h.get("/v1/datasets", params={"limit": 2}).json()
    assert [d["name"] for d in page["items"]] == ["d1", "d2"]
    rest = h.get("/v1/datasets", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [d["name"] for d in rest["items"]] == ["d3"] and rest["next_cursor"] is None

    page = h.get("/v1/datasets/d1/versions", params={"limit": 2}).json()
    assert [v["version"] for v in page["items"]] == [3, 2]
    rest = h.get("/v1/datasets/d1/versions", params={"cursor": page["next_cursor"]}).json()
    assert [v["version"] for v in rest["items"]] == [1]

    many = {f"f{i:02}.txt": f"{i}\n".encode() for i in range(7)}
    assert push(h, "many", many).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = h.get("/v1/datasets/many/versions/latest/files", params=params).json()
        seen += [f["path"] for f in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(many)
    assert (
        h.get("/v1/datasets", params={"cursor": "!!"}).status_code == 422
    )  # not a cursor's alphabet


def test_push_is_audited(cloud: Cloud) -> None:
    assert push(cloud.http(), "garments", GARMENTS).status_code == 201
    with cloud.app.state.db.read() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset.push")).one()
    assert event.target == "garments:1" and event.details["files"] == 4


# -- bad pushes leave nothing behind ------------------------------------------------------


def test_missing_blob_is_400_and_leaves_no_rows(cloud: Cloud) -> None:
    h = cloud.http()
    upload(h, {"shirt/a.png": GARMENTS["shirt/a.png"]})
    r = h.post("/v1/datasets/garments/versions", json={"files": manifest(GARMENTS)})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "missing_blobs"
    expected = {sha(d) for p, d in GARMENTS.items() if p != "shirt/a.png"}
    assert set(err["details"]["missing"]) == expected
    assert counts(cloud) == (0, 0, 0)


def test_size_disagreement_is_400(cloud: Cloud) -> None:
    h = cloud.http()
    upload(h, GARMENTS)
    files = manifest(GARMENTS)
    files[0]["size"] += 1
    r = h.post("/v1/datasets/garments/versions", json={"files": files})
    assert r.status_code == 400 and "size_mismatch" in r.json()["error"]["details"]
    assert counts(cloud) == (0, 0, 0)


@pytest.mark.parametrize(
    "path", ["../escape.png", "/abs.png", "a/./b.png", "a//b.png", "", "a\\b.png"]
)
def test_invalid_paths_are_422(cloud: Cloud, path: str) -> None:
    data = b"x"
    upload(cloud.http(), {"x": data})
    body = {"files": [{"path": path, "sha256": sha(data), "size": 1}]}
    r = cloud.http().post("/v1/datasets/things/versions", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert counts(cloud) == (0, 0, 0)


def test_duplicate_paths_bad_names_and_empty_manifests_are_422(cloud: Cloud) -> None:
    h = cloud.http()
    data = b"x"
    upload(h, {"x": data})
    entry = {"path": "a.txt", "sha256": sha(data), "size": 1}
    assert h.post("/v1/datasets/t/versions", json={"files": [entry, entry]}).status_code == 422
    assert h.post("/v1/datasets/t/versions", json={"files": []}).status_code == 422
    assert h.post("/v1/datasets/Bad Name/versions", json={"files": [entry]}).status_code == 422
    r = h.post("/v1/datasets/t/versions", json={"files": [entry], "validation_ratio": 1.0})
    assert r.status_code == 422
    assert h.get("/v1/datasets/t/versions/first").status_code == 422
    assert counts(cloud) == (0, 0, 0)


# -- archives -----------------------------------------------------------------------------


def test_zip_and_tar_gz_archives_become_versions(cloud: Cloud) -> None:
    h = cloud.http()
    inside = {f"garments/{p}": d for p, d in GARMENTS.items()}
    r = push_archive(h, "garments", make_zip(inside), format="zip", message="zipped")
    assert r.status_code == 201, r.text
    v = r.json()
    assert v["version"] == 1 and v["schema"]["classes"] == {"dress": 2, "shirt": 2}
    assert v["message"] == "zipped"
    files = h.get("/v1/datasets/garments/versions/1/files").json()["items"]
    assert sorted(f["path"] for f in files) == sorted(GARMENTS)
    # Without ?format the server tells tar.gz from its first bytes; same content, no new blobs.
    r = push_archive(h, "garments", make_tar_gz(inside), validation_ratio=0.5, seed=9)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2 and r.json()["split"]["seed"] == 9
    assert len(stored_blobs(cloud)) == len(GARMENTS)
    assert tmp_files(cloud) == []


@pytest.mark.parametrize("bad", ["../../evil.png", "/etc/evil.png", "symlink"])
def test_zip_slip_is_refused_and_leaves_nothing(cloud: Cloud, bad: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p, d in GARMENTS.items():
            zf.writestr(p, d)
        if bad == "symlink":
            link = zipfile.ZipInfo("shirt/link.png")
            link.create_system = 3
            link.external_attr = (0o120777 << 16) & 0xFFFF0000
            zf.writestr(link, "/etc/passwd")
        else:
            zf.writestr(bad, b"evil")
    r = push_archive(cloud.http(), "garments", buf.getvalue(), format="zip")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsafe_archive"
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def test_tar_with_a_link_is_refused_and_leaves_nothing(cloud: Cloud) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p, d in GARMENTS.items():
            info = tarfile.TarInfo(p)
            info.size = len(d)
            tf.addfile(info, io.BytesIO(d))
        link = tarfile.TarInfo("shirt/z.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../etc/passwd"
        tf.addfile(link)
    r = push_archive(cloud.http(), "garments", buf.getvalue(), format="tar.gz")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_archive"
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def test_archive_over_the_size_limit_is_413_and_leaves_nothing(cloud: Cloud) -> None:
    limit(cloud, max_archive_bytes=50_000)
    bomb = make_zip({f"part{i}.bin": b"\0" * 20_000 for i in range(5)})
    r = push_archive(cloud.http(), "bomb", bomb, format="zip")
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def test_archive_member_over_the_file_limit_is_413(cloud: Cloud) -> None:
    limit(cloud, max_file_bytes=10_000)
    body = make_tar_gz({"small.txt": b"ok\n", "big.bin": b"\1" * 10_001})
    r = push_archive(cloud.http(), "big", body, format="tar.gz")
    assert r.status_code == 413
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def test_corrupt_or_empty_archives_are_400(cloud: Cloud) -> None:
    h = cloud.http()
    assert push_archive(h, "x", b"PK\x03\x04 broken", format="zip").status_code == 400
    assert push_archive(h, "x", make_zip({"folder/": b""}), format="zip").status_code == 400
    assert push_archive(h, "x", b"", format="tar").status_code == 400
    assert counts(cloud) == (0, 0, 0)


def test_interrupted_archive_upload_leaves_nothing(live_server: LiveServer) -> None:
    """The client goes away half-way through: no version, no rows, no temporary files."""
    cloud = live_server.cloud
    files = {f"f{i}.bin": random.randbytes(65536) for i in range(40)}
    body = make_tar_gz(files)
    url = urlparse(live_server.url)
    assert url.hostname is not None and url.port is not None
    head = (
        f"POST /v1/datasets/cut/versions/archive?format=tar.gz HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\nAuthorization: Bearer {cloud.admin_key}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(head + body[: len(body) // 2])
        deadline = time.monotonic() + 10
        while not tmp_files(cloud) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tmp_files(cloud), "the server should be staging members by now"
    deadline = time.monotonic() + 10
    while tmp_files(cloud) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tmp_files(cloud) == []
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == []


# -- who may do what ----------------------------------------------------------------------


def test_viewer_reads_but_cannot_push_or_delete(cloud: Cloud) -> None:
    assert push(cloud.http(), "garments", GARMENTS).status_code == 201
    viewer = cloud.http(member_key(cloud, "viewer"))
    assert viewer.get("/v1/datasets").json()["items"][0]["name"] == "garments"
    assert viewer.get("/v1/datasets/garments/versions/1/files").status_code == 200
    body = {"files": manifest(GARMENTS)}
    r = viewer.post("/v1/datasets/garments/versions", json=body)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert push_archive(viewer, "garments", make_zip(GARMENTS)).status_code == 403
    assert viewer.delete("/v1/datasets/garments/versions/1").status_code == 403
    assert viewer.delete("/v1/datasets/garments").status_code == 403
    assert counts(cloud)[1] == 1
    developer = cloud.http(member_key(cloud, "developer"))
    assert developer.post("/v1/datasets/garments/versions", json=body).status_code == 201


def test_another_workspace_sees_404_and_keeps_its_own_namespace(cloud: Cloud) -> None:
    assert push(cloud.http(), "garments", GARMENTS).status_code == 201
    other = cloud.http(member_key(cloud, "owner", workspace="rival"))
    assert other.get("/v1/datasets").json()["items"] == []
    for path in [
        "/v1/datasets/garments",
        "/v1/datasets/garments/versions",
        "/v1/datasets/garments/versions/1",
        "/v1/datasets/garments/versions/latest/files",
    ]:
        r = other.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    assert other.delete("/v1/datasets/garments/versions/1").status_code == 404
    assert other.delete("/v1/datasets/garments").status_code == 404
    # The other workspace must upload its own blobs: it cannot use ours by naming them.
    r = other.post("/v1/datasets/garments/versions", json={"files": manifest(GARMENTS)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_blobs"
    r = push(other, "garments", {"mine.txt": b"mine\n"})
    assert r.status_code == 201 and r.json()["version"] == 1
    assert cloud.http().get("/v1/datasets/garments").json()["latest_version"] == 1


def test_unauthenticated_is_401(cloud: Cloud) -> None:
    anonymous = cloud.http(False)  # type: ignore[arg-type]
    assert anonymous.get("/v1/datasets").status_code == 401
    assert cloud.http("gk_abc_def").get("/v1/datasets").status_code == 401


# -- deleting -----------------------------------------------------------------------------


def test_delete_version_frees_only_unshared_blobs(cloud: Cloud) -> None:
    h = cloud.http()
    assert push(h, "garments", GARMENTS).status_code == 201
    v2 = {"shirt/a.png": GARMENTS["shirt/a.png"], "shirt/new.png": png((9, 9, 9))}
    assert push(h, "garments", v2).status_code == 201
    assert len(stored_blobs(cloud)) == 5
    assert h.delete("/v1/datasets/garments/versions/1").status_code == 204
    assert h.get("/v1/datasets/garments/versions/1").status_code == 404
    # shirt/a.png is still used by version 2; the other three are gone.
    assert len(stored_blobs(cloud)) == 2
    assert h.get(f"/v1/blobs/{sha(GARMENTS['shirt/a.png'])}").status_code == 200
    assert h.get(f"/v1/blobs/{sha(GARMENTS['dress/a.png'])}").status_code == 404
    d = h.get("/v1/datasets/garments").json()
    assert d["latest_version"] == 2 and d["version_count"] == 1
    # Numbers are never reused.
    assert push(h, "garments", GARMENTS).json()["version"] == 3
    assert h.delete("/v1/datasets/garments").status_code == 204
    assert h.get("/v1/datasets/garments").status_code == 404
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == []


def test_referenced_version_cannot_be_deleted(cloud: Cloud) -> None:
    h = cloud.http()
    assert push(h, "garments", GARMENTS).status_code == 201
    assert push(h, "garments", GARMENTS).status_code == 201
    db = cloud.app.state.db
    with db.write() as s:
        workspace_id = s.scalar(select(Dataset.workspace_id).where(Dataset.name == "garments"))
        assert workspace_id is not None
        version = resolve_version(s, workspace_id, "garments", 1)
        add_reference(s, version.id, "job", "12")
        add_reference(s, version.id, "job", "12")  # idempotent
    r = h.delete("/v1/datasets/garments/versions/1")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "conflict" and "referenced by job 12" in err["message"]
    assert h.delete("/v1/datasets/garments").status_code == 409
    assert h.delete("/v1/datasets/garments/versions/2").status_code == 204
    assert len(stored_blobs(cloud)) == len(GARMENTS)
    with db.write() as s:
        remove_reference(s, version.id, "job", "12")
    assert h.delete("/v1/datasets/garments/versions/latest").status_code == 204
    assert stored_blobs(cloud) == []


def test_unknown_dataset_and_version_are_404(cloud: Cloud) -> None:
    h = cloud.http()
    assert h.get("/v1/datasets/nope").status_code == 404
    assert h.delete("/v1/datasets/nope").status_code == 404
    assert push(h, "real", {"a.txt": b"a\n"}).status_code == 201
    assert h.get("/v1/datasets/real/versions/7").status_code == 404
    assert h.delete("/v1/datasets/real/versions/7").status_code == 404


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_pushes_all_land_as_distinct_versions(live_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live_server.cloud.admin_key}"}
    variants = [{f"v{i}.txt": f"variant {i}\n".encode(), "shared.txt": b"same\n"} for i in range(4)]
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as http:
        for files in variants:
            upload(http, files)
    barrier = threading.Barrier(len(variants))
    results: list[httpx.Response] = []
    lock = threading.Lock()

    def worker(files: dict[str, bytes]) -> None:
        with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as http:
            barrier.wait()
            r = http.post("/v1/datasets/race/versions", json={"files": manifest(files)})
        with lock:
            results.append(r)

    threads = [threading.Thread(target=worker, args=(f,)) for f in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r.status_code == 201 for r in results), [r.text for r in results]
    assert sorted(r.json()["version"] for r in results) == [1, 2, 3, 4]
    with httpx.Client(base_url=live_server.url, headers=headers) as http:
        d = http.get("/v1/datasets/race").json()
        assert d["latest_version"] == 4 and d["version_count"] == 4
        versions = http.get("/v1/datasets/race/versions").json()["items"]
        for v in versions:
            files = http.get(f"/v1/datasets/race/versions/{v['version']}/files").json()["items"]
            assert len(files) == 2


def test_pulled_files_match_after_archive_push(live_server: LiveServer, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {live_server.cloud.admin_key}"}
    files = {f"class{i % 3}/{i}.png": png((i * 7 % 255, i, 255 - i)) for i in range(12)}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=60) as http:
        r = http.post(
            "/v1/datasets/pics/versions/archive",
            params={"format": "zip"},
            content=make_zip(files),
        )
        assert r.status_code == 201, r.text
        listed = http.get("/v1/datasets/pics/versions/1/files").json()["items"]
        assert {f["path"]: f["label"] for f in listed} == {p: p.split("/")[0] for p in files}
        for f in listed:
            assert http.get(f"/v1/blobs/{f['sha256']}").content == files[f["path"]]
