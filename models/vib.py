"""Deep variational information bottleneck (Alemi et al. 2016): a supervised generative story.

    z_n ~ p(z)                                  prior, injected (standard normal unless told otherwise)
    y_n ~ Categorical(softmax(c_θ(z_n)))        label, observed; c_θ is the classifier (linear by default)
    for n in the data plate (N points, minibatch subsampled by dataset index)

The image x_n is not a site of this program: it only sizes the data plate, and the guide's encoder q(z | x) sees it
(:mod:`pyroib.guides.vib`). Under ``InfoELBO`` and the bottleneck handler with weight β the loss per data point is

    E_q[-log p(y | z)]  +  β · E_x KL(q(z | x) || p(z))          (cross-entropy + β · rate, in nats)

which is Alemi et al.'s objective. Both terms are bounds on the information plane, for any data distribution:

* I(X; Z) <= E_x KL(q(z|x) || p(z)) = rate, because the rate exceeds I(X; Z) by KL(q(z) || p(z)) >= 0;
* I(Z; Y) >= H(Y) - E[-log p(y | z)], because cross-entropy against any decoder exceeds H(Y | Z).

and since Y - X - Z is a Markov chain, i_zy_lower <= I(Z; Y) <= I(X; Z) <= i_xz_upper (up to Monte Carlo noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import kl_divergence
from torch.nn import functional as F

from pyroib.plates import data_plate
from pyroib.priors import StandardNormal


@dataclass(frozen=True)
class Config:
    """Sizes of the VIB. Alemi et al. use a 784-1024-1024 encoder, K = 256 and a linear (softmax) classifier."""

    data_shape: tuple[int, ...] = (1, 28, 28)
    latent_dim: int = 256
    hidden: tuple[int, ...] = (1024, 1024)
    n_classes: int = 10
    classifier_hidden: tuple[int, ...] = ()

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.n_classes < 2:
            raise ValueError(
                f"n_classes must be >= 2 for a classifier, got {self.n_classes}; the dataset needs at least two labels"
            )
        if any(h < 1 for h in self.classifier_hidden):
            raise ValueError(f"classifier_hidden sizes must be positive, got {self.classifier_hidden}")


def _classifier(latent_dim: int, hidden: tuple[int, ...], n_classes: int) -> nn.Sequential:
    sizes = [latent_dim, *hidden, n_classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def label_entropy(y: torch.Tensor, n_classes: int) -> float:
    """H(Y) in nats of the empirical label frequencies of ``y``."""
    p = torch.bincount(y.long(), minlength=n_classes).double() / y.numel()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


class Model(nn.Module):
    observes_inputs = False  # x only conditions the guide; pyroib evaluate then skips the -log p(x) estimate

    def __init__(self, config: Config, prior: torch.nn.Module | None = None):
        super().__init__()
        self.config = config
        self.prior = prior if prior is not None else StandardNormal(config.latent_dim)
        self.classifier = _classifier(config.latent_dim, tuple(config.classifier_hidden), config.n_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("y", dist.Categorical(logits=self.classifier(z)), obs=y)
        return z

    def metrics(
        self, guide, x: torch.Tensor, y: torch.Tensor, samples: int = 12, batch_size: int = 1000
    ) -> dict[str, float]:
        """Test-time numbers in nats, with ``samples`` draws z_s ~ q(z | x) per point (Alemi et al. use 12).

        * ``accuracy``: of argmax_y (1/S) Σ_s softmax(c(z_s)), the Monte Carlo posterior predictive;
        * ``predictive_nll``: -log (1/S) Σ_s p(y | z_s), the log loss of that predictive (<= cross_entropy, Jensen);
        * ``cross_entropy``: E_q[-log p(y | z)], the distortion;
        * ``i_xz_upper``: the rate E_x KL(q(z|x) || p(z)) (closed form where torch has one, else Monte Carlo);
        * ``i_zy_lower``: H(Y) - cross_entropy, with ``h_y`` = H(Y) from the label frequencies of ``y``.
        """
        if y is None:
            raise ValueError("VIB metrics need labels y; evaluate on a labelled split")
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        correct = cross_entropy = predictive_nll = rate = 0.0
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb, yb = x[start : start + batch_size], y[start : start + batch_size]
                loc, scale = guide.encode(xb)
                posterior = dist.Normal(loc, scale).to_event(1)
                prior = self.prior(xb.shape[0])
                z = posterior.sample((samples,))  # (S, B, D)
                log_p = F.log_softmax(self.classifier(z), -1)  # (S, B, C)
                log_p_y = log_p.gather(-1, yb.long().expand(samples, -1).unsqueeze(-1)).squeeze(-1)
                predictive = torch.logsumexp(log_p, 0) - math.log(samples)  # (B, C)
                correct += float((predictive.argmax(-1) == yb).sum())
                cross_entropy += float(-log_p_y.sum()) / samples
                predictive_nll += float(-(torch.logsumexp(log_p_y, 0) - math.log(samples)).sum())
                try:
                    rate += float(kl_divergence(posterior, prior).sum())
                except NotImplementedError:
                    rate += float((posterior.log_prob(z) - prior.log_prob(z)).sum()) / samples
        n = x.shape[0]
        h_y = label_entropy(y, self.config.n_classes)
        return {
            "accuracy": correct / n,
            "predictive_nll": predictive_nll / n,
            "cross_entropy": cross_entropy / n,
            "h_y": h_y,
            "i_xz_upper": rate / n,
            "i_zy_lower": h_y - cross_entropy / n,
            "predictive_samples": samples,
        }
