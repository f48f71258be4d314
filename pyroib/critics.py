"""Density ratios by classification: critics for KL and total-correlation terms.

A critic T(z) is a classifier logit trained with the logistic loss to tell samples of p
(label 1) from samples of q (label 0), each class weighted equally:

    L(T) = E_p[softplus(-T(z))] + E_q[softplus(T(z))].

Pointwise, the minimiser is the Bayes logit T*(z) = log p(z)/q(z) (Sugiyama et al., "Density
ratio estimation"), so E_p[T*] = KL(p || q) and E_q[exp T*] = 1. FactorVAE (Kim and Mnih 2018)
takes q to be the product of the marginals of p, sampled by permuting each dimension
across the batch, which makes E_p[T*] the total correlation of p. The estimate is only as
good as the critic's fit: a critic that is under-trained or too small shrinks the logit
towards 0 and underestimates the divergence.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Critic", "density_ratio_loss", "kl_from_critic", "permute_dims", "tc_critic_loss", "tc_from_critic"]


class Critic(nn.Module):
    """An MLP z (..., input_dim) -> logit (...), read as log p(z)/q(z) once trained.

    ``hidden_sizes`` gives the width of each hidden layer (LeakyReLU activations, as in
    FactorVAE's discriminator); an empty sequence makes a linear logit.
    """

    def __init__(self, input_dim: int, hidden_sizes: Sequence[int] = (256, 256), negative_slope: float = 0.2):
        super().__init__()
        sizes = [input_dim, *hidden_sizes]
        if any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in sizes):
            raise ValueError(f"input_dim and hidden_sizes must be positive ints, got {input_dim!r}, {hidden_sizes!r}")
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.LeakyReLU(negative_slope)]
        layers.append(nn.Linear(sizes[-1], 1))
        self.input_dim = input_dim
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if z.shape[-1] != self.input_dim:
            raise ValueError(f"the critic takes codes with last dimension {self.input_dim}, got shape {tuple(z.shape)}")
        return self.net(z).squeeze(-1)


def _check_samples(name: str, samples: Tensor) -> None:
    if not isinstance(samples, Tensor) or samples.dim() != 2 or samples.shape[0] < 1:
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"{name} must be a non-empty tensor of shape (num_samples, dim), got {shape}")


def density_ratio_loss(critic: nn.Module, samples_p: Tensor, samples_q: Tensor) -> Tensor:
    """Logistic loss E_p[softplus(-T)] + E_q[softplus(T)] in nats; its optimum is T = log p/q.

    Each class is averaged separately, so unequal sample counts do not shift the optimum
    (a class-count imbalance would add log(n_p/n_q) to the optimal logit).
    """
    _check_samples("samples_p", samples_p)
    _check_samples("samples_q", samples_q)
    if samples_p.shape[1] != samples_q.shape[1]:
        raise ValueError(f"samples_p and samples_q differ in dimension: {samples_p.shape[1]} vs {samples_q.shape[1]}")
    return F.softplus(-critic(samples_p)).mean() + F.softplus(critic(samples_q)).mean()


def kl_from_critic(critic: nn.Module, samples_p: Tensor) -> Tensor:
    """E_p[T(z)]: estimates KL(p || q) in nats for a critic trained by density_ratio_loss."""
    _check_samples("samples_p", samples_p)
    return critic(samples_p).mean()


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle each column of z (B, D) by its own random permutation of the batch.

    If the rows of z are draws from q(z), the result's rows are (nearly independent) draws
    from prod_j q_j(z_j): each column keeps its values but loses its pairing with the others.
    ``generator`` must live on z's device.
    """
    if z.dim() != 2:
        raise ValueError(f"z must have shape (batch, latent_dim), got {tuple(z.shape)}")
    # argsort of i.i.d. uniforms is a uniform random permutation per column, in one call;
    # float64 makes ties (which would bias it) practically impossible.
    keys = torch.rand(z.shape, generator=generator, dtype=torch.float64, device=z.device)
    return torch.gather(z, 0, keys.argsort(dim=0))


def tc_critic_loss(critic: nn.Module, z: Tensor, z_to_permute: Tensor | None = None, generator=None) -> Tensor:
    """Critic loss for total correlation: joint codes z against dimension-permuted codes.

    FactorVAE permutes a second, independent batch (``z_to_permute``) so the two classes do
    not share rows; with None, z itself is permuted. Inputs are detached: this loss trains the
    critic only.
    """
    permuted = permute_dims((z if z_to_permute is None else z_to_permute).detach(), generator)
    return density_ratio_loss(critic, z.detach(), permuted)


def tc_from_critic(critic: nn.Module, z: Tensor) -> Tensor:
    """E_q[T(z)]: total correlation KL(q(z) || prod_j q_j(z_j)) in nats, from a TC critic.

    Gradients flow into z (the encoder), as in FactorVAE's TC penalty; freeze or exclude the
    critic's parameters from the encoder's optimiser.
    """
    return kl_from_critic(critic, z)
