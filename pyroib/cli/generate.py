"""``pyroib fit-prior`` and ``pyroib sample``: the aggregate posterior of a run, and decoded prior draws."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def fit_prior(argv: list[str]) -> None:
    from ..aggregate_prior import AGGREGATE_FILE, DEFAULT_MAX_COMPONENTS, fit_and_save
    from ..run import load_run

    p = argparse.ArgumentParser(
        prog="pyroib fit-prior",
        description="Encode the training split and store the "
        "factorised and joint aggregate posterior in DIR/" + AGGREGATE_FILE,
    )
    p.add_argument("run")
    p.add_argument(
        "--max-components",
        type=int,
        default=DEFAULT_MAX_COMPONENTS,
        help="subsample this many encodings (0 = all; the factorised form's log density costs batch x D x M)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default="last", help="last or best: whose encodings to fit")
    args = p.parse_args(argv)
    if args.max_components < 0:
        raise ValueError(f"--max-components must be >= 0 (0 keeps all encodings), got {args.max_components}")
    run = load_run(args.run, args.device, args.checkpoint)
    fitted = fit_and_save(run, args.max_components or None, args.seed)
    variance = fitted["variance"]
    print(
        f"aggregate posterior of {fitted['n_encodings']} training encodings, D = {variance.numel()}, "
        f"{fitted['joint'].n_components} components per form; written to {Path(args.run) / AGGREGATE_FILE}"
    )
    print("per-dimension variance Var_q(z_j): " + " ".join(f"{v:.3f}" for v in variance.tolist()))


def sample(argv: list[str]) -> None:
    from ..aggregate_prior import AGGREGATE_FILE, check_prior_name, decode_prior_draws, prior_by_name, write_grid
    from ..run import load_run

    p = argparse.ArgumentParser(prog="pyroib sample")
    p.add_argument("run")
    p.add_argument(
        "--prior",
        default="standard",
        help="standard (the prior the model was trained with), aggregate (factorised aggregate posterior)"
        " or aggregate-joint; the aggregate is fitted and saved first if DIR/" + AGGREGATE_FILE + " is missing",
    )
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--nrow", type=int, default=None, help="images per row (default: about sqrt(n))")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default="last", help="last (the end of training) or best (the best validation ELBO)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="for a program with its own sampler (the diffusion model): timesteps of the reverse chain (default all)",
    )
    args = p.parse_args(argv)
    check_prior_name(args.prior)
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    nrow = args.nrow or math.ceil(math.sqrt(args.n))
    if nrow < 1:
        raise ValueError(f"--nrow must be at least 1, got {nrow}")
    if not Path(args.out).parent.is_dir():
        raise FileNotFoundError(f"--out {args.out}: the folder {Path(args.out).parent} does not exist; create it first")
    run = load_run(args.run, args.device, args.checkpoint)
    own_sampler = run.capabilities.sample_images and args.prior == "standard"
    if own_sampler:
        generator = torch.Generator(device=run.device).manual_seed(args.seed)
        images = run.model.sample_images(args.n, args.steps, generator)
    else:
        if run.capabilities.sample_images and not run.capabilities.decode:
            raise ValueError(
                f"--prior {args.prior}: this model draws images by its own sampler and decodes no code; drop --prior"
            )
        if args.steps is not None:
            run.capabilities.require("sample_images", "--steps")
        run.capabilities.require("decode", "sampling images")
        images = decode_prior_draws(run, prior_by_name(run, args.prior), args.n, args.seed)
    if images.dim() != 4:
        raise ValueError(
            f"{args.run}: sampling images needs (C, H, W) data; the model decodes to shape {tuple(images.shape[1:])}"
        )
    height, width = write_grid(images, args.out, nrow)
    source = "the model's own sampler" if own_sampler else f"the {args.prior} prior"
    print(f"{args.n} samples from {source} written to {args.out} ({width}x{height} pixels)")
