"""Guide of the deep VIB (Alemi et al. 2016): an amortized Gaussian encoder.

    z_n ~ q(z | x_n) = N(μ_φ(x_n), diag σ_φ(x_n)²),   (μ, σ) = (h W_μ + b_μ, softplus(h W_σ + b_σ - SHIFT))
    h = MLP_φ(x_n), ReLU units of sizes config.hidden         for n in the data plate

The encoder follows Alemi et al. (ReLU layers, 2 x 1024 by default). The scale's pre-activation is shifted by -5, so
the posterior starts almost deterministic (σ ≈ 0.0067) and noise grows only where β makes the rate worth cutting.
Measured on digits (5 epochs, K = 16, β = 1e-3, grey levels): 0.95 test accuracy with this encoder, 0.48–0.62 with
the VAE family's encoder (softplus units, σ ≈ 0.69 at the start), which learns a classifier far more slowly.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pyroib.guides import vae

SCALE_SHIFT = 5.0
MIN_SCALE = 1e-4  # keeps log q finite when the softplus underflows


class ReluGaussianEncoder(nn.Module):
    """x (..., *data_shape) -> (loc, scale), each (..., latent_dim)."""

    def __init__(self, data_shape: tuple[int, ...], hidden: tuple[int, ...], latent_dim: int):
        super().__init__()
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden sizes must be positive integers, got {hidden!r}")
        self.data_shape = tuple(data_shape)
        sizes = [math.prod(self.data_shape), *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_shape = x.shape[: x.dim() - len(self.data_shape)]
        h = self.body(x.reshape(-1, math.prod(self.data_shape)))
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        scale = F.softplus(raw_scale - SCALE_SHIFT) + MIN_SCALE
        return loc.reshape(*batch_shape, -1), scale.reshape(*batch_shape, -1)


class Guide(vae.Guide):
    """The VAE family's Gaussian guide with the VIB's ReLU encoder; forward and encode are inherited."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.encoder = ReluGaussianEncoder(tuple(config.data_shape), tuple(config.hidden), config.latent_dim)
