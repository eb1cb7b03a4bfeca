"""The small image networks: a CNN classifier and a class-conditional convolutional VAE.

Both are sized for 32x32 pictures and a CPU: a few hundred thousand parameters, an epoch over a
few hundred images in well under a second. No batch norm, so data-parallel training needs no
synchronised statistics and evaluation does not depend on the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; ``features`` is the pooled 4*width vector."""

    def __init__(self, n_classes: int, channels: int = 3, width: int = 32, dropout: float = 0.1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * width, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x * 2 - 1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.features(x))
        return out


class ConditionalVAE(nn.Module):
    """A VAE whose encoder and decoder both see the class, so sampling can ask for one."""

    def __init__(
        self, n_classes: int, image_size: int = 32, latent: int = 32, width: int = 32
    ) -> None:
        super().__init__()
        if image_size % 8:
            raise ValueError("image_size must be a multiple of 8")
        self.n_classes = max(1, n_classes)
        self.latent = latent
        self.side = image_size // 8
        self.width = width
        flat = 4 * width * self.side * self.side
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.embed = nn.Embedding(self.n_classes, 16)
        self.to_stats = nn.Linear(flat + 16, 2 * latent)
        self.from_latent = nn.Sequential(nn.Linear(latent + 16, flat), nn.LeakyReLU(0.2))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(width, 3, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.encoder(x * 2 - 1), self.embed(y)], dim=1)
        mu, logvar = self.to_stats(h).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self.embed(y)], dim=1))
        h = h.view(-1, 4 * self.width, self.side, self.side)
        out: torch.Tensor = self.decoder(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-image negative ELBO (``loss``), its reconstruction and KL terms."""
        mu, logvar = self.encode(x, y)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = self.decode_logits(z, y)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
        return {"recon": recon.mean(), "kl": kl.mean(), "loss": (recon + kl).mean()}

    @torch.no_grad()
    def sample(
        self, y: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> torch.Tensor:
        """Pictures in [0, 1] for the classes in ``y``; ``generator`` makes them repeatable."""
        # Drawn on the CPU so one seeded generator gives the same pictures on any device.
        z = torch.randn((len(y), self.latent), generator=generator).to(y.device) * temperature
        return torch.sigmoid(self.decode_logits(z, y))
