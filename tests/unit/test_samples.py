"""Built-in sample data: the right files, the same bytes for the same seed, learnable content."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gureum import samples
from gureum.samples import FolderNotEmpty, SampleError

GARMENT_CLASSES = {"shirt", "jacket", "dress", "skirt", "trousers"}


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def disk_usage(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def test_registry_lists_every_sample_behind_one_interface() -> None:
    assert samples.names() == ["garments", "digits", "text", "tabular"]
    for name, generator in samples.SAMPLES.items():
        assert generator.name == name
        assert generator.default_count > 0
        assert generator.description


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="garments, digits, text, tabular"):
        samples.write("shoes", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["garments", "digits", "text", "tabular"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, name: str) -> None:
    a = samples.write(name, tmp_path / "a", count=20, seed=7)
    b = samples.write(name, tmp_path / "b", count=20, seed=7)
    c = samples.write(name, tmp_path / "c", count=20, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert (a.files, a.bytes) == (b.files, b.bytes) == disk_usage(tmp_path / "a")
    assert c.seed == 8


def test_garments_are_small_rgb_pictures_in_class_folders(tmp_path: Path) -> None:
    summary = samples.write("garments", tmp_path, count=23)
    assert set(summary.classes) == GARMENT_CLASSES
    assert sum(summary.classes.values()) == summary.files == 23
    assert sorted(summary.classes.values()) == [4, 4, 5, 5, 5]
    assert {p.name for p in tmp_path.iterdir()} == GARMENT_CLASSES
    for kind, n in summary.classes.items():
        pictures = sorted((tmp_path / kind).glob("*.png"))
        assert len(pictures) == n
        with Image.open(pictures[0]) as img:
            assert (img.size, img.mode) == ((32, 32), "RGB")
    assert summary.details["image_size"] == [32, 32]


def test_garment_pictures_do_not_depend_on_the_count(tmp_path: Path) -> None:
    samples.write("garments", tmp_path / "few", count=5, seed=3)
    samples.write("garments", tmp_path / "more", count=15, seed=3)
    few = digest(tmp_path / "few")
    assert few.items() <= digest(tmp_path / "more").items()


def test_garment_classes_are_told_apart_by_their_shape(tmp_path: Path) -> None:
    """A nearest-centroid rule on silhouettes alone must separate the classes well."""
    samples.write("garments", tmp_path, count=150, seed=1)
    kinds = sorted(GARMENT_CLASSES)
    train: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    test: list[tuple[str, np.ndarray]] = []
    for kind in kinds:
        for i, path in enumerate(sorted((tmp_path / kind).glob("*.png"))):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
            background = pixels[0, 0]
            silhouette = (np.abs(pixels - background).sum(axis=2) > 40).astype(np.float32)
            (train[kind].append(silhouette) if i % 2 == 0 else test.append((kind, silhouette)))
    centroids = {k: np.mean(v, axis=0) for k, v in train.items()}
    hits = sum(
        kind == min(kinds, key=lambda k: float(np.square(centroids[k] - s).sum()))
        for kind, s in test
    )
    assert hits / len(test) > 0.8


def test_digits_are_sklearns_digits_as_greyscale_pngs(tmp_path: Path) -> None:
    summary = samples.write("digits", tmp_path)
    assert summary.files == 1797
    assert set(summary.classes) == {str(d) for d in range(10)}
    assert all(170 <= n <= 185 for n in summary.classes.values())
    with Image.open(tmp_path / "0" / "0000.png") as img:
        assert (img.size, img.mode) == ((32, 32), "L")
        pixels = np.asarray(img)
    assert pixels.max() > 200 and pixels[16, 16] < pixels.max()  # a ring: bright ink, dark hole


def test_digits_refuse_more_than_there_are_and_leave_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(SampleError, match="1797"):
        samples.write("digits", tmp_path / "out", count=1798)
    assert not (tmp_path / "out").exists()


def test_text_corpus_is_enough_prose_for_a_tiny_language_model(tmp_path: Path) -> None:
    summary = samples.write("text", tmp_path)
    corpus = (tmp_path / "corpus.txt").read_text(encoding="utf-8")
    lines = corpus.splitlines()
    assert len(lines) == summary.details["corpus_lines"] == 800
    assert 100_000 <= len(corpus.encode()) <= 300_000
    assert len(set(lines)) > 0.95 * len(lines)  # varied, not one sentence repeated
    assert "{" not in corpus and "}" not in corpus and "  " not in corpus
    assert all(line.endswith(".") for line in lines)


def test_text_feedback_rows_carry_rating_and_matching_sentiment(tmp_path: Path) -> None:
    summary = samples.write("text", tmp_path, count=60)
    rows = [json.loads(line) for line in (tmp_path / "feedback.jsonl").read_text().splitlines()]
    assert len(rows) == summary.details["feedback_rows"] == 30
    for row in rows:
        assert list(row) == summary.columns
        expected = (
            "negative" if row["rating"] <= 2 else "neutral" if row["rating"] == 3 else "positive"
        )
        assert row["sentiment"] == expected
        assert row["text"]


def test_tabular_has_typed_columns_and_a_learnable_target(tmp_path: Path) -> None:
    summary = samples.write("tabular", tmp_path, count=3000, seed=2)
    with (tmp_path / "garments.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3000
    assert list(rows[0]) == summary.columns
    assert summary.details["target"] == "returned" and "returned" in summary.columns
    assert {r["returned"] for r in rows} == {"yes", "no"}
    for column in ("price", "discount_pct", "customer_age", "previous_returns", "rating"):
        assert all(float(r[column]) >= 0 for r in rows)

    # The known rule: buying another size than usual makes a return far more likely.
    def rate(subset: list[dict[str, str]]) -> float:
        return sum(r["returned"] == "yes" for r in subset) / len(subset)

    mismatched = [r for r in rows if r["size"] != r["usual_size"]]
    matched = [r for r in rows if r["size"] == r["usual_size"]]
    assert rate(mismatched) > rate(matched) + 0.25


def test_a_non_empty_folder_is_refused_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FolderNotEmpty, match="--force"):
        samples.write("tabular", tmp_path, count=5)
    assert not (tmp_path / "garments.csv").exists()
    summary = samples.write("tabular", tmp_path, count=5, force=True)
    assert summary.files == 1
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_bad_targets_and_counts_are_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SampleError, match="not a folder"):
        samples.write("text", a_file)
    with pytest.raises(SampleError, match="at least 1"):
        samples.write("text", tmp_path / "zero", count=0)
    assert not (tmp_path / "zero").exists()
