"""image-diffusion: a class-conditional diffusion model for small pictures, trained from scratch.

A diffusers ``UNet2DModel`` with a class embedding learns DDPM's noise prediction; label
dropout teaches it the unconditional model too, so sampling (DDIM or DPM-Solver) uses
classifier-free guidance. An EMA of the weights is what evaluates and serves. Checkpoints and
resume are ``training.fit``'s, with the EMA inside the checkpointed module; a grid of samples
per class lands in the artifacts every ``grid_every`` epochs as it trains.

Evaluated exactly like image-generator (``recipes.sample_quality``: kernel MMD against the
held-out pictures, a classifier's accuracy on samples), so the two recipes compare; plus
``val_loss``, the EMA model's DDPM loss on the held-out pictures at fixed noise.

With ``conditioning=caption`` the model is conditioned on the pictures' captions instead
(``recipes.diffusion_text``: a word vocabulary of the training captions and a tiny text
embedding trained with a ``UNet2DConditionModel``; guidance drops to the empty caption). Its
grids and the shared metrics ask for each class by its name as the prompt.

Served: ``{"class": "dress", "count": 4, "seed": 1, "steps": 25, "guidance": 2}`` -> base64
PNGs, billed per image; a caption model takes ``{"prompt": "a red checked dress",
"negative_prompt": "blue"}`` (a prompt over ``max_caption_tokens`` words is truncated and the
output says so, as image-lora's does). Inputs with equal steps and sampler are denoised as
one batch, also across the requests the replica batches together; a generation past its time
budget stops with ``OverBudget`` (504, not billed).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from gureum.recipes.base import (
    BadInput,
    EvalOutput,
    ModelConfig,
    RecipeBase,
    RunContext,
    TrainOutput,
    evaluation_report,
    export_files,
)
from gureum.recipes.dataset import DataFile, LocalDataset
from gureum.recipes.diffusion_nets import Diffusion, generate, scheduler_config
from gureum.recipes.diffusion_text import SPECIAL, CaptionUNet, Vocab, build_vocab
from gureum.recipes.images import load_split, png_bytes, to_image
from gureum.recipes.io_schemas import MAX_IMAGES, MAX_PROMPT_CHARS, DiffusionRequest
from gureum.recipes.lora_captions import captioned
from gureum.recipes.params import IMAGE_DIFFUSION as NAME
from gureum.recipes.params import (
    MAX_GUIDANCE,
    MAX_SAMPLE_STEPS,
    SAMPLERS,
    DiffusionParams,
    check_diffusion_dataset,
)
from gureum.recipes.sample_quality import (
    EVAL_SEED,
    SINGLE_CLASS,
    Sampler,
    class_grids,
    classes_of,
    eval_pictures,
    sample_quality,
)
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
    unwrap,
)

WARMUP_STEPS = 20  # the learning rate ramps up over these optimizer steps
CHUNK = 128  # pictures denoised at once (twice that through the UNet with guidance)
LIMITS = {
    "count": f"an integer from 1 to {MAX_IMAGES}",
    "seed": "a 64-bit integer",
    "steps": f"an integer from 1 to {MAX_SAMPLE_STEPS}",
    "guidance": f"a number from 0 to {MAX_GUIDANCE:g}",
    "sampler": f"one of {', '.join(SAMPLERS)}",
    "class": "a class name",
    "size": "an integer",
    "prompt": f"a string of at most {MAX_PROMPT_CHARS} characters",
    "negative_prompt": f"a string of at most {MAX_PROMPT_CHARS} characters",
}


def _model(cfg: ModelConfig) -> Diffusion:
    words = cfg.info.get("vocab")
    n_tokens = len(words) + SPECIAL if isinstance(words, list) else 0
    return Diffusion(len(cfg.info["classes"]), cfg.params, n_tokens)


@dataclass(frozen=True)
class _Job:
    """One input, checked, with the model's defaults filled in; a caption model's prompt
    and negative prompt as word ids."""

    cls: str | None
    count: int
    seed: int
    steps: int
    guidance: float
    sampler: str
    budget_s: float
    prompt: str | None = None
    negative: str | None = None
    ids: tuple[int, ...] = ()
    negative_ids: tuple[int, ...] = ()
    truncated: bool = False
    unknown: tuple[str, ...] = ()


class DiffusionPredictor:
    def __init__(self, model: Diffusion, cfg: ModelConfig, device: torch.device) -> None:
        self.model, self.device = model, device
        self.classes: list[str] = list(cfg.info["classes"])
        self.defaults = DiffusionParams.model_validate(cfg.params)
        self.scheduler = scheduler_config(cfg.params)
        self.vocab: Vocab | None = None
        if model.captions:
            self.vocab = Vocab(cfg.info.get("vocab", []), self.defaults.max_caption_tokens)
            # The grids and the metrics ask for a class by its name as the prompt.
            names = ["" if c == SINGLE_CLASS else c for c in self.classes]
            self.class_ids = self.vocab.tensor(names)

    def sample(
        self,
        labels: torch.Tensor,
        noise: torch.Tensor,
        guidance: torch.Tensor,
        steps: int,
        sampler: str,
        deadline: float | None = None,
        uncond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pictures in [0, 1] from the EMA weights, ``CHUNK`` at a time; ``labels`` are class
        indices or (a caption model) word ids, ``uncond`` what guidance steers from."""
        out = []
        for i in range(0, len(labels), CHUNK):
            out.append(
                generate(
                    self.model.ema_net,
                    self.scheduler,
                    labels=labels[i : i + CHUNK].to(self.device),
                    noise=noise[i : i + CHUNK],
                    guidance=guidance[i : i + CHUNK],
                    null_class=self.model.null_class,
                    steps=steps,
                    sampler=sampler,
                    deadline=deadline,
                    uncond=None if uncond is None else uncond[i : i + CHUNK],
                )
            )
        return torch.cat(out)

    def sampler(self, steps: int | None = None, guidance: float | None = None) -> Sampler:
        """The model's default sampling as ``sample_quality`` and the grids call it."""
        d = self.defaults
        n, g = steps or d.sample_steps, d.guidance if guidance is None else guidance

        def draw(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            noise = torch.randn((len(y), 3, d.image_size, d.image_size), generator=gen)
            cond = self.class_ids[y.cpu()] if self.vocab is not None else y
            return self.sample(cond, noise, torch.full((len(y),), g), n, d.sampler)

        return draw

    def check(self, item: Any) -> _Job:
        """One input checked against the limits; ``BadInput`` naming each one broken."""
        if not isinstance(item, dict):
            raise BadInput('each input must be an object like {"class": "dress", "count": 4}')
        d = self.defaults
        try:
            req = DiffusionRequest.model_validate(item)
        except ValidationError as exc:
            longest = f"a number of seconds over 0, at most {d.time_budget_s:g}"
            raise BadInput.naming_limits(exc, {**LIMITS, "time_budget_s": longest}) from None
        if req.size is not None and req.size != d.image_size:
            raise BadInput(
                f'"size" must be {d.image_size}: this model generates '
                f"{d.image_size}x{d.image_size} pictures (got {req.size})"
            )
        budget = d.time_budget_s if req.time_budget_s is None else req.time_budget_s
        if budget > d.time_budget_s:
            raise BadInput(
                f'"time_budget_s" must be a number of seconds over 0, at most '
                f"{d.time_budget_s:g} (this model's; got {budget:g})"
            )
        base = _Job(
            None,
            req.count,
            req.seed,
            req.steps or d.sample_steps,
            d.guidance if req.guidance is None else req.guidance,
            req.sampler or d.sampler,
            budget,
        )
        if self.vocab is not None:
            return self._caption_job(req, base)
        if req.prompt is not None or req.negative_prompt is not None:
            raise BadInput(
                '"prompt" needs a model trained with conditioning=caption; this one is '
                f'class-conditional: give "class", one of: {", ".join(self.classes)}'
            )
        default = self.classes[0] if len(self.classes) == 1 else None
        cls = req.class_ if req.class_ is not None else default
        if cls is None:
            raise BadInput(f'"class" is required; one of: {", ".join(self.classes)}')
        if cls not in self.classes:
            raise BadInput(f"unknown class {cls!r}; the model knows: {', '.join(self.classes)}")
        return replace(base, cls=cls)

    def _caption_job(self, req: DiffusionRequest, base: _Job) -> _Job:
        """A caption model's input: ``prompt`` (or ``class``, read as the prompt) as word ids."""
        assert self.vocab is not None
        prompt = req.prompt if req.prompt is not None else req.class_
        if prompt is None:
            raise BadInput(
                '"prompt" is required: this model is conditioned on captions, e.g. '
                '{"prompt": "a red checked dress"}'
            )
        negative = req.negative_prompt or ""
        pos, neg = self.vocab.encode(prompt), self.vocab.encode(negative)
        return replace(
            base,
            prompt=prompt,
            negative=negative,
            ids=tuple(pos.ids),
            negative_ids=tuple(neg.ids),
            truncated=pos.truncated or neg.truncated,
            unknown=tuple(dict.fromkeys(pos.unknown + neg.unknown)),
        )

    def predict(self, inputs: list[Any]) -> list[Any]:
        """Every input checked first (one bad input: nothing runs), then one denoising loop
        per (steps, sampler) for all the pictures that share them."""
        started = time.monotonic()
        jobs = [self.check(item) for item in inputs]
        images: dict[int, list[torch.Tensor]] = {}
        groups: dict[tuple[int, str], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault((job.steps, job.sampler), []).append(i)
        size = self.defaults.image_size
        for (steps, sampler), members in groups.items():
            picked = [jobs[i] for i in members]
            uncond = None
            if self.vocab is not None:
                labels = torch.tensor([j.ids for j in picked for _ in range(j.count)])
                uncond = torch.tensor([j.negative_ids for j in picked for _ in range(j.count)])
            else:
                labels = torch.tensor(
                    [self.classes.index(str(j.cls)) for j in picked for _ in range(j.count)]
                )
            noise = torch.cat(
                [
                    torch.randn(
                        (j.count, 3, size, size), generator=torch.Generator().manual_seed(j.seed)
                    )
                    for j in picked
                ]
            )
            guidance = torch.tensor([j.guidance for j in picked for _ in range(j.count)])
            deadline = started + min(j.budget_s for j in picked)
            out = self.sample(labels, noise, guidance, steps, sampler, deadline, uncond)
            pos = 0
            for i, j in zip(members, picked, strict=True):
                images[i] = list(out[pos : pos + j.count])
                pos += j.count
        return [self._output(job, images[i]) for i, job in enumerate(jobs)]

    def _output(self, job: _Job, pictures: list[torch.Tensor]) -> dict[str, Any]:
        head: dict[str, Any] = {"class": job.cls}
        if self.vocab is not None:
            head = {
                "prompt": job.prompt,
                "negative_prompt": job.negative,
                "truncated": job.truncated,
                "warning": _warning(job, self.vocab.max_tokens),
            }
        return {
            **head,
            "seed": job.seed,
            "steps": job.steps,
            "guidance": job.guidance,
            "sampler": job.sampler,
            "format": "png",
            "images": [base64.b64encode(png_bytes(to_image(t))).decode() for t in pictures],
        }


def _warning(job: _Job, max_tokens: int) -> str | None:
    """What the caller should know about how the prompt was read (image-lora's wording)."""
    notes = []
    if job.truncated:
        notes.append(
            f"the prompt is longer than the text encoder's {max_tokens} tokens and was truncated"
        )
    if job.unknown:
        notes.append(
            "words the model never saw in its training captions, read as unknown: "
            + ", ".join(job.unknown[:20])
        )
    return "; ".join(notes) or None


class ImageDiffusion(RecipeBase):
    name = NAME
    description = SPECS[NAME].description
    Params = DiffusionParams

    def check_dataset(self, ds: LocalDataset, params: DiffusionParams | None = None) -> None:
        check_diffusion_dataset(ds, params)

    def train(self, ctx: RunContext, ds: LocalDataset, params: DiffusionParams) -> TrainOutput:
        self.check_dataset(ds, params)
        seed_everything(params.seed)
        device = resolve_device(ctx.device)
        classes = classes_of(ds)
        train_files, val_files = ds.select("image", "train"), ds.select("image", "validation")
        x, y = load_split(ds, train_files, params.image_size, classes)
        vx, vy = load_split(ds, val_files, params.image_size, classes)
        ctx.log(f"{NAME}: {len(x)} training pictures in {len(classes)} classes")
        info: dict[str, Any] = {"classes": classes}
        n_tokens = 0
        if params.conditioning == "caption":
            texts = [text for _, text in captioned(ds, train_files, NAME)]
            vocab = Vocab(build_vocab(texts, params.vocab_size), params.max_caption_tokens)
            y, vy = vocab.tensor(texts), _caption_ids(ds, val_files, vocab)
            info["vocab"], n_tokens = vocab.words, vocab.size
            ctx.log(
                f"{NAME}: conditioned on captions ({len(vocab.words)} words), e.g. {texts[0]!r}"
            )
        model = Diffusion(len(classes), params.model_dump(), n_tokens).to(device)
        ctx.log(f"{NAME}: UNet of {sum(p.numel() for p in model.net.parameters()):,} weights")
        opt = torch.optim.AdamW(model.net.parameters(), lr=params.lr, weight_decay=0.0)
        cfg = ModelConfig(NAME, params.model_dump(), info)
        epoch_now = [0]

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            epoch_now[0] = epoch
            for idx in batched(epoch_order(len(x), params.seed, epoch), params.batch_size):
                xb = x[idx]
                flip = torch.rand(len(xb)) < 0.5  # the torch RNG: checkpointed with the run
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
                yield xb.to(device), y[idx].to(device)

        def step(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
            core = unwrap(m)
            assert isinstance(core, Diffusion)
            for group in opt.param_groups:
                group["lr"] = params.lr * min(1.0, (int(core.ema_steps) + 1) / WARMUP_STEPS)
            out = m(*batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            nn.utils.clip_grad_norm_(core.net.parameters(), 1.0)
            opt.step()
            decay = core.update_ema()
            return {"loss": out["loss"].item(), "ema_decay": decay, "samples": len(batch[0])}

        def validate(m: nn.Module) -> dict[str, float]:
            assert isinstance(m, Diffusion)
            epoch = epoch_now[0]
            last = epoch == params.epochs
            if is_main() and params.grid_every and (epoch % params.grid_every == 0 or last):
                sampler = DiffusionPredictor(m, cfg, device).sampler()
                folder = ctx.artifacts_dir / "samples"
                class_grids(
                    sampler, classes, params.samples_per_class, device, folder, f"epoch-{epoch:04d}"
                )
                ctx.log(f"{NAME}: sample grid of epoch {epoch} in {folder}")
            return {"val_loss": _val_loss(m, vx, vy, device)}

        result = fit(
            ctx,
            model,
            opt,
            epochs=params.epochs,
            steps_per_epoch=steps_in(len(x), params.batch_size),
            batches=batches,
            step=step,
            validate=validate,
        )
        model_dir = ctx.artifacts_dir / "model"
        if is_main():
            save_weights(model, model_dir)
            cfg.write(model_dir)
        return TrainOutput(model_dir, result.metrics, result.epochs_run, result.resumed_from_epoch)

    def _load(self, model_dir: Path, device: str) -> tuple[Diffusion, ModelConfig, torch.device]:
        cfg = ModelConfig.read(model_dir, NAME)
        dev = resolve_device(device)
        model = load_weights(_model(cfg), model_dir, dev)
        assert isinstance(model, Diffusion)
        return model, cfg, dev

    def evaluate(self, ctx: RunContext, model_dir: Path, ds: LocalDataset) -> EvalOutput:
        model, cfg, dev = self._load(model_dir, ctx.device)
        predictor = DiffusionPredictor(model, cfg, dev)
        classes, d = predictor.classes, predictor.defaults
        pics = eval_pictures(NAME, ds, classes, d.image_size)
        began = time.perf_counter()
        metrics, details = sample_quality(ctx, predictor.sampler(), pics, classes, dev, CHUNK)
        vy = pics.vy
        if predictor.vocab is not None:  # the validation pictures' own captions
            keep = [f for f in ds.select("image", "validation") if f.label in classes]
            keep = keep if len(keep) == len(vy) else ds.select("image", "validation")
            vy = _caption_ids(ds, keep, predictor.vocab)
        metrics["val_loss"] = _val_loss(model, pics.vx, vy, dev)
        folder = ctx.artifacts_dir / "samples"
        files = class_grids(predictor.sampler(), classes, d.samples_per_class, dev, folder)
        details["sampling"] = {
            "sampler": d.sampler,
            "steps": d.sample_steps,
            "guidance": d.guidance,
        }
        ctx.log(f"{NAME}: evaluated in {time.perf_counter() - began:.0f} s; grids in {folder}")
        out = evaluation_report(ctx, NAME, metrics, details)
        out.artifacts[:0] = files
        return out

    def load(self, model_dir: Path, device: str = "cpu") -> DiffusionPredictor:
        model, cfg, dev = self._load(model_dir, device)
        return DiffusionPredictor(model, cfg, dev)

    def export(self, model_dir: Path, dest: Path) -> list[Path]:
        """The model folder's files, and the EMA UNet and its noise schedule as a diffusers
        folder (``UNet2DModel.from_pretrained(dest / "unet")``)."""
        files = export_files(model_dir, dest, [WEIGHTS_FILE, "config.json"])
        model, cfg, _ = self._load(model_dir, "cpu")
        net = model.ema_net
        # A caption model's UNet; its text embedding is in the weights file.
        unet = net.unet if isinstance(net, CaptionUNet) else net
        unet.save_pretrained(str(dest / "unet"))
        scheduler = dest / "scheduler" / "scheduler_config.json"
        scheduler.parent.mkdir(parents=True, exist_ok=True)
        body = {"_class_name": "DDPMScheduler", **scheduler_config(cfg.params)}
        scheduler.write_text(json.dumps(body, indent=2))
        return [*files, *sorted((dest / "unet").iterdir()), scheduler]


def _caption_ids(ds: LocalDataset, files: list[DataFile], vocab: Vocab) -> torch.Tensor:
    return vocab.tensor([text for _, text in captioned(ds, files, NAME)])


@torch.no_grad()
def _val_loss(model: Diffusion, x: torch.Tensor, y: torch.Tensor, dev: torch.device) -> float:
    """The EMA model's DDPM loss on held-out pictures, at noise fixed by a seed (the training
    run's random state is left as it was); unweighted, so models trained with and without
    min-SNR weighting compare."""
    if not len(x):
        return float("nan")
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        for i in range(0, len(x), 256):
            xb, yb = x[i : i + 256].to(dev), y[i : i + 256].to(dev)
            total += float(model.loss(model.ema_net, xb, yb, weighted=False)) * len(xb)
    return total / len(x)
