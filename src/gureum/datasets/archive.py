"""Safe streaming extraction of zip, tar and tar.gz uploads.

Nothing here writes to a path taken from the archive: each regular member's bytes go to a
caller's sink (the blob store, by content hash). Entries that try to escape anyway ("..",
absolute paths, links, devices) are refused outright rather than skipped, so a hostile
archive fails loudly. Sizes are counted on the bytes actually produced, never taken from
headers, so a compression bomb stops at the limit: the expanded total, a storage quota, and
an expanded-to-compressed ratio (a 1 MiB zip of zeros stops at 100 MiB, not 1 GiB). tar and
tar.gz are read as a stream; zip keeps its directory at the end, so it is spooled to an
anonymous temporary file first, and its central directory is counted entry by entry (without
building them) before ``zipfile`` reads it, so an archive of millions of entries is refused
in a fraction of a second and in bounded memory.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import IO, Any, Generic, TypeVar, cast

from gureum.schemas.datasets import check_relative_path

T = TypeVar("T")

CHUNK = 1024 * 1024
Members = Generator[tuple[str, IO[bytes]], None, None]
FORMATS = ("zip", "tar", "tar.gz")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Operating-system litter that archivers add; a pushed folder skips hidden names the same way.
_LITTER_DIRS = ("__MACOSX",)


class ArchiveError(Exception):
    pass


class UnsafeArchive(ArchiveError):
    """An entry that could write outside the dataset, or is not a plain file or folder."""


class ArchiveTooLarge(ArchiveError):
    """Expanded bytes, a member's bytes or the entry count went past a limit."""


class QuotaExceeded(ArchiveTooLarge):
    """The expanded bytes went past what the workspace's storage quota has room for."""


class BadArchive(ArchiveError):
    """Not a readable archive of the given format, or one we do not support (encryption)."""


# Past this many expanded bytes, an archive must also keep to ``max_ratio``.
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
# What a zip's central directory may weigh per allowed entry (46 fixed bytes, name, extras).
CD_BYTES_PER_ENTRY = 640
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CD_ENTRY = 46


@dataclass(frozen=True)
class ArchiveLimits:
    max_file_bytes: int
    max_total_bytes: int
    max_entries: int
    # Expanded bytes per compressed byte read, checked past RATIO_FLOOR_BYTES; 0 turns it off.
    max_ratio: float = 0.0
    # Room left in the workspace's storage quota; None: no quota.
    quota_bytes: int | None = None

    @property
    def max_body_bytes(self) -> int:
        """The most an archive itself may weigh: its expanded limit plus room for headers."""
        return self.max_total_bytes + self.max_total_bytes // 10 + CHUNK


@dataclass(frozen=True)
class Extracted(Generic[T]):
    path: str
    result: T


def sniff_format(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    return "tar"


def member_path(name: str) -> str | None:
    """The clean relative path of an entry; None for entries we skip (folders, litter)."""
    name = name.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        raise UnsafeArchive(f"archive entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"archive entry {name!r} points outside the archive ('..')")
    if not parts or parts[0] in _LITTER_DIRS or any(p.startswith(".") for p in parts):
        return None
    path = "/".join(parts)
    try:
        check_relative_path(path)
    except ValueError as exc:
        raise UnsafeArchive(f"archive entry {name!r}: {exc}") from exc
    return path


def strip_common_root(paths: list[str]) -> list[str]:
    """Drop a single top-level folder that holds everything (``data.zip`` -> ``data/...``)."""
    if not paths:
        return paths
    first = paths[0].split("/", 1)[0]
    prefix = first + "/"
    if all(p.startswith(prefix) for p in paths):
        return [p[len(prefix) :] for p in paths]
    return paths


class _Counting(io.RawIOBase):
    """Counts the compressed bytes a reader has taken from the body."""

    def __init__(self, body: IO[bytes]) -> None:
        super().__init__()
        self.body = body
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


class _Budget:
    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.total = 0
        self.entries = 0
        self.compressed: Callable[[], int] = lambda: 0

    def _check_total(self) -> None:
        limits = self.limits
        if limits.quota_bytes is not None and self.total > limits.quota_bytes:
            raise QuotaExceeded(
                f"archive expands past the {limits.quota_bytes} bytes left in the workspace's "
                "storage quota"
            )
        if self.total > limits.max_total_bytes:
            raise ArchiveTooLarge(
                f"archive expands past the limit of {limits.max_total_bytes} bytes"
            )
        if limits.max_ratio and self.total > RATIO_FLOOR_BYTES:
            compressed = max(self.compressed(), 1)
            if self.total > limits.max_ratio * compressed:
                raise ArchiveTooLarge(
                    f"archive expands more than {limits.max_ratio:g} times its compressed size "
                    f"({self.total} bytes from {compressed}): refused as a compression bomb"
                )

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveTooLarge(
                f"archive has more than {self.limits.max_entries} entries (the limit)"
            )

    def chunks(self, fh: IO[bytes], path: str) -> Iterator[bytes]:
        size = 0
        while data := fh.read(CHUNK):
            size += len(data)
            self.total += len(data)
            if size > self.limits.max_file_bytes:
                raise ArchiveTooLarge(
                    f"{path} expands past the file size limit of {self.limits.max_file_bytes} bytes"
                )
            self._check_total()
            yield data


def extract(
    body: IO[bytes],
    fmt: str,
    limits: ArchiveLimits,
    sink: Callable[[Iterator[bytes]], T],
    *,
    spool_dir: str | None = None,
) -> list[Extracted[T]]:
    """Feed each regular member's bytes to ``sink``; return paths (top folder stripped) and
    what the sink returned, in archive order.

    A zip is spooled to an unnamed file in ``spool_dir`` (default: the system's temp
    folder), which vanishes however the process ends. On any error the caller cleans up
    what the sink already made.
    """
    if fmt not in FORMATS:
        raise BadArchive(f"unknown archive format {fmt!r}; use one of {', '.join(FORMATS)}")
    budget = _Budget(limits)
    if fmt == "zip":
        members = _zip_members(body, budget, spool_dir)
    else:
        counting = _Counting(body)
        budget.compressed = lambda: counting.count
        members = _tar_members(io.BufferedReader(counting, CHUNK), fmt, budget)
    out: list[Extracted[T]] = []
    seen: set[str] = set()
    try:
        with closing(members):  # the spool file and the tar stream close at once on error
            for path, fh in members:
                if path in seen:
                    raise BadArchive(f"archive has two entries named {path!r}")
                seen.add(path)
                out.append(Extracted(path, sink(budget.chunks(fh, path))))
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BadArchive(f"not a readable {fmt} archive: {exc}") from exc
    paths = strip_common_root([e.path for e in out])
    return [Extracted(p, e.result) for p, e in zip(paths, out, strict=True)]


def open_tar_stream(body: IO[bytes], *, gzip: bool) -> tarfile.TarFile:
    """A tar read strictly front to back (no seeking), so any readable stream will do."""
    if gzip:
        return tarfile.open(fileobj=body, mode="r|gz")
    return tarfile.open(fileobj=body, mode="r|")


def _tar_members(body: IO[bytes], fmt: str, budget: _Budget) -> Members:
    try:
        tf = open_tar_stream(body, gzip=fmt == "tar.gz")
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise BadArchive(f"not a readable {fmt} archive: {exc}") from exc
    with tf:
        for info in tf:
            # A stream keeps every header it read in ``members``; drop them as we go, so
            # memory stays flat however many entries come.
            cast(Any, tf).members.clear()  # (untyped attribute of TarFile)
            budget.entry()
            if info.issym() or info.islnk():
                raise UnsafeArchive(f"archive entry {info.name!r} is a link")
            if not (info.isreg() or info.isdir()):
                raise UnsafeArchive(f"archive entry {info.name!r} is not a file or folder")
            path = member_path(info.name)
            if info.isdir() or path is None:
                continue
            fh = tf.extractfile(info)
            if fh is None:  # pragma: no cover - isreg() members always have data
                raise BadArchive(f"archive entry {info.name!r} has no data")
            yield path, fh


def _zip_type(info: zipfile.ZipInfo) -> int:
    """The Unix file type bits a zip entry carries (0 when made on a system without them)."""
    return stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0


def _zip_members(body: IO[bytes], budget: _Budget, spool_dir: str | None) -> Members:
    limits = budget.limits
    spool_limit = limits.max_body_bytes
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        copied = 0
        while data := body.read(CHUNK):
            copied += len(data)
            if copied > spool_limit:
                raise ArchiveTooLarge(
                    f"archive is larger than the limit of {limits.max_total_bytes} bytes"
                )
            spool.write(data)
        budget.compressed = lambda: copied
        _check_zip_directory(spool, copied, limits)
        spool.seek(0)
        try:
            zf = zipfile.ZipFile(spool)
        except (zipfile.BadZipFile, OSError) as exc:
            raise BadArchive(f"not a readable zip archive: {exc}") from exc
        with zf:
            infos = zf.infolist()
            # Check every entry before reading any: a zip's directory is known up front.
            plan: list[tuple[str, zipfile.ZipInfo]] = []
            for info in infos:
                budget.entry()
                kind = _zip_type(info)
                if kind == stat.S_IFLNK:
                    raise UnsafeArchive(f"archive entry {info.filename!r} is a link")
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchive(f"archive entry {info.filename!r} is not a file or folder")
                path = member_path(info.filename)
                if info.is_dir() or kind == stat.S_IFDIR or path is None:
                    continue
                if info.flag_bits & 0x1:
                    raise BadArchive(f"archive entry {info.filename!r} is encrypted")
                plan.append((path, info))
            for path, info in plan:
                with zf.open(info) as fh:
                    yield path, fh


def _check_zip_directory(spool: IO[bytes], size: int, limits: ArchiveLimits) -> None:
    """Refuse a zip whose central directory holds more than ``max_entries`` entries, counted
    record by record (the end record's own count may lie), before ``zipfile`` builds them."""
    tail_size = min(size, _EOCD.size + 0xFFFF)
    spool.seek(size - tail_size)
    tail = spool.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        raise BadArchive("not a readable zip archive: no end of central directory")
    _, _, _, _, declared, cd_size, _, _ = _EOCD.unpack_from(tail, at)
    cd_end = size - tail_size + at
    zip64_at = at - _EOCD64_LOCATOR.size
    if zip64_at >= 0 and tail[zip64_at : zip64_at + 4] == b"PK\x06\x07":
        record_at = cd_end - _EOCD64_LOCATOR.size - _EOCD64.size
        if record_at < 0:
            raise BadArchive("not a readable zip archive: a broken zip64 end record")
        spool.seek(record_at)
        record = spool.read(_EOCD64.size)
        if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
            raise BadArchive("not a readable zip archive: a broken zip64 end record")
        declared, cd_size = _EOCD64.unpack(record)[7:9]
        cd_end = record_at
    too_many = f"archive has more than {limits.max_entries} entries (the limit)"
    if declared > limits.max_entries or cd_size > limits.max_entries * CD_BYTES_PER_ENTRY:
        raise ArchiveTooLarge(too_many)
    cd_start = cd_end - cd_size
    if cd_start < 0:
        raise BadArchive("not a readable zip archive: the central directory lies outside it")
    spool.seek(cd_start)
    directory = spool.read(cd_size)
    pos = count = 0
    while pos + _CD_ENTRY <= len(directory) and directory[pos : pos + 4] == b"PK\x01\x02":
        name, extra, comment = struct.unpack_from("<3H", directory, pos + 28)
        pos += _CD_ENTRY + name + extra + comment
        count += 1
        if count > limits.max_entries:
            raise ArchiveTooLarge(too_many)


__all__ = [
    "FORMATS",
    "ArchiveError",
    "ArchiveLimits",
    "ArchiveTooLarge",
    "BadArchive",
    "Extracted",
    "QuotaExceeded",
    "UnsafeArchive",
    "extract",
    "member_path",
    "sniff_format",
    "strip_common_root",
]
