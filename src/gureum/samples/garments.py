"""Procedurally drawn garment pictures: the fashion label's "own designs" for the demo.

Shapes come from ``garment_shapes``; here they are painted with a colour and a pattern (solid,
stripes, dots, checks) on a plain light background. Drawing happens at 4x the target size and is
scaled down, which gives smooth edges without anti-aliased drawing primitives.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from gureum.samples.base import FileTally, SampleSummary, png_bytes, split_evenly
from gureum.samples.garment_shapes import SHAPES, Point, Polygon, Silhouette

RGB = tuple[int, int, int]
SUPERSAMPLE = 4

PALETTE: tuple[RGB, ...] = (
    (31, 42, 84),  # navy
    (40, 40, 44),  # black
    (232, 220, 196),  # cream
    (196, 170, 130),  # beige
    (107, 112, 60),  # olive
    (120, 30, 48),  # burgundy
    (214, 164, 48),  # mustard
    (176, 84, 44),  # rust
    (120, 170, 214),  # sky blue
    (230, 160, 170),  # blush
    (36, 94, 62),  # forest
    (88, 90, 96),  # charcoal
    (62, 96, 148),  # denim
    (200, 40, 44),  # red
    (30, 130, 130),  # teal
    (160, 140, 200),  # lavender
)
COLOUR_NAMES = dict(
    zip(
        PALETTE,
        (
            "navy",
            "black",
            "cream",
            "beige",
            "olive",
            "burgundy",
            "mustard",
            "rust",
            "sky blue",
            "blush",
            "forest green",
            "charcoal",
            "denim blue",
            "red",
            "teal",
            "lavender",
        ),
        strict=True,
    )
)
PATTERNS = ("solid", "stripes", "dots", "checks")
PATTERN_WEIGHTS = (4, 2, 2, 2)
PATTERN_WORDS = {"solid": "", "stripes": "striped", "dots": "dotted", "checks": "checked"}
CAPTIONS = "metadata.jsonl"  # per class folder, as diffusers' ImageFolder reads captions


def _jitter(colour: RGB, rng: random.Random, amount: int) -> RGB:
    r, g, b = (min(255, max(0, c + rng.randint(-amount, amount))) for c in colour)
    return (r, g, b)


def _luma(colour: RGB) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (min(255, int(c * factor)) for c in colour)
    return (r, g, b)


def _accent(base: RGB, rng: random.Random) -> RGB:
    """A second colour that stands out from ``base`` for stripes, dots and checks."""
    candidate = _jitter(rng.choice(PALETTE), rng, 10) if rng.random() < 0.5 else base
    if abs(_luma(candidate) - _luma(base)) < 70:
        candidate = (245, 242, 235) if _luma(base) < 140 else (30, 30, 36)
    return candidate


def _pattern(
    rng: random.Random, side: int, base: RGB, accent: RGB
) -> tuple[NDArray[np.uint8], str]:
    """The garment's fabric over the whole canvas (the silhouette later cuts it out), and
    which pattern it is."""
    kind = rng.choices(PATTERNS, PATTERN_WEIGHTS)[0]
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    period = rng.uniform(0.09, 0.16) * side
    phase = rng.uniform(0, period)
    if kind == "stripes":
        axis = rng.choice((xx, yy, xx + yy))
        mix = (((axis + phase) % period) < period * rng.uniform(0.3, 0.5)).astype(np.float32)
    elif kind == "dots":
        radius = period * rng.uniform(0.18, 0.3)
        shift = ((yy + phase) // period % 2) * period / 2
        dx = (xx + phase + shift) % period - period / 2
        dy = (yy + phase) % period - period / 2
        mix = (dx * dx + dy * dy < radius * radius).astype(np.float32)
    elif kind == "checks":
        h = ((yy + phase) % period) < period / 2
        v = ((xx + phase) % period) < period / 2
        mix = (h.astype(np.float32) + v.astype(np.float32)) / 2
    else:
        mix = np.zeros((side, side), dtype=np.float32)
    fabric = (
        np.array(base, np.float32) * (1 - mix[..., None])
        + np.array(accent, np.float32) * mix[..., None]
    )
    light = 1.08 - 0.16 * (xx + yy) / (2 * side)  # a soft light from the top left
    return np.asarray(np.clip(fabric * light[..., None], 0, 255), dtype=np.uint8), kind


@dataclass(frozen=True)
class _Placement:
    """Where the unit square lands on the canvas: a little smaller or larger, off centre."""

    side: int
    scale: float
    dx: float
    dy: float

    def px(self, poly: Polygon) -> list[Point]:
        return [
            (
                ((x - 0.5) * self.scale + 0.5 + self.dx) * self.side,
                ((y - 0.5) * self.scale + 0.5 + self.dy) * self.side,
            )
            for x, y in poly
        ]


def draw_garment(kind: str, rng: random.Random, size: int) -> Image.Image:
    """One ``size`` x ``size`` RGB picture of a garment of class ``kind``."""
    return draw_captioned(kind, rng, size)[0]


def caption(kind: str, colour: RGB, pattern: str) -> str:
    """What the picture shows, in words: "a red checked dress", "navy striped trousers"."""
    words = " ".join(w for w in (COLOUR_NAMES[colour], PATTERN_WORDS[pattern], kind) if w)
    return words if kind == "trousers" else f"a {words}"


def draw_captioned(kind: str, rng: random.Random, size: int) -> tuple[Image.Image, str]:
    """The picture and its caption, from the colour and pattern it was drawn with."""
    side = size * SUPERSAMPLE
    silhouette: Silhouette = SHAPES[kind](rng)
    place = _Placement(
        side, rng.uniform(0.86, 1.04), rng.uniform(-0.04, 0.04), rng.uniform(-0.03, 0.03)
    )
    grey = rng.randint(226, 250)
    background = _jitter((grey, grey, grey), rng, 5)
    colour = rng.choice(PALETTE)
    base = _jitter(colour, rng, 14)
    accent = _accent(base, rng)
    dark = _shade(base, 0.55) if _luma(base) > 60 else (90, 90, 96)

    mask = Image.new("L", (side, side), 0)
    mask_pen = ImageDraw.Draw(mask)
    for shape in silhouette.shapes:
        mask_pen.polygon(place.px(shape), fill=255)
    for hole in silhouette.holes:
        mask_pen.polygon(place.px(hole), fill=0)

    img = Image.new("RGB", (side, side), background)
    fabric, pattern = _pattern(rng, side, base, accent)
    img.paste(Image.fromarray(fabric), mask=mask)
    edge = ImageChops.subtract(mask.filter(ImageFilter.MaxFilter(5)), mask)
    img.paste(dark, mask=edge)

    pen = ImageDraw.Draw(img)
    trim = _shade(base, 0.7) if rng.random() < 0.6 else accent
    for band in silhouette.trims:
        pen.polygon(place.px(band), fill=trim, outline=dark)
    width = max(1, side // 64)
    for seam in silhouette.seams:
        pen.line(place.px(seam), fill=dark, width=width)
    for centre, radius in silhouette.buttons:
        (cx, cy), r = place.px([centre])[0], radius * side * place.scale
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=accent if trim != accent else dark)

    angle = rng.uniform(-6, 6)
    if not math.isclose(angle, 0):
        img = img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=background)
    return img.resize((size, size), Image.Resampling.LANCZOS), caption(kind, colour, pattern)


class GarmentsSample:
    """Shirts, jackets, dresses, skirts and trousers in class folders, ready for a classifier."""

    name = "garments"
    description = "drawn garment pictures (shirt, jacket, dress, skirt, trousers) in class folders"
    default_count = 320

    def __init__(self, size: int = 32) -> None:
        self.size = size

    def generate(
        self, out: Path, *, count: int, seed: int, captions: bool = False
    ) -> SampleSummary:
        """``captions``: also a ``metadata.jsonl`` per class folder, a caption per picture
        (``{"file_name": "0003.png", "text": "a red checked dress"}``) for image-lora."""
        tally = FileTally()
        classes: dict[str, int] = {}
        for kind, n in zip(SHAPES, split_evenly(count, len(SHAPES)), strict=True):
            folder = out / kind
            folder.mkdir(parents=True, exist_ok=True)
            rows = []
            for i in range(n):
                # One generator per picture: picture i is the same whatever the count.
                rng = random.Random(f"garments:{seed}:{kind}:{i}")
                img, text = draw_captioned(kind, rng, self.size)
                tally.write_bytes(folder / f"{i:04d}.png", png_bytes(img))
                rows.append(json.dumps({"file_name": f"{i:04d}.png", "text": text}) + "\n")
            if captions:
                tally.write_bytes(folder / CAPTIONS, "".join(rows).encode())
            classes[kind] = n
        return SampleSummary(
            name=self.name,
            path=str(out),
            files=tally.files,
            bytes=tally.bytes,
            seed=seed,
            classes=classes,
            details={
                "image_size": [self.size, self.size],
                "mode": "RGB",
                "format": "png",
                **({"captions": f"{CAPTIONS} per class folder"} if captions else {}),
            },
        )
