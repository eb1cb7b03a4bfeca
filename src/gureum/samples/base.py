"""The one shape every sample generator has, and the summary it hands back."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


class SampleError(ValueError):
    """A request for sample data that cannot be met (unknown name, bad count, busy folder)."""

    code = "bad_request"


class FolderNotEmpty(SampleError):
    """Writing would mix sample files with what is already there."""

    code = "conflict"


@dataclass(frozen=True)
class SampleSummary:
    """What a generator wrote, so the CLI can print it and tests can check it."""

    name: str
    path: str
    files: int
    bytes: int
    seed: int
    classes: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SampleGenerator(Protocol):
    """A built-in data set that can be written to a folder without any network."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def default_count(self) -> int:
        """How many items (images, lines, rows) ``generate`` writes when asked for no number."""
        ...

    def generate(self, out: Path, *, count: int, seed: int) -> SampleSummary:
        """Write ``count`` items into the existing folder ``out``; same seed, same bytes."""
        ...


class FileTally:
    """Counts files and bytes as a generator writes them, instead of walking the folder after."""

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0

    def write_bytes(self, path: Path, data: bytes) -> None:
        path.write_bytes(data)
        self.files += 1
        self.bytes += len(data)

    def write_text(self, path: Path, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` classes, the remainder going to the first classes."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
