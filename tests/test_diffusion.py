"""The diffusion program: the schedule's closed forms against brute force, the discretised likelihood summed over
its 256 levels, the one-timestep estimator against the traced T-site ELBO (same draws: equal value and gradient;
fresh draws: equal expectation), per-timestep weights as Ho et al.'s simple loss, importance-sampled timesteps, and
the command line."""

import json
import math

import pytest
import torch
from pyro import poutine
from torch.distributions import Normal, kl_divergence

from pyroib.cli import main
from pyroib.diffusion import (
    NoiseSchedule,
    TimestepSampler,
    discretised_gaussian_log_likelihood,
    gaussian_kl,
    noise_betas,
    timestep_weights,
    to_signed,
)
from pyroib.guides.diffusion import Guide
from pyroib.models.diffusion import Config, Model
from pyroib.objectives import DiffusionELBO, InfoELBO

TINY = ["--dataset", "synthetic", "--binarize", "static", "--device", "cpu", "--no-progress", "--batch-size", "64"]
SMALL = ["--timesteps", "6", "--channels", "4,8", "--time-dim", "8", "--curve-points", "4"]


def test_linear_and_cosine_schedules_match_their_papers():
    betas = noise_betas("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    cosine = noise_betas("cosine", 50)
    alpha_bar = torch.cumprod(1 - cosine, 0)
    f = torch.cos((torch.arange(51, dtype=torch.float64) / 50 + 0.008) / 1.008 * math.pi / 2) ** 2
    # ᾱ_t = f(t) / f(0) until the last step, whose β is clipped at 0.999 (f(T) is 0 up to rounding)
    torch.testing.assert_close(alpha_bar[:-1], (f / f[0])[1:-1])
    assert cosine[-1].item() == 0.999 and (cosine < 0.999).all() == False  # noqa: E712


def test_posterior_of_the_forward_process_is_bayes_rule():
    schedule = NoiseSchedule("cosine", 20)
    x0, xt = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    t = torch.tensor([2, 5, 9, 14, 20])
    mean, variance = schedule.posterior(x0, xt, t)
    # q(x_{t-1} | x_0) = N(sqrt(ᾱ_{t-1}) x0, 1 - ᾱ_{t-1}) times q(x_t | x_{t-1}) = N(sqrt(α_t) x_{t-1}, β_t)
    alpha_bar = schedule.alpha_bar.double()
    prev = torch.where(t > 1, alpha_bar[(t - 2).clamp(min=0)], torch.ones(5, dtype=torch.float64)).reshape(5, 1, 1, 1)
    beta = schedule.betas.double()[t - 1].reshape(5, 1, 1, 1)
    precision = 1 / (1 - prev) + (1 - beta) / beta
    expected_mean = (prev.sqrt() * x0.double() / (1 - prev) + (1 - beta).sqrt() * xt.double() / beta) / precision
    torch.testing.assert_close(variance.double(), (1 / precision).expand_as(variance), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-4, atol=1e-5)
    # the reverse variances: β̃_t or β_t, and at t = 1 (the data term's scale) β̃_2 for both, as Ho et al.'s code
    large = NoiseSchedule("cosine", 20, "beta")
    torch.testing.assert_close(large.reverse_log_variance[1:], large.betas[1:].log())
    assert large.reverse_log_variance[0] == schedule.reverse_log_variance[0] == schedule.posterior_variance[1].log()


def test_a_sampling_step_between_neighbours_is_the_models_reverse_step():
    from pyroib.evaluate_diffusion import respaced_step

    model, _ = _tiny(timesteps=10, variance="posterior")
    xt, epsilon = torch.randn(2, 1, 4, 4, dtype=torch.float64), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    alpha_bar = model.schedule.alpha_bar.double()
    for t in (2, 6, 10):
        mean, variance = respaced_step(alpha_bar[t - 1], alpha_bar[t - 2], xt, epsilon, clip=False)
        steps = torch.full((2,), t)
        expected = model.schedule.reverse_mean(xt.float(), steps, epsilon.float())
        torch.testing.assert_close(mean.float(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(float(variance), float(model.schedule.posterior_variance[t - 1]), rtol=1e-5, atol=0)
    # a jump t -> s = 4 is Bayes' rule for q(x_s | x_t, x_0) with q(x_t | x_s) = N(sqrt(ᾱ_t/ᾱ_s) x_s, 1 - ᾱ_t/ᾱ_s)
    a_t, a_s = alpha_bar[9], alpha_bar[3]
    x0 = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 2 - 1
    xt = a_t.sqrt() * x0 + (1 - a_t).sqrt() * epsilon  # so that ε gives back x_0 exactly
    mean, variance = respaced_step(a_t, a_s, xt, epsilon, clip=False)
    ratio = a_t / a_s
    precision = 1 / (1 - a_s) + ratio / (1 - ratio)
    expected = (a_s.sqrt() * x0 / (1 - a_s) + ratio.sqrt() * xt / (1 - ratio)) / precision
    torch.testing.assert_close(mean, expected)
    assert float(variance) == pytest.approx(float(1 / precision))


def test_discretised_likelihood_is_a_distribution_over_the_256_levels():
    levels = to_signed(torch.arange(256, dtype=torch.float32) / 255)
    mean = torch.tensor([[-0.93], [0.0], [0.51], [1.2]])
    log_scale = torch.tensor([[-4.0], [-2.0], [-0.5], [-3.0]])
    log_p = discretised_gaussian_log_likelihood(levels.expand(4, 256), mean, log_scale)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(4), atol=2e-4, rtol=0)
    kl = gaussian_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5))
    expected = kl_divergence(Normal(0.3, math.exp(-0.5)), Normal(-0.2, math.exp(0.25)))
    torch.testing.assert_close(kl, expected)


def _tiny(timesteps=4, schedule="linear", variance="posterior"):
    torch.manual_seed(0)
    config = Config(data_shape=(1, 4, 4), timesteps=timesteps, noise_schedule=schedule, reverse_variance=variance,
                    channels=(4,), time_dim=8)  # fmt: skip
    model = Model(config)
    with torch.no_grad():  # leave the zero start: a network that predicts some noise
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, Guide(config)


def _images(n=3):
    return torch.randint(0, 256, (n, 1, 4, 4)).float() / 255


@pytest.mark.parametrize("schedule,variance", [("linear", "posterior"), ("cosine", "beta")])
def test_estimator_terms_are_the_traced_pairs_elbo_at_the_same_draws(schedule, variance):
    model, guide = _tiny(schedule=schedule, variance=variance)
    T, x = 4, _images()
    x0 = to_signed(x)
    noise = {t: torch.randn_like(x0) for t in range(1, T + 1)}
    draws = {t: model.schedule.q_sample(x0, torch.full((3,), t), noise[t]) for t in range(1, T + 1)}
    # the traced pair, with the guide's sites set to those draws (replayed, not observed)
    trace = poutine.trace(guide).get_trace(x)
    for t in range(1, T + 1):
        trace.nodes[f"x{t}"]["value"] = draws[t]
    traced = InfoELBO(analytic_kl=True).terms(model, poutine.replay(guide, trace=trace), x)
    # the estimator's pieces, every timestep enumerated, with the same draws
    data = model.data_term(x, noise[1])
    kls = [model.timestep_kl(x, torch.full((3,), t), noise[t]) for t in range(2, T + 1)]
    total = data + model.prior_term(x) + sum(kls)
    torch.testing.assert_close(traced.loss, total.sum().detach(), rtol=1e-5, atol=1e-4)
    for t, kl in zip(range(2, T + 1), kls):  # each site's rate is that timestep's KL
        torch.testing.assert_close(traced.values[f"rate/x{t - 1}"], kl.mean().detach(), rtol=1e-5, atol=1e-5)
    params = list(model.parameters())
    ours = torch.autograd.grad(total.sum(), params, allow_unused=True)
    theirs = torch.autograd.grad(traced.surrogate, params, allow_unused=True)
    # float32 sums of terms up to 10⁴ nats: differences are compared at the scale of the whole gradient (biases
    # ahead of a GroupNorm have a true gradient of 0, computed as rounding noise on both sides)
    scale = max(float(b.abs().max()) for b in theirs if b is not None)
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * scale)


def test_sampled_timestep_estimate_has_the_traced_elbos_expectation():
    model, guide = _tiny(timesteps=5)
    x = _images(2)
    draws = 3000
    with torch.no_grad():
        estimator = torch.stack([DiffusionELBO().terms(model, guide, x).values["elbo"] for _ in range(draws)])
        traced = torch.stack([InfoELBO(analytic_kl=True).terms(model, guide, x).values["elbo"] for _ in range(600)])
    se = math.sqrt(estimator.var() / draws + traced.var() / 600)
    assert abs(estimator.mean() - traced.mean()) < 4 * se, (estimator.mean(), traced.mean(), se)


@pytest.mark.parametrize("channels", [(1,), (4, 8), (16, 32)])
def test_the_noise_predictor_reads_the_timestep_at_any_width(channels):
    """One channel per GroupNorm group would subtract an embedding added before the norm out again."""
    from pyroib.unet import UNet

    torch.manual_seed(0)
    network = UNet((1, 8, 8), channels, time_dim=16)
    torch.nn.init.normal_(network.head[-1].weight)  # the head starts at zero: predict something first
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        early, late = network(x, torch.full((3,), 1)), network(x, torch.full((3,), 700))
    assert (early - late).abs().max() > 0.05
    with pytest.raises(ValueError, match="--time-dim must be at least 2"):
        UNet((1, 8, 8), channels, time_dim=1)


def test_simple_weights_turn_the_kl_terms_into_ho_et_als_noise_loss():
    model, _ = _tiny(timesteps=8)
    weights = timestep_weights("simple", model.schedule)
    assert weights[0] == 0 and weights[1:].mean().item() == pytest.approx(1.0)
    x = _images(2)
    x0 = to_signed(x)
    ratios = []
    for t in range(2, 9):
        noise = torch.randn_like(x0)
        steps = torch.full((2,), t)
        xt = model.schedule.q_sample(x0, steps, noise)
        error = (noise - model.network(xt, steps)).pow(2).flatten(1).sum(1)
        ratios.append(weights[t - 1] * model.timestep_kl(x, steps, noise) / error)
    ratios = torch.cat(ratios).detach()
    torch.testing.assert_close(ratios, ratios[:1].expand_as(ratios), rtol=1e-3, atol=0)  # one constant for every t
    for name in ("increasing", "decreasing"):
        w = timestep_weights(name, model.schedule)[1:]
        assert w.mean().item() == pytest.approx(1.0) and (w.diff() > 0).all() == (name == "increasing")
        # T = 2: one KL term, weight 1 whatever the shape
        assert timestep_weights(name, NoiseSchedule("linear", 2, "posterior")).tolist() == [0.0, 1.0]


def test_importance_sampled_timesteps_follow_the_root_mean_square_kl_and_stay_unbiased():
    sampler = TimestepSampler(5, "importance", history=3)
    assert torch.allclose(sampler.probabilities(), torch.full((4,), 0.25))  # uniform until each t has its history
    for _ in range(3):
        sampler.update(torch.tensor([2, 3, 4, 5]), torch.tensor([1.0, 2.0, 4.0, 8.0]))
    p = sampler.probabilities()
    torch.testing.assert_close(p, 0.999 * torch.tensor([1.0, 2, 4, 8]) / 15 + 0.001 * 0.25)
    model, guide = _tiny(timesteps=5)
    objective = DiffusionELBO(timestep_sampling="importance")
    objective._state_for(model)
    objective._sampler = sampler  # the history above, in place of a fresh one
    x = _images(2)
    with torch.enable_grad():
        estimates = torch.stack([objective.terms(model, guide, x).values["rate/chain"] for _ in range(3000)])
    with torch.no_grad():
        uniform = torch.stack([DiffusionELBO().terms(model, guide, x).values["rate/chain"] for _ in range(3000)])
    se = math.sqrt(estimates.var() / 3000 + uniform.var() / 3000)
    assert abs(estimates.mean() - uniform.mean()) < 4 * se


def test_diffusion_trains_evaluates_and_resumes_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "d"
    argv = ["train", "--model", "diffusion", *TINY, *SMALL, "--epochs", "2", "--out", str(run)]
    assert main([*argv, "--timestep-sampling", "importance"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["kl_per_timestep"]) == 6 and len(result["cumulative_rate"]) == 5
    assert result["elbo"] == pytest.approx(-(result["rate"] + result["distortion"]))
    assert result["bits_per_dim"] == pytest.approx(-result["elbo"] / (64 * math.log(2)))
    assert result["rate"] == pytest.approx(result["prior_term"] + sum(result["kl_per_timestep"][1:]))
    assert "nll_iw_note" in result and "nll_iw" not in result
    assert main([*argv[:-4], "--epochs", "3", "--out", str(run), "--resume", "--timestep-sampling", "importance"]) == 0
    from pyroib.arviz_bridge import from_run

    posterior = from_run(str(run), points=4, draws=3, device="cpu").posterior  # draws ≠ points under the particles
    assert posterior.sizes["point"] == 4 and posterior.sizes["draw"] == 3
    assert main(["report", str(run), "--device", "cpu"]) == 0
    for png in ("kl_per_timestep.png", "diffusion_samples.png"):
        assert (run / "report" / png).stat().st_size > 1000
    skipped = json.loads((run / "report" / "posterior_diagnostics.json").read_text())["skipped"]
    assert "importance_sampling = False" in skipped  # T sites x points x draws: hours at T = 1000
    capsys.readouterr()
    sample = ["sample", str(run), "--n", "4", "--steps", "3", "--out", str(tmp_path / "s.png"), "--device", "cpu"]
    assert main(sample) == 0
    assert "own sampler" in capsys.readouterr().out and (tmp_path / "s.png").is_file()
    assert main([*sample, "--prior", "aggregate"]) == 2
    assert "draws images by its own sampler and decodes no code; drop --prior" in capsys.readouterr().err


def test_diffusion_refuses_data_off_the_8_bit_grid_and_per_site_weights(tmp_path, capsys):
    argv = ["train", "--model", "diffusion", *SMALL, "--device", "cpu", "--no-progress", "--epochs", "1"]
    assert main([*argv, "--dataset", "digits", "--out", str(tmp_path / "a")]) == 2
    assert "256 grey levels" in capsys.readouterr().err
    assert main([*argv, *TINY, "--beta", "x3=2", "--out", str(tmp_path / "b")]) == 2
    assert "--timestep-weights" in capsys.readouterr().err
    assert main([*argv, *TINY, "--particles", "2", "--out", str(tmp_path / "c")]) == 2
    assert "not particles (got 2)" in capsys.readouterr().err and not (tmp_path / "c").exists()
