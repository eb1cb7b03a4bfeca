"""A recipe sees a folder exactly as the platform records a push of it: the same kinds, labels,
per-file split, version kind, schema and split rule; and rows or lines split by the version's
own seed and ratio with the platform's row rule."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import IO

import pytest
from PIL import Image

from gureum.datasets.scan import Entry, ScanResult, scan
from gureum.datasets.split import file_split, row_is_validation
from gureum.recipes import DatasetMismatch, LocalDataset, get_recipe
from gureum.recipes.dataset import SplitRule
from gureum.recipes.tabular import TabularParams, load_rows
from gureum.recipes.textdata import load_text
from tests.conftest import Cloud


def png(shade: int, size: tuple[int, int] = (6, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (shade, 40, 200 - shade)).save(buf, format="PNG")
    return buf.getvalue()


def classes() -> dict[str, bytes]:
    out = {f"cat/c{i}.png": png(i) for i in range(12)}
    out.update({f"dog/d{i}.png": png(100 + i, (9, 9)) for i in range(12)})
    out["LICENSE"] = b"MIT, as you like it\n"  # no extension: sniffed as text
    out["notes.bin"] = b"\x00\x01\x02"
    return out


def presplit() -> dict[str, bytes]:
    return {
        f"{s}/{c}/{i}.png": png(i) for s in ("train", "val") for c in ("a", "b") for i in (1, 2)
    }


def broken_and_nested() -> dict[str, bytes]:
    return {"cat/1.png": png(1), "cat/2.png": b"not a png", "deep/er/3.png": png(3)}


def table() -> dict[str, bytes]:
    rows = "".join(f"{i}, n{i % 3} ,{i % 2}\n" for i in range(50))
    return {"orders.csv": (" id ,name,\n" + rows).encode(), "README.md": b"# orders\n"}


def corpus() -> dict[str, bytes]:
    lines = "\n".join(f"line {i}" for i in range(40))
    rows = "\n".join(json.dumps({"text": f"review {i}", "stars": i % 5}) for i in range(30))
    return {"corpus.txt": lines.encode(), "feedback.jsonl": rows.encode()}


LAYOUTS = {
    "classes": classes,
    "presplit": presplit,
    "broken": broken_and_nested,
    "table": table,
    "corpus": corpus,
}


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def platform_scan(files: dict[str, bytes], ratio: float, seed: int) -> ScanResult:
    """What the server's push records, called as tests/unit/test_dataset_scan.py calls it."""
    blobs = {hashlib.sha256(d).hexdigest(): d for d in files.values()}
    entries = [Entry(p, hashlib.sha256(d).hexdigest(), len(d)) for p, d in files.items()]

    def open_blob(sha: str) -> IO[bytes]:
        return io.BytesIO(blobs[sha])

    return scan(entries, open_blob, validation_ratio=ratio, seed=seed)


# -- the same manifest as the platform's -------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize(("ratio", "seed"), [(0.2, 0), (0.5, 7)])
def test_from_folder_records_what_the_platform_scan_records(
    tmp_path: Path, layout: str, ratio: float, seed: int
) -> None:
    files = LAYOUTS[layout]()
    root = write(tmp_path, files)
    write(root, {".hidden": b"x", ".git/config": b"y"})  # a push leaves hidden names out
    ds = LocalDataset.from_folder(root, validation_ratio=ratio, seed=seed)
    want = platform_scan(files, ratio, seed)
    got = {f.path: (f.kind, f.label, f.split) for f in ds.files}
    assert got == {f.path: (f.kind, f.label, f.split) for f in want.files}
    assert ds.kind == want.kind and ds.schema == want.schema
    assert ds.split == SplitRule.from_record(want.split)
    assert ds.to_manifest()["split"].items() <= want.split.items()


def test_labels_and_splits_are_the_platforms_not_folder_conventions(tmp_path: Path) -> None:
    ds = LocalDataset.from_folder(write(tmp_path / "c", classes()), seed=3)
    assert ds.labels() == ["cat", "dog"] and ds.kind == "mixed"
    assert {f.path: f.kind for f in ds.files if f.kind != "image"} == {
        "LICENSE": "text",
        "notes.bin": "other",
    }
    assert all(f.split == file_split(3, f.path, 0.2) for f in ds.files)
    # train/ and val/ are folders like any other: no labels two levels down, split by path hash.
    pre = LocalDataset.from_folder(write(tmp_path / "p", presplit()))
    assert pre.labels() == [] and pre.split.unit == "file"
    assert all(f.split == file_split(0, f.path, 0.2) for f in pre.files)
    broken = LocalDataset.from_folder(write(tmp_path / "b", broken_and_nested()))
    assert {f.path: (f.kind, f.label) for f in broken.files} == {
        "cat/1.png": ("image", None),
        "cat/2.png": ("other", None),
        "deep/er/3.png": ("image", None),
    }


def test_a_pushed_folder_and_its_manifest_give_the_same_dataset(
    cloud: Cloud, tmp_path: Path
) -> None:
    root = write(tmp_path / "src", {**classes(), "extra/orders.csv": table()["orders.csv"]})
    client = cloud.client()
    version = client.datasets.push("shop", root, validation_ratio=0.4, seed=11)
    pushed = client.datasets.files("shop", version.version)
    local = LocalDataset.from_folder(root, validation_ratio=0.4, seed=11)
    assert [(f.path, f.kind, f.label, f.split) for f in pushed] == [
        (f.path, f.kind, f.label, f.split) for f in local.files
    ]
    manifest = {
        **version.model_dump(mode="json"),
        "files": [f.model_dump(mode="json") for f in pushed],
    }
    assert LocalDataset.from_manifest(root, json.loads(json.dumps(manifest))) == local


def test_a_manifest_must_carry_the_split_record_and_known_kinds(tmp_path: Path) -> None:
    ds = LocalDataset.from_folder(write(tmp_path, table()))
    manifest = ds.to_manifest()
    assert LocalDataset.from_manifest(tmp_path, manifest) == ds
    with pytest.raises(ValueError, match="no split record"):
        LocalDataset.from_manifest(tmp_path, {**manifest, "split": None})
    with pytest.raises(ValueError, match="names the file whose rows it splits"):
        LocalDataset.from_manifest(tmp_path, {**manifest, "split": {"seed": 0, **_row(0.2)}})
    with pytest.raises(ValueError, match="'video' is not one of"):
        LocalDataset.from_manifest(
            tmp_path, {**manifest, "files": [{"path": "a", "kind": "video"}]}
        )
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        LocalDataset.from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        LocalDataset.from_folder(tmp_path / "empty")


def _row(ratio: float) -> dict[str, object]:
    return {"validation_ratio": ratio, "unit": "row"}


# -- rows and lines ---------------------------------------------------------------------------


def test_a_single_table_is_split_by_row_with_the_versions_seed_and_ratio(tmp_path: Path) -> None:
    files = table()
    ds = LocalDataset.from_folder(write(tmp_path, files), validation_ratio=0.3, seed=4)
    assert ds.split == SplitRule(0.3, 4, "row", "orders.csv")
    train, val = load_rows(ds)
    assert [r["id"] for r in val] == [
        str(i) for i in range(50) if row_is_validation(4, i, 0.3)
    ]  # columns named as the schema names them (stripped), rows numbered as it counts them
    assert len(val) == platform_scan(files, 0.3, 4).split["validation"]
    assert len(train) + len(val) == 50 and val[0].keys() == {"id", "name", "column_3"}
    reseeded = {**ds.to_manifest(), "split": SplitRule(0.6, 9, "row", "orders.csv").to_record()}
    _, val9 = load_rows(LocalDataset.from_manifest(ds.root, reseeded))
    assert [r["id"] for r in val9] == [str(i) for i in range(50) if row_is_validation(9, i, 0.6)]


def test_several_tables_keep_their_files_side(tmp_path: Path) -> None:
    body = "x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(5))
    files = {f"part{i}.csv": body.encode() for i in range(8)}
    ds = LocalDataset.from_folder(write(tmp_path, files), validation_ratio=0.4)
    assert ds.split.unit == "file"
    train, val = load_rows(ds)
    held = [p for p in files if file_split(0, p, 0.4) == "validation"]
    assert 0 < len(held) < 8 and len(val) == 5 * len(held) and len(train) == 5 * (8 - len(held))
    recipe = get_recipe("tabular")
    recipe.check_dataset(ds, TabularParams(target="y"))  # columns from the schema's tables
    with pytest.raises(DatasetMismatch, match="target column 'z' is not in the table"):
        recipe.check_dataset(ds, TabularParams(target="z"))


def test_a_single_corpus_file_is_split_by_line_index(tmp_path: Path) -> None:
    lines = [f"line {i}" if i % 7 else "" for i in range(60)]  # blank lines keep their number
    ds = LocalDataset.from_folder(
        write(tmp_path, {"book.txt": "\n".join(lines).encode()}), validation_ratio=0.25, seed=2
    )
    assert ds.split.unit == "file"  # the platform puts the whole file on one side
    text = load_text(ds, "text-generator")
    held = [s for i, s in enumerate(lines) if s and row_is_validation(2, i, 0.25)]
    kept = [s for i, s in enumerate(lines) if s and not row_is_validation(2, i, 0.25)]
    assert text.split_by_line
    assert text.validation.splitlines() == held and text.train.splitlines() == kept


def test_a_single_jsonl_is_split_by_the_platforms_row_numbers(tmp_path: Path) -> None:
    rows = [json.dumps({"text": f"review {i}"} if i % 5 else {"stars": i}) for i in range(40)]
    raw = "\n".join([*rows[:10], "", "{not json", *rows[10:]]) + "\n"  # neither is a row
    files = {"feedback.jsonl": raw.encode(), "notes.txt": b"kept for training\n"}
    ds = LocalDataset.from_folder(write(tmp_path, files), validation_ratio=0.3, seed=1)
    assert ds.split == SplitRule(0.3, 1, "row", "feedback.jsonl")
    text = load_text(ds, "text-generator")
    held = [f"review {i}" for i in range(40) if i % 5 and row_is_validation(1, i, 0.3)]
    assert text.validation.splitlines() == held
    assert "kept for training" in text.train.splitlines()
