"""A VAE written the way a Pyro user writes one: its own site names (`code`, `pixels`), pyro.plate directly."""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn


@dataclass(frozen=True)
class Config:
    data_shape: tuple = (1, 8, 8)
    latent_dim: int = 3
    width: int = 32


class Model(nn.Module):
    def __init__(self, config, prior=None):
        super().__init__()
        self.prior = prior
        pixels = config.data_shape[0] * config.data_shape[1] * config.data_shape[2]
        self.config = config
        self.net = nn.Sequential(nn.Linear(config.latent_dim, config.width), nn.Tanh(), nn.Linear(config.width, pixels))

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            if self.prior is None:
                p = dist.Normal(x.new_zeros(self.config.latent_dim), 1.0).expand([x.shape[0], self.config.latent_dim])
                code = pyro.sample("code", p.to_event(1))
            else:
                code = pyro.sample("code", self.prior(x.shape[0]))
            logits = self.net(code).reshape(*code.shape[:-1], *x.shape[1:])
            pyro.sample("pixels", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def decode(self, code):
        return torch.sigmoid(self.net(code)).reshape(-1, *self.config.data_shape)


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        pixels = config.data_shape[0] * config.data_shape[1] * config.data_shape[2]
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, config.width), nn.Tanh(), nn.Linear(config.width, 2 * config.latent_dim)
        )

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            loc, scale = self.encode(x)
            pyro.sample("code", dist.Normal(loc, scale).to_event(1))

    def encode(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-3
