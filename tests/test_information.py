"""Information-term objectives: their terms equal the estimators on the same trace values, they reduce to InfoELBO
at plain-VAE weights, gradients reach the encoder, critics checkpoint exactly, and bad settings fail clearly."""

import io
import math

import pyro
import pytest
import torch

from pyroib import estimators
from pyroib.critics import kl_from_critic
from pyroib.guides.vae import Guide
from pyroib.models.vae import Config, Model
from pyroib.objectives import (
    MMDELBO,
    AdversarialELBO,
    BoundedIBELBO,
    FactorVAEELBO,
    InfoELBO,
    MarginalKLELBO,
    TotalCorrelationELBO,
)
from pyroib.priors import MixtureOfGaussians

N, B = 200, 16
CONFIG = Config(data_shape=(1, 4, 4), latent_dim=3, hidden=(16,))
SMALL_CRITIC = {"critic_width": 16, "critic_depth": 1}


@pytest.fixture
def setup():
    torch.manual_seed(1)
    model, guide = Model(CONFIG), Guide(CONFIG)
    x = torch.bernoulli(torch.rand(B, 1, 4, 4))
    index = torch.randperm(N)[:B]
    return model, guide, x, index


def traces(objective, model, guide, x, index):
    model, guide = objective.prepare(model, guide)
    return next(objective._get_traces(model, guide, (x, None), {"index": index, "size": N}))


def test_rate_decomposition_terms_equal_the_estimator_on_the_trace_codes(setup):
    model, guide, x, index = setup
    objective = TotalCorrelationELBO(alpha=0.5, tc_weight=6.0, gamma=2.0)
    model_trace, guide_trace = traces(objective, model, guide, x, index)
    terms = objective.information_terms(model_trace, guide_trace, N)
    loc, scale = guide.encode(x)
    expected = estimators.rate_decomposition(guide_trace.nodes["z"]["value"], loc, scale, N)
    for name, weight in (("index_code_mi", -0.5), ("total_correlation", 5.0), ("dimwise_kl", 1.0)):
        assert terms[name][0] == weight
        assert torch.allclose(terms[name][1], expected[name], atol=1e-6), name


def test_tcvae_loss_is_distortion_plus_weighted_mi_tc_and_dimwise_kl(setup):
    model, guide, x, index = setup
    alpha, beta, gamma = 0.5, 6.0, 2.0
    result = TotalCorrelationELBO(alpha, beta, gamma).terms(model, guide, x, index=index, size=N)
    v = result.values
    # with a Monte Carlo rate, rate = MI + TC + dimKL holds sample by sample, so the reweighting is exact
    assert float(v["rate"]) == pytest.approx(
        float(v["index_code_mi"] + v["total_correlation"] + v["dimwise_kl"]), abs=1e-4
    )
    expected = v["distortion"] + alpha * v["index_code_mi"] + beta * v["total_correlation"] + gamma * v["dimwise_kl"]
    assert float(result.loss) / N == pytest.approx(float(expected), rel=1e-5)


def test_marginal_kl_and_mmd_terms_equal_the_estimators(setup):
    model, guide, x, index = setup
    objective = MarginalKLELBO(marginal_kl_weight=2.0, estimator="mws")
    model_trace, guide_trace = traces(objective, model, guide, x, index)
    z, (loc, scale) = guide_trace.nodes["z"]["value"], guide.encode(x)
    weight, value = objective.information_terms(model_trace, guide_trace, N)["marginal_kl"]
    assert weight == 2.0
    assert torch.allclose(value, estimators.marginal_kl(z, loc, scale, N, method="mws"), atol=1e-6)
    pyro.set_rng_seed(5)
    _, mmd_value = MMDELBO(mmd_weight=3.0, kernel="imq").information_terms(model_trace, guide_trace, N)["mmd"]
    pyro.set_rng_seed(5)
    draws = model_trace.nodes["z"]["fn"].rsample()
    assert torch.allclose(mmd_value, estimators.mmd(z, draws, kernel="imq"), atol=1e-6)


def test_critic_terms_equal_the_critic_estimates(setup):
    model, guide, x, index = setup
    objective = FactorVAEELBO(tc_weight=3.0, **SMALL_CRITIC)
    model_trace, guide_trace = traces(objective, model, guide, x, index)
    weight, value = objective.information_terms(model_trace, guide_trace, N)["critic_tc"]
    z = guide_trace.nodes["z"]["value"]
    assert weight == 3.0 and torch.allclose(value, kl_from_critic(objective.critics["tc"], z))
    aae = AdversarialELBO(marginal_weight=2.0, **SMALL_CRITIC)
    weight, value = aae.information_terms(model_trace, guide_trace, N)["critic_marginal_kl"]
    assert weight == 2.0 and torch.allclose(value, kl_from_critic(aae.critics["marginal"], z))


PLAIN_VAE = [
    TotalCorrelationELBO(alpha=1.0, tc_weight=1.0, gamma=1.0),
    MarginalKLELBO(marginal_kl_weight=0.0),
    MMDELBO(mmd_weight=0.0),
    FactorVAEELBO(tc_weight=0.0, **SMALL_CRITIC),
    BoundedIBELBO(marginal_kl_weight=0.0, data_kl_weight=0.0, **SMALL_CRITIC),
    AdversarialELBO(marginal_weight=0.0, divergence="mmd"),
]


@pytest.mark.parametrize("objective", PLAIN_VAE, ids=lambda o: type(o).__name__)
def test_plain_vae_weights_give_infoelbo_loss_and_gradient(setup, objective):
    model, guide, x, index = setup
    results = []
    for obj in (InfoELBO(), objective):
        pyro.set_rng_seed(7)
        for p in [*model.parameters(), *guide.parameters()]:
            p.grad = None
        terms = obj.terms(model, guide, x, index=index, size=N)
        terms.surrogate.backward()
        results.append((terms.loss, [p.grad.clone() for p in [*model.parameters(), *guide.parameters()]]))
    (loss_ref, grads_ref), (loss, grads) = results
    assert torch.allclose(loss, loss_ref)
    assert all(torch.allclose(a, b) for a, b in zip(grads, grads_ref))


@pytest.mark.parametrize(
    "objective,name", [(TotalCorrelationELBO(), "total_correlation"), (FactorVAEELBO(**SMALL_CRITIC), "critic_tc")]
)
def test_tc_gradient_reaches_the_encoder_but_not_the_critic(setup, objective, name):
    model, guide, x, index = setup
    model_trace, guide_trace = traces(objective, model, guide, x, index)
    _, value = objective.information_terms(model_trace, guide_trace, N)[name]
    value.backward()
    grads = [p.grad for p in guide.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    for critic in getattr(objective, "critics", {}).values():
        assert all(p.grad is None and p.requires_grad for p in critic.parameters())


def test_auxiliary_step_trains_critics_only_and_checkpoint_restores_them_exactly(setup):
    model, guide, x, index = setup
    objective = BoundedIBELBO(marginal_estimator="critic", **SMALL_CRITIC)
    before = [p.clone() for p in [*model.parameters(), *guide.parameters()]]
    terms = objective.terms(model, guide, x, index=index, size=N)
    assert set(terms.critic_samples) == {"marginal", "data"}
    initial = {k: [p.clone() for p in c.parameters()] for k, c in objective.critics.items()}
    # an evaluation pass (no gradient) leaves no samples: critics learn only from training steps
    with torch.no_grad():
        assert objective.terms(model, guide, x, index=index, size=N).critic_samples == {}
    objective.auxiliary_step(terms)
    assert set(objective.critics) == {"marginal", "data"}
    for name, critic in objective.critics.items():
        assert any(not torch.equal(a, b) for a, b in zip(initial[name], critic.parameters())), name
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), *guide.parameters()]))
    buffer = io.BytesIO()
    torch.save(objective.state_dict(), buffer)
    buffer.seek(0)
    restored = BoundedIBELBO(marginal_estimator="critic", **SMALL_CRITIC)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    probe = torch.randn(5, 16)
    assert torch.equal(restored.critics["data"](probe), objective.critics["data"](probe))
    state, again = objective.critic_optimizers["data"].state_dict(), restored.critic_optimizers["data"].state_dict()
    assert all(torch.equal(state["state"][k]["exp_avg"], again["state"][k]["exp_avg"]) for k in state["state"])
    with pytest.raises(ValueError, match="critic-width"):
        BoundedIBELBO(critic_width=8, critic_depth=1).load_state_dict(objective.state_dict())


def test_deterministic_encoder_uses_the_posterior_mean(setup):
    model, guide, x, index = setup
    objective = AdversarialELBO(deterministic_encoder=True, **SMALL_CRITIC)
    model_trace, guide_trace = traces(objective, model, guide, x, index)
    assert torch.equal(guide_trace.nodes["z"]["value"], guide.encode(x)[0])
    objective.terms(model, guide, x, index=index, size=N).surrogate.backward()
    head = guide.encoder.head
    latent = CONFIG.latent_dim
    assert head.weight.grad[:latent].abs().sum() > 0 and head.weight.grad[latent:].abs().sum() == 0


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: TotalCorrelationELBO(tc_weight=-1.0), "tc_weight"),
        (lambda: TotalCorrelationELBO(alpha=float("nan")), "alpha"),
        (lambda: TotalCorrelationELBO(estimator="exact"), "estimator"),
        (lambda: MMDELBO(kernel="laplace"), "kernel"),
        (lambda: MMDELBO(mmd_weight=-0.1), "mmd_weight"),
        (lambda: AdversarialELBO(divergence="wasserstein"), "divergence"),
        (lambda: BoundedIBELBO(data_kl_weight=-2.0), "data_kl_weight"),
        (lambda: BoundedIBELBO(marginal_estimator="nope"), "marginal_estimator"),
        (lambda: FactorVAEELBO(critic_width=0), "critic_width"),
    ],
)
def test_bad_settings_fail_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_batch_of_one_and_joint_prior_fail_on_first_use_with_a_hint(setup):
    model, guide, x, index = setup
    with pytest.raises(ValueError, match="at least 2 points.*--batch-size"):
        TotalCorrelationELBO().terms(model, guide, x[:1], index=index[:1], size=N)
    mixture_model = Model(CONFIG, prior=MixtureOfGaussians(CONFIG.latent_dim, n_components=3))
    with pytest.raises(ValueError, match="factorises"):
        TotalCorrelationELBO(gamma=2.0).terms(mixture_model, guide, x, index=index, size=N)
    # at gamma = 1 a joint prior is fine: MI and TC are properties of q alone
    values = TotalCorrelationELBO(gamma=1.0).terms(mixture_model, guide, x, index=index, size=N).values
    assert "dimwise_kl" not in values and math.isfinite(float(values["total_correlation"]))


def test_bibae_data_term_reports_the_critic_kl_and_trains_the_decoder_by_the_non_saturating_loss(setup):
    """D's value is E_data[T] (the density-ratio estimate); its gradient, which reaches the decoder through the
    decoded prior draws, is that of E_Q[softplus(-T)], bounded by 1 per logit whatever the critic says."""
    from pyro import poutine
    from torch.nn import functional as F

    from pyroib.objectives import TermContext

    model, guide, x, index = setup
    objective = BoundedIBELBO(**SMALL_CRITIC)
    model_trace, guide_trace = traces(objective, model, guide, x, index)
    context = TermContext(model, guide, (x, None), {"index": index, "size": N})
    with pytest.raises(ValueError, match="through terms"):
        objective.information_terms(model_trace, guide_trace, N)
    _, value = objective.information_terms(model_trace, guide_trace, N, context)["critic_data_kl"]
    real = x.reshape(B, -1)
    assert torch.equal(context.critic_samples["data"][0], real)
    critic = objective.critics["data"]
    assert torch.allclose(value, critic(real).mean())
    with torch.no_grad():  # a critic far off its optimum: huge logits, where exp(T) would explode
        for p in critic.parameters():
            p.mul_(50.0)
    torch.manual_seed(5)
    _, value = objective.information_terms(model_trace, guide_trace, N, context)["critic_data_kl"]
    torch.manual_seed(5)  # the same prior draws: the decoded images D's gradient flows through
    fake = poutine.trace(model).get_trace(x, None, index=index, size=N).nodes["x"]["fn"].mean.reshape(B, -1)
    assert torch.equal(context.critic_samples["data"][1], fake.detach())
    decoder = list(model.decoder.parameters())
    ours = torch.autograd.grad(value, decoder, allow_unused=True, retain_graph=True)
    reference = torch.autograd.grad(F.softplus(-critic(fake)).mean(), decoder, allow_unused=True)
    for a, r in zip(ours, reference):
        assert (a is None) == (r is None)
        if a is not None:
            assert torch.isfinite(a).all() and torch.allclose(a, r)
    assert any(a is not None and a.abs().sum() > 0 for a in ours)
