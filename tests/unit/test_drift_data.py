"""What drift reads (server/services/drift_data): the training side exactly as the recipes split
it (``load_rows``, ``load_text``), the fixed-seed sample of a large one, and the live inputs of
captured calls of every route. Folders on disk stand in for the artifact store."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import IO, Any

import pytest

from gureum.recipes.dataset import LocalDataset
from gureum.recipes.tabular import load_rows
from gureum.recipes.textdata import load_text
from gureum.server.services import drift_data as dd


class FolderStore:
    """``open_blob`` by a file's relative path (the files below are keyed by it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def open_blob(self, workspace_id: int, key: str) -> IO[bytes]:
        return open(self.root / key, "rb")


def _files(ds: LocalDataset) -> list[dd.TrainingFile]:
    return [dd.TrainingFile(f.path, f.path, f.kind, f.split) for f in ds.files]


def _table(path: Path, rows: int, start: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["price", "garment"])
        w.writerows([[start + i, ("dress", "shirt")[i % 2]] for i in range(rows)])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tables", [1, 3])
def test_training_rows_are_the_tabular_recipes_training_rows(
    tmp_path: Path, seed: int, tables: int
) -> None:
    for t in range(tables):
        _table(tmp_path / "data" / f"orders{t}.csv", 40, start=100 * t)
    ds = LocalDataset.from_folder(tmp_path / "data", validation_ratio=0.3, seed=seed)
    store: Any = FolderStore(tmp_path / "data")
    sample, columns = dd.training_rows(store, 1, _files(ds), ds.split.to_record())
    train, _ = load_rows(ds)
    assert columns == ["price", "garment"]
    assert sample.items == train and sample.total == len(train)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "layout",
    [
        {"a.txt": 30},
        {"a.txt": 20, "b.txt": 20, "c.txt": 20},
        {"rows.jsonl": 30},
        {"a.txt": 10, "rows.jsonl": 10},
    ],
)
def test_training_texts_are_the_text_recipes_training_texts(
    tmp_path: Path, seed: int, layout: dict[str, int]
) -> None:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, n in layout.items():
        lines = [f"{name} line {i} " + "word " * (i % 5) for i in range(n)]
        lines[3] = "   "  # blank texts are no texts
        if name.endswith(".jsonl"):
            body = "\n".join(
                json.dumps({"text": t} if i != 5 else {"x": 1}) for i, t in enumerate(lines)
            )
        else:
            body = "\n".join(lines)
        (root / name).write_text(body + "\n")
    ds = LocalDataset.from_folder(root, validation_ratio=0.3, seed=seed)
    store: Any = FolderStore(root)
    sample = dd.training_texts(store, 1, _files(ds), ds.split.to_record())
    expected = load_text(ds, "text-generator").train.splitlines()
    assert sorted(sample.items) == sorted(expected) and sample.total == len(expected)


def test_a_large_training_split_is_a_fixed_seed_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _table(tmp_path / "data" / "orders.csv", 500)
    ds = LocalDataset.from_folder(tmp_path / "data")
    store: Any = FolderStore(tmp_path / "data")
    monkeypatch.setattr(dd, "REFERENCE_SAMPLE", 50)
    first, _ = dd.training_rows(store, 1, _files(ds), ds.split.to_record())
    again, _ = dd.training_rows(store, 1, _files(ds), ds.split.to_record())
    train, _ = load_rows(ds)
    assert len(first.items) == 50 and first.total == len(train) > 300
    assert first.items == again.items
    assert all(r in train for r in first.items)
    assert first.items != train[:50]  # drawn from the whole split, not its head
    assert dd.bounded(list(range(10)), 4) == dd.bounded(list(range(10)), 4)
    assert len(dd.bounded(list(range(10)), 4)) == 4 and dd.bounded([1, 2], 4) == [1, 2]


def test_live_rows_pictures_and_prompts_of_every_call_shape() -> None:
    calls = [
        dd.Call("predict", {"inputs": [{"price": 3, "email": "[redacted]"}, "odd"]}),
        dd.Call("predict", {"input": {"price": 4}}),
        dd.Call("predict", {"nothing": 1}),
    ]
    assert dd.live_rows(calls) == [{"price": 3, "email": None}, "odd", {"price": 4}]
    pictures = dd.live_pictures(
        [dd.Call("predict", {"inputs": ["aGk=", {"image": "aGk="}, "not base64!", 7]})]
    )
    assert pictures == [b"hi", b"hi", None, None]
    prompts = dd.live_prompts(
        [
            dd.Call("completions", {"prompt": "a red"}),
            dd.Call("completions", {"prompt": ["one", "two"]}),
            dd.Call("completions", {"prompt": 5}),
            dd.Call(
                "chat/completions",
                {
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    ]
                },
            ),
            dd.Call("chat/completions", {"messages": "no"}),
            dd.Call("predict", {"inputs": ["plain", {"prompt": "asked"}, {"x": 1}]}),
        ]
    )
    assert prompts == ["a red", "one", "two", None, "be brief\nhi", None, "plain", "asked", None]
