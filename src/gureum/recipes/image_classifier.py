"""image-classifier: a small CNN over a folder-per-class image dataset.

Evaluation reports accuracy, macro F1, per-class precision and recall and the confusion
matrix; prediction takes images (bytes or base64) and returns the label with its scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gureum.recipes.base import (
    DatasetMismatch,
    EvalOutput,
    ModelConfig,
    RecipeBase,
    RunContext,
    TrainOutput,
    export_files,
)
from gureum.recipes.dataset import LocalDataset
from gureum.recipes.images import decode_input, load_split
from gureum.recipes.metrics import classification_report
from gureum.recipes.nets import SmallCNN
from gureum.recipes.params import IMAGE_CLASSIFIER as NAME
from gureum.recipes.params import ClassifierParams, check_classifier_dataset
from gureum.recipes.specs import SPECS
from gureum.recipes.training import (
    WEIGHTS_FILE,
    batched,
    epoch_order,
    fit,
    is_main,
    load_weights,
    resolve_device,
    save_weights,
    seed_everything,
    steps_in,
)

EVAL_BATCH = 256


def _model(info: dict[str, Any], params: dict[str, Any]) -> SmallCNN:
    return SmallCNN(len(info["classes"]), width=int(params["width"]), dropout=0.0)


def train_classifier(
    ctx: RunContext,
    x: torch.Tensor,
    y: torch.Tensor,
    n_classes: int,
    params: ClassifierParams,
    validation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[SmallCNN, dict[str, float], int, int | None]:
    """The training loop on tensors already in memory; the image generator reuses it to
    train the feature extractor its sample-quality metric needs."""
    device = torch.device(ctx.device)
    model = SmallCNN(n_classes, width=params.width, dropout=params.dropout).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)

    def batches(epoch: int) -> Any:
        for idx in batched(epoch_order(len(x), params.seed, epoch), params.batch_size):
            yield x[idx].to(device), y[idx].to(device)

    def step(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        xb, yb = batch
        logits = m(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        acc = (logits.argmax(1) == yb).float().mean()
        return {"loss": loss.item(), "accuracy": acc.item(), "samples": len(yb)}

    def validate(m: nn.Module) -> dict[str, float]:
        assert validation is not None
        vx, vy = validation
        logits = torch.cat(
            [m(vx[i : i + EVAL_BATCH].to(device)) for i in range(0, len(vx), EVAL_BATCH)]
        )
        vy = vy.to(device)
        return {
            "val_loss": float(F.cross_entropy(logits, vy)),
            "val_accuracy": float((logits.argmax(1) == vy).float().mean()),
        }

    result = fit(
        ctx,
        model,
        opt,
        epochs=params.epochs,
        steps_per_epoch=steps_in(len(x), params.batch_size),
        batches=batches,
        step=step,
        validate=validate if validation is not None and len(validation[0]) else None,
    )
    return model, result.metrics, result.epochs_run, result.resumed_from_epoch


@torch.no_grad()
def scores(model: SmallCNN, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    model.eval()
    chunks = [model(x[i : i + EVAL_BATCH].to(device)) for i in range(0, len(x), EVAL_BATCH)]
    return torch.cat(chunks).softmax(1).cpu() if chunks else torch.zeros((0, 0))


class ClassifierPredictor:
    def __init__(self, model: SmallCNN, classes: list[str], size: int, device: torch.device):
        self.model, self.classes, self.size, self.device = model, classes, size, device

    def predict(self, inputs: list[Any]) -> list[Any]:
        if not inputs:
            return []
        x = torch.stack([decode_input(item, self.size) for item in inputs])
        out = []
        for row in scores(self.model, x, self.device).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                {
                    "label": self.classes[best],
                    "confidence": row[best],
                    "scores": dict(zip(self.classes, row, strict=True)),
                }
            )
        return out


class ImageClassifier(RecipeBase):
    name = NAME
    description = SPECS[NAME].description
    Params = ClassifierParams

    def check_dataset(self, ds: LocalDataset, params: ClassifierParams | None = None) -> None:
        check_classifier_dataset(ds, params)

    def train(self, ctx: RunContext, ds: LocalDataset, params: ClassifierParams) -> TrainOutput:
        self.check_dataset(ds, params)
        seed_everything(params.seed)
        resolve_device(ctx.device)
        classes = ds.labels()
        x, y = load_split(ds, ds.select("image", "train"), params.image_size, classes)
        val = load_split(ds, ds.select("image", "validation"), params.image_size, classes)
        ctx.log(
            f"{NAME}: {len(x)} training and {len(val[0])} validation images, {len(classes)} classes"
        )
        model, metrics, epochs_run, resumed = train_classifier(ctx, x, y, len(classes), params, val)
        model_dir = ctx.artifacts_dir / "model"
        if is_main():
            save_weights(model, model_dir)
            ModelConfig(
                NAME, params.model_dump(), {"classes": classes, "image_size": params.image_size}
            ).write(model_dir)
        return TrainOutput(model_dir, metrics, epochs_run, resumed)

    def _load(self, model_dir: Path, device: str) -> tuple[SmallCNN, ModelConfig, torch.device]:
        cfg = ModelConfig.read(model_dir, NAME)
        dev = resolve_device(device)
        model = load_weights(_model(cfg.info, cfg.params), model_dir, dev)
        assert isinstance(model, SmallCNN)
        return model, cfg, dev

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        model, cfg, dev = self._load(model_dir, ctx.device)
        classes: list[str] = cfg.info["classes"]
        files = [f for f in ds.select("image", "validation") if f.label in classes]
        skipped = len(ds.select("image", "validation")) - len(files)
        if not files:
            raise DatasetMismatch(
                f"{NAME}: no validation images of the model's classes ({', '.join(classes)})"
            )
        if skipped:
            ctx.log(f"skipping {skipped} validation images of classes the model does not know")
        x, y = load_split(ds, files, int(cfg.info["image_size"]), classes)
        pred = scores(model, x, dev).argmax(1).tolist()
        metrics, details = classification_report(y.tolist(), pred, classes)
        details["skipped"] = skipped
        report = ctx.artifacts_dir / "evaluation.json"
        report.write_text(json.dumps({"metrics": metrics, **details}, indent=2))
        ctx.log(f"{NAME}: accuracy {metrics['accuracy']:.3f} on {len(files)} validation images")
        return EvalOutput(metrics, details, [report])

    def load(self, model_dir: Path, device: str = "cpu") -> ClassifierPredictor:
        model, cfg, dev = self._load(model_dir, device)
        return ClassifierPredictor(
            model, list(cfg.info["classes"]), int(cfg.info["image_size"]), dev
        )

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        ModelConfig.read(model_dir, NAME)
        return export_files(model_dir, dest, [WEIGHTS_FILE, "config.json"])
