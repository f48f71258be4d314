"""Fashion-MNIST test NLL of the VAE under three priors: standard normal, VampPrior and a flow prior.

The setting of the Exemplar VAE paper's Table 1 (Norouzi et al. 2020): dynamic binarisation (training batches resampled
every pass, test binarised once with a fixed seed), 40-d latents, two 300-unit layers in encoder and decoder, test
NLL by importance sampling. Anchors there (5,000 importance samples, hundreds of epochs with early stopping):
VAE 228.70, VAE + VampPrior (500 pseudo-inputs) 227.35 nats. The paper has no flow-prior row.

Run from the repository root; the budgeted run recorded in benchmarks/results/priors_fashion.md is

    .venv/bin/python benchmarks/priors_fashion.py --minutes 20 --iw-samples 100

and the full-length run (no wall-clock budget, the paper's sample count) is

    .venv/bin/python benchmarks/priors_fashion.py --minutes 0 --epochs 500 --iw-samples 5000

The VampPrior row of benchmarks/results/priors_fashion_warm.md fine-tunes the trained gated VAE of
fashion_density_gated.md (runs/fashion-gated) under the VampPrior, pseudo-inputs started at training images and
mapped by the clamp (the sigmoid map leaves pixels started at 0 or 1 frozen), in two phases of one command each:

    .venv/bin/python benchmarks/priors_fashion.py --priors vamp --network gated --grad-clip 150 --minutes 0 \
        --batch-size 100 --init-from runs/fashion-gated --prior-init data --prior-range-map clamp --threads 2 \
        --jobs 1 --iw-samples 5000 --checkpoint last --root runs/benchmarks/priors_fashion_clamp \
        --results benchmarks/results/priors_fashion_warm.md --lr 1e-4 --epochs 170 --train-only
    (then the same without --train-only, with --lr 3e-5 --epochs 210: it trains on and evaluates; 227.25 nats)

The flow row (benchmarks/results/priors_fashion_warm_flow.md) is the same fine-tune under ``--priors flow``, without
the two VampPrior flags, --results benchmarks/results/priors_fashion_warm_flow.md, phases --lr 1e-4 --epochs 150
--train-only, then --lr 3e-5 --epochs 190 (227.75 nats).

Each prior trains in its own process (``--jobs``, one torch thread each), one epoch at a time through
``pyroib.train.train(..., resume=True)``, until ``--epochs`` or until the next epoch would overrun ``--minutes`` of
training wall time; rerunning with a larger budget continues the runs in ``--root`` where they stopped. Every
number is the run's own and is written with the command and the machine to the results file.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import harness

ANCHORS = {"standard": 228.70, "vamp": 227.35}  # nats, Exemplar VAE paper Table 1 (5,000 importance samples)
PRIOR_OPTIONS = {"standard": {}, "vamp": {"n_pseudo_inputs": 500}, "flow": {}}


def vamp_options(args: argparse.Namespace) -> dict:
    return {
        **({"init": args.prior_init} if args.prior_init else {}),
        **({"range_map": args.prior_range_map} if args.prior_range_map else {}),
    }


def run_one(prior: str, args: argparse.Namespace) -> dict:
    import pyro
    import torch

    from pyroib.checkpoint import load_checkpoint
    from pyroib.data import load_dataset
    from pyroib.evaluate import evaluate_run, importance_nll
    from pyroib.run import CHECKPOINT_FILE, RunSpec, load_run, resolve_device
    from pyroib.train import train

    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    out = Path(args.root) / prior
    spec = RunSpec(
        model="vae",
        model_config={
            "data_shape": [1, 28, 28],
            "latent_dim": 40,
            "hidden": [300, 300],
            **({"network": args.network} if args.network != "mlp" else {}),
        },
        dataset="fashion-mnist",
        binarize="dynamic",
        prior=prior,
        prior_options={**PRIOR_OPTIONS[prior], **(vamp_options(args) if prior == "vamp" else {})},
        epochs=1,
        batch_size=args.batch_size,
        lr=args.lr,
        grad_clip=args.grad_clip,
        seed=args.seed,
        device=args.device,
        init_from=args.init_from,
    )
    device = resolve_device(args.device)
    splits = load_dataset("fashion-mnist", binarize="dynamic", seed=args.seed, device=device)
    epoch = load_checkpoint(out / CHECKPOINT_FILE)["epoch"] if (out / CHECKPOINT_FILE).is_file() else 0
    started = time.perf_counter()
    last_epoch_seconds = 0.0
    while epoch < args.epochs and not args.evaluate_only:
        elapsed = time.perf_counter() - started
        if args.minutes > 0 and elapsed + last_epoch_seconds > 60 * args.minutes:
            break
        tick = time.perf_counter()
        rows = train(replace(spec, epochs=epoch + 1), out, resume=epoch > 0, progress=False, splits=splits)
        last_epoch_seconds = time.perf_counter() - tick
        epoch = rows[-1]["epoch"]
        print(f"[{prior}] epoch {epoch}: val ELBO {rows[-1]['val_elbo']:.2f} ({last_epoch_seconds:.0f} s)", flush=True)
    if args.train_only:
        return {}
    from pyroib.checkpoint import read_jsonl

    train_minutes = sum(row["seconds"] for row in read_jsonl(out / "metrics.jsonl")) / 60  # across resumed calls
    tick = time.perf_counter()
    saved = out / "benchmark.json"
    if args.evaluate_only and saved.is_file():
        previous = json.loads(saved.read_text())
        same = (
            previous.get("trained_epochs", previous["epoch"]),
            previous.get("iw_samples"),
            previous.get("checkpoint", "last"),
        ) == (epoch, args.iw_samples, args.checkpoint)
        if same:
            return previous
    run = load_run(out, device, args.checkpoint)
    result = evaluate_run(run, "test", iw_samples=0, seed=args.seed)
    # Importance sampling one small batch per call: small batches bound the VampPrior's (particles, batch, 500, 40)
    # log-density tensor. (The flow prior's memory growth of the recorded run, 15 GB after a few thousand points,
    # was a graph on the importance weights, fixed in pyroib.evaluate.importance_log_weights.)
    x, _ = load_dataset("fashion-mnist", binarize="dynamic", device=device).split("test")
    points = min(args.iw_points or len(x), len(x))
    torch.manual_seed(args.seed)
    parts = []
    for i in range(0, points, 25):
        parts.append(
            importance_nll(run.model, run.guide, x[i : min(i + 25, points)], samples=args.iw_samples, batch_size=25)
        )
        gc.collect()
    nll = torch.cat(parts)
    result.update(nll_iw=float(nll.mean()), iw_samples=args.iw_samples, iw_points=points)
    result = {k: v for k, v in result.items() if not isinstance(v, (list, dict))}
    result.update(
        prior=prior,
        trained_epochs=epoch,
        train_minutes=train_minutes,
        eval_minutes=(time.perf_counter() - tick) / 60,
        anchor=ANCHORS.get(prior),
        budget_stopped=epoch < args.epochs and args.minutes > 0,
    )
    saved.write_text(json.dumps(result, indent=2))
    print(f"[{prior}] test NLL {result['nll_iw']:.2f} nats (K = {args.iw_samples})", flush=True)
    return result


def write_results(results: list[dict], args: argparse.Namespace, command: str) -> str:
    lines = [
        f"# Fashion-MNIST test NLL by prior (VAE, 40-d latents, 300-300 {args.network} networks, dynamic binarisation)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, torch threads per "
        f"model {args.threads}, {args.jobs} models trained at once; Python {platform.python_version()}.",
        "",
        "Train minutes: the epochs' own wall time (training pass plus validation) from metrics.jsonl.",
        "",
        f"Training: batch {args.batch_size}, Adam lr {args.lr}, seed {args.seed}, no β warm-up, at most "
        f"{args.epochs} epochs"
        + (f" or {args.minutes:g} minutes of training wall time per model" if args.minutes > 0 else "")
        + f". Test NLL with K = {args.iw_samples} "
        "importance samples on the 10,000 test images (binarised once, seed 0)."
        + (
            f" Every run started from the weights of `{args.init_from}` (`pyroib train --init-from`; the "
            "VampPrior's pseudo-inputs are its own)."
            if args.init_from
            else ""
        )
        + (f" VampPrior options: {vamp_options(args)}." if vamp_options(args) else ""),
        "",
        "| prior | epochs | train min | test −ELBO | test NLL (IW) | anchor (paper) | gap to anchor | active units |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        anchor = "—" if r["anchor"] is None else f"{r['anchor']:.2f}"
        gap = "—" if r["anchor"] is None else f"{r['nll_iw'] - r['anchor']:+.2f}"
        stopped = " (budget)" if r["budget_stopped"] else ""
        trained = r.get("trained_epochs", r["epoch"])
        epochs = f"{trained}" + (f" (best: {r['epoch']})" if r["epoch"] != trained else "")
        lines.append(
            f"| {r['prior']} | {epochs}{stopped} | {r['train_minutes']:.1f} | {-r['elbo']:.2f} "
            f"| {r['nll_iw']:.2f} ({r.get('iw_points', r['n'])} points) | {anchor} | {gap} "
            f"| {r.get('active_units', '—')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--priors", default="standard,vamp,flow")
    p.add_argument("--minutes", type=float, default=20.0, help="training wall-time budget per model; 0 = none")
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--grad-clip",
        type=float,
        default=None,
        help="clip the per-data-point gradient norm (pyroib train --grad-clip); long gated runs need it",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=["best", "last"],
        help="evaluate the epoch with the best validation ELBO (early stopping) or the last one",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="start every prior's run from this run's weights (pyroib train --init-from), e.g. a trained "
        "standard-prior VAE; resumed runs keep their own",
    )
    p.add_argument(
        "--prior-init",
        default=None,
        choices=["data"],
        help="vamp: pseudo-inputs start at random training images (pyroib train --prior-init)",
    )
    p.add_argument(
        "--prior-range-map",
        default=None,
        choices=["sigmoid", "clamp"],
        help="vamp: sigmoid (default) or clamp map into [0, 1] (pyroib train --prior-range-map)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument(
        "--network",
        default="mlp",
        choices=["mlp", "gated"],
        help="hidden layers: softplus MLP, or gated as in the VampPrior code behind the anchors",
    )
    p.add_argument("--jobs", type=int, default=3, help="models trained at once, one process each")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model")
    p.add_argument("--iw-points", type=int, default=0, help="test points for the importance-sampled NLL; 0 = all")
    p.add_argument("--evaluate-only", action="store_true", help="evaluate the runs in --root as they stand")
    p.add_argument("--train-only", action="store_true", help="train, and leave evaluation and results for later")
    p.add_argument("--root", default="runs/benchmarks/priors_fashion")
    args = p.parse_args(argv)
    priors = [name for name in args.priors.split(",") if name]
    unknown = sorted(set(priors) - set(PRIOR_OPTIONS))
    if unknown:
        raise SystemExit(f"unknown prior(s) {', '.join(unknown)}; choose from {', '.join(PRIOR_OPTIONS)}")
    command = " ".join([".venv/bin/python", "benchmarks/priors_fashion.py", *(argv or sys.argv[1:])])
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(run_one, priors, [args] * len(priors)))
    if args.train_only:
        return
    text = write_results(results, args, command)
    harness.write_results(args, "priors_fashion.md", text)


if __name__ == "__main__":
    main()
