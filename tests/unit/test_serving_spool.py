"""The usage spool: nothing appended is lost, whether shipping fails, the writer dies mid-line
or the file rotates; what was shipped is not shipped again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gureum.schemas.metering import MAX_BATCH
from gureum.serving import spool as spool_module
from gureum.serving.spool import SpoolFile, UsageSpool, of_kind


class Shipper:
    """Stands in for the control plane: takes batches, or refuses them while ``down``."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]] = []
        self.down = False
        self.calls = 0

    def __call__(self, endpoint: str, items: list[dict[str, Any]]) -> None:
        self.calls += 1
        if self.down:
            raise ConnectionError("control plane unreachable")
        self.batches.append((endpoint, of_kind(items, "usage"), of_kind(items, "shadow")))

    @property
    def ids(self) -> list[str]:
        return [r["id"] for _, records, _ in self.batches for r in records]


@pytest.fixture
def ship() -> Shipper:
    return Shipper()


@pytest.fixture
def spool(tmp_path: Path, ship: Shipper) -> Iterator[UsageSpool]:
    s = UsageSpool(tmp_path / "spool", "shop", ship, interval_s=0.05)
    yield s
    ship.down = False
    s.close()


def usage(i: int) -> dict[str, Any]:
    return {"id": f"rec-{i:06d}", "status": 200, "units": 1.0}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    code = "import os; print(os.getpid())"
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    pid = int(proc.stdout)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def orphan(folder: Path, pid: int, lines: list[bytes], endpoint: str = "shop") -> Path:
    path = folder / f"{endpoint}.{pid}.1.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def line(kind: str, record: dict[str, Any]) -> bytes:
    return json.dumps({"kind": kind, **record}).encode() + b"\n"


def test_appended_records_are_shipped_once_without_their_kind(
    spool: UsageSpool, ship: Shipper
) -> None:
    spool.append("usage", usage(1))
    spool.append("shadow", {"id": "shadow-1", "status": 200})
    spool.append("usage", usage(2))
    spool.flush()
    assert ship.batches == [("shop", [usage(1), usage(2)], [{"id": "shadow-1", "status": 200}])]
    assert spool.shipped == 3
    spool.flush()  # nothing new: nothing shipped, not even an empty batch
    assert ship.calls == 1


def test_records_are_shipped_in_batches_of_at_most_max_batch(
    spool: UsageSpool, ship: Shipper
) -> None:
    for i in range(MAX_BATCH + 3):
        spool.append("usage", usage(i))
    spool.flush()
    assert [len(records) for _, records, _ in ship.batches] == [MAX_BATCH, 3]
    assert ship.ids == [f"rec-{i:06d}" for i in range(MAX_BATCH + 3)]


def test_a_failed_shipment_keeps_the_records_and_ships_the_same_ids_later(
    spool: UsageSpool, ship: Shipper
) -> None:
    for i in range(3):
        spool.append("usage", usage(i))
    ship.down = True
    with pytest.raises(ConnectionError):
        spool.flush()
    assert ship.batches == [] and spool.shipped == 0
    spool.append("usage", usage(3))
    ship.down = False
    spool.flush()
    assert ship.ids == ["rec-000000", "rec-000001", "rec-000002", "rec-000003"]


def test_the_background_shipper_survives_failures_and_catches_up(
    spool: UsageSpool, ship: Shipper
) -> None:
    ship.down = True
    spool.start()
    spool.append("usage", usage(1))
    deadline = time.monotonic() + 10
    while spool.failures < 2:
        assert time.monotonic() < deadline, "the shipper never tried"
        time.sleep(0.02)
    assert ship.batches == []
    ship.down = False
    while spool.shipped < 1:
        assert time.monotonic() < deadline, "the shipper did not recover"
        time.sleep(0.02)
    assert ship.ids == ["rec-000001"]


def test_close_ships_what_is_left(tmp_path: Path, ship: Shipper) -> None:
    s = UsageSpool(tmp_path, "shop", ship, interval_s=3600)
    s.start()
    s.append("usage", usage(1))
    s.close()
    assert ship.ids == ["rec-000001"]


def test_a_partial_last_line_waits_until_it_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "shop.1.1.jsonl"
    whole = line("usage", usage(2))
    path.write_bytes(line("usage", usage(1)) + whole[:10])
    f = SpoolFile(path)
    items, end = f.pending()
    assert [i["id"] for i in items] == ["rec-000001"]
    f.mark(end)
    assert f.pending()[0] == []  # still being written
    with open(path, "ab") as fh:
        fh.write(whole[10:])
    items, end = f.pending()
    assert [i["id"] for i in items] == ["rec-000002"] and end == path.stat().st_size


def test_a_corrupt_line_is_skipped_not_a_blocker(tmp_path: Path) -> None:
    path = tmp_path / "shop.1.1.jsonl"
    path.write_bytes(line("usage", usage(1)) + b"{not json\n" + line("usage", usage(2)))
    items, _ = SpoolFile(path).pending()
    assert [i["id"] for i in items] == ["rec-000001", "rec-000002"]


def test_a_dead_processs_spool_is_adopted_and_removed_once_shipped(
    spool: UsageSpool, ship: Shipper
) -> None:
    pid = dead_pid()
    path = orphan(spool.folder, pid, [line("usage", usage(1)), line("usage", usage(2))])
    # Where it had got to before dying: the first record was shipped already.
    SpoolFile(path).mark(len(line("usage", usage(1))))
    spool.append("usage", usage(3))
    spool.flush()
    assert sorted(ship.ids) == ["rec-000002", "rec-000003"]
    assert not path.exists() and not path.with_suffix(".offset").exists()


def test_an_orphan_is_kept_while_shipping_fails(spool: UsageSpool, ship: Shipper) -> None:
    path = orphan(spool.folder, dead_pid(), [line("usage", usage(1))])
    ship.down = True
    with pytest.raises(ConnectionError):
        spool.flush()
    assert path.exists()
    ship.down = False
    spool.flush()
    assert ship.ids == ["rec-000001"] and not path.exists()


def test_an_orphans_partial_line_is_not_shipped(spool: UsageSpool, ship: Shipper) -> None:
    whole = line("usage", usage(2))
    path = orphan(spool.folder, dead_pid(), [line("usage", usage(1)), whole[:7]])
    spool.flush()
    assert ship.ids == ["rec-000001"]
    assert path.exists()  # not removed while a line is incomplete: never half-shipped


def test_spools_of_live_processes_and_other_endpoints_are_left_alone(
    spool: UsageSpool, ship: Shipper
) -> None:
    live = orphan(spool.folder, os.getppid(), [line("usage", usage(1))])
    other = orphan(spool.folder, dead_pid(), [line("usage", usage(2))], endpoint="other")
    odd = spool.folder / "shop.notapid.1.jsonl"
    odd.write_bytes(line("usage", usage(3)))
    spool.flush()
    assert ship.ids == []
    assert live.exists() and other.exists() and odd.exists()


def test_rotation_starts_a_new_file_once_the_old_is_shipped(
    spool: UsageSpool, ship: Shipper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "ROTATE_BYTES", 200)
    for i in range(5):
        spool.append("usage", usage(i))
    first = sorted(spool.folder.glob("shop.*.jsonl"))
    assert len(first) == 1 and first[0].stat().st_size >= 200
    # Not rotated while unshipped: the records would be lost with the file.
    ship.down = True
    with pytest.raises(ConnectionError):
        spool.flush()
    assert first[0].exists()
    ship.down = False
    spool.flush()
    assert not first[0].exists() and not first[0].with_suffix(".offset").exists()
    current = list(spool.folder.glob("shop.*.jsonl"))
    assert len(current) == 1 and current[0] != first[0]
    spool.append("usage", usage(5))
    spool.flush()
    assert ship.ids == [f"rec-{i:06d}" for i in range(6)]
    assert current[0].stat().st_size > 0


def test_a_bounded_spool_drops_and_counts_past_its_bound_until_shipping_frees_it(
    tmp_path: Path, ship: Shipper
) -> None:
    one = len(json.dumps({"kind": "usage", **usage(1)}, separators=(",", ":"))) + 1
    s = UsageSpool(tmp_path, "shop", ship, interval_s=3600, max_bytes=3 * one)
    try:
        ship.down = True
        assert [s.append("usage", usage(i)) for i in range(5)] == [True, True, True, False, False]
        assert s.dropped == 2 and s.pending_bytes == 3 * one
        with pytest.raises(ConnectionError):
            s.flush()
        ship.down = False
        s.flush()  # storage is back: what was kept ships, and there is room again
        assert ship.ids == [f"rec-{i:06d}" for i in range(3)]
        assert s.pending_bytes == 0 and s.append("usage", usage(9))
    finally:
        s.close()


def test_a_line_longer_than_the_first_read_is_shipped_whole(
    tmp_path: Path, ship: Shipper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "FIRST_READ", 64)
    s = UsageSpool(tmp_path, "shop", ship, interval_s=3600)
    try:
        big = {"id": "rec-big", "blob": "x" * 1000}
        s.append("usage", big)
        s.append("usage", usage(2))
        s.flush()
        assert ship.ids == ["rec-big", "rec-000002"]
        assert ship.batches[0][1][0]["blob"] == "x" * 1000
    finally:
        s.close()
