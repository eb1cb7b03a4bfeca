"""Sample grids published while a job trains (compute/samples.py): a picture is stored and
reported once it has not been written for a moment, again when it is written anew, never
half-way; other files and other folders are left to the end of the job."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from gureum.compute.samples import SamplePublisher
from gureum.storage.store import ArtifactStore


def settle(path: Path, later_s: int = 0) -> None:
    """As if written a few seconds ago (``later_s`` after the previous settling)."""
    when = time.time_ns() - 5 * 10**9 + later_s * 10**8
    os.utime(path, ns=(when, when))


def test_grids_are_published_once_written_and_again_when_rewritten(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    artifacts = tmp_path / "artifacts"
    (artifacts / "samples").mkdir(parents=True)
    (artifacts / "model").mkdir()
    items: list[dict[str, Any]] = []
    pub = SamplePublisher(store, 7, artifacts, items.append)

    assert pub.scan() == 0  # nothing yet
    grid = artifacts / "samples" / "epoch-0001.png"
    grid.write_bytes(b"\x89PNG first")
    (artifacts / "samples" / "notes.txt").write_text("not a picture")
    (artifacts / "model" / "weights.png").write_bytes(b"not a sample")
    assert pub.scan() == 0  # just written: it may still be being written
    settle(grid)
    assert pub.scan() == 1
    assert items == [
        {
            "type": "output",
            "path": "samples/epoch-0001.png",
            "sha256": hashlib.sha256(b"\x89PNG first").hexdigest(),
            "size": len(b"\x89PNG first"),
        }
    ]
    with store.open_blob(7, items[0]["sha256"]) as fh:
        assert fh.read() == b"\x89PNG first"
    assert pub.scan() == 0  # unchanged: not again

    grid.write_bytes(b"\x89PNG second, longer")
    assert pub.scan() == 0
    settle(grid, 1)
    assert pub.scan() == 1
    assert items[-1]["sha256"] == hashlib.sha256(b"\x89PNG second, longer").hexdigest()
    assert len(items) == 2


def test_the_thread_publishes_on_its_own_and_stops(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "store"))
    artifacts = tmp_path / "artifacts"
    (artifacts / "samples").mkdir(parents=True)
    (artifacts / "samples" / "all.png").write_bytes(b"grid")
    items: list[dict[str, Any]] = []
    pub = SamplePublisher(store, 1, artifacts, items.append, scan_s=0.05).start()
    deadline = time.monotonic() + 10
    while not items and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.close()
    assert [i["path"] for i in items] == ["samples/all.png"]


def test_links_are_never_followed(tmp_path: Path) -> None:
    """A link among the samples (to a secret, or a linked folder) is not read or published."""
    store = ArtifactStore(str(tmp_path / "store"))
    secret = tmp_path / "serving.key"
    secret.write_bytes(b"platform secret")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "inside.png").write_bytes(b"\x89PNG behind a linked folder")
    artifacts = tmp_path / "artifacts"
    (artifacts / "samples").mkdir(parents=True)
    (artifacts / "samples" / "grid.png").symlink_to(secret)
    (artifacts / "samples" / "linked").symlink_to(elsewhere, target_is_directory=True)
    settle(secret)
    settle(elsewhere / "inside.png")
    items: list[dict[str, Any]] = []
    assert SamplePublisher(store, 7, artifacts, items.append).scan() == 0
    assert items == []
    # A samples folder that is itself a link is not looked into either.
    other = tmp_path / "other"
    other.mkdir()
    (other / "samples").symlink_to(elsewhere, target_is_directory=True)
    assert SamplePublisher(store, 7, other, items.append).scan() == 0
