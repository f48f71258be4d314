"""The hierarchical VAE read as stacked CorEx (Gao et al., Auto-Encoding Total Correlation Explanation, AISTATS 2019).

    z^(L)_n ~ r(z^(L))                          top layer: uniform over its values (categorical) or N(0, I)
    z^(l)_n ~ p(z^(l) | z^(l+1)_n)              l = L-1 .. 1, Gaussian or categorical, a network each
    x_n     ~ p(x | z^(1)_n) = L(f_θ(z^(1)_n))   likelihood over the decoder's output
    for n in the data plate

Layer l is the site ``z<l>`` (``z1`` next to x). The default is Gao et al.'s MNIST model: a 64-d Gaussian z1 and a
10-way categorical z2, networks x-512-512-64 and 64-32-32-16-16-10. Categorical layers are marked for parallel
enumeration, so the objective sums them out exactly instead of sampling them; per-layer β and anchors come from
``--beta z1=..,z2=..`` and ``--anchors z1=..``. The guide (:mod:`pyroib.guides.hvae`) is bottom-up: q(z1 | x), then
q(z^(l+1) | z^(l)). The Gaussian-mixture VAE (:mod:`pyroib.models.gmvae`) is this story with another guide.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch import nn

from pyroib.hierarchy import ENUMERATE, ConditionalLayer, layers_of, site_name, top_prior
from pyroib.likelihoods import likelihood_and_decoder
from pyroib.plates import data_plate


@dataclass(frozen=True)
class Config:
    data_shape: tuple[int, ...] = (1, 28, 28)
    # z1 (next to x) first; "gaussian" or "categorical" per layer
    layer_sizes: tuple[int, ...] = (64, 10)
    layer_types: tuple[str, ...] = ("gaussian", "categorical")
    hidden: tuple[int, ...] = (512, 512)  # between x and z1
    layer_hidden: tuple[int, ...] = (32, 32, 16, 16)  # between z^(l) and z^(l+1), z^(l) side first
    network: str = "mlp"
    likelihood: str = "gaussian"  # grey levels (the architecture trains with --binarize none)

    def __post_init__(self):
        layers_of(self.layer_sizes, self.layer_types)
        if any(h < 1 for h in self.layer_hidden):
            raise ValueError(f"layer_hidden sizes must be positive, got {self.layer_hidden}")


class Model(nn.Module):
    latent_site = "z1"  # batch-level objectives (TC, MMD) and Guide.encode read the layer next to x

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.layers = layers_of(config.layer_sizes, config.layer_types)
        # generative[l] is p(z^(l+1) | z^(l+2)) for l = 0 .. L-2 (index 0: p(z1 | z2))
        self.generative = nn.ModuleList(
            ConditionalLayer(upper, lower, tuple(reversed(config.layer_hidden)), config.network)
            for lower, upper in zip(self.layers[:-1], self.layers[1:])
        )
        self.likelihood, self.decoder = likelihood_and_decoder(config.layer_sizes[0], config)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            top = self.layers[-1]
            value = pyro.sample(
                site_name(len(self.layers)),
                top_prior(top, x.shape[0], x),
                infer=dict(ENUMERATE) if top.categorical else {},
            )
            for level in range(len(self.layers) - 1, 0, -1):
                layer = self.layers[level - 1]
                value = pyro.sample(
                    site_name(level),
                    self.generative[level - 1](value),
                    infer=dict(ENUMERATE) if layer.categorical else {},
                )
            pyro.sample("x", self.likelihood(self.decoder(value)), obs=x)

    def conditional(self, level: int, parent: torch.Tensor):
        """p(z^(level) | z^(level+1) = parent), for traversals and samples."""
        return self.generative[level - 1](parent)

    def check_data(self, x: torch.Tensor, binarize: str) -> None:
        self.likelihood.check_data(x, binarize)

    def decode(self, z1: torch.Tensor) -> torch.Tensor:
        """Mean image E[x | z1]."""
        return self.likelihood.mean(self.decoder(z1))

    def metrics(self, guide, x, y=None) -> dict:
        from pyroib.layer_information import layer_information

        return layer_information(self, guide, x, y)


__all__ = ["Config", "Model"]
