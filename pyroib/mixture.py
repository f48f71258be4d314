"""A mixture of K diagonal Gaussians whose log density costs one matrix product instead of a (..., K, D) tensor.

``MixtureSameFamily(Categorical, Normal.to_event(1))`` scores n points by broadcasting them against every
component: an (n, K, D) tensor and its temporaries. Importance sampling a VampPrior (K = 500, D = 40) at 250
particles x 25 points builds 125 million such elements per pass, 4.5 s on one core; 5,000 samples on 10,000 test
points are 8,000 passes, ten hours. Expanding the square,

    sum_d (z_d - mu_kd)^2 / s_kd^2 = [z^2, z] . [1 / s_k^2, -2 mu_k / s_k^2] + sum_d mu_kd^2 / s_kd^2,

makes the per-component quadratic forms one (n, 2D) x (2D, K) product (0.3 s for the same pass). The expansion
cancels when a point sits near a narrow component (each term can be 1e4 times the result), which costs float32
up to 0.02 nats in such cases; so the quadratic forms are computed in float64 and the log density returned in the
input's dtype. Its gradients follow through the product as they would through the broadcast form.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints

__all__ = ["DiagonalNormalMixture"]


class DiagonalNormalMixture(TorchDistribution):
    """p(z) = sum_k softmax(logits)_k N(z; loc_k, diag scale_k^2) for z in R^D; components shared by every batch
    element. ``loc`` and ``scale`` are (K, D), ``logits`` (K,) (uniform when omitted); ``batch_shape`` is free and
    ``expand`` only changes it, so the components are never copied per batch element."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "logits": constraints.real}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        logits: torch.Tensor | None = None,
        batch_shape: tuple[int, ...] | torch.Size = (),
        validate_args: bool | None = None,
    ):
        if loc.dim() != 2 or loc.shape != scale.shape:
            raise ValueError(
                f"loc and scale must both be (components, latent_dim), got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        self.loc, self.scale = loc, scale
        self.logits = loc.new_zeros(loc.shape[0]) if logits is None else logits
        if self.logits.shape != loc.shape[:1]:
            raise ValueError(f"logits must be ({loc.shape[0]},), one per component, got {tuple(self.logits.shape)}")
        super().__init__(torch.Size(batch_shape), loc.shape[1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new.loc, new.scale, new.logits = self.loc, self.scale, self.logits
        super(DiagonalNormalMixture, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N(value; loc_k, diag scale_k^2) for every component k: shape value.shape[:-1] + (K,), float64."""
        z = value.to(torch.float64)
        loc, precision = self.loc.to(torch.float64), self.scale.to(torch.float64).pow(-2)
        weights = torch.cat([precision, -2 * loc * precision], dim=-1)  # (K, 2D)
        quadratic = torch.cat([z * z, z], dim=-1) @ weights.T + (loc * loc * precision).sum(-1)
        normaliser = self.scale.to(torch.float64).log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        return -0.5 * quadratic.clamp_min(0) - normaliser

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_weights = torch.log_softmax(self.logits.to(torch.float64), -1)
        result = torch.logsumexp(self.component_log_prob(value) + log_weights, -1).to(value.dtype)
        return result.expand(torch.broadcast_shapes(result.shape, self.batch_shape))

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            pick = torch.distributions.Categorical(logits=self.logits).sample(shape[:-1])
            noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
            return self.loc[pick] + self.scale[pick] * noise

    @property
    def mean(self) -> torch.Tensor:
        weights = torch.softmax(self.logits, -1)
        return (weights @ self.loc).expand(self._extended_shape())

    @property
    def variance(self) -> torch.Tensor:
        weights = torch.softmax(self.logits, -1)
        second = weights @ (self.scale.pow(2) + self.loc.pow(2))
        return (second - (weights @ self.loc).pow(2)).expand(self._extended_shape())
