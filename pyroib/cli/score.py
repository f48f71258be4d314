"""``pyroib score``: per-point novelty scores of a split under a trained run, one CSV row per point."""

from __future__ import annotations

import argparse

from .arguments import run_flags


def main(argv: list[str]) -> None:
    from ..evaluate import load_splits
    from ..run import load_run
    from ..scores import score_run, write_csv

    p = argparse.ArgumentParser(
        prog="pyroib score",
        description="Per-point scores of a split (rate, distortion, ELBO, importance-weighted NLL, the marginal "
        "log-ratio against the training encodings, each critic's logit), in nats, one CSV row per point",
    )
    run_flags(p)
    p.add_argument("--out", required=True, help="CSV file to write (replaced atomically)")
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples per point for nll_iw (0 skips)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.iw_samples < 0:
        raise ValueError(f"--iw-samples must be >= 0 (0 skips nll_iw), got {args.iw_samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    run = load_run(args.run, args.device, args.checkpoint)
    splits = load_splits(run)
    x, y = splits.split(args.split)
    scores = score_run(
        run, x, y, train_x=splits.train, iw_samples=args.iw_samples, batch_size=args.batch_size, seed=args.seed
    )
    write_csv(args.out, scores, y)
    means = ", ".join(f"{k} {float(v[v.isfinite()].mean()):.3f}" for k, v in scores.items())
    print(f"{x.shape[0]} {args.split} points scored into {args.out}; means: {means}")
