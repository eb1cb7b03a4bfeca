"""The deterministic train/validation split.

A file's side depends only on (seed, path), and a row's only on (seed, row index), never on
what else is in the version: a file keeps its side across versions, so a model validated on
version 3 is never trained on a validation file of version 2. Trainers call these same
functions to reproduce the split the version records.
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt

MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ROW_CHUNK = 1 << 20


def file_is_validation(seed: int, path: str, ratio: float) -> bool:
    digest = hashlib.sha256(f"{seed}\0{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < ratio * 2.0**64


def file_split(seed: int, path: str, ratio: float) -> str:
    return "validation" if file_is_validation(seed, path, ratio) else "train"


def row_validation_mask(seed: int, start: int, stop: int, ratio: float) -> npt.NDArray[np.bool_]:
    """Which of rows ``start..stop-1`` are validation rows (splitmix64 of seed and index)."""
    x = np.arange(start, stop, dtype=np.uint64) + np.uint64((seed * _GOLDEN) & MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    threshold = np.uint64(min(int(ratio * 2.0**53), 1 << 53))
    mask: npt.NDArray[np.bool_] = (x >> np.uint64(11)) < threshold
    return mask


def row_is_validation(seed: int, index: int, ratio: float) -> bool:
    return bool(row_validation_mask(seed, index, index + 1, ratio)[0])


def count_validation_rows(seed: int, rows: int, ratio: float) -> int:
    """How many of ``rows`` rows fall on the validation side, in bounded memory."""
    total = 0
    for start in range(0, rows, _ROW_CHUNK):
        stop = min(rows, start + _ROW_CHUNK)
        total += int(np.count_nonzero(row_validation_mask(seed, start, stop, ratio)))
    return total
