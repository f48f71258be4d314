"""Bottom-up guide of the hierarchical VAE (Gao et al. 2019): q(z1 | x) q(z2 | z1) .. q(z^(L) | z^(L-1)).

z1_n      ~ N(μ_φ(x_n), diag σ_φ(x_n)²)
z^(l+1)_n ~ q(z^(l+1) | z^(l)_n)            Gaussian, or categorical and enumerated
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyroib.hierarchy import ENUMERATE, ConditionalLayer, layers_of, site_name
from pyroib.networks import GaussianEncoder
from pyroib.plates import data_plate


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = layers_of(config.layer_sizes, config.layer_types)
        self.encoder = GaussianEncoder(config.data_shape, config.hidden, config.layer_sizes[0], config.network)
        # upward[l] is q(z^(l+2) | z^(l+1))
        self.upward = nn.ModuleList(
            ConditionalLayer(lower, upper, config.layer_hidden, config.network)
            for lower, upper in zip(self.layers[:-1], self.layers[1:])
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            loc, scale = self.encoder(x)
            value = pyro.sample(site_name(1), dist.Normal(loc, scale).to_event(1))
            for level, step in enumerate(self.upward, start=2):
                layer = self.layers[level - 1]
                value = pyro.sample(site_name(level), step(value), infer=dict(ENUMERATE) if layer.categorical else {})

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z1 | x)."""
        return self.encoder(x)

    def upper(self, level: int, lower: torch.Tensor):
        """q(z^(level) | z^(level-1) = lower)."""
        return self.upward[level - 2](lower)
