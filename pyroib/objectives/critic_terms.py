"""Information terms estimated by density-ratio critics: FactorVAE, the adversarial autoencoder and BIB-AE.

A critic T is a classifier logit trained by :func:`pyroib.critics.density_ratio_loss` to tell samples of P from
samples of Q; its optimum is T* = log P/Q, so E_P[T] estimates KL(P || Q) in nats. Three critics occur:

* ``tc``: P = q(z), Q = Π_j q(z_j) (codes with each dimension permuted across the batch): TC (FactorVAE).
* ``marginal``: P = q(z), Q = p(z) (prior draws): B = KL(q(z) || p(z)) (AAE, BIB-AE).
* ``data``: P = p_data(x), Q = p_θ(x) (decoded prior draws): D = KL(p_data(x) || p_θ(x)) (BIB-AE).

Gradients. For the two latent critics the loss term is E_q[T(z)] with T held fixed and gradients flowing into
the reparameterised codes; at T = T* that is the exact gradient of the KL, since the score of q has mean zero. For
D the samples of P are data, which carry no gradient, so the decoder must learn through the generated images Q.
The NWJ form E_P[T] − E_Q[exp T] + 1 has the gradient of D at T = T*, but off the optimum its gradient grows as
exp T: in a 20-epoch Fashion-MNIST run the decoder chased the critic's extrapolation and the distortion went from
about 246 to 3,274 nats. So D enters the loss with the value E_P[T] and the gradient of the non-saturating GAN
loss E_Q[softplus(−T)] (at most 1 per logit), whose minimiser is the same p_θ = p_data. An under-trained critic
shrinks every estimate towards 0.

Critics live in the objective, not in the model or guide, so ``fit``'s optimiser never sees them: they train with
their own Adam (β = (0.5, 0.9), as FactorVAE's discriminator) in :meth:`CriticELBO.auxiliary_step`, which ``fit``
calls after each model step, on the detached samples of that step (FactorVAE's scheme, no second encoder pass).
Their weights and optimiser states are in :meth:`CriticELBO.state_dict`, which the run checkpoint stores, so a
resumed run equals the uninterrupted one. Critics are built on first use, sized from the codes (or images) they
see; ``load_state_dict`` rebuilds them from the saved sizes.

Under data-parallel training (:mod:`pyroib.distributed`) a critic takes rank 0's weights when it is built and its
gradients are averaged over the processes before each of its steps, so every process holds the same critic and K
processes train it as one process would on the concatenated batch. The critics of q(z) read the codes of the batch
they are given: each process's own, or with ``--batch-terms global`` every process's (FactorVAE's permuted codes are
then drawn from the global batch).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.nn import functional as F

import pyroib.estimators as estimators

from ..critics import Critic, density_ratio_loss, permute_dims
from ..distributed import average_gradients, broadcast_weights, current
from ..handlers import per_dimension
from .aggregate import batch_marginal_kl, batch_mmd, check_choice, check_weight, latent_codes, prior_draws
from .core import InfoELBO, choose_site, observed_site_names

CRITIC_BETAS = (0.5, 0.9)
DATA_FAKES = ("prior", "reconstructions")


class CriticELBO(InfoELBO):
    """Base class: an InfoELBO that owns critics, trains them in ``auxiliary_step`` and checkpoints them.

    :param critic_width: units per hidden layer of every critic. :param critic_depth: hidden layers.
    :param critic_lr: Adam learning rate of the critics. :param critic_steps: critic updates per model step.
    """

    min_batch_size = 2

    def __init__(
        self, critic_width: int = 256, critic_depth: int = 2, critic_lr: float = 1e-4, critic_steps: int = 1, **kwargs
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("critic_width", critic_width),
            ("critic_depth", critic_depth),
            ("critic_steps", critic_steps),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.critic_hidden = (critic_width,) * critic_depth
        self.critic_lr = check_weight("critic_lr", critic_lr)
        if self.critic_lr == 0:
            raise ValueError("critic_lr must be > 0: an untrained critic estimates every divergence as about 0")
        self.critic_steps = critic_steps
        self.critics: dict[str, Critic] = {}
        self.critic_optimizers: dict[str, torch.optim.Optimizer] = {}

    # critics -------------------------------------------------------------------------------------------------
    def critic(self, name: str, input_dim: int, device) -> Critic:
        if name not in self.critics:
            self.critics[name] = Critic(input_dim, self.critic_hidden).to(device)
            self.critic_optimizers[name] = torch.optim.Adam(
                self.critics[name].parameters(), lr=self.critic_lr, betas=CRITIC_BETAS
            )
            broadcast_weights(current(), [self.critics[name]])
        critic = self.critics[name]
        if critic.input_dim != input_dim:
            raise ValueError(f"critic {name!r} was built for inputs of size {critic.input_dim}, got {input_dim}")
        return critic

    def critic_logit(self, name: str, samples: torch.Tensor) -> torch.Tensor:
        """T(samples) with the critic's weights frozen: the model's loss differentiates the samples only."""
        critic = self.critic(name, samples.shape[-1], samples.device)
        params = list(critic.parameters())
        for p in params:
            p.requires_grad_(False)
        try:
            return critic(samples)
        finally:
            for p in params:
                p.requires_grad_(True)

    def auxiliary_step(self, terms) -> dict[str, torch.Tensor]:
        """Train each critic ``critic_steps`` times on the samples of the model step just taken (``terms``)."""
        losses = {}
        for name, (samples_p, samples_q) in terms.critic_samples.items():
            critic, optimizer = self.critics[name], self.critic_optimizers[name]
            for _ in range(self.critic_steps):
                other = permute_dims(samples_p) if samples_q is None else samples_q
                loss = density_ratio_loss(critic, samples_p, other)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(current(), critic.parameters())
                optimizer.step()
            losses[name] = loss.detach()
        return losses

    # checkpointing -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "critics": {
                name: {
                    "input_dim": critic.input_dim,
                    "hidden": list(self.critic_hidden),
                    "weights": critic.state_dict(),
                    "optimizer": self.critic_optimizers[name].state_dict(),
                }
                for name, critic in self.critics.items()
            }
        }

    def load_state_dict(self, state: dict) -> None:
        for name, entry in state.get("critics", {}).items():
            if tuple(entry["hidden"]) != self.critic_hidden:
                raise ValueError(
                    f"the checkpoint's {name!r} critic has hidden layers {entry['hidden']}, this "
                    f"objective {list(self.critic_hidden)}: use the run's --critic-width/--critic-depth"
                )
            device = next(iter(entry["weights"].values())).device
            self.critic(name, int(entry["input_dim"]), device).load_state_dict(entry["weights"])
            self.critic_optimizers[name].load_state_dict(entry["optimizer"])

    # terms ---------------------------------------------------------------------------------------------------
    def critic_marginal_kl(self, model_trace, guide_trace, context=None) -> torch.Tensor:
        """E_q[T(z)] for the critic of q(z) against p(z): KL(q(z) || p(z)) in nats per point."""
        site = self.latent_site_of(model_trace, guide_trace)
        z, _, _ = latent_codes(guide_trace, site)
        if context is not None:
            context.remember("marginal", z, prior_draws(model_trace, site))
        return self.critic_logit("marginal", z).mean()


class FactorVAEELBO(CriticELBO):
    """FactorVAE (Kim and Mnih 2018): distortion + β·rate + γ · TC, TC from a critic on permuted codes.

    The rate already holds TC once, so the TC weight in total is 1 + γ (β-TCVAE's β_TC = 1 + γ). Logged as
    ``critic_tc``. γ defaults to 10, the low end of the range FactorVAE swept; ``tc_weight`` = 0 is the plain VAE.
    """

    def __init__(self, tc_weight: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.tc_weight = check_weight("tc_weight", tc_weight)

    def information_terms(self, model_trace, guide_trace, size, context=None):
        z, _, _ = latent_codes(guide_trace, self.latent_site_of(model_trace, guide_trace))
        if context is not None:
            context.remember("tc", z, None)
        return {"critic_tc": (self.tc_weight, self.critic_logit("tc", z).mean())}


class _PosteriorMean(Messenger):
    """Replace q(z|x) at one site by a point mass at its mean: a deterministic encoder from a Gaussian guide."""

    def __init__(self, site: str | None):
        super().__init__()
        self.site = site  # None: every latent site of the guide

    def _process_message(self, msg):
        if (
            msg["type"] == "sample"
            and self.site in (None, msg["name"])
            and not msg["is_observed"]
            and not site_is_subsample(msg)
        ):
            base = per_dimension(msg["fn"])
            if base is None:
                raise ValueError(f"a deterministic encoder needs a factorised Gaussian guide at site {msg['name']!r}")
            msg["fn"] = dist.Delta(base.mean, event_dim=1)


class AdversarialELBO(CriticELBO):
    """Adversarial autoencoder (Makhzani et al. 2016): distortion + weight · B, B a divergence of q(z) from p(z).

    The AAE has no per-point rate: its architecture masks the rate (β = 0, still reported; with a deterministic
    encoder the reported "rate" is the cross-entropy −log p(z) of the codes). ``divergence="critic"`` estimates
    B = KL(q(z) || p(z)) with a critic (logged ``critic_marginal_kl``); ``"mmd"`` uses MMD² instead (``mmd``).
    ``deterministic_encoder=True`` feeds the decoder and the divergence z = E_q[z|x], the AAE's original encoder,
    by turning the guide's Gaussian into a point mass inside this objective (the guide program is unchanged).
    """

    def __init__(
        self,
        marginal_weight: float = 1.0,
        divergence: str = "critic",
        kernel: str = "rbf",
        deterministic_encoder: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.marginal_weight = check_weight("marginal_weight", marginal_weight)
        self.divergence = check_choice("divergence", divergence, ("critic", "mmd"))
        self.kernel = check_choice("kernel", kernel, estimators.MMD_KERNELS)
        if not isinstance(deterministic_encoder, bool):
            raise TypeError(f"deterministic_encoder must be True or False, got {deterministic_encoder!r}")
        self.deterministic_encoder = deterministic_encoder

    def prepare(self, model, guide):
        return model, _PosteriorMean(self.latent_site)(guide) if self.deterministic_encoder else guide

    def information_terms(self, model_trace, guide_trace, size, context=None):
        if self.divergence == "mmd":
            site = self.latent_site_of(model_trace, guide_trace)
            return {"mmd": (self.marginal_weight, batch_mmd(model_trace, guide_trace, site, self.kernel))}
        return {
            "critic_marginal_kl": (self.marginal_weight, self.critic_marginal_kl(model_trace, guide_trace, context))
        }


class BoundedIBELBO(CriticELBO):
    """BIB-AE (Voloshynovskiy et al. 2019): all four terms of the bounded-IB Lagrangian (A − B) − β_IB(C − D).

    A = E_x KL(q(z|x) || p(z)) (the rate), B = KL(q(z) || p(z)), C = E log p(x|z) (−distortion),
    D = KL(p_data(x) || p_θ(x)). Divided by β_IB the Lagrangian is distortion + D + (A − B)/β_IB. pyroib's loss is

        distortion + β·A + marginal_kl_weight·B + data_kl_weight·D            (all weights >= 0)

    with β the usual ``--beta``. The signs: distortion and D are minimised, so the decoder reconstructs and its
    prior samples look like data; A is penalised (compression). The literal Lagrangian puts B with weight −1/β_IB,
    which with A gives the index-code MI A − B alone; a negative weight would push q(z) *away* from p(z) and spoil
    sampling from the prior, so pyroib keeps B as a non-negative penalty matching q(z) to p(z), as the AAE does.

    :param marginal_estimator: ``"mss"``/``"mws"`` (batch estimate, logged ``marginal_kl``) or ``"critic"``
        (``critic_marginal_kl``). D is always a critic on flattened images (``critic_data_kl``), real x against
        the likelihood's mean E[x|z] at prior draws z. For binarised data the real images are binary and the
        decoded means grey, which the critic tells apart by that alone; D is most meaningful with
        ``--binarize none`` and a continuous likelihood.
    :param data_site: the observed site whose values are the data x of D (default: the program's only observed
        site).
    :param data_fakes: what D's critic tells data from: ``"prior"`` (BIB-AE's p_θ(x), decoded prior draws) or
        ``"reconstructions"`` (the decoded codes of the batch itself, the perception term of generative compression,
        Blau and Michaeli 2019; Agustsson et al. 2019).
    With ``marginal_kl_weight=0`` the term B is not estimated at all (a deterministic code has no batch estimate).
    """

    def __init__(
        self,
        marginal_kl_weight: float = 1.0,
        data_kl_weight: float = 1.0,
        marginal_estimator: str = "mss",
        data_site: str | None = None,
        data_fakes: str = "prior",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.data_site = data_site
        self.data_fakes = check_choice("data_fakes", data_fakes, DATA_FAKES)
        self.marginal_kl_weight = check_weight("marginal_kl_weight", marginal_kl_weight)
        self.data_kl_weight = check_weight("data_kl_weight", data_kl_weight)
        self.marginal_estimator = check_choice(
            "marginal_estimator", marginal_estimator, (*estimators.ESTIMATOR_METHODS, "critic")
        )

    def information_terms(self, model_trace, guide_trace, size, context=None):
        if context is None:
            raise ValueError("BIB-AE's term D runs the model forward from its prior: evaluate it through terms()")
        if self.marginal_kl_weight == 0:
            terms = {}
        elif self.marginal_estimator == "critic":
            terms = {
                "critic_marginal_kl": (
                    self.marginal_kl_weight,
                    self.critic_marginal_kl(model_trace, guide_trace, context),
                )
            }
        else:
            terms = {
                "marginal_kl": (
                    self.marginal_kl_weight,
                    batch_marginal_kl(
                        model_trace,
                        guide_trace,
                        self.latent_site_of(model_trace, guide_trace),
                        size,
                        self.marginal_estimator,
                    ),
                )
            }
        data_site = choose_site(observed_site_names(model_trace), self.data_site, "observed", "--data-site")
        real = model_trace.nodes[data_site]["value"]
        if self.data_fakes == "reconstructions":
            fake = model_trace.nodes[data_site]["fn"].mean
        else:
            # the same program run forward from the prior: its observed site's distribution is p_θ(x | z ~ p(z))
            generated = poutine.trace(context.model).get_trace(*context.args, **context.kwargs)
            fake = generated.nodes[data_site]["fn"].mean
        real, fake = real.reshape(real.shape[0], -1), fake.reshape(fake.shape[0], -1)
        context.remember("data", real, fake)
        estimate = self.critic_logit("data", real).mean().detach()
        generator_loss = F.softplus(-self.critic_logit("data", fake)).mean()
        # the value is the density-ratio estimate of D; the gradient is the non-saturating loss's (module docstring)
        terms["critic_data_kl"] = (self.data_kl_weight, estimate + (generator_loss - generator_loss.detach()))
        return terms
