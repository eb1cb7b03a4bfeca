"""The blob endpoints: which are missing, streamed and batched uploads, downloads."""

from __future__ import annotations

import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gureum.config import Settings
from gureum.server.app import create_app
from gureum.server.auth import new_key
from gureum.server.db.tables import ApiKey, Membership, User, Workspace
from gureum.server.services.bootstrap import bootstrap
from tests.conftest import Cloud, LiveServer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def member_key(cloud: Cloud, role: str, workspace: str = "default") -> str:
    """A key for a new user with ``role`` in ``workspace`` (created when it does not exist)."""
    key = new_key()
    with cloud.app.state.db.write() as s:
        ws = s.scalar(select(Workspace).where(Workspace.name == workspace))
        if ws is None:
            ws = Workspace(name=workspace)
            s.add(ws)
        user = User(name=f"{role}-{key.key_id}")
        s.add(user)
        s.flush()
        s.add(Membership(user_id=user.id, workspace_id=ws.id, role=role))
        s.add(
            ApiKey(
                key_id=key.key_id,
                secret_hash=key.secret_hash,
                user_id=user.id,
                workspace_id=ws.id,
                role=role,
            )
        )
    return key.token


def tar_batch(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def stored_blobs(cloud: Cloud) -> list[Path]:
    root = Path(cloud.settings.resolved_artifacts) / "workspaces"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def tmp_files(cloud: Cloud) -> list[Path]:
    return list((Path(cloud.settings.resolved_artifacts) / "tmp").iterdir())


def limit(cloud: Cloud, **values: int) -> None:
    cloud.app.state.settings = cloud.settings.model_copy(update=values)


def test_missing_put_get_round_trip(cloud: Cloud) -> None:
    h = cloud.http()
    data = b"hello blob" * 1000
    digest = sha(data)
    r = h.post("/v1/blobs/missing", json={"sha256": [digest, digest]})
    assert r.status_code == 200 and r.json() == {"missing": [digest]}
    r = h.put(f"/v1/blobs/{digest}", content=data)
    assert r.status_code == 201, r.text
    assert r.json() == {"sha256": digest, "size": len(data)}
    assert h.post("/v1/blobs/missing", json={"sha256": [digest]}).json() == {"missing": []}
    r = h.get(f"/v1/blobs/{digest}")
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "application/octet-stream"
    # The same content again is accepted and still stored once.
    assert h.put(f"/v1/blobs/{digest}", content=data).status_code == 201
    assert len(stored_blobs(cloud)) == 1
    assert tmp_files(cloud) == []


def test_hash_mismatch_stores_nothing(cloud: Cloud) -> None:
    h = cloud.http()
    digest = sha(b"the real content")
    r = h.put(f"/v1/blobs/{digest}", content=b"something else")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "hash_mismatch"
    assert h.post("/v1/blobs/missing", json={"sha256": [digest]}).json() == {"missing": [digest]}
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def test_blob_over_the_file_limit_is_413(cloud: Cloud) -> None:
    limit(cloud, max_file_bytes=1000)
    h = cloud.http()
    data = b"x" * 1001
    r = h.put(f"/v1/blobs/{sha(data)}", content=data)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"

    def no_length() -> Iterator[bytes]:  # chunked: the limit is enforced while streaming
        yield data[:600]
        yield data[600:]

    r = h.put(f"/v1/blobs/{sha(data)}", content=no_length())
    assert r.status_code == 413
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def test_bad_digests(cloud: Cloud) -> None:
    h = cloud.http()
    assert h.put("/v1/blobs/not-a-digest", content=b"x").status_code == 422
    assert h.post("/v1/blobs/missing", json={"sha256": ["nope"]}).status_code == 422
    r = h.get("/v1/blobs/not-a-digest")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert h.get(f"/v1/blobs/{sha(b'never uploaded')}").status_code == 404


def test_batch_upload_stores_each_member(cloud: Cloud) -> None:
    h = cloud.http()
    contents = [f"file {i}".encode() * (i + 1) for i in range(20)]
    body = tar_batch({sha(c): c for c in contents})
    r = h.post("/v1/blobs/batch", content=body, headers={"Content-Type": "application/x-tar"})
    assert r.status_code == 201, r.text
    assert sorted(b["sha256"] for b in r.json()["stored"]) == sorted(sha(c) for c in contents)
    for c in contents:
        assert h.get(f"/v1/blobs/{sha(c)}").content == c
    assert len(stored_blobs(cloud)) == 20


def test_batch_refuses_bad_members(cloud: Cloud) -> None:
    h = cloud.http()
    good = b"good"
    r = h.post("/v1/blobs/batch", content=tar_batch({sha(good): good, sha(b"x"): b"not x"}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "hash_mismatch"
    r = h.post("/v1/blobs/batch", content=tar_batch({"photo.png": good}))
    assert r.status_code == 400
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        link = tarfile.TarInfo(sha(good))
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    r = h.post("/v1/blobs/batch", content=buf.getvalue())
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsafe_archive"
    assert h.post("/v1/blobs/batch", content=b"garbage" * 100).status_code == 400
    assert tmp_files(cloud) == []


def test_roles_and_workspaces(cloud: Cloud) -> None:
    data = b"private bytes"
    digest = sha(data)
    assert cloud.http().put(f"/v1/blobs/{digest}", content=data).status_code == 201

    viewer = cloud.http(member_key(cloud, "viewer"))
    assert viewer.get(f"/v1/blobs/{digest}").content == data
    r = viewer.put(f"/v1/blobs/{sha(b'v')}", content=b"v")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert viewer.post("/v1/blobs/batch", content=tar_batch({})).status_code == 403
    assert viewer.post("/v1/blobs/missing", json={"sha256": []}).status_code == 403

    stranger = cloud.http(member_key(cloud, "owner", workspace="other"))
    assert stranger.get(f"/v1/blobs/{digest}").status_code == 404
    # Blobs are per workspace: the other workspace is told it lacks the blob.
    r = stranger.post("/v1/blobs/missing", json={"sha256": [digest]})
    assert r.json() == {"missing": [digest]}

    anonymous = cloud.http(False)  # type: ignore[arg-type]
    assert anonymous.get(f"/v1/blobs/{digest}").status_code == 401
    assert cloud.http("gk_nope_nope").put(f"/v1/blobs/{digest}", content=data).status_code == 401


def test_streamed_upload_and_download_over_a_real_socket(live_server: LiveServer) -> None:
    """Several MB in chunks, through uvicorn, come back byte for byte."""
    chunk = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    parts = [bytes([i]) + chunk[1:] for i in range(6)]
    digest = hashlib.sha256(b"".join(parts)).hexdigest()
    headers = {"Authorization": f"Bearer {live_server.cloud.admin_key}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as http:
        r = http.put(f"/v1/blobs/{digest}", content=iter(parts))
        assert r.status_code == 201, r.text
        assert r.json()["size"] == 6 * len(chunk)
        h = hashlib.sha256()
        with http.stream("GET", f"/v1/blobs/{digest}") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-length"] == str(6 * len(chunk))
            for piece in resp.iter_bytes():
                h.update(piece)
        assert h.hexdigest() == digest


@pytest.mark.parametrize("count", [0, 3])
def test_missing_accepts_empty_and_small_lists(cloud: Cloud, count: int) -> None:
    digests = [sha(str(i).encode()) for i in range(count)]
    r = cloud.http().post("/v1/blobs/missing", json={"sha256": digests})
    assert r.status_code == 200 and r.json()["missing"] == digests


def test_a_non_local_store_works_the_same(settings: Settings) -> None:
    """Any fsspec URL can hold the artifacts; here fsspec's in-memory filesystem."""
    remote = settings.model_copy(update={"artifacts": f"memory://gureum-{uuid.uuid4().hex}"})
    app = create_app(remote)
    token = bootstrap(app.state.db)
    try:
        h = TestClient(app, headers={"Authorization": f"Bearer {token}"})
        data = b"remote bytes" * 5000
        assert h.put(f"/v1/blobs/{sha(data)}", content=data).status_code == 201
        r = h.get(f"/v1/blobs/{sha(data)}")
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-length"] == str(len(data))
        small = [b"a", b"b"]
        assert h.post("/v1/blobs/batch", content=tar_batch({sha(c): c for c in small})).is_success
        files = [
            {"path": f"{i}.txt", "sha256": sha(c), "size": len(c)} for i, c in enumerate(small)
        ]
        r = h.post("/v1/datasets/remote/versions", json={"files": files})
        assert r.status_code == 201, r.text
        assert h.delete("/v1/datasets/remote").status_code == 204
        assert h.get(f"/v1/blobs/{sha(small[0])}").status_code == 404
        assert h.get(f"/v1/blobs/{sha(data)}").status_code == 200
    finally:
        app.state.db.dispose()
