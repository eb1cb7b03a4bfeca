"""Safe archive extraction: what gets in, what is refused, and where the limits bite."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterator

import pytest

from gureum.datasets.archive import (
    RATIO_FLOOR_BYTES,
    ArchiveLimits,
    ArchiveTooLarge,
    BadArchive,
    QuotaExceeded,
    UnsafeArchive,
    extract,
    member_path,
    sniff_format,
    strip_common_root,
)

LIMITS = ArchiveLimits(max_file_bytes=1 << 20, max_total_bytes=4 << 20, max_entries=100)


def collect(chunks: Iterator[bytes]) -> bytes:
    return b"".join(chunks)


def run(data: bytes, fmt: str, limits: ArchiveLimits = LIMITS) -> dict[str, bytes]:
    return {e.path: e.result for e in extract(io.BytesIO(data), fmt, limits, collect)}


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(members: list[tarfile.TarInfo | tuple[str, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.png", "a/b.png"),
        ("./a/./b.png", "a/b.png"),
        ("a//b.png", "a/b.png"),
        ("./", None),
        ("__MACOSX/a/._b.png", None),
        ("a/.DS_Store", None),
        ("a\\b.txt", "a/b.txt"),
    ],
)
def test_member_paths_are_normalised(name: str, expected: str | None) -> None:
    assert member_path(name) == expected


@pytest.mark.parametrize(
    "name", ["../evil.txt", "a/../../evil.txt", "/etc/passwd", "C:/x.txt", "..\\..\\evil.txt"]
)
def test_escaping_member_paths_are_refused(name: str) -> None:
    with pytest.raises(UnsafeArchive):
        member_path(name)


def test_zip_tar_and_tar_gz_extract_the_same_files_with_the_top_folder_stripped() -> None:
    files = {"data/cats/1.png": b"one", "data/dogs/2.png": b"two", "data/readme.txt": b"hi"}
    expected = {"cats/1.png": b"one", "dogs/2.png": b"two", "readme.txt": b"hi"}
    assert run(make_zip(files), "zip") == expected
    pairs = list(files.items())
    assert run(make_tar(pairs), "tar") == expected  # type: ignore[arg-type]
    assert run(make_tar(pairs, gz=True), "tar.gz") == expected  # type: ignore[arg-type]


def test_two_top_level_entries_keep_their_folders() -> None:
    assert strip_common_root(["a/x", "b/y"]) == ["a/x", "b/y"]
    assert strip_common_root(["a/x", "a/y"]) == ["x", "y"]
    assert strip_common_root(["x"]) == ["x"]


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt", "ok/../../evil.txt"])
def test_zip_slip_entries_are_refused(name: str) -> None:
    data = make_zip({"fine.txt": b"x", name: b"evil"})
    with pytest.raises(UnsafeArchive):
        run(data, "zip")


@pytest.mark.parametrize("name", ["../evil.txt", "/abs.txt"])
def test_tar_slip_entries_are_refused(name: str) -> None:
    with pytest.raises(UnsafeArchive):
        run(make_tar([("fine.txt", b"x"), (name, b"evil")], gz=True), "tar.gz")


def test_zip_symlink_entry_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        link = zipfile.ZipInfo("data/link")
        link.create_system = 3
        link.external_attr = (0o120777 << 16) & 0xFFFF0000
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchive, match="link"):
        run(buf.getvalue(), "zip")


@pytest.mark.parametrize(
    "member",
    [
        special("a/link", tarfile.SYMTYPE, "/etc/passwd"),
        special("a/hard", tarfile.LNKTYPE, "a/other"),
        special("a/dev", tarfile.CHRTYPE),
        special("a/fifo", tarfile.FIFOTYPE),
    ],
)
def test_tar_links_and_devices_are_refused(member: tarfile.TarInfo) -> None:
    with pytest.raises(UnsafeArchive):
        run(make_tar([("a/ok.txt", b"ok"), member]), "tar")


def test_compression_bomb_stops_at_the_expanded_limit() -> None:
    bomb = make_zip({f"z{i}.bin": b"\0" * (900 << 10) for i in range(8)})
    assert len(bomb) < 100_000
    with pytest.raises(ArchiveTooLarge, match="expands past"):
        run(bomb, "zip")
    gz = make_tar([(f"z{i}.bin", b"\0" * (900 << 10)) for i in range(8)], gz=True)
    with pytest.raises(ArchiveTooLarge):
        run(gz, "tar.gz")


def test_one_member_over_the_file_limit_is_too_large() -> None:
    with pytest.raises(ArchiveTooLarge, match="file size limit"):
        run(make_zip({"big.bin": b"\1" * ((1 << 20) + 1)}), "zip")


def test_too_many_entries() -> None:
    limits = ArchiveLimits(max_file_bytes=1 << 20, max_total_bytes=1 << 22, max_entries=3)
    with pytest.raises(ArchiveTooLarge, match="entries"):
        run(make_tar([(f"f{i}", b"x") for i in range(4)]), "tar", limits)
    with pytest.raises(ArchiveTooLarge, match="entries"):
        run(make_zip({f"f{i}": b"x" for i in range(4)}), "zip", limits)


def test_zip_body_over_the_limit_is_refused_while_spooling() -> None:
    limits = ArchiveLimits(max_file_bytes=1 << 20, max_total_bytes=1000, max_entries=10)
    stored = make_zip({"r.bin": bytes(range(256)) * 8000}, zipfile.ZIP_STORED)
    with pytest.raises(ArchiveTooLarge):
        run(stored, "zip", limits)


def test_corrupt_archives_are_bad_archives() -> None:
    with pytest.raises(BadArchive):
        run(b"PK\x03\x04 this is not really a zip", "zip")
    with pytest.raises(BadArchive):
        run(b"\x1f\x8b\x08 definitely not gzip data", "tar.gz")
    truncated = make_tar([("a.txt", b"x" * 5000)])[:1500]
    with pytest.raises(BadArchive):
        run(truncated, "tar")


def test_duplicate_entries_are_refused() -> None:
    with pytest.raises(BadArchive, match="two entries"):
        run(make_tar([("a.txt", b"1"), ("./a.txt", b"2")]), "tar")


def test_encrypted_zip_entries_are_refused() -> None:
    data = bytearray(make_zip({"a.txt": b"secret"}, zipfile.ZIP_STORED))
    # Set the "encrypted" flag in both the local header and the central directory entry.
    data[6] |= 0x1
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 0x1
    with pytest.raises(BadArchive, match="encrypted"):
        run(bytes(data), "zip")


def test_unknown_format() -> None:
    with pytest.raises(BadArchive):
        run(b"", "rar")


def test_sniff_format() -> None:
    assert sniff_format(make_zip({"a": b"1"})[:8]) == "zip"
    assert sniff_format(make_tar([("a", b"1")], gz=True)[:8]) == "tar.gz"
    assert sniff_format(make_tar([("a", b"1")])[:8]) == "tar"


# -- bombs, quotas and entry counts (issue 10) --------------------------------------------


def test_an_archive_past_the_expansion_ratio_stops_as_it_expands() -> None:
    from tests.integration.archive_bombs import tar_gz_bomb, zip_bomb

    limits = ArchiveLimits(1 << 30, 1 << 30, 100, max_ratio=100)
    for data, fmt in ((zip_bomb(128 << 20), "zip"), (tar_gz_bomb(128 << 20), "tar.gz")):
        seen = 0

        def sink(chunks: Iterator[bytes]) -> int:
            nonlocal seen
            for chunk in chunks:
                seen += len(chunk)
            return seen

        with pytest.raises(ArchiveTooLarge, match="compression bomb"):
            extract(io.BytesIO(data), fmt, limits, sink)
        # Stopped at the floor the ratio applies from (100x would be 13 MiB), not at 128 MiB.
        assert seen <= max(RATIO_FLOOR_BYTES, 100 * len(data)) + (1 << 20)


def test_the_quota_stops_an_archive_whatever_its_ratio() -> None:
    limits = ArchiveLimits(1 << 20, 4 << 20, 100, quota_bytes=1000)
    data = make_zip({"a.bin": b"\1" * 600, "b.bin": b"\2" * 600})
    with pytest.raises(QuotaExceeded, match="storage quota"):
        run(data, "zip", limits)
    assert run(data, "zip", ArchiveLimits(1 << 20, 4 << 20, 100, quota_bytes=1200))


@pytest.mark.parametrize("declared", [1, 200, 70_000])
def test_a_zip_directory_is_counted_record_by_record(declared: int) -> None:
    from tests.integration.archive_bombs import many_entries_zip

    with pytest.raises(ArchiveTooLarge, match="more than 100 entries"):
        run(many_entries_zip(200, declared), "zip")
    # At the limit it is read (and these records name a member that is not theirs).
    with pytest.raises(BadArchive):
        run(many_entries_zip(100, 100), "zip")


def test_a_zip_without_an_end_record_is_a_bad_archive() -> None:
    with pytest.raises(BadArchive, match="end of central directory"):
        run(b"PK\x03\x04" + b"\0" * 100, "zip")
