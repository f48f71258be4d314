"""The arithmetic of a Gaussian diffusion (Ho et al. 2020), in nats, for the diffusion program and its objective.

Timesteps run t = 1..T; tensors indexed by ``t - 1``. With β_t the noise schedule, α_t = 1 - β_t and ᾱ_t = Π_{s<=t} α_s:

    q(x_t | x_0)          = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)
    q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t I),   β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)
    p_θ(x_{t-1} | x_t)    = N(μ_θ(x_t, t), σ_t² I),          μ_θ = (x_t - β_t / sqrt(1 - ᾱ_t) ε_θ(x_t, t)) / sqrt(α_t)

and the ELBO's terms are (Ho et al. eq. 5; Sohl-Dickstein et al. 2015)

    L_T     = KL(q(x_T | x_0) || N(0, I))                                   the prior term
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t)),  t >= 2   each an information bottleneck
    L_0     = -E_q log p_θ(x_0 | x_1)                                       the data term (discretised Gaussian)

Each L_{t-1} needs only x_t ~ q(x_t | x_0), so Σ_t L_{t-1} is estimated from one timestep per data point, drawn
from p(t) and weighted by 1 / p(t) (:class:`TimestepSampler`). Images in [0, 1] with 256 grey levels are scaled to
[-1, 1]; the data term is the probability of x_0's bin of width 2/255 (edges at ±∞ at the ends), so the bound is
a code length for 8-bit images and ``bits_per_dim`` compares with the literature.

Per-timestep weights w_t multiply the L_{t-1} (the bottleneck's β_t; :func:`timestep_weights`): ``constant`` is the
ELBO; ``simple`` is Ho et al.'s noise-prediction loss E_t ||ε - ε_θ||², which is Σ_t L_{t-1} / c_t for
L_{t-1} = c_t ||ε - ε_θ||², rescaled to mean 1; ``increasing`` and ``decreasing`` are linear ramps of mean 1.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

NOISE_SCHEDULES = ("linear", "cosine")
TIMESTEP_WEIGHTS = ("constant", "simple", "increasing", "decreasing")
TIMESTEP_SAMPLING = ("uniform", "importance")
REVERSE_VARIANCES = ("posterior", "beta")


def noise_betas(name: str, timesteps: int) -> torch.Tensor:
    """β_1..β_T in float64: ``linear`` (Ho et al.: 1e-4 to 0.02 at T = 1000, scaled by 1000 / T as in Nichol and
    Dhariwal 2021) or ``cosine`` (Nichol and Dhariwal 2021, s = 0.008, β clipped at 0.999)."""
    if name not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}: choose one of {', '.join(NOISE_SCHEDULES)}")
    if timesteps < 2:
        raise ValueError(f"a diffusion needs at least 2 timesteps, got {timesteps}")
    if name == "linear":
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), timesteps, dtype=torch.float64)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


class NoiseSchedule(nn.Module):
    """The schedule's constants as float32 buffers (they move with the model), computed in float64 (they are
    differences of numbers near 1) and read per data point with :meth:`at`."""

    def __init__(self, name: str, timesteps: int, reverse_variance: str = "posterior"):
        super().__init__()
        if reverse_variance not in REVERSE_VARIANCES:
            raise ValueError(
                f"unknown reverse variance {reverse_variance!r}: choose one of {', '.join(REVERSE_VARIANCES)}"
            )
        betas = noise_betas(name, timesteps)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        # β̃_1 = 0 (the posterior of x_0 is a point): the data term's scale uses β̃_2 there, as Ho et al.'s code does
        posterior_log_variance = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))
        # β_t for "beta" (Ho et al.'s fixed large variance), with β̃_2 at t = 1 as their code has it
        large = torch.cat([posterior_variance[1:2], betas[1:]]).log()
        reverse_log_variance = posterior_log_variance if reverse_variance == "posterior" else large
        constants = {
            "betas": betas,
            "alphas": alphas,
            "alpha_bar": alpha_bar,
            "posterior_variance": posterior_variance,
            "posterior_log_variance": posterior_log_variance,
            "posterior_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
            "reverse_log_variance": reverse_log_variance,
        }
        for key, value in constants.items():
            self.register_buffer(key, value.float())
        self.timesteps, self.name = timesteps, name

    def at(self, key: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The constant ``key`` at timesteps t (B,), shaped to broadcast against ``like`` (B, ...)."""
        value = getattr(self, key)[t - 1]
        return value.reshape(value.shape + (1,) * (like.dim() - value.dim()))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε."""
        alpha_bar = self.at("alpha_bar", t, x0)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def q_marginal(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of q(x_t | x_0)."""
        alpha_bar = self.at("alpha_bar", t, x0)
        return alpha_bar.sqrt() * x0, (1 - alpha_bar).expand_as(x0)

    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, variance) of q(x_{t-1} | x_t, x_0), t >= 2."""
        mean = self.at("posterior_coef_x0", t, x0) * x0 + self.at("posterior_coef_xt", t, xt) * xt
        return mean, self.at("posterior_variance", t, x0).expand_as(x0)

    def reverse_mean(self, xt: torch.Tensor, t: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
        """μ_θ(x_t, t) from the predicted noise."""
        beta, alpha, alpha_bar = (self.at(k, t, xt) for k in ("betas", "alphas", "alpha_bar"))
        return (xt - beta / (1 - alpha_bar).sqrt() * epsilon) / alpha.sqrt()

    def reverse_log_variance_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.at("reverse_log_variance", t, like).expand_as(like)


def gaussian_kl(mean_q, log_var_q, mean_p, log_var_p) -> torch.Tensor:
    """KL(N(mean_q, e^log_var_q) || N(mean_p, e^log_var_p)) per element, nats."""
    return 0.5 * (log_var_p - log_var_q + (log_var_q.exp() + (mean_q - mean_p) ** 2) / log_var_p.exp() - 1)


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def discretised_gaussian_log_likelihood(x0: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x_0's bin) per element under N(mean, e^(2 log_scale)), x_0 on the 256-level grid of [-1, 1]: bins of
    width 2/255, the first and last open to -∞ and +∞ (Ho et al. 2020, eq. 13)."""
    centred = x0 - mean
    inv_scale = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_scale * (centred + 1 / 255))
    cdf_minus = _standard_normal_cdf(inv_scale * (centred - 1 / 255))
    log_cdf_plus = cdf_plus.clamp_min(1e-12).log()
    log_one_minus_cdf_minus = (1 - cdf_minus).clamp_min(1e-12).log()
    log_delta = (cdf_plus - cdf_minus).clamp_min(1e-12).log()
    return torch.where(x0 < -0.999, log_cdf_plus, torch.where(x0 > 0.999, log_one_minus_cdf_minus, log_delta))


def timestep_weights(name: str, schedule: NoiseSchedule) -> torch.Tensor:
    """w_t for t = 1..T (w_1 weighs nothing: L_0 is the data term), mean 1 over t = 2..T."""
    if name not in TIMESTEP_WEIGHTS:
        raise ValueError(f"unknown timestep weights {name!r}: choose one of {', '.join(TIMESTEP_WEIGHTS)}")
    T = schedule.timesteps
    u = torch.linspace(0, 1, T - 1, dtype=torch.float64)
    if name == "constant":
        weights = torch.ones(T - 1, dtype=torch.float64)
    elif name == "increasing":
        weights = 0.1 + 1.8 * u
    elif name == "decreasing":
        weights = 1.9 - 1.8 * u
    else:
        # L_{t-1} = c_t ||ε - ε_θ||² with c_t = β_t² / (2 σ_t² α_t (1 - ᾱ_t)) (Ho et al. eq. 12, per dimension)
        betas, alphas, alpha_bar = (getattr(schedule, k).double()[1:] for k in ("betas", "alphas", "alpha_bar"))
        variance = schedule.reverse_log_variance.double()[1:].exp()
        c = betas**2 / (2 * variance * alphas * (1 - alpha_bar))
        weights = 1 / c
    weights = weights / weights.mean()  # at T = 2 the shapes have one point, which must still weigh 1
    return torch.cat([torch.zeros(1, dtype=torch.float64), weights]).float()


class TimestepSampler(nn.Module):
    """p(t) over t = 2..T for the one-timestep estimate of Σ_t w_t L_{t-1}: uniform, or importance sampling with p(t) ∝
    sqrt(E[(w_t L_{t-1})²]) over the last ``history`` values of each timestep (Nichol and Dhariwal 2021, §3.3), uniform
    until every timestep has them. The history is a buffer: it is checkpointed with the objective."""

    def __init__(self, timesteps: int, kind: str = "uniform", history: int = 10):
        super().__init__()
        if kind not in TIMESTEP_SAMPLING:
            raise ValueError(f"unknown timestep sampling {kind!r}: choose one of {', '.join(TIMESTEP_SAMPLING)}")
        self.timesteps, self.kind = timesteps, kind
        self.register_buffer("squares", torch.zeros(timesteps - 1, history))
        self.register_buffer("counts", torch.zeros(timesteps - 1, dtype=torch.long))

    def probabilities(self) -> torch.Tensor:
        """p(t) for t = 2..T."""
        uniform = torch.full((self.timesteps - 1,), 1 / (self.timesteps - 1), device=self.squares.device)
        if self.kind == "uniform" or bool((self.counts < self.squares.shape[1]).any()):
            return uniform
        weights = self.squares.mean(1).sqrt()
        # a little of the uniform keeps every timestep drawn (Nichol and Dhariwal mix in 0.001)
        return 0.999 * weights / weights.sum() + 0.001 * uniform

    def sample(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, p(t)) for n data points."""
        p = self.probabilities().to(device)
        index = torch.multinomial(p, n, replacement=True)
        return index + 2, p[index]

    @torch.no_grad()
    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        if self.kind == "uniform":
            return
        for step, loss in zip((t - 2).tolist(), losses.detach().double().tolist()):
            slot = int(self.counts[step]) % self.squares.shape[1]
            self.squares[step, slot] = loss**2
            self.counts[step] += 1


def to_levels(signed: torch.Tensor) -> torch.Tensor:
    """Values on the [-1, 1] scale as images in [0, 1] on the 256 grey levels."""
    return ((signed.clamp(-1, 1) + 1) / 2 * 255).round() / 255


def check_eight_bit(x: torch.Tensor, what: str) -> None:
    """Refuse data a discretised likelihood cannot score: values outside [0, 1], or off the 256-level grid."""
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what} needs images in [0, 1]")
    if x.numel() and not torch.allclose(x * 255, (x * 255).round(), atol=1e-3):
        raise ValueError(
            f"{what} needs 256 grey levels (values k/255); this data has others: quantise it to 8 bits first"
        )


def to_signed(x: torch.Tensor) -> torch.Tensor:
    return 2 * x - 1


class DiscretisedGaussian(TorchDistribution):
    """p(x_0 | x_1) over images in [0, 1] on 256 grey levels: the mass of each pixel's bin under N(mean, scale²) on
    the [-1, 1] scale (:func:`pyroib.diffusion.discretised_gaussian_log_likelihood`), independent pixels."""

    arg_constraints = {}
    support = constraints.independent(constraints.unit_interval, 3)
    has_rsample = False

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, validate_args=None):
        self.loc, self.log_scale = loc, log_scale
        super().__init__(loc.shape[:-3], loc.shape[-3:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return DiscretisedGaussian(self.loc.expand(shape), self.log_scale.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return discretised_gaussian_log_likelihood(to_signed(value), self.loc, self.log_scale).sum((-3, -2, -1))

    @property
    def mean(self) -> torch.Tensor:
        return to_levels(self.loc)

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.loc.shape
            draw = self.loc.expand(shape) + self.log_scale.exp().expand(shape) * torch.randn(
                shape, device=self.loc.device
            )
            return to_levels(draw)
