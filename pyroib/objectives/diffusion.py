"""The diffusion program's objective: the ELBO's T + 1 terms estimated from one timestep per image.

For the pair of :mod:`pyroib.models.diffusion` (the reverse chain) and :mod:`pyroib.guides.diffusion` (the forward
process) the negative ELBO per image is L_0 + L_T + Σ_{t=2..T} L_{t-1} (:mod:`pyroib.diffusion`); :class:`InfoELBO`
on the traced pair computes exactly that, site by site, but T network evaluations per image and step. Here each
step computes L_0 (one network evaluation at t = 1) and L_T (closed form) for every image, and the middle sum from
one t ~ p(t) per image, weighted by 1 / p(t) (Ho et al. 2020, Algorithm 1, with their ELBO weighting; Nichol and
Dhariwal 2021 for the importance-sampled p(t)). Since L_{t-1} depends on x_t alone, the estimate is unbiased for the
traced pair's ELBO; tests/test_diffusion.py checks value and gradient against the traced pair at T = 4 with the same
draws of x_t.

Bottleneck weights: the run's β (``--beta``, its schedules) multiplies every rate term (L_T and the L_{t-1}), and
``timestep_weights`` shapes β over t (``constant``: the ELBO; ``simple``: Ho et al.'s noise-prediction loss; linear
``increasing`` and ``decreasing`` ramps; :func:`pyroib.diffusion.timestep_weights`). The reported ``rate`` and
``elbo`` are unweighted.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..diffusion import TimestepSampler, timestep_weights
from ..distributed import every_process_rows
from .core import InfoELBO, Terms


class DiffusionELBO(InfoELBO):
    """:param timestep_weights: constant, simple, increasing or decreasing (per-timestep β_t shape).
    :param timestep_sampling: uniform or importance (p(t) ∝ sqrt(E[(w_t L_{t-1})²]), Nichol and Dhariwal 2021)."""

    # the training loop passes β to terms() instead of wrapping the program in the bottleneck handlers: the
    # estimator does not trace the T sites the handlers would weigh
    weighs_itself = True

    def __init__(self, timestep_weights: str = "constant", timestep_sampling: str = "uniform", **kwargs):
        super().__init__(**kwargs)
        from ..diffusion import TIMESTEP_SAMPLING, TIMESTEP_WEIGHTS

        if self.num_particles != 1:
            raise ValueError(
                f"the diffusion objective draws one timestep and one x_t per image and step, not particles (got "
                f"{self.num_particles}): raise --batch-size for a lower-variance estimate"
            )

        if timestep_weights not in TIMESTEP_WEIGHTS:
            raise ValueError(
                f"unknown timestep_weights {timestep_weights!r}: choose one of {', '.join(TIMESTEP_WEIGHTS)}"
            )
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(
                f"unknown timestep_sampling {timestep_sampling!r}: choose one of {', '.join(TIMESTEP_SAMPLING)}"
            )
        self.timestep_weights, self.timestep_sampling = timestep_weights, timestep_sampling
        self._sampler: TimestepSampler | None = None
        self._weights: torch.Tensor | None = None
        self._saved_sampler: dict | None = None

    @staticmethod
    def _require(model) -> None:
        if not all(callable(getattr(model, name, None)) for name in ("data_term", "prior_term", "timestep_kl")):
            raise ValueError(
                f"the diffusion objective reads a program's data_term, prior_term and timestep_kl (pyroib's "
                f"--model diffusion); {type(model).__name__} does not define them"
            )

    def _state_for(self, model):
        if self._sampler is None:
            self._sampler = TimestepSampler(model.config.timesteps, self.timestep_sampling)
            if self._saved_sampler is not None:
                self._sampler.load_state_dict(self._saved_sampler)
            self._weights = timestep_weights(self.timestep_weights, model.schedule)
        device = model.schedule.betas.device
        self._sampler.to(device)
        self._weights = self._weights.to(device)
        return self._sampler, self._weights

    def terms(self, model, guide, x, y=None, index=None, size=None, per_dimension: bool = True, beta=1.0, **kw):
        if isinstance(beta, Mapping):
            raise ValueError(
                "the diffusion objective takes one β for its rate terms; shape it over timesteps with "
                "--timestep-weights, not per site"
            )
        self._require(model)
        sampler, weights = self._state_for(model)
        n = x.shape[0]
        scale = float(size) if size is not None else float(n)  # Pyro's convention: a total over the N data points
        data = model.data_term(x)
        prior = model.prior_term(x)
        training = torch.is_grad_enabled()
        if training:
            t, p = sampler.sample(n, x.device)
        else:  # evaluation: uniform p(t), whatever the training history
            t = torch.randint(2, model.config.timesteps + 1, (n,), device=x.device)
            p = torch.full((n,), 1 / (model.config.timesteps - 1), device=x.device)
        kl = model.timestep_kl(x, t)
        chain = kl / p
        weighted = float(beta) * (prior + weights[t - 1] * chain)
        per_point = data + weighted
        surrogate = scale * per_point.mean()
        values = {
            "distortion": data.mean().detach(),
            "rate": (prior + chain).mean().detach(),
            "rate/prior": prior.mean().detach(),
            "rate/chain": chain.mean().detach(),
        }
        values["elbo"] = -(values["distortion"] + values["rate"])
        values["loss"] = per_point.mean().detach()
        terms = Terms(surrogate=surrogate, loss=surrogate.detach(), values=values)
        if training:
            # the history is of the weighted term, so p(t) ∝ sqrt(E[(w_t L_{t-1})²]) lowers the variance of what is
            # optimised (the simple weights span two orders of magnitude over t)
            terms.critic_samples["timesteps"] = (t.detach(), (weights[t - 1] * kl).detach())
        return terms

    def auxiliary_step(self, terms: Terms) -> dict[str, torch.Tensor]:
        sampler = self._sampler
        if sampler is not None and sampler.kind != "uniform" and "timesteps" in terms.critic_samples:
            # under data-parallel training every process adds every process's timesteps, in rank order, so their
            # histories, and so their p(t), stay identical
            sampler.update(*(every_process_rows(v) for v in terms.critic_samples["timesteps"]))
        return {}

    def state_dict(self) -> dict:
        if self._sampler is None:
            return {} if self._saved_sampler is None else {"sampler": self._saved_sampler}
        return {"sampler": {k: v.detach().cpu() for k, v in self._sampler.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - {"sampler"}
        if unknown:
            raise ValueError(f"DiffusionELBO has no state {', '.join(sorted(unknown))}: another objective's checkpoint")
        self._saved_sampler = state.get("sampler")
        if self._sampler is not None and self._saved_sampler is not None:
            self._sampler.load_state_dict(self._saved_sampler)
