"""The Gaussian-mixture VAE: the hierarchical story of :mod:`pyroib.models.hvae` with two layers,

    z2_n ~ Uniform{1..K}                         the cluster, categorical
    z1_n ~ N(μ(z2_n), diag σ(z2_n)²)             a Gaussian per cluster (a linear map of the one-hot z2 by default)
    x_n  ~ p(x | z1_n)

and another guide (:mod:`pyroib.guides.gmvae`): q(z2 | x) q(z1 | x, z2) with z2 enumerated in the guide
(``--summed-in guide``, the default), or q(z1 | x) alone with z2 summed out inside the model's log p(z1), a
mixture prior (``--summed-in model``). The same machinery, the same site names (z1 the code, z2 the cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroib.models.hvae import Config as _HierarchyConfig
from pyroib.models.hvae import Model

SUMMED_IN = ("guide", "model")


@dataclass(frozen=True)
class Config(_HierarchyConfig):
    layer_sizes: tuple[int, ...] = (10, 10)
    layer_types: tuple[str, ...] = ("gaussian", "categorical")
    hidden: tuple[int, ...] = (500, 500)
    layer_hidden: tuple[int, ...] = ()  # p(z1 | z2) and q(z2 | ...) read the one-hot cluster linearly
    summed_in: str = "guide"

    def __post_init__(self):
        super().__post_init__()
        if tuple(self.layer_types) != ("gaussian", "categorical"):
            raise ValueError(
                f"the Gaussian-mixture VAE has a Gaussian code and a categorical cluster (--layer-types "
                f"gaussian,categorical), got {','.join(self.layer_types)}; use --model hvae for other stacks"
            )
        if self.summed_in not in SUMMED_IN:
            raise ValueError(f"--summed-in must be one of {', '.join(SUMMED_IN)}, got {self.summed_in!r}")


__all__ = ["Config", "Model"]
