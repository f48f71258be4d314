"""Priors p(z) as torch modules that return Pyro distributions, so a model takes any of them by injection.

Contract: ``prior(batch_size)`` returns a distribution with batch_shape ``(batch_size,)`` and event_shape
``(latent_dim,)``. When the class attribute ``factorised`` is True, p(z) = prod_j p_j(z_j) and the distribution is
a ``pyro.distributions.Independent`` (one reinterpreted dim) whose ``base_dist`` has batch_shape
``(batch_size, latent_dim)``, so ``d.base_dist.log_prob(z)`` gives the per-dimension log densities in nats that
per-latent anchor weights need. Every tensor is a parameter or buffer, so priors follow ``.to(device / dtype)``.
"""

import math
import numbers
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

from .mixture import DiagonalNormalMixture

__all__ = [
    "Prior",
    "StandardNormal",
    "LearnedGaussian",
    "MixtureOfGaussians",
    "VampPrior",
    "FlowPrior",
    "AggregatePosterior",
    "FactorisedAggregatePosterior",
    "JointAggregatePosterior",
    "prior_from_name",
    "require_factorised",
]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


class Prior(nn.Module):
    """Base class: ``forward(batch_size)`` returns p(z) batched over ``batch_size`` independent codes."""

    factorised: bool = False
    latent_dim: int

    def forward(self, batch_size: int) -> TorchDistribution:
        raise NotImplementedError


class StandardNormal(Prior):
    """p(z) = N(0, I). Factorised."""

    factorised = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        # Non-persistent: nothing to save, but the buffers still follow .to(device/dtype).
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, batch_size: int) -> TorchDistribution:
        shape = (_positive_int("batch_size", batch_size), self.latent_dim)
        return dist.Normal(self.loc.expand(shape), self.scale.expand(shape)).to_event(1)


class LearnedGaussian(Prior):
    """p(z) = N(loc, diag exp(2 log_scale)) with both learned; starts at N(0, I). Factorised."""

    factorised = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, batch_size: int) -> TorchDistribution:
        shape = (_positive_int("batch_size", batch_size), self.latent_dim)
        return dist.Normal(self.loc.expand(shape), self.log_scale.exp().expand(shape)).to_event(1)


class MixtureOfGaussians(Prior):
    """p(z) = sum_k softmax(logits)_k N(z; loc_k, diag scale_k^2), all learned. Not factorised.

    Initialisation: equal weights, scales ``initial_scale`` = 0.5 and locs drawn from N(0, (1 - 0.5^2) I) with torch's
    global generator, so the components start apart while the mixture's covariance is about I in expectation over the
    draw, the same as the standard normal it replaces.
    """

    initial_scale = 0.5

    def __init__(self, latent_dim: int, n_components: int = 10):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.n_components = _positive_int("n_components", n_components)
        spread = math.sqrt(1.0 - self.initial_scale**2)
        self.logits = nn.Parameter(torch.zeros(n_components))
        self.locs = nn.Parameter(spread * torch.randn(n_components, latent_dim))
        self.log_scales = nn.Parameter(torch.full((n_components, latent_dim), math.log(self.initial_scale)))

    def forward(self, batch_size: int) -> TorchDistribution:
        return DiagonalNormalMixture(
            self.locs, self.log_scales.exp(), self.logits, batch_shape=(_positive_int("batch_size", batch_size),)
        )


class _ReturningClamp(torch.autograd.Function):
    """clamp(x, low, high) whose gradient also passes where x is at or past a bound and a descent step would move
    it back inside (the plain clamp passes none there)."""

    @staticmethod
    def forward(ctx, x, low, high):
        ctx.save_for_backward(x)
        ctx.bounds = (low, high)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        (x,), (low, high) = ctx.saved_tensors, ctx.bounds
        inside = (x > low) & (x < high)
        returning = ((x <= low) & (grad < 0)) | ((x >= high) & (grad > 0))  # descent moves x by -grad
        return grad * (inside | returning), None, None


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the guide's encoder applied to K learned pseudo-inputs u_k (Tomczak and
    Welling 2018). Not factorised.

    ``encoder(u)`` must return ``(loc, scale)``, each (K, latent_dim), of a diagonal Gaussian q(z | u). The encoder is
    *borrowed*, not owned: it is not a submodule, so its parameters are trained, moved and saved with the guide that
    owns it and are never counted twice by an optimiser; this prior's own parameters are the pseudo-inputs alone.
    Gradients still reach the encoder through ``log_prob``.

    With ``data_range=(low, high)`` the pseudo-inputs stay inside the data's range, by ``range_map``:

    * ``"sigmoid"`` (default): u = low + (high - low) sigmoid(raw). ``init`` data are first clipped to 1e-3 (high - low)
      inside the range, since the sigmoid never reaches its bounds; there its slope is about 1e-3, so pseudo-inputs
      started at binary or saturated pixels barely move under Adam (a step changes raw by about the learning rate).
    * ``"clamp"``: u = clamp(raw, low, high), as the hard-tanh of the VampPrior authors' code. Adam then moves every
      pixel by about the learning rate per step wherever it starts, which is what a data initialisation needs.
      Unlike a plain clamp (no gradient at or past a bound, so a pixel once pushed there is frozen for good) the
      gradient passes at a bound whenever it points back into the range.

    With ``data_range=None`` they are free (u = raw). ``init`` gives K data points to start from. Without it the
    pseudo-inputs start near the middle of the range (raw ~ N(0, 0.1^2) for the sigmoid, the middle plus
    N(0, (0.025 (high - low))^2) for the clamp, the sigmoid's spread there) or near 0 when free.
    """

    init_margin = 1e-3
    range_maps = ("sigmoid", "clamp")

    def __init__(
        self,
        encoder: Callable,
        data_shape: Sequence[int],
        n_pseudo_inputs: int = 500,
        init: torch.Tensor | None = None,
        data_range: tuple[float, float] | None = (0.0, 1.0),
        latent_dim: int | None = None,
        range_map: str = "sigmoid",
    ):
        super().__init__()
        if not callable(encoder):
            raise TypeError(f"encoder must be callable as encoder(u) -> (loc, scale), got {type(encoder).__name__}")
        if range_map not in self.range_maps:
            raise ValueError(f"range_map must be one of {', '.join(self.range_maps)}, got {range_map!r}")
        self.range_map = range_map
        data_shape = (data_shape,) if isinstance(data_shape, int) else tuple(data_shape)
        for size in data_shape:
            _positive_int("each size in data_shape", size)
        self.n_pseudo_inputs = _positive_int("n_pseudo_inputs", n_pseudo_inputs)
        self.data_shape = data_shape
        if data_range is not None and not data_range[0] < data_range[1]:
            raise ValueError(f"data_range must be (low, high) with low < high, got {data_range}")
        self.data_range = None if data_range is None else (float(data_range[0]), float(data_range[1]))
        self._borrowed = (encoder,)  # a tuple, so nn.Module does not register the encoder as a submodule
        like = next(iter(encoder.parameters()), None) if isinstance(encoder, nn.Module) else None
        factory = {} if like is None else {"device": like.device, "dtype": like.dtype}
        shape = (n_pseudo_inputs, *data_shape)
        if init is None:
            raw = 0.1 * torch.randn(shape, **factory)
            if self.data_range is not None and range_map == "clamp":
                low, high = self.data_range
                raw = low + (high - low) * (0.5 + raw / 4)  # the sigmoid's start: slope 1/4 at the middle
        else:
            raw = self._raw_from_data(torch.as_tensor(init, **factory), shape)
        self.pseudo_raw = nn.Parameter(raw)
        self.latent_dim = self._check_encoder(latent_dim)

    @property
    def encoder(self) -> Callable:
        return self._borrowed[0]

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        if self.data_range is None:
            return self.pseudo_raw
        low, high = self.data_range
        if self.range_map == "clamp":
            return _ReturningClamp.apply(self.pseudo_raw, low, high)
        return low + (high - low) * torch.sigmoid(self.pseudo_raw)

    def _raw_from_data(self, init: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(init.shape) != shape:
            raise ValueError(f"init must have shape (n_pseudo_inputs, *data_shape) = {shape}, got {tuple(init.shape)}")
        init = init.detach().clone()
        if self.data_range is None:
            return init
        low, high = self.data_range
        if init.min() < low or init.max() > high:
            raise ValueError(
                f"init has values outside data_range {self.data_range}; pass the range of your data, "
                "or data_range=None for free pseudo-inputs"
            )
        unit = ((init - low) / (high - low)).clamp(self.init_margin, 1 - self.init_margin)
        return low + (high - low) * unit if self.range_map == "clamp" else torch.logit(unit)

    def set_pseudo_inputs(self, data: torch.Tensor) -> None:
        """Start the pseudo-inputs at ``data`` ((K, *data_shape) points inside ``data_range``), as ``init`` does."""
        with torch.no_grad():
            self.pseudo_raw.copy_(self._raw_from_data(data.to(self.pseudo_raw), tuple(self.pseudo_raw.shape)))

    def _check_encoder(self, latent_dim: int | None) -> int:
        # A dry run in eval mode, so layers such as batch norm keep their running statistics untouched.
        was_training = getattr(self.encoder, "training", None)
        if was_training is not None:
            self.encoder.eval()
        try:
            with torch.no_grad():
                loc, scale = self.encoder(self.pseudo_inputs)
        finally:
            if was_training is not None:
                self.encoder.train(was_training)
        k = self.n_pseudo_inputs
        if loc.dim() != 2 or loc.shape[0] != k or loc.shape != scale.shape:
            raise ValueError(
                f"encoder(u) must return (loc, scale), each of shape (n_pseudo_inputs={k}, latent_dim), "
                f"got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if latent_dim is not None and _positive_int("latent_dim", latent_dim) != loc.shape[1]:
            raise ValueError(f"latent_dim={latent_dim} but the encoder returns codes of size {loc.shape[1]}")
        return loc.shape[1]

    def forward(self, batch_size: int) -> TorchDistribution:
        loc, scale = self.encoder(self.pseudo_inputs)
        return DiagonalNormalMixture(loc, scale, batch_shape=(_positive_int("batch_size", batch_size),))


class FlowPrior(Prior):
    """p(z) = N(x; 0, I) |det dx/dz| with z = f_n(... f_1(x)): a normalizing flow of ``n_flows`` learned
    rational-quadratic spline layers (Durkan et al. 2019) on a standard normal base. Not factorised.

    For latent_dim >= 2 each layer is a spline coupling (the second half of the dims transformed conditionally on the
    first, by a network with ``hidden`` units) and the dims are reversed between layers so every dim gets
    transformed; for latent_dim = 1 each layer is an elementwise spline. Splines act on [-bound, bound] (bound 3) and
    are the identity outside, so the tails stay Gaussian and log densities are exact everywhere.
    """

    def __init__(self, latent_dim: int, n_flows: int = 2, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        _positive_int("n_flows", n_flows)
        hidden = [_positive_int("each size in hidden", h) for h in ([hidden] if isinstance(hidden, int) else hidden)]
        if latent_dim == 1:
            layers = [T.Spline(1) for _ in range(n_flows)]
        else:
            layers = [T.spline_coupling(latent_dim, hidden_dims=hidden) for _ in range(n_flows)]
        self.layers = nn.ModuleList(layers)
        self.register_buffer("base_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("base_scale", torch.ones(latent_dim), persistent=False)
        # T.Permute keeps its index as a plain attribute, so it is rebuilt from this buffer on each call.
        self.register_buffer("reversal", torch.arange(latent_dim - 1, -1, -1), persistent=False)

    def forward(self, batch_size: int) -> TorchDistribution:
        base = dist.Normal(self.base_loc, self.base_scale).to_event(1).expand([_positive_int("batch_size", batch_size)])
        transforms = []
        for i, layer in enumerate(self.layers):
            # Pyro's transforms cache their last (x, y) pair by tensor identity, so the same z evaluated again
            # after a parameter update or a state_dict load would get the stale answer (and a freed graph).
            layer._cached_x_y = (None, None)
            if i > 0 and self.latent_dim > 1:
                transforms.append(T.Permute(self.reversal))
            transforms.append(layer)
        return dist.TransformedDistribution(base, transforms)


class AggregatePosterior(Prior):
    """The empirical aggregate posterior of a training set's encodings q(z|x_n) = N(loc_n, diag scale_n^2),
    n = 1..N, used as a fixed prior for sampling and evaluation. Two forms, chosen by ``fit(..., joint=...)``:

    * ``FactorisedAggregatePosterior`` (joint=False, factorised): each z_j independently from the 1-d mixture
      (1/N) sum_n N(loc_nj, scale_nj^2), the product of the aggregate's marginals. Sampling it mixes dimensions
      of different data points, which is how the CorEx paper generates new images.
    * ``JointAggregatePosterior`` (joint=True, not factorised): z from (1/N) sum_n N(loc_n, diag scale_n^2).

    Memory: the factorised form's ``log_prob`` builds a (batch, latent_dim, N) tensor, e.g. 1.2 GB of float32 for
    batch 128, N = 60,000, latent_dim = 40, and the joint form's a (batch, N) one in float64 (DiagonalNormalMixture).
    Bound them with ``max_components``; ``self.sample(n)`` draws without that cost. loc and scale are buffers (plus
    the 0-d bool buffer ``is_joint``), so a fitted prior is saved in a state_dict and rebuilt with ``from_state_dict``
    or by shapes ``Form(n_components, latent_dim)``.
    """

    joint: bool

    def __init__(self, n_components: int, latent_dim: int):
        if type(self) is AggregatePosterior:
            raise TypeError(
                "build one with AggregatePosterior.fit(loc, scale, joint=...), or construct "
                "FactorisedAggregatePosterior / JointAggregatePosterior by shapes to load a state_dict"
            )
        super().__init__()
        self.latent_dim = _positive_int("latent_dim", latent_dim)
        self.n_components = _positive_int("n_components", n_components)
        self.register_buffer("loc", torch.zeros(n_components, latent_dim))
        self.register_buffer("scale", torch.ones(n_components, latent_dim))
        self.register_buffer("is_joint", torch.tensor(self.joint))

    @classmethod
    def fit(
        cls,
        loc: torch.Tensor,
        scale: torch.Tensor,
        joint: bool | None = None,
        max_components: int | None = None,
        generator: torch.Generator | None = None,
    ) -> "AggregatePosterior":
        """The aggregate prior of N encodings ``loc``, ``scale`` (each (N, latent_dim)); with ``max_components``
        below N, a uniform subsample of that many encodings without replacement (drawn with ``generator``).
        ``joint`` defaults to the form of the class it is called on, factorised for ``AggregatePosterior``."""
        joint = getattr(cls, "joint", False) if joint is None else joint
        if not (isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)):
            raise TypeError("loc and scale must be tensors of shape (N, latent_dim)")
        if not (loc.is_floating_point() and scale.is_floating_point()):
            raise TypeError(f"loc and scale must be floating point, got {loc.dtype} and {scale.dtype}")
        if loc.dim() != 2 or loc.shape != scale.shape or loc.shape[0] == 0:
            raise ValueError(
                f"loc and scale must both have shape (N, latent_dim) with N >= 1, "
                f"got {tuple(loc.shape)} and {tuple(scale.shape)}"
            )
        if not (torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("loc must be finite and scale finite and positive")
        n = loc.shape[0]
        if max_components is not None and _positive_int("max_components", max_components) < n:
            device = generator.device if generator is not None else torch.device("cpu")
            keep = torch.randperm(n, generator=generator, device=device)[:max_components].to(loc.device)
            loc, scale = loc[keep], scale[keep]
        form = JointAggregatePosterior if joint else FactorisedAggregatePosterior
        prior = form(loc.shape[0], loc.shape[1]).to(device=loc.device, dtype=loc.dtype)
        prior.loc.copy_(loc.detach())
        prior.scale.copy_(scale.detach())
        return prior

    @staticmethod
    def from_state_dict(state_dict: dict[str, torch.Tensor]) -> "AggregatePosterior":
        """Rebuild a saved aggregate prior of either form from its state_dict alone."""
        missing = {"loc", "scale", "is_joint"} - set(state_dict)
        if missing:
            raise ValueError(f"not an AggregatePosterior state_dict: keys {sorted(missing)} are missing")
        form = JointAggregatePosterior if bool(state_dict["is_joint"]) else FactorisedAggregatePosterior
        prior = form(*state_dict["loc"].shape).to(device=state_dict["loc"].device, dtype=state_dict["loc"].dtype)
        prior.load_state_dict(state_dict)
        return prior

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "is_joint")
        if saved is not None and bool(saved) != self.joint:
            raise ValueError(
                f"this state_dict holds the {'joint' if bool(saved) else 'factorised'} aggregate prior; "
                f"load it with AggregatePosterior.from_state_dict, not into {type(self).__name__}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws of z, shape (n, latent_dim), without building the (n, N, latent_dim) tensor; ``generator`` must
        live on this prior's device."""
        rows = (_positive_int("n", n), 1 if self.joint else self.latent_dim)
        pick = torch.randint(self.n_components, rows, generator=generator, device=self.loc.device)
        pick = pick.expand(n, self.latent_dim)
        noise = torch.randn(n, self.latent_dim, generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.loc.gather(0, pick) + self.scale.gather(0, pick) * noise


class FactorisedAggregatePosterior(AggregatePosterior):
    """The factorised aggregate prior prod_j (1/N) sum_n N(z_j; loc_nj, scale_nj^2); see AggregatePosterior."""

    factorised = True
    joint = False

    def forward(self, batch_size: int) -> TorchDistribution:
        uniform = dist.Categorical(logits=self.loc.new_zeros(self.latent_dim, self.n_components))
        per_dim = dist.MixtureSameFamily(uniform, dist.Normal(self.loc.T, self.scale.T))
        return per_dim.expand([_positive_int("batch_size", batch_size), self.latent_dim]).to_event(1)


class JointAggregatePosterior(AggregatePosterior):
    """The joint aggregate prior (1/N) sum_n N(z; loc_n, diag scale_n^2); see AggregatePosterior."""

    factorised = False
    joint = True

    def forward(self, batch_size: int) -> TorchDistribution:
        return DiagonalNormalMixture(self.loc, self.scale, batch_shape=(_positive_int("batch_size", batch_size),))


_PRIORS_BY_NAME = {
    "standard": StandardNormal,
    "learned": LearnedGaussian,
    "mixture": MixtureOfGaussians,
    "vamp": VampPrior,
    "flow": FlowPrior,
}


def prior_from_name(name: str, latent_dim: int, **kwargs) -> Prior:
    """Build a prior by name; ``kwargs`` go to its constructor ("vamp" needs ``encoder`` and ``data_shape``)."""
    if name not in _PRIORS_BY_NAME:
        raise ValueError(f"unknown prior {name!r}; valid names are {', '.join(_PRIORS_BY_NAME)}")
    return _PRIORS_BY_NAME[name](latent_dim=latent_dim, **kwargs)


def require_factorised(prior: nn.Module, what: str = "per-latent anchor weights") -> None:
    """Raise ValueError unless ``prior`` factorises over latent dims, p(z) = prod_j p_j(z_j): a weight per
    dimension multiplies the per-dimension KL terms, which exist only for such a prior."""
    if not getattr(prior, "factorised", False):
        raise ValueError(
            f"{what} need a prior that factorises over latent dimensions, p(z) = prod_j p_j(z_j), but "
            f"{type(prior).__name__} does not. Use StandardNormal, LearnedGaussian or "
            "AggregatePosterior.fit(loc, scale, joint=False) as the prior, or drop the per-dimension weights."
        )
