"""Two latent layers: z2 ~ N(0, I), z1 | z2 ~ N(f(z2), 0.5²), x | z1 ~ Bernoulli(g(z1)); no injected prior."""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
from torch import nn


@dataclass(frozen=True)
class Config:
    data_shape: tuple = (1, 8, 8)
    top: int = 2
    bottom: int = 4
    width: int = 32


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.up = nn.Linear(config.top, config.bottom)
        self.out = nn.Sequential(nn.Linear(config.bottom, config.width), nn.Tanh(), nn.Linear(config.width, 64))

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(x.shape[0], self.config.top), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.up(z2), 0.5).to_event(1))
            logits = self.out(z1).reshape(*z1.shape[:-1], *x.shape[1:])
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, config.width), nn.Tanh())
        self.bottom = nn.Linear(config.width, 2 * config.bottom)
        self.top = nn.Linear(config.bottom, 2 * config.top)

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            loc, raw = self.bottom(self.body(x)).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
            loc, raw = self.top(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))
