"""Issue 10, item 10 (and item 7's line length), over REST on SQLite and PostgreSQL: archives
are bounded by expanded size, compression ratio, entry count and the workspace's storage
quota as bytes are produced; names a terminal or a disk cannot take are refused at push;
line-oriented files have a maximum line length. A refused push leaves no version, no stored
blob and no temporary file."""

from __future__ import annotations

import io
import json
import random
import tarfile
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from gureum.cli.main import app as cli_app
from gureum.client.errors import GureumError
from gureum.server.db.tables import DatasetVersion, Workspace
from tests.conftest import Cloud, LiveServer
from tests.integration.archive_bombs import many_entries_zip, tar_gz_bomb, zip_bomb
from tests.integration.test_blobs_api import limit, member_key, sha, stored_blobs, tmp_files
from tests.integration.test_datasets_api import (
    counts,
    make_tar_gz,
    make_zip,
    manifest,
    push,
    push_archive,
    upload,
)

MiB = 1 << 20


def _nothing_left(cloud: Cloud) -> None:
    assert counts(cloud) == (0, 0, 0)
    assert stored_blobs(cloud) == [] and tmp_files(cloud) == []


def _versions(cloud: Cloud) -> int:
    with cloud.app.state.db.read() as s:
        return s.scalar(select(func.count()).select_from(DatasetVersion)) or 0


# -- compression bombs and entry counts ---------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_a_1_mib_archive_expanding_to_1_gib_is_refused_under_the_default_limits(
    cloud: Cloud, fmt: str
) -> None:
    bomb = zip_bomb() if fmt == "zip" else tar_gz_bomb()
    assert len(bomb) < 1.1 * MiB
    started = time.monotonic()
    r = push_archive(cloud.http(), "bomb", bomb, format=fmt)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "payload_too_large" and "compression bomb" in error["message"]
    # Stopped at about 100x its size, not after writing the whole GiB.
    assert time.monotonic() - started < 60
    _nothing_left(cloud)


def test_a_compressible_archive_under_the_ratio_floor_still_lands(cloud: Cloud) -> None:
    # 8 MiB of zeros in 8 KiB: far past the ratio, but under the 64 MiB floor it applies from.
    r = push_archive(cloud.http(), "zeros", zip_bomb(8 * MiB), format="zip")
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("declared", [1, 150_000], ids=["lying-end-record", "zip64-count"])
def test_a_zip_with_150k_entries_is_refused_fast(cloud: Cloud, declared: int) -> None:
    body = many_entries_zip(150_000, declared)
    started = time.monotonic()
    r = push_archive(cloud.http(), "many", body, format="zip")
    elapsed = time.monotonic() - started
    assert r.status_code == 413, r.text
    assert "more than 100000 entries" in r.json()["error"]["message"]
    assert elapsed < 10, elapsed
    _nothing_left(cloud)


def test_a_zip_directory_bigger_than_its_entries_allow_is_refused(cloud: Cloud) -> None:
    limit(cloud, max_archive_entries=100)
    body = many_entries_zip(150, 1)  # 150 records of 53 bytes: under 100 x 640 bytes
    r = push_archive(cloud.http(), "many", body, format="zip")
    assert r.status_code == 413 and "more than 100 entries" in r.text
    _nothing_left(cloud)


def test_a_tar_gz_with_too_many_entries_is_refused_and_leaves_nothing(cloud: Cloud) -> None:
    limit(cloud, max_archive_entries=500)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(2000):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
    r = push_archive(cloud.http(), "many", buf.getvalue(), format="tar.gz")
    assert r.status_code == 413 and "more than 500 entries" in r.text
    _nothing_left(cloud)


# -- names --------------------------------------------------------------------------------

BAD_NAMES = {
    "newline": "a\nb.txt",
    "tab": "tab\there.txt",
    "escape": "esc\x1b[31m.txt",
    "c1": "next\x85line.txt",
    "rtl-override": "invoice\u202etxt.exe",
    "isolate": "iso\u2066x.txt",
    "long-part": "é" * 128 + ".txt",  # 132 characters, 260 bytes in UTF-8
    "long-path": "/".join(["é" * 100] * 6),  # 605 characters, 1205 bytes
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_names_with_controls_or_too_long_to_pull_are_refused_in_a_manifest(
    cloud: Cloud, name: str
) -> None:
    r = push(cloud.http(), "names", {name: b"x\n", "ok.txt": b"y\n"})
    assert r.status_code == 422, r.text
    assert _versions(cloud) == 0


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_names_with_controls_or_too_long_to_pull_are_refused_in_an_archive(
    cloud: Cloud, name: str
) -> None:
    r = push_archive(cloud.http(), "names", make_zip({"ok.txt": b"y\n", name: b"x\n"}))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "unsafe_archive"
    assert "\n" not in error["message"] and "\x1b" not in error["message"]
    _nothing_left(cloud)


def test_a_long_but_pullable_name_lands(cloud: Cloud) -> None:
    name = "/".join(["é" * 127] * 4)  # parts of 254 bytes, 1019 bytes in all
    r = push_archive(cloud.http(), "names", make_zip({name: b"x\n"}))
    assert r.status_code == 201, r.text


# -- line length --------------------------------------------------------------------------

LONG = b"x" * (MiB + 1)
LONG_LINES = {
    "table.csv": (b"a,b\n1,2\n3," + LONG + b"\n4,5\n", 3),
    "rows.jsonl": (b'{"a": 1}\n{"a": 2}\n{"t": "' + LONG + b'"}\n', 3),
    "notes.txt": (b"first\n" + LONG, 2),
}


@pytest.mark.parametrize("path", LONG_LINES.keys())
def test_a_line_over_the_limit_is_422_naming_file_and_line(cloud: Cloud, path: str) -> None:
    data, line = LONG_LINES[path]
    r = push(cloud.http(), "lines", {path: data})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "line_too_long"
    assert error["details"] == {"path": path, "line": line, "max_line_bytes": MiB}
    assert f"{path}: line {line}" in error["message"]
    assert _versions(cloud) == 0


def test_a_line_over_the_limit_in_an_archive_leaves_no_blobs(cloud: Cloud) -> None:
    data, _ = LONG_LINES["rows.jsonl"]
    body = make_tar_gz({"data/ok.csv": b"a\n1\n", "data/rows.jsonl": data})
    r = push_archive(cloud.http(), "lines", body, format="tar.gz")
    assert r.status_code == 422 and r.json()["error"]["details"]["path"] == "rows.jsonl"
    _nothing_left(cloud)


def test_lines_at_the_limit_land(cloud: Cloud) -> None:
    r = push(cloud.http(), "lines", {"notes.txt": b"a\n" + b"y" * MiB + b"\nb\n"})
    assert r.status_code == 201, r.text


# -- the workspace's storage quota --------------------------------------------------------

KB = 1024
QUOTA_GB = 200 * KB / 1024**3  # 200 KiB


def _set_quota(cloud: Cloud, gb: float | None) -> None:
    h = cloud.http()
    r = h.put("/v1/workspaces/default/quotas", json={"max_storage_gb": gb})
    assert r.status_code == 200, r.text
    assert r.json()["max_storage_gb"] == pytest.approx(gb) if gb else True
    assert (
        h.get("/v1/workspaces/default/quotas").json()["max_storage_gb"]
        == r.json()["max_storage_gb"]
    )


def _random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_an_archive_past_the_storage_quota_is_refused_as_it_expands(cloud: Cloud) -> None:
    _set_quota(cloud, QUOTA_GB)
    h = cloud.http()
    first = {f"a{i}.bin": _random(50 * KB, i) for i in range(3)}  # 150 KiB
    assert push(h, "data", first).status_code == 201
    before = stored_blobs(cloud)
    body = make_zip({f"b{i}.bin": _random(30 * KB, 10 + i) for i in range(3)})  # 90 KiB more
    r = push_archive(h, "data", body, format="zip")
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "storage_quota_exceeded"
    assert _versions(cloud) == 1
    assert stored_blobs(cloud) == before and tmp_files(cloud) == []
    # A zip bomb under a quota stops at the quota, whatever the ratio.
    r = push_archive(h, "bomb", zip_bomb(8 * MiB), format="zip")
    assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"
    # Content already stored costs nothing more: a new version of the same files lands.
    assert push(h, "again", first).status_code == 201


def test_uploads_and_manifests_past_the_storage_quota_are_refused(cloud: Cloud) -> None:
    h = cloud.http()
    files = {f"f{i}.bin": _random(80 * KB, 20 + i) for i in range(3)}  # 240 KiB
    upload(h, files)  # before any quota
    _set_quota(cloud, QUOTA_GB)
    r = h.post("/v1/datasets/data/versions", json={"files": manifest(files)})
    assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"
    assert _versions(cloud) == 0
    big = _random(250 * KB, 99)
    r = h.put(f"/v1/blobs/{sha(big)}", content=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"
    assert tmp_files(cloud) == []
    batch = io.BytesIO()
    with tarfile.open(fileobj=batch, mode="w") as tf:
        info = tarfile.TarInfo(sha(big))
        info.size = len(big)
        tf.addfile(info, io.BytesIO(big))
    r = h.post("/v1/blobs/batch", content=batch.getvalue())
    assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"
    two = dict(list(files.items())[:2])
    assert h.post("/v1/datasets/data/versions", json={"files": manifest(two)}).status_code == 201
    _set_quota(cloud, None)
    assert h.post("/v1/datasets/data/versions", json={"files": manifest(files)}).status_code == 201


def test_only_owners_and_site_admins_set_the_storage_quota(cloud: Cloud) -> None:
    r = cloud.http(member_key(cloud, "admin")).put(
        "/v1/workspaces/default/quotas", json={"max_storage_gb": 1}
    )
    assert r.status_code == 403
    r = cloud.http().put("/v1/workspaces/default/quotas", json={"max_storage_gb": -1})
    assert r.status_code == 422


def test_the_archive_body_limit_is_still_its_own(cloud: Cloud) -> None:
    """The control plane's 1 MiB body limit does not apply to archives."""
    files = {f"f{i}.bin": _random(600 * KB, 40 + i) for i in range(3)}
    r = push_archive(cloud.http(), "big", make_zip(files), format="zip")
    assert r.status_code == 201, r.text


def test_the_sdk_refuses_such_names_before_uploading_a_byte(cloud: Cloud, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "ok.txt").write_bytes(b"fine\n")
    (folder / "esc\x1b[2J.txt").write_bytes(b"x\n")
    with pytest.raises(GureumError) as caught:
        cloud.client().datasets.push("names", folder)
    assert caught.value.code == "bad_request" and "\\x1b" in caught.value.message
    _nothing_left(cloud)


def test_the_storage_quota_from_the_cli(live_server: LiveServer, tmp_path: Path) -> None:
    env = {
        "GUREUM_URL": live_server.url,
        "GUREUM_API_KEY": live_server.cloud.admin_key,
        "GUREUM_HOME": str(tmp_path / "cli-home"),
    }
    runner = CliRunner()
    args = ["workspaces", "quotas", "default", "--max-jobs", "3", "-o", "json"]
    assert runner.invoke(cli_app, args, env=env).exit_code == 0
    args = ["workspaces", "quotas", "default", "--max-storage-gb", "0.5", "-o", "json"]
    result = runner.invoke(cli_app, args, env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["max_storage_gb"] == 0.5 and shown["max_concurrent_jobs"] == 3
    with live_server.cloud.app.state.db.read() as s:
        stored = s.scalar(select(Workspace.max_storage_bytes).where(Workspace.name == "default"))
    assert stored == 512 * 1024**2
    result = runner.invoke(cli_app, ["workspaces", "quotas", "default"], env=env)
    assert result.exit_code == 0 and "max_storage_gb" in result.stdout


def test_blobs_uploaded_but_never_pushed_count_against_the_quota(cloud: Cloud) -> None:
    _set_quota(cloud, QUOTA_GB)
    h = cloud.http()
    blobs = [_random(80 * KB, 60 + i) for i in range(3)]
    for data in blobs[:2]:
        assert h.put(f"/v1/blobs/{sha(data)}", content=data).status_code == 201
    r = h.put(f"/v1/blobs/{sha(blobs[2])}", content=blobs[2])
    assert r.status_code == 413 and r.json()["error"]["code"] == "storage_quota_exceeded"
    assert h.put(f"/v1/blobs/{sha(blobs[0])}", content=blobs[0]).status_code == 201  # stored
    assert len(stored_blobs(cloud)) == 2 and tmp_files(cloud) == []
