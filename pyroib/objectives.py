"""The information-bottleneck objective: a ``Trace_ELBO`` that knows its own terms.

One function, :meth:`InfoELBO.terms`, splits a model/guide trace pair into named terms in nats per data point:

* ``distortion``  D = -E_q log p(x | z)          (all observed sites)
* ``rate``        R = E_q[log q(z|x) - log p(z)]  (all latent sites, without β and anchor weights; a user's data
  weights, as on the distortion, stay)
* ``rate/<site>`` and ``kl_per_dim/<site>`` for each latent site, the latter per dimension where the site factorises
* one entry per extra information term a subclass adds (total correlation, MMD, ...), with its weight.

The loss is assembled from the same numbers, so what is logged is what is optimised:

    loss = N · (D + R_β + Σ_k λ_k T_k)                      (Pyro's convention: a total over the N data points)

where R_β is the rate as weighted by the bottleneck handlers (β, anchors; see :mod:`pyroib.handlers`) and N is the
size of the data plate (``pyro.plate("data", N, subsample=idx)``), read from the plate's frame, never from a site's
scale (which already includes β). With β = 1, no anchors and no extra terms the loss *is* ``Trace_ELBO``'s, in value
and gradient, including score-function terms for non-reparameterised latents; with ``analytic_kl=True`` it is
``TraceMeanField_ELBO``'s. With a capacity C (Burgess et al. 2018) the rate enters as γ|R - C| instead
(the handlers then carry β = 1).

Unlike ``Trace_ELBO`` nothing here calls ``.item()``: the loss stays on the device, so a training step costs no
host-device synchronisation per site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from .handlers import BOTTLENECK_SCALE, AnchorWeighted, per_dimension
from .plates import DATA_PLATE


@dataclass
class Terms:
    """The result of one objective evaluation.

    ``surrogate`` is the differentiable loss (its value equals ``loss``); ``values`` are detached per-data-point
    numbers in nats; ``kl_per_dim`` maps latent site names to per-dimension rates (nats per data point).
    """

    surrogate: torch.Tensor
    loss: torch.Tensor
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    kl_per_dim: dict[str, torch.Tensor] = field(default_factory=dict)


def dataset_size(trace) -> int:
    """N of the data plate in a trace (1 when the program has no plate named ``data``)."""
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.name == DATA_PLATE:
                return int(frame.full_size or frame.size)
    return 1


def latent_site_names(model_trace, guide_trace) -> list[str]:
    """Sample sites of the guide that the model has unobserved (plates' subsample sites excluded)."""
    return [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and name in model_trace.nodes
        and not model_trace.nodes[name]["is_observed"]
    ]


def observed_site_names(model_trace) -> list[str]:
    return [name for name, site in model_trace.nodes.items() if site["type"] == "sample" and site["is_observed"]]


def choose_site(names: list[str], chosen: str | None, kind: str, flag: str) -> str:
    """The one site an information term reads: ``chosen`` if given (it must exist), else the only one there is."""
    if chosen is not None:
        if chosen not in names:
            raise ValueError(
                f"{flag} {chosen!r} is not a{'n' if kind[0] in 'aeiou' else ''} {kind} site of the "
                f"program; its {kind} sites are {', '.join(names) or 'none'}"
            )
        return chosen
    if len(names) != 1:
        raise ValueError(
            f"this objective reads one {kind} site and the program has {len(names)} "
            f"({', '.join(names) or 'none'}): name it with {flag}"
        )
    return names[0]


def _analytic_kl(guide_site, model_site):
    try:
        return kl_divergence(guide_site["fn"], model_site["fn"])
    except NotImplementedError:
        return None


class InfoELBO(Trace_ELBO):
    """Trace_ELBO with a named breakdown and hooks for information terms.

    :param analytic_kl: use closed-form KL(q(z|x) || p(z)) for latent sites where torch registers one and the guide
        site is reparameterised (as ``TraceMeanField_ELBO`` does); Monte Carlo otherwise.
    :param latent_site: the latent site that batch-level information terms read (default: the program's only one,
        or its declared ``Model.latent_site``).
    Subclasses add terms by overriding :meth:`information_terms`.
    """

    # objectives with batch-level estimators (TC, marginal KL, MMD, critics) raise this, and fit then drops an
    # epoch's last incomplete minibatch instead of handing the estimator too few points
    min_batch_size = 1

    def __init__(self, num_particles: int = 1, analytic_kl: bool = False, latent_site: str | None = None, **kwargs):
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"the number of particles must be a whole number >= 1, got {num_particles!r}")
        super().__init__(num_particles=num_particles, **kwargs)
        self.analytic_kl = analytic_kl
        if latent_site is not None and not isinstance(latent_site, str):
            raise TypeError(f"latent_site must be a site name, got {latent_site!r}")
        self.latent_site = latent_site

    def latent_site_of(self, model_trace, guide_trace) -> str:
        return choose_site(latent_site_names(model_trace, guide_trace), self.latent_site, "latent", "--latent-site")

    # hooks for subclasses ------------------------------------------------------------------------------------
    def information_terms(self, model_trace, guide_trace, size: int) -> dict[str, tuple[float, torch.Tensor]]:
        """Extra terms as ``name -> (weight, value in nats per data point)``; values must be differentiable."""
        return {}

    def auxiliary_step(self, model, guide, x, y=None, *, index=None, size=None) -> dict[str, torch.Tensor]:
        """Called by ``fit`` after each model step (critics train here); returns their losses."""
        return {}

    def state_dict(self) -> dict:
        """The objective's own trained state (critics), stored in the run's checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__} has no trained state, but the checkpoint holds some "
                f"({', '.join(state)}): the run was trained with another objective"
            )

    # the one breakdown ----------------------------------------------------------------------------------------
    def _particle(self, model_trace, guide_trace, capacity, want_per_dim=True):
        size = dataset_size(model_trace)
        latents = set(latent_site_names(model_trace, guide_trace))
        distortion = weighted_rate = 0.0
        surrogate_elbo = 0.0
        values: dict[str, torch.Tensor] = {}
        kl_per_dim: dict[str, torch.Tensor] = {}
        analytic = set()

        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                distortion = distortion - site["log_prob_sum"]
                surrogate_elbo = surrogate_elbo + site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes.get(name)
            if self.analytic_kl and name in latents and guide_site["fn"].has_rsample:
                kl = _analytic_kl(guide_site, site)
                if kl is not None:
                    kl_sum = scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()
                    weighted_rate = weighted_rate + kl_sum
                    surrogate_elbo = surrogate_elbo - kl_sum
                    analytic.add(name)
                    continue
            weighted_rate = weighted_rate - site["log_prob_sum"]
            surrogate_elbo = surrogate_elbo + site["log_prob_sum"]

        log_r = None
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or name in analytic:
                continue
            weighted_rate = weighted_rate + site["log_prob_sum"]
            _, score_function_term, entropy_term = site["score_parts"]
            if not is_identically_zero(entropy_term):
                surrogate_elbo = surrogate_elbo - entropy_term.sum()
            if not is_identically_zero(score_function_term):
                if log_r is None:
                    log_r = _compute_log_r(model_trace, guide_trace)
                surrogate_elbo = surrogate_elbo + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()

        rate = 0.0
        for name in sorted(latents):
            site_rate, per_dim = self._unweighted_rate(
                model_trace.nodes[name], guide_trace.nodes[name], name in analytic, size, want_per_dim
            )
            rate = rate + site_rate
            values[f"rate/{name}"] = site_rate
            if per_dim is not None:
                kl_per_dim[name] = per_dim

        loss = distortion + weighted_rate
        surrogate = -surrogate_elbo
        if capacity is not None:
            # Burgess et al.: γ|R - C| replaces the rate; the handlers then carry β = 1 and γ arrives here
            gamma, target = capacity
            correction = gamma * (weighted_rate - target * size).abs() - weighted_rate
            loss = loss + correction
            surrogate = surrogate + correction
        for name, (weight, value) in self.information_terms(model_trace, guide_trace, size).items():
            values[name] = value.detach()
            if weight != 0:
                loss = loss + size * weight * value
                surrogate = surrogate + size * weight * value

        values["distortion"] = _as_tensor(distortion).detach() / size
        values["rate"] = _as_tensor(rate).detach()
        values["elbo"] = -(values["distortion"] + values["rate"])
        values["loss"] = _as_tensor(loss).detach() / size
        return surrogate, _as_tensor(loss).detach(), values, kl_per_dim

    @staticmethod
    def _unweighted_rate(model_site, guide_site, analytic, size, want_per_dim=True):
        """E[log q - log p] for one latent site per data point, without the bottleneck's β and anchor weights.

        Every other factor of the site's scale stays: the subsample factor N / B of the data plate and any
        ``poutine.scale`` a user put on model and guide to weight data points, so that distortion and rate carry
        the same weights and ``elbo = -(distortion + rate)`` is the ELBO of the program as written. Masks are
        ignored (β = 0 is a mask, and its rate is still reported).
        """
        weight = guide_site["scale"] / guide_site["infer"].get(BOTTLENECK_SCALE, 1.0) / size
        q_dim, p_dim = per_dimension(guide_site["fn"]), per_dimension(model_site["fn"])
        # anchored sites weight their log densities, so the unweighted rate needs the per-dimension densities
        anchored = isinstance(guide_site["fn"], AnchorWeighted)
        if (
            (want_per_dim or anchored)
            and q_dim is not None
            and p_dim is not None
            and q_dim.batch_shape == p_dim.batch_shape
        ):
            z = guide_site["value"]
            if analytic:
                elementwise = kl_divergence(q_dim, p_dim)
            else:
                elementwise = q_dim.log_prob(z) - p_dim.log_prob(z)
            elementwise = elementwise.detach() * _per_point(weight)
            per_dim = elementwise.reshape(-1, elementwise.shape[-1]).sum(0)
            return per_dim.sum(), per_dim if want_per_dim else None
        if analytic:
            diff = kl_divergence(guide_site["fn"], model_site["fn"])
        else:
            diff = guide_site["unscaled_log_prob"] - model_site["unscaled_log_prob"]
        return (diff.detach() * weight).sum(), None

    def terms(
        self, model, guide, *args, capacity: tuple[float, float] | None = None, per_dimension: bool = True, **kwargs
    ) -> Terms:
        """Evaluate the objective. ``capacity=(gamma, C)`` switches to the capacity-controlled rate γ|R - C|;
        ``per_dimension=False`` skips the per-dimension KL breakdown (training steps do not log it)."""
        surrogate = loss = 0.0
        values: dict[str, torch.Tensor] = {}
        kl_per_dim: dict[str, torch.Tensor] = {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            s, total, v, k = self._particle(model_trace, guide_trace, capacity, per_dimension)
            surrogate = surrogate + s / self.num_particles
            loss = loss + total / self.num_particles
            for key, val in v.items():
                values[key] = values.get(key, 0.0) + val / self.num_particles
            for key, val in k.items():
                kl_per_dim[key] = kl_per_dim.get(key, 0.0) + val / self.num_particles
        surrogate = _as_tensor(surrogate)
        # value of the loss, gradient of the surrogate (score-function terms change the gradient, not the value)
        surrogate = loss + (surrogate - surrogate.detach())
        return Terms(surrogate=surrogate, loss=_as_tensor(loss), values=values, kl_per_dim=kl_per_dim)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self.terms(model, guide, *args, **kwargs).surrogate

    def loss(self, model, guide, *args, **kwargs):
        """The loss as a float, computed by the same breakdown (``Trace_ELBO.loss`` would bypass it)."""
        with torch.no_grad():
            return float(self.terms(model, guide, *args, **kwargs).loss)

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss)


def _per_point(weight):
    """A site's scale (a number, or a tensor over its batch shape) made to broadcast over per-dimension values."""
    return weight.unsqueeze(-1) if torch.is_tensor(weight) and weight.dim() else weight


def _as_tensor(x) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.tensor(float(x))
