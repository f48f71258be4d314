"""How biased the minibatch estimates of TC, I(x; z) and KL(q(z) || p(z)) are, against the exact full-data terms.

Encodings q(z | x_n) = N(μ_n, σ² I) with μ_n drawn from N(0, Σ - σ² I) for a correlated Σ (unit variances,
correlation ``--rho`` between every pair of dimensions), so that the aggregate q(z) is close to N(0, Σ) and its total
correlation close to the Gaussian closed form ½(Σ_j log Σ_jj − log det Σ). The reference numbers are the exact
full-data terms over all N encodings (``pyroib.estimators.full_data_terms``); each batch size's row is the mean of
minibatch stratified (and weighted) estimates over ``--batches`` random minibatches, one code per point.

    python benchmarks/estimator_bias.py [--n 20000] [--dim 4] [--rho 0.6] [--batches 200] [--record]
"""

from __future__ import annotations

import argparse
import math

import harness
import torch

from pyroib.estimators import full_data_terms, rate_decomposition


def encodings(n: int, dim: int, rho: float, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    if not 0 <= rho < 1 - sigma**2:
        raise ValueError(f"--rho must lie in [0, 1 - sigma²) = [0, {1 - sigma**2:.2f}) for Σ - σ² I to be a covariance")
    covariance = torch.full((dim, dim), rho, dtype=torch.float64)
    covariance.fill_diagonal_(1.0)
    gaussian_tc = 0.5 * (covariance.diagonal().log().sum() - torch.logdet(covariance)).item()
    generator = torch.Generator().manual_seed(seed)
    root = torch.linalg.cholesky(covariance - sigma**2 * torch.eye(dim, dtype=torch.float64))
    loc = torch.randn(n, dim, generator=generator, dtype=torch.float64) @ root.T
    return loc, torch.full_like(loc, sigma), gaussian_tc


def main() -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--n", type=int, default=20_000, help="encodings (the data set size N)")
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--rho", type=float, default=0.6, help="correlation of every pair of dimensions of the aggregate")
    p.add_argument("--sigma", type=float, default=0.3, help="posterior standard deviation of every encoding")
    p.add_argument("--sizes", default="16,32,64,128,256,512")
    p.add_argument("--batches", type=int, default=200, help="minibatches averaged per batch size")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    loc, scale, gaussian_tc = encodings(args.n, args.dim, args.rho, args.sigma, args.seed)
    exact = full_data_terms(loc, scale, generator=torch.Generator().manual_seed(args.seed + 1))
    names = ("total_correlation", "index_code_mi", "marginal_kl")
    reference = {name: float(exact[name]) for name in names}
    generator = torch.Generator().manual_seed(args.seed + 2)
    rows = []
    for method in ("mss", "mws"):
        for size in [int(s) for s in args.sizes.split(",")]:
            sums = dict.fromkeys(names, 0.0)
            for _ in range(args.batches):
                index = torch.randperm(args.n, generator=generator)[:size]
                z = loc[index] + scale[index] * torch.randn(size, args.dim, generator=generator, dtype=torch.float64)
                terms = rate_decomposition(z, loc[index], scale[index], args.n, method=method)
                for name in names:
                    sums[name] += float(terms[name]) / args.batches
            rows.append((method, size, sums))
    lines = [
        "# Bias of the minibatch aggregate-posterior estimates",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {harness.machine(1)}.",
        "",
        f"N = {args.n} encodings N(μ_n, {args.sigma}² I) in D = {args.dim} dimensions, aggregate close to N(0, Σ) "
        f"with correlation {args.rho} between every pair (Gaussian TC of Σ: {gaussian_tc:.3f} nats). Exact full-data "
        f"terms over all N encodings: TC {reference['total_correlation']:.3f}, "
        f"I(x; z) {reference['index_code_mi']:.3f} "
        f"(at most log N = {math.log(args.n):.2f}), KL(q(z) || N(0, I)) {reference['marginal_kl']:.3f} nats. "
        f"Each row: the mean estimate over {args.batches} random minibatches, and its bias relative to the exact term.",
        "",
        "| method | batch | TC | TC bias | I(x;z) | I(x;z) bias | marginal KL | marginal KL bias |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, size, sums in rows:
        cells = []
        for name in names:
            bias = sums[name] - reference[name]
            cells += [f"{sums[name]:.3f}", f"{bias:+.3f} ({100 * bias / reference[name]:+.0f}%)"]
        lines.append(f"| {method} | {size} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "The minibatch stratified estimate of q(z) is unbiased, but each term takes its logarithm, and the log of an "
        "unbiased estimate is biased low (Jensen): I(x; z) subtracts log q(z) and reads high, the marginal KL adds it "
        "and reads low, TC adds it and subtracts the one-dimensional log q(z_j), less biased, and reads low. The "
        "bias shrinks as the batch grows, here by "
        "about 0.6 per doubling; minibatch weighted sampling is off by about (D − 1) log N in TC at any batch. Train "
        "with the minibatch estimates (their gradients are what the objectives need); report the full-data terms of "
        "`pyroib evaluate`.",
        "",
    ]
    text = "\n".join(lines)
    harness.write_results(args, "estimator_bias.md", text)


if __name__ == "__main__":
    main()
