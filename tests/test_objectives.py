"""The objective against Pyro's own ELBOs, and the bottleneck weights against explicit formulas."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyroib.guides.vae import Guide
from pyroib.handlers import bottleneck
from pyroib.models.vae import Config, Model
from pyroib.objectives import InfoELBO
from pyroib.priors import MixtureOfGaussians

CONFIG = Config(data_shape=(1, 4, 4), latent_dim=3, hidden=(8,))
N = 50


def pair(prior=None):
    torch.manual_seed(1)
    return Model(CONFIG, prior=prior), Guide(CONFIG)


def batch():
    g = torch.Generator().manual_seed(2)
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.3), generator=g)
    return x, torch.arange(6) * 7


def grads(loss, modules):
    params = [p for m in modules for p in m.parameters()]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("reference, analytic", [(Trace_ELBO, False), (TraceMeanField_ELBO, True)])
def test_beta_one_equals_pyro_elbo_in_value_and_gradient(reference, analytic):
    model, guide = pair()
    x, index = batch()
    pyro.set_rng_seed(3)
    ours = InfoELBO(analytic_kl=analytic).differentiable_loss(model, guide, x, None, index, N)
    pyro.set_rng_seed(3)
    theirs = reference().differentiable_loss(model, guide, x, None, index, N)
    assert torch.allclose(ours, theirs, rtol=1e-6)
    for a, b in zip(grads(ours, [model, guide]), grads(theirs, [model, guide])):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loss_is_distortion_plus_beta_rate_and_reports_unweighted_rate():
    model, guide = pair()
    x, index = batch()
    pyro.set_rng_seed(4)
    plain = InfoELBO().terms(model, guide, x, None, index, N)
    pyro.set_rng_seed(4)
    m, g = bottleneck(model, guide, beta=4.0)
    weighted = InfoELBO().terms(m, g, x, None, index, N)
    d, r = plain.values["distortion"], plain.values["rate"]
    assert torch.allclose(weighted.values["rate"], r)  # the log reports the rate, not β · rate
    assert torch.allclose(weighted.loss / N, d + 4.0 * r, rtol=1e-5)
    assert torch.allclose(plain.values["elbo"], -(d + r))


def test_beta_zero_masks_the_rate_but_still_reports_it():
    model, guide = pair()
    x, index = batch()
    pyro.set_rng_seed(5)
    m, g = bottleneck(model, guide, beta=0.0)
    terms = InfoELBO().terms(m, g, x, None, index, N)
    assert torch.allclose(terms.loss / N, terms.values["distortion"], rtol=1e-6)
    assert terms.values["rate"] != 0
    encoder_grads = grads(terms.surrogate, [guide])
    assert any(gr is not None and gr.abs().sum() > 0 for gr in encoder_grads)  # distortion still trains the encoder


@pytest.mark.parametrize("analytic", [False, True])
def test_anchor_weights_equal_explicit_per_dimension_kl_weighting(analytic):
    model, guide = pair()
    x, index = batch()
    weights = torch.tensor([0.5, 2.0, 0.0])
    pyro.set_rng_seed(6)
    m, g = bottleneck(model, guide, beta=1.5, anchors=weights)
    anchored = InfoELBO(analytic_kl=analytic).terms(m, g, x, None, index, N)
    pyro.set_rng_seed(6)
    plain = InfoELBO(analytic_kl=analytic).terms(model, guide, x, None, index, N)
    per_dim = plain.kl_per_dim["z"]
    expected = plain.values["distortion"] + 1.5 * (weights * per_dim).sum()
    assert torch.allclose(anchored.loss / N, expected, rtol=1e-5)
    # the per-dimension breakdown sums to the rate
    assert torch.allclose(per_dim.sum(), plain.values["rate"], rtol=1e-5)


def test_anchor_gradients_match_explicit_weighting():
    model, guide = pair()
    x, index = batch()
    weights = torch.tensor([1.0, 3.0, 0.25])
    pyro.set_rng_seed(7)
    m, g = bottleneck(model, guide, anchors=weights)
    ours = InfoELBO(analytic_kl=True).differentiable_loss(m, g, x, None, index, N)

    def explicit():
        loc, scale = guide.encode(x)
        kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0))
        pyro.set_rng_seed(7)
        z = dist.Normal(loc, scale).rsample()
        log_lik = model.likelihood(model.decoder(z)).log_prob(x)
        return N / x.shape[0] * (-(log_lik).sum() + (kl * weights).sum())

    theirs = explicit()
    assert torch.allclose(ours, theirs, rtol=1e-5)
    for a, b in zip(grads(ours, [model, guide]), grads(theirs, [model, guide])):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_anchors_refused_for_a_prior_that_does_not_factorise():
    model, guide = pair(prior=MixtureOfGaussians(CONFIG.latent_dim, n_components=3))
    x, index = batch()
    m, g = bottleneck(model, guide, anchors=torch.ones(3))
    with pytest.raises(ValueError, match="factorised"):
        InfoELBO().terms(m, g, x, None, index, N)


@pytest.mark.parametrize(
    "beta, anchors, match", [(-1.0, None, "beta"), (float("nan"), None, "beta"), (1.0, [1.0, -2.0, 1.0], "anchor")]
)
def test_bad_weights_raise_at_construction(beta, anchors, match):
    model, guide = pair()
    with pytest.raises(ValueError, match=match):
        bottleneck(model, guide, beta=beta, anchors=anchors)


def test_wrong_number_of_anchors_names_the_problem():
    model, guide = pair()
    x, index = batch()
    m, g = bottleneck(model, guide, anchors=torch.ones(5))
    with pytest.raises(ValueError, match="5 anchor weights"):
        InfoELBO().terms(m, g, x, None, index, N)


def test_capacity_objective_is_gamma_times_distance_to_capacity():
    model, guide = pair()
    x, index = batch()
    pyro.set_rng_seed(8)
    plain = InfoELBO().terms(model, guide, x, None, index, N)
    pyro.set_rng_seed(8)
    m, g = bottleneck(model, guide, capacity=(30.0, 2.0))  # a weight like β: on the handlers, not the objective
    capped = InfoELBO().terms(m, g, x, None, index, N)
    d, r = plain.values["distortion"], plain.values["rate"]
    assert torch.allclose(capped.loss / N, d + 30.0 * (r - 2.0).abs(), rtol=1e-5)
    assert torch.allclose(capped.values["rate"], r)  # the reported rate is the rate, not γ|R - C|
    with pytest.raises(ValueError, match="capacity needs"):
        bottleneck(model, guide, capacity=(-1.0, 2.0))


def test_loss_method_uses_the_same_breakdown():
    model, guide = pair()
    x, index = batch()
    pyro.set_rng_seed(9)
    value = InfoELBO().loss(model, guide, x, None, index, N)
    pyro.set_rng_seed(9)
    assert value == pytest.approx(float(Trace_ELBO().loss(model, guide, x, None, index, N)), rel=1e-5)


@pytest.mark.parametrize("analytic", [False, True])
@pytest.mark.parametrize("per_dimension", [True, False])
def test_user_data_weights_reach_rate_and_distortion_alike_but_beta_only_the_loss(analytic, per_dimension):
    """poutine.scale on model and guide weights data points: the reported terms keep it, and drop only β."""
    from pyro import poutine

    model, guide = pair()
    x, index = batch()
    weights = torch.tensor([0.5, 2.0, 1.0, 0.25, 3.0, 1.5])
    objective = InfoELBO(analytic_kl=analytic)
    weighted = (poutine.scale(model, scale=weights), poutine.scale(guide, scale=weights))
    pyro.set_rng_seed(11)
    at_one = objective.terms(*weighted, x, None, index, N, per_dimension=per_dimension)
    pyro.set_rng_seed(11)
    at_three = objective.terms(*bottleneck(*weighted, beta=3.0), x, None, index, N, per_dimension=per_dimension)
    reference = (TraceMeanField_ELBO if analytic else Trace_ELBO)()
    pyro.set_rng_seed(11)
    pyro_loss = reference.differentiable_loss(*weighted, x, None, index, N)
    # at β = 1 the reported ELBO is the weighted program's ELBO, per data point
    assert torch.allclose(-at_one.values["elbo"] * N, pyro_loss, rtol=1e-5)
    d, r = at_one.values["distortion"], at_one.values["rate"]
    assert torch.allclose(at_three.values["rate"], r)
    assert torch.allclose(at_three.loss / N, d + 3.0 * r, rtol=1e-5)
    if analytic:
        # the rate is Σ_i w_i KL(q(z|x_i) || p(z)) · (N / B) / N: the data weights times the plate's subsample factor
        loc, scale = guide.encode(x)
        kl = torch.distributions.kl_divergence(dist.Normal(loc, scale), dist.Normal(0.0, 1.0)).detach()
        expected = (weights.unsqueeze(-1) * kl).sum(0) / len(x)
        assert torch.allclose(r, expected.sum(), rtol=1e-5)
        if per_dimension:
            assert torch.allclose(at_one.kl_per_dim["z"], expected, rtol=1e-5)


def test_training_breakdown_without_per_dimension_reports_the_same_unweighted_rate():
    model, guide = pair()
    x, index = batch()
    m, g = bottleneck(model, guide, beta=2.0, anchors=torch.tensor([0.5, 2.0, 1.0]))
    pyro.set_rng_seed(10)
    full = InfoELBO().terms(m, g, x, None, index, N)
    pyro.set_rng_seed(10)
    light = InfoELBO().terms(m, g, x, None, index, N, per_dimension=False)
    assert light.kl_per_dim == {}
    assert torch.allclose(light.values["rate"], full.values["rate"])
    assert torch.allclose(light.loss, full.loss)


class _MixedModel(torch.nn.Module):
    """c ~ Categorical(3), z ~ N(μ_c, 1), x ~ N(w·z, 1): a discrete site and a Gaussian one below it."""

    def __init__(self):
        super().__init__()
        self.means = torch.nn.Parameter(torch.tensor([-1.0, 0.5, 2.0]))
        self.weight = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size, subsample=index):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))
            z = pyro.sample("z", dist.Normal(self.means[c], 1.0))
            pyro.sample("x", dist.Normal(self.weight * z, 1.0), obs=x)


class _MixedGuide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Linear(1, 3)
        self.loc = torch.nn.Linear(1, 1)

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size, subsample=index):
            pyro.sample("c", dist.Categorical(logits=self.logits(x[:, None])))
            pyro.sample("z", dist.Normal(self.loc(x[:, None]).squeeze(-1), 0.8))


def test_a_categorical_guide_site_gets_pyros_score_function_gradient_in_value_and_gradient():
    """The surrogate copied from Pyro (objectives.core.surrogate_elbo) against Trace_ELBO itself, on a program
    whose discrete site needs the score-function term: same loss value, same gradient for model and guide."""
    torch.manual_seed(0)
    model, guide = _MixedModel(), _MixedGuide()
    x, index = torch.randn(5), torch.tensor([0, 3, 4, 8, 9])
    pyro.set_rng_seed(7)
    ours = InfoELBO().differentiable_loss(model, guide, x, None, index, 10)
    pyro.set_rng_seed(7)
    theirs = Trace_ELBO().differentiable_loss(model, guide, x, None, index, 10)
    assert torch.allclose(ours, theirs, rtol=1e-6)
    ours_grads, theirs_grads = grads(ours, [model, guide]), grads(theirs, [model, guide])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(ours_grads, theirs_grads))
    # the score-function term is there: the guide's logits receive a gradient even though c is not reparameterised
    assert ours_grads[2].abs().sum() > 0
