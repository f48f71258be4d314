"""The ArviZ bridge against closed forms: a linear-Gaussian model whose exact posterior is the guide, a mixture with a
discrete latent site, and the evaluator's importance-weighted bound on a VAE."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyroib.arviz_bridge import from_pair, from_run, group_names, import_arviz, to_arviz
from pyroib.evaluate import importance_nll
from pyroib.run import RunSpec, build
from pyroib.train import train

DTYPE = torch.float64


class LinearGaussian(nn.Module):
    """z ~ N(0, I_D), x | z ~ N(W z + b, σ² I_P), one (z, x) per point of the data plate."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, noise: float):
        super().__init__()
        self.weight, self.bias, self.noise = weight, bias, noise

    def forward(self, x, y=None):
        latent_dim = self.weight.shape[1]
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent_dim, dtype=DTYPE), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.weight.T + self.bias, self.noise).to_event(1), obs=x)

    def posterior(self, x):
        """Exact p(z | x) = N(μ(x), Σ): Σ = (I + WᵀW/σ²)⁻¹, μ = Σ Wᵀ(x - b)/σ²."""
        precision = torch.eye(self.weight.shape[1], dtype=DTYPE) + self.weight.T @ self.weight / self.noise**2
        covariance = torch.linalg.inv(precision)
        mean = (x - self.bias) @ self.weight @ covariance.T / self.noise**2
        return mean, covariance

    def log_evidence(self, x):
        covariance = self.weight @ self.weight.T + self.noise**2 * torch.eye(self.weight.shape[0], dtype=DTYPE)
        return dist.MultivariateNormal(self.bias, covariance).log_prob(x)


class ScaledPosteriorGuide(nn.Module):
    """q(z | x) = N(μ(x), width² Σ): the exact posterior at width 1, too narrow below 1, too wide above."""

    def __init__(self, model: LinearGaussian, width: float = 1.0):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, x, y=None):
        mean, covariance = self.model.posterior(x)
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.MultivariateNormal(mean, scale_tril=self.width * torch.linalg.cholesky(covariance)))


def linear_gaussian(points: int, seed: int = 0):
    """A 2-d latent, 3-d observation model and ``points`` data points drawn from it."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.tensor([[1.5, -0.4], [0.3, 0.9], [-0.8, 0.6]], dtype=DTYPE)
    model = LinearGaussian(weight, torch.tensor([0.2, -0.1, 0.5], dtype=DTYPE), noise=0.7)
    z = torch.randn(points, 2, generator=generator, dtype=DTYPE)
    x = z @ weight.T + model.bias + model.noise * torch.randn(points, 3, generator=generator, dtype=DTYPE)
    return model, x


def test_container_has_groups_dims_and_coords():
    model, x = linear_gaussian(5)
    labels = torch.arange(5)
    data = from_pair(model, ScaledPosteriorGuide(model), x, labels, draws=40, point_index=[10, 11, 12, 13, 14])
    assert set(group_names(data)) == {
        "posterior",
        "posterior_predictive",
        "observed_data",
        "log_likelihood",
        "sample_stats",
        "constant_data",
    }
    assert data.posterior["z"].dims == ("chain", "draw", "point", "z_dim")
    assert dict(data.posterior.sizes) == {"chain": 1, "draw": 40, "point": 5, "z_dim": 2}
    assert data.posterior_predictive["x"].dims == ("chain", "draw", "point", "x_dim")
    assert data.observed_data["x"].dims == ("point", "x_dim")
    assert data.log_likelihood["x"].dims == ("chain", "draw", "point")
    assert data.sample_stats["log_weight"].dims == ("chain", "draw", "point")
    assert data.posterior["point"].values.tolist() == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(data.observed_data["x"].values, x.numpy())
    np.testing.assert_array_equal(data.constant_data["y"].values, labels.numpy())


def test_exact_posterior_weights_equal_the_log_evidence():
    model, x = linear_gaussian(6)
    data = from_pair(model, ScaledPosteriorGuide(model), x, draws=30)
    log_w = data.sample_stats["log_weight"].values[0]  # (draw, point)
    expected = model.log_evidence(x).numpy()
    np.testing.assert_allclose(log_w, np.broadcast_to(expected, log_w.shape), atol=1e-9)


def test_log_likelihood_and_replicates_belong_to_the_stored_draws():
    model, x = linear_gaussian(4)
    data = from_pair(model, ScaledPosteriorGuide(model, width=1.3), x, draws=2000)
    z = torch.as_tensor(data.posterior["z"].values[0])  # (draw, point, z_dim)
    mean = z @ model.weight.T + model.bias
    expected = dist.Normal(mean, model.noise).log_prob(x).sum(-1).numpy()
    np.testing.assert_allclose(data.log_likelihood["x"].values[0], expected, atol=1e-9)
    # x_rep ~ N(W z + b, σ²) at each stored draw: the residuals have mean 0 and sd σ
    residual = data.posterior_predictive["x"].values[0] - mean.numpy()
    standard_error = model.noise / math.sqrt(residual.size)
    assert abs(residual.mean()) < 4 * standard_error
    assert residual.std() == pytest.approx(model.noise, rel=0.03)


class Mixture(nn.Module):
    """c ~ Categorical(π), z | c ~ N(m_c, 1), x | z ~ N(z, σ²); its exact guide q(c | x) q(z | x, c)."""

    probs = torch.tensor([0.2, 0.5, 0.3], dtype=DTYPE)
    centres = torch.tensor([-3.0, 0.0, 4.0], dtype=DTYPE)
    noise = 0.5

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", dist.Categorical(self.probs))
            z = pyro.sample("z", dist.Normal(self.centres[c], 1.0))
            pyro.sample("x", dist.Normal(z, self.noise), obs=x)

    def component_posterior(self, x):
        """p(c | x) ∝ π_c N(x; m_c, 1 + σ²) and log p(x)."""
        joint = self.probs.log() + dist.Normal(self.centres, math.sqrt(1 + self.noise**2)).log_prob(x[:, None])
        return (joint - joint.logsumexp(-1, keepdim=True)).exp(), joint.logsumexp(-1)

    def guide(self, x, y=None):
        probs, _ = self.component_posterior(x)
        variance = 1 / (1 + 1 / self.noise**2)
        with pyro.plate("data", x.shape[0], dim=-1):
            c = pyro.sample("c", dist.Categorical(probs))
            pyro.sample("z", dist.Normal(variance * (self.centres[c] + x / self.noise**2), math.sqrt(variance)))


def test_discrete_latent_sites_are_drawn_from_the_guide():
    mixture = Mixture()
    x = torch.tensor([-2.5, 0.7, 2.0], dtype=DTYPE)
    data = from_pair(mixture, mixture.guide, x, draws=3000)
    component = data.posterior["c"]
    assert component.dims == ("chain", "draw", "point")
    assert np.issubdtype(component.dtype, np.integer)
    assert data.posterior["z"].dims == ("chain", "draw", "point")
    probs, log_evidence = mixture.component_posterior(x)
    frequencies = np.stack([(component.values[0] == k).mean(0) for k in range(3)], -1)
    np.testing.assert_allclose(frequencies, probs.numpy(), atol=0.03)
    log_w = data.sample_stats["log_weight"].values[0]
    np.testing.assert_allclose(log_w, np.broadcast_to(log_evidence.numpy(), log_w.shape), atol=1e-9)


def _tiny_spec(**changes) -> RunSpec:
    config = {"data_shape": [1, 8, 8], "latent_dim": 3, "hidden": [16]}
    return RunSpec(
        model="vae", dataset="synthetic", model_config=config, epochs=1, batch_size=200, device="cpu", **changes
    )


def test_iwae_bound_equals_the_evaluators_with_the_same_seed():
    built = build(_tiny_spec())
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(1)).bernoulli(
        generator=torch.Generator().manual_seed(2)
    )
    torch.manual_seed(3)
    nll = importance_nll(built.model, built.guide, x, samples=50, batch_size=5, particles_per_pass=50)
    state = torch.get_rng_state()
    data = from_pair(built.model, built.guide, x, draws=50, seed=3, batch_size=5)
    assert torch.equal(state, torch.get_rng_state()), "the bridge must leave the caller's random state alone"
    log_w = torch.as_tensor(data.sample_stats["log_weight"].values[0])
    iwae = log_w.logsumexp(0) - math.log(50)
    torch.testing.assert_close(iwae, -nll, atol=1e-5, rtol=0)


def test_az_summary_accepts_the_container():
    az = import_arviz()
    model, x = linear_gaussian(3)
    data = from_pair(model, ScaledPosteriorGuide(model), x, draws=500)
    table = az.summary(data, var_names=["z"])
    assert len(table) == 3 * 2
    mean, _ = model.posterior(x)
    np.testing.assert_allclose(table["mean"].values.reshape(3, 2), mean.numpy(), atol=0.15)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bridge") / "run"
    pyro.set_rng_seed(0)
    train(_tiny_spec(), out, progress=False)
    return out


def test_from_run_selects_points_of_a_split(tiny_run):
    from pyroib.data import load_dataset

    data = from_run(tiny_run, split="test", points=[3, 1, 4], draws=25, device="cpu")
    assert data.posterior["point"].values.tolist() == [3, 1, 4]
    test_x, _ = load_dataset("synthetic", binarize="dynamic").split("test")
    np.testing.assert_array_equal(data.observed_data["x"].values, test_x[[3, 1, 4]].numpy())
    assert dict(data.posterior.sizes) == {"chain": 1, "draw": 25, "point": 3, "z_dim": 3}
    assert from_run(tiny_run, points=4, draws=2, device="cpu").posterior.sizes["point"] == 4
    with pytest.raises(ValueError, match="indices"):
        from_run(tiny_run, points=[10_000], draws=2, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_gives_numpy_arrays(tiny_run):
    data = from_run(tiny_run, points=5, draws=25, device="cuda")
    cpu = from_run(tiny_run, points=5, draws=25, device="cpu")
    assert isinstance(data.posterior["z"].values, np.ndarray)
    assert data.observed_data["x"].shape == cpu.observed_data["x"].shape


def test_bad_input_is_refused():
    model, x = linear_gaussian(2)
    guide = ScaledPosteriorGuide(model)
    with pytest.raises(ValueError, match="draws"):
        from_pair(model, guide, x, draws=0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        from_pair(model, guide, x.tolist())
    with pytest.raises(ValueError, match="point_index"):
        from_pair(model, guide, x, draws=2, point_index=[1, 2, 3])

    def global_model(x, y=None):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("x", dist.Normal(0.0, scale).expand([x.shape[0], 3]).to_event(1), obs=x)

    def global_guide(x, y=None):
        pyro.sample("scale", dist.LogNormal(0.0, 0.1))

    with pytest.raises(ValueError, match="data plate"):
        from_pair(global_model, global_guide, x, draws=2)


def test_adapter_builds_a_datatree_through_the_arviz_1_api(monkeypatch):
    az = import_arviz()
    calls = []
    monkeypatch.setattr(az, "__version__", "1.0.0")
    monkeypatch.setattr(az, "from_dict", lambda *args, **kwargs: calls.append((args, kwargs)) or "tree")
    groups = {"posterior": {"z": np.zeros((1, 4, 2, 3))}, "observed_data": {"x": np.zeros((2, 5))}}
    dims, coords = {"z": ["point", "z_dim"], "x": ["point", "x_dim"]}, {"point": np.arange(2)}
    assert to_arviz(groups, dims, coords, attrs={"draws": 4}) == "tree"
    ((args, kwargs),) = calls
    assert args == (groups,)
    assert kwargs == {"dims": dims, "coords": coords, "attrs": {"/": {"draws": 4}}}
    monkeypatch.undo()
    installed = int(str(az.__version__).split(".")[0])
    assert type(to_arviz(groups, dims, coords)).__name__ == ("DataTree" if installed >= 1 else "InferenceData")
