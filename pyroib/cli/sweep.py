"""``pyroib sweep``: one ordinary run per β (:func:`pyroib.sweep.run_sweep`), every other flag as for train."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main(argv: list[str]) -> None:
    from ..sweep import parse_betas, run_sweep
    from .train import spec_from_args

    p = argparse.ArgumentParser(
        prog="pyroib sweep",
        allow_abbrev=False,
        description="Train one run per β into DIR/beta-<β>/, evaluate each on the test split, write DIR/sweep.csv, "
        "DIR/sweep.md and DIR/sweep.png. Every other flag goes to pyroib train.",
    )
    p.add_argument("--model", required=True, help="as for pyroib train")
    p.add_argument("--beta", required=True, help="START:STOP:COUNT (linear) or START:STOP:COUNT:log")
    p.add_argument("--out", required=True, help="sweep directory")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, in separate processes")
    p.add_argument("--iw-samples", type=int, default=0, help="importance samples for the test NLL (0: skip it)")
    args, rest = p.parse_known_args(argv)
    if "--resume" in rest:
        raise ValueError("leave out --resume: a rerun sweep skips finished runs and resumes unfinished ones by itself")
    betas = parse_betas(args.beta)
    spec, train_args = spec_from_args(["--model", args.model, *rest])
    rows = run_sweep(
        spec,
        betas,
        args.out,
        workers=args.workers,
        iw_samples=args.iw_samples,
        progress=args.workers == 1 and not train_args.no_progress,
        validate=train_args.validate,
    )
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks for the sweep
        return
    print(
        f"swept {len(rows)} values of β; table in {Path(args.out) / 'sweep.md'}, plot in {Path(args.out) / 'sweep.png'}"
    )
