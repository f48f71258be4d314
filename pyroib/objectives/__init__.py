"""The information-bottleneck objectives: one ELBO core and the terms it can add.

* :mod:`.core`: :class:`InfoELBO`, the ``Trace_ELBO`` that splits a trace pair into named terms (distortion, rate
  per site and per dimension, extra terms) and builds the loss from the same numbers.
* :mod:`.aggregate`: terms of the aggregate posterior estimated on the minibatch (β-TCVAE's total correlation,
  the marginal KL, InfoVAE's MMD).
* :mod:`.critic_terms`: terms estimated by density-ratio critics (FactorVAE, the adversarial autoencoder, BIB-AE).
* :mod:`.diffusion`: the diffusion program's ELBO from one sampled timestep per image.
"""

from .aggregate import MMDELBO, MarginalKLELBO, TotalCorrelationELBO
from .core import InfoELBO, TermContext, Terms, latent_site_names, surrogate_elbo
from .critic_terms import AdversarialELBO, BoundedIBELBO, CriticELBO, FactorVAEELBO
from .diffusion import DiffusionELBO

__all__ = [
    "AdversarialELBO",
    "BoundedIBELBO",
    "CriticELBO",
    "DiffusionELBO",
    "FactorVAEELBO",
    "InfoELBO",
    "MMDELBO",
    "MarginalKLELBO",
    "TermContext",
    "Terms",
    "TotalCorrelationELBO",
    "latent_site_names",
    "surrogate_elbo",
]
