"""Built-in sample data sets, written offline, for the demo, the recipes and the tests.

Every generator satisfies ``SampleGenerator``; ``SAMPLES`` maps names to instances, and callers
go through ``get`` / ``write`` so that an unknown name always fails the same clear way.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from gureum.samples.base import FolderNotEmpty, SampleError, SampleGenerator, SampleSummary
from gureum.samples.digits import DigitsSample
from gureum.samples.garments import GarmentsSample
from gureum.samples.tabular import TabularSample
from gureum.samples.text import TextSample

__all__ = [
    "SAMPLES",
    "FolderNotEmpty",
    "SampleError",
    "SampleGenerator",
    "SampleSummary",
    "get",
    "names",
    "write",
]

_GENERATORS: tuple[SampleGenerator, ...] = (
    GarmentsSample(),
    DigitsSample(),
    TextSample(),
    TabularSample(),
)
SAMPLES: Mapping[str, SampleGenerator] = MappingProxyType({g.name: g for g in _GENERATORS})


def names() -> list[str]:
    return list(SAMPLES)


def get(name: str) -> SampleGenerator:
    try:
        return SAMPLES[name]
    except KeyError:
        raise SampleError(f"unknown sample {name!r}; choose one of: {', '.join(SAMPLES)}") from None


def write(
    name: str,
    out: Path,
    *,
    count: int | None = None,
    seed: int = 0,
    force: bool = False,
    captions: bool = False,
) -> SampleSummary:
    """Write sample ``name`` into ``out``, refusing a non-empty folder unless ``force``.

    ``captions`` (garments only): a caption per picture in a ``metadata.jsonl`` per class
    folder, for image-lora ("a red checked dress").

    ``force`` writes into the folder as it is: files of the same name are replaced, others are
    left alone (we never delete a user's files).
    """
    generator = get(name)
    if captions and not isinstance(generator, GarmentsSample):
        raise SampleError(f"only garments writes captions; {name!r} has none")
    n = generator.default_count if count is None else count
    if n < 1:
        raise SampleError("count must be at least 1")
    if out.exists() and not out.is_dir():
        raise SampleError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FolderNotEmpty(f"{out} is not empty; choose an empty folder or pass --force")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if captions and isinstance(generator, GarmentsSample):
            return generator.generate(out, count=n, seed=seed, captions=True)
        return generator.generate(out, count=n, seed=seed)
    except BaseException:
        if created:  # a folder we made holds only our partial output: leave nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise
