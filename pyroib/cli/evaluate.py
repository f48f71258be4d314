"""``pyroib evaluate`` and ``pyroib report``: both read :func:`pyroib.evaluate.evaluate_run`."""

from __future__ import annotations

import argparse
import json


def evaluate(argv: list[str]) -> None:
    from ..aggregate_prior import SAMPLE_PRIORS, check_prior_name, prior_by_name
    from ..evaluate import evaluate_run, load_splits, prior_site
    from ..full_data import FULL_DATA_MAX_POINTS
    from ..run import load_run

    p = argparse.ArgumentParser(prog="pyroib evaluate")
    p.add_argument("run")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="points per importance-sampling pass (default 100; under an aggregate prior, chosen to keep "
        "its log density within about 256 MB)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--checkpoint",
        default="last",
        help="last (the end of training) or best (the epoch with the best validation ELBO)",
    )
    p.add_argument(
        "--prior",
        default="standard",
        help=f"{', '.join(SAMPLE_PRIORS)}: standard is the prior the model was trained with; aggregate "
        "(the factorised aggregate posterior of the training encodings) or aggregate-joint stand "
        "in for p(z), fitted and saved first if DIR/aggregate_prior.pt is missing",
    )
    p.add_argument(
        "--full-data-points",
        type=int,
        default=FULL_DATA_MAX_POINTS,
        help="at most this many points of the split for the full-data MI/TC/KL estimates, a random subset "
        "above it (time grows with its square: 60,000 10-d codes take about 100 s on one CPU core; "
        "0 skips)",
    )
    p.add_argument(
        "--disentanglement",
        action="store_true",
        help="add the disentanglement metrics (BetaVAE, FactorVAE, MIG, Chen's MIG, DCI, SAP, modularity, "
        "explicitness) on the data set's ground truth (dsprites)",
    )
    p.add_argument(
        "--disentanglement-scale",
        type=float,
        default=1.0,
        help="multiplies the metrics' numbers of points (1: disentanglement_lib's defaults; 0.1 for a quick look)",
    )
    p.add_argument("--sampled-codes", action="store_true", help="score codes drawn from q(z|x), not its means")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.iw_samples < 0:
        raise ValueError(f"--iw-samples must be >= 0 (0 skips the importance-weighted NLL), got {args.iw_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    swap = check_prior_name(args.prior) != "standard"
    run = load_run(args.run, args.device, args.checkpoint)
    if args.disentanglement:  # refused before anything is computed
        from ..disentanglement import ground_truth_of

        ground_truth_of(run)
        run.capabilities.require("encode", "disentanglement metrics")
    splits = load_splits(run)
    if swap:  # the site the other prior stands at must be known before its fitting costs anything
        prior_site(run, *splits.split(args.split))
    result = evaluate_run(
        run,
        args.split,
        splits=splits,
        iw_samples=args.iw_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        full_data_points=args.full_data_points,
        prior=prior_by_name(run, args.prior) if swap else None,
    )
    if swap:
        result = {"prior": args.prior, **result}
    if args.disentanglement:
        from ..disentanglement import evaluate_disentanglement

        result.update(
            evaluate_disentanglement(run, scale=args.disentanglement_scale, seed=args.seed, sample=args.sampled_codes)
        )
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}  {v:.4f}" if isinstance(v, float) else f"{k:>24}  {v}")


def report(argv: list[str]) -> None:
    from ..report import write_report

    p = argparse.ArgumentParser(prog="pyroib report")
    p.add_argument("run")
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--disentanglement-scale",
        type=float,
        default=0.1,
        help="dSprites runs: the metrics' numbers of points as a fraction of disentanglement_lib's (default 0.1)",
    )
    args = p.parse_args(argv)
    path = write_report(
        args.run, iw_samples=args.iw_samples, device=args.device, disentanglement_scale=args.disentanglement_scale
    )
    print(f"report written to {path}")
