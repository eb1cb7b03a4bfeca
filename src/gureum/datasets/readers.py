"""What one file holds: its kind, and the facts a version records about it.

Every reader streams: an image is opened for its header only (Pillow does not decode pixels
until asked), and CSV, JSONL and text are read line by line, so a large file costs time but
not memory. Readers never raise on bad content; they report it, because a dataset may hold
odd files and the push should still land. The one exception is a line longer than the
limit (``line_limited``): that file is refused, naming the file and the line.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from PIL import Image

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
TABLE_EXTENSIONS = {".csv": ",", ".tsv": "\t"}
JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson"})
TEXT_EXTENSIONS = frozenset({".txt", ".text", ".md", ".rst"})

SNIFF_BYTES = 4096
PREVIEW_ROWS = 5
PREVIEW_LINES = 10
DTYPE_SAMPLE_ROWS = 10_000
MAX_KEYS = 200
MAX_PREVIEW_CHARS = 200
MAX_LINE_CHARS = 500
THUMBNAIL = 32

_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
)
_INT = re.compile(r"^[+-]?\d+$")
_BOOL = frozenset({"true", "false"})
_BLANK = object()
_INVALID = object()


def extension(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def kind_by_extension(path: str) -> str | None:
    ext = extension(path)
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in TABLE_EXTENSIONS:
        return "table"
    if ext in JSONL_EXTENSIONS:
        return "jsonl"
    if ext in TEXT_EXTENSIONS:
        return "text"
    return None


def looks_like_image(head: bytes) -> bool:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return any(head.startswith(m) for m in _MAGIC)


def looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is still text.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def clip(value: Any, limit: int = MAX_PREVIEW_CHARS) -> Any:
    """Keep previews small: long strings are cut, big nested values are summarised."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
        return value if len(text) <= limit * 5 else clip(text, limit)
    return value


# -- images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str


def image_info(fh: IO[bytes]) -> ImageInfo | None:
    try:
        with Image.open(fh) as im:
            return ImageInfo(int(im.width), int(im.height), str(im.mode))
    except Exception:  # any unreadable image is reported, not fatal
        return None


def thumbnail_png(fh: IO[bytes], size: int = THUMBNAIL) -> str | None:
    """A base64 PNG no larger than size x size, or None when the image will not decode."""
    try:
        with Image.open(fh) as src:
            src.draft("RGB", (size * 2, size * 2))
            im: Image.Image = src
            im.thumbnail((size, size))
            if im.mode not in ("RGB", "RGBA", "L", "LA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            out = io.BytesIO()
            im.save(out, format="PNG", optimize=True)
    except Exception:  # a broken image just has no thumbnail
        return None
    return base64.b64encode(out.getvalue()).decode("ascii")


# -- line length ---------------------------------------------------------------------------


class LineTooLong(ValueError):
    """A line of a CSV / JSONL / text file is longer than the limit: such a file is refused,
    since every reader (and a training job's) would hold the whole line in memory."""

    def __init__(self, line: int, limit: int, path: str = "") -> None:
        super().__init__(f"{path or 'file'}: line {line} is longer than {limit} bytes")
        self.line, self.limit, self.path = line, limit, path


class _LineLimit(io.RawIOBase):
    """Passes bytes through, raising LineTooLong as soon as a line passes ``limit`` bytes."""

    def __init__(self, fh: IO[bytes], limit: int) -> None:
        super().__init__()
        self._fh = fh
        self._limit = limit
        self._run = 0  # bytes of the current line so far
        self._line = 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._fh.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._check(data)
        return n

    def _check(self, data: bytes) -> None:
        first = data.find(b"\n")
        if first < 0:
            self._run += len(data)
            self._fail_if_long()
            return
        self._run += first
        self._fail_if_long()
        self._line += 1
        if len(data) > self._limit:  # a whole line could hide inside this block
            start = first + 1
            while (nl := data.find(b"\n", start)) >= 0:
                if nl - start > self._limit:
                    raise LineTooLong(self._line, self._limit)
                self._line += 1
                start = nl + 1
        else:
            self._line += data.count(b"\n", first + 1)
        self._run = len(data) - data.rfind(b"\n") - 1
        self._fail_if_long()

    def _fail_if_long(self) -> None:
        if self._run > self._limit:
            raise LineTooLong(self._line, self._limit)


def line_limited(fh: IO[bytes], limit: int) -> IO[bytes]:
    """``fh`` that raises LineTooLong on a line over ``limit`` bytes (line end excluded)."""
    return io.BufferedReader(_LineLimit(fh, limit))


# -- tables -------------------------------------------------------------------------------


def _text(fh: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")


def _dtype_of(value: str) -> str:
    if _INT.match(value):
        return "int"
    if value.lower() in _BOOL:
        return "bool"
    try:
        float(value)
    except ValueError:
        return "str"
    return "float"


def _widen(current: str | None, seen: str) -> str:
    if current is None or current == seen:
        return seen
    if {current, seen} == {"int", "float"}:
        return "float"
    return "str"


def typed(value: str, dtype: str) -> Any:
    if value == "":
        return None
    try:
        if dtype == "int":
            return int(value)
        if dtype == "float":
            return float(value)
    except ValueError:
        return value
    if dtype == "bool":
        return value.lower() == "true"
    return clip(value)


@dataclass
class TableInfo:
    columns: list[dict[str, str]] = field(default_factory=list)
    rows: int = 0
    preview: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"columns": self.columns, "rows": self.rows}
        if self.error:
            out["error"] = self.error
        return out


def column_names(header: Sequence[str]) -> list[str]:
    """Column names as a version's schema records them: stripped, blank ones numbered."""
    return [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]


def _data_rows(reader: Iterator[list[str]]) -> Iterator[list[str]]:
    """The rows a table counts, in order: an empty line is no row."""
    return (row for row in reader if row)


def table_rows(fh: IO[bytes], delimiter: str = ",") -> Iterator[dict[str, str]]:
    """Each row as column -> value (missing values ""), numbered as the row split numbers
    them; raises csv.Error on a malformed file."""
    with _text(fh) as text:
        reader = csv.reader(text, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        names = column_names(header)
        for row in _data_rows(reader):
            yield {n: row[i] if i < len(row) else "" for i, n in enumerate(names)}


def read_table(fh: IO[bytes], delimiter: str = ",") -> TableInfo:
    """Columns (names and inferred dtypes from the first rows), the row count, a preview."""
    with _text(fh) as text:
        return _read_table(text, delimiter)


def _read_table(text: io.TextIOWrapper, delimiter: str) -> TableInfo:
    info = TableInfo()
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return info
        names = column_names(header)
        dtypes: list[str | None] = [None] * len(names)
        first: list[list[str]] = []
        for row in _data_rows(reader):
            info.rows += 1
            if info.rows <= DTYPE_SAMPLE_ROWS:
                for i, value in enumerate(row[: len(names)]):
                    if value != "" and dtypes[i] != "str":
                        dtypes[i] = _widen(dtypes[i], _dtype_of(value))
                if len(first) < PREVIEW_ROWS:
                    first.append(row)
    except csv.Error as exc:
        info.error = f"line {reader.line_num}: {exc}"
        return info
    final = [d or "str" for d in dtypes]
    info.columns = [{"name": n, "dtype": d} for n, d in zip(names, final, strict=True)]
    info.preview = [
        {n: typed(v, d) for n, d, v in zip(names, final, row, strict=False)} for row in first
    ]
    return info


# -- JSON lines ---------------------------------------------------------------------------


@dataclass
class JsonlInfo:
    keys: list[str] = field(default_factory=list)
    rows: int = 0
    invalid_rows: int = 0
    preview: list[dict[str, Any]] = field(default_factory=list)

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"keys": self.keys, "rows": self.rows}
        if self.invalid_rows:
            out["invalid_rows"] = self.invalid_rows
        return out


def read_jsonl(fh: IO[bytes]) -> JsonlInfo:
    info = JsonlInfo()
    keys: dict[str, None] = {}
    with _text(fh) as text:
        for line in text:
            _jsonl_line(info, keys, line)
    info.keys = list(keys)[:MAX_KEYS]
    return info


def jsonl_rows(fh: IO[bytes]) -> Iterator[Any]:
    """Each row's JSON value, numbered as the row split numbers them: blank lines and lines
    that are no JSON are no rows."""
    with _text(fh) as text:
        for line in text:
            row = _jsonl_value(line)
            if row is not _BLANK and row is not _INVALID:
                yield row


def _jsonl_value(line: str) -> Any:
    if not line.strip():
        return _BLANK
    try:
        return json.loads(line)
    except ValueError:
        return _INVALID


def _jsonl_line(info: JsonlInfo, keys: dict[str, None], line: str) -> None:
    row = _jsonl_value(line)
    if row is _BLANK:
        return
    if row is _INVALID:
        info.invalid_rows += 1
        return
    info.rows += 1
    if isinstance(row, dict):
        if len(keys) < MAX_KEYS:
            for k in row:
                keys.setdefault(str(k), None)
        if len(info.preview) < PREVIEW_ROWS:
            info.preview.append({str(k): clip(v) for k, v in row.items()})
    elif len(info.preview) < PREVIEW_ROWS:
        info.preview.append({"value": clip(row)})


# -- text ---------------------------------------------------------------------------------


@dataclass
class TextInfo:
    lines: int = 0
    chars: int = 0
    preview: list[str] = field(default_factory=list)


def _utf8(fh: IO[bytes]) -> io.TextIOWrapper:
    return io.TextIOWrapper(fh, encoding="utf-8", errors="replace")


def text_lines(fh: IO[bytes]) -> Iterator[str]:
    """Each line without its line end, numbered as ``read_text`` counts them."""
    with _utf8(fh) as text:
        for line in text:
            yield line.rstrip("\r\n")


def read_text(fh: IO[bytes]) -> TextInfo:
    info = TextInfo()
    with _utf8(fh) as text:
        for line in text:
            info.lines += 1
            info.chars += len(line)
            if len(info.preview) < PREVIEW_LINES:
                info.preview.append(clip(line.rstrip("\r\n"), MAX_LINE_CHARS))
    return info
