"""The deterministic encoder of the rate-distortion autoencoder: z_n = e_φ(x_n), a point mass (log q = 0), M
positions of D dimensions; the model quantises it (:mod:`pyroib.models.vqvae`). With decoder noise, u_n ~ N(0, I)
as in the model."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyroib.models.vqvae import noise_distribution
from pyroib.networks import GaussianEncoder, SpatialEncoder
from pyroib.plates import data_plate


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        if config.spatial:  # one code per cell of the conv feature map
            self.encoder = SpatialEncoder(config.data_shape, config.hidden, config.code_dim)
        else:  # the location half of a Gaussian encoder's head; its scale half is unused
            self.encoder = GaussianEncoder(
                config.data_shape, config.hidden, config.positions * config.code_dim, config.network
            )

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """e(x) as (..., M, D), before quantisation."""
        if self.config.spatial:
            return self.encoder(x)
        loc = self.encoder(x)[0]
        return loc.reshape(*loc.shape[:-1], self.config.positions, self.config.code_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            z = pyro.sample("z", dist.Delta(self.encode_codes(x), event_dim=2))
            if self.config.noise_dim:  # U is not inferred: q(u | x) = p(u), so it carries no rate
                pyro.sample("u", noise_distribution(z.flatten(-2), self.config.noise_dim))
            return z
