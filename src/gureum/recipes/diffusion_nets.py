"""The network and the arithmetic of image-diffusion, on diffusers' building blocks.

A ``UNet2DModel`` with a class embedding (one extra class is "no class": classifier-free
guidance learns the unconditional model by label dropout), DDPM noising for training, DDIM or
DPM-Solver for sampling. Everything is built from configs: nothing is downloaded. With
``conditioning=caption`` the network is ``diffusion_text.CaptionUNet`` instead, called the same
way with word ids for labels; its "no class" is the empty caption (all padding).

The exponential moving average of the weights is a second UNet inside the same module, so the
epoch checkpoints of ``training.fit`` carry it and a resumed run continues the average;
``diffusers.training_utils.EMAModel`` updates it in place (its shadow parameters are that
UNet's parameters) and its step count is a buffer for the same reason.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from diffusers.training_utils import EMAModel
from torch import nn

from gureum.recipes.base import OverBudget
from gureum.recipes.diffusion_text import PAD, CaptionUNet


def unet_config(params: Mapping[str, Any], n_classes: int) -> dict[str, Any]:
    """The UNet's shape: three levels (four at 64x64 and over), self-attention only in the
    middle block at the lowest resolution, where it is cheap."""
    width, size = int(params["width"]), int(params["image_size"])
    mults = (1, 2, 2, 2) if size >= 64 else (1, 2, 2)
    return {
        "sample_size": size,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": tuple(width * m for m in mults),
        "down_block_types": ("DownBlock2D",) * len(mults),
        "up_block_types": ("UpBlock2D",) * len(mults),
        "layers_per_block": int(params["layers_per_block"]),
        "add_attention": bool(params["attention"]),
        "attention_head_dim": 8,
        "norm_num_groups": 8,
        "num_class_embeds": n_classes + 1,  # the last one: no class
    }


def scheduler_config(params: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "num_train_timesteps": int(params["train_timesteps"]),
        "beta_schedule": str(params["beta_schedule"]),
        "prediction_type": str(params["prediction"]),
        "clip_sample": True,
    }


def sampling_scheduler(config: Mapping[str, Any], sampler: str) -> Any:
    """A fresh scheduler per generation: they keep state between steps."""
    if sampler == "dpm-solver":
        return DPMSolverMultistepScheduler.from_config(dict(config))
    return DDIMScheduler.from_config(dict(config))


class Diffusion(nn.Module):
    """The trained UNet, its EMA twin and the DDPM noising; ``forward`` is the training loss."""

    ema_steps: torch.Tensor

    def __init__(self, n_classes: int, params: Mapping[str, Any], n_tokens: int = 0) -> None:
        super().__init__()
        self.n_classes = max(1, n_classes)
        self.captions = params.get("conditioning", "class") == "caption"
        self.label_dropout = float(params["label_dropout"])
        # Models saved before the option trained with the plain loss.
        self.snr_gamma = float(params.get("snr_gamma", 0.0))
        self.net: UNet2DModel | CaptionUNet
        if self.captions:
            self.null_class = PAD  # a row of it is the empty caption
            self.net = CaptionUNet(params, n_tokens)
        else:
            self.null_class = self.n_classes
            self.net = UNet2DModel(**unet_config(params, self.n_classes))
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.noise = DDPMScheduler(**scheduler_config(params))
        self._ema = EMAModel(self.net.parameters(), decay=float(params["ema_decay"]))
        self._ema.shadow_params = list(self.ema_net.parameters())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training loss (see ``loss``), with the class dropped for a share of pictures."""
        return {"loss": self.loss(self.net, x, y, self.label_dropout)}

    def loss(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        label_dropout: float = 0.0,
        weighted: bool = True,
    ) -> torch.Tensor:
        """The DDPM loss of ``net`` on pictures ``x`` in [0, 1] of classes (or captions' word
        ids) ``y``: a random noise level per picture, and the class made "no class" (the
        caption empty) for ``label_dropout`` of them. With ``snr_gamma`` (and ``weighted``)
        each picture's error is weighted by min-SNR-gamma (Hang et al. 2023): the nearly clean
        noise levels, easy and many, stop dominating the gradient."""
        clean = x * 2 - 1
        noise = torch.randn_like(clean)
        steps = self.noise.config.num_train_timesteps
        t = torch.randint(0, steps, (len(x),), device=x.device)
        noisy = self.noise.add_noise(clean, noise, t)
        drop = (torch.rand(len(y), device=y.device) < label_dropout).view(-1, *[1] * (y.dim() - 1))
        labels = torch.where(drop, torch.full_like(y, self.null_class), y)
        predicted = net(noisy, t, class_labels=labels).sample
        v_pred = self.noise.config.prediction_type == "v_prediction"
        target = self.noise.get_velocity(clean, noise, t) if v_pred else noise
        if not (weighted and self.snr_gamma > 0):
            return F.mse_loss(predicted, target)
        per_picture = (predicted - target).pow(2).flatten(1).mean(1)
        weight = min_snr_weight(self.noise, t, self.snr_gamma, v_pred)
        loss: torch.Tensor = (per_picture * weight).mean()
        return loss

    @torch.no_grad()
    def update_ema(self) -> float:
        """One EMA step after an optimizer step; the decay it used."""
        self._ema.optimization_step = int(self.ema_steps)
        self._ema.shadow_params = list(self.ema_net.parameters())  # after a .to(device)
        self._ema.step(self.net.parameters())
        self.ema_steps.fill_(self._ema.optimization_step)
        return float(self._ema.cur_decay_value or 0.0)


def min_snr_weight(
    noise: DDPMScheduler, t: torch.Tensor, gamma: float, v_prediction: bool
) -> torch.Tensor:
    """min(SNR, gamma) / SNR for an epsilon target, / (SNR + 1) for a v target: min-SNR-gamma
    expressed for the target the network predicts (the x0 loss capped at ``gamma``)."""
    abar: torch.Tensor = noise.alphas_cumprod.to(t.device)[t]
    snr = abar / (1 - abar)
    capped = snr.clamp(max=gamma)
    return capped / (snr + 1) if v_prediction else capped / snr


@torch.no_grad()
def generate(
    net: Callable[..., Any],
    config: Mapping[str, Any],
    *,
    labels: torch.Tensor,
    noise: torch.Tensor,
    guidance: torch.Tensor,
    null_class: int,
    steps: int,
    sampler: str,
    deadline: float | None = None,
    uncond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pictures in [0, 1] from ``noise`` (on the CPU, one generator per caller, so a seed gives
    the same pictures alone or in a batch) with classifier-free guidance per picture:
    ``uncond + g * (cond - uncond)``, where ``uncond`` is "no class" unless given (a negative
    prompt's word ids); a batch whose scales are all 1 skips the unconditional half. Past
    ``deadline`` (``time.monotonic``) the loop stops with ``OverBudget``."""
    dev = labels.device
    scheduler = sampling_scheduler(config, sampler)
    with warnings.catch_warnings():
        # DPM-Solver hands numpy a torch tensor (``np.array(alphas_cumprod)``): numpy 2 warns.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        scheduler.set_timesteps(steps, device=dev)
    x = noise.to(dev) * scheduler.init_noise_sigma
    g = guidance.to(dev).view(-1, 1, 1, 1)
    guided = bool((guidance != 1).any())
    if uncond is None:
        uncond = torch.full_like(labels, null_class)
    both = torch.cat([labels, uncond.to(dev)]) if guided else labels
    for i, t in enumerate(scheduler.timesteps):
        if deadline is not None and time.monotonic() > deadline:
            raise OverBudget(
                f"the generation ran past its time budget after {i} of {steps} denoising "
                "steps and was stopped (not billed); ask for fewer steps or images, or a "
                "larger time_budget_s"
            )
        model_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        out = net(model_in, t, class_labels=both).sample
        if guided:
            cond, uncond = out.chunk(2)
            out = uncond + g * (cond - uncond)
        x = scheduler.step(out, t, x).prev_sample
    pictures: torch.Tensor = ((x.clamp(-1, 1) + 1) / 2).cpu()
    return pictures
