"""Amortized Gaussian guide of the VAE family.

z_n ~ q(z | x_n) = N(μ_φ(x_n), diag σ_φ(x_n)²)   for n in the data plate
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyroib.networks import GaussianEncoder
from pyroib.plates import data_plate


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.encoder = GaussianEncoder(config.data_shape, config.hidden, config.latent_dim, config.network)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            loc, scale = self.encoder(x)
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z | x)."""
        return self.encoder(x)
