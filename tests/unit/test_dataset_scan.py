"""What a version records about its files: kinds, labels, schema, split and preview."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable
from typing import IO

import pytest
from PIL import Image

from gureum.datasets import readers as rd
from gureum.datasets.scan import Entry, ScanResult, scan
from gureum.datasets.split import (
    count_validation_rows,
    file_split,
    row_is_validation,
    row_validation_mask,
)


def png(
    width: int, height: int, color: tuple[int, int, int] = (200, 10, 10), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color if mode == "RGB" else 128).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def run(files: dict[str, bytes], ratio: float = 0.2, seed: int = 0) -> ScanResult:
    blobs = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
    entries = [Entry(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in files.items()]

    def open_blob(sha: str) -> IO[bytes]:
        return io.BytesIO(blobs[sha])

    opener: Callable[[str], IO[bytes]] = open_blob
    return scan(entries, opener, validation_ratio=ratio, seed=seed)


def by_path(result: ScanResult) -> dict[str, tuple[str, str | None, str]]:
    return {f.path: (f.kind, f.label, f.split) for f in result.files}


def test_folder_per_class_images_get_labels_classes_sizes_and_modes() -> None:
    files = {
        "cat/1.png": png(32, 32),
        "cat/2.png": png(32, 32),
        "dog/1.jpg": jpeg(64, 48),
        "bird/1.png": png(16, 16, mode="L"),
    }
    r = run(files)
    assert r.kind == "images"
    assert {p: k[:2] for p, k in by_path(r).items()} == {
        "bird/1.png": ("image", "bird"),
        "cat/1.png": ("image", "cat"),
        "cat/2.png": ("image", "cat"),
        "dog/1.jpg": ("image", "dog"),
    }
    assert r.schema["classes"] == {"bird": 1, "cat": 2, "dog": 1}
    assert r.schema["image_sizes"] == {"32x32": 2, "64x48": 1, "16x16": 1}
    assert r.schema["modes"] == {"RGB": 3, "L": 1}
    assert r.schema["kinds"] == {"image": 4}


def test_images_not_in_class_folders_have_no_labels() -> None:
    r = run({"a.png": png(8, 8), "sub/b.png": png(8, 8), "sub/deeper/c.png": png(8, 8)})
    assert all(f.label is None for f in r.files)
    assert "classes" not in r.schema


def test_preview_thumbnails_are_small_pngs_first_image_of_each_class_first() -> None:
    files = {f"a/{i}.png": png(100, 50) for i in range(6)}
    files.update({f"b/{i}.png": png(40, 40) for i in range(6)})
    r = run(files)
    images = r.preview["images"]
    assert len(images) == 8
    assert [i["path"] for i in images[:3]] == ["a/0.png", "b/0.png", "a/1.png"]
    assert images[0]["label"] == "a" and images[0]["width"] == 100 and images[0]["height"] == 50
    for item in images:
        thumb = Image.open(io.BytesIO(base64.b64decode(item["thumbnail"])))
        assert thumb.format == "PNG"
        assert thumb.width <= 32 and thumb.height <= 32


def test_csv_columns_dtypes_rows_and_typed_preview() -> None:
    lines = ["name,age,height,member,note"]
    lines += [f"p{i},{20 + i},{1.5 + i / 10},{'true' if i % 2 else 'false'},x{i}" for i in range(9)]
    lines.append("p9,,1.7,true,")  # empty cells do not change a column's type
    r = run({"people.csv": ("\n".join(lines) + "\n").encode()})
    assert r.kind == "table"
    assert r.schema["columns"] == [
        {"name": "name", "dtype": "str"},
        {"name": "age", "dtype": "int"},
        {"name": "height", "dtype": "float"},
        {"name": "member", "dtype": "bool"},
        {"name": "note", "dtype": "str"},
    ]
    assert r.schema["rows"] == 10
    assert r.preview["rows"][0] == {
        "name": "p0",
        "age": 20,
        "height": 1.5,
        "member": False,
        "note": "x0",
    }
    assert len(r.preview["rows"]) == 5


def test_single_table_splits_rows_deterministically() -> None:
    body = "x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(1000))
    r = run({"t.csv": body.encode()}, ratio=0.25, seed=7)
    assert r.split["unit"] == "row"
    assert r.split["train"] + r.split["validation"] == 1000
    assert r.split["validation"] == count_validation_rows(7, 1000, 0.25)
    assert 180 < r.split["validation"] < 320
    assert int(row_validation_mask(7, 0, 1000, 0.25).sum()) == r.split["validation"]
    assert [row_is_validation(7, i, 0.25) for i in range(20)] == list(
        row_validation_mask(7, 0, 20, 0.25)
    )


def test_several_tables_are_listed_per_file() -> None:
    r = run({"a.csv": b"x\n1\n", "b.tsv": b"p\tq\n1\t2.5\n"})
    assert r.schema["tables"]["a.csv"] == {"columns": [{"name": "x", "dtype": "int"}], "rows": 1}
    assert r.schema["tables"]["b.tsv"]["columns"][1] == {"name": "q", "dtype": "float"}
    assert r.split["unit"] == "file"


def test_jsonl_keys_rows_and_bad_lines() -> None:
    rows = [{"text": "hello", "label": 1}, {"text": "bye", "extra": True}]
    body = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n\n"
    r = run({"d.jsonl": body.encode()})
    assert r.kind == "jsonl"
    assert r.schema["keys"] == ["text", "label", "extra"]
    assert r.schema["rows"] == 2
    assert r.schema["invalid_rows"] == 1
    assert r.preview["rows"] == rows


def test_text_lines_chars_and_preview() -> None:
    body = "".join(f"line {i}\n" for i in range(30))
    r = run({"corpus.txt": body.encode()})
    assert r.kind == "text"
    assert r.schema["lines"] == 30
    assert r.schema["chars"] == len(body)
    assert r.preview["lines"] == [f"line {i}" for i in range(10)]


def test_content_sniffing_when_the_extension_says_nothing() -> None:
    r = run(
        {"a/picture": png(10, 10), "notes": b"just some words\n", "blob.bin": bytes(range(256))}
    )
    kinds = {f.path: f.kind for f in r.files}
    assert kinds == {"a/picture": "image", "notes": "text", "blob.bin": "other"}
    assert r.kind == "mixed"


def test_unreadable_image_is_other_and_reported() -> None:
    r = run({"broken.png": b"not a png at all"})
    assert r.files[0].kind == "other"
    assert r.schema["unreadable"] == ["broken.png"]
    assert r.kind == "files"


def test_file_split_is_deterministic_and_stable_across_versions() -> None:
    v1 = {f"img/{i}.png": png(4, 4, (i, 0, 0)) for i in range(50)}
    first = by_path(run(v1, ratio=0.3, seed=3))
    again = by_path(run(v1, ratio=0.3, seed=3))
    assert first == again
    v2 = dict(v1)
    v2.update({f"img/new{i}.png": png(4, 4, (0, i, 0)) for i in range(20)})
    second = by_path(run(v2, ratio=0.3, seed=3))
    assert {p: second[p][2] for p in first} == {p: first[p][2] for p in first}
    sides = [s for _, _, s in second.values()]
    assert "train" in sides and "validation" in sides
    assert first == {p: (k, lbl, file_split(3, p, 0.3)) for p, (k, lbl, _) in first.items()}


def test_split_counts_and_edge_ratios() -> None:
    files = {f"{i}.txt": f"{i}\n".encode() for i in range(40)}
    r = run(files, ratio=0.0)
    assert r.split == {
        "validation_ratio": 0.0,
        "seed": 0,
        "unit": "file",
        "train": 40,
        "validation": 0,
    }
    r = run(files, ratio=0.5, seed=1)
    assert r.split["train"] + r.split["validation"] == 40
    assert r.split["validation"] == sum(f.split == "validation" for f in r.files)
    other_seed = run(files, ratio=0.5, seed=2)
    assert by_path(r) != by_path(other_seed)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_row_split_ratio_is_roughly_honoured(ratio: float) -> None:
    n = 20_000
    assert abs(count_validation_rows(0, n, ratio) / n - ratio) < 0.02


# -- line length (issue 10) ---------------------------------------------------------------


def _scan_lines(files: dict[str, bytes], limit: int) -> ScanResult:
    blobs = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
    entries = [Entry(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in files.items()]
    return scan(
        entries,
        lambda sha: io.BytesIO(blobs[sha]),
        validation_ratio=0.2,
        seed=0,
        max_line_bytes=limit,
    )


@pytest.mark.parametrize(
    "path,data,line",
    [
        ("t.csv", b"a,b\n1,2\n" + b"x" * 5000 + b"\n", 3),
        ("t.tsv", b"a\tb\n" * 3000 + b"y" * 4097, 3001),  # the last line, no newline
        ("r.jsonl", b"{}\n" + b'{"a": "' + b"z" * 5000 + b'"}\n{}\n', 2),
        ("n.txt", b"short\n" * 10 + b"w" * 4097 + b"\nend\n", 11),
        ("sniffed", b"plain text\n" + b"v" * 4097 + b"\n", 2),  # text told from its bytes
    ],
)
def test_a_line_over_the_limit_names_file_and_line(path: str, data: bytes, line: int) -> None:
    with pytest.raises(rd.LineTooLong) as caught:
        _scan_lines({path: data, "ok.txt": b"fine\n"}, 4096)
    assert (caught.value.path, caught.value.line, caught.value.limit) == (path, line, 4096)


def test_lines_at_the_limit_and_other_files_pass() -> None:
    result = _scan_lines(
        {"t.txt": b"a\n" + b"b" * 4096 + b"\n" * 3, "blob.bin": b"\0" * 100_000}, 4096
    )
    assert result.schema["lines"] == 4


def test_long_lines_in_a_block_bigger_than_the_limit_are_found() -> None:
    # Many short lines around one long one, all in one read of the wrapped file.
    data = b"s\n" * 3000 + b"L" * 1500 + b"\n" + b"s\n" * 10
    with pytest.raises(rd.LineTooLong) as caught:
        rd.read_text(rd.line_limited(io.BytesIO(data), 1024))
    assert caught.value.line == 3001
    assert rd.read_text(rd.line_limited(io.BytesIO(data), 1500)).lines == 3011
