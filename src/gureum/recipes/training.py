"""The epoch loop the torch recipes share: resume, cancel, log, checkpoint, data-parallel.

Written once so every recipe resumes the same way: a checkpoint is taken at the end of every
epoch (model, optimizer, RNG state, the epoch and the global step) and a restarted run carries on
from the epoch after it. Data order depends only on (seed, epoch), so a resumed run sees the same
batches an uninterrupted one would have. When the platform asks for a checkpoint mid-epoch (it
is about to preempt the job, ``checkpoint_requested``), one is saved after the current step,
with how far into the epoch it got (``within``); a run resumed from it skips the batches of
that epoch already trained on and carries on with the next.

Data-parallel: under Ray Train's TorchTrainer (or torchrun) a process group is already set up;
``fit`` then wraps the model in DistributedDataParallel, ``epoch_order`` gives each rank its
shard, and only rank 0 logs metrics and writes checkpoints.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.torch import load_model, save_model
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from gureum.recipes.base import Cancelled, RecipeError, RunContext, checkpoint_requested

WEIGHTS_FILE = "model.safetensors"
B = TypeVar("B")


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device {name!r} was asked for but no CUDA GPU is visible")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> NDArray[np.int64]:
    """This rank's sample indices for ``epoch``: a seeded permutation, sharded by rank.

    Every rank gets the same number of indices (the permutation wraps round) so that collective
    operations in DistributedDataParallel stay in step.
    """
    order = (
        np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    ).astype(np.int64)
    rank, size = world()
    if size == 1:
        return order
    per_rank = math.ceil(n / size)
    padded = np.resize(order, per_rank * size)
    return padded[rank::size]


def batched(indices: Sequence[int] | NDArray[np.int64], batch_size: int) -> Iterator[list[int]]:
    items = [int(i) for i in indices]
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def steps_in(n: int, batch_size: int) -> int:
    """Steps per epoch for this rank given ``n`` samples overall."""
    return math.ceil(math.ceil(n / world()[1]) / batch_size)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def save_weights(model: nn.Module, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / WEIGHTS_FILE
    save_model(unwrap(model), str(path))  # handles tied weights, unlike save_file
    return path


def load_weights(model: nn.Module, model_dir: Path, device: torch.device) -> nn.Module:
    path = model_dir / WEIGHTS_FILE
    if not path.is_file():
        raise RecipeError(f"{model_dir} holds no {WEIGHTS_FILE}")
    load_model(model, str(path), device=str(device))
    model.to(device)
    model.eval()
    return model


@dataclass
class FitResult:
    epochs_run: int
    resumed_from_epoch: int | None
    global_step: int
    metrics: dict[str, float]


StepFn = Callable[[nn.Module, B], dict[str, float]]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _model_state(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if not trainable_only:
        return state
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def fit(
    ctx: RunContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    batches: Callable[[int], Iterable[B]],
    step: StepFn[B],
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    log_every: int = 10,
    trainable_only: bool = False,
) -> FitResult:
    """Train ``model`` for ``epochs`` (1-based), resuming from ``ctx``'s last checkpoint.

    ``step(model, batch)`` does forward, backward and the optimizer step and returns at least
    ``loss`` and ``samples``; ``validate`` runs in eval mode under ``no_grad`` after each epoch.
    ``trainable_only`` checkpoints only the parameters being trained (LoRA adapters, not the
    frozen base model they sit on).
    """
    main = is_main()
    start, global_step, resumed = 1, 0, None
    last: dict[str, float] = {}
    within: dict[str, Any] = {}  # how far into epoch ``start`` a mid-epoch checkpoint got
    ckpt = ctx.load_checkpoint()
    if ckpt is not None:
        unwrap(model).load_state_dict(ckpt["model"], strict=not trainable_only)
        optimizer.load_state_dict(ckpt["optimizer"])
        _restore_rng(ckpt["rng"])
        resumed = int(ckpt["epoch"])
        start, global_step = resumed + 1, int(ckpt["step"])
        last = {k: float(v) for k, v in ckpt.get("metrics", {}).items()}
        within = dict(ckpt.get("within") or {})
        if main:
            into = f", {int(within['steps'])} steps into it" if within else ""
            ctx.log(
                f"resuming from checkpoint: epoch {resumed} of {epochs} done at step "
                f"{global_step}; starting epoch {start}{into}"
            )

    def save(epoch: int, metrics: dict[str, float], **more: Any) -> None:
        ctx.save_checkpoint(
            {
                "model": _model_state(unwrap(model), trainable_only),
                "optimizer": optimizer.state_dict(),
                "rng": _rng_state(),
                "epoch": epoch,
                "step": global_step,
                "metrics": metrics,
                **more,
            }
        )

    _, size = world()
    runner: nn.Module = DistributedDataParallel(model) if size > 1 else model
    total = epochs * steps_per_epoch
    for epoch in range(start, epochs + 1):
        runner.train()
        began = time.perf_counter()
        loss_sum, samples, steps = 0.0, 0, 0
        todo = iter(batches(epoch))
        if within and epoch == start:  # the batches trained on before the checkpoint
            steps = int(within["steps"])
            loss_sum, samples = float(within["loss_sum"]), int(within["samples"])
            for _ in itertools.islice(todo, steps):
                pass
            _restore_rng(ckpt["rng"] if ckpt is not None else _rng_state())
        for batch in todo:
            if ctx.should_stop():
                if main:
                    ctx.log(f"stop requested during epoch {epoch} at step {global_step}")
                raise Cancelled(f"stopped during epoch {epoch}")
            out = step(runner, batch)
            global_step += 1
            steps += 1
            loss_sum += out["loss"]
            samples += int(out.get("samples", 0))
            if main and global_step % log_every == 0:
                ctx.log_metrics(
                    global_step, {k: v for k, v in out.items() if k != "samples"}, epoch
                )
            if main:
                ctx.progress(epoch, global_step, total)
            if main and checkpoint_requested(ctx):  # about to be preempted: keep this step
                ctx.log(f"checkpoint requested: saving at step {global_step} of epoch {epoch}")
                part = {"steps": steps, "loss_sum": loss_sum, "samples": samples}
                save(epoch - 1, last, within=part)
        elapsed = max(time.perf_counter() - began, 1e-9)
        metrics = {
            "train_loss": loss_sum / max(steps, 1),
            "throughput": samples * size / elapsed,
            "epoch_seconds": elapsed,
        }
        if validate is not None:
            runner.eval()
            with torch.no_grad():
                metrics.update(validate(unwrap(model)))
        last = metrics
        if main:
            ctx.log_metrics(global_step, metrics, epoch)
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            ctx.log(f"epoch {epoch}/{epochs}: {shown}")
            save(epoch, metrics)
    model.eval()
    return FitResult(
        epochs_run=max(0, epochs - start + 1),
        resumed_from_epoch=resumed,
        global_step=global_step,
        metrics=last,
    )
