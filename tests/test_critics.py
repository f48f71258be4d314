"""Critics recover known divergences; permute_dims samples the product of the marginals."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from pyroib.critics import Critic, density_ratio_loss, kl_from_critic, permute_dims, tc_critic_loss, tc_from_critic


def train(critic, loss_of, steps=400):
    """Adam with fresh samples each step; the learning rate drops twice so the last iterate is
    not dominated by step noise."""
    optimiser = torch.optim.Adam(critic.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=[200, 300], gamma=0.3)
    for _ in range(steps):
        loss = loss_of(critic)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return critic


def test_critic_recovers_closed_form_kl_between_gaussians():
    torch.manual_seed(0)
    p = MultivariateNormal(torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 0.5], [0.5, 1.0]]))
    q = MultivariateNormal(torch.zeros(2), torch.eye(2))
    critic = train(Critic(2, (64, 64)), lambda c: density_ratio_loss(c, p.sample((512,)), q.sample((512,))))
    with torch.no_grad():
        samples_p, samples_q = p.sample((20000,)), q.sample((20000,))
        logit = critic(samples_p)
        true_log_ratio = p.log_prob(samples_p) - q.log_prob(samples_p)
        estimate = kl_from_critic(critic, samples_p).item()
        normaliser = critic(samples_q).exp().mean().item()
    kl = kl_divergence(p, q).item()  # 0.644 nats
    # Tolerance from the critic's own fit: |E_p[T] - E_p[T*]| <= rms(T - T*) on the same
    # samples (Cauchy-Schwarz), plus 4 standard errors for E_p[T*] against the exact KL.
    # A fit below 0.25 nats rms is asked for; an untrained critic is off by sd(T*) = 1.1.
    rms_error = (logit - true_log_ratio).square().mean().sqrt().item()
    standard_error = true_log_ratio.std().item() / math.sqrt(len(samples_p))
    assert rms_error < 0.25
    assert abs(estimate - kl) < rms_error + 4 * standard_error
    # exp(T*) = p/q integrates to one under q.
    assert abs(normaliser - 1.0) < 0.1


def test_tc_critic_recovers_gaussian_total_correlation():
    torch.manual_seed(1)
    rho = 0.8
    mix = torch.tensor([[1.0, 0.0], [rho, math.sqrt(1 - rho**2)]])

    def draw(n):
        return torch.randn(n, 2) @ mix.T

    critic = train(Critic(2, (64, 64)), lambda c: tc_critic_loss(c, draw(512), draw(512)))
    with torch.no_grad():
        estimate = tc_from_critic(critic, draw(20000)).item()
    # TC of a bivariate Gaussian is -1/2 log(1 - rho^2) = 0.511 nats. The critic sees a
    # finite-batch permutation, not exact independence; |error| <= 0.035 over 5 seeds measured.
    assert abs(estimate - (-0.5 * math.log(1 - rho**2))) < 0.08


def test_permute_dims_keeps_columns_and_breaks_their_pairing():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4000, 3, generator=gen)
    z[:, 1] = 0.9 * z[:, 0] + math.sqrt(1 - 0.81) * z[:, 1]
    permuted = permute_dims(z, generator=gen)
    assert torch.equal(permuted.sort(0).values, z.sort(0).values)
    correlation = torch.corrcoef(permuted.T)
    off_diagonal = correlation[~torch.eye(3, dtype=torch.bool)]
    # Independent columns of 4,000 give correlations with sd 1/sqrt(4000) = 0.016.
    assert off_diagonal.abs().max() < 4 / math.sqrt(4000)
    assert torch.equal(
        permute_dims(z, torch.Generator().manual_seed(3)), permute_dims(z, torch.Generator().manual_seed(3))
    )


def test_density_ratio_loss_at_the_true_log_ratio_is_the_bayes_optimum():
    # With T = log p/q the loss is 2 log 2 - 2 JS(p, q); for p = q that is 2 log 2 at T = 0.
    samples = torch.randn(100, 3)
    zero_critic = Critic(3, ())
    with torch.no_grad():
        zero_critic.net[0].weight.zero_()
        zero_critic.net[0].bias.zero_()
    assert math.isclose(density_ratio_loss(zero_critic, samples, samples).item(), 2 * math.log(2), rel_tol=1e-6)


def test_tc_from_critic_passes_gradients_to_codes_only_through_the_logit():
    critic = Critic(2, (8,))
    z = torch.randn(32, 2, requires_grad=True)
    tc_from_critic(critic, z).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    z.grad = None
    tc_critic_loss(critic, z).backward()
    assert z.grad is None  # the critic's loss trains the critic only


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Critic(0), "positive ints"),
        (lambda: Critic(2, (16, -1)), "positive ints"),
        (lambda: Critic(2)(torch.randn(4, 3)), "last dimension 2"),
        (lambda: density_ratio_loss(Critic(2), torch.randn(4, 2), torch.randn(4, 3)), "differ in dimension"),
        (lambda: density_ratio_loss(Critic(2), torch.randn(0, 2), torch.randn(4, 2)), "non-empty"),
        (lambda: kl_from_critic(Critic(2), torch.randn(4)), "shape"),
        (lambda: permute_dims(torch.randn(4)), "shape"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
