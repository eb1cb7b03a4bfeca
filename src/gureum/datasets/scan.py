"""Describe a version from its files: kinds, labels, schema, split and a preview.

Input is the manifest (path, sha256, size) and a way to open a blob; nothing here knows about
HTTP or the database. Kinds come from the extension, and from the first bytes when the
extension says nothing. Labels come from a folder-per-class layout: when every image sits
at ``<class>/<file>``, the folder is its label.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any

from gureum.datasets import readers as rd
from gureum.datasets.split import count_validation_rows, file_split

OpenBlob = Callable[[str], AbstractContextManager[IO[bytes]]]

PREVIEW_IMAGES = 8
MAX_SIZE_KEYS = 20
MAX_LISTED = 100
VERSION_KINDS = {"image": "images", "table": "table", "jsonl": "jsonl", "text": "text"}


@dataclass(frozen=True)
class Entry:
    path: str
    sha256: str
    size: int


@dataclass
class ScannedFile:
    path: str
    sha256: str
    size: int
    kind: str
    label: str | None = None
    split: str = "train"


@dataclass
class ScanResult:
    kind: str
    schema: dict[str, Any]
    split: dict[str, Any]
    preview: dict[str, Any]
    files: list[ScannedFile]


@dataclass
class _Facts:
    """What the readers found, keyed by path (content facts cached by sha256)."""

    images: dict[str, rd.ImageInfo] = field(default_factory=dict)
    tables: dict[str, rd.TableInfo] = field(default_factory=dict)
    jsonl: dict[str, rd.JsonlInfo] = field(default_factory=dict)
    texts: dict[str, rd.TextInfo] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)


def scan(
    entries: Sequence[Entry],
    open_blob: OpenBlob,
    *,
    validation_ratio: float,
    seed: int,
    max_line_bytes: int | None = None,
) -> ScanResult:
    """Raises readers.LineTooLong (naming the path) for a CSV / JSONL / text file with a line
    over ``max_line_bytes``."""
    ordered = sorted(entries, key=lambda e: e.path)
    facts = _Facts()
    cache: dict[tuple[str, str, str], Any] = {}
    files = [_read(e, open_blob, facts, cache, max_line_bytes) for e in ordered]
    _assign_labels(files)
    split = _split(files, facts, validation_ratio, seed)
    kinds = Counter(f.kind for f in files)
    return ScanResult(
        kind=_version_kind(kinds),
        schema=_schema(files, facts, kinds),
        split=split,
        preview=_preview(files, facts, open_blob),
        files=files,
    )


def _read(
    entry: Entry,
    open_blob: OpenBlob,
    facts: _Facts,
    cache: dict[tuple[str, str, str], Any],
    max_line_bytes: int | None,
) -> ScannedFile:
    kind = rd.kind_by_extension(entry.path)
    if kind is None:
        kind = _sniff(entry, open_blob)
    out = ScannedFile(entry.path, entry.sha256, entry.size, kind)
    if kind == "other":
        return out
    key = (entry.sha256, kind, rd.extension(entry.path))
    if key in cache:
        found = cache[key]
    else:
        with open_blob(entry.sha256) as fh:
            read: IO[bytes] = fh
            if max_line_bytes is not None and kind in ("table", "jsonl", "text"):
                read = rd.line_limited(fh, max_line_bytes)
            try:
                found = _facts_of(kind, entry.path, read)
            except rd.LineTooLong as exc:
                raise rd.LineTooLong(exc.line, exc.limit, entry.path) from None
        cache[key] = found
    if found is None:
        out.kind = "other"
        if kind != "other":
            facts.unreadable.append(entry.path)
    elif isinstance(found, rd.ImageInfo):
        facts.images[entry.path] = found
    elif isinstance(found, rd.TableInfo):
        facts.tables[entry.path] = found
    elif isinstance(found, rd.JsonlInfo):
        facts.jsonl[entry.path] = found
    elif isinstance(found, rd.TextInfo):
        facts.texts[entry.path] = found
    return out


def _sniff(entry: Entry, open_blob: OpenBlob) -> str:
    if entry.size == 0:
        return "other"
    with open_blob(entry.sha256) as fh:
        head = fh.read(rd.SNIFF_BYTES)
    if rd.looks_like_image(head):
        return "image"
    if rd.looks_like_text(head):
        return "text"
    return "other"


def _facts_of(kind: str, path: str, fh: IO[bytes]) -> Any:
    if kind == "image":
        return rd.image_info(fh)
    if kind == "table":
        return rd.read_table(fh, rd.TABLE_EXTENSIONS.get(rd.extension(path), ","))
    if kind == "jsonl":
        return rd.read_jsonl(fh)
    if kind == "text":
        return rd.read_text(fh)
    return None


def _assign_labels(files: list[ScannedFile]) -> None:
    images = [f for f in files if f.kind == "image"]
    if images and all(f.path.count("/") == 1 for f in images):
        for f in images:
            f.label = f.path.split("/", 1)[0]


def _split(files: list[ScannedFile], facts: _Facts, ratio: float, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"validation_ratio": ratio, "seed": seed}
    tables = [f for f in files if f.kind in ("table", "jsonl")]
    if len(tables) == 1 and not any(f.kind == "image" for f in files):
        table = tables[0]
        info = facts.tables.get(table.path) or facts.jsonl.get(table.path)
        rows = info.rows if info is not None else 0
        validation = count_validation_rows(seed, rows, ratio)
        out.update(unit="row", path=table.path, train=rows - validation, validation=validation)
        return out
    validation = 0
    for f in files:
        f.split = file_split(seed, f.path, ratio)
        validation += f.split == "validation"
    out.update(unit="file", train=len(files) - validation, validation=validation)
    return out


def version_kind(file_kinds: Iterable[str]) -> str:
    """A version's kind from its files' kinds, as a push records it."""
    return _version_kind(Counter(file_kinds))


def _version_kind(kinds: Counter[str]) -> str:
    if len(kinds) != 1:
        return "mixed"
    (only,) = kinds
    return VERSION_KINDS.get(only, "files")


def _top(counter: Counter[str], limit: int) -> dict[str, int]:
    top = dict(counter.most_common(limit))
    rest = sum(counter.values()) - sum(top.values())
    if rest:
        top["other"] = top.get("other", 0) + rest
    return top


def _schema(files: list[ScannedFile], facts: _Facts, kinds: Counter[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {"kinds": dict(sorted(kinds.items()))}
    if facts.images:
        labels = Counter(f.label for f in files if f.label is not None)
        if labels:
            schema["classes"] = dict(sorted(labels.items()))
        schema["image_sizes"] = _top(
            Counter(f"{i.width}x{i.height}" for i in facts.images.values()), MAX_SIZE_KEYS
        )
        schema["modes"] = dict(Counter(i.mode for i in facts.images.values()).most_common())
    structured = len(facts.tables) + len(facts.jsonl)
    if structured == 1 and facts.tables:
        schema.update(next(iter(facts.tables.values())).schema())
    elif structured == 1:
        schema.update(next(iter(facts.jsonl.values())).schema())
    else:
        if facts.tables:
            schema["tables"] = {p: t.schema() for p, t in list(facts.tables.items())[:MAX_LISTED]}
        if facts.jsonl:
            schema["jsonl"] = {p: j.schema() for p, j in list(facts.jsonl.items())[:MAX_LISTED]}
    if facts.texts:
        schema["lines"] = sum(t.lines for t in facts.texts.values())
        schema["chars"] = sum(t.chars for t in facts.texts.values())
    if facts.unreadable:
        schema["unreadable"] = facts.unreadable[:MAX_LISTED]
    return schema


def _preview(files: list[ScannedFile], facts: _Facts, open_blob: OpenBlob) -> dict[str, Any]:
    preview: dict[str, Any] = {}
    for f in files:
        if f.path in facts.tables:
            preview["rows"] = facts.tables[f.path].preview
            break
        if f.path in facts.jsonl:
            preview["rows"] = facts.jsonl[f.path].preview
            break
    if facts.texts:
        preview["lines"] = next(iter(facts.texts.values())).preview
    images = _preview_images(files)
    if images:
        preview["images"] = [_thumb(f, facts.images[f.path], open_blob) for f in images]
    return preview


def _preview_images(files: list[ScannedFile]) -> list[ScannedFile]:
    """Up to PREVIEW_IMAGES images: the first of each class first, then the next in order."""
    images = [f for f in files if f.kind == "image"]
    chosen: list[ScannedFile] = []
    seen: set[str | None] = set()
    for f in images:
        if f.label not in seen:
            seen.add(f.label)
            chosen.append(f)
    taken = {f.path for f in chosen}
    chosen.extend(f for f in images if f.path not in taken)
    return chosen[:PREVIEW_IMAGES]


def _thumb(f: ScannedFile, info: rd.ImageInfo, open_blob: OpenBlob) -> dict[str, Any]:
    with open_blob(f.sha256) as fh:
        thumb = rd.thumbnail_png(fh)
    return {
        "path": f.path,
        "label": f.label,
        "width": info.width,
        "height": info.height,
        "thumbnail": thumb,
    }
