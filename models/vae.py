"""The variational autoencoder's generative story, shared by the whole VAE family.

    z_n ~ p(z)                       prior, injected (standard normal unless told otherwise)
    x_n ~ p(x | z_n) = L(f_θ(z_n))   likelihood L over the decoder's output
    for n in the data plate (N points, minibatch subsampled by dataset index)

β-VAE, annealed and cyclical β, capacity control and AnchorVAE are this program under bottleneck weights
(:mod:`pyroib.handlers`); β-TCVAE, InfoVAE, AAE and BIB-AE are this program under other objectives; VampPrior and
flow-prior VAEs are this program with another ``prior``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from torch import nn

from pyroib.likelihoods import likelihood_and_decoder
from pyroib.plates import data_plate
from pyroib.priors import StandardNormal


@dataclass(frozen=True)
class Config:
    data_shape: tuple[int, ...] = (1, 28, 28)
    latent_dim: int = 20
    hidden: tuple[int, ...] = (400,)
    network: str = "mlp"
    likelihood: str = "bernoulli"

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")


class Model(nn.Module):
    """A plain ``nn.Module`` rather than a ``PyroModule``: pyroib's optimiser reads parameters from the modules, and
    a PyroModule re-registers every child's parameters in Pyro's global store on each attribute access (measured:
    1 ms of a 20 ms step). Pyro programs need no particular base class; your own may still be a PyroModule."""

    def __init__(self, config: Config, prior: torch.nn.Module | None = None):
        super().__init__()
        self.config = config
        self.prior = prior if prior is not None else StandardNormal(config.latent_dim)
        self.likelihood, self.decoder = likelihood_and_decoder(config.latent_dim, config)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    def check_data(self, x: torch.Tensor, binarize: str) -> None:
        """Refuse data the likelihood cannot score (grey levels under a Bernoulli likelihood, say)."""
        self.likelihood.check_data(x, binarize)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image E[x | z]."""
        return self.likelihood.mean(self.decoder(z))
