"""Safe streaming extraction of zip, tar and tar.gz uploads.

Nothing here writes to a path taken from the archive: each regular member's bytes go to a
caller's sink (the blob store, by content hash). Entries that try to escape anyway ("..",
absolute paths, links, devices) are refused outright rather than skipped, so a hostile
archive fails loudly. Sizes are counted on the bytes actually produced, never taken from
headers, so a compression bomb stops at the limit. tar and tar.gz are read as a stream;
zip keeps its directory at the end, so it is spooled to an anonymous temporary file first.
"""

from __future__ import annotations

import re
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import IO, Generic, TypeVar

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


class BadArchive(ArchiveError):
    """Not a readable archive of the given format, or one we do not support (encryption)."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_file_bytes: int
    max_total_bytes: int
    max_entries: int

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


class _Budget:
    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.total = 0
        self.entries = 0

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
            if self.total > self.limits.max_total_bytes:
                raise ArchiveTooLarge(
                    f"archive expands past the limit of {self.limits.max_total_bytes} bytes"
                )
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
        members = _tar_members(body, fmt, budget)
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


__all__ = [
    "FORMATS",
    "ArchiveError",
    "ArchiveLimits",
    "ArchiveTooLarge",
    "BadArchive",
    "Extracted",
    "UnsafeArchive",
    "extract",
    "member_path",
    "sniff_format",
    "strip_common_root",
]
