"""scikit-learn's bundled 8x8 handwritten digits as PNGs in one folder per digit.

The CSV is read straight from scikit-learn's installed package data (the file that
``sklearn.datasets.load_digits`` reads) instead of importing ``sklearn``: importing it costs
most of a second, and every CLI command would pay that because the sample registry is imported
with the CLI. No network is involved either way.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from gureum.samples.base import FileTally, SampleError, SampleSummary, png_bytes

DIGITS_TOTAL = 1797
SOURCE_SIDE = 8
SOURCE_MAX = 16


def digits_csv() -> Path:
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise SampleError("scikit-learn's digits data was not found; reinstall scikit-learn")


def load_digits() -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """Images as 8x8 grey levels 0..255 (ink bright, like MNIST) and their labels."""
    with gzip.open(digits_csv(), "rt") as fh:
        data = np.loadtxt(fh, delimiter=",")
    pixels = np.rint(data[:, :-1] * (255 / SOURCE_MAX)).astype(np.uint8)
    return pixels.reshape(-1, SOURCE_SIDE, SOURCE_SIDE), data[:, -1].astype(np.int64)


class DigitsSample:
    """Ten classes of tiny greyscale pictures: the quickest image classifier to train."""

    name = "digits"
    description = (
        "scikit-learn's handwritten digits (1,797) as greyscale PNGs, one folder per digit"
    )
    default_count = DIGITS_TOTAL

    def __init__(self, size: int = 32) -> None:
        self.size = size

    def generate(self, out: Path, *, count: int, seed: int) -> SampleSummary:
        if count > DIGITS_TOTAL:
            raise SampleError(f"digits has {DIGITS_TOTAL} images; ask for at most that many")
        images, labels = load_digits()
        # The seed only chooses which images a smaller count keeps; the full set ignores it.
        chosen = np.sort(np.random.default_rng(seed).permutation(len(labels))[:count])
        tally = FileTally()
        classes = {str(d): 0 for d in range(10)}
        for d in classes:
            (out / d).mkdir(parents=True, exist_ok=True)
        for idx in chosen:
            label = str(int(labels[idx]))
            img = Image.fromarray(images[idx]).resize(
                (self.size, self.size), Image.Resampling.BILINEAR
            )
            tally.write_bytes(out / label / f"{classes[label]:04d}.png", png_bytes(img))
            classes[label] += 1
        return SampleSummary(
            name=self.name,
            path=str(out),
            files=tally.files,
            bytes=tally.bytes,
            seed=seed,
            classes=classes,
            details={"image_size": [self.size, self.size], "mode": "L", "format": "png"},
        )
