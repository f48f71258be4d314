"""Discrete latent sites summed out exactly inside the information objective, with the named breakdown kept.

A site marked for enumeration (Pyro's ``config_enumerate`` or ``infer={"enumerate": "parallel"}``) is not sampled:
every value is traced at once in a dimension left of the plates (Pyro's ``EnumMessenger``), or one trace per value
(``"sequential"``, guide sites only). Two placements:

* **In the guide and the model** (y ~ q(y|x)): each term of one particle is an expectation over the enumerated values,
  Σ_y q(y|·) f(y), with q the joint of every enumerated guide site (unscaled: β multiplies a site's cost, never the
  weight it gets from q). The discrete site's rate is then KL(q(y|·) ‖ p(y)) exactly, the continuous sites' rates
  are weighted by q(y|·), and gradients flow through q(y|·) itself, so no score-function term is needed. With the
  same random draws this is the value and gradient of Pyro's ``TraceEnum_ELBO`` (Dice weights enumerated sites by
  their probability), tested.
* **In the model only** (marginalised inside log p): the sites that depend on the enumerated values are split by
  the chain rule in the order the model samples them, log p(s_1..s_n) = Σ_k [M_k − M_{k−1}] with
  M_k = log Σ_y p(y) Π_{i≤k} p(s_i | y, ·), so each site keeps a term of its own (a rate for a latent site, a
  distortion for an observed one) and its own weight. With equal weights the pieces telescope to
  ``TraceEnum_ELBO``'s log-sum-exp (which requires one common scale on all of them); with per-site β they are the
  hand-written weighted sum. Per-dimension anchors cannot reach a site whose prior is such a marginal (it does not
  factorise over dimensions) and are refused.

What is not supported is refused with one line: a non-reparameterised guide site sampled (not enumerated) in a program
that enumerates, sequential enumeration of a model-only site, and enumerated sites in different plates.
"""

from __future__ import annotations

import math
import queue

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.enum import get_importance_trace, iter_discrete_escape, iter_discrete_extend
from pyro.poutine.enum_messenger import EnumMessenger

from ..plates import max_plate_nesting

ENUMERATE = "enumerate"


def is_annotated(*traces) -> bool:
    """True if any sample site of the traces is marked for enumeration."""
    return any(
        site["type"] == "sample" and site["infer"].get(ENUMERATE) for trace in traces for site in trace.nodes.values()
    )


def enumerated_traces(elbo, model, guide, args, kwargs):
    """Trace pairs with enumerated sites expanded: the trace generation of Pyro 1.9.2's ``TraceEnum_ELBO._get_traces``
    (pyro/infer/traceenum_elbo.py) without vectorised particles, so that the same random draws give the same traces.
    Sequential enumeration yields one pair per value; the pairs of one particle together make one expectation."""
    if elbo.max_plate_nesting == float("inf"):
        elbo.max_plate_nesting = max_plate_nesting(model, guide, *args, **kwargs)
    # the model allocates its enumeration dims left of the guide's: EnumMessenger() keeps the allocator's state
    guide = EnumMessenger(first_available_dim=-1 - elbo.max_plate_nesting)(guide)
    model = EnumMessenger()(model)
    pending = queue.LifoQueue()
    guide = poutine.queue(guide, pending, escape_fn=iter_discrete_escape, extend_fn=iter_discrete_extend)
    for _ in range(elbo.num_particles):
        pending.put(poutine.Trace())
        while not pending.empty():
            yield get_importance_trace("flat", elbo.max_plate_nesting, model, guide, args, kwargs)


def _plates(site) -> frozenset[str]:
    return frozenset(f.name for f in site["cond_indep_stack"] if f.vectorized)


def _enumerated(site) -> bool:
    return site["infer"].get("_enumerate_dim") is not None or "_enum_total" in site["infer"]


def _sample_sites(trace):
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}


class Enumerated:
    """How one enumerated trace pair's log densities become expectations: the weights of the guide's enumerated
    values and the chain-rule pieces of model sites that depend on model-only enumerated values."""

    enumerated = True

    def __init__(self, model_trace, guide_trace):
        model_sites, guide_sites = _sample_sites(model_trace), _sample_sites(guide_trace)
        enumerated = {name: site for name, site in {**model_sites, **guide_sites}.items() if _enumerated(site)}
        plates = {name: _plates(site) for name, site in enumerated.items()}
        # annotated but nothing expanded (an annotation on an observed site, say): plain sums
        self.plates = next(iter(plates.values()), frozenset())
        if any(p != self.plates for p in plates.values()):
            listed = "; ".join(f"{name} in {sorted(p) or 'no plate'}" for name, p in plates.items())
            raise ValueError(
                f"enumerated sites lie in different plates ({listed}): pyroib sums out discrete sites that share "
                "one set of plates (usually the data plate); move them into the same plates or sample the others"
            )
        for name, site in guide_sites.items():
            if not _enumerated(site) and not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site {name!r} is sampled without reparameterisation in a program that enumerates "
                    f"{', '.join(map(repr, enumerated))}: score-function gradients are not combined with "
                    "enumeration. Enumerate it too (infer={'enumerate': 'parallel'}) or use a reparameterised "
                    "(e.g. relaxed) distribution"
                )
        log_weight = None
        for site in guide_sites.values():
            if _enumerated(site):
                log_weight = site["unscaled_log_prob"] if log_weight is None else log_weight + site["unscaled_log_prob"]
        self.weight = None if log_weight is None else log_weight.exp()
        # enumerated in the model and absent from the guide: summed out inside the dependents' chain-rule pieces
        self.summed_out = frozenset(n for n, site in model_sites.items() if _enumerated(site) and n not in guide_sites)
        self.guide_dims = [
            site["infer"]["_enumerate_dim"]
            for site in guide_sites.values()
            if site["infer"].get("_enumerate_dim") is not None
        ]
        # sequential enumeration spreads one particle's values over several trace pairs
        self.sequential = any("_enum_total" in site["infer"] for site in guide_sites.values())
        self.marginal = self._split_model_only(model_sites)

    def _split_model_only(self, model_sites) -> dict[str, torch.Tensor]:
        """Unscaled chain-rule pieces M_k − M_{k−1} of the model sites that depend on model-only enumerated sites."""
        summed = {n: model_sites[n] for n in model_sites if n in self.summed_out}
        if not summed:
            return {}
        for name, site in summed.items():
            if site["infer"].get(ENUMERATE) != "parallel":
                raise ValueError(
                    f"model site {name!r} is enumerated sequentially; a site summed out in the model only must be "
                    "marked infer={'enumerate': 'parallel'} (sequential enumeration runs guide sites)"
                )
        dims = tuple(sorted({site["infer"]["_enumerate_dim"] for site in summed.values()}))

        def depends(tensor):
            return any(tensor.dim() >= -d and tensor.shape[d] > 1 for d in dims)

        def masked(site):
            # plates the enumerated sites are not in are summed before the log-sum-exp: Σ_y Π_pixels, not Π Σ
            return self.within_plates(scale_and_mask(site["unscaled_log_prob"], mask=site["mask"]), site)

        running = sum(masked(site) for site in summed.values())
        previous = torch.logsumexp(running, dims, keepdim=True)
        pieces = {}
        for name, site in model_sites.items():
            if name in summed or not torch.is_tensor(site["unscaled_log_prob"]):
                continue
            if not depends(site["unscaled_log_prob"]):
                continue
            if not self.plates <= _plates(site):
                raise ValueError(
                    f"site {name!r} depends on the model-enumerated site(s) {', '.join(map(repr, summed))} but lies "
                    "outside their plates; enumerate them in the guide instead"
                )
            if type(site["fn"]).__name__ == "AnchorWeighted":
                raise ValueError(
                    f"anchor weights on latent site {name!r}: its prior is a sum over the model-enumerated site(s) "
                    f"{', '.join(map(repr, summed))}, which has no per-dimension density. Enumerate them in the "
                    "guide as well, or weight the site with --beta"
                )
            running = running + masked(site)
            current = torch.logsumexp(running, dims, keepdim=True)
            pieces[name] = current - previous
            previous = current
        return pieces

    def within_plates(self, tensor, site):
        """A site's tensor summed over the plates the enumerated sites are not in (kept as size-1 dims)."""
        extra = [f.dim for f in site["cond_indep_stack"] if f.vectorized and f.name not in self.plates]
        extra = [d for d in extra if tensor.dim() >= -d]
        return tensor.sum(extra, keepdim=True) if extra else tensor

    def depends_on_enumeration(self, site, max_plate_nesting: int) -> bool:
        """Whether a site's value was drawn once per enumerated value (its batch has dims left of the plates)."""
        value = site["value"]
        return value.dim() - site["fn"].event_dim > max_plate_nesting and math.prod(value.shape) > 1

    def weighs(self, site) -> bool:
        """Whether :meth:`expect` weights the site's tensors by q of the enumerated values (else it sums them)."""
        return self.weight is not None and self.plates <= _plates(site)

    def expect(self, tensor, site) -> torch.Tensor:
        """Σ over the site's batch of E_q[tensor] over the enumerated values (q: the guide's enumerated sites)."""
        if self.weight is None:
            return tensor.sum()
        if not self.plates <= _plates(site):
            if any(torch.is_tensor(tensor) and tensor.dim() >= -d and tensor.shape[d] > 1 for d in self.guide_dims):
                raise ValueError(
                    f"site {site['name']!r} lies outside the plates of the enumerated sites but depends on their "
                    "values; put it inside the same plates"
                )
            return tensor.sum()
        return (self.weight * tensor).sum()

    def expect_per_dim(self, elementwise, site) -> torch.Tensor:
        """Like :meth:`expect` for values with a trailing dimension of latents: one total per dimension."""
        if self.weighs(site):
            elementwise = self.weight.unsqueeze(-1) * elementwise
        return elementwise.reshape(-1, elementwise.shape[-1]).sum(0)

    def log_prob(self, name, site, unscaled: bool = False) -> torch.Tensor:
        """The model site's log density as the objective reads it: its chain-rule piece where it depends on a
        model-only enumerated site, its own log density otherwise (scaled unless ``unscaled``)."""
        if name in self.marginal:
            piece = self.marginal[name]
            return piece if unscaled else piece * site["scale"]
        return site["unscaled_log_prob"] if unscaled else site["log_prob"]

    def total(self, name, site) -> torch.Tensor:
        return self.expect(self.log_prob(name, site), site)

    def surrogate(self, model_trace, guide_trace, closed_form) -> torch.Tensor:
        """The ELBO of one enumerated particle, differentiable: exact in the enumerated values, reparameterised in the
        sampled ones (no score-function terms: they are refused above)."""
        elbo = 0.0
        for name, site in _sample_sites(model_trace).items():
            if name not in closed_form and name not in self.summed_out:
                elbo = elbo + self.total(name, site)
        for name, site in _sample_sites(guide_trace).items():
            elbo = elbo - (closed_form[name] if name in closed_form else self.expect(site["log_prob"], site))
        return elbo


__all__ = ["ENUMERATE", "Enumerated", "enumerated_traces", "is_annotated"]
