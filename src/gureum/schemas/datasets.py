"""Request and response shapes of datasets, their versions and files, and blobs.

Paths are checked here, once, for server and SDK alike: a file path is relative POSIX with no
empty, ``.`` or ``..`` part, so nothing a client sends can name a place outside the dataset.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from gureum.schemas.common import Out

SHA256_PATTERN = r"^[0-9a-f]{64}$"
MAX_PATH_CHARS = 1024
MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
# Bidi embeddings, overrides and isolates, the marks, and the line / paragraph separators.
_BIDI_AND_SEPARATORS = frozenset(
    [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c", "\u2028", "\u2029"]
)
MAX_FILES = 1_000_000
MAX_MISSING_QUERY = 10_000

VersionKind = Literal["images", "table", "text", "jsonl", "mixed", "files"]
FileKind = Literal["image", "table", "jsonl", "text", "other"]
SplitName = Literal["train", "validation"]


def _unsafe_char(c: str) -> bool:
    return c in _BIDI_AND_SEPARATORS or unicodedata.category(c) in ("Cc", "Cs")


def check_relative_path(path: str) -> str:
    """Accept only a clean relative POSIX path; raise ValueError otherwise.

    A path is shown in terminals and written to disks on pull, so control characters (C0,
    C1, DEL), bidi overrides and line separators are refused, and so are names a file system
    could not hold: a part over 255 UTF-8 bytes, or a whole path over ``MAX_PATH_BYTES``.
    """
    if not path or len(path) > MAX_PATH_CHARS:
        raise ValueError(f"path must be 1 to {MAX_PATH_CHARS} characters")
    bad = next((c for c in path if _unsafe_char(c)), None)
    if bad is not None:
        raise ValueError(f"path must not hold control or bidi characters (U+{ord(bad):04X})")
    size = len(path.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise ValueError(f"path is {size} bytes in UTF-8; at most {MAX_PATH_BYTES} can be pulled")
    longest = max(len(part.encode("utf-8")) for part in path.split("/"))
    if longest > MAX_NAME_BYTES:
        raise ValueError(
            f"a path part is {longest} bytes in UTF-8; file systems hold at most {MAX_NAME_BYTES}"
        )
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError("path must be relative POSIX (no leading '/', no '\\', no NUL)")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError("path must not have empty, '.' or '..' parts")
    if len(path) >= 2 and path[1] == ":":
        raise ValueError("path must not start with a drive letter")
    return path


RelPath = Annotated[str, AfterValidator(check_relative_path)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN, description="lowercase hex SHA-256")]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntry(In):
    path: RelPath
    sha256: Sha256
    size: int = Field(ge=0)


class PushRequest(In):
    files: list[FileEntry] = Field(min_length=1, max_length=MAX_FILES)
    message: str = Field(default="", max_length=10_000)
    validation_ratio: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = 0
    description: str | None = Field(default=None, max_length=10_000)

    @model_validator(mode="after")
    def _unique_paths(self) -> Self:
        seen: set[str] = set()
        dupes: list[str] = []
        for f in self.files:
            if f.path in seen:
                dupes.append(f.path)
            seen.add(f.path)
        if dupes:
            raise ValueError(f"duplicate paths: {', '.join(sorted(set(dupes))[:10])}")
        return self


class DatasetOut(Out):
    name: str
    description: str
    latest_version: int | None
    version_count: int
    created_at: datetime
    updated_at: datetime


class VersionOut(Out):
    dataset: str
    version: int
    kind: VersionKind
    file_count: int
    total_bytes: int
    schema_: dict[str, Any] = Field(alias="schema")
    split: dict[str, Any]
    preview: dict[str, Any]
    message: str
    pushed_by: str | None
    created_at: datetime
    # Where a version made by the platform came from (a curation: endpoint, period, filters,
    # record count, base); None for a push.
    source: dict[str, Any] | None = None

    # "schema" would shadow a BaseModel attribute; the wire name stays "schema" both ways.
    model_config = ConfigDict(
        from_attributes=True, validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


class FileOut(Out):
    path: str
    sha256: str
    size: int
    kind: FileKind
    label: str | None
    split: SplitName


class MissingRequest(In):
    sha256: list[Sha256] = Field(max_length=MAX_MISSING_QUERY)


class MissingOut(BaseModel):
    missing: list[str]


class BlobOut(BaseModel):
    sha256: str
    size: int


class BatchOut(BaseModel):
    stored: list[BlobOut]


class CurateRequest(BaseModel):
    """Make the next version of a dataset from an endpoint's captured calls and their feedback,
    merged with ``base`` ("NAME:V"; by default the dataset version the served model was
    trained on)."""

    model_config = ConfigDict(extra="forbid")

    from_endpoint: str = Field(min_length=1, max_length=63)
    since: datetime | None = None
    until: datetime | None = None
    min_rating: int | None = Field(default=None, ge=1, le=5)
    labelled_only: bool = False
    base: str | None = Field(default=None, min_length=1, max_length=200)
    # A generator retrained on its own rated outputs: at most this share of its training
    # pictures may be generated ones (the base's are all kept).
    max_generated_share: float = Field(default=0.25, gt=0, lt=1)
    message: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _period(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self
