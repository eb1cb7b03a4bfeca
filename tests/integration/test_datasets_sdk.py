"""Datasets through the SDK as a user drives them: push, read, pull back, delete, and failures."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from gureum import Client
from gureum.client.datasets import DestinationNotEmpty, IntegrityError
from gureum.client.errors import (
    BadRequestError,
    ForbiddenError,
    GureumError,
    NotFoundError,
    PayloadTooLargeError,
)
from gureum.client.upload import SMALL_FILE, scan, tar_size, tar_stream
from gureum.server.app import create_app
from tests.conftest import Cloud, LiveServer

BIG = SMALL_FILE + 300_000  # one file that takes the streamed PUT path


def png(color: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def image_folder(root: Path) -> Path:
    """A folder-per-class image set: two classes, a few pictures each."""
    for i in range(3):
        write(root, f"shirt/s{i}.png", png((200, 10 * i, 10)))
        write(root, f"dress/d{i}.png", png((10, 10 * i, 200), (8, 8)))
    return root


def mixed_folder(root: Path) -> Path:
    """Nested small files, one big file, an empty file and two files with the same bytes."""
    write(root, "a.txt", b"hello\n")
    write(root, "nested/deeper/b.csv", b"x,y\n1,2\n3,4\n")
    write(root, "nested/same1.bin", b"same bytes")
    write(root, "nested/same2.bin", b"same bytes")
    write(root, "empty.txt", b"")
    write(root, "big.bin", os.urandom(BIG))
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def blob_count(cloud: Cloud) -> int:
    root = Path(cloud.settings.resolved_artifacts) / "workspaces"
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


@pytest.fixture
def live_client(live_server: LiveServer) -> Iterator[Client]:
    with live_server.client() as c:
        yield c


# --- push and pull ----------------------------------------------------------------------------


def test_folder_round_trips_byte_identical_over_real_sockets(
    live_client: Client, tmp_path: Path
) -> None:
    src = mixed_folder(tmp_path / "src")
    ver = live_client.datasets.push("mixed", src, message="first")
    assert (ver.dataset, ver.version, ver.message) == ("mixed", 1, "first")
    assert ver.file_count == 6
    assert ver.total_bytes == sum(len(b) for b in tree(src).values())

    files = live_client.datasets.files("mixed", 1)
    assert [f.path for f in files] == sorted(tree(src))
    assert {f.path: f.sha256 for f in files}["a.txt"] == hashlib.sha256(b"hello\n").hexdigest()

    pulled = live_client.datasets.pull("mixed", "latest", tmp_path / "out")
    assert pulled.version == 1
    assert tree(tmp_path / "out") == tree(src)
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temp files left behind


def test_unchanged_files_are_stored_once_across_versions(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    src = mixed_folder(tmp_path / "src")
    client.datasets.push("d", src)
    stored = blob_count(cloud)
    assert stored == 5  # six files, two of them the same bytes

    assert client.datasets.push("d", src).version == 2
    assert blob_count(cloud) == stored

    write(src, "a.txt", b"changed\n")
    assert client.datasets.push("d", src).version == 3
    assert blob_count(cloud) == stored + 1
    assert client.datasets.get("d").version_count == 3


def test_single_file_push_keeps_its_name(cloud: Cloud, tmp_path: Path) -> None:
    csv = tmp_path / "people.csv"
    csv.write_text("name,age\nann,31\nbo,42\n")
    ver = cloud.client().datasets.push("people", csv)
    assert (ver.file_count, ver.kind) == (1, "table")
    assert [f.path for f in cloud.client().datasets.files("people")] == ["people.csv"]


def test_image_folder_records_classes(cloud: Cloud, tmp_path: Path) -> None:
    ver = cloud.client().datasets.push("clothes", image_folder(tmp_path / "img"))
    assert ver.kind == "images"
    assert ver.schema_["classes"] == {"dress": 3, "shirt": 3}
    assert ver.split["train"] + ver.split["validation"] == 6
    labels = {f.path: f.label for f in cloud.client().datasets.files("clothes")}
    assert labels["shirt/s0.png"] == "shirt"


def _zip(src: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w") as z:
        for rel, data in tree(src).items():
            z.writestr(f"top/{rel}", data)


def _tar(src: Path, out: Path, mode: str) -> None:
    with tarfile.open(out, mode) as t:  # type: ignore[call-overload]
        t.add(src, arcname="top")


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".tgz"])
def test_archive_is_pushed_as_is_and_pulls_back_its_files(
    cloud: Cloud, tmp_path: Path, suffix: str
) -> None:
    src = image_folder(tmp_path / "src")
    archive = tmp_path / f"data{suffix}"
    if suffix == ".zip":
        _zip(src, archive)
    else:
        _tar(src, archive, "w" if suffix == ".tar" else "w:gz")
    seen: list[tuple[int, int]] = []
    client = cloud.client()
    ver = client.datasets.push("arch", archive, seed=3, progress=lambda d, t: seen.append((d, t)))
    assert ver.file_count == 6 and ver.split["seed"] == 3
    assert seen[-1] == (archive.stat().st_size, archive.stat().st_size)
    client.datasets.pull("arch", ver.version, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(src)  # the single top folder is stripped


def test_hidden_files_and_links_leaving_the_folder_are_skipped(
    cloud: Cloud, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src, "keep.txt", b"keep")
    write(src, ".DS_Store", b"junk")
    write(src, ".git/config", b"secret")
    write(tmp_path, "outside.txt", b"not yours")
    (src / "leak.txt").symlink_to(tmp_path / "outside.txt")
    (src / "alias.txt").symlink_to(src / "keep.txt")
    (src / "loop").symlink_to(src)
    assert [f.path for f in scan(src)] == ["alias.txt", "keep.txt"]
    ver = cloud.client().datasets.push("links", src)
    assert ver.file_count == 2


def test_progress_counts_every_byte_once(cloud: Cloud, tmp_path: Path) -> None:
    src = mixed_folder(tmp_path / "src")
    total = sum(len(b) for b in tree(src).values())
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()

    def progress(done: int, of: int) -> None:
        with lock:
            seen.append((done, of))

    cloud.client().datasets.push("p", src, progress=progress)
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(of == total for _, of in seen)
    # a second push sends nothing new yet still reaches the end
    seen.clear()
    cloud.client().datasets.push("p", src, progress=progress)
    assert seen[-1] == (total, total)


def test_tar_stream_is_a_valid_tar_of_exact_length() -> None:
    members = [("a" * 64, b"x" * 1000), ("b" * 64, b""), ("c" * 64, os.urandom(3000))]
    data = b"".join(tar_stream(members, chunk=700))
    assert len(data) == tar_size(len(d) for _, d in members)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as t:
        got = {m.name: t.extractfile(m).read() for m in t if m.isfile()}  # type: ignore[union-attr]
    assert got == dict(members)


# --- reading, pulling, deleting -----------------------------------------------------------------


def test_versions_are_listed_newest_first_and_latest_resolves(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    src = image_folder(tmp_path / "img")
    client.datasets.push("v", src, message="one")
    write(src, "shirt/new.png", png((1, 2, 3)))
    client.datasets.push("v", src, message="two")
    assert [v.version for v in client.datasets.versions("v")] == [2, 1]
    assert client.datasets.version("v").message == "two"
    assert client.datasets.version("v", 1).file_count == 6
    ds = client.datasets.get("v")
    assert (ds.latest_version, ds.version_count) == (2, 2)
    assert [d.name for d in client.datasets.list()] == ["v"]


def test_pull_refuses_a_folder_with_files_unless_overwrite(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    src = image_folder(tmp_path / "img")
    client.datasets.push("img", src)
    dest = tmp_path / "dest"
    write(dest, "shirt/s0.png", b"stale")
    with pytest.raises(DestinationNotEmpty, match="not empty"):
        client.datasets.pull("img", 1, dest)
    assert (dest / "shirt/s0.png").read_bytes() == b"stale"
    client.datasets.pull("img", 1, dest, overwrite=True)
    assert tree(dest) == tree(src)


def test_pull_detects_a_corrupted_blob_and_leaves_no_partial_file(
    cloud: Cloud, tmp_path: Path
) -> None:
    client = cloud.client()
    src = tmp_path / "src"
    write(src, "data.txt", b"the real bytes")
    client.datasets.push("c", src)
    sha = hashlib.sha256(b"the real bytes").hexdigest()
    [blob] = (Path(cloud.settings.resolved_artifacts) / "workspaces").rglob(sha)
    blob.write_bytes(b"rotten bytes!!")
    with pytest.raises(IntegrityError, match="hashes to"):
        client.datasets.pull("c", 1, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_pull_reports_progress_and_refuses_a_file_as_dest(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    src = mixed_folder(tmp_path / "src")
    client.datasets.push("m", src)
    seen: list[tuple[int, int]] = []
    client.datasets.pull("m", 1, tmp_path / "out", progress=lambda d, t: seen.append((d, t)))
    total = sum(len(b) for b in tree(src).values())
    assert seen[-1] == (total, total)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationNotEmpty, match="not a folder"):
        client.datasets.pull("m", 1, tmp_path / "file")


def test_delete_a_version_then_the_dataset(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    src = image_folder(tmp_path / "img")
    client.datasets.push("gone", src)
    client.datasets.push("gone", src)
    client.datasets.delete("gone", 1)
    with pytest.raises(NotFoundError):
        client.datasets.version("gone", 1)
    assert [v.version for v in client.datasets.versions("gone")] == [2]
    client.datasets.delete("gone")
    with pytest.raises(NotFoundError):
        client.datasets.get("gone")


# --- failures ---------------------------------------------------------------------------------


def test_local_problems_are_clear_errors(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    with pytest.raises(GureumError, match="cannot read"):
        client.datasets.push("x", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", ".hidden", b"x")
    with pytest.raises(GureumError, match="no files"):
        client.datasets.push("x", tmp_path / "empty")
    write(tmp_path / "bad", "a\\b.txt", b"x")
    with pytest.raises(GureumError, match="path"):
        client.datasets.push("x", tmp_path / "bad")
    with pytest.raises(NotFoundError):
        client.datasets.get("x")


def test_unknown_dataset_and_version_are_404(cloud: Cloud, tmp_path: Path) -> None:
    client = cloud.client()
    with pytest.raises(NotFoundError):
        client.datasets.version("nothing")
    client.datasets.push("some", image_folder(tmp_path / "img"))
    with pytest.raises(NotFoundError):
        client.datasets.version("some", 9)
    with pytest.raises(NotFoundError):
        client.datasets.pull("some", 9, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsafe_archive_is_refused_and_leaves_nothing(cloud: Cloud, tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ok.txt", "fine")
        z.writestr("../../escape.txt", "evil")
    client = cloud.client()
    with pytest.raises(BadRequestError) as err:
        client.datasets.push("evil", archive)
    assert err.value.code == "unsafe_archive"
    with pytest.raises(NotFoundError):
        client.datasets.get("evil")


def test_file_over_the_size_limit_is_413_and_creates_nothing(cloud: Cloud, tmp_path: Path) -> None:
    settings = cloud.settings.model_copy(update={"max_file_bytes": SMALL_FILE})
    app = create_app(settings, migrate=False)
    try:
        small = Cloud(app, settings, cloud.admin_key).client()
        write(tmp_path / "src", "big.bin", os.urandom(SMALL_FILE + 10))
        write(tmp_path / "src", "ok.txt", b"ok")
        with pytest.raises(PayloadTooLargeError):
            small.datasets.push("limited", tmp_path / "src")
        with pytest.raises(NotFoundError):
            small.datasets.get("limited")
    finally:
        app.state.db.dispose()


def test_viewer_reads_but_cannot_push_or_delete(cloud: Cloud, tmp_path: Path) -> None:
    admin = cloud.client()
    src = image_folder(tmp_path / "img")
    admin.datasets.push("shared", src)
    admin.users.add("vic", role="viewer")
    viewer = cloud.client(admin.keys.create("vic-key", user="vic").token)
    assert viewer.datasets.version("shared").version == 1
    viewer.datasets.pull("shared", 1, tmp_path / "out")
    with pytest.raises(ForbiddenError):
        viewer.datasets.push("shared", src)
    with pytest.raises(ForbiddenError):
        viewer.datasets.delete("shared")


def test_another_workspace_cannot_see_the_dataset(cloud: Cloud, tmp_path: Path) -> None:
    admin = cloud.client()
    admin.datasets.push("private", image_folder(tmp_path / "img"))
    admin.workspaces.create("other")
    other = cloud.client(admin.keys.create("other-key", workspace="other").token)
    assert other.datasets.list() == []
    with pytest.raises(NotFoundError):
        other.datasets.get("private")
    with pytest.raises(NotFoundError):
        other.datasets.pull("private", 1, tmp_path / "out")


def test_two_pushes_at_once_land_as_distinct_versions(
    live_server: LiveServer, tmp_path: Path
) -> None:
    folders = [image_folder(tmp_path / "a"), mixed_folder(tmp_path / "b")]
    versions: list[int] = []
    errors: list[BaseException] = []

    def push(src: Path) -> None:
        try:
            with live_server.client() as c:
                versions.append(c.datasets.push("race", src).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(versions) == [1, 2]
    with live_server.client() as c:
        counts = sorted(v.file_count for v in c.datasets.versions("race"))
    assert counts == [6, 6]
