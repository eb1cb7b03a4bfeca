"""image-classifier and image-generator on the garment samples, on a budget of seconds: train,
evaluate, predict, export, resume after a crash, stop when asked."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gureum import samples
from gureum.recipes import (
    BadInput,
    Cancelled,
    LocalDataset,
    LocalRunContext,
    get_recipe,
    train_and_evaluate,
)

CLASSES = ["dress", "jacket", "shirt", "skirt", "trousers"]
FAST_CLASSIFIER = {"epochs": 2, "image_size": 16, "width": 8, "batch_size": 16}
FAST_GENERATOR = {"epochs": 2, "image_size": 16, "width": 8, "latent": 8, "samples_per_class": 4}


class WorkerDied(Exception):
    """Stands in for a killed process: raised right after a checkpoint is on disk."""


class DiesAfterEpoch(LocalRunContext):
    def __init__(self, root: Path, epoch: int) -> None:
        super().__init__(root)
        self.die_after = epoch

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        super().save_checkpoint(state)
        if state["epoch"] == self.die_after:
            raise WorkerDied


@pytest.fixture(scope="module")
def garments(tmp_path_factory: pytest.TempPathFactory) -> LocalDataset:
    root = tmp_path_factory.mktemp("garments")
    samples.write("garments", root, count=100)
    return LocalDataset.from_folder(root)


@pytest.fixture(scope="module")
def classifier_run(
    garments: LocalDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LocalRunContext, Any]:
    ctx = LocalRunContext(tmp_path_factory.mktemp("classifier"))
    return ctx, train_and_evaluate(ctx, "image-classifier", FAST_CLASSIFIER, garments)


@pytest.fixture(scope="module")
def generator_run(
    garments: LocalDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LocalRunContext, Any]:
    ctx = LocalRunContext(tmp_path_factory.mktemp("generator"))
    return ctx, train_and_evaluate(ctx, "image-generator", FAST_GENERATOR, garments)


def png_of(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


# -- image-classifier --------------------------------------------------------------------------


def test_classifier_trains_logs_and_reports_per_class_metrics(
    classifier_run: tuple[LocalRunContext, Any],
) -> None:
    ctx, result = classifier_run
    epochs = [m for m in ctx.metrics() if "val_accuracy" in m]
    assert [m["epoch"] for m in epochs] == [1, 2]
    assert all(m["throughput"] > 0 for m in epochs)
    assert ctx.last_progress is not None and ctx.last_progress[1] == ctx.last_progress[2]
    m = result.evaluation.metrics
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["f1_macro"] <= 1.0
    assert {f"precision/{c}" for c in CLASSES} <= m.keys()
    assert {f"recall/{c}" for c in CLASSES} <= m.keys()
    details = result.evaluation.details
    matrix = details["confusion_matrix"]
    assert details["classes"] == CLASSES and len(matrix) == 5
    assert sum(map(sum, matrix)) == details["samples"] > 0
    report = json.loads((ctx.artifacts_dir / "evaluation.json").read_text())
    assert report["metrics"]["accuracy"] == m["accuracy"]
    config = json.loads((result.train.model_dir / "config.json").read_text())
    assert config["recipe"] == "image-classifier" and config["classes"] == CLASSES


def test_classifier_predicts_labels_from_image_bytes_or_base64(
    classifier_run: tuple[LocalRunContext, Any], garments: LocalDataset
) -> None:
    _, result = classifier_run
    recipe = get_recipe("image-classifier")
    picture = garments.path(garments.select("image", "validation")[0])
    out = recipe.predict(
        result.train.model_dir, [picture.read_bytes(), png_of(picture), {"image": png_of(picture)}]
    )
    assert len(out) == 3 and out[0]["label"] in CLASSES
    assert out[0] == out[1] == out[2]
    assert sum(out[0]["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert out[0]["confidence"] == max(out[0]["scores"].values())
    with pytest.raises(BadInput, match="not a readable image"):
        recipe.predict(result.train.model_dir, [b"not a picture"])
    with pytest.raises(BadInput, match="base64"):
        recipe.predict(result.train.model_dir, ["%%%"])


def test_classifier_exports_safetensors_and_config(
    classifier_run: tuple[LocalRunContext, Any], tmp_path: Path
) -> None:
    _, result = classifier_run
    files = get_recipe("image-classifier").export(result.train.model_dir, tmp_path)
    assert sorted(p.name for p in files) == ["config.json", "model.safetensors"]
    exported, trained = weights(tmp_path), weights(result.train.model_dir)
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k]) for k in trained)


def test_a_killed_worker_resumes_from_its_checkpoint_not_from_scratch(
    garments: LocalDataset, tmp_path: Path
) -> None:
    recipe = get_recipe("image-classifier")
    params = recipe.Params(**{**FAST_CLASSIFIER, "epochs": 3})
    with pytest.raises(WorkerDied):
        recipe.train(DiesAfterEpoch(tmp_path / "run", 1), garments, params)

    retry = LocalRunContext(tmp_path / "run")
    out = recipe.train(retry, garments, params)
    assert out.resumed_from_epoch == 1 and out.epochs_run == 2
    assert "resuming from checkpoint: epoch 1 of 3 done" in retry.log_path.read_text()
    assert "starting epoch 2" in retry.log_path.read_text()
    assert [m["epoch"] for m in retry.metrics() if "val_accuracy" in m] == [1, 2, 3]

    # Same seed, same data order per epoch, restored RNG: as if it had never died.
    straight = recipe.train(LocalRunContext(tmp_path / "straight"), garments, params)
    resumed_w, straight_w = weights(out.model_dir), weights(straight.model_dir)
    assert all(torch.allclose(resumed_w[k], straight_w[k], atol=1e-6) for k in straight_w)


def test_a_stop_request_ends_training_and_keeps_the_last_checkpoint(
    garments: LocalDataset, tmp_path: Path
) -> None:
    recipe = get_recipe("image-classifier")
    stop = threading.Event()

    def stop_in_epoch_two(epoch: int, step: int, total: int) -> None:
        if epoch == 2:
            stop.set()

    ctx = LocalRunContext(tmp_path, stop=stop, on_progress=stop_in_epoch_two)
    with pytest.raises(Cancelled, match="epoch 2"):
        recipe.train(ctx, garments, recipe.Params(**{**FAST_CLASSIFIER, "epochs": 5}))
    state = ctx.load_checkpoint()
    assert state is not None and state["epoch"] == 1
    assert "stop requested during epoch 2" in ctx.log_path.read_text()


# -- image-generator ---------------------------------------------------------------------------


def test_generator_reports_sample_quality_against_the_held_out_split(
    generator_run: tuple[LocalRunContext, Any],
) -> None:
    ctx, result = generator_run
    m = result.evaluation.metrics
    assert {"mmd", "mmd_reference", "class_accuracy", "val_loss", "bits_per_dim"} <= m.keys()
    assert m["val_loss"] > 0 and 0.0 <= m["class_accuracy"] <= 1.0
    # Real pictures are closer to the held-out ones than two epochs of a VAE get.
    assert m["mmd_reference"] < m["mmd"]
    losses = [r["val_loss"] for r in ctx.metrics() if "val_loss" in r]
    assert len(losses) == 2 and losses[1] < losses[0]


def test_generator_writes_a_png_grid_of_samples_per_class(
    generator_run: tuple[LocalRunContext, Any],
) -> None:
    ctx, result = generator_run
    folder = ctx.artifacts_dir / "samples"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["all.png", *(f"{c}.png" for c in CLASSES)]
    )
    assert {str(folder / "dress.png"), str(folder / "all.png")} <= {
        str(p) for p in result.evaluation.artifacts
    }
    with Image.open(folder / "all.png") as sheet:
        assert sheet.format == "PNG" and sheet.height > sheet.width  # 5 rows of 4 samples


def test_generator_predicts_repeatable_pictures_of_the_asked_class(
    generator_run: tuple[LocalRunContext, Any],
) -> None:
    _, result = generator_run
    predictor = get_recipe("image-generator").load(result.train.model_dir)
    first = predictor.predict([{"class": "dress", "seed": 3, "count": 4}])[0]
    assert first["class"] == "dress" and first["format"] == "png" and len(first["images"]) == 4
    with Image.open(io.BytesIO(base64.b64decode(first["images"][0]))) as img:
        assert img.size == (16, 16) and img.mode == "RGB"
    again = predictor.predict([{"class": "dress", "seed": 3, "count": 4}])[0]
    other = predictor.predict([{"class": "dress", "seed": 4, "count": 4}])[0]
    assert again["images"] == first["images"] and other["images"] != first["images"]
    with pytest.raises(BadInput, match="unknown class 'hat'; the model knows: dress"):
        predictor.predict([{"class": "hat"}])
    with pytest.raises(BadInput, match="count"):
        predictor.predict([{"class": "dress", "count": 1000}])


def test_generator_resumes_and_exports(garments: LocalDataset, tmp_path: Path) -> None:
    recipe = get_recipe("image-generator")
    params = recipe.Params(**{**FAST_GENERATOR, "epochs": 2})
    with pytest.raises(WorkerDied):
        recipe.train(DiesAfterEpoch(tmp_path / "run", 1), garments, params)
    out = recipe.train(LocalRunContext(tmp_path / "run"), garments, params)
    assert out.resumed_from_epoch == 1 and out.epochs_run == 1
    files = recipe.export(out.model_dir, tmp_path / "export")
    assert sorted(p.name for p in files) == ["config.json", "model.safetensors"]
    assert "decoder.4.weight" in weights(tmp_path / "export")
