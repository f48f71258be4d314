"""Observation models p(x | z) as small modules: decoder output -> Pyro distribution over one data point.

``bernoulli`` (binary data), ``continuous-bernoulli`` (grey levels in [0, 1], Loaiza-Ganem & Cunningham 2019),
``gaussian`` (learned per-channel scale: squared-error distortion), ``laplace`` (learned per-channel scale: the
l1 distortion of the seeds) and ``discretised-gaussian`` (the probability of each 8-bit pixel's bin: a code length,
the diffusion model's data term). Every distribution has event shape equal to the data shape, so log densities are per
data point, in nats.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class Likelihood(nn.Module):
    requires_binary = False
    params_per_pixel = 1

    def __init__(self, data_shape: tuple[int, ...]):
        super().__init__()
        self.data_shape = tuple(data_shape)

    def check_data(self, x: torch.Tensor, binarize: str) -> None:
        """Raise a ValueError with a hint when the data cannot come from this likelihood."""
        if x.numel() and (x.min() < 0 or x.max() > 1) and self.requires_binary:
            raise ValueError(f"the {self.name} likelihood needs data in [0, 1]")
        if self.requires_binary and binarize == "none" and not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(
                f"the {self.name} likelihood needs binary data, but this dataset has grey levels. "
                "Pass --binarize dynamic (or static), or choose --likelihood continuous-bernoulli, gaussian or laplace"
            )

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean image E[x | z], for reconstructions and samples."""
        return self.forward(params).mean

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError


class Bernoulli(Likelihood):
    name = "bernoulli"
    requires_binary = True

    def forward(self, params):
        return dist.Bernoulli(logits=params).to_event(len(self.data_shape))


class ContinuousBernoulli(Likelihood):
    name = "continuous-bernoulli"

    def forward(self, params):
        # clamp: the continuous Bernoulli's normaliser is numerically delicate at extreme logits
        return dist.ContinuousBernoulli(logits=params.clamp(-15, 15)).to_event(len(self.data_shape))

    def mean(self, params):
        return torch.sigmoid(params)


class _LocationScale(Likelihood):
    family: type

    def __init__(self, data_shape):
        super().__init__(data_shape)
        # one learned scale per channel, broadcast over pixels; starts at 0.1 in data units
        channels = data_shape[0] if len(data_shape) > 1 else 1
        shape = (channels,) + (1,) * (len(data_shape) - 1) if len(data_shape) > 1 else (1,)
        self.log_scale = nn.Parameter(torch.full(shape, -2.3))

    def forward(self, params):
        scale = self.log_scale.clamp(-9, 5).exp().expand_as(params)
        return self.family(params, scale).to_event(len(self.data_shape))

    def mean(self, params):
        return params


class Gaussian(_LocationScale):
    name = "gaussian"
    family = dist.Normal


class Laplace(_LocationScale):
    name = "laplace"
    family = dist.Laplace


class DiscretisedGaussian(Likelihood):
    """The probability of each pixel's 8-bit bin under a Gaussian with a learned per-channel scale (Ho et al. 2020's
    data term; :class:`pyroib.diffusion.DiscretisedGaussian`): a code length for 256-level images, the same
    likelihood the diffusion model's bound uses, so their bits per dimension compare."""

    name = "discretised-gaussian"

    def __init__(self, data_shape):
        super().__init__(data_shape)
        channels = data_shape[0] if len(data_shape) > 1 else 1
        shape = (channels,) + (1,) * (len(data_shape) - 1) if len(data_shape) > 1 else (1,)
        self.log_scale = nn.Parameter(torch.full(shape, -2.3))  # on the [-1, 1] scale

    def check_data(self, x, binarize):
        from .diffusion import check_eight_bit

        check_eight_bit(x, "the discretised-gaussian likelihood")

    def forward(self, params):
        from .diffusion import DiscretisedGaussian as Discretised

        if len(self.data_shape) != 3:
            raise ValueError(f"the discretised-gaussian likelihood reads (C, H, W) images, got {self.data_shape}")
        return Discretised(params, self.log_scale.clamp(-9, 5).expand_as(params))

    def mean(self, params):
        from .diffusion import to_levels

        return to_levels(params)


LIKELIHOODS = {cls.name: cls for cls in (Bernoulli, ContinuousBernoulli, Gaussian, Laplace, DiscretisedGaussian)}


def make_likelihood(name: str, data_shape: tuple[int, ...]) -> Likelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}: choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name](data_shape)


def likelihood_and_decoder(latent_dim: int, config) -> tuple[Likelihood, nn.Module]:
    """p(x | z) of a program: the likelihood its config names, and the decoder from a ``latent_dim`` code to that
    likelihood's parameters (``config.hidden``, ``config.network``, ``config.data_shape``)."""
    from .networks import Decoder

    likelihood = make_likelihood(config.likelihood, config.data_shape)
    decoder = Decoder(
        latent_dim, config.hidden, config.data_shape, config.network, out_factor=likelihood.params_per_pixel
    )
    return likelihood, decoder
