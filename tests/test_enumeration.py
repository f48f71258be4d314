"""Discrete sites summed out inside the information objective: equal to Pyro's TraceEnum_ELBO at β = 1 (value and
gradient, with y enumerated in the guide, in the model only, and sequentially), equal to the hand-written weighted sum
at β ≠ 1, and the importance-weighted bound of an enumerated program against the exact log p(x) of a linear-Gaussian
mixture. What enumeration cannot be combined with is refused in one line."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn
from torch.distributions import kl_divergence

from pyroib.evaluate import importance_nll
from pyroib.handlers import bottleneck
from pyroib.objectives import InfoELBO, TotalCorrelationELBO

K, D, X, NOISE = 3, 2, 4, 1.0


class Mixture(nn.Module):
    """y ~ Cat(π), z | y ~ N(μ_y, I), x | z ~ N(Wz + b, σ² I): linear, so log p(x) has a closed form."""

    def __init__(self, enumerate_y=None):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(K))
        self.means = nn.Parameter(2 * torch.randn(K, D))
        self.decoder = nn.Linear(D, X)
        self.infer = {} if enumerate_y is None else {"enumerate": enumerate_y}

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            label = pyro.sample("y", dist.Categorical(logits=self.logits.expand(x.shape[0], K)), infer=self.infer)
            z = pyro.sample("z", dist.Normal(self.means[label], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), NOISE).to_event(1), obs=x)

    def log_marginal(self, x):
        weight, bias = self.decoder.weight, self.decoder.bias
        cov = weight @ weight.T + NOISE**2 * torch.eye(X)
        parts = [dist.MultivariateNormal(weight @ self.means[k] + bias, cov).log_prob(x) for k in range(K)]
        return torch.logsumexp(torch.stack(parts) + self.logits.log_softmax(0)[:, None], 0)


class Guide(nn.Module):
    """q(y|x) enumerated (or no y at all), then q(z|x, y)."""

    def __init__(self, enumerate_y="parallel"):
        super().__init__()
        self.classifier = nn.Linear(X, K)
        self.encoder = nn.Linear(X + K, 2 * D)
        self.enumerate_y = enumerate_y

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", size or x.shape[0], subsample=index):
            if self.enumerate_y is None:
                onehot = x.new_zeros(x.shape[0], K)
            else:
                label = pyro.sample(
                    "y", dist.Categorical(logits=self.classifier(x)), infer={"enumerate": self.enumerate_y}
                )
                onehot = nn.functional.one_hot(label, K).to(x.dtype)
            shape = torch.broadcast_shapes(onehot.shape[:-1], x.shape[:-1])
            h = self.encoder(torch.cat([x.expand(shape + (X,)), onehot.expand(shape + (K,))], -1))
            pyro.sample("z", dist.Normal(h[..., :D], nn.functional.softplus(h[..., D:]) + 0.1).to_event(1))

    def q_z(self, x, k):
        onehot = nn.functional.one_hot(torch.full((x.shape[0],), k), K).to(x.dtype)
        h = self.encoder(torch.cat([x, onehot], -1))
        return dist.Normal(h[..., :D], nn.functional.softplus(h[..., D:]) + 0.1).to_event(1)


def _program(placement):
    torch.manual_seed(0)
    if placement == "model":
        return Mixture("parallel"), Guide(None)
    return Mixture(), Guide(placement)


def _ours(model, guide, x, seed=1, objective=None, **kwargs):
    objective = objective or InfoELBO()
    objective.terms(model, guide, x)  # the first call finds the annotations; every later one enumerates
    torch.manual_seed(seed)
    return objective.terms(model, guide, x, **kwargs)


@pytest.mark.parametrize("placement", ["parallel", "sequential", "model"])
def test_beta_one_is_trace_enum_elbo_in_value_and_gradient(placement):
    model, guide = _program(placement)
    x = torch.randn(9, X)
    params = [*model.parameters(), *guide.parameters()]
    torch.manual_seed(1)
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    their_grads = torch.autograd.grad(theirs, params, allow_unused=True)
    terms = _ours(model, guide, x)
    our_grads = torch.autograd.grad(terms.surrogate, params, allow_unused=True)
    assert float(terms.loss) == pytest.approx(float(theirs.detach()), rel=1e-5)
    assert float(terms.surrogate.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5)
    for ours, reference in zip(our_grads, their_grads, strict=True):
        if reference is None:
            assert ours is None or not ours.abs().any()
        else:
            torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    # the breakdown adds up to the bound, and a discrete site in the guide has a rate of its own
    values = terms.values
    assert float(values["elbo"]) == pytest.approx(-float(theirs.detach()) / x.shape[0], rel=1e-5)
    assert ("rate/y" in values) == (placement != "model")


def test_guide_enumerated_rates_are_the_closed_form_kls_and_beta_weights_them():
    model, guide = _program("parallel")
    x = torch.randn(6, X)
    objective = InfoELBO(analytic_kl=True)
    plain = _ours(model, guide, x, objective=objective)
    torch.manual_seed(1)
    weighted = objective.terms(*bottleneck(model, guide, {"y": 2.5, "z": 4.0}), x)
    # by hand: KL(q(y|x) || p(y)) and Σ_y q(y|x) KL(q(z|x,y) || p(z|y)), per data point
    torch.set_grad_enabled(False)
    q_y = dist.Categorical(logits=guide.classifier(x))
    rate_y = kl_divergence(q_y, dist.Categorical(logits=model.logits.expand(6, K)))
    rate_z = sum(
        q_y.probs[:, k] * kl_divergence(guide.q_z(x, k), dist.Normal(model.means[k], 1.0).to_event(1)) for k in range(K)
    )
    assert float(plain.values["rate/y"]) == pytest.approx(float(rate_y.mean()), rel=1e-5)
    assert float(plain.values["rate/z"]) == pytest.approx(float(rate_z.mean()), rel=1e-5)
    # the distortion is the same draw in both calls, so β only adds (β - 1) · rate per site, as written by hand
    expected = float(plain.loss) + float(1.5 * rate_y.sum() + 3.0 * rate_z.sum())
    assert float(weighted.loss) == pytest.approx(expected, rel=1e-5)
    assert float(weighted.values["rate/y"]) == pytest.approx(float(plain.values["rate/y"]), rel=1e-6)
    torch.set_grad_enabled(True)


def test_model_enumerated_site_gives_its_dependents_their_marginals_and_their_own_weights():
    model, guide = _program("model")
    x = torch.randn(5, X)
    objective = InfoELBO()
    objective.terms(model, guide, x)
    torch.manual_seed(3)
    weighted = objective.terms(*bottleneck(model, guide, {"z": 3.0}), x)
    torch.manual_seed(3)
    torch.set_grad_enabled(False)
    q_z = pyro.poutine.trace(guide).get_trace(x).nodes["z"]  # the same draw the objective used
    z = q_z["value"]
    log_prior = torch.logsumexp(
        torch.stack([dist.Normal(model.means[k], 1.0).to_event(1).log_prob(z) for k in range(K)])
        + model.logits.log_softmax(0)[:, None],
        0,
    )
    distortion = -dist.Normal(model.decoder(z), NOISE).to_event(1).log_prob(x)
    rate = q_z["fn"].log_prob(z) - log_prior
    assert float(weighted.loss) == pytest.approx(float((distortion + 3.0 * rate).sum()), rel=1e-5)
    assert float(weighted.values["rate/z"]) == pytest.approx(float(rate.mean()), rel=1e-5)
    assert float(weighted.values["distortion"]) == pytest.approx(float(distortion.mean()), rel=1e-5)
    torch.set_grad_enabled(True)


@pytest.mark.parametrize("placement", ["parallel", "model"])
def test_importance_weighted_bound_reaches_the_exact_marginal_likelihood(placement):
    model, guide = _program(placement)
    with torch.no_grad():  # a broad proposal that covers every component: q(y|x) uniform, q(z|x,y) = N(0, 3²)
        for parameter in guide.parameters():
            parameter.zero_()
        guide.encoder.bias[D:] = math.log(math.expm1(2.9))
    x = torch.randn(4, X) * 2
    torch.manual_seed(0)
    estimate = importance_nll(model, guide, x, samples=20000, batch_size=4, particles_per_pass=5000)
    exact = -model.log_marginal(x).detach()
    # with 20,000 samples from this broad proposal the estimate's sd is at most 0.06 nats (10 seeds, measured);
    # a sum over y left out, or counted twice, moves it by log 3 or more
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.15)


def _refusal(model, guide, x, objective=None, **handlers):
    objective = objective or InfoELBO()
    if handlers:
        model, guide = bottleneck(model, guide, **handlers)
    with pytest.raises(ValueError) as raised:
        objective.terms(model, guide, x)
    return str(raised.value)


def test_refusals_name_what_enumeration_cannot_be_combined_with():
    x = torch.randn(6, X)
    model, guide = _program("model")
    message = _refusal(model, guide, x, anchors={"z": torch.tensor([1.0, 2.0])})
    assert "anchor weights on latent site 'z'" in message and "enumerate them in the guide" in message.lower()
    model, guide = _program("parallel")
    message = _refusal(model, guide, x, objective=TotalCorrelationELBO(latent_site="z"))
    assert "whose draw or prior varies with an enumerated site" in message


class InnerPlateMixture(nn.Module):
    """y summed out in the model; z's dimensions in a plate of their own inside the data plate."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(K))
        self.means = nn.Parameter(2 * torch.randn(K, D))
        self.decoder = nn.Linear(D, X)

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", x.shape[0], dim=-1):
            prior = dist.Categorical(logits=self.logits.expand(x.shape[0], K))
            label = pyro.sample("y", prior, infer={"enumerate": "parallel"})
            # enumerated, the label is (K, 1, 1): its size-1 "dims" dimension goes before the means' D is moved there
            label = label[..., 0, :] if label.dim() > 1 else label
            with pyro.plate("dims", D, dim=-2):
                z = pyro.sample("z", dist.Normal(self.means[label].movedim(-1, -2), 1.0))
            pyro.sample("x", dist.Normal(self.decoder(z.movedim(-2, -1)), 1.0).to_event(1), obs=x)


class InnerPlateGuide(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(X, 2 * D)

    def forward(self, x, y=None, index=None, size=None):
        with pyro.plate("data", x.shape[0], dim=-1):
            h = self.encoder(x)
            with pyro.plate("dims", D, dim=-2):
                pyro.sample("z", dist.Normal(h[..., :D].T, nn.functional.softplus(h[..., D:]).T + 0.1))


def test_a_dependent_site_in_an_inner_plate_gets_its_marginal_rate():
    torch.manual_seed(0)
    model, guide = InnerPlateMixture(), InnerPlateGuide()
    x = torch.randn(5, X)
    terms = _ours(model, guide, x, seed=3)
    torch.manual_seed(3)
    with torch.no_grad():
        site = pyro.poutine.trace(guide).get_trace(x).nodes["z"]
        z = site["value"]  # (D, B)
        per_component = [dist.Normal(model.means[k][:, None], 1.0).log_prob(z).sum(0) for k in range(K)]
        log_prior = torch.logsumexp(torch.stack(per_component) + model.logits.log_softmax(0)[:, None], 0)
        rate = site["fn"].log_prob(z).sum(0) - log_prior
        distortion = -dist.Normal(model.decoder(z.T), 1.0).to_event(1).log_prob(x)
    assert float(terms.values["rate/z"]) == pytest.approx(float(rate.mean()), rel=1e-5)
    assert float(terms.values["elbo"]) == pytest.approx(-float((rate + distortion).mean()), rel=1e-5)


def test_sequential_enumeration_refuses_batch_terms_and_capacity():
    model, guide = _program("sequential")
    x = torch.randn(6, X)
    message = _refusal(model, guide, x, objective=TotalCorrelationELBO(latent_site="y"))
    assert "enumerate in parallel" in message
    assert "enumerate in parallel" in _refusal(model, guide, x, capacity=(10.0, 5.0))
