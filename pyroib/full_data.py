"""Full-data information terms of a trained run: I(x; z), total correlation, dimension-wise and marginal KL over a
whole split with the exact aggregate posterior. These are the numbers to report: the minibatch estimates that the
objectives optimise are biased in the log domain; these carry only the noise of one code per point."""

from __future__ import annotations

import torch

import pyroib.estimators as estimators

from .handlers import per_dimension

FULL_DATA_MAX_POINTS = 10_000


def full_data_evaluation(
    run,
    x: torch.Tensor,
    *,
    max_points: int = FULL_DATA_MAX_POINTS,
    seed: int = 0,
    chunk_size: int = 512,
    batch_size: int = 1000,
    prior=None,
) -> dict:
    """I(x; z), TC, dimension-wise KL and marginal KL of a trained run over a split, exact aggregate posterior.

    Encodes (a random subset of at most ``max_points`` of) ``x`` with ``Guide.encode``, draws one code per point
    and evaluates q(z) = (1/M) Σ_m q(z | x_m) over all M encodings with :func:`pyroib.estimators.full_data_terms`
    (time O(M² D), memory O(chunk_size² D)). Keys: ``mutual_information`` (≤ log M), ``total_correlation`` (also as
    ``tc``), ``dimwise_kl`` (factorised priors only), ``marginal_kl``, ``mi_per_dim`` (list), ``full_data_rate``
    (the Monte Carlo rate on the same codes, = MI + TC + dimKL) and ``full_data_points``/``full_data_subsampled``.

    The terms against p(z) use ``prior``, else the prior injected into the model; a program without one (no
    ``prior=`` capability) gets MI and TC only, with a note, never a KL measured against a guessed N(0, I). Returns
    {} for a guide without ``encode``; for a deterministic encoder only a note (its codes have no density).
    """
    capabilities = run.capabilities
    if not capabilities.encode:
        return {}
    if getattr(run.objective, "deterministic_encoder", False):
        return {
            "full_data_note": "deterministic encoder: I(x; z) is infinite and q(z) has no density, so the "
            "full-data information terms are not defined; see the critic estimates"
        }
    if prior is None and capabilities.takes_prior:
        prior = run.model.prior
    n = x.shape[0]
    subsampled = n > max_points
    if subsampled:
        keep = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points]
        x = x[keep.to(x.device)]
    with torch.no_grad():
        parts = [run.guide.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    loc, scale = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    generator = torch.Generator(device=loc.device).manual_seed(seed)
    terms = estimators.full_data_terms(
        loc,
        scale,
        chunk_size=chunk_size,
        generator=generator,
        prior_log_prob=None if prior is None else _chunked_prior_log_prob(prior, batch_size),
    )
    result = {
        "mutual_information": float(terms["index_code_mi"]),
        "total_correlation": float(terms["total_correlation"]),
        "tc": float(terms["total_correlation"]),
        "mi_per_dim": terms["mi_per_dim"].tolist(),
    }
    if prior is None:
        result["full_data_note"] = (
            "the program injects no prior (Model(config, prior=...)), so the terms against "
            "p(z) (marginal KL, dimension-wise KL, rate) are not reported"
        )
    else:
        result.update(marginal_kl=float(terms["marginal_kl"]), full_data_rate=float(terms["rate"]))
        if "dimwise_kl" in terms:
            result["dimwise_kl"] = float(terms["dimwise_kl"])
    note = getattr(run.guide, "encode_note", None)  # a guide whose q(z|x) is not the Gaussian encode returns
    if note:
        result["full_data_note"] = " ".join(filter(None, [result.get("full_data_note"), note]))
    result.update(full_data_points=int(x.shape[0]), full_data_subsampled=subsampled)
    return result


def _chunked_prior_log_prob(prior, batch_size: int):
    def log_prob(z: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.no_grad():
            for part in z.split(batch_size):
                d = prior(part.shape[0])
                base = per_dimension(d)
                out.append(base.log_prob(part) if base is not None else d.log_prob(part))
        return torch.cat(out)

    return log_prob
