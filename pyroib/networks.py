"""Encoder and decoder networks sized from a model's config (never from literals such as 784).

Four families: ``mlp`` (flatten, fully connected, any data shape), ``gated`` (the same with gated hidden layers,
h = (W x + b) * sigmoid(V x + c), as in the VampPrior and Exemplar VAE code behind the published Fashion-MNIST
anchors), ``conv`` (stride-2 convolutions for images whose height and width are divisible by
``2 ** len(hidden)``), and ``burgess``, the fixed 64 x 64 networks of Burgess et al. 2018 and disentanglement_lib
(dSprites; ``hidden`` does not apply). Encoders return the parameters of a diagonal
Gaussian; decoders return unconstrained parameters with the data's shape (channels multiplied by ``out_factor``
when a likelihood needs more than one parameter per pixel).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

NETWORKS = ("mlp", "gated", "conv", "burgess")
# Burgess et al. 2018 / disentanglement_lib's 64 x 64 networks: four 4x4 stride-2 convolutions of 32, 32, 64, 64
# channels, a 256-unit layer, ReLU throughout (the decoder mirrors it with transposed convolutions); fixed sizes
BURGESS_CHANNELS, BURGESS_UNITS, BURGESS_SIDE = (32, 32, 64, 64), 256, 64
_FULLY_CONNECTED = ("mlp", "gated")


class GatedLinear(nn.Module):
    """h = (W x + b) * sigmoid(V x + c): one matrix product of twice the width, split into value and gate."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


def _mlp(sizes: list[int], final_activation: bool = False, gated: bool = False) -> nn.Sequential:
    """Fully connected layers; every layer but the last (all with ``final_activation``) is a hidden layer."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2 or final_activation
        if hidden and gated:
            layers.append(GatedLinear(a, b))
        else:
            layers.append(nn.Linear(a, b))
            if hidden:
                layers.append(nn.Softplus())
    return nn.Sequential(*layers)


def _check(network: str, data_shape: tuple[int, ...], hidden: tuple[int, ...]) -> None:
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: choose one of {', '.join(NETWORKS)}")
    if not hidden or any(h < 1 for h in hidden):
        raise ValueError(f"hidden sizes must be positive integers, got {hidden!r}")
    if network == "burgess" and (len(data_shape) != 3 or tuple(data_shape[1:]) != (BURGESS_SIDE, BURGESS_SIDE)):
        raise ValueError(
            f"the burgess network reads 64 x 64 images (dSprites), got shape {tuple(data_shape)}; use --network conv "
            "or mlp"
        )
    if network == "conv":
        if len(data_shape) != 3:
            raise ValueError(f"the conv network needs (C, H, W) data, got shape {data_shape}; use --network mlp")
        factor = 2 ** len(hidden)
        if data_shape[1] % factor or data_shape[2] % factor:
            raise ValueError(
                f"the conv network halves the image {len(hidden)} times, so H and W must be divisible by {factor}; "
                f"got {data_shape[1:]}. Use fewer --hidden layers or --network mlp"
            )


class GaussianEncoder(nn.Module):
    """x -> (loc, scale) of a diagonal Gaussian over ``out_dim`` dimensions."""

    def __init__(self, data_shape: tuple[int, ...], hidden: tuple[int, ...], out_dim: int, network: str = "mlp"):
        super().__init__()
        _check(network, data_shape, hidden)
        self.data_shape = tuple(data_shape)
        if network == "burgess":
            convs: list[nn.Module] = []
            channels = data_shape[0]
            for c in BURGESS_CHANNELS:
                convs += [nn.Conv2d(channels, c, 4, stride=2, padding=1), nn.ReLU()]
                channels = c
            side = BURGESS_SIDE // 2 ** len(BURGESS_CHANNELS)
            self.body = nn.Sequential(*convs, nn.Flatten(), nn.Linear(channels * side * side, BURGESS_UNITS), nn.ReLU())
            self.head = nn.Linear(BURGESS_UNITS, 2 * out_dim)
            return
        if network in _FULLY_CONNECTED:
            self.body = nn.Sequential(
                nn.Flatten(), _mlp([math.prod(data_shape), *hidden], final_activation=True, gated=network == "gated")
            )
            features = hidden[-1]
        else:
            convs: list[nn.Module] = []
            channels = data_shape[0]
            for h in hidden:
                convs += [nn.Conv2d(channels, h, 4, stride=2, padding=1), nn.SiLU()]
                channels = h
            convs.append(nn.Flatten())
            self.body = nn.Sequential(*convs)
            factor = 2 ** len(hidden)
            features = channels * (data_shape[1] // factor) * (data_shape[2] // factor)
        self.head = nn.Linear(features, 2 * out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_shape = x.shape[: x.dim() - len(self.data_shape)]
        h = self.body(x.reshape(-1, *self.data_shape))
        loc, raw_scale = self.head(h).chunk(2, dim=-1)
        # softplus keeps the scale positive with a gradient that does not explode for large raw values (unlike exp)
        scale = F.softplus(raw_scale) + 1e-4
        return loc.reshape(*batch_shape, -1), scale.reshape(*batch_shape, -1)


def _upsampling(channels: list[int], out_channels: int, activation) -> list[nn.Module]:
    """Transposed 4x4 stride-2 convolutions through ``channels`` to ``out_channels``, doubling H and W each time."""
    layers: list[nn.Module] = []
    for i, c in enumerate(channels):
        last = i + 1 == len(channels)
        layers.append(nn.ConvTranspose2d(c, out_channels if last else channels[i + 1], 4, stride=2, padding=1))
        if not last:
            layers.append(activation())
    return layers


class Decoder(nn.Module):
    """z -> unconstrained parameters of shape ``(out_factor * C, H, W)`` (or the data shape for flat data)."""

    def __init__(
        self,
        latent_dim: int,
        hidden: tuple[int, ...],
        data_shape: tuple[int, ...],
        network: str = "mlp",
        out_factor: int = 1,
    ):
        super().__init__()
        _check(network, data_shape, hidden)
        self.out_shape = (data_shape[0] * out_factor, *data_shape[1:])
        self.network = network
        if network == "burgess":
            side = BURGESS_SIDE // 2 ** len(BURGESS_CHANNELS)
            rev = list(reversed(BURGESS_CHANNELS))
            layers: list[nn.Module] = [
                nn.Linear(latent_dim, BURGESS_UNITS),
                nn.ReLU(),
                nn.Linear(BURGESS_UNITS, rev[0] * side * side),
                nn.ReLU(),
                nn.Unflatten(-1, (rev[0], side, side)),
            ]
            self.body = nn.Sequential(*layers, *_upsampling(rev, self.out_shape[0], nn.ReLU))
            return
        if network in _FULLY_CONNECTED:
            self.body = _mlp([latent_dim, *reversed(hidden), math.prod(self.out_shape)], gated=network == "gated")
        else:
            factor = 2 ** len(hidden)
            rev = list(reversed(hidden))
            self.start = (rev[0], data_shape[1] // factor, data_shape[2] // factor)
            layers: list[nn.Module] = [
                nn.Linear(latent_dim, math.prod(self.start)),
                nn.SiLU(),
                nn.Unflatten(-1, self.start),
            ]
            self.body = nn.Sequential(*layers, *_upsampling(rev, self.out_shape[0], nn.SiLU))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch_shape = z.shape[:-1]
        out = self.body(z.reshape(-1, z.shape[-1]))
        return out.reshape(*batch_shape, *self.out_shape)


def feature_cells(data_shape: tuple[int, ...], hidden: tuple[int, ...]) -> int:
    """Cells of the feature map a ``conv`` stack of ``len(hidden)`` stride-2 layers leaves of a (C, H, W) image."""
    _check("conv", data_shape, hidden)
    factor = 2 ** len(hidden)
    return (data_shape[1] // factor) * (data_shape[2] // factor)


class SpatialEncoder(nn.Module):
    """x (..., C, H, W) -> codes (..., M, D): the ``conv`` stack's feature map with a 1x1 convolution to D channels,
    one D-dimensional code per cell (M = H W / 4^L), row by row: a code that keeps the image's layout."""

    def __init__(self, data_shape: tuple[int, ...], hidden: tuple[int, ...], code_dim: int):
        super().__init__()
        self.cells = feature_cells(data_shape, hidden)
        self.data_shape = tuple(data_shape)
        convs: list[nn.Module] = []
        channels = data_shape[0]
        for h in hidden:
            convs += [nn.Conv2d(channels, h, 4, stride=2, padding=1), nn.SiLU()]
            channels = h
        self.body = nn.Sequential(*convs, nn.Conv2d(channels, code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_shape = x.shape[: x.dim() - len(self.data_shape)]
        features = self.body(x.reshape(-1, *self.data_shape))  # (n, D, h, w)
        codes = features.flatten(2).transpose(1, 2)  # (n, h w, D), row by row
        return codes.reshape(*batch_shape, *codes.shape[1:])


class SpatialDecoder(nn.Module):
    """codes (..., M, C) on the encoder's grid -> the likelihood's parameters (..., out_factor * C_x, H, W): a 1x1
    convolution to the deepest hidden width, then transposed convolutions back up (the ``conv`` decoder's)."""

    def __init__(self, in_channels: int, hidden: tuple[int, ...], data_shape: tuple[int, ...], out_factor: int = 1):
        super().__init__()
        feature_cells(data_shape, hidden)
        factor = 2 ** len(hidden)
        self.grid = (data_shape[1] // factor, data_shape[2] // factor)
        self.out_shape = (data_shape[0] * out_factor, *data_shape[1:])
        rev = list(reversed(hidden))
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, rev[0], 1), nn.SiLU(), *_upsampling(rev, self.out_shape[0], nn.SiLU)
        )

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        batch_shape, (cells, channels) = codes.shape[:-2], codes.shape[-2:]
        if cells != self.grid[0] * self.grid[1]:
            raise ValueError(f"the decoder reads {self.grid[0]} x {self.grid[1]} cells, got {cells} codes")
        grid = codes.reshape(-1, cells, channels).transpose(1, 2).reshape(-1, channels, *self.grid)
        return self.body(grid).reshape(*batch_shape, *self.out_shape)
