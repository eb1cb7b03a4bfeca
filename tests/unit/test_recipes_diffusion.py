"""image-diffusion in-process (issue 15): a tiny UNet trains, checkpoints and resumes from its
step with its EMA, samples with guidance, batches equal step counts, keeps to its time budget
and refuses out-of-range requests with the limits."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from gureum import samples
from gureum.recipes import InvalidParams, LocalDataset, LocalRunContext, get_recipe, prepare
from gureum.recipes.base import BadInput, OverBudget, parse_params
from gureum.recipes.diffusion_nets import Diffusion, generate, min_snr_weight, scheduler_config
from gureum.recipes.image_diffusion import DiffusionPredictor, ImageDiffusion, _val_loss
from gureum.recipes.images import load_split
from gureum.serving.deployment import ModelServer

NAME = "image-diffusion"
# Only what keeps a CPU run to seconds: a 16x16 UNet of width 8, a few sampling steps.
TINY: dict[str, Any] = {
    "image_size": 16,
    "width": 8,
    "batch_size": 8,
    "lr": 0.005,
    "sample_steps": 3,
    "samples_per_class": 2,
    "grid_every": 1,
    "time_budget_s": 30,
}


@pytest.fixture(scope="module")
def garments(tmp_path_factory: pytest.TempPathFactory) -> LocalDataset:
    root = tmp_path_factory.mktemp("garments")
    samples.write("garments", root, count=48)
    return LocalDataset.from_folder(root)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, garments: LocalDataset
) -> tuple[LocalRunContext, Path]:
    """Two epochs, then a third in the same run folder: resumed from the checkpoint."""
    ctx = LocalRunContext(tmp_path_factory.mktemp("run"))
    recipe = get_recipe(NAME)
    recipe.train(ctx, garments, parse_params(NAME, recipe.Params, {**TINY, "epochs": 2}))
    out = recipe.train(ctx, garments, parse_params(NAME, recipe.Params, {**TINY, "epochs": 3}))
    assert (out.resumed_from_epoch, out.epochs_run) == (2, 1)
    return ctx, out.model_dir


@pytest.fixture(scope="module")
def predictor(trained: tuple[LocalRunContext, Path]) -> DiffusionPredictor:
    return ImageDiffusion().load(trained[1])


def _pixels(text: str) -> np.ndarray[Any, Any]:
    raw = base64.b64decode(text)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.int16)


def test_resumed_training_continues_from_the_step_with_the_ema(
    trained: tuple[LocalRunContext, Path], garments: LocalDataset
) -> None:
    ctx, model_dir = trained
    steps_per_epoch = -(-len(garments.select("image", "train")) // TINY["batch_size"])
    epochs = [r for r in ctx.metrics() if "train_loss" in r]
    assert [(r["epoch"], r["step"]) for r in epochs] == [
        (e, e * steps_per_epoch) for e in (1, 2, 3)
    ]
    assert "resuming from checkpoint: epoch 2 of 3 done" in ctx.log_path.read_text()
    checkpoint = ctx.load_checkpoint()
    assert checkpoint is not None and checkpoint["step"] == 3 * steps_per_epoch
    # The EMA rides in the checkpoint: its step count went on across the restart.
    assert int(checkpoint["model"]["ema_steps"]) == 3 * steps_per_epoch
    weights = load_file(str(model_dir / "model.safetensors"))
    ema = {k for k in weights if k.startswith("ema_net.")}
    assert ema and {k.replace("ema_net.", "net.", 1) for k in ema} <= set(weights)
    moved = [k for k in ema if not torch.equal(weights[k], weights[k.replace("ema_", "", 1)])]
    assert moved, "the EMA weights are a copy of the raw weights"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["recipe"] == NAME and config["classes"] == garments.labels()


def test_sample_grids_per_class_land_in_the_artifacts_as_it_trains(
    trained: tuple[LocalRunContext, Path], garments: LocalDataset
) -> None:
    ctx, _ = trained
    folder = ctx.artifacts_dir / "samples"
    grids = sorted(p.name for p in folder.glob("epoch-*.png"))
    assert grids == ["epoch-0001.png", "epoch-0002.png", "epoch-0003.png"]
    with Image.open(folder / "epoch-0003.png") as img:
        cols, rows = TINY["samples_per_class"], len(garments.labels())
        assert img.size == (2 * (cols * 18 + 2), 2 * (rows * 18 + 2))  # 16 px + 2 px padding


def test_training_beats_the_untrained_model_on_held_out_loss(
    trained: tuple[LocalRunContext, Path], garments: LocalDataset
) -> None:
    model, _, dev = ImageDiffusion()._load(trained[1], "cpu")
    classes = garments.labels()
    vx, vy = load_split(garments, garments.select("image", "validation"), 16, classes)
    torch.manual_seed(0)
    untrained = Diffusion(
        len(classes), parse_params(NAME, ImageDiffusion.Params, TINY).model_dump()
    )
    assert _val_loss(model, vx, vy, dev) < 0.8 * _val_loss(untrained, vx, vy, dev)


def test_guided_samples_are_count_pngs_of_the_model_size_repeatable_by_seed(
    predictor: DiffusionPredictor,
) -> None:
    out = predictor.predict(
        [
            {"class": "dress", "count": 3, "seed": 7, "guidance": 3.0},
            {"class": "dress", "count": 3, "seed": 7, "guidance": 3.0},
            {"class": "dress", "count": 3, "seed": 8, "guidance": 3.0},
            {"class": "dress", "count": 3, "seed": 7, "guidance": 0.0},
        ]
    )
    assert [len(o["images"]) for o in out] == [3, 3, 3, 3]
    first = [_pixels(t) for t in out[0]["images"]]
    assert {a.shape for a in first} == {(16, 16, 3)}
    assert (out[0]["class"], out[0]["format"], out[0]["steps"]) == ("dress", "png", 3)
    assert out[0]["images"] == out[1]["images"]  # the same seed: the same pictures
    assert out[0]["images"] != out[2]["images"]  # another seed
    assert out[0]["images"] != out[3]["images"]  # unguided


def test_inputs_with_equal_steps_share_one_denoising_loop(predictor: DiffusionPredictor) -> None:
    calls: list[int] = []
    hook = predictor.model.ema_net.register_forward_hook(
        lambda m, args, out: calls.append(len(args[0]))
    )
    inputs = [
        {"class": "dress", "seed": 1, "steps": 4, "count": 2},
        {"class": "skirt", "seed": 2, "steps": 6},
        {"class": "skirt", "seed": 3, "steps": 4, "guidance": 1.0},
    ]
    try:
        together = predictor.predict(inputs)
        assert len(calls) == 4 + 6  # one loop of 4 steps for 3 pictures, one of 6 for 1
        assert calls[:4] == [2 * 3] * 4  # guided (scale 2 and 1 mixed): both halves at once
        calls.clear()
        alone = [predictor.predict([item])[0] for item in inputs]
        assert len(calls) == 4 + 6 + 4
    finally:
        hook.remove()
    for a, b in zip(together, alone, strict=True):
        assert len(a["images"]) == len(b["images"])
        for x, y in zip(a["images"], b["images"], strict=True):
            assert np.abs(_pixels(x) - _pixels(y)).max() <= 2  # float noise of batch shape


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"class": "dress", "steps": 0}, '"steps" must be an integer from 1 to 100 (got 0)'),
        ({"class": "dress", "steps": 101}, '"steps" must be an integer from 1 to 100'),
        ({"class": "dress", "guidance": 10.5}, '"guidance" must be a number from 0 to 10'),
        ({"class": "dress", "guidance": -1}, '"guidance" must be a number from 0 to 10'),
        ({"class": "dress", "count": 65}, '"count" must be an integer from 1 to 64'),
        ({"class": "dress", "size": 64}, '"size" must be 16: this model generates 16x16'),
        ({"class": "dress", "sampler": "euler"}, '"sampler" must be one of ddim, dpm-solver'),
        ({"class": "dress", "time_budget_s": 31}, '"time_budget_s" must be a number of seconds'),
        ({"class": "coat"}, "unknown class 'coat'; the model knows: dress"),
        ({"count": 2}, '"class" is required; one of: dress'),
        ({"prompt": "a dress"}, '"prompt" needs a model trained with conditioning=caption'),
    ],
)
def test_out_of_range_requests_are_refused_with_the_limits(
    predictor: DiffusionPredictor, item: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput) as err:
        predictor.predict([{"class": "dress"}, item])
    assert message in str(err.value)


def test_a_generation_past_its_budget_stops_with_a_clear_error(
    predictor: DiffusionPredictor,
) -> None:
    with pytest.raises(OverBudget, match="ran past its time budget after 0 of 100 denoising"):
        predictor.predict([{"class": "dress", "steps": 100, "time_budget_s": 1e-9}])


def _replica(predictor: DiffusionPredictor) -> ModelServer:
    """The model server's request path without Ray (no batching: max_batch_size 1)."""
    s = ModelServer.__new__(ModelServer)
    model = SimpleNamespace(recipe=NAME, label="m:1")
    s._core = SimpleNamespace(  # type: ignore[assignment]
        predictor=predictor, model=model, in_flight=0, unit="image", batch_sizes={1: 0}
    )
    s.traffic = SimpleNamespace(max_batch_size=1)  # type: ignore[assignment]
    s._predict_ms = float("inf")
    return s


def test_the_replica_answers_504_unbilled_over_budget_and_422_with_limits(
    predictor: DiffusionPredictor,
) -> None:
    s = _replica(predictor)

    def serve(inputs: list[Any]) -> Any:
        body = json.dumps({"inputs": inputs}).encode()
        return asyncio.run(s._serve("predict", body, "application/json"))

    slow = serve([{"class": "dress", "steps": 50, "time_budget_s": 1e-9}])
    error = json.loads(slow.body)["error"]
    assert (slow.status, error["code"], slow.units) == (504, "generation_timeout", 0.0)
    assert "time budget" in error["message"] and "not billed" in error["message"]
    bad = serve([{"class": "dress", "guidance": 99}])
    error = json.loads(bad.body)["error"]
    assert (bad.status, error["code"]) == (422, "bad_input")
    assert '"guidance" must be a number from 0 to 10 (got 99)' in error["message"]
    ok = serve([{"class": "dress", "count": 2, "steps": 2}, {"class": "skirt", "steps": 2}])
    assert ok.status == 200 and ok.units == 3.0
    assert [len(o["images"]) for o in json.loads(ok.body)["outputs"]] == [2, 1]


def test_bad_training_parameters_are_refused(garments: LocalDataset) -> None:
    with pytest.raises(InvalidParams, match="parameter 'image_size': Input should be a multiple"):
        prepare(NAME, {"image_size": "40"}, garments)
    with pytest.raises(InvalidParams, match="parameter 'sampler': Input should be 'ddim'"):
        prepare(NAME, {"sampler": "euler"}, garments)
    with pytest.raises(InvalidParams, match="parameter 'guidance': Input should be less"):
        prepare(NAME, {"guidance": "11"}, garments)
    with pytest.raises(InvalidParams, match="parameter 'snr_gamma': Input should be greater"):
        prepare(NAME, {"snr_gamma": "-1"}, garments)
    _, params = prepare(NAME, {"image_size": "64", "sample_steps": "10"}, garments)
    assert params.model_dump()["image_size"] == 64


def test_evaluation_reports_the_image_generator_metrics_and_exports_a_diffusers_folder(
    trained: tuple[LocalRunContext, Path], garments: LocalDataset, tmp_path: Path
) -> None:
    ctx, model_dir = trained
    result = ImageDiffusion().evaluate(ctx, model_dir, garments)
    assert {"mmd", "mmd_std", "mmd_reference", "class_accuracy", "val_loss"} <= set(result.metrics)
    assert 0.0 <= result.metrics["class_accuracy"] <= 1.0
    assert result.details["generated_pictures"] == 2 * result.details["validation_pictures"]
    assert result.details["sampling"] == {"sampler": "dpm-solver", "steps": 3, "guidance": 2.0}
    names = {p.name for p in result.artifacts}
    assert {"all.png", "dress.png", "skirt.png", "evaluation.json"} <= names
    files = ImageDiffusion().export(model_dir, tmp_path / "out")
    assert (tmp_path / "out" / "unet" / "config.json") in files
    unet = json.loads((tmp_path / "out" / "unet" / "config.json").read_text())
    assert (
        unet["_class_name"] == "UNet2DModel" and unet["num_class_embeds"] == 6
    )  # 5 classes and "no class"


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver"])
def test_sampling_with_an_exact_denoiser_lands_on_the_data(prediction: str, sampler: str) -> None:
    """The sampling loop alone (schedulers, guidance, scaling), with the exact noise predictor
    of a one-picture data set in place of a trained UNet: any step count recovers the picture,
    so what a trained model draws is down to the model."""
    params = parse_params(NAME, ImageDiffusion.Params, {**TINY, "prediction": prediction})
    config = scheduler_config(params.model_dump())
    alphas = DDPMScheduler(**config).alphas_cumprod
    picture = torch.rand(1, 3, 16, 16) * 2 - 1

    def exact(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor) -> Any:
        a = alphas[int(t)]
        eps = (x - a.sqrt() * picture) / (1 - a).sqrt()
        v = a.sqrt() * eps - (1 - a).sqrt() * picture
        return SimpleNamespace(sample=eps if prediction == "epsilon" else v)

    for steps in (3, 20):
        out = generate(
            exact,
            config,
            labels=torch.zeros(4, dtype=torch.long),
            noise=torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(steps)),
            guidance=torch.tensor([0.0, 1.0, 2.0, 7.5]),
            null_class=5,
            steps=steps,
            sampler=sampler,
        )
        assert (out - (picture + 1) / 2).abs().max() < 1e-4


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weighting_caps_the_easy_noise_levels_and_zero_is_the_plain_loss(
    prediction: str,
) -> None:
    """min-SNR-gamma: the weight is min(SNR, gamma) / SNR (epsilon) or / (SNR + 1) (v), so
    nearly clean levels (SNR far over gamma) weigh little and noisy ones keep their loss; with
    ``snr_gamma=0`` (and in ``val_loss``) the loss is the plain mean squared error."""
    params = {**TINY, "prediction": prediction}
    weighted = Diffusion(5, parse_params(NAME, ImageDiffusion.Params, params).model_dump())
    assert weighted.snr_gamma == 5.0  # the default
    abar = weighted.noise.alphas_cumprod
    t = torch.tensor([0, 500, 999])
    snr = abar[t] / (1 - abar[t])
    assert snr[0] > 1000 and snr[1] < 5  # the cosine schedule's clean and noisy ends
    w = min_snr_weight(weighted.noise, t, 5.0, prediction == "v_prediction")
    denom = snr + 1 if prediction == "v_prediction" else snr
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / denom)
    assert w[0] < 0.01 and w[1] > 10 * w[0]
    plain = dict(parse_params(NAME, ImageDiffusion.Params, params).model_dump())
    del plain["snr_gamma"]  # a model saved before the option: trained with the plain loss
    unweighted = Diffusion(5, plain)
    assert unweighted.snr_gamma == 0.0
    unweighted.net.load_state_dict(weighted.net.state_dict())
    x, y = torch.rand(6, 3, 16, 16), torch.arange(6) % 5
    losses = []
    for model, kwargs in ((weighted, {}), (weighted, {"weighted": False}), (unweighted, {})):
        torch.manual_seed(3)
        with torch.no_grad():
            losses.append(float(model.loss(model.net, x, y, **kwargs)))
    assert losses[1] == pytest.approx(losses[2]) and losses[0] != pytest.approx(losses[1])
