"""Sample inputs for a version's smoke test, from the validation split of its lineage dataset.

Recipe-aware, data only (no model, no user code): images as base64 for image classifiers,
class requests for image generators, rows without the target for tabular models, short prompts
for text generators. Reads a bounded number of bytes from the artifact store.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gureum.datasets.readers import JSONL_EXTENSIONS, TABLE_EXTENSIONS, extension, table_rows
from gureum.datasets.split import row_validation_mask
from gureum.recipes.dataset import SplitRule
from gureum.server.db.tables import Dataset, DatasetFile, DatasetVersion, ModelVersion
from gureum.serving.validation import MAX_SAMPLE_BYTES
from gureum.storage.store import ArtifactStore

# A file larger than this is not read for samples (a table's rows, a text's lines).
MAX_FILE_BYTES = 16 * 1024 * 1024
# An image larger than this is skipped: its base64 would crowd out the others.
MAX_IMAGE_BYTES = 256 * 1024
PROMPT_CHARS = 32
PROMPT_TOKENS = 8


def pick(
    s: Session, store: ArtifactStore, workspace_id: int, version: ModelVersion, count: int
) -> tuple[list[Any], str]:
    """Up to ``count`` inputs and where they came from; none when the version has no lineage
    dataset or its recipe takes inputs no dataset file gives (the test is then load only)."""
    if version.dataset_version_id is None:
        return [], "none: the version records no dataset (load checked only)"
    dv = s.get(DatasetVersion, version.dataset_version_id)
    ds = s.get(Dataset, dv.dataset_id) if dv is not None else None
    if dv is None or ds is None:
        return [], "none: the version's dataset is gone (load checked only)"
    label = f"{ds.name}:{dv.version}"
    files = list(
        s.scalars(
            select(DatasetFile).where(DatasetFile.version_id == dv.id).order_by(DatasetFile.path)
        )
    )
    rule = _rule(dv.split)
    picked: list[Any] = []
    if version.recipe == "image-classifier":
        picked = _images(store, workspace_id, files, count)
    elif version.recipe == "image-generator":
        classes = sorted({f.label for f in files if f.kind == "image" and f.label})
        picked = [{"class": c, "count": 1, "seed": i} for i, c in enumerate(classes * count)]
    elif version.recipe == "tabular":
        drop = {str(version.params.get("target", ""))} | set(version.params.get("drop") or [])
        rows = _rows(store, workspace_id, files, rule, count)
        picked = [{k: v for k, v in r.items() if k not in drop} for r in rows]
    elif version.recipe == "text-generator":
        texts = _texts(store, workspace_id, files, rule, count)
        picked = [{"prompt": t[:PROMPT_CHARS], "max_tokens": PROMPT_TOKENS} for t in texts]
    picked = bounded(picked[:count])
    if not picked:
        return [], f"none: no usable validation inputs in dataset {label} (load checked only)"
    return picked, f"{len(picked)} inputs from the validation split of dataset {label}"


def bounded(inputs: list[Any]) -> list[Any]:
    """The leading inputs whose JSON fits in MAX_SAMPLE_BYTES together."""
    out, size = [], 2
    for item in inputs:
        size += len(json.dumps(item, separators=(",", ":"), default=str)) + 1
        if size > MAX_SAMPLE_BYTES:
            break
        out.append(item)
    return out


def _rule(record: dict[str, Any]) -> SplitRule | None:
    try:
        return SplitRule.from_record(record)
    except ValueError:
        return None


def _validation_first(files: list[DatasetFile], kind: str) -> list[DatasetFile]:
    """The validation split's files of ``kind``; the others after them (a dataset whose split
    holds none of that kind still gives samples)."""
    of_kind = [f for f in files if f.kind == kind]
    return [f for f in of_kind if f.split == "validation"] + [
        f for f in of_kind if f.split != "validation"
    ]


def _read(store: ArtifactStore, workspace_id: int, f: DatasetFile, limit: int) -> bytes | None:
    if f.size > limit:
        return None
    with store.open_blob(workspace_id, f.sha256) as fh:
        return fh.read(limit + 1)[:limit]


def _images(
    store: ArtifactStore, workspace_id: int, files: list[DatasetFile], count: int
) -> list[Any]:
    out: list[Any] = []
    for f in _validation_first(files, "image"):
        data = _read(store, workspace_id, f, MAX_IMAGE_BYTES)
        if data is not None:
            out.append(base64.b64encode(data).decode())
        if len(out) >= count:
            break
    return out


def _held_out(rule: SplitRule | None, f: DatasetFile, items: list[Any]) -> list[Any]:
    """A file's items on the validation side: its rows held out by a row split, else all of
    a validation file's, else (a train file) all of them, after the held-out ones of others."""
    if rule is not None and rule.splits_rows_of(f.path):
        mask = row_validation_mask(rule.seed, 0, len(items), rule.validation_ratio)
        held = [r for r, m in zip(items, mask, strict=True) if m]
        return held + [r for r, m in zip(items, mask, strict=True) if not m]
    return items


def _ordered(files: list[DatasetFile], kinds: tuple[str, ...]) -> Iterator[DatasetFile]:
    for kind in kinds:
        yield from _validation_first(files, kind)


def _rows(
    store: ArtifactStore,
    workspace_id: int,
    files: list[DatasetFile],
    rule: SplitRule | None,
    count: int,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in _ordered(files, ("table",)):
        data = _read(store, workspace_id, f, MAX_FILE_BYTES)
        if data is None:
            continue
        rows = list(table_rows(io.BytesIO(data), TABLE_EXTENSIONS.get(extension(f.path), ",")))
        out += _held_out(rule, f, rows)
        if len(out) >= count:
            break
    return out[:count]


def _texts(
    store: ArtifactStore,
    workspace_id: int,
    files: list[DatasetFile],
    rule: SplitRule | None,
    count: int,
) -> list[str]:
    out: list[str] = []
    for f in _ordered(files, ("text", "jsonl")):
        data = _read(store, workspace_id, f, MAX_FILE_BYTES)
        if data is None:
            continue
        lines = [ln.strip() for ln in data.decode("utf-8", errors="replace").splitlines()]
        if extension(f.path) in JSONL_EXTENSIONS:
            lines = [_text_of(ln) for ln in lines]
        out += [t for t in _held_out(rule, f, [ln for ln in lines if ln]) if t]
        if len(out) >= count:
            break
    return out[:count]


def _text_of(line: str) -> str:
    try:
        record = json.loads(line)
    except ValueError:
        return ""
    if isinstance(record, dict):
        for key in ("text", "prompt", "content"):
            if isinstance(record.get(key), str):
                return str(record[key])
    return ""
