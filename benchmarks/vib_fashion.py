"""Deep VIB on Fashion-MNIST: test error across β against the same network trained deterministically.

VIB (Alemi et al. 2016): encoder MLP (ReLU) -> q(z|x) = N(μ(x), σ(x)²) with K latents -> linear softmax classifier,
loss = cross-entropy + β · rate, one run per β through ``pyroib.sweep`` (each a normal run directory). The
baseline is the same encoder and classifier with z = μ(x) (no noise, no rate), from the same initial weights, trained
on the same batches in the same order with the same optimiser (Adam), learning rate, batch size and epochs.
Grey-level images (``--binarize none``), 55,000 training and 10,000 test images. Test numbers use 12 draws of z per
image (Alemi et al.'s count).

Writes ``benchmarks/results/vib_fashion.md`` (table and command) and ``benchmarks/results/vib_fashion_plane.png`` (the
information plane and test error against β). The run directories go to ``--work-dir`` (not the repository).

    python benchmarks/vib_fashion.py [--epochs 5] [--hidden 512,512] [--latent-dim 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import harness
import pyro
import torch
from torch.nn import functional as F

from pyroib.data import BatchIterator, load_dataset
from pyroib.guides.vib import ReluGaussianEncoder
from pyroib.models.vib import Config, Model
from pyroib.run import RunSpec
from pyroib.sweep import plot_sweep, run_sweep


def train_deterministic(splits, args) -> dict:
    """The VIB network with z = μ(x): cross-entropy only, same optimiser, batches and epochs as the sweep's runs."""
    torch.manual_seed(args.seed)
    config = Config(
        data_shape=splits.data_shape, latent_dim=args.latent_dim, hidden=args.hidden, n_classes=splits.n_classes
    )
    encoder = ReluGaussianEncoder(config.data_shape, config.hidden, config.latent_dim)
    classifier = Model(config).classifier
    parameters = [*encoder.parameters(), *classifier.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=args.lr)
    batches = BatchIterator(splits, args.batch_size, torch.Generator().manual_seed(args.seed))
    started = time.perf_counter()
    for _ in range(args.epochs):
        for x, y, _index in batches:
            loss = F.cross_entropy(classifier(encoder(x)[0]), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - started
    x, y = splits.split("test")
    with torch.no_grad():
        logits = torch.cat([classifier(encoder(x[i : i + 1000])[0]) for i in range(0, x.shape[0], 1000)])
    return {
        "accuracy": float((logits.argmax(-1) == y).float().mean()),
        "predictive_nll": float(F.cross_entropy(logits, y)),
        "seconds": seconds,
    }


def _fmt(value, digits=4):
    return "" if value is None else f"{value:.{digits}g}"


def results_text(rows, baseline, args, command, wall_seconds) -> str:
    lines = [
        "# Deep VIB on Fashion-MNIST: test error against β",
        "",
        f"Command: `{command}`",
        "",
        f"CPU, {args.threads} torch thread(s), on a 2-core machine shared with other jobs; "
        f"{wall_seconds / 60:.1f} minutes in all.",
        "",
        f"Settings: grey-level Fashion-MNIST (55,000 train, 10,000 test), encoder 784-{'-'.join(map(str, args.hidden))}"
        f" (ReLU), K = {args.latent_dim} latents, linear softmax classifier, Adam lr {args.lr}, batch "
        f"{args.batch_size}, {args.epochs} epochs, seed {args.seed}, standard normal prior. Test numbers average "
        "the predictive over 12 draws of z. Nats per test image; the I(X;Z) bound is the rate E KL(q(z|x) || p(z)), "
        "the I(Z;Y) bound is H(Y) − cross-entropy.",
        "",
        "| model | β | test error (%) | predictive NLL | cross-entropy | I(X;Z) ≤ | I(Z;Y) ≥ | train s |",
        "|---|---|---|---|---|---|---|---|",
        f"| deterministic MLP | – | {100 * (1 - baseline['accuracy']):.2f} | {_fmt(baseline['predictive_nll'])} "
        f"| – | – | – | {baseline['seconds']:.0f} |",
    ]
    for r in rows:
        if "accuracy" not in r:
            lines.append(f"| VIB | {r['beta']:.0e} | {r['status']} | | | | | |")
            continue
        lines.append(
            f"| VIB | {r['beta']:.0e} | {100 * (1 - r['accuracy']):.2f} | {_fmt(r['predictive_nll'])} | "
            f"{_fmt(r['cross_entropy'])} | {_fmt(r['i_xz_upper'])} | {_fmt(r['i_zy_lower'])} | "
            f"{r.get('train_seconds', float('nan')):.0f} |"
        )
    h_y = next((r["h_y"] for r in rows if "h_y" in r), math.log(10))
    error = 1 - baseline["accuracy"]
    standard_error = 100 * math.sqrt(error * (1 - error) / 10_000)
    done = [r for r in rows if "accuracy" in r]
    lines += ["", f"H(Y) of the test labels = {h_y:.4f} nats (ten balanced classes: log 10)."]
    if done:
        best = max(done, key=lambda r: r["accuracy"])
        lines += [
            "",
            f"Lowest VIB test error: {100 * (1 - best['accuracy']):.2f}% at β = {best['beta']:.0e}, against "
            f"{100 * error:.2f}% for the deterministic network. One seed: a test error near {100 * error:.0f}% "
            f"on 10,000 images has a binomial standard error of {standard_error:.2f} points, so smaller "
            "differences are noise. Alemi et al.'s gain over a deterministic MLP (MNIST, about 1.13% error at "
            "β = 1e-3 with a 2 x 1024 encoder) was measured after far longer training; five epochs show "
            "the trade-off, not that regime.",
        ]
        low, high = min(done, key=lambda r: r["beta"]), max(done, key=lambda r: r["beta"])
        lines += [
            "",
            f"From β = {low['beta']:.0e} to {high['beta']:.0e} the I(X;Z) bound falls from "
            f"{low['i_xz_upper']:.4g} to {high['i_xz_upper']:.4g} nats and the I(Z;Y) bound from "
            f"{low['i_zy_lower']:.4g} to {high['i_zy_lower']:.4g} nats.",
        ]
    lines += ["", "![information plane](vib_fashion_plane.png)", ""]
    return "\n".join(lines)


def main():
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--hidden", default="512,512", help="encoder layer sizes (Alemi et al.: 1024,1024)")
    p.add_argument("--latent-dim", type=int, default=256)
    p.add_argument("--betas", default="1e-4,1e-3,1e-2,1e-1")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    # one thread: on a shared 2-core machine a second intra-op thread spins against other jobs and runs slower
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=None, help="where the run directories go (default: a new temp folder)")
    args = p.parse_args()
    args.hidden = tuple(int(h) for h in args.hidden.split(","))
    betas = [float(b) for b in args.betas.split(",")]
    command = harness.command()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    started = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="pyroib-vib-fashion-"))

    splits = load_dataset("fashion-mnist", binarize="none")
    baseline = train_deterministic(splits, args)
    print(
        f"deterministic: test error {100 * (1 - baseline['accuracy']):.2f}% ({baseline['seconds']:.0f} s)", flush=True
    )
    spec = RunSpec(
        model="vib",
        dataset="fashion-mnist",
        binarize="none",
        epochs=args.epochs,
        model_config={"hidden": list(args.hidden), "latent_dim": args.latent_dim},
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device="cpu",
    )
    try:
        rows = run_sweep(spec, betas, work, progress=False)
    except RuntimeError as error:  # some runs failed: the table says which; record the others
        print(error, file=sys.stderr)
        import csv

        with open(work / "sweep.csv", newline="") as f:
            rows = [
                {k: (float(v) if k not in ("status", "run") and v else v) for k, v in r.items()}
                for r in csv.DictReader(f)
            ]
    from pyroib.checkpoint import read_jsonl

    for r in rows:
        metrics = work / r["run"] / "metrics.jsonl"
        if metrics.is_file():
            r["train_seconds"] = sum(row["seconds"] for row in read_jsonl(metrics))
    plot_sweep(
        rows,
        harness.results_path(args, "vib_fashion_plane.png"),
        title=f"Deep VIB, Fashion-MNIST test split ({args.epochs} epochs, K = {args.latent_dim}); "
        f"deterministic MLP: {100 * (1 - baseline['accuracy']):.2f}% error",
    )
    text = results_text(rows, baseline, args, command, time.perf_counter() - started)
    harness.write_results(args, "vib_fashion.md", text)
    print(f"runs in {work}")


if __name__ == "__main__":
    main()
