"""The information-bottleneck objective: a ``Trace_ELBO`` that knows its own terms.

One function, :meth:`InfoELBO.terms`, splits a model/guide trace pair into named terms in nats per data point:

* ``distortion``  D = -E_q log p(x | z)          (all observed sites)
* ``rate``        R = E_q[log q(z|x) - log p(z)]  (all latent sites, without β and anchor weights; a user's data
  weights, as on the distortion, stay)
* ``rate/<site>`` and ``kl_per_dim/<site>`` for each latent site, the latter per dimension where the site factorises
* one entry per extra information term a subclass adds (total correlation, MMD, ...), with its weight.
* ``factor/<name>`` for each ``pyro.factor`` in the model: -log factor, in the loss but in none of the terms above.

The loss is assembled from the same numbers, so what is logged is what is optimised:

    loss = N · (D + R_β + Σ_k λ_k T_k + Σ_f F_f)        (Pyro's convention: a total over the N data points)

where R_β is the rate as weighted by the bottleneck handlers (β, anchors; see :mod:`pyroib.handlers`) and N is the
size of the data plate (``pyro.plate("data", N, subsample=idx)``), read from the plate's frame, never from a site's
scale (which already includes β). With β = 1, no anchors and no extra terms the loss *is* ``Trace_ELBO``'s, in value
and gradient, including score-function terms for non-reparameterised latents; with ``analytic_kl=True`` it is
``TraceMeanField_ELBO``'s. When the bottleneck handlers carry a capacity (γ, C) (Burgess et al. 2018) the rate
enters as γ|R - C| instead.

Unlike ``Trace_ELBO`` nothing here calls ``.item()``: the loss stays on the device, so a training step costs no
host-device synchronisation per site.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.poutine.util import site_is_subsample
from torch.distributions import kl_divergence

from ..handlers import BOTTLENECK_SCALE, CAPACITY, AnchorWeighted, per_dimension
from ..plates import DATA_PLATE
from ..program import is_factor
from .enumeration import Enumerated, enumerated_traces, is_annotated


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
    # detached samples the objective's critics train on after the model step (:meth:`InfoELBO.auxiliary_step`)
    critic_samples: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)


@dataclass
class TermContext:
    """What an information term may read besides the trace pair: the program and its arguments (to run it again,
    e.g. forward from the prior), and where to leave samples for critics. Made afresh by every :meth:`InfoELBO.terms`
    call, so nothing is carried on the objective between a loss and the step after it."""

    model: Callable
    guide: Callable
    args: tuple
    kwargs: dict
    critic_samples: dict = field(default_factory=dict)

    def remember(self, name: str, samples_p: torch.Tensor, samples_q: torch.Tensor | None) -> None:
        """Keep a training step's samples for critic ``name`` (``samples_q=None``: permute samples_p's dimensions).
        Evaluation passes run under ``no_grad`` and feed no critic."""
        if torch.is_grad_enabled():
            self.critic_samples[name] = (samples_p.detach(), None if samples_q is None else samples_q.detach())


def dataset_size(trace) -> int:
    """N of the data plate in a trace (1 when the program has no plate named ``data``)."""
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.name == DATA_PLATE:
                size = int(frame.full_size or frame.size)
                if size < 1:
                    raise ValueError(
                        f"plate {DATA_PLATE!r} has size {size}: it was built without a size (pyro.plate(name, None)); "
                        f"give it the data set's size, or the batch's when none is passed: "
                        f"pyro.plate({DATA_PLATE!r}, size or x.shape[0], subsample=index)"
                    )
                return size
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
    """The model's observed sites, its factors (rule 7) left out."""
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not is_factor(site)
    ]


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


def surrogate_elbo(model_trace, guide_trace, closed_form_kl: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One particle's surrogate ELBO: the estimator of Pyro 1.9.2's ``Trace_ELBO._differentiable_loss_particle``
    (pyro/infer/trace_elbo.py), kept here because that method is private and returns the loss as a float.

    Σ log p over model sites, minus the guide's entropy terms (reparameterised sites), plus log r · score for
    non-reparameterised guide sites, with log r = log p - log q summed down to each site's plates (downstream cost,
    Rao-Blackwellised by plates). A site in ``closed_form_kl`` enters as -KL(q || p) instead of its log p and log q,
    as in ``TraceMeanField_ELBO``. Its gradient is the ELBO's gradient; its value is not the ELBO's when score
    terms are present (they add 0 in value only in expectation). Tested against Pyro in value and gradient,
    Gaussian and Categorical guide sites (tests/test_objectives.py), which guards the pin to Pyro 1.9.
    """
    surrogate = 0.0
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and name not in closed_form_kl:
            surrogate = surrogate + site["log_prob_sum"]
    log_r = None
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if name in closed_form_kl:
            surrogate = surrogate - closed_form_kl[name]
            continue
        _, score_function_term, entropy_term = site["score_parts"]
        if not is_identically_zero(entropy_term):
            surrogate = surrogate - entropy_term.sum()
        if not is_identically_zero(score_function_term):
            if log_r is None:
                log_r = _compute_log_r(model_trace, guide_trace)
            surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function_term).sum()
    return _as_tensor(surrogate)


def _same_points(q_shape: torch.Size, p_shape: torch.Size, enumeration_weighted: bool) -> bool:
    """Whether q's and p's per-dimension densities pair up data point by data point: equal batches, or a prior with
    dims of enumerated values on the left (p(z1 | z2) of a hierarchy, one per value of z2) that the enumeration's
    weights take the expectation over."""
    if q_shape == p_shape:
        return True
    try:
        joint = torch.broadcast_shapes(q_shape, p_shape)
    except RuntimeError:
        return False
    return enumeration_weighted and joint[len(joint) - len(q_shape) :] == q_shape


class Summed:
    """One sampled trace pair's log densities, summed: what :class:`Enumerated` reduces to without enumeration."""

    enumerated = sequential = False
    marginal: dict = {}
    summed_out: frozenset = frozenset()

    @staticmethod
    def expect(tensor, site):
        return tensor.sum()

    @staticmethod
    def weighs(site) -> bool:
        return False

    @staticmethod
    def expect_per_dim(elementwise, site):
        return elementwise.reshape(-1, elementwise.shape[-1]).sum(0)

    @staticmethod
    def log_prob(name, site, unscaled=False):
        return site["unscaled_log_prob"] if unscaled else site["log_prob"]

    @staticmethod
    def total(name, site):
        return site["log_prob_sum"]

    @staticmethod
    def surrogate(model_trace, guide_trace, closed_form):
        return surrogate_elbo(model_trace, guide_trace, closed_form)


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
        self._enumerating = False

    def latent_site_of(self, model_trace, guide_trace) -> str:
        return choose_site(latent_site_names(model_trace, guide_trace), self.latent_site, "latent", "--latent-site")

    # hooks for subclasses ------------------------------------------------------------------------------------
    def information_terms(
        self, model_trace, guide_trace, size: int, context: TermContext | None = None
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """Extra terms as ``name -> (weight, value in nats per data point)``; values must be differentiable.
        ``context`` holds the program and its arguments, and takes critics' samples (:class:`TermContext`)."""
        return {}

    def prepare(self, model, guide):
        """The model and guide this objective traces: the run's own, or handled (a deterministic encoder, say)."""
        return model, guide

    def auxiliary_step(self, terms: Terms) -> dict[str, torch.Tensor]:
        """Called by ``fit`` after each model step with that step's :class:`Terms`: critics train on the samples
        it carries. Returns their losses."""
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
    def _particle(self, model_trace, guide_trace, context, want_per_dim=True):
        size = dataset_size(model_trace)
        latents = set(latent_site_names(model_trace, guide_trace))
        # how log densities become totals: plain sums, or expectations over enumerated values
        densities = Enumerated(model_trace, guide_trace) if is_annotated(model_trace, guide_trace) else Summed()
        closed_form = {}
        if self.analytic_kl:
            for name in latents - set(densities.marginal):
                guide_site, model_site = guide_trace.nodes[name], model_trace.nodes[name]
                kl = _analytic_kl(guide_site, model_site) if guide_site["fn"].has_rsample else None
                if kl is not None:
                    closed_form[name] = densities.expect(
                        scale_and_mask(kl, guide_site["scale"], guide_site["mask"]), guide_site
                    )
        surrogate = -densities.surrogate(model_trace, guide_trace, closed_form)

        # the numbers: distortion over observed sites, the β-weighted rate as the loss has it, then per-site rates
        # without β
        distortion = weighted_rate = 0.0
        factors: dict[str, torch.Tensor] = {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or name in closed_form or name in densities.summed_out:
                continue
            if is_factor(site):  # a penalty of the program's own (contract rule 7): in the loss, not in p(x)
                factors[name] = -densities.total(name, site)
            elif site["is_observed"]:
                distortion = distortion - densities.total(name, site)
            else:
                weighted_rate = weighted_rate - densities.total(name, site)
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and name not in closed_form:
                weighted_rate = weighted_rate + densities.expect(site["log_prob"], site)
        weighted_rate = weighted_rate + sum(closed_form.values())

        values: dict[str, torch.Tensor] = {}
        kl_per_dim: dict[str, torch.Tensor] = {}
        rate = 0.0
        for name in sorted(latents):
            site_rate, per_dim = self._unweighted_rate(
                name,
                model_trace.nodes[name],
                guide_trace.nodes[name],
                name in closed_form,
                size,
                densities,
                want_per_dim,
            )
            rate = rate + site_rate
            values[f"rate/{name}"] = site_rate
            if per_dim is not None:
                kl_per_dim[name] = per_dim

        loss = distortion + weighted_rate + sum(factors.values())
        capacity = _capacity(guide_trace, latents)
        if capacity is not None:
            # Burgess et al.: γ|R - C| replaces the rate
            gamma, target = capacity
            correction = gamma * (weighted_rate - target * size).abs() - weighted_rate
            loss = loss + correction
            surrogate = surrogate + correction
        extra_terms = type(self).information_terms is not InfoELBO.information_terms
        if densities.sequential and (extra_terms or capacity is not None):
            raise ValueError(
                "sequential enumeration spreads each data point's values over several traces, so batch-level terms "
                "and capacity control (which need the whole rate at once) cannot see them: enumerate in parallel"
            )
        if densities.enumerated and extra_terms:
            name = self.latent_site_of(model_trace, guide_trace)
            site, prior = guide_trace.nodes[name], model_trace.nodes[name]
            if densities.depends_on_enumeration(site, self.max_plate_nesting) or (
                prior["unscaled_log_prob"].dim() > self.max_plate_nesting or name in densities.marginal
            ):
                raise ValueError(
                    f"{type(self).__name__} reads latent site {name!r}, whose draw or prior varies with an enumerated "
                    "site: batch-level terms need one draw and one prior per data point. Name a site drawn before "
                    "the enumerated ones, with a prior that does not depend on them, with --latent-site"
                )
        for name, (weight, value) in self.information_terms(model_trace, guide_trace, size, context).items():
            values[name] = value.detach()
            if weight != 0:
                loss = loss + size * weight * value
                surrogate = surrogate + size * weight * value

        for name, value in factors.items():
            values[f"factor/{name}"] = _as_tensor(value).detach() / size
        values["distortion"] = _as_tensor(distortion).detach() / size
        values["rate"] = _as_tensor(rate).detach()
        values["elbo"] = -(values["distortion"] + values["rate"])
        values["loss"] = _as_tensor(loss).detach() / size
        return surrogate, _as_tensor(loss).detach(), values, kl_per_dim

    @staticmethod
    def _unweighted_rate(name, model_site, guide_site, analytic, size, densities, want_per_dim=True):
        """E[log q - log p] for one latent site per data point, without the bottleneck's β and anchor weights.

        Every other factor of the site's scale stays: the subsample factor N / B of the data plate and any
        ``poutine.scale`` a user put on model and guide to weight data points, so that distortion and rate carry
        the same weights and ``elbo = -(distortion + rate)`` is the ELBO of the program as written. Masks are
        ignored (β = 0 is a mask, and its rate is still reported).
        """
        weight = guide_site["scale"] / guide_site["infer"].get(BOTTLENECK_SCALE, 1.0) / size
        marginal = name in densities.marginal
        q_dim, p_dim = per_dimension(guide_site["fn"]), per_dimension(model_site["fn"])
        # anchored sites weight their log densities, so the unweighted rate needs the per-dimension densities
        anchored = isinstance(guide_site["fn"], AnchorWeighted)
        if (
            (want_per_dim or anchored)
            and not marginal
            and q_dim is not None
            and p_dim is not None
            and _same_points(q_dim.batch_shape, p_dim.batch_shape, densities.weighs(guide_site))
        ):
            z = guide_site["value"]
            if analytic:
                elementwise = kl_divergence(q_dim, p_dim)
            else:
                elementwise = q_dim.log_prob(z) - p_dim.log_prob(z)
            per_dim = densities.expect_per_dim(elementwise.detach() * _per_point(weight), guide_site).detach()
            return per_dim.sum(), per_dim if want_per_dim else None
        if analytic:
            diff = kl_divergence(guide_site["fn"], model_site["fn"])
        elif marginal:
            # the chain-rule piece is one number per enumerated value and data point; the guide's density may have
            # further plates: reduce it alike before the two meet
            diff = densities.within_plates(guide_site["unscaled_log_prob"], guide_site) - densities.marginal[name]
        else:
            diff = guide_site["unscaled_log_prob"] - model_site["unscaled_log_prob"]
        return densities.expect(diff.detach() * weight, guide_site).detach(), None

    def _traces(self, model, guide, args, kwargs):
        """The particles' trace pairs: sampled as ``Trace_ELBO`` samples them, or with the sites a program marks for
        enumeration expanded (:mod:`.enumeration`). An objective switches to the latter the first time it sees an
        annotated site, and stays there (on a program without annotations both give the same traces)."""
        if not self._enumerating:
            with warnings.catch_warnings():
                # Pyro's validation warns about annotated (or model-only enumerated) sites in a sampled trace;
                # this pass only looks for them
                warnings.filterwarnings(
                    "ignore", message="(?s).*(enumerate|vars in model but not guide)", category=UserWarning
                )
                traces = list(self._get_traces(model, guide, args, kwargs))
            if not is_annotated(*traces[0]):
                return traces
            self._enumerating = True
        return list(enumerated_traces(self, model, guide, args, kwargs))

    def terms(self, model, guide, *args, per_dimension: bool = True, **kwargs) -> Terms:
        """Evaluate the objective on ``model`` and ``guide`` (as wrapped by the bottleneck handlers, which carry β,
        anchor weights and a capacity). ``per_dimension=False`` skips the per-dimension KL breakdown (training steps
        do not log it)."""
        surrogate = loss = 0.0
        values: dict[str, torch.Tensor] = {}
        kl_per_dim: dict[str, torch.Tensor] = {}
        model, guide = self.prepare(model, guide)
        context = TermContext(model, guide, args, kwargs)
        for model_trace, guide_trace in self._traces(model, guide, args, kwargs):
            s, total, v, k = self._particle(model_trace, guide_trace, context, per_dimension)
            surrogate = surrogate + s / self.num_particles
            loss = loss + total / self.num_particles
            for key, val in v.items():
                values[key] = values.get(key, 0.0) + val / self.num_particles
            for key, val in k.items():
                kl_per_dim[key] = kl_per_dim.get(key, 0.0) + val / self.num_particles
        surrogate = _as_tensor(surrogate)
        # value of the loss, gradient of the surrogate (score-function terms change the gradient, not the value)
        surrogate = loss + (surrogate - surrogate.detach())
        return Terms(
            surrogate=surrogate,
            loss=_as_tensor(loss),
            values=values,
            kl_per_dim=kl_per_dim,
            critic_samples=context.critic_samples,
        )

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


def _capacity(guide_trace, latents) -> tuple[float, float] | None:
    """The capacity (γ, C) the bottleneck handlers put on the latent sites, or None."""
    found = {guide_trace.nodes[name]["infer"].get(CAPACITY) for name in latents}
    if len(found) > 1:
        raise ValueError(f"latent sites carry different capacities {found}: capacity control weighs the total rate")
    return found.pop() if found else None


def _per_point(weight):
    """A site's scale (a number, or a tensor over its batch shape) made to broadcast over per-dimension values."""
    return weight.unsqueeze(-1) if torch.is_tensor(weight) and weight.dim() else weight


def _as_tensor(x) -> torch.Tensor:
    return x if torch.is_tensor(x) else torch.tensor(float(x))
