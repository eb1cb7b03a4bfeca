"""How captured calls become training files, per recipe (the rules `datasets curate` follows).

- tabular: one row per captured input row, the target column set to the consumer's corrected
  label or target where it gave one (for a one-row call) and otherwise the model's prediction;
  columns as the base table's header (a redacted or missing value is left empty).
- image-classifier: each captured picture under its class folder, labelled by the consumer's
  correction where given (one-picture call) and otherwise by the model's answer; only classes
  the base already has (a label is never a path of the consumer's choosing).
- text-generator: one JSONL row ``{"text": prompt + completion}`` per call, the consumer's
  corrected ``target`` text replacing the model's completion where given.
- image-generator: the generated pictures of rated calls (best rated first) under their class,
  capped so that generated pictures are at most ``max_generated_share`` of the training
  pictures; every base picture is kept. A generator trained mostly on its own output
  collapses; the cap and the base keep it anchored to the team's real designs.

Every rule drops what the base already holds (same bytes, same row or same text) and repeats
within the capture. Rules are pure: the service reads records and blobs and writes the files.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

REDACTED = "[redacted]"
ReadBlob = Callable[[str], bytes]


@dataclass(slots=True)
class Captured:
    """One captured call with the feedback on it (the latest value of each field)."""

    request_id: str
    route: str
    input: Any
    output: Any
    rating: int | None = None
    label: str | int | None = None
    target: float | str | None = None

    @property
    def correction(self) -> str | int | float | None:
        return self.label if self.label is not None else self.target


@dataclass(frozen=True)
class BaseFile:
    path: str
    sha256: str
    kind: str
    label: str | None
    split: str


@dataclass
class Curated:
    files: dict[str, bytes] = field(default_factory=dict)  # path -> content
    used: int = 0  # captured calls that gave at least one sample
    samples: int = 0
    duplicates: int = 0
    skipped: int = 0  # samples left out (no label, unknown class, unreadable, over the cap)


class CurateError(ValueError):
    """The base or the captured calls do not fit the recipe's shape."""


def resolve(value: Any, read: ReadBlob) -> Any:
    """A stored line's value with its blob references read back and "$"-escaped keys undone."""
    if isinstance(value, dict):
        if set(value) == {"$blob", "size"} and isinstance(value["$blob"], str):
            return read(value["$blob"]).decode("utf-8", "replace")
        return {(k[1:] if k.startswith("$$") else k): resolve(v, read) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, read) for v in value]
    return value


def call_inputs(value: Any) -> list[Any]:
    """What one /predict call asked about: ``{"inputs": [...]}`` or ``{"input": x}``."""
    if isinstance(value, dict):
        if isinstance(value.get("inputs"), list):
            return list(value["inputs"])
        if "input" in value:
            return [value["input"]]
    return []


def _outputs(value: Any) -> list[Any]:
    if isinstance(value, dict) and isinstance(value.get("outputs"), list):
        return list(value["outputs"])
    return []


def _image_bytes(item: Any) -> bytes | None:
    data = item.get("image") if isinstance(item, dict) else item
    if not isinstance(data, str):
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _extension(raw) else None


def _extension(raw: bytes) -> str | None:
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "jpg"
    return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- tabular --------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if type(value) is str:  # the common case first: a row's text value
        return "" if value == REDACTED else value
    if value is None or isinstance(value, dict | list):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _row(row: dict[str, Any], header: list[str], at: int, label: Any) -> list[str]:
    """A captured row's values in the header's order with ``label`` at the target's column,
    each as :func:`_cell` writes it."""
    values: list[Any] = list(map(row.get, header))
    values[at] = label
    # The common case checked in C: every value text (join raises TypeError on a number or
    # a missing column's None) and none redacted; then _cell would return each as it is.
    try:
        "".join(values)
    except TypeError:
        return [_cell(v) for v in values]
    return [_cell(v) for v in values] if REDACTED in values else values


def _table(data: bytes) -> tuple[list[str], list[list[str]]]:
    reader = csv.reader(io.StringIO(data.decode("utf-8-sig", "replace")))
    rows = [r for r in reader if r]
    return (rows[0], rows[1:]) if rows else ([], [])


def tabular(
    records: Iterable[Captured], base: list[BaseFile], read: ReadBlob, target: str, path: str
) -> Curated:
    tables = [f for f in base if f.kind == "table"]
    if not tables:
        raise CurateError("the base version holds no table to add rows to")
    header, _ = _table(read(tables[0].sha256))
    if target not in header:
        raise CurateError(f"the base table has no {target!r} column (the model's target)")
    seen = {tuple(r) for f in tables for r in _table(read(f.sha256))[1]}
    at = header.index(target)
    out = Curated()
    rows: list[tuple[str, ...]] = []
    for rec in records:
        inputs, outputs = call_inputs(rec.input), _outputs(rec.output)
        gave = False
        corrected = rec.correction if len(inputs) == 1 else None
        for i, row in enumerate(inputs):
            label = corrected
            if label is None and i < len(outputs) and isinstance(outputs[i], dict):
                label = outputs[i].get("prediction")
            if not isinstance(row, dict) or label is None:
                out.skipped += 1
                continue
            key = tuple(_row(row, header, at, label))
            if key in seen:
                out.duplicates += 1
                continue
            seen.add(key)
            rows.append(key)
            gave = True
        out.used += gave
    if rows:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        out.files[path] = buf.getvalue().encode()
        out.samples = len(rows)
    return out


# -- pictures -------------------------------------------------------------------------------------


def _classes(base: list[BaseFile]) -> set[str]:
    return {f.label for f in base if f.kind == "image" and f.label}


def image_classifier(records: Iterable[Captured], base: list[BaseFile]) -> Curated:
    classes = _classes(base)
    if not classes:
        raise CurateError("the base version holds no labelled pictures (<class>/<file>)")
    seen = {f.sha256 for f in base}
    out = Curated()
    for rec in records:
        inputs, outputs = call_inputs(rec.input), _outputs(rec.output)
        gave = False
        for i, item in enumerate(inputs):
            label = rec.correction if len(inputs) == 1 else None
            if label is None and i < len(outputs) and isinstance(outputs[i], dict):
                label = outputs[i].get("label")
            raw = _image_bytes(item)
            if raw is None or not isinstance(label, str) or label not in classes:
                out.skipped += 1
                continue
            gave |= _add_picture(out, seen, raw, label, "captured")
        out.used += gave
    return out


def _add_picture(out: Curated, seen: set[str], raw: bytes, label: str, prefix: str) -> bool:
    digest = _sha(raw)
    if digest in seen:
        out.duplicates += 1
        return False
    seen.add(digest)
    out.files[f"{label}/{prefix}-{digest[:16]}.{_extension(raw)}"] = raw
    out.samples += 1
    return True


def image_generator(
    records: Iterable[Captured], base: list[BaseFile], max_generated_share: float
) -> Curated:
    classes = _classes(base)
    if not classes:
        raise CurateError("the base version holds no labelled pictures (<class>/<file>)")
    trained = [f for f in base if f.kind == "image" and f.split == "train"]
    # A base curated earlier already holds generated pictures: they count against the cap, so
    # the share stays bounded however many times the loop turns.
    earlier = sum(1 for f in trained if f.path.rpartition("/")[2].startswith("generated-"))
    real = len(trained) - earlier
    cap = max(0, math.floor(real * max_generated_share / (1 - max_generated_share)) - earlier)
    seen = {f.sha256 for f in base}
    out = Curated()
    ranked = sorted(records, key=lambda r: -(r.rating or 0))
    for rec in ranked:
        inputs, outputs = call_inputs(rec.input), _outputs(rec.output)
        gave = False
        for i, produced in enumerate(outputs):
            asked = inputs[i] if i < len(inputs) and isinstance(inputs[i], dict) else {}
            label = rec.label if len(outputs) == 1 and rec.label is not None else None
            label = (
                label if label is not None else (produced or {}).get("class", asked.get("class"))
            )
            images = produced.get("images") if isinstance(produced, dict) else None
            for image in images if isinstance(images, list) else []:
                raw = _image_bytes(image)
                if (
                    raw is None
                    or not isinstance(label, str)
                    or label not in classes
                    or out.samples >= cap
                ):
                    out.skipped += 1
                else:
                    gave |= _add_picture(out, seen, raw, label, "generated")
        out.used += gave
    return out


# -- text -----------------------------------------------------------------------------------------


def _prompt_and_completion(rec: Captured) -> list[tuple[str, str]]:
    body, answer = rec.input, rec.output
    if rec.route == "completions" and isinstance(body, dict):
        choices = answer.get("choices") if isinstance(answer, dict) else None
        text = choices[0].get("text") if choices and isinstance(choices[0], dict) else None
        return [(str(body.get("prompt", "")), str(text or ""))]
    if rec.route == "chat/completions" and isinstance(body, dict):
        given = body.get("messages")
        messages: list[Any] = given if isinstance(given, list) else []
        prompt = "\n".join(
            f"{m.get('role')}: {m.get('content')}" for m in messages if isinstance(m, dict)
        )
        choices = answer.get("choices") if isinstance(answer, dict) else None
        message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        return [(prompt + "\nassistant: ", str(content or ""))]
    pairs = []
    outputs = _outputs(answer)
    for i, item in enumerate(call_inputs(body)):
        asked: Any = item.get("prompt") if isinstance(item, dict) else item
        produced: Any = outputs[i] if i < len(outputs) else None
        if isinstance(produced, dict):
            produced = produced.get("completion", produced.get("text"))
        pairs.append((str(asked or ""), str(produced or "")))
    return pairs


def _base_texts(base: list[BaseFile], read: ReadBlob) -> set[str]:
    texts: set[str] = set()
    for f in base:
        if f.kind == "text":
            texts.update(
                line.strip() for line in read(f.sha256).decode("utf-8", "replace").splitlines()
            )
        elif f.kind == "jsonl":
            for line in read(f.sha256).decode("utf-8", "replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("text"), str):
                    texts.add(row["text"].strip())
    return texts


def text_generator(
    records: Iterable[Captured], base: list[BaseFile], read: ReadBlob, path: str
) -> Curated:
    seen = _base_texts(base, read)
    out = Curated()
    lines: list[bytes] = []
    for rec in records:
        pairs = _prompt_and_completion(rec)
        gave = False
        for prompt, completion in pairs:
            if len(pairs) == 1 and isinstance(rec.target, str):
                completion = rec.target
            text = (prompt + completion).strip()
            if REDACTED in text or not text:
                out.skipped += 1
                continue
            if text in seen:
                out.duplicates += 1
                continue
            seen.add(text)
            lines.append(json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n")
            gave = True
        out.used += gave
    if lines:
        out.files[path] = b"".join(lines)
        out.samples = len(lines)
    return out
