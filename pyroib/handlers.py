"""Bottleneck weights as effect handlers: β and per-latent anchor weights on the latent sites.

``bottleneck(model, guide, beta=β, anchors=w)`` returns the model and guide wrapped by one handler each, built from
one specification, so a weight can never reach only one side: Pyro's ``TraceMeanField_ELBO`` reads the *guide*
site's scale, the Monte Carlo ELBO both sites; pyro/infer/trace_mean_field_elbo.py).

* β multiplies ``msg["scale"]`` of every unobserved sample site, exactly as ``poutine.scale`` does; observed sites
  (the distortion) keep weight 1, so the objective is distortion + β · rate. β = 0 cannot be a scale (Pyro refuses
  it), so it is ``poutine.mask``: the rate is left out of the loss but still reported.
* Anchor weights w_j (AnchorVAE, Gao et al. 2019) weight the rate of latent dimension j:
  Σ_j w_j KL(q(z_j|x) || p(z_j)). pyroib keeps latents as an event dimension (``Normal(..).to_event(1)``), so that
  factorised and non-factorised priors share one site layout and shape; a scale on the site could not reach single
  dimensions there. The handler therefore re-weights the per-dimension log densities inside the site's
  ``Independent`` distribution, on the model's prior and the guide's posterior together — the same arithmetic a
  per-dimension ``poutine.scale`` performs on a latent plate. A prior that does not factorise has no per-dimension
  density, and anchors on it raise.
* ``weights`` per site name (a dict) let hierarchical models weight each layer's rate.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence, register_kl

# the product of the β factors a site's scale carries, kept in its ``infer`` dict so that the objective can report
# the rate without β but with any other weight (a user's data weighting, a subsample factor) the scale holds
BOTTLENECK_SCALE = "bottleneck_scale"
# capacity control (Burgess et al. 2018): (γ, C in nats per data point), kept in the latent sites' ``infer`` dicts;
# the objective then puts γ|R - C| in place of the rate R
CAPACITY = "capacity"


class AnchorWeighted(dist.TorchDistribution):
    """An ``Independent`` over the last dimension whose log density is Σ_j w_j log p_j(z_j).

    Sampling is unchanged (it delegates to the base distribution): only the weight of each dimension in the
    objective changes.
    """

    arg_constraints = {}

    def __init__(self, base: dist.Distribution, weights: torch.Tensor):
        self.base = base
        self.weights = weights
        super().__init__(base.batch_shape[:-1], base.batch_shape[-1:], validate_args=False)

    @property
    def support(self):
        return dist.constraints.independent(self.base.support, 1)

    @property
    def has_rsample(self):
        return self.base.has_rsample

    def rsample(self, sample_shape=torch.Size()):
        return self.base.rsample(sample_shape)

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape)

    def log_prob(self, value):
        return (self.base.log_prob(value) * self.weights).sum(-1)

    def expand(self, batch_shape, _instance=None):
        base = self.base.expand(torch.Size(batch_shape) + self.base.batch_shape[-1:])
        return AnchorWeighted(base, self.weights)


@register_kl(AnchorWeighted, AnchorWeighted)
def _kl_anchor_weighted(q, p):
    return (kl_divergence(q.base, p.base) * q.weights).sum(-1)


def per_dimension(fn: dist.Distribution) -> dist.Distribution | None:
    """The per-dimension distribution of a factorised latent site (batch (..., D)), or None when it has none."""
    if isinstance(fn, AnchorWeighted):
        return fn.base
    if isinstance(fn, dist.Independent) and fn.reinterpreted_batch_ndims == 1:
        return fn.base_dist
    return None


class BottleneckMessenger(Messenger):
    def __init__(
        self,
        beta: float | Mapping[str, float],
        anchors: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        capacity: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.beta = beta
        self.anchors = anchors
        self.capacity = capacity

    def _weight(self, name: str) -> float:
        if isinstance(self.beta, Mapping):
            return float(self.beta.get(name, 1.0))
        return float(self.beta)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.capacity is not None:
            msg["infer"] = {**msg["infer"], CAPACITY: self.capacity}
        beta = self._weight(msg["name"])
        if beta == 0.0:
            msg["mask"] = False if msg["mask"] is None else msg["mask"] & False
        elif beta != 1.0:
            msg["scale"] = beta * msg["scale"]
            msg["infer"] = {**msg["infer"], BOTTLENECK_SCALE: msg["infer"].get(BOTTLENECK_SCALE, 1.0) * beta}
        anchors = self.anchors.get(msg["name"]) if isinstance(self.anchors, Mapping) else self.anchors
        if anchors is not None:
            base = per_dimension(msg["fn"])
            if base is None:
                if msg["fn"].event_dim == 0 and not isinstance(self.anchors, Mapping):
                    raise WeightError(
                        f"anchor weights without a site name apply to every latent site, and latent site "
                        f"{msg['name']!r} ({type(msg['fn']).__name__}) has no latent dimensions to weight: name the "
                        "site they are for, e.g. --anchors z1=1,1,2,2 (anchors={'z1': [...]} in Python)"
                    )
                raise WeightError(
                    f"anchor weights need a factorised distribution at latent site {msg['name']!r} (an Independent "
                    f"over the latent dimensions); got {type(msg['fn']).__name__}. Priors that do not factorise "
                    "(mixture, VampPrior, flow, joint aggregate) cannot take per-latent weights: use --beta instead"
                )
            if base.batch_shape[-1] != anchors.shape[-1]:
                raise WeightError(
                    f"{anchors.shape[-1]} anchor weights given but latent site {msg['name']!r} has "
                    f"{base.batch_shape[-1]} dimensions: give one weight per latent dimension"
                )
            msg["fn"] = AnchorWeighted(base, anchors.to(device=base.mean.device, dtype=base.mean.dtype))


class WeightError(ValueError):
    """A β or anchor setting that does not fit the program it weights: the user's setting is wrong, not the program,
    so the contract check reports it as it is, without pointing into the program's code."""


def _check_beta(beta, where: str = "beta") -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (0 <= beta < float("inf")):
        raise ValueError(f"{where} must be a finite number >= 0 (got {beta!r}); beta = 0 switches the rate term off")


def _anchor_tensor(weights, where: str) -> torch.Tensor:
    weights = torch.as_tensor(weights, dtype=torch.get_default_dtype()).flatten()
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"{where} must be finite and >= 0, got {weights.tolist()}")
    return weights


def validate_weights(beta, anchors=None, latent_dim: int | None = None):
    """Check β and anchor weights at construction time; return anchors as a tensor, a {site: tensor} dict, or None.

    ``beta`` is one number for every latent site or ``{site: β}``; ``anchors`` one list of per-dimension weights for
    every latent site or ``{site: [w_1, ..., w_D]}``.
    """
    if isinstance(beta, Mapping):
        for site, value in beta.items():
            _check_beta(value, f"beta of site {site!r}")
    else:
        _check_beta(beta)
    if anchors is None:
        return None
    if isinstance(anchors, Mapping):
        return {site: _anchor_tensor(w, f"anchor weights of site {site!r}") for site, w in anchors.items()}
    anchors = _anchor_tensor(anchors, "anchor weights")
    if latent_dim is not None and anchors.numel() != latent_dim:
        raise ValueError(
            f"{anchors.numel()} anchor weights given for {latent_dim} latent dimensions: "
            "--anchors needs exactly one weight per latent dimension (see --latent-dim)"
        )
    return anchors


def bottleneck(
    model: Callable,
    guide: Callable,
    beta: float | Mapping[str, float] = 1.0,
    anchors: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    capacity: tuple[float, float] | None = None,
) -> tuple[Callable, Callable]:
    """Wrap model and guide with the same bottleneck weights. β = 1 and no anchors returns them unchanged.

    ``capacity=(γ, C)`` asks the objective for γ|R − C| in place of the rate R (C in nats per data point; Burgess et
    al. 2018), usually with β = 1.
    """
    anchors = validate_weights(beta, anchors)
    if capacity is not None:
        gamma, target = capacity
        if not (0 <= gamma < float("inf") and 0 <= target < float("inf")):
            raise ValueError(f"capacity needs γ >= 0 and C >= 0 nats, both finite; got {capacity}")
    if not isinstance(beta, Mapping) and beta == 1.0 and anchors is None and capacity is None:
        return model, guide
    return (
        BottleneckMessenger(beta, anchors, capacity)(model),
        BottleneckMessenger(beta, anchors, capacity)(guide),
    )


__all__ = [
    "AnchorWeighted",
    "BOTTLENECK_SCALE",
    "BottleneckMessenger",
    "CAPACITY",
    "WeightError",
    "bottleneck",
    "per_dimension",
    "poutine",
    "validate_weights",
]
