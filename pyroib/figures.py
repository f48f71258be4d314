"""Figures of the report and its sections: image grids and single plots, written as PNGs."""

from __future__ import annotations

from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: Path, nrow: int, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(max(3, nrow * 0.6), max(3, grid.shape[1] / grid.shape[2] * nrow * 0.6)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot(path: Path, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    draw(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
