"""Pictures in and out of tensors: loading a split, decoding prediction inputs, PNG grids."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gureum.recipes.base import BadInput, DatasetMismatch
from gureum.recipes.dataset import DataFile, LocalDataset


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """RGB, ``size`` x ``size``, float in [0, 1], channels first."""
    rgb = img.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def load_split(
    ds: LocalDataset, files: Sequence[DataFile], size: int, classes: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``files`` as one (N, 3, size, size) tensor and their class indices.

    Small data sets fit in memory many times over; loading once keeps epochs cheap.
    """
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    for f in files:
        try:
            with Image.open(ds.path(f)) as img:
                images.append(to_tensor(img, size))
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetMismatch(f"{f.path} is not a readable image: {exc}") from None
        labels.append(index.get(f.label or "", 0))
    if not images:
        return torch.zeros((0, 3, size, size)), torch.zeros((0,), dtype=torch.long)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def input_bytes(item: Any) -> bytes:
    """The file of a prediction input: raw image bytes, base64 text, or ``{"image": base64}``."""
    data: Any = item.get("image") if isinstance(item, dict) else item
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("image input must be base64-encoded image bytes") from None
    if not isinstance(data, bytes | bytearray):
        raise BadInput('each input must be image bytes, base64 text or {"image": base64}')
    return bytes(data)


def decode_input(item: Any, size: int) -> torch.Tensor:
    """A prediction input (see ``input_bytes``) as the model's tensor."""
    data = input_bytes(item)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return to_tensor(img, size)
    except (UnidentifiedImageError, OSError):
        raise BadInput("input is not a readable image (PNG, JPEG, ...)") from None


def to_image(t: torch.Tensor) -> Image.Image:
    arr = (t.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grid(images: torch.Tensor, cols: int, pad: int = 2, scale: int = 2) -> Image.Image:
    """Pictures in rows of ``cols`` on a white sheet, enlarged ``scale`` times for viewing."""
    n, _, h, w = images.shape
    rows = max(1, -(-n // cols))
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i in range(n):
        r, c = divmod(i, cols)
        sheet.paste(to_image(images[i]), (pad + c * (w + pad), pad + r * (h + pad)))
    if scale > 1:
        sheet = sheet.resize((sheet.width * scale, sheet.height * scale), Image.Resampling.NEAREST)
    return sheet


def save_grid(images: torch.Tensor, cols: int, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(images, cols).save(path, format="PNG")
    return path
