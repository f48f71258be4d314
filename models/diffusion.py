"""A denoising diffusion model (Ho et al. 2020) as a Pyro program: the learned reverse chain.

    x_T ~ N(0, I)
    x_{t-1} ~ p_θ(x_{t-1} | x_t) = N(μ_θ(x_t, t), σ_t² I)     t = T..2, sites "x{t-1}"
    x_0 ~ p_θ(x_0 | x_1)                                        the observed image "x", a discretised Gaussian
    for n in the data plate

with μ_θ from a U-Net's noise prediction ε_θ(x_t, t) (:mod:`pyroib.unet`) and σ_t² fixed (the posterior variance
β̃_t, or β_t). The guide is the fixed forward process q(x_{1:T} | x_0), written as q(x_T | x_0) Π_t q(x_{t-1} | x_t,
x_0) (:mod:`pyroib.guides.diffusion`), so the rate of site "x{t-1}" under closed-form KL is exactly the ELBO's
L_{t-1}, and per-site β is a per-timestep bottleneck. Tracing all T sites is the definition and the test of the
estimator; training draws one timestep per image (:class:`pyroib.objectives.DiffusionELBO`). Images in [0, 1] with
256 grey levels are modelled on [-1, 1] (:mod:`pyroib.diffusion`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyroib.diffusion import (
    NOISE_SCHEDULES,
    REVERSE_VARIANCES,
    DiscretisedGaussian,
    NoiseSchedule,
    check_eight_bit,
    discretised_gaussian_log_likelihood,
    gaussian_kl,
    to_signed,
)
from pyroib.plates import data_plate
from pyroib.unet import UNet


@dataclass(frozen=True)
class Config:
    data_shape: tuple[int, ...] = (1, 28, 28)
    timesteps: int = 1000
    noise_schedule: str = "linear"
    reverse_variance: str = "posterior"  # σ_t² = β̃_t (posterior) or β_t
    channels: tuple[int, ...] = (32, 64, 64)  # U-Net widths, one per resolution
    time_dim: int = 128
    curve_points: int = 64  # evaluation: test points per timestep for the KL-per-timestep curve

    def __post_init__(self):
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be >= 2, got {self.timesteps}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"unknown noise_schedule {self.noise_schedule!r}: choose {', '.join(NOISE_SCHEDULES)}")
        if self.reverse_variance not in REVERSE_VARIANCES:
            raise ValueError(
                f"unknown reverse_variance {self.reverse_variance!r}: choose {', '.join(REVERSE_VARIANCES)}"
            )
        if self.curve_points < 1:
            raise ValueError(f"curve_points must be >= 1, got {self.curve_points}")


class Model(nn.Module):
    importance_sampling = False  # T latent sites of whole images: pyroib evaluate reports the bound, not IW
    preflight_points = 2  # the contract check traces all T sites: on two images, not a minibatch

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.schedule = NoiseSchedule(config.noise_schedule, config.timesteps, config.reverse_variance)
        self.network = UNet(config.data_shape, config.channels, config.time_dim)

    def reverse(self, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log variance) of p_θ(x_{t-1} | x_t)."""
        steps = torch.as_tensor(t, device=xt.device).expand(xt.shape[:-3])
        flat_t = steps.reshape(-1)
        flat = xt.reshape(-1, *xt.shape[-3:])
        mean = self.schedule.reverse_mean(flat, flat_t, self.network(flat, flat_t))
        return mean.reshape(xt.shape), self.schedule.reverse_log_variance_at(flat_t, flat).reshape(xt.shape)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        T = self.config.timesteps
        with data_plate(x, index, size):
            xt = pyro.sample(f"x{T}", dist.Normal(torch.zeros_like(x), 1.0).to_event(3))
            for t in range(T, 1, -1):
                mean, log_variance = self.reverse(xt, t)
                xt = pyro.sample(f"x{t - 1}", dist.Normal(mean, (0.5 * log_variance).exp()).to_event(3))
            mean, log_variance = self.reverse(xt, 1)
            pyro.sample("x", DiscretisedGaussian(mean, 0.5 * log_variance), obs=x)

    def check_data(self, x: torch.Tensor, binarize: str) -> None:
        """The discretised likelihood scores 8-bit images: values k/255 in [0, 1]."""
        check_eight_bit(x, "the diffusion model's discretised likelihood")

    # the pieces of the ELBO, per data point (nats), read by DiffusionELBO and the evaluation --------------------
    def data_term(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """L_0 = -log p_θ(x_0 | x_1) at x_1 ~ q(x_1 | x_0)."""
        x0 = to_signed(x)
        ones = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        x1 = self.schedule.q_sample(x0, ones, torch.randn_like(x0) if noise is None else noise)
        mean, log_variance = self.reverse(x1, ones)
        return -discretised_gaussian_log_likelihood(x0, mean, 0.5 * log_variance).flatten(1).sum(1)

    def prior_term(self, x: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I))."""
        x0 = to_signed(x)
        last = torch.full((x.shape[0],), self.config.timesteps, dtype=torch.long, device=x.device)
        mean, variance = self.schedule.q_marginal(x0, last)
        zero = torch.zeros_like(mean)
        return gaussian_kl(mean, variance.log(), zero, zero).flatten(1).sum(1)

    def timestep_kl(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t)) at x_t ~ q(x_t | x_0), per point, t >= 2."""
        x0 = to_signed(x)
        xt = self.schedule.q_sample(x0, t, torch.randn_like(x0) if noise is None else noise)
        posterior_mean, posterior_variance = self.schedule.posterior(x0, xt, t)
        mean, log_variance = self.reverse(xt, t)
        return gaussian_kl(posterior_mean, posterior_variance.log(), mean, log_variance).flatten(1).sum(1)

    def metrics(self, guide, x: torch.Tensor, y=None) -> dict:
        """The ELBO's terms over the split: L_0 and L_T at every point, L_{t-1} for every t on ``curve_points``
        random points each; the bound in nats per image and bits per dimension."""
        from pyroib.evaluate_diffusion import diffusion_curve

        return diffusion_curve(self, x, self.config.curve_points)

    def sample_images(self, n: int, steps: int | None = None, generator: torch.Generator | None = None):
        """Ancestral samples x_0 ~ p_θ, from x_T ~ N(0, I) through ``steps`` evenly spaced timesteps (all T by
        default; fewer skip steps as DDIM's respacing does, Nichol and Dhariwal 2021, §4)."""
        from pyroib.evaluate_diffusion import ancestral_samples

        return ancestral_samples(self, n, steps, generator)
