"""The forward (noising) process of the diffusion program, fixed, no parameters:

    q(x_{1:T} | x_0) = q(x_T | x_0) Π_{t=T..2} q(x_{t-1} | x_t, x_0)

the factorisation of Ho et al. (2020, eq. 5) under which each site's KL against the model's reverse step is one term
of the ELBO (:mod:`pyroib.models.diffusion`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyroib.diffusion import NoiseSchedule, to_signed
from pyroib.plates import data_plate


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.schedule = NoiseSchedule(config.noise_schedule, config.timesteps, config.reverse_variance)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        T = self.config.timesteps
        x0 = to_signed(x)
        with data_plate(x, index, size):
            # one timestep for every point: shaped (1,) so that it broadcasts under a particle plate as well
            last = torch.full((1,), T, dtype=torch.long, device=x.device)
            mean, variance = self.schedule.q_marginal(x0, last)
            xt = pyro.sample(f"x{T}", dist.Normal(mean, variance.sqrt()).to_event(3))
            for t in range(T, 1, -1):
                steps = torch.full((1,), t, dtype=torch.long, device=x.device)
                mean, variance = self.schedule.posterior(x0, xt, steps)
                xt = pyro.sample(f"x{t - 1}", dist.Normal(mean, variance.sqrt()).to_event(3))
