"""Aggregate-posterior information estimators, in nats per data point.

Setting: a dataset x_1..x_N, Gaussian encoders q(z|x_n) = N(loc_n, diag(scale_n^2)) and the
aggregate posterior q(z) = (1/N) sum_n q(z|x_n) with marginals q_j(z_j). For codes
z_i ~ q(z|x_i) the rate of a VAE splits exactly (Chen et al. 2018, "Isolating sources of
disentanglement") into

    E[log q(z|x) - log p(z)]                                    rate (E_x KL(q(z|x) || p(z)))
      = E[log q(z|x) - log q(z)]                                index-code MI I(x; z)
      + E[log q(z) - sum_j log q_j(z_j)]                        total correlation TC
      + E[sum_j log q_j(z_j) - log p_j(z_j)]                    dimension-wise KL

when p factorises, and E[log q(z) - log p(z)] = TC + dimension-wise KL is the marginal KL
KL(q(z) || p(z)). Every function here returns these terms from one set of log densities,
so the identity holds up to rounding whichever estimate of log q(z) is plugged in.

Two estimates of log q(z_i) from a minibatch of B codes, and one from all N encodings:

* ``"mss"`` minibatch stratified sampling, with M = B - 1:
  q(z_i) ~= (1/N) q(z_i|x_i) + (N - M)/(N M) q(z_i|x_partner(i)) + (1/M) sum_rest q(z_i|x_k).
  The weights of a row sum to one; when the batch is drawn uniformly without replacement the
  estimate of q(z_i) (not of its log) is unbiased, so the log has only a Jensen gap.
* ``"mws"`` minibatch weighted sampling: q(z_i) ~= (1/(N B)) sum_k q(z_i|x_k). Its weights sum
  to 1/N, not one, and the same 1/(N B) normalises the joint and every marginal, so its TC
  reads about (D - 1) log N nats too high (about 100 for D = 10, N = 60,000). It is kept to
  reproduce published numbers.
* :func:`full_data_terms` computes the exact mixture over all N encodings in chunks.

Index-code MI from an aggregate over M components never exceeds log M, because the own
component alone contributes q(z_i|x_i)/M to the mixture.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "ESTIMATOR_METHODS",
    "MMD_KERNELS",
    "exact_log_qz",
    "full_data_terms",
    "gaussian_log_prob_per_dim",
    "information_terms",
    "log_qz_estimates",
    "logsumexp_floored",
    "marginal_kl",
    "mmd",
    "mss_log_weight_matrix",
    "rate_decomposition",
    "standard_normal_log_prob",
]

ESTIMATOR_METHODS = ("mss", "mws")
MMD_KERNELS = ("rbf", "imq")
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)

PriorLogProb = Callable[[Tensor], Tensor]


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """Per-dimension log N(z_j; 0, 1), shape of ``z``: the default factorised prior."""
    return -0.5 * z.square() - _HALF_LOG_TWO_PI


def gaussian_log_prob_per_dim(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(z_j; loc_j, scale_j^2) elementwise (broadcasting), without summing dimensions."""
    return -0.5 * ((z - loc) / scale).square() - scale.log() - _HALF_LOG_TWO_PI


def _check_codes(z: Tensor, loc: Tensor, scale: Tensor) -> None:
    for name, tensor in (("z", z), ("loc", loc), ("scale", scale)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if z.dim() != 2:
        raise ValueError(f"z must have shape (batch, latent_dim), got {tuple(z.shape)}")
    if loc.shape != z.shape or scale.shape != z.shape:
        raise ValueError(
            "z, loc and scale must share the shape (batch, latent_dim); got "
            f"z {tuple(z.shape)}, loc {tuple(loc.shape)}, scale {tuple(scale.shape)}"
        )


def _check_method_and_sizes(method: str, batch_size: int, dataset_size: int) -> None:
    if method not in ESTIMATOR_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {ESTIMATOR_METHODS}")
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, numbers.Integral):
        raise TypeError(f"dataset_size must be a whole number, got {type(dataset_size).__name__}")
    if method == "mss" and batch_size < 2:
        raise ValueError(
            f"minibatch stratified sampling needs a batch of at least 2 codes, got {batch_size}; "
            "use a larger batch or method='mws'"
        )
    if batch_size < 1:
        raise ValueError("the batch is empty: z needs at least one row")
    if dataset_size < batch_size:
        raise ValueError(
            f"dataset_size ({dataset_size}) is smaller than the batch ({batch_size}); pass the "
            "size N of the whole dataset the batch was drawn from"
        )


def mss_log_weight_matrix(batch_size: int, dataset_size: int, *, dtype=None, device=None) -> Tensor:
    """Log weights W (B, B) of minibatch stratified sampling: log q(z_i) ~= lse_k(W_ik + log q(z_i|x_k)).

    With M = B - 1 and N = ``dataset_size``: W_ii = log(1/N); each row has one partner
    k = (i + 1) mod B with weight (N - M)/(N M); the other B - 2 entries have weight 1/M.
    Rows sum to one in probability space. The partner is a fixed cyclic neighbour; that is
    as good as a random one because the batch itself is in random order.
    """
    _check_method_and_sizes("mss", batch_size, dataset_size)
    n, m = float(dataset_size), float(batch_size - 1)
    weights = torch.full((batch_size, batch_size), 1.0 / m, dtype=dtype, device=device)
    rows = torch.arange(batch_size, device=device)
    weights[rows, rows] = 1.0 / n
    weights[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    return weights.log()


# exp() of arguments below about -87 (float32) takes a slow path on x86 CPUs (10-25x the normal cost), and weights
# near the smallest normal float turn into slow denormals in the backward's products. Terms more than 60 nats below a
# row's largest are raised to this floor first: they change a log-sum-exp over K terms by at most K·e^-60 relative.
_EXP_FLOOR = -60.0


def logsumexp_floored(x: Tensor, dim: int) -> Tensor:
    """log Σ exp(x) along ``dim`` for finite ``x``; terms more than 60 nats below the largest are raised to that floor.

    The result differs from :func:`torch.logsumexp` by at most K·e^-60 relative (K terms), and it runs about 10x
    faster on mixtures whose far components sit hundreds of nats down, where torch's exp takes its slow path.
    """
    peak = x.amax(dim, keepdim=True)
    return (x - peak).clamp_(min=_EXP_FLOOR).exp_().sum(dim).log_().add_(peak.squeeze(dim))


class _MixtureLogDensity(torch.autograd.Function):
    """log Σ_k w_ik N(z_i; loc_k, diag scale_k²) jointly (B,) and per dimension (B, D), with a hand-written backward.

    Autograd through the (B, K, D) pairwise densities and two log-sum-exps made the β-TCVAE step 1.75x the β-VAE
    step. Here the forward makes nine passes over one (B, D, K) buffer and the backward nine, reusing the buffers in
    place. With u = (z_i - loc_k) / scale_k and P = -u²/2 - log scale_k - log √(2π), the gradient of P is -u/scale
    w.r.t. z, u/scale w.r.t. loc and (u² - 1)/scale w.r.t. scale; the log-sum-exps pass softmax weights, which the
    forward keeps unnormalised (the backward divides the incoming gradient instead). (No double backward.)
    """

    @staticmethod
    def forward(ctx, z, loc, scale, log_w):
        # layout (i, d, k), every reduction over the components k on contiguous memory. The (D, K) operands are
        # made contiguous because an output takes its inputs' strides: a transposed view would put d innermost
        # and made every reduction over k strided (4-8x slower).
        inv_scale = scale.reciprocal().T.contiguous()
        u = (z.unsqueeze(-1) - loc.T.contiguous().unsqueeze(0)).mul_(inv_scale)
        log_norm = -(scale.log() + _HALF_LOG_TWO_PI).T.contiguous()
        pairwise = torch.addcmul(log_norm.unsqueeze(0), u, u, value=-0.5)
        joint_terms = pairwise.sum(1).add_(log_w)
        joint = torch.logsumexp(joint_terms, -1)
        joint_weights = joint_terms.sub_(joint.unsqueeze(-1)).clamp_(min=_EXP_FLOOR).exp_()
        pairwise.add_(log_w.unsqueeze(1))
        peak = pairwise.amax(-1, keepdim=True)
        weights = pairwise.sub_(peak).clamp_(min=_EXP_FLOOR).exp_()
        total = weights.sum(-1, keepdim=True)
        per_dim = (peak + total.log()).squeeze(-1)
        ctx.save_for_backward(u, inv_scale, weights, total, joint_weights)
        return joint, per_dim

    @staticmethod
    def backward(ctx, g_joint, g_per_dim):
        if getattr(ctx, "used", False):
            raise RuntimeError(
                "a second backward through the minibatch aggregate-posterior terms (TC, MI, marginal KL): their "
                "backward reuses its saved buffers in place for speed, so the graph serves one backward. Recompute "
                "the terms for another one"
            )
        ctx.used = True
        u, inv_scale, weights, total, joint_weights = ctx.saved_tensors
        if g_per_dim is None:
            g_per_dim = torch.zeros_like(u[:, :, 0])
        if g_joint is None:
            g_joint = torch.zeros_like(u[:, 0, 0])
        # g[i, d, k] = dL/dpairwise = g_per_dim[i, d] W[i, d, k] + g_joint[i] V[i, k], with W = weights / total
        g = weights.mul_((g_per_dim.unsqueeze(-1) / total)).add_((g_joint.unsqueeze(-1) * joint_weights).unsqueeze(1))
        g_sum = g.sum(0)
        gu = g.mul_(u)
        g_loc = (gu.sum(0) * inv_scale).T
        g_scale = ((u.mul_(gu).sum(0) - g_sum) * inv_scale).T
        g_z = -gu.mul_(inv_scale.unsqueeze(0)).sum(-1)
        return g_z, g_loc, g_scale, None


def log_qz_estimates(
    z: Tensor, loc: Tensor, scale: Tensor, dataset_size: int, method: str = "mss"
) -> tuple[Tensor, Tensor]:
    """Minibatch estimates of log q(z_i) (B,) and log q_j(z_ij) (B, D), in nats.

    ``z[i]`` is a draw from q(z|x_i) with parameters ``loc[i]``, ``scale[i]``; the batch is
    assumed drawn uniformly without replacement from a dataset of ``dataset_size`` points.
    The same weights estimate the joint aggregate and each one-dimensional marginal.
    """
    _check_codes(z, loc, scale)
    batch_size = z.shape[0]
    _check_method_and_sizes(method, batch_size, dataset_size)
    dataset_size = int(dataset_size)  # numpy integers overflow in the weights' arithmetic
    if method == "mss":
        log_w = mss_log_weight_matrix(batch_size, dataset_size, dtype=z.dtype, device=z.device)
    else:
        log_w = torch.full(
            (batch_size, batch_size), -math.log(dataset_size * batch_size), dtype=z.dtype, device=z.device
        )
    log_qz, log_qz_per_dim = _MixtureLogDensity.apply(z, loc, scale, log_w)
    return log_qz, log_qz_per_dim


def _evaluate_prior(prior_log_prob: PriorLogProb | None, z: Tensor) -> Tensor:
    log_p = standard_normal_log_prob(z) if prior_log_prob is None else prior_log_prob(z)
    if not isinstance(log_p, Tensor) or log_p.shape not in (z.shape, z.shape[:1]):
        shape = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(
            f"the prior log density must return shape {tuple(z.shape)} (per dimension) or "
            f"{tuple(z.shape[:1])} (joint) for codes of shape {tuple(z.shape)}, got {shape}"
        )
    return log_p


def information_terms(
    log_qz_given_x_per_dim: Tensor, log_qz: Tensor, log_qz_per_dim: Tensor, log_pz: Tensor
) -> dict[str, Tensor]:
    """Batch means of the rate decomposition from per-point log densities, in nats.

    ``log_pz`` is the prior per dimension (B, D) or joint (B,). Returns ``rate``,
    ``index_code_mi``, ``mi_per_dim`` (D,), ``total_correlation``, ``marginal_kl`` and, for a
    per-dimension prior only, ``dimwise_kl``. Then rate = MI + TC + dimwise KL and
    marginal KL = TC + dimwise KL, term by term on the same samples.
    """
    log_qz_given_x = log_qz_given_x_per_dim.sum(-1)
    factorised = log_pz.dim() == 2
    log_pz_joint = log_pz.sum(-1) if factorised else log_pz
    terms = {
        "rate": (log_qz_given_x - log_pz_joint).mean(),
        "index_code_mi": (log_qz_given_x - log_qz).mean(),
        "mi_per_dim": (log_qz_given_x_per_dim - log_qz_per_dim).mean(0),
        "total_correlation": (log_qz - log_qz_per_dim.sum(-1)).mean(),
        "marginal_kl": (log_qz - log_pz_joint).mean(),
    }
    if factorised:
        terms["dimwise_kl"] = (log_qz_per_dim - log_pz).sum(-1).mean()
    return terms


def rate_decomposition(
    z: Tensor,
    loc: Tensor,
    scale: Tensor,
    dataset_size: int,
    prior_log_prob: PriorLogProb | None = None,
    method: str = "mss",
) -> dict[str, Tensor]:
    """Minibatch estimate of rate = index-code MI + TC + dimension-wise KL (nats per point).

    ``prior_log_prob`` maps codes (B, D) to log p_j(z_ij) (B, D); the default is the
    standard normal. See :func:`information_terms` for the keys. Differentiable in all inputs.
    """
    log_qz, log_qz_per_dim = log_qz_estimates(z, loc, scale, dataset_size, method)
    log_pz = _evaluate_prior(prior_log_prob, z)
    if log_pz.dim() != 2:
        raise ValueError(
            "rate_decomposition needs per-dimension prior log densities of shape (batch, "
            "latent_dim) to split off the dimension-wise KL; for a joint prior use marginal_kl"
        )
    return information_terms(gaussian_log_prob_per_dim(z, loc, scale), log_qz, log_qz_per_dim, log_pz)


def marginal_kl(
    z: Tensor,
    loc: Tensor,
    scale: Tensor,
    dataset_size: int,
    prior_log_prob: PriorLogProb | None = None,
    method: str = "mss",
) -> Tensor:
    """Minibatch estimate of KL(q(z) || p(z)) = E[log q(z) - log p(z)] in nats.

    ``prior_log_prob`` may return per-dimension (B, D) or joint (B,) log densities, so priors
    that do not factorise (mixtures, VampPrior, flows) are accepted.
    """
    log_qz, _ = log_qz_estimates(z, loc, scale, dataset_size, method)
    log_pz = _evaluate_prior(prior_log_prob, z)
    return (log_qz - (log_pz.sum(-1) if log_pz.dim() == 2 else log_pz)).mean()


def exact_log_qz(
    z: Tensor, dataset_loc: Tensor, dataset_scale: Tensor, chunk_size: int = 512, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    """Exact log q(z) (Q,) and log q_j(z_j) (Q, D) of the mixture of all N encodings.

    q(z) = (1/N) sum_n N(z; loc_n, diag(scale_n^2)). Queries and components are taken in
    blocks of ``chunk_size`` and the log-sum-exp over components is accumulated block by
    block, so memory is O(chunk_size^2 * D) whatever Q and N; time is O(Q N D).
    ``exclude_self``: z_n was drawn from component n (Q = N); each query leaves its own component out, the mixture
    of the other N - 1 (its own term dominates a mixture of narrow components that few points share).
    """
    if dataset_loc.dim() != 2 or dataset_scale.shape != dataset_loc.shape:
        raise ValueError(
            "dataset_loc and dataset_scale must share the shape (dataset_size, latent_dim); got "
            f"{tuple(dataset_loc.shape)} and {tuple(dataset_scale.shape)}"
        )
    if z.dim() != 2 or z.shape[1] != dataset_loc.shape[1]:
        raise ValueError(f"z must have shape (num_codes, {dataset_loc.shape[1]}), got {tuple(z.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    chunk_size = int(chunk_size)  # numpy integers too; torch's split wants a Python int
    if exclude_self and (z.shape[0] != dataset_loc.shape[0] or z.shape[0] < 2):
        raise ValueError(f"exclude_self needs one query per component and two or more; got {z.shape[0]} queries")
    log_n = math.log(dataset_loc.shape[0] - exclude_self)
    # Components sit on the last, contiguous axis of each (query, D, component) block: the
    # reductions over components run several times faster than over a middle axis.
    components = [
        (loc.T.contiguous(), scale.reciprocal().T.contiguous(), (-scale.log() - _HALF_LOG_TWO_PI).T.contiguous())
        for loc, scale in zip(dataset_loc.split(chunk_size), dataset_scale.split(chunk_size))
    ]
    joint_parts, per_dim_parts = [], []
    for query_block, query in enumerate(z.split(chunk_size)):
        joint = query.new_full(query.shape[:1], -math.inf)
        per_dim = query.new_full(query.shape, -math.inf)
        for component_block, (loc_t, inv_scale_t, log_norm_t) in enumerate(components):
            standardised = (query.unsqueeze(-1) - loc_t) * inv_scale_t
            block = torch.addcmul(log_norm_t, standardised, standardised, value=-0.5)
            if exclude_self and query_block == component_block:
                own = torch.arange(query.shape[0], device=query.device)
                block[own, :, own] = -1e30  # finite, so that a block holding only the query's own term stays finite
            joint = torch.logaddexp(joint, logsumexp_floored(block.sum(1), dim=-1))
            per_dim = torch.logaddexp(per_dim, logsumexp_floored(block, dim=-1))
        joint_parts.append(joint - log_n)
        per_dim_parts.append(per_dim - log_n)
    return torch.cat(joint_parts), torch.cat(per_dim_parts)


@torch.no_grad()
def full_data_terms(
    encode_loc: Tensor,
    encode_scale: Tensor,
    n_samples_per_point: int = 1,
    chunk_size: int = 512,
    prior_log_prob: PriorLogProb | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Rate decomposition over a whole split, with the exact aggregate of all N encodings.

    Draws ``n_samples_per_point`` codes from each q(z|x_n), evaluates log q(z) and every
    log q_j(z_j) as the exact N-component mixture (:func:`exact_log_qz`) and returns the keys
    of :func:`information_terms`, averaged over all N * S codes. The only randomness is the
    draw of codes, so rate = MI + TC + dimension-wise KL holds up to rounding and MI <= log N.
    ``prior_log_prob`` is as in :func:`marginal_kl` (default standard normal). Cost O(S N^2 D): 3.6e10
    Gaussian log densities for N = 60,000 and D = 10, which one CPU core evaluated in 103 s
    (benchmarks/results/full_data_terms.md); the inputs' device is used throughout. Not
    differentiable (an evaluation metric).
    """
    if encode_loc.dim() != 2 or encode_scale.shape != encode_loc.shape:
        raise ValueError(
            "encode_loc and encode_scale must share the shape (dataset_size, latent_dim); got "
            f"{tuple(encode_loc.shape)} and {tuple(encode_scale.shape)}"
        )
    if not bool((encode_scale > 0).all()):
        raise ValueError("encode_scale must be strictly positive everywhere")
    if (
        isinstance(n_samples_per_point, bool)
        or not isinstance(n_samples_per_point, numbers.Integral)
        or n_samples_per_point < 1
    ):
        raise ValueError(f"n_samples_per_point must be a positive int, got {n_samples_per_point!r}")
    n_samples_per_point = int(n_samples_per_point)
    loc = encode_loc.repeat(n_samples_per_point, 1)
    scale = encode_scale.repeat(n_samples_per_point, 1)
    noise = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
    z = loc + scale * noise
    log_qz, log_qz_per_dim = exact_log_qz(z, encode_loc, encode_scale, chunk_size)
    return information_terms(
        gaussian_log_prob_per_dim(z, loc, scale), log_qz, log_qz_per_dim, _evaluate_prior(prior_log_prob, z)
    )


def _kernel_matrix(x: Tensor, y: Tensor, kernel: str, scales: tuple[float, ...]) -> Tensor:
    # The expanded square keeps memory at O(n m) and its gradient finite at coincident points.
    sq_dist = (x.square().sum(-1, keepdim=True) + y.square().sum(-1) - 2.0 * x @ y.T).clamp_min(0.0)
    if kernel == "rbf":
        return sum(torch.exp(-sq_dist / c) for c in scales)
    return sum(c / (c + sq_dist) for c in scales)


def mmd(
    x: Tensor,
    y: Tensor,
    kernel: str = "rbf",
    scale: float | tuple[float, ...] | None = None,
    unbiased: bool = True,
) -> Tensor:
    """Squared maximum mean discrepancy MMD^2(P, Q) between samples x ~ P (n, D), y ~ Q (m, D).

    Kernels, with bandwidth c: ``"rbf"`` k(a, b) = exp(-|a - b|^2 / c) and ``"imq"`` (inverse
    multiquadric) k(a, b) = c / (c + |a - b|^2). The default c = 2 D is the InfoVAE/WAE choice
    2 D sigma^2 for a unit-variance prior; a sequence of scales sums the kernels (WAE's
    multi-scale IMQ). ``unbiased=True`` gives the U-statistic, which drops the i = j terms,
    has mean exactly MMD^2 and can be negative (needs n, m >= 2); ``False`` the V-statistic,
    which is non-negative and biased upwards by O(1/n + 1/m).
    """
    if kernel not in MMD_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {MMD_KERNELS}")
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x and y must have shapes (n, D) and (m, D) with the same D, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < (2 if unbiased else 1):
        raise ValueError(
            f"the {'unbiased' if unbiased else 'biased'} MMD needs at least "
            f"{2 if unbiased else 1} samples on each side, got {n} and {m}"
        )
    if scale is None:
        scales = (2.0 * x.shape[1],)
    else:
        scales = tuple(float(c) for c in scale) if isinstance(scale, (list, tuple)) else (float(scale),)
    if not scales or min(scales) <= 0:
        raise ValueError(f"kernel scales must be positive, got {scale!r}")
    k_xx, k_yy, k_xy = (_kernel_matrix(a, b, kernel, scales) for a, b in ((x, x), (y, y), (x, y)))
    if unbiased:
        within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
        within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    else:
        within_x, within_y = k_xx.mean(), k_yy.mean()
    return within_x + within_y - 2.0 * k_xy.mean()
