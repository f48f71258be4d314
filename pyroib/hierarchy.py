"""Layers of a hierarchical latent-variable program: a stack z^(1) .. z^(L) of Gaussian or categorical layers, each
conditioned on its neighbour through a small network.

A categorical layer's value is a class index; networks read it one-hot. Categorical sites are marked for parallel
enumeration, so pyroib's objective sums them out exactly (:mod:`pyroib.objectives.enumeration`); their values then
carry an enumeration dimension left of the data plate, which every network here broadcasts over.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .networks import _mlp

LAYER_TYPES = ("gaussian", "categorical")
ENUMERATE = {"enumerate": "parallel"}


@dataclass(frozen=True)
class Layer:
    size: int
    kind: str

    @property
    def categorical(self) -> bool:
        return self.kind == "categorical"


def layers_of(sizes: tuple[int, ...], kinds: tuple[str, ...]) -> list[Layer]:
    """The layers z^(1) (next to x) .. z^(L) from the config's two flags, checked."""
    if not sizes:
        raise ValueError("--layer-sizes names no layer: give at least one, e.g. 64,10")
    if len(kinds) != len(sizes):
        raise ValueError(
            f"--layer-sizes has {len(sizes)} layers and --layer-types {len(kinds)}: give one type per layer "
            f"(each one of {', '.join(LAYER_TYPES)})"
        )
    for size, kind in zip(sizes, kinds, strict=True):
        if kind not in LAYER_TYPES:
            raise ValueError(f"unknown layer type {kind!r}: choose one of {', '.join(LAYER_TYPES)}")
        if size < 1 or (kind == "categorical" and size < 2):
            raise ValueError(f"a {kind} layer needs size >= {2 if kind == 'categorical' else 1}, got {size}")
    if kinds[0] != "gaussian":
        raise ValueError(
            "the first layer (next to x) must be gaussian: the decoder and Guide.encode read a continuous code"
        )
    if "categorical" in kinds and "gaussian" in kinds[(first := kinds.index("categorical")) :]:
        low, high = first + 1, kinds.index("gaussian", first) + 1
        raise ValueError(
            f"layer z{low} is categorical under the gaussian layer z{high}: the bottom-up guide would draw z{high} "
            f"once per enumerated value of z{low}, so p(z{low} | z{high}) would depend on z{low}'s own value, which "
            "Pyro's enumeration cannot express; put categorical layers at the top (e.g. --layer-types "
            "gaussian,gaussian,categorical)"
        )
    return [Layer(size, kind) for size, kind in zip(sizes, kinds, strict=True)]


def site_name(level: int) -> str:
    """Layer l (1 = next to x) is the site ``z<l>``."""
    return f"z{level}"


def as_input(value: torch.Tensor, layer: Layer) -> torch.Tensor:
    """A layer's value as a network reads it: one-hot for a categorical layer."""
    return F.one_hot(value.long(), layer.size).to(torch.get_default_dtype()) if layer.categorical else value


class ConditionalLayer(nn.Module):
    """p(z^(target) | z^(source)) or q(z^(target) | z^(source)): a network from the source's value to the target's
    distribution (a diagonal Gaussian, or a categorical over the target's values).

    From a categorical source the network is one linear map of the one-hot value, a table of each value's
    parameters: any function of K values is one already, and hidden layers would only make the K outputs start alike
    (measured: with Gao et al.'s 10-16-16-32-32-64 generative network the 10-way layer stayed unused, q(z2 | z1)
    uniform, in every 30-epoch run on digits)."""

    def __init__(self, source: Layer, target: Layer, hidden: tuple[int, ...], network: str = "mlp"):
        super().__init__()
        self.source, self.target = source, target
        out = target.size if target.categorical else 2 * target.size
        self.net = _mlp([source.size, *(() if source.categorical else hidden), out], gated=network == "gated")

    def forward(self, value: torch.Tensor) -> dist.Distribution:
        out = self.net(as_input(value, self.source))
        if self.target.categorical:
            return dist.Categorical(logits=out)
        loc, raw = out.chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)


def top_prior(layer: Layer, batch_size: int, like: torch.Tensor) -> dist.Distribution:
    """r(z^(L)): uniform over a categorical layer's values (fixed, as Gao et al.), N(0, I) for a Gaussian one."""
    if layer.categorical:
        return dist.Categorical(logits=like.new_zeros(batch_size, layer.size))
    return dist.Normal(like.new_zeros(batch_size, layer.size), 1.0).to_event(1)


__all__ = ["ENUMERATE", "LAYER_TYPES", "ConditionalLayer", "Layer", "as_input", "layers_of", "site_name", "top_prior"]
