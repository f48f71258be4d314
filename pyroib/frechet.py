"""Sample quality as a Fréchet distance in the feature space of a small Fashion-MNIST classifier.

With features f(x) of two image sets summarised by their means μ_a, μ_b and covariances Σ_a, Σ_b, the Fréchet
(2-Wasserstein) distance between the Gaussians N(μ_a, Σ_a) and N(μ_b, Σ_b) is

    d² = ||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2}),

and Tr (Σ_a Σ_b)^{1/2} = Σ_i sqrt(λ_i) with λ_i the eigenvalues of the symmetric PSD matrix Σ_a^{1/2} Σ_b Σ_a^{1/2}
(it is similar to Σ_a Σ_b), so the trace is computed from two symmetric eigen-decompositions: real by construction,
no complex round-off to discard. ``frechet_distance`` returns d² (the quantity FID reports), in squared feature
units; it is a property of the feature network, so numbers compare only under the same network.

The feature network (:class:`FeatureNet`, ``f(x)`` = its 64-d penultimate ReLU layer) is trained by
``python -m pyroib.frechet train``: 3 epochs of Adam on the 55,000 grey-level Fashion-MNIST training images (seed 0,
one CPU thread), weights stored in half precision in ``pyroib/assets/fashion_features.pt`` (about 210 KB) with its
measured test accuracy in ``fashion_features.json`` beside it. Test accuracy of the stored weights: 88.36% on the
10,000 Fashion-MNIST test images (the JSON holds the exact figure; the tests recheck it).

Unlike the Inception-based FID of natural images, these numbers are not comparable across papers; they rank samplers
of the same data against each other.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ASSET_WEIGHTS = "fashion_features.pt"
ASSET_INFO = "fashion_features.json"
FEATURE_DIM = 64
IMAGE_SHAPE = (1, 28, 28)
SUBSET = 2000  # test images the quick accuracy check reads


class FeatureNet(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels, each followed by ReLU and 2x2 max-pooling), a 64-unit ReLU layer
    (the features) and a 10-way linear head. Input: grey-level images (B, 1, 28, 28) in [0, 1]."""

    def __init__(self, n_classes: int = 10, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.hidden = nn.Linear(32 * 7 * 7, feature_dim)
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        return F.relu(self.hidden(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _as_features(name: str, features) -> np.ndarray:
    array = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name} must be a (n, d) array of feature vectors with n >= 2, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite numbers")
    return array.astype(np.float64)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """||μ_a - μ_b||² + Tr(Σ_a + Σ_b - 2 (Σ_a Σ_b)^{1/2}) for covariances that are symmetric PSD."""
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    d = mean_a.shape[0]
    if mean_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(
            f"means must be (d,) and covariances (d, d) for one d; got {mean_a.shape}, {cov_a.shape}, "
            f"{mean_b.shape}, {cov_b.shape}"
        )
    root_a = _psd_sqrt(cov_a)
    inner = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    value = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
    return max(value, 0.0)  # round-off can leave -1e-12 for identical inputs


def frechet_distance(features_a, features_b) -> float:
    """Squared Fréchet distance between Gaussians fitted (sample mean, unbiased covariance) to two feature sets,
    each (n, d) with n >= 2; symmetric in its arguments and zero for identical sets."""
    a, b = _as_features("features_a", features_a), _as_features("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must have the same width, got {a.shape[1]} and {b.shape[1]}")
    return gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def load_feature_network(device: str | torch.device = "cpu") -> FeatureNet:
    """The versioned classifier from ``pyroib/assets`` (weights-only load, float32, eval mode)."""
    asset = resources.files("pyroib") / "assets" / ASSET_WEIGHTS
    if not asset.is_file():
        raise FileNotFoundError(
            f"the feature network's weights {ASSET_WEIGHTS} are missing from pyroib/assets; "
            "train them with python -m pyroib.frechet train"
        )
    state = torch.load(io.BytesIO(asset.read_bytes()), map_location="cpu", weights_only=True)
    network = FeatureNet()
    network.load_state_dict({k: v.float() for k, v in state["state_dict"].items()})
    return network.to(device).eval()


def image_features(images: torch.Tensor, network: FeatureNet | None = None, batch_size: int = 1000) -> torch.Tensor:
    """(n, 64) features of grey-level images (n, 1, 28, 28) in [0, 1]."""
    if images.dim() != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(
            f"the feature network reads Fashion-MNIST-shaped images (n, 1, 28, 28), got {tuple(images.shape)}"
        )
    network = network or load_feature_network(images.device)
    with torch.no_grad():
        return torch.cat([network.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])


def prior_draws(prior, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """n codes from a prior: its own memory-light ``sample`` for aggregate priors, else ``prior(n).sample()``."""
    if hasattr(prior, "n_components") and hasattr(prior, "sample"):
        return prior.sample(n, generator=generator)
    with torch.no_grad():
        return prior(n).sample()


def sample_fid(
    run,
    prior=None,
    n: int = 10_000,
    reference: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int = 1000,
    reference_features: torch.Tensor | None = None,
) -> float:
    """Fréchet distance between ``n`` images decoded from ``prior`` (default: the run's own) and ``reference``
    images (default: the run's grey-level test split), or their precomputed ``reference_features`` (saves the
    feature pass when scoring several samplers). The decoder's mean image E[x | z] is what is compared."""
    if n < 2:
        raise ValueError(f"n must be at least 2 to estimate a covariance, got {n}")
    prior = run.model.prior if prior is None else prior
    network = load_feature_network(run.device)
    if reference_features is None and reference is None:
        from .data import load_spec_dataset

        reference = load_spec_dataset(run.spec, run.device, binarize="none").test
    if reference_features is None:
        reference_features = image_features(reference, network)
    torch.manual_seed(seed)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    generated = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z = prior_draws(prior, min(batch_size, n - start), generator)
            generated.append(image_features(run.model.decode(z), network))
    return frechet_distance(torch.cat(generated), reference_features)


def train_feature_network(
    epochs: int = 3, seed: int = 0, batch_size: int = 128, lr: float = 1e-3, data_dir: str | None = None, log=print
) -> tuple[FeatureNet, float]:
    """Train :class:`FeatureNet` on grey-level Fashion-MNIST; returns it (in float32) and its test accuracy with
    the weights rounded to half precision, as they are stored."""
    from .data import load_dataset

    torch.manual_seed(seed)
    splits = load_dataset("fashion-mnist", data_dir=data_dir, binarize="none", seed=seed)
    network = FeatureNet(splits.n_classes)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        network.train()
        total = 0.0
        for batch in torch.randperm(len(splits.train), generator=order).split(batch_size):
            loss = F.cross_entropy(network(splits.train[batch]), splits.train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        log(f"epoch {epoch}: training cross-entropy {total / len(splits.train):.4f} nats")
    network.load_state_dict({k: v.half().float() for k, v in network.state_dict().items()})
    return network.eval(), accuracy(network, splits.test, splits.test_labels)


def accuracy(network: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    with torch.no_grad():
        hits = sum(
            int((network(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
            for i in range(0, len(images), batch_size)
        )
    return hits / len(images)


def _train_command(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m pyroib.frechet train")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "assets"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the same weights on every machine with the same torch build
    network, test_accuracy = train_feature_network(args.epochs, args.seed, data_dir=args.data_dir)
    from .data import load_dataset

    test = load_dataset("fashion-mnist", data_dir=args.data_dir, binarize="none")
    subset_accuracy = accuracy(network, test.test[:SUBSET], test.test_labels[:SUBSET])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.half() for k, v in network.state_dict().items()}}, buffer)
    (out / ASSET_WEIGHTS).write_bytes(buffer.getvalue())
    info = {
        "test_accuracy": test_accuracy,
        "n_test": 10_000,
        f"test_accuracy_first_{SUBSET}": subset_accuracy,
        "epochs": args.epochs,
        "seed": args.seed,
        "feature_dim": FEATURE_DIM,
        "precision": "float16",
        "torch": torch.__version__,
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "command": f"python -m pyroib.frechet train --epochs {args.epochs} --seed {args.seed}",
    }
    (out / ASSET_INFO).write_text(json.dumps(info, indent=2) + "\n")
    print(f"test accuracy {test_accuracy:.4f}; wrote {out / ASSET_WEIGHTS} ({len(buffer.getvalue())} bytes)")


if __name__ == "__main__":
    if sys.argv[1:2] != ["train"]:
        sys.exit("usage: python -m pyroib.frechet train [--epochs E] [--seed S] [--out DIR]")
    _train_command(sys.argv[2:])
