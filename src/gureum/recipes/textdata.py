"""Text out of a dataset: ``.txt`` lines and the ``text`` field of JSONL rows, by split.

Files are split as the version records: by file, and the rows of a version's single JSONL by
the platform's row rule (unit ``row``). A corpus of one or a few files would then often leave a
side with no text, so in that case every file's lines are split instead, by the same row rule
on line (or JSONL row) indices with the version's seed and ratio; rows are numbered as the
platform's readers count them, blank lines included, so the split does not depend on content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gureum.datasets.readers import jsonl_rows, text_lines
from gureum.recipes.base import DatasetMismatch
from gureum.recipes.dataset import DataFile, LocalDataset

TEXT_KINDS = ("text", "jsonl")
Rows = list[str | None]  # one entry per row; None where a row holds no text


def text_files(ds: LocalDataset) -> list[DataFile]:
    return [f for f in ds.files if f.kind in TEXT_KINDS]


def require_text(ds: LocalDataset, recipe: str) -> None:
    if not text_files(ds):
        raise DatasetMismatch(
            f'{recipe} needs text files (.txt) or JSONL rows with a "text" field; '
            f"got {ds.describe()}"
        )


def _text_of(row: Any) -> str | None:
    text = row.get("text") if isinstance(row, dict) else None
    return text if isinstance(text, str) else None


def _rows(ds: LocalDataset, f: DataFile) -> Rows:
    with open(ds.path(f), "rb") as fh:
        if f.kind == "text":
            return list(text_lines(fh))
        return [_text_of(row) for row in jsonl_rows(fh)]


def _texts(rows: Rows) -> list[str]:
    return [r for r in rows if r is not None and r.strip()]


@dataclass(frozen=True)
class TextSplits:
    train: str
    validation: str
    split_by_line: bool  # whether some file's lines (rows) were split, not the whole file


def load_text(ds: LocalDataset, recipe: str) -> TextSplits:
    require_text(ds, recipe)
    rows = {f.path: _rows(ds, f) for f in text_files(ds)}
    train: list[str] = []
    val: list[str] = []
    by_line = False
    for f in text_files(ds):
        if ds.split.splits_rows_of(f.path):
            kept, held = ds.split.split_rows(rows[f.path])
            train += _texts(kept)
            val += _texts(held)
            by_line = True
        else:
            (val if f.split == "validation" else train).extend(_texts(rows[f.path]))
    if not train or not val:
        train, val, by_line = [], [], True
        for f in text_files(ds):
            if f.path in ds.split.train_only:  # curated traffic never joins the held-out side
                train += _texts(rows[f.path])
                continue
            kept, held = ds.split.split_rows(rows[f.path])
            train += _texts(kept)
            val += _texts(held)
    if not train:
        raise DatasetMismatch(f"{recipe}: the dataset's training split holds no text")
    return TextSplits("\n".join(train) + "\n", "\n".join(val) + "\n", by_line)
