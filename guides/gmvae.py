"""Guide of the Gaussian-mixture VAE: the cluster first, then the code given the cluster.

    z2_n ~ q(z2 | x_n) = Categorical(softmax(c_φ(x_n)))         enumerated: summed out exactly
    z1_n ~ q(z1 | x_n, z2_n) = N(μ_φ(h_n, z2_n), diag σ_φ(h_n, z2_n)²)   h_n = the encoder's features of x_n

With ``summed_in="model"`` the guide is q(z1 | x_n) alone and the model sums z2 out.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyroib.hierarchy import ENUMERATE, as_input, layers_of
from pyroib.networks import GaussianEncoder
from pyroib.plates import data_plate


class Guide(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.code, self.cluster = layers_of(config.layer_sizes, config.layer_types)
        # the encoder's body gives the features h(x); its head is unused when z1 also reads the cluster
        self.encoder = GaussianEncoder(config.data_shape, config.hidden, self.code.size, config.network)
        features = self.encoder.head.in_features
        self.classifier = nn.Linear(features, self.cluster.size)
        self.given_cluster = nn.Linear(features + self.cluster.size, 2 * self.code.size)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, index=None, size=None):
        with data_plate(x, index, size):
            if self.config.summed_in == "model":
                loc, scale = self.encoder(x)
                pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
                return
            h = self.features(x)
            cluster = pyro.sample("z2", dist.Categorical(logits=self.classifier(h)), infer=dict(ENUMERATE))
            onehot = as_input(cluster, self.cluster)
            shape = torch.broadcast_shapes(onehot.shape[:-1], h.shape[:-1])
            out = self.given_cluster(torch.cat([h.expand(*shape, h.shape[-1]), onehot.expand(*shape, -1)], -1))
            loc, raw = out.chunk(2, -1)
            pyro.sample("z1", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        batch_shape = x.shape[: x.dim() - len(self.encoder.data_shape)]
        h = self.encoder.body(x.reshape(-1, *self.encoder.data_shape))
        return h.reshape(*batch_shape, -1)

    @property
    def encode_note(self) -> str | None:
        """Why the numbers built on :meth:`encode` are approximate, or None when they are not."""
        if self.config.summed_in == "model":
            return None
        return (
            "q(z1 | x) is a mixture over the cluster z2; Guide.encode gives its moment-matched Gaussian, so the "
            "full-data terms of z1 are those of that Gaussian"
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z1 | x): the encoder's own head with ``summed_in="model"``; otherwise the moments of
        the mixture Σ_k q(k | x) q(z1 | x, k), matched by a diagonal Gaussian (its mean and per-dimension variance)."""
        if self.config.summed_in == "model":
            return self.encoder(x)
        h = self.features(x)
        weights = self.classifier(h).softmax(-1)  # (B, K)
        values = torch.eye(self.cluster.size, dtype=h.dtype, device=h.device)
        out = self.given_cluster(
            torch.cat([h[:, None].expand(-1, self.cluster.size, -1), values.expand(h.shape[0], -1, -1)], -1)
        )
        loc, raw = out.chunk(2, -1)
        scale = F.softplus(raw) + 1e-4
        mean = (weights[..., None] * loc).sum(1)
        variance = (weights[..., None] * (scale.square() + loc.square())).sum(1) - mean.square()
        return mean, variance.clamp_min(1e-8).sqrt()
