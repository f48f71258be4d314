"""A small U-Net with a timestep embedding, the noise predictor ε_θ(x_t, t) of the diffusion program.

The shape of Ho et al.'s network at a CPU's size: a sinusoidal embedding of t through a two-layer MLP, residual blocks
(GroupNorm, SiLU, 3 x 3 convolutions) at each resolution, the embedding entering between the two convolutions as a
scale and shift after the second GroupNorm (Nichol and Dhariwal 2021's scale-shift norm): added before the norm, as
in Ho et al., a per-channel constant is subtracted out again wherever a group holds one channel, and the narrow
widths a CPU trains would ignore t. Strided
convolutions down, nearest-neighbour upsampling and convolutions up, skip connections by concatenation. ``channels``
sets the width at each resolution, so (32, 64, 64) on 28 x 28 images works at 28, 14 and 7 pixels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of integer timesteps (B,) -> (B, dim) (Vaswani et al. 2017, as Ho et al. use them)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    embedding = torch.cat([angles.sin(), angles.cos()], -1)
    return F.pad(embedding, (0, dim % 2))


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, time_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * out_channels)  # a scale and a shift per channel
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time(embedding)[:, :, None, None].chunk(2, 1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return self.skip(x) + h


class UNet(nn.Module):
    """ε_θ(x_t, t): images (B, C, H, W) and timesteps (B,) -> predicted noise (B, C, H, W)."""

    def __init__(self, data_shape: tuple[int, ...], channels: tuple[int, ...] = (32, 64, 64), time_dim: int = 128):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"the U-Net reads (C, H, W) images, got data of shape {tuple(data_shape)}")
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if time_dim < 2:
            raise ValueError(f"--time-dim must be at least 2 (a sine and a cosine of t), got {time_dim}")
        factor = 2 ** (len(channels) - 1)
        if data_shape[1] % factor or data_shape[2] % factor:
            raise ValueError(
                f"{len(channels)} resolutions halve the image {len(channels) - 1} times, so H and W must be divisible "
                f"by {factor}; got {tuple(data_shape[1:])}. Give fewer --channels"
            )
        self.time_dim = time_dim
        self.embed = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(data_shape[0], channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        previous = channels[0]
        for i, width in enumerate(channels):
            self.down_blocks.append(ResidualBlock(previous, width, time_dim))
            previous = width
            if i + 1 < len(channels):
                self.downsample.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
        self.middle = ResidualBlock(previous, previous, time_dim)
        self.up_blocks = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(channels))):
            self.up_blocks.append(ResidualBlock(previous + width, width, time_dim))
            previous = width
            if i > 0:
                self.upsample.append(nn.Conv2d(width, channels[i - 1], 3, padding=1))
                previous = channels[i - 1]
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(previous), previous), nn.SiLU(), nn.Conv2d(previous, data_shape[0], 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)  # start predicting no noise (x̂_0 = x_t / sqrt(ᾱ_t)): a stable first step
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        embedding = self.embed(timestep_embedding(t, self.time_dim))
        h = self.stem(x)
        skips = []
        for i, block in enumerate(self.down_blocks):
            h = block(h, embedding)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.middle(h, embedding)
        for i, block in enumerate(self.up_blocks):
            h = block(torch.cat([h, skips.pop()], 1), embedding)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.head(h)
