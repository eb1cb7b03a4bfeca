"""A dataset version as a recipe sees it: files in a local folder plus the version's manifest.

The platform materialises a version's files into a folder and hands its manifest over (kind,
schema, split record, and path, kind, label, split per file). ``from_folder`` builds the same
manifest from a plain folder by running the platform's own scan (``gureum.datasets.scan``) over
the files a push of that folder would send, so a recipe run without the platform (tests, the
plain-Python benchmark, a laptop) labels and splits every file exactly as a push would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar, get_args

from gureum.client.upload import scan as files_to_push
from gureum.datasets.readers import kind_by_extension
from gureum.datasets.scan import Entry, scan, version_kind
from gureum.datasets.split import row_validation_mask
from gureum.schemas.datasets import FileKind, SplitName, VersionKind

SplitUnit = Literal["file", "row"]
T = TypeVar("T")

# Kept under these names for the recipes' signatures.
Split = SplitName
DatasetKind = VersionKind


def _one_of(literal: Any, value: Any) -> Any:
    """``value`` when it is one of the ``Literal``'s values; a manifest that says otherwise is
    refused rather than trusted."""
    if value not in get_args(literal):
        raise ValueError(f"{value!r} is not one of {', '.join(get_args(literal))}")
    return value


@dataclass(frozen=True)
class SplitRule:
    """The version's split parameters, as its ``split`` record holds them.

    Unit ``file``: every file's side is in the manifest. Unit ``row`` (a version of one table or
    JSONL file and no images): the rows of ``path`` are split by index with ``seed`` and
    ``validation_ratio``, and trainers reproduce that with ``split_rows``.
    """

    validation_ratio: float = 0.2
    seed: int = 0
    unit: SplitUnit = "file"
    path: str | None = None
    # Files whose every row is training data whatever the rule above says (captured traffic
    # curated into a version: the held-out side stays the base's, free of it).
    train_only: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_ratio < 1.0:
            raise ValueError("validation_ratio must be in [0, 1)")
        if self.unit not in get_args(SplitUnit):
            raise ValueError(f"split unit must be 'file' or 'row', not {self.unit!r}")
        if self.unit == "row" and not self.path:
            raise ValueError("a row split names the file whose rows it splits (path)")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SplitRule:
        try:
            ratio, seed = float(record["validation_ratio"]), int(record["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"split record needs validation_ratio and seed: {exc}") from None
        path = record.get("path")
        train_only = frozenset(str(p) for p in record.get("train_only") or ())
        return cls(
            ratio, seed, record.get("unit", "file"), None if path is None else str(path), train_only
        )

    def to_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "validation_ratio": self.validation_ratio,
            "seed": self.seed,
            "unit": self.unit,
        }
        if self.path is not None:
            out["path"] = self.path
        if self.train_only:
            out["train_only"] = sorted(self.train_only)
        return out

    def splits_rows_of(self, path: str) -> bool:
        return self.unit == "row" and self.path == path

    def split_rows(self, rows: Sequence[T]) -> tuple[list[T], list[T]]:
        """Rows 0..n-1 of one file by the platform's row rule: (train, validation)."""
        mask = row_validation_mask(self.seed, 0, len(rows), self.validation_ratio)
        train = [r for r, held in zip(rows, mask, strict=True) if not held]
        validation = [r for r, held in zip(rows, mask, strict=True) if held]
        return train, validation


@dataclass(frozen=True)
class DataFile:
    path: str  # relative, with forward slashes
    kind: FileKind
    label: str | None
    split: Split

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "label": self.label, "split": self.split}


@dataclass(frozen=True)
class LocalDataset:
    """``root`` holds the files; everything else is the version's manifest."""

    root: Path
    files: tuple[DataFile, ...]
    kind: DatasetKind
    schema: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    split: SplitRule = SplitRule()

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls, path: Path | str, validation_ratio: float = 0.2, seed: int = 0, name: str = ""
    ) -> LocalDataset:
        """What pushing this folder with this ratio and seed records, without the platform.

        Every file is read once (image headers, table and text rows), as the push's scan does.
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder")
        if not 0.0 <= validation_ratio < 1.0:
            raise ValueError("validation_ratio must be in [0, 1)")
        local = files_to_push(root)
        if not local:
            raise ValueError(f"{root} holds no files")
        sources = {f.path: f.source for f in local}

        def open_file(key: str) -> IO[bytes]:
            return open(sources[key], "rb")

        # The scan opens files by the entry's blob key: here the relative path stands in for it.
        entries = [Entry(f.path, f.path, f.size) for f in local]
        result = scan(entries, open_file, validation_ratio=validation_ratio, seed=seed)
        files = tuple(
            DataFile(f.path, _one_of(FileKind, f.kind), f.label, _one_of(Split, f.split))
            for f in result.files
        )
        kind = _one_of(DatasetKind, result.kind)
        return cls(root, files, kind, result.schema, name, SplitRule.from_record(result.split))

    @classmethod
    def empty(cls, root: Path | str) -> LocalDataset:
        """No data at all: what a script job that reads none of the platform's data gets."""
        return cls(Path(root), (), "files")

    @classmethod
    def from_manifest(cls, root: Path | str, manifest: Mapping[str, Any]) -> LocalDataset:
        """The platform's form: a version (``kind``, ``schema``, ``split`` record) with its
        ``files`` [{path, kind, label, split}]."""
        if not isinstance(manifest.get("split"), Mapping):
            raise ValueError("the manifest has no split record (validation_ratio, seed, unit)")
        files = tuple(
            DataFile(
                path=str(f["path"]),
                kind=_one_of(FileKind, f.get("kind") or kind_by_extension(f["path"]) or "other"),
                label=f.get("label"),
                split=_one_of(Split, f.get("split") or "train"),
            )
            for f in manifest.get("files", [])
        )
        kind = manifest.get("kind") or version_kind(f.kind for f in files)
        return cls(
            Path(root),
            files,
            _one_of(DatasetKind, kind),
            dict(manifest.get("schema") or {}),
            manifest.get("name", ""),
            SplitRule.from_record(manifest["split"]),
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "schema": self.schema,
            "split": self.split.to_record(),
            "files": [f.to_dict() for f in self.files],
        }

    # -- reading --------------------------------------------------------------------------------

    def select(self, kind: FileKind | None = None, split: Split | None = None) -> list[DataFile]:
        return [
            f
            for f in self.files
            if (kind is None or f.kind == kind) and (split is None or f.split == split)
        ]

    def path(self, f: DataFile) -> Path:
        return self.root / f.path

    def labels(self, kind: FileKind = "image") -> list[str]:
        """Sorted class names over all splits, so train and evaluation agree on indices."""
        return sorted({f.label for f in self.files if f.kind == kind and f.label is not None})

    def label_counts(self, kind: FileKind = "image") -> Counter[str]:
        return Counter(f.label for f in self.files if f.kind == kind and f.label is not None)

    def describe(self) -> str:
        """How error messages name the dataset's shape: its kind and its files' kinds."""
        counts = Counter(f.kind for f in self.files)
        parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        return f"{self.kind} ({parts or 'no files'})"
