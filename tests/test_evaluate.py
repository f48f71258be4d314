"""Evaluators against closed forms: a linear-Gaussian model whose marginal likelihood and posterior are exact."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyroib.evaluate import active_units, importance_nll, split_terms
from pyroib.objectives import InfoELBO
from pyroib.plates import data_plate

D, X = 2, 3
W = torch.tensor([[1.0, 0.5], [-0.3, 0.8], [0.2, -1.0]])
B = torch.tensor([0.1, -0.2, 0.3])
SIGMA = 0.5


class LinearGaussian(nn.Module):
    """z ~ N(0, I); x ~ N(W z + b, σ² I), so p(x) = N(b, W Wᵀ + σ² I)."""

    def forward(self, x, y=None, index=None, size=None):
        with data_plate(x, index, size):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + B, SIGMA).to_event(1), obs=x)

    def marginal(self):
        return dist.MultivariateNormal(B, W @ W.T + SIGMA**2 * torch.eye(X))


class Posterior(nn.Module):
    """q(z|x) = p(z|x) when ``exact``; otherwise a deliberately wrong (too wide, shifted) Gaussian."""

    def __init__(self, exact=True):
        super().__init__()
        self.exact = exact
        precision = torch.eye(D) + W.T @ W / SIGMA**2
        self.cov = torch.linalg.inv(precision)

    def encode(self, x):
        loc = (x - B) @ W @ self.cov.T / SIGMA**2
        scale = self.cov.diagonal().sqrt().expand_as(loc)
        if not self.exact:
            return loc + 0.5, scale * 2.0
        return loc, scale

    def forward(self, x, y=None, index=None, size=None):
        with data_plate(x, index, size):
            loc, _ = self.encode(x)
            if self.exact:
                pyro.sample("z", dist.MultivariateNormal(loc, self.cov))
            else:
                pyro.sample("z", dist.Normal(*self.encode(x)).to_event(1))


def data(n=40):
    torch.manual_seed(0)
    return LinearGaussian().marginal().sample((n,))


def test_importance_nll_with_the_exact_posterior_is_exact_for_any_k():
    x = data()
    exact = -LinearGaussian().marginal().log_prob(x)
    for k in (1, 7):
        nll = importance_nll(LinearGaussian(), Posterior(), x, samples=k, batch_size=16, particles_per_pass=3)
        assert torch.allclose(nll, exact, atol=1e-4)


def test_importance_nll_default_passes_split_k_and_the_batch_and_stay_exact(monkeypatch):
    """The default pass size (rows per pass) cuts K = 1000 into passes of 2048 // 16 = 128 particles and a remainder
    of 104, and the 40 points into batches of 16, 16 and 8: every particle still counts once."""
    import pyroib.evaluate as evaluate

    x = data()
    exact = -LinearGaussian().marginal().log_prob(x)
    passes = []
    original = evaluate.importance_log_weights
    monkeypatch.setattr(evaluate, "importance_log_weights", lambda *a, **k: passes.append(a[4]) or original(*a, **k))
    nll = importance_nll(LinearGaussian(), Posterior(), x, samples=1000, batch_size=16)
    assert torch.allclose(nll, exact, atol=1e-4)
    assert passes == ([128] * 7 + [104]) * 3


def test_importance_nll_with_a_poor_guide_tightens_towards_the_truth_as_k_grows():
    x = data()
    exact = float(-LinearGaussian().marginal().log_prob(x).mean())
    loose = float(importance_nll(LinearGaussian(), Posterior(exact=False), x, samples=1).mean())
    tight = float(
        importance_nll(LinearGaussian(), Posterior(exact=False), x, samples=4000, particles_per_pass=1000).mean()
    )
    assert loose > tight >= exact - 0.05
    assert tight == pytest.approx(exact, abs=0.1)


def test_elbo_equals_log_marginal_minus_kl_to_the_posterior():
    """ELBO = log p(x) - KL(q || p(z|x)); with the shifted guide the KL is known in closed form."""
    x = data(200)
    guide = Posterior(exact=False)
    values, per_dim = split_terms(LinearGaussian(), guide, InfoELBO(analytic_kl=True), x)
    loc, scale = guide.encode(x)
    exact_loc, _ = Posterior().encode(x)
    q = dist.MultivariateNormal(loc, torch.diag_embed(scale**2))
    p = dist.MultivariateNormal(exact_loc, Posterior().cov)
    expected = float((LinearGaussian().marginal().log_prob(x) - torch.distributions.kl_divergence(q, p)).mean())
    assert values["elbo"] == pytest.approx(expected, abs=0.15)  # one Monte Carlo draw per point, 200 points
    assert sum(per_dim["z"]) == pytest.approx(values["rate"], rel=1e-5)


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    class Guide:
        def encode(self, x):
            return torch.stack([x[:, 0], torch.full_like(x[:, 0], 2.0), 0.05 * x[:, 1]], -1), None

    x = torch.randn(500, 2)
    count, variances = active_units(Guide(), x)
    assert count == 1  # 0.05² ≈ 0.0025 is below the 0.01 threshold; the constant dimension is inactive
    assert variances[0] == pytest.approx(1.0, abs=0.15)


def test_importance_weights_carry_no_graph_even_when_the_prior_has_parameters():
    """A flow prior evaluates its parameters inside log_prob; a graph on the weights would keep every pass's
    intermediates alive through importance_nll's running log-sum-exp (it grew by ~300 MB per pass)."""
    from pyroib.evaluate import importance_log_weights
    from pyroib.run import RunSpec, build

    spec = RunSpec(
        model="vae",
        dataset="synthetic",
        prior="flow",
        model_config={"data_shape": [1, 4, 4], "latent_dim": 4, "hidden": [8]},
    )
    built = build(spec, "cpu")
    x = torch.bernoulli(torch.full((3, 1, 4, 4), 0.5))
    log_w = importance_log_weights(built.model, built.guide, x, None, particles=5)
    assert log_w.shape == (5, 3) and torch.isfinite(log_w).all()
    assert not log_w.requires_grad
