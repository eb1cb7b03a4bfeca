"""Captions of a picture dataset, read as diffusers' ImageFolder reads them: a ``metadata.jsonl``
or ``captions.jsonl`` of ``{"file_name": ..., "text": ...}`` rows, ``file_name`` relative to the
folder the file is in; else the picture's class folder name ("dress"). Light: no torch.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from gureum.recipes.base import DatasetMismatch
from gureum.recipes.dataset import DataFile, LocalDataset
from gureum.recipes.image_lora_params import CAPTION_FILES, NAME

MAX_CAPTION_FILE_BYTES = 64 * 1024 * 1024


def caption_map(ds: LocalDataset, recipe: str = NAME) -> dict[str, str]:
    """Dataset path -> caption, from every caption file of the dataset (errors name
    ``recipe``: image-diffusion reads captions too)."""
    out: dict[str, str] = {}
    for f in ds.files:
        p = PurePosixPath(f.path)
        if p.name not in CAPTION_FILES:
            continue
        path = ds.path(f)
        if path.stat().st_size > MAX_CAPTION_FILE_BYTES:
            raise DatasetMismatch(f"{recipe}: {f.path} is over {MAX_CAPTION_FILE_BYTES >> 20} MiB")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise DatasetMismatch(f"{recipe}: {f.path} line {n} is not JSON") from None
            name, text = (
                (row.get("file_name"), row.get("text")) if isinstance(row, dict) else (0, 0)
            )
            if not isinstance(name, str) or not isinstance(text, str):
                raise DatasetMismatch(
                    f'{recipe}: {f.path} line {n} must be {{"file_name": "...", "text": "..."}}'
                )
            out[str(p.parent / name) if str(p.parent) != "." else name] = text
    return out


def captioned(
    ds: LocalDataset, files: list[DataFile], recipe: str = NAME
) -> list[tuple[DataFile, str]]:
    """Each picture with its caption: the caption file's, else its class name; a picture with
    neither is refused (the model would learn nothing from it)."""
    captions = caption_map(ds, recipe)
    out, bare = [], []
    for f in files:
        text = captions.get(f.path, f.label)
        if text is None:
            bare.append(f.path)
        else:
            out.append((f, text))
    if bare:
        raise DatasetMismatch(
            f"{recipe}: {len(bare)} picture(s) have no caption ({', '.join(bare[:3])}): add a "
            f'metadata.jsonl of {{"file_name", "text"}} rows, or put pictures in class folders'
        )
    return out
