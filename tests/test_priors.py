"""Priors: normalisation, samples against densities, known aggregates, shapes, saving, dtype and gradients."""

import io
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pyroib.priors import (
    AggregatePosterior,
    FactorisedAggregatePosterior,
    FlowPrior,
    JointAggregatePosterior,
    LearnedGaussian,
    MixtureOfGaussians,
    StandardNormal,
    VampPrior,
    prior_from_name,
    require_factorised,
)

DATA_DIM = 4
FACTORISED = {
    "standard": True,
    "learned": True,
    "mixture": False,
    "vamp": False,
    "flow": False,
    "aggregate-factorised": True,
    "aggregate-joint": False,
}
KINDS = list(FACTORISED)


@pytest.fixture(autouse=True)
def _seeded():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield


class GaussianEncoder(nn.Module):
    """q(z|u) = N(loc(u), diag scale(u)^2); scales kept above 0.3 so that grids resolve every component."""

    def __init__(self, data_dim: int, latent_dim: int):
        super().__init__()
        self.net = nn.Linear(data_dim, 2 * latent_dim)

    def forward(self, u):
        loc, raw = self.net(u.flatten(1)).chunk(2, dim=-1)
        return loc, 0.3 + F.softplus(raw)


def random_codes(n, latent_dim):
    return torch.randn(n, latent_dim), 0.4 + 0.6 * torch.rand(n, latent_dim)


BUILDERS = {
    "standard": lambda d, enc: StandardNormal(d),
    "learned": lambda d, enc: LearnedGaussian(d),
    "mixture": lambda d, enc: MixtureOfGaussians(d, n_components=3),
    "vamp": lambda d, enc: VampPrior(
        enc or GaussianEncoder(DATA_DIM, d), (DATA_DIM,), n_pseudo_inputs=6, init=torch.rand(6, DATA_DIM)
    ),
    "flow": lambda d, enc: FlowPrior(d, n_flows=2, hidden=(16,)),
    "aggregate-factorised": lambda d, enc: AggregatePosterior.fit(*random_codes(20, d), joint=False),
    "aggregate-joint": lambda d, enc: AggregatePosterior.fit(*random_codes(20, d), joint=True),
}


def make_prior(kind, latent_dim, encoder=None):
    """A prior moved away from its initial values, so that the tests see learned parameters at work."""
    prior = BUILDERS[kind](latent_dim, encoder)
    with torch.no_grad():
        if kind == "learned":
            prior.loc.copy_(torch.linspace(-0.5, 0.7, latent_dim))
            prior.log_scale.copy_(torch.linspace(-0.4, 0.3, latent_dim))
        if kind == "mixture":
            prior.logits.add_(0.5 * torch.randn(prior.logits.shape))
            prior.log_scales.add_(0.4 + 0.1 * torch.randn(prior.log_scales.shape))
        if kind == "flow":
            # Freshly initialised splines can be steep enough to make density spikes narrower than the test grids;
            # shrinking every parameter keeps the flow resolvable and still non-Gaussian (about 0.4 nats from N(0, I)).
            for parameter in prior.parameters():
                parameter.mul_(0.3)
    return prior


def to_float64(prior):
    if isinstance(prior, VampPrior):
        prior.encoder.to(torch.float64)
    return prior.to(torch.float64)


def grid(latent_dim, half_width=7.0):
    """Cell centres of a uniform grid over [-half_width, half_width]^latent_dim, and the cell volume."""
    step = 0.005 if latent_dim == 1 else 0.05
    axis = torch.arange(-half_width + step / 2, half_width, step, dtype=torch.float64)
    points = torch.cartesian_prod(*[axis] * latent_dim).reshape(-1, latent_dim)
    return points, step**latent_dim


def moments_and_standard_errors(z):
    """Means and second moments E[z_i z_j] (i <= j) of samples, with their Monte Carlo standard errors."""
    i, j = torch.triu_indices(z.shape[1], z.shape[1])
    stats = torch.cat([z, z[:, i] * z[:, j]], dim=1)
    return stats.mean(0), stats.std(0) / math.sqrt(len(z))


# Grid tolerance: priors under test have locs within 3 of 0 and scales in [0.3, 1.5] (flows are the identity outside
# [-3, 3]), so the mass outside the box of half-width 7 is below 1e-5. The midpoint rule is spectrally accurate for
# the smooth Gaussian mixtures; the splines' densities have a derivative that jumps at the knots, which leaves an
# error of order step^2, measured at 6e-4 for the 2-d flow at step 0.05 (2e-4 at 0.02). Hence 2e-3 on the mass.
MASS_TOLERANCE = 2e-3


@pytest.mark.parametrize("kind", KINDS)
def test_one_dimensional_density_integrates_to_one(kind):
    prior = to_float64(make_prior(kind, 1))
    points, cell = grid(1)
    with torch.no_grad():
        mass = prior(len(points)).log_prob(points).exp().sum() * cell
    assert abs(mass.item() - 1.0) < MASS_TOLERANCE


@pytest.mark.parametrize("kind", KINDS)
def test_two_dimensional_density_integrates_to_one_and_matches_its_samples(kind):
    prior = to_float64(make_prior(kind, 2))
    points, cell = grid(2)
    with torch.no_grad():
        density_weights = prior(len(points)).log_prob(points).exp() * cell
        samples = prior(20_000).sample()
    assert abs(density_weights.sum().item() - 1.0) < MASS_TOLERANCE
    i, j = torch.triu_indices(2, 2)
    grid_moments = density_weights @ torch.cat([points, points[:, i] * points[:, j]], dim=1)
    sample_moments, standard_errors = moments_and_standard_errors(samples)
    assert ((sample_moments - grid_moments).abs() < 5 * standard_errors + MASS_TOLERANCE).all()


@pytest.mark.parametrize("kind", KINDS)
def test_density_integrates_to_one_by_importance_sampling_in_four_dimensions(kind):
    # E_q[p(z) / q(z)] = 1 for any proposal q with heavier tails than p; the standard error is estimated from the
    # same weights, and bounded so that the check keeps its power (measured 0.005 to 0.016 at this n).
    latent_dim, n = 4, 20_000
    prior = to_float64(make_prior(kind, latent_dim))
    proposal = dist.Normal(torch.zeros(latent_dim, dtype=torch.float64), 1.5).to_event(1)
    z = proposal.sample((n,))
    with torch.no_grad():
        weights = (prior(n).log_prob(z) - proposal.log_prob(z)).exp()
    estimate, standard_error = weights.mean().item(), (weights.std() / math.sqrt(n)).item()
    assert standard_error < 0.02
    assert abs(estimate - 1.0) < 4 * standard_error


@pytest.mark.parametrize("joint", [False, True])
def test_aggregate_fast_sampler_matches_closed_form_moments(joint):
    loc, scale = random_codes(30, 3)
    prior = AggregatePosterior.fit(loc.double(), scale.double(), joint=joint)
    z = prior.sample(40_000, generator=torch.Generator().manual_seed(1))
    mean = loc.double().mean(0)
    second = (loc.double().T @ loc.double()) / len(loc) if joint else torch.outer(mean, mean)
    second.diagonal().copy_((loc.double() ** 2 + scale.double() ** 2).mean(0))
    i, j = torch.triu_indices(3, 3)
    sample_stats, standard_errors = moments_and_standard_errors(z)
    expected = torch.cat([mean, second[i, j]])
    assert ((sample_stats - expected).abs() < 5 * standard_errors).all()


@pytest.mark.parametrize("joint", [False, True])
def test_aggregate_of_a_gaussian_encoder_is_the_convolved_gaussian(joint):
    # loc_n ~ N(0, a^2), scale s: the aggregate tends to N(0, a^2 + s^2) per dim. Its density at z is an average of
    # N = 10,000 kernels, off by about sqrt(E[kernel^2] / (N p(z)^2)): 1.3% per dim near the centre, 2% for the 3-d
    # joint mixture, more in the tails. Measured mean gaps: 0.026 (factorised) and 0.045 nats (joint); ignoring the
    # encoder's scale s (N(0, a^2) instead) would give about 0.2. The variance pins the scale to 3% (4 standard errors).
    a, s, latent_dim, n = 1.0, 0.5, 3, 10_000
    prior = AggregatePosterior.fit(a * torch.randn(n, latent_dim), torch.full((n, latent_dim), s), joint=joint)
    target = dist.Normal(torch.zeros(latent_dim), math.sqrt(a**2 + s**2)).to_event(1)
    z = target.sample((200,))
    with torch.no_grad():
        gap = (prior(200).log_prob(z) - target.log_prob(z)).abs()
    assert gap.mean() < 0.1
    samples = prior.sample(50_000)
    assert torch.allclose(samples.var(0), torch.full((latent_dim,), a**2 + s**2), rtol=0.03)


def test_factorised_aggregate_forgets_correlations_and_joint_keeps_them():
    shared = torch.randn(20_000, 1)
    loc, scale = shared.expand(-1, 2), torch.full((20_000, 2), 0.5)
    for joint, expected in [(False, 0.0), (True, 1.0 / 1.25)]:
        samples = AggregatePosterior.fit(loc, scale, joint=joint).sample(20_000)
        assert abs(torch.corrcoef(samples.T)[0, 1].item() - expected) < 0.03


def test_aggregate_subsampling_keeps_pairs_of_loc_and_scale():
    loc = torch.randn(1000, 2)
    prior = AggregatePosterior.fit(loc, loc.abs() + 1.0, max_components=100, generator=torch.Generator().manual_seed(3))
    assert prior.n_components == 100
    rows = (prior.loc[:, None, :] == loc[None]).all(-1).float().argmax(1)
    assert torch.equal(prior.loc, loc[rows]) and len(set(rows.tolist())) == 100
    assert torch.equal(prior.scale, loc[rows].abs() + 1.0)
    assert AggregatePosterior.fit(loc, loc.abs() + 1.0, max_components=5000).n_components == 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("data_range", [(0.0, 1.0), None])
@pytest.mark.parametrize("range_map", ["sigmoid", "clamp"])
def test_vamp_prior_at_data_points_is_their_joint_mixture_of_encodings(dtype, data_range, range_map):
    encoder = GaussianEncoder(DATA_DIM, 3).to(dtype)
    points = 0.01 + 0.98 * torch.rand(7, DATA_DIM, dtype=dtype)
    prior = VampPrior(encoder, (DATA_DIM,), n_pseudo_inputs=7, init=points, data_range=data_range, range_map=range_map)
    z = torch.randn(11, 3, dtype=dtype)
    with torch.no_grad():
        loc, scale = encoder(points)
        per_point = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
        expected = torch.logsumexp(per_point, dim=1) - math.log(7)
        assert torch.allclose(prior(11).log_prob(z), expected, atol=1e-5, rtol=0)
        empirical = AggregatePosterior.fit(loc, scale, joint=True)
        assert torch.allclose(prior(11).log_prob(z), empirical(11).log_prob(z), atol=1e-5, rtol=0)


def test_vamp_prior_owns_only_its_pseudo_inputs_and_keeps_them_in_range():
    encoder = GaussianEncoder(DATA_DIM, 2).train()
    binary = torch.randint(0, 2, (5, DATA_DIM)).float()
    prior = VampPrior(encoder, (DATA_DIM,), n_pseudo_inputs=5, init=binary)
    assert [name for name, _ in prior.named_parameters()] == ["pseudo_raw"]
    assert list(prior.state_dict()) == ["pseudo_raw"] and encoder.training
    assert torch.allclose(prior.pseudo_inputs, binary.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    with torch.no_grad():
        prior.pseudo_raw.mul_(100.0)
    assert ((prior.pseudo_inputs >= 0) & (prior.pseudo_inputs <= 1)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_factorised_flag_and_require_factorised(kind):
    prior = make_prior(kind, 3)
    assert prior.factorised is FACTORISED[kind] and type(prior).factorised is FACTORISED[kind]
    if FACTORISED[kind]:
        require_factorised(prior)
    else:
        with pytest.raises(ValueError, match=f"{type(prior).__name__} does not.*StandardNormal"):
            require_factorised(prior, what="anchor weights")


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_follow_the_contract(kind):
    prior = make_prior(kind, 3)
    d = prior(5)
    z = d.sample()
    assert d.batch_shape == (5,) and d.event_shape == (3,) and z.shape == (5, 3) and d.log_prob(z).shape == (5,)
    if prior.factorised:
        assert isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1
        assert d.base_dist.batch_shape == (5, 3)
        assert torch.allclose(d.base_dist.log_prob(z).sum(-1), d.log_prob(z))


def test_per_dimension_log_densities_are_the_marginals():
    z = torch.randn(4, 3)
    learned = make_prior("learned", 3)
    expected = torch.distributions.Normal(learned.loc, learned.log_scale.exp()).log_prob(z)
    assert torch.allclose(learned(4).base_dist.log_prob(z), expected)
    loc, scale = random_codes(9, 3)
    per_code = torch.distributions.Normal(loc, scale).log_prob(z[:, None, :])
    expected = torch.logsumexp(per_code, dim=1) - math.log(9)
    assert torch.allclose(AggregatePosterior.fit(loc, scale)(4).base_dist.log_prob(z), expected, atol=1e-6)


def save_and_load(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip(kind):
    prior = make_prior(kind, 3)
    loaded = save_and_load(prior.state_dict())
    torch.manual_seed(1)
    fresh = BUILDERS[kind](3, getattr(prior, "encoder", None))
    z = torch.randn(6, 3)
    if kind != "standard":
        assert not torch.allclose(fresh(6).log_prob(z), prior(6).log_prob(z))
    fresh.load_state_dict(loaded)
    assert torch.allclose(fresh(6).log_prob(z), prior(6).log_prob(z))
    if kind.startswith("aggregate"):
        rebuilt = AggregatePosterior.from_state_dict(loaded)
        assert type(rebuilt) is type(prior)
        assert torch.allclose(rebuilt(6).log_prob(z), prior(6).log_prob(z))


def test_aggregate_state_dict_refuses_the_other_form():
    joint = AggregatePosterior.fit(*random_codes(5, 2), joint=True)
    with pytest.raises(ValueError, match="from_state_dict"):
        FactorisedAggregatePosterior(5, 2).load_state_dict(joint.state_dict())
    assert isinstance(JointAggregatePosterior.fit(*random_codes(5, 2)), JointAggregatePosterior)


@pytest.mark.parametrize("kind", KINDS)
def test_parameters_and_buffers_follow_dtype(kind):
    prior = to_float64(make_prior(kind, 3))
    tensors = [t for t in [*prior.parameters(), *prior.buffers()] if t.is_floating_point()]
    assert tensors or kind == "standard"
    assert all(t.dtype == torch.float64 for t in tensors)
    d = prior(4)
    assert d.sample().dtype == torch.float64
    assert d.log_prob(torch.randn(4, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("kind", ["learned", "mixture", "vamp", "flow"])
def test_gradients_reach_every_learned_parameter(kind):
    prior = make_prior(kind, 3)
    owned = list(prior.parameters()) + list(getattr(prior, "encoder", nn.Identity()).parameters())
    (-prior(8).log_prob(torch.randn(8, 3)).sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 and torch.isfinite(p.grad).all() for p in owned)


def test_learned_gaussian_gradient_matches_closed_form():
    prior = make_prior("learned", 3)
    z = torch.randn(8, 3)
    prior(8).log_prob(z).sum().backward()
    scale = prior.log_scale.exp().detach()
    assert torch.allclose(prior.loc.grad, ((z - prior.loc.detach()) / scale**2).sum(0), atol=1e-5)
    assert torch.allclose(prior.log_scale.grad, (((z - prior.loc.detach()) / scale) ** 2 - 1).sum(0), atol=1e-5)


def test_prior_from_name():
    encoder = GaussianEncoder(DATA_DIM, 3)
    kwargs = {"vamp": {"encoder": encoder, "data_shape": (DATA_DIM,), "n_pseudo_inputs": 4}}
    expected = {
        "standard": StandardNormal,
        "learned": LearnedGaussian,
        "mixture": MixtureOfGaussians,
        "vamp": VampPrior,
        "flow": FlowPrior,
    }
    for name, cls in expected.items():
        prior = prior_from_name(name, 3, **kwargs.get(name, {}))
        assert type(prior) is cls and prior.latent_dim == 3
    with pytest.raises(ValueError, match="standard, learned, mixture, vamp, flow"):
        prior_from_name("gaussian", 3)
    with pytest.raises(TypeError, match="encoder"):
        prior_from_name("vamp", 3)
    with pytest.raises(ValueError, match="latent_dim=2"):
        prior_from_name("vamp", 2, **kwargs["vamp"])


def test_bad_input_is_refused_with_a_clear_error():
    encoder = GaussianEncoder(DATA_DIM, 2)
    cases = [
        (TypeError, lambda: StandardNormal(2.0)),
        (ValueError, lambda: LearnedGaussian(0)),
        (ValueError, lambda: StandardNormal(2)(0)),
        (ValueError, lambda: MixtureOfGaussians(2, n_components=0)),
        (TypeError, lambda: AggregatePosterior(3, 2)),
        (ValueError, lambda: AggregatePosterior.fit(torch.zeros(3, 2), torch.ones(3, 1))),
        (ValueError, lambda: AggregatePosterior.fit(torch.zeros(3, 2), -torch.ones(3, 2))),
        (ValueError, lambda: AggregatePosterior.from_state_dict({"loc": torch.zeros(3, 2)})),
        (ValueError, lambda: VampPrior(encoder, (DATA_DIM,), n_pseudo_inputs=3, init=torch.rand(2, DATA_DIM))),
        (ValueError, lambda: VampPrior(encoder, (DATA_DIM,), n_pseudo_inputs=2, init=torch.full((2, DATA_DIM), 2.0))),
        (ValueError, lambda: VampPrior(lambda u: (u, u[:, :1]), (DATA_DIM,), n_pseudo_inputs=2)),
        (TypeError, lambda: VampPrior("encoder", (DATA_DIM,))),
    ]
    for error, build in cases:
        with pytest.raises(error):
            build()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_priors_follow_the_module_to_cuda(kind):
    prior = make_prior(kind, 3)
    if isinstance(prior, VampPrior):
        prior.encoder.cuda()
    d = prior.cuda()(4)
    z = d.sample()
    assert z.device.type == "cuda" and d.log_prob(z).device.type == "cuda"


@pytest.mark.parametrize("kind", KINDS)
def test_prior_scores_a_latent_site_of_a_pyro_model(kind):
    prior, n, idx = make_prior(kind, 3), 10, torch.tensor([1, 4, 7])

    def model():
        with pyro.plate("data", n, subsample=idx):
            pyro.sample("z", prior(len(idx)))

    def guide():
        with pyro.plate("data", n, subsample=idx):
            pyro.sample("z", dist.Normal(torch.zeros(len(idx), 3), 1.0).to_event(1))

    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide)
    assert torch.isfinite(loss)
    if list(prior.parameters()):
        loss.backward()
        assert all(p.grad is not None for p in prior.parameters())


def test_vamp_clamp_map_moves_pseudo_inputs_started_at_saturated_pixels():
    """The sigmoid map starts binary data at 0.001 / 0.999, where Adam's steps in raw space barely move them; the
    clamp map starts them exactly at the data and moves every pixel by about the learning rate."""
    binary = torch.randint(0, 2, (5, DATA_DIM)).float()
    moved = {}
    for range_map in ("sigmoid", "clamp"):
        torch.manual_seed(0)
        prior = VampPrior(
            GaussianEncoder(DATA_DIM, 2), (DATA_DIM,), n_pseudo_inputs=5, init=binary, range_map=range_map
        )
        start = prior.pseudo_inputs.detach().clone()
        optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
        for _ in range(10):
            optimizer.zero_grad()
            # pull every pixel towards 1/2, away from both bounds
            (prior.pseudo_inputs - 0.5).pow(2).sum().backward()
            optimizer.step()
        moved[range_map] = (prior.pseudo_inputs.detach() - start).abs()
        assert ((prior.pseudo_inputs >= 0) & (prior.pseudo_inputs <= 1)).all()
        if range_map == "clamp":
            assert torch.allclose(start, binary.clamp(1e-3, 1 - 1e-3))
    assert torch.allclose(moved["clamp"], torch.full_like(moved["clamp"], 0.1), rtol=0.05)  # 10 steps of lr
    assert moved["sigmoid"].max() < 1e-3
    # pushed past a bound, a pixel stays at it, and comes back as soon as its gradient points inside
    prior = VampPrior(
        GaussianEncoder(DATA_DIM, 2),
        (DATA_DIM,),
        n_pseudo_inputs=1,
        range_map="clamp",
        init=torch.full((1, DATA_DIM), 0.5),
    )
    with torch.no_grad():
        prior.pseudo_raw.fill_(1.5)
    (grad,) = torch.autograd.grad(-prior.pseudo_inputs.sum(), prior.pseudo_raw)  # descent would push it further out
    assert prior.pseudo_inputs.eq(1).all() and grad.eq(0).all()
    (grad,) = torch.autograd.grad((prior.pseudo_inputs - 0.5).pow(2).sum(), prior.pseudo_raw)
    assert grad.gt(0).all()  # a descent step lowers raw, back towards the range
    with pytest.raises(ValueError, match="range_map must be one of sigmoid, clamp"):
        VampPrior(GaussianEncoder(DATA_DIM, 2), (DATA_DIM,), n_pseudo_inputs=5, range_map="tanh")
