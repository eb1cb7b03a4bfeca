"""The two samples drift compares: the served model's training data and the endpoint's
captured calls.

Training data is the dataset version the model was trained on, its training side split as the
recipes split it (the platform's readers, the version's split record and row rule), read as a
fixed-seed sample when large. Live inputs are the captured calls' inputs, read back from their
batch objects with their blobs (pictures) resolved, as curation reads them.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Generic, Protocol, TypeVar

from gureum.datasets.readers import (
    JSONL_EXTENSIONS,
    TABLE_EXTENSIONS,
    extension,
    jsonl_rows,
    table_rows,
    text_lines,
)
from gureum.datasets.split import row_validation_mask
from gureum.recipes.dataset import SplitRule
from gureum.server.services import curate_rules as rules
from gureum.server.services.capture import read_lines
from gureum.storage.store import ArtifactStore

T = TypeVar("T")

SEED = 0
# Rows or texts of the training split read at most (a fixed-seed sample beyond).
REFERENCE_SAMPLE = 20_000
# Pictures are decoded, which costs more than a row: fewer of them.
PICTURE_SAMPLE = 5_000
# Live samples compared at most (the newest calls of the window; a fixed-seed sample beyond).
LIVE_CALLS = 20_000
READ_CHUNK = 5000
MASK_CHUNK = 1 << 16


@dataclass(frozen=True)
class TrainingFile:
    path: str
    sha256: str
    kind: str
    split: str


@dataclass(frozen=True)
class Sample(Generic[T]):
    items: list[T]
    total: int  # of the training split (items is all of it, or a sample)


class _Reservoir(Generic[T]):
    """A uniform fixed-seed sample of at most ``size`` items of a stream (algorithm R)."""

    def __init__(self, size: int) -> None:
        self.size, self.seen = size, 0
        self.items: list[T] = []
        self._rng = random.Random(SEED)

    def add(self, item: T) -> None:
        self.seen += 1
        if len(self.items) < self.size:
            self.items.append(item)
            return
        j = self._rng.randrange(self.seen)
        if j < self.size:
            self.items[j] = item

    def sample(self) -> Sample[T]:
        return Sample(self.items, self.seen)


def split_rule(record: dict[str, Any]) -> SplitRule | None:
    try:
        return SplitRule.from_record(record)
    except ValueError:
        return None


def _held(rule: SplitRule | None, items: Iterable[T]) -> Iterator[tuple[T, bool]]:
    """Each item with whether the row rule holds it out (never without a rule)."""
    chunk: list[T] = []
    start = 0

    def flush() -> Iterator[tuple[T, bool]]:
        if rule is None:
            mask = [False] * len(chunk)
        else:
            mask = list(
                row_validation_mask(rule.seed, start, start + len(chunk), rule.validation_ratio)
            )
        yield from zip(chunk, mask, strict=True)

    for item in items:
        chunk.append(item)
        if len(chunk) == MASK_CHUNK:
            yield from flush()
            start += len(chunk)
            chunk = []
    yield from flush()


def _open(store: ArtifactStore, workspace_id: int, f: TrainingFile) -> IO[bytes]:
    return store.open_blob(workspace_id, f.sha256)


def training_rows(
    store: ArtifactStore, workspace_id: int, files: Sequence[TrainingFile], split: dict[str, Any]
) -> tuple[Sample[dict[str, str]], list[str]]:
    """Training rows of the version's tables (as ``recipes.tabular.load_rows`` splits them:
    the row rule for the version's one table, else each file's side) and the columns.
    Raises csv.Error on a malformed table."""
    rule = split_rule(split)
    out: _Reservoir[dict[str, str]] = _Reservoir(REFERENCE_SAMPLE)
    columns: dict[str, None] = {}
    for f in files:
        if f.kind != "table":
            continue
        by_rows = rule is not None and rule.splits_rows_of(f.path)
        if not by_rows and f.split == "validation":
            continue
        delimiter = TABLE_EXTENSIONS.get(extension(f.path), ",")
        with _open(store, workspace_id, f) as fh:
            for row, held in _held(rule if by_rows else None, table_rows(fh, delimiter)):
                if not held:
                    columns.update(dict.fromkeys(row))
                    out.add(row)
    return out.sample(), list(columns)


def training_texts(
    store: ArtifactStore, workspace_id: int, files: Sequence[TrainingFile], split: dict[str, Any]
) -> Sample[str]:
    """Training texts (``.txt`` lines, JSONL ``text`` fields) as ``recipes.textdata.load_text``
    splits them: by the version's split, or, when that leaves a side empty, every file's
    lines by the row rule (curated files always train)."""
    rule = split_rule(split)
    primary: _Reservoir[str] = _Reservoir(REFERENCE_SAMPLE)
    fallback: _Reservoir[str] = _Reservoir(REFERENCE_SAMPLE)
    held_out = 0
    for f in files:
        if f.kind not in ("text", "jsonl"):
            continue
        by_rows = rule is not None and rule.splits_rows_of(f.path)
        train_only = rule is not None and f.path in rule.train_only
        with _open(store, workspace_id, f) as fh:
            for text, held in _held(rule, _texts(fh, f.path)):
                if text is None or not text.strip():
                    continue
                if (by_rows and not held) or (not by_rows and f.split != "validation"):
                    primary.add(text)
                else:
                    held_out += 1
                if train_only or not held:
                    fallback.add(text)
    return primary.sample() if primary.seen and held_out else fallback.sample()


def _texts(fh: IO[bytes], path: str) -> Iterator[str | None]:
    if extension(path) in JSONL_EXTENSIONS:
        for row in jsonl_rows(fh):
            text = row.get("text") if isinstance(row, dict) else None
            yield text if isinstance(text, str) else None
    else:
        yield from text_lines(fh)


def training_pictures(
    store: ArtifactStore, workspace_id: int, files: Sequence[TrainingFile], split: dict[str, Any]
) -> Sample[bytes]:
    """The training side's pictures (a fixed-seed sample of PICTURE_SAMPLE when more)."""
    rule = split_rule(split)
    train = [
        f
        for f in files
        if f.kind == "image"
        and (f.split != "validation" or (rule is not None and f.path in rule.train_only))
    ]
    picked = train
    if len(train) > PICTURE_SAMPLE:
        picked = sorted(random.Random(SEED).sample(train, PICTURE_SAMPLE), key=lambda f: f.path)
    images = []
    for f in picked:
        with _open(store, workspace_id, f) as fh:
            images.append(fh.read())
    return Sample(images, len(train))


# -- live ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    route: str
    input: Any


class Record(Protocol):
    """What drift reads of a captured call's row: a row of captured_requests, or just these
    columns (cheaper to load than the whole row)."""

    @property
    def request_id(self) -> str: ...
    @property
    def route(self) -> str: ...
    @property
    def object(self) -> str: ...
    @property
    def line(self) -> int: ...


def captured_inputs(store: ArtifactStore, workspace_id: int, rows: Sequence[Record]) -> list[Call]:
    """The calls' inputs, blobs resolved; a record whose line cannot be read is left out."""

    def read(sha256: str) -> bytes:
        with store.open_blob(workspace_id, sha256) as fh:
            return fh.read()

    calls = []
    for i in range(0, len(rows), READ_CHUNK):
        chunk = rows[i : i + READ_CHUNK]
        lines = read_lines(store, workspace_id, chunk)
        for r in chunk:
            line = lines.get((r.object, r.line))
            if line is None or line.get("request_id") != r.request_id:
                continue
            try:
                calls.append(Call(r.route, rules.resolve(line.get("input"), read)))
            except OSError:  # a blob gone (erased meanwhile): the call is left out
                continue
    return calls


def live_rows(calls: Iterable[Call]) -> list[Any]:
    """Rows of the calls; redacted values count as missing."""
    out: list[Any] = []
    for call in calls:
        for row in rules.call_inputs(call.input):
            if isinstance(row, dict):
                row = {k: None if v == rules.REDACTED else v for k, v in row.items()}
            out.append(row)
    return out


def live_pictures(calls: Iterable[Call]) -> list[bytes | None]:
    """Each input's picture bytes (base64, bare or as ``{"image": ...}``); None when the
    input holds no base64 at all."""
    out: list[bytes | None] = []
    for call in calls:
        for item in rules.call_inputs(call.input):
            data = item.get("image") if isinstance(item, dict) else item
            try:
                out.append(base64.b64decode(data, validate=True) if isinstance(data, str) else None)
            except (binascii.Error, ValueError):
                out.append(None)
    return out


def _content(message: Any) -> str | None:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # OpenAI content parts
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return content if isinstance(content, str) else None


def live_prompts(calls: Iterable[Call]) -> list[str | None]:
    """The prompt of each completion, the messages of each chat (their contents joined),
    each /predict input (a string or ``{"prompt": ...}``); None for one that is no text."""
    out: list[str | None] = []
    for call in calls:
        body = call.input
        if call.route == "completions" and isinstance(body, dict):
            prompt = body.get("prompt")
            if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
                out.extend(prompt)
            else:
                out.append(prompt if isinstance(prompt, str) else None)
        elif call.route == "chat/completions" and isinstance(body, dict):
            messages = body.get("messages")
            contents = [_content(m) for m in messages] if isinstance(messages, list) else []
            texts = [c for c in contents if c is not None]
            out.append("\n".join(texts) if texts else None)
        else:
            for item in rules.call_inputs(body):
                prompt = item.get("prompt") if isinstance(item, dict) else item
                out.append(prompt if isinstance(prompt, str) else None)
    return out


def bounded(samples: list[T], limit: int) -> list[T]:
    """At most ``limit`` of ``samples``: a fixed-seed sample in their order."""
    if len(samples) <= limit:
        return samples
    keep = sorted(random.Random(SEED).sample(range(len(samples)), limit))
    return [samples[i] for i in keep]
