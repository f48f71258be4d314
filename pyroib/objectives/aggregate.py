"""Aggregate-posterior information terms as ELBO subclasses, and their full-data evaluation.

Every class here is an :class:`~pyroib.objectives.InfoELBO` whose :meth:`information_terms` returns
``name -> (weight, value)`` with the value in nats *per data point*; InfoELBO adds N · weight · value to the loss,
next to N · (distortion + β · rate). So the objective per data point is

    distortion + β · rate + Σ_k weight_k · term_k                     (β from the bottleneck handlers, default 1)

whatever the batch size, and a weight means the same at batch 64 and 1,024. The terms are read from the traces the
ELBO already has: the codes z, and loc and scale of q(z|x), from the guide's latent site (``latent_site``, by default
the program's only latent site); the prior from the model's site of the same name; N from the data plate (the
``size`` argument). Batch-level estimators are those of :mod:`pyroib.estimators` (Chen et al. 2018's minibatch
stratified sampling by default).

* :class:`TotalCorrelationELBO` (β-TCVAE): rate = index-code MI + TC + dimension-wise KL, reweighted to
  α·MI + β_TC·TC + γ·dimKL by adding (α − 1)·MI + (β_TC − 1)·TC + (γ − 1)·dimKL to the plain rate. With a Monte
  Carlo rate the identity holds sample by sample, so the loss *is* distortion + α·MI + β_TC·TC + γ·dimKL; with
  ``analytic_kl=True`` only in expectation.
* :class:`MarginalKLELBO`: weight · KL(q(z) || p(z)), term B of the bounded-IB Lagrangian.
* :class:`MMDELBO` (InfoVAE): weight · MMD²(q(z), p(z)) between the batch's codes and as many prior draws.

Critic-based terms (FactorVAE, AAE, BIB-AE) are in :mod:`pyroib.objectives.critic_terms`.
"""

from __future__ import annotations

import math
import numbers

import pyro.distributions as dist
import torch
from torch.distributions import Normal

import pyroib.estimators as estimators

from ..distributed import gathered
from ..handlers import per_dimension
from .core import InfoELBO


# ------------------------------------------------------------------------------------------- checks and trace access
def check_weight(name: str, value, minimum: float = 0.0) -> float:
    """A finite real weight >= ``minimum``, as float; a clear ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ValueError(
            f"{name} must be a finite number >= {minimum:g}, got {value!r}: a negative weight would "
            "reward the divergence it measures and make the loss unbounded below"
        )
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def latent_codes(guide_trace, site: str):
    """(z, loc, scale) of the guide's latent site, each (B, D); scale is None for a deterministic (Delta) code."""
    node = guide_trace.nodes.get(site)
    if node is None or node["type"] != "sample":
        raise ValueError(f"the guide has no latent sample site {site!r}; information terms read the codes there")
    z, fn = node["value"], node["fn"]
    base = per_dimension(fn)
    if isinstance(base, Normal):
        loc, scale = base.loc, base.scale
    elif isinstance(fn, dist.Delta):
        loc, scale = fn.v, None
    else:
        raise TypeError(
            f"information terms need a diagonal Gaussian q(z|x) at site {site!r} (Normal(loc, scale)"
            f".to_event(1)) or a Delta code; got {type(fn).__name__}"
        )
    if z.dim() != 2:
        raise ValueError(
            f"codes at site {site!r} must have shape (batch, latent_dim), got {tuple(z.shape)}; "
            "vectorised particles are not supported by batch-level information terms"
        )
    # under data-parallel training with --batch-terms global: every process's codes (pyroib.distributed)
    return gathered(z), gathered(loc.expand_as(z)), None if scale is None else gathered(scale.expand_as(z))


def prior_log_density(model_trace, site: str):
    """z (B, D) -> log p(z): per dimension (B, D) when the prior factorises, joint (B,) otherwise. Codes gathered
    from several processes (K·B rows) are scored a batch at a time by the same prior."""
    fn = model_trace.nodes[site]["fn"]
    base = per_dimension(fn)
    log_prob = base.log_prob if base is not None else fn.log_prob
    rows = fn.batch_shape[0] if len(fn.batch_shape) else None

    def score(z):
        if rows is None or z.shape[0] == rows:
            return log_prob(z)
        return torch.cat([log_prob(part) for part in z.split(rows)])

    return score


def prior_draws(model_trace, site: str) -> torch.Tensor:
    """One draw per batch row from the model's prior at ``site`` (reparameterised where possible); with global batch
    terms, every process's draws."""
    fn = model_trace.nodes[site]["fn"]
    return gathered(fn.rsample() if fn.has_rsample else fn.sample())


def _require_stochastic(scale, what: str) -> None:
    if scale is None:
        raise ValueError(
            f"{what} needs a stochastic encoder q(z|x) (loc and scale); a deterministic encoder has "
            "no density. Use divergence='mmd' or 'critic', or a stochastic encoder"
        )


def _require_pairs(batch: int, estimator: str, what: str) -> None:
    if estimator == "mss" and batch < 2:
        raise ValueError(
            f"{what} by minibatch stratified sampling needs batches of at least 2 points, got {batch} "
            "(an epoch's last batch holds N mod batch_size points): choose another --batch-size, or "
            "--estimator mws"
        )


# ------------------------------------------------------------------------------------------------- the objectives
class TotalCorrelationELBO(InfoELBO):
    """β-TCVAE (Chen et al. 2018): distortion + α·I(x; z) + β_TC·TC(z) + γ·Σ_j KL(q(z_j) || p(z_j)).

    :param alpha: weight α of the index-code MI E[log q(z|x) − log q(z)].
    :param tc_weight: weight β_TC of the total correlation E[log q(z) − Σ_j log q(z_j)] (6 in Chen et al.'s
        experiments).
    :param gamma: weight γ of the dimension-wise KL E[Σ_j log q(z_j) − log p_j(z_j)]; needs a factorised prior
        unless γ = 1.
    :param estimator: ``"mss"`` (minibatch stratified sampling: q(z) unbiased, its logarithm not; TC reads 69% low
        at batch 64 in benchmarks/results/estimator_bias.md) or ``"mws"`` (minibatch weighted sampling, reads
        (D − 1)·log N too high; for reproducing published numbers). Report the full-data terms of ``evaluate``.
    At α = β_TC = γ = 1 the loss equals InfoELBO's. All three terms are logged (``index_code_mi``,
    ``total_correlation``, ``dimwise_kl``) with ``marginal_kl`` = TC + dimKL at weight 0.
    """

    min_batch_size = 2

    def __init__(
        self, alpha: float = 1.0, tc_weight: float = 6.0, gamma: float = 1.0, estimator: str = "mss", **kwargs
    ):
        super().__init__(**kwargs)
        self.alpha, self.tc_weight = check_weight("alpha", alpha), check_weight("tc_weight", tc_weight)
        self.gamma = check_weight("gamma", gamma)
        self.estimator = check_choice("estimator", estimator, estimators.ESTIMATOR_METHODS)

    def information_terms(self, model_trace, guide_trace, size, context=None):
        site = self.latent_site_of(model_trace, guide_trace)
        z, loc, scale = latent_codes(guide_trace, site)
        _require_stochastic(scale, "the rate decomposition")
        _require_pairs(z.shape[0], self.estimator, "the total correlation")
        log_pz = prior_log_density(model_trace, site)(z)
        if log_pz.dim() != 2 and self.gamma != 1.0:
            raise ValueError(
                "gamma != 1 weights the dimension-wise KL Σ_j KL(q(z_j) || p(z_j)), which exists only "
                "for a prior that factorises over latent dimensions; use --prior standard or learned, "
                "or keep --gamma 1"
            )
        log_qz, log_qz_per_dim = estimators.log_qz_estimates(z, loc, scale, size, self.estimator)
        terms = estimators.information_terms(
            estimators.gaussian_log_prob_per_dim(z, loc, scale), log_qz, log_qz_per_dim, log_pz
        )
        out = {
            "index_code_mi": (self.alpha - 1.0, terms["index_code_mi"]),
            "total_correlation": (self.tc_weight - 1.0, terms["total_correlation"]),
            "marginal_kl": (0.0, terms["marginal_kl"]),
        }
        if "dimwise_kl" in terms:
            out["dimwise_kl"] = (self.gamma - 1.0, terms["dimwise_kl"])
        return out


class MarginalKLELBO(InfoELBO):
    """distortion + β·rate + weight · KL(q(z) || p(z)): term B, by minibatch stratified (or weighted) sampling.

    Any prior works (joint log densities are accepted). Logged as ``marginal_kl``.
    """

    min_batch_size = 2

    def __init__(self, marginal_kl_weight: float = 1.0, estimator: str = "mss", **kwargs):
        super().__init__(**kwargs)
        self.marginal_kl_weight = check_weight("marginal_kl_weight", marginal_kl_weight)
        self.estimator = check_choice("estimator", estimator, estimators.ESTIMATOR_METHODS)

    def information_terms(self, model_trace, guide_trace, size, context=None):
        site = self.latent_site_of(model_trace, guide_trace)
        return {
            "marginal_kl": (
                self.marginal_kl_weight,
                batch_marginal_kl(model_trace, guide_trace, site, size, self.estimator),
            )
        }


def batch_marginal_kl(model_trace, guide_trace, site: str, size: int, estimator: str = "mss") -> torch.Tensor:
    z, loc, scale = latent_codes(guide_trace, site)
    _require_stochastic(scale, "the marginal KL by sampling")
    _require_pairs(z.shape[0], estimator, "the marginal KL")
    return estimators.marginal_kl(z, loc, scale, size, prior_log_density(model_trace, site), estimator)


class MMDELBO(InfoELBO):
    """InfoVAE (Zhao et al. 2019) with the MMD divergence: distortion + β·rate + λ · MMD²(q(z), p(z)).

    InfoVAE writes its objective with two numbers, rate weight (1 − α) and divergence weight (α + λ − 1). pyroib
    names the two weights directly: ``--beta`` = 1 − α (the bottleneck handler) and ``mmd_weight`` = α + λ − 1, so
    mmd_weight = 0 is the plain (β-)VAE and β = 0 the MMD-VAE of their experiments. MMD² is a divergence between
    distributions, so like the per-point ELBO terms it enters once per data point; the default 1000 is the large
    weight InfoVAE's MMD experiments need because MMD² of a batch is a small number (about α = 0, λ = 1000).

    :param kernel: ``"rbf"`` or ``"imq"`` with bandwidth 2D (see :func:`pyroib.estimators.mmd`); the unbiased
        U-statistic of the batch's B codes against B prior draws (it can read slightly negative).
    Logged as ``mmd``.
    """

    min_batch_size = 2

    def __init__(self, mmd_weight: float = 1000.0, kernel: str = "rbf", **kwargs):
        super().__init__(**kwargs)
        self.mmd_weight = check_weight("mmd_weight", mmd_weight)
        self.kernel = check_choice("kernel", kernel, estimators.MMD_KERNELS)

    def information_terms(self, model_trace, guide_trace, size, context=None):
        site = self.latent_site_of(model_trace, guide_trace)
        return {"mmd": (self.mmd_weight, batch_mmd(model_trace, guide_trace, site, self.kernel))}


def batch_mmd(model_trace, guide_trace, site: str, kernel: str = "rbf") -> torch.Tensor:
    z, _, _ = latent_codes(guide_trace, site)
    if z.shape[0] < 2:
        raise ValueError(
            f"the MMD between codes and prior draws needs batches of at least 2 points, got "
            f"{z.shape[0]}; choose another --batch-size"
        )
    return estimators.mmd(z, prior_draws(model_trace, site), kernel=kernel)
