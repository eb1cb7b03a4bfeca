"""The recipe protocol's plumbing: registry, parameters, datasets, the local run context and
the plain-Python runner, with the refusals a user meets before any training starts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from gureum import samples
from gureum.datasets.split import file_split
from gureum.recipes import (
    RECIPES,
    DatasetMismatch,
    InvalidParams,
    LocalDataset,
    LocalRunContext,
    ModelMismatch,
    UnknownRecipe,
    get_recipe,
    names,
    prepare,
)
from gureum.recipes.run import main as run_main


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LocalDataset]:
    root = tmp_path_factory.mktemp("recipes-base")
    out = {}
    for name, count in (("garments", 40), ("text", 20), ("tabular", 60)):
        samples.write(name, root / name, count=count)
        out[name] = LocalDataset.from_folder(root / name)
    return out


# -- registry and parameters -----------------------------------------------------------------


def test_registry_names_every_built_in_recipe_behind_one_protocol() -> None:
    assert names() == [
        "image-generator",
        "image-classifier",
        "text-generator",
        "tabular",
        "image-diffusion",
        "image-lora",
    ]
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.description
        assert get_recipe(name) is recipe
        assert recipe.Params.model_config.get("extra") == "forbid"


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(UnknownRecipe, match="unknown recipe 'gan'; choose one of: image-gen"):
        get_recipe("gan")


def test_unknown_parameter_is_refused_with_the_known_names(
    data: dict[str, LocalDataset],
) -> None:
    with pytest.raises(InvalidParams) as err:
        prepare("image-classifier", {"epochz": "3"}, data["garments"])
    message = str(err.value)
    assert "image-classifier: unknown parameter 'epochz'" in message
    assert "epochs" in message and "batch_size" in message


def test_bad_parameter_values_are_refused_with_the_reason(
    data: dict[str, LocalDataset],
) -> None:
    with pytest.raises(InvalidParams, match="parameter 'epochs': Input should be a valid integer"):
        prepare("image-classifier", {"epochs": "many"}, data["garments"])
    with pytest.raises(InvalidParams, match="parameter 'epochs': Input should be greater"):
        prepare("image-classifier", {"epochs": "0"}, data["garments"])
    with pytest.raises(InvalidParams, match="parameter 'target': Field required"):
        prepare("tabular", {}, data["tabular"])


def test_cli_strings_become_typed_parameters(data: dict[str, LocalDataset]) -> None:
    _, params = prepare("image-classifier", {"epochs": "3", "lr": "0.01"}, data["garments"])
    assert params.model_dump()["epochs"] == 3 and params.model_dump()["lr"] == 0.01
    _, tab = prepare("tabular", {"target": "price", "drop": "garment, fabric"}, data["tabular"])
    assert tab.model_dump()["drop"] == ["garment", "fabric"]


# -- datasets that do not fit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("recipe", "dataset", "message"),
    [
        ("image-classifier", "text", "image-classifier needs a folder-per-class image dataset; "),
        ("image-classifier", "tabular", "got table (1 table)"),
        ("image-generator", "text", "image-generator needs an image dataset; got mixed"),
        ("text-generator", "garments", "text-generator needs text files (.txt) or JSONL"),
        ("tabular", "garments", "tabular needs CSV files with a header row; got images"),
    ],
)
def test_a_dataset_that_does_not_fit_is_refused_from_the_manifest(
    data: dict[str, LocalDataset], recipe: str, dataset: str, message: str
) -> None:
    ds = data[dataset]
    manifest_only = LocalDataset.from_manifest("/nonexistent", ds.to_manifest())
    with pytest.raises(DatasetMismatch, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_recipe(recipe).check_dataset(manifest_only)


def test_classifier_needs_two_classes_and_both_splits(tmp_path: Path) -> None:
    (tmp_path / "one" / "dress").mkdir(parents=True)
    samples.write("garments", tmp_path / "all", count=10)
    for p in sorted((tmp_path / "all" / "dress").iterdir()):
        p.rename(tmp_path / "one" / "dress" / p.name)
    single = LocalDataset.from_folder(tmp_path / "one")
    with pytest.raises(DatasetMismatch, match=r"at least 2 classes .* found 1: dress"):
        get_recipe("image-classifier").check_dataset(single)
    no_validation = LocalDataset.from_folder(tmp_path / "all", validation_ratio=0.0)
    with pytest.raises(DatasetMismatch, match="the validation split has none"):
        get_recipe("image-classifier").check_dataset(no_validation)


def test_tabular_target_is_checked_against_the_columns(data: dict[str, LocalDataset]) -> None:
    with pytest.raises(DatasetMismatch, match="target column 'refund' is not in the table"):
        prepare("tabular", {"target": "refund"}, data["tabular"])


# -- LocalDataset ------------------------------------------------------------------------------


def test_from_folder_labels_by_class_folder_and_splits_deterministically(
    data: dict[str, LocalDataset],
) -> None:
    ds = data["garments"]
    assert ds.kind == "images"
    assert ds.labels() == ["dress", "jacket", "shirt", "skirt", "trousers"]
    assert all(f.kind == "image" and f.label == f.path.split("/")[0] for f in ds.files)
    again = LocalDataset.from_folder(ds.root)
    assert again.files == ds.files
    assert {f.split for f in ds.files} == {"train", "validation"}
    assert all(f.split == file_split(0, f.path, 0.2) for f in ds.files)  # the platform's rule
    other_seed = LocalDataset.from_folder(ds.root, seed=7)
    assert [f.split for f in other_seed.files] != [f.split for f in ds.files]
    assert other_seed.split.seed == 7 and other_seed.split.unit == "file"


def test_dataset_kinds_and_table_schema(data: dict[str, LocalDataset]) -> None:
    assert data["text"].kind == "mixed"
    assert {f.kind for f in data["text"].files} == {"text", "jsonl"}
    tab = data["tabular"]
    assert tab.kind == "table" and tab.split.unit == "row"
    assert {"name": "returned", "dtype": "str"} in tab.schema["columns"]
    manifest = json.loads(json.dumps(tab.to_manifest()))
    assert LocalDataset.from_manifest(tab.root, manifest) == tab


# -- LocalRunContext ---------------------------------------------------------------------------


def test_checkpoints_are_written_whole_and_the_last_few_kept(tmp_path: Path) -> None:
    ctx = LocalRunContext(tmp_path, keep_checkpoints=2)
    assert ctx.load_checkpoint() is None
    for epoch in range(1, 5):
        ctx.save_checkpoint({"epoch": epoch, "w": torch.full((2,), float(epoch))})
    names_left = sorted(p.name for p in ctx.checkpoint_dir.iterdir())
    assert names_left == ["ckpt-000003.pt", "ckpt-000004.pt"]
    state = LocalRunContext(tmp_path).load_checkpoint()
    assert state is not None and state["epoch"] == 4
    assert torch.equal(state["w"], torch.full((2,), 4.0))


def test_metrics_log_and_stop(tmp_path: Path) -> None:
    stop = threading.Event()
    ctx = LocalRunContext(tmp_path, stop=stop)
    ctx.log_metrics(10, {"loss": 1.5}, epoch=1)
    ctx.log("hello")
    ctx.progress(1, 10, 100)
    assert ctx.metrics()[0]["loss"] == 1.5 and ctx.metrics()[0]["epoch"] == 1
    assert "hello" in ctx.log_path.read_text()
    assert ctx.last_progress == (1, 10, 100)
    assert not ctx.should_stop()
    stop.set()
    assert ctx.should_stop()
    assert LocalRunContext(tmp_path / "t", timeout_s=0.0).should_stop()


def test_a_model_folder_of_another_recipe_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"recipe": "tabular"}))
    with pytest.raises(ModelMismatch, match="holds a 'tabular' model, not a 'image-classifier'"):
        get_recipe("image-classifier").load(tmp_path)
    with pytest.raises(ModelMismatch, match=r"no config\.json"):
        get_recipe("tabular").load(tmp_path / "missing")


# -- the plain-Python runner -------------------------------------------------------------------


def test_runner_trains_and_evaluates_as_a_plain_process(
    data: dict[str, LocalDataset], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--recipe", "tabular", "--data", str(data["tabular"].root), "--out", str(tmp_path)]
    code = run_main([*argv, "--param", "target=returned", "--param", "max_iter=20", "--quiet"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["recipe"] == "tabular"
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert Path(result["model_dir"], "model.joblib").is_file()
    assert json.loads((tmp_path / "artifacts" / "result.json").read_text()) == result


def test_runner_refuses_with_exit_2_and_a_message(
    data: dict[str, LocalDataset], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--recipe", "tabular", "--data", str(data["garments"].root), "--out", str(tmp_path)]
    assert run_main([*argv, "--param", "target=x", "--quiet"]) == 2
    assert "tabular needs CSV files" in capsys.readouterr().err
    argv[1] = "nope"
    assert run_main(argv) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
