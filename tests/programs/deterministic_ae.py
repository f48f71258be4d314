"""An autoencoder with a deterministic code (a Delta guide) and a Gaussian likelihood: every step is a function of
the data alone, so a data-parallel run can be compared with one process number for number."""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
from torch import nn


@dataclass(frozen=True)
class Config:
    data_shape: tuple = (1, 8, 8)
    latent_dim: int = 3


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(config.latent_dim, 32), nn.Tanh(), nn.Linear(32, 64))

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            code = pyro.sample("code", dist.Normal(x.new_zeros(x.shape[0], 3), 1.0).to_event(1))
            mean = self.decoder(code).reshape(x.shape)
            pyro.sample("x", dist.Normal(mean, 0.5).to_event(3), obs=x)


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, config.latent_dim))

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            pyro.sample("code", dist.Delta(self.encoder(x)).to_event(1))
