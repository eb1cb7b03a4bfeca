"""image-lora: LoRA fine-tuning (peft) of a Stable-Diffusion-format base on captioned pictures.

The base is a diffusers folder of the job's own workspace registry (``gureum models import``,
safetensors only), materialised by the platform; a parameter never names a path. Only the
UNet's attention projections get adapters; the VAE and text encoder stay frozen, so latents and
caption embeddings are computed once. The model folder holds the adapter (safetensors), a
``config.json`` that names the base as a registry reference (lineage, as the text-generator's
LoRA does) and the base's files in ``base/`` (hard links; the store keeps them once by content).

Served: ``{"prompt": "a red checked dress", "seed": 1, "steps": 25, "guidance": 5, "width":
32, "height": 32}`` -> base64 PNGs, billed per image. Inputs with the same steps, guidance and
size are denoised together, across the requests a replica batches; a prompt over the text
encoder's length is cut and the output says ``truncated``; a generation past its time budget
stops with ``OverBudget`` (504, not billed). An imported diffusers folder is served the same
way, without an adapter.
"""

from __future__ import annotations

import base64
import json
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ValidationError
from torch import nn

from gureum.recipes.base import (
    BadInput,
    EvalOutput,
    ModelConfig,
    ModelMismatch,
    OverBudget,
    RecipeBase,
    RecipeError,
    RunContext,
    TrainOutput,
    evaluation_report,
)
from gureum.recipes.dataset import DataFile, LocalDataset
from gureum.recipes.hf_lora import link_folder
from gureum.recipes.image_lora_params import (
    LIMITS,
    MAX_LORA_IMAGES,
    MODEL_INDEX,
    NAME,
    ImageLoraParams,
    TextToImageRequest,
    check_lora_dataset,
    named_base,
)
from gureum.recipes.images import png_bytes, to_tensor
from gureum.recipes.lora_captions import caption_map, captioned
from gureum.recipes.params import BASE_DIR
from gureum.recipes.specs import SPECS
from gureum.recipes.training import batched, epoch_order, fit, is_main, resolve_device

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file, save_file

ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the UNet's attention projections
EVAL_SEED = 1234


@contextmanager
def quiet() -> Iterator[None]:
    """diffusers, transformers and peft warn about configs and deprecations as they load; the
    platform's logs (and pytest's warnings-as-errors) do without them."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings(
                "ignore", category=category, module=r"(diffusers|transformers|peft)\b"
            )
        yield


def load_pipeline(folder: Path, device: torch.device) -> StableDiffusionPipeline:
    """The base pipeline from a diffusers folder: safetensors only, nothing fetched."""
    if not (folder / MODEL_INDEX).is_file():
        raise ModelMismatch(f"{NAME}: the base is not a diffusers folder ({MODEL_INDEX} missing)")
    with quiet():
        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder),
            local_files_only=True,
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return cast(StableDiffusionPipeline, pipe.to(device))


def add_lora(unet: nn.Module, r: int, alpha: int) -> peft.LoraConfig:
    """Adapters on the UNet's attention projections; every base weight frozen."""
    unet.requires_grad_(False)
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS
    )
    with quiet():
        cast(Any, unet).add_adapter(config)
    return config


def save_adapter(unet: nn.Module, config: peft.LoraConfig, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = peft.get_peft_model_state_dict(unet)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, folder / ADAPTER_FILE)
    body = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": TARGETS}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(body, indent=2))
    return folder / ADAPTER_FILE


def load_adapter(unet: nn.Module, folder: Path) -> None:
    body = json.loads((folder / ADAPTER_CONFIG).read_text())
    add_lora(unet, int(body["r"]), int(body["lora_alpha"]))
    result = peft.set_peft_model_state_dict(unet, load_file(folder / ADAPTER_FILE))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ModelMismatch(f"{NAME}: the adapter does not fit its base ({unexpected[:3]})")


def _base_folder(ctx: RunContext, ref: str) -> Path:
    """Where the platform materialised the base (``ctx.models``); never a path a user named."""
    models: Mapping[str, Path] = getattr(ctx, "models", None) or {}
    folder = models.get(ref)
    if folder is None:
        raise RecipeError(
            f"{NAME}: base model {ref} was not provided to this run (the platform fetches the "
            f"registry version base_model names; a local run passes models={{{ref!r}: FOLDER}})"
        )
    return Path(folder)


@torch.no_grad()
def _encode(
    pipe: StableDiffusionPipeline, pairs: list[tuple[DataFile, str]], ds: LocalDataset, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (the VAE's means, scaled) and caption embeddings, once: both encoders are frozen."""
    dev = pipe.device
    latents, texts = [], []
    for chunk in batched(list(range(len(pairs))), 16):
        pics = []
        for i in chunk:
            with Image.open(ds.path(pairs[i][0])) as img:
                pics.append(to_tensor(img, size) * 2 - 1)
        dist = pipe.vae.encode(torch.stack(pics).to(dev)).latent_dist
        latents.append(dist.mean * pipe.vae.config.scaling_factor)
        ids = pipe.tokenizer(
            [pairs[i][1] for i in chunk],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        texts.append(pipe.text_encoder(ids.to(dev))[0])
    return torch.cat(latents), torch.cat(texts)


def _loss(
    pipe: StableDiffusionPipeline, unet: nn.Module, lat: torch.Tensor, emb: torch.Tensor
) -> torch.Tensor:
    """DDPM's loss on latents: predict the noise (or v) added at a random step."""
    sched = pipe.scheduler
    noise = torch.randn_like(lat)
    t = torch.randint(0, sched.config.num_train_timesteps, (len(lat),), device=lat.device)
    noisy = sched.add_noise(lat, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=emb).sample
    target = (
        sched.get_velocity(lat, noise, t)
        if sched.config.prediction_type == "v_prediction"
        else noise
    )
    return F.mse_loss(pred.float(), target.float())


@dataclass(frozen=True)
class _Job:
    prompt: str
    negative: str
    count: int
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    budget_s: float
    truncated: bool


def _chunks(picked: list[_Job]) -> list[list[_Job]]:
    """Inputs in runs of at most ``MAX_LORA_IMAGES`` pictures (one input never splits), so a
    batch of many inputs never holds more latents at once than the largest single input."""
    out: list[list[_Job]] = [[]]
    for j in picked:
        if out[-1] and sum(x.count for x in out[-1]) + j.count > MAX_LORA_IMAGES:
            out.append([])
        out[-1].append(j)
    return out


class TextToImagePredictor:
    def __init__(self, pipe: StableDiffusionPipeline, defaults: ImageLoraParams | None) -> None:
        self.pipe = pipe
        self.steps = defaults.sample_steps if defaults else 25
        self.guidance = defaults.guidance if defaults else 5.0
        self.budget_s = defaults.time_budget_s if defaults else 60.0
        native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        self.size = defaults.resolution if defaults else native
        self.max_tokens = int(pipe.tokenizer.model_max_length)

    def _too_long(self, text: str) -> bool:
        return len(self.pipe.tokenizer(text, truncation=False).input_ids) > self.max_tokens

    def check(self, item: Any) -> _Job:
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise BadInput('each input must be a prompt or an object like {"prompt": "..."}')
        try:
            req = TextToImageRequest.model_validate(item)
        except ValidationError as exc:
            raise BadInput.naming_limits(exc, LIMITS, "left out (unknown field)") from None
        budget = self.budget_s if req.time_budget_s is None else req.time_budget_s
        if budget > self.budget_s:
            raise BadInput(
                f'"time_budget_s" must be at most {self.budget_s:g} (this model\'s; got {budget:g})'
            )
        return _Job(
            req.prompt,
            req.negative_prompt,
            req.count,
            req.seed,
            req.steps or self.steps,
            self.guidance if req.guidance is None else req.guidance,
            req.width or self.size,
            req.height or self.size,
            budget,
            self._too_long(req.prompt) or self._too_long(req.negative_prompt),
        )

    def predict(self, inputs: list[Any]) -> list[Any]:
        """Every input checked first (one bad input: nothing runs), then one pipeline call per
        (steps, guidance, width, height) for all the pictures that share them."""
        started = time.monotonic()
        jobs = [self.check(item) for item in inputs]
        groups: dict[tuple[int, float, int, int], list[int]] = {}
        for i, j in enumerate(jobs):
            groups.setdefault((j.steps, j.guidance, j.width, j.height), []).append(i)
        images: dict[int, list[str]] = {}
        for (steps, guidance, width, height), members in groups.items():
            picked = [jobs[i] for i in members]
            out: list[Image.Image] = []
            for chunk in _chunks(picked):  # memory bounded by one largest input's pictures
                out += self._run(chunk, steps, guidance, width, height, started)
            pos = 0
            for i, j in zip(members, picked, strict=True):
                images[i] = [
                    base64.b64encode(png_bytes(p)).decode() for p in out[pos : pos + j.count]
                ]
                pos += j.count
        return [self._output(j, images[i]) for i, j in enumerate(jobs)]

    def _run(
        self, picked: list[_Job], steps: int, guidance: float, w: int, h: int, started: float
    ) -> list[Image.Image]:
        deadline = started + min(j.budget_s for j in picked)

        def on_step(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if time.monotonic() > deadline:
                raise OverBudget(
                    f"the generation ran past its time budget after {i + 1} of {steps} "
                    "denoising steps and was stopped (not billed); ask for fewer steps, "
                    "images or pixels, or a larger time_budget_s"
                )
            return kwargs

        gens = [torch.Generator().manual_seed(j.seed + k) for j in picked for k in range(j.count)]
        with quiet(), torch.no_grad():
            out = self.pipe(
                prompt=[j.prompt for j in picked for _ in range(j.count)],
                negative_prompt=[j.negative for j in picked for _ in range(j.count)],
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=w,
                height=h,
                generator=gens,
                output_type="pil",
                callback_on_step_end=on_step,
            )
        return list(out.images)

    def _output(self, j: _Job, images: list[str]) -> dict[str, Any]:
        warning = (
            f"the prompt is longer than the text encoder's {self.max_tokens} tokens and was "
            "truncated"
            if j.truncated
            else None
        )
        return {
            "prompt": j.prompt,
            "seed": j.seed,
            "steps": j.steps,
            "guidance": j.guidance,
            "width": j.width,
            "height": j.height,
            "truncated": j.truncated,
            "warning": warning,
            "format": "png",
            "images": images,
        }


class ImageLora(RecipeBase):
    name = NAME
    description = SPECS[NAME].description
    Params = ImageLoraParams

    def check_dataset(self, ds: LocalDataset, params: ImageLoraParams | None = None) -> None:
        check_lora_dataset(ds, params)

    def train(self, ctx: RunContext, ds: LocalDataset, params: ImageLoraParams) -> TrainOutput:
        self.check_dataset(ds, params)
        torch.manual_seed(params.seed)
        device = resolve_device(ctx.device)
        base_dir = _base_folder(ctx, params.base_model)
        pipe = load_pipeline(base_dir, device)
        for part in (pipe.vae, pipe.text_encoder, pipe.unet):
            part.requires_grad_(False)
        train = captioned(ds, ds.select("image", "train"))
        held = captioned(ds, ds.select("image", "validation")) or train[: params.batch_size]
        lat, emb = _encode(pipe, train, ds, params.resolution)
        vlat, vemb = _encode(pipe, held, ds, params.resolution)
        by_file = caption_map(ds)
        from_files = sum(f.path in by_file for f, _ in train)
        ctx.log(f"{NAME}: {len(train)} pictures, {from_files} captioned by file: {train[0][1]!r}")
        unet = pipe.unet
        config = add_lora(unet, params.lora_r, params.lora_alpha)
        trainable = [p for p in unet.parameters() if p.requires_grad]
        counts = {
            "trainable_params": float(sum(p.numel() for p in trainable)),
            "captions_from_files": float(from_files),
            "base_unet_params": float(
                sum(p.numel() for p in unet.parameters()) - sum(p.numel() for p in trainable)
            ),
        }
        n_lora, n_unet = int(counts["trainable_params"]), int(counts["base_unet_params"])
        ctx.log(f"{NAME}: {n_lora:,} LoRA weights on a UNet of {n_unet:,}")
        opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
        per_epoch = -(-len(lat) // params.batch_size)
        if params.max_steps:
            per_epoch = min(per_epoch, params.max_steps)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = epoch_order(len(lat), params.seed, epoch)
            for idx in list(batched(order, params.batch_size))[:per_epoch]:
                yield lat[idx], emb[idx]

        def step(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
            loss = _loss(pipe, m, *batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            return {"loss": loss.item(), "samples": len(batch[0])}

        def validate(m: nn.Module) -> dict[str, float]:
            return {"val_loss": _held_out(pipe, m, vlat, vemb)}

        epochs = params.epochs
        result = fit(
            ctx,
            unet,
            opt,
            epochs=epochs,
            steps_per_epoch=per_epoch,
            batches=batches,
            step=step,
            validate=validate,
            trainable_only=True,
        )
        model_dir = ctx.artifacts_dir / "model"
        if is_main():
            adapter = save_adapter(unet, config, model_dir / ADAPTER_DIR)
            link_folder(base_dir, model_dir / BASE_DIR)
            counts["adapter_bytes"] = float(adapter.stat().st_size)
            info = {"base_model": params.base_model, **{k: int(v) for k, v in counts.items()}}
            ModelConfig(NAME, params.model_dump(), info).write(model_dir)
        return TrainOutput(
            model_dir, {**result.metrics, **counts}, result.epochs_run, result.resumed_from_epoch
        )

    def _pipeline(
        self, model_dir: Path, device: str
    ) -> tuple[StableDiffusionPipeline, ImageLoraParams | None]:
        """A trained model folder (adapter over ``base/``), or an imported diffusers folder."""
        dev = resolve_device(device)
        if not (model_dir / "config.json").is_file() and (model_dir / MODEL_INDEX).is_file():
            pipe = load_pipeline(model_dir, dev)
            pipe.unet.eval()
            return pipe, None
        cfg = ModelConfig.read(model_dir, NAME)
        named_base({"recipe": NAME, **cfg.info})  # a path is refused, never followed
        pipe = load_pipeline(model_dir / BASE_DIR, dev)
        load_adapter(pipe.unet, model_dir / ADAPTER_DIR)
        pipe.unet.eval()
        return pipe, ImageLoraParams.model_validate(cfg.params)

    def load(self, model_dir: Path, device: str = "cpu") -> TextToImagePredictor:
        pipe, params = self._pipeline(model_dir, device)
        return TextToImagePredictor(pipe, params)

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        """The denoising loss on the held-out pictures at fixed noise."""
        pipe, params = self._pipeline(model_dir, ctx.device)
        size = params.resolution if params else TextToImagePredictor(pipe, None).size
        pairs = captioned(ds, ds.select("image", "validation") or ds.select("image", "train"))
        lat, emb = _encode(pipe, pairs, ds, size)
        return evaluation_report(
            ctx, NAME, {"val_loss": _held_out(pipe, pipe.unet, lat, emb)}, {"pictures": len(pairs)}
        )

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        """The adapter as it is (``pipe.unet.add_adapter`` + ``set_peft_model_state_dict``)."""
        dest.mkdir(parents=True, exist_ok=True)
        out = []
        for name in (ADAPTER_FILE, ADAPTER_CONFIG):
            target = dest / name
            target.write_bytes((model_dir / ADAPTER_DIR / name).read_bytes())
            out.append(target)
        return out


@torch.no_grad()
def _held_out(
    pipe: StableDiffusionPipeline, unet: nn.Module, lat: torch.Tensor, emb: torch.Tensor
) -> float:
    """The loss at noise and steps fixed by a seed; the training run's random state is kept."""
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        for i in range(0, len(lat), 16):
            total += float(_loss(pipe, unet, lat[i : i + 16], emb[i : i + 16])) * len(
                lat[i : i + 16]
            )
    return total / max(len(lat), 1)
