"""dSprites (Matthey et al. 2017), regenerated: 737,280 binary 64 × 64 images of one sprite, rendered from the five
ground-truth factors in the official order, with no download.

Factors, in the official order of the images (the last varies fastest):

=============  ======  ==========================================
shape          3       square, ellipse, heart
scale          6       0.5 .. 1 (linear)
orientation    40      0 .. 2π radians (linear; 0 and 2π draw the same image)
position_x     32      0 .. 1 (linear)
position_y     32      0 .. 1 (linear)
=============  ======  ==========================================

Geometry, measured on the official images: the sprite's centre is at 16 + 32·position pixels on each axis (x the
column, y the row, counted from the top left); a square has side 20·scale; an ellipse has semi-axes 12.9·scale and
7.2·scale, the long one horizontal at orientation 0; a heart fills a box 20 wide and 17 high at scale 1, notch up and
tip down, its outline the classic parametric heart x = 16 sin³t, y = 13 cos t − 5 cos 2t − 2 cos 3t − cos 4t scaled
to that box. Rotation is counter-clockwise on screen. A pixel (its centre at column + ½, row + ½) is on when its
centre lies inside the sprite: no anti-aliasing.

:class:`DSprites` draws images for any factor values (:meth:`DSprites.observations`) and is a ground truth for
:mod:`pyroib.disentanglement`; :func:`all_images` renders the whole set once, packed eight pixels to a byte, and keeps
it in pyroib's cache folder with its SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import torch

FACTOR_NAMES = ("shape", "scale", "orientation", "position_x", "position_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64
IMAGES = math.prod(FACTOR_SIZES)
GENERATOR_VERSION = 1  # part of the cache key: a change to the drawing must change it


def factor_values() -> list[np.ndarray]:
    """The value of each factor's levels: shape index, scale, orientation (radians), position x, position y."""
    return [
        np.arange(3, dtype=np.float64),
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2 * math.pi, 40),
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    ]


def index_of(factors: np.ndarray) -> np.ndarray:
    """Positions in the official order of images with these factor levels (n, 5)."""
    return np.ravel_multi_index(tuple(np.asarray(factors).T), FACTOR_SIZES)


def factors_of(index: np.ndarray) -> np.ndarray:
    """Factor levels (n, 5) of images at these positions in the official order."""
    return np.stack(np.unravel_index(np.asarray(index), FACTOR_SIZES), -1)


@functools.lru_cache(maxsize=1)
def _heart_mask(resolution: int = 1024) -> torch.Tensor:
    """Inside-test of the unit heart (box [-1, 1]², notch up) on a fine grid, from its outline by matplotlib's
    point-in-polygon test; rendering looks points up in it."""
    from matplotlib.path import Path

    t = np.linspace(0, 2 * math.pi, 2000)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    x = 2 * (x - x.min()) / (x.max() - x.min()) - 1
    y = 2 * (y - y.min()) / (y.max() - y.min()) - 1
    grid = (np.arange(resolution) + 0.5) / resolution * 2 - 1
    gx, gy = np.meshgrid(grid, grid)  # rows: y from -1 (bottom) upwards
    inside = Path(np.stack([x, y], 1)).contains_points(np.stack([gx.ravel(), gy.ravel()], 1))
    return torch.from_numpy(inside.reshape(resolution, resolution))


def render(factors: np.ndarray) -> torch.Tensor:
    """Binary images (n, 64, 64), bool, of sprites with these factor levels (n, 5)."""
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != 5:
        raise ValueError(f"factors must have shape (n, 5) (shape, scale, orientation, x, y), got {factors.shape}")
    if (factors < 0).any() or (factors >= np.array(FACTOR_SIZES)).any():
        raise ValueError(f"factor levels out of range: each column must lie in [0, size) for sizes {FACTOR_SIZES}")
    values = factor_values()
    shape = torch.from_numpy(factors[:, 0])
    scale, angle, px, py = (torch.from_numpy(values[i][factors[:, i]])[:, None, None] for i in range(1, 5))
    centre = (torch.arange(SIZE, dtype=torch.float64) + 0.5)[None]
    dx = centre[:, None, :] - (16 + 32 * px)  # columns
    dy_up = (16 + 32 * py) - centre[:, :, None]  # rows, turned to point up
    cos, sin = torch.cos(angle), torch.sin(angle)
    # the pixel in the sprite's own frame: rotate back by the orientation (counter-clockwise on screen)
    u = cos * dx + sin * dy_up
    v = -sin * dx + cos * dy_up
    images = torch.zeros(len(factors), SIZE, SIZE, dtype=torch.bool)
    square, ellipse, heart = (shape == i for i in range(3))
    images[square] = (u[square].abs() <= 10 * scale[square]) & (v[square].abs() <= 10 * scale[square])
    images[ellipse] = (u[ellipse] / (12.9 * scale[ellipse])) ** 2 + (v[ellipse] / (7.2 * scale[ellipse])) ** 2 <= 1
    if heart.any():
        mask = _heart_mask()
        resolution = mask.shape[0]
        hu = u[heart] / (10 * scale[heart])  # the box's half-width 10, half-height 8.5, at scale 1
        hv = v[heart] / (8.5 * scale[heart])
        inside_box = (hu.abs() < 1) & (hv.abs() < 1)
        col = ((hu + 1) / 2 * resolution).long().clamp(0, resolution - 1)
        row = ((hv + 1) / 2 * resolution).long().clamp(0, resolution - 1)
        images[heart] = inside_box & mask[row, col]
    return images


class DSprites:
    """dSprites as a ground truth: uniform factor draws and images rendered for any factor values."""

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    chen_factors = (1, 2, 3, 4)  # Chen et al.'s MIG on dSprites averages over scale, orientation and position only

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, size, n) for size in FACTOR_SIZES], 1)

    def observations(self, factors: np.ndarray) -> torch.Tensor:
        return render(factors).to(torch.get_default_dtype())[:, None]


def _generate_packed(chunk: int = 8192) -> np.ndarray:
    out = np.empty((IMAGES, SIZE * SIZE // 8), dtype=np.uint8)
    for start in range(0, IMAGES, chunk):
        index = np.arange(start, min(start + chunk, IMAGES))
        out[index] = np.packbits(render(factors_of(index)).reshape(len(index), -1).numpy(), axis=1)
    return out


def all_images() -> np.ndarray:
    """Every image in the official order, packed (737,280, 512) uint8 (``np.unpackbits(row).reshape(64, 64)``),
    rendered on first use and cached (keyed by the generator's version, checked by CRC-32 on every read)."""
    from .decoded_cache import cached_generated

    return cached_generated("dsprites", f"dsprites-v{GENERATOR_VERSION}-{IMAGES}", _generate_packed)


def content_sha256(packed: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(packed).data).hexdigest()


__all__ = [
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "DSprites",
    "all_images",
    "content_sha256",
    "factor_values",
    "factors_of",
    "index_of",
    "render",
]
