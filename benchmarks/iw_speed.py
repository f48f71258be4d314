"""Speed of the importance-weighted NLL (``pyroib evaluate --iw-samples K``) against the network's FLOP bound.

The Fashion-MNIST VAE (784-400-20 softplus MLPs, Bernoulli likelihood), trained for ``--epochs`` (its logits then
have realistic sizes; random weights make the likelihood's exponentials underflow and slow), one torch thread. Each
importance sample costs one decoder evaluation, so the figure is microseconds per decoder evaluation for
``importance_nll`` on ``--points`` test images with ``--samples`` K, in interleaved rounds for the pass sizes
compared. The FLOP bound is the decoder's multiply-adds, 2 (20·400 + 400·784) FLOPs per evaluation, at the best
throughput measured for its two matrix products on this CPU (the encoder runs once per pass, for the pass's 100
points: about 5% of the multiply-adds of a default pass of 2,048 rows, left out of the bound). The breakdown times
the decoder's pieces on a pass of the default size.

    python benchmarks/iw_speed.py [--points 200] [--samples 5000] [--rounds 2] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import harness
import pyro
import torch
from torch.nn import functional as F

from pyroib.data import load_dataset
from pyroib.evaluate import ROWS_PER_PASS, importance_nll
from pyroib.run import RunSpec, load_run
from pyroib.train import train

FLOPS = 2 * (20 * 400 + 400 * 784)


def per_row_microseconds(function, rows: int, repeats: int) -> float:
    for _ in range(2):
        function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats / rows * 1e6


def main() -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    folder = Path(tempfile.mkdtemp(prefix="pyroib-iw-speed-"))
    spec = RunSpec(model="vae", dataset="fashion-mnist", binarize="static", epochs=args.epochs, device="cpu")
    train(spec, folder / "run", progress=False)
    run = load_run(folder / "run")
    x = load_dataset("fashion-mnist", binarize="static").split("test")[0][: args.points]
    settings = {
        "100 points x 250 particles a pass (25,000 rows; before)": {"batch_size": 100, "particles_per_pass": 250},
        f"100 points x {ROWS_PER_PASS['cpu'] // 100} particles a pass (default)": {"batch_size": 100},
    }
    seconds = {name: [] for name in settings}
    nll = {}
    for round_ in range(args.rounds):
        for name in list(settings) if round_ % 2 == 0 else list(settings)[::-1]:
            torch.manual_seed(round_)
            started = time.perf_counter()
            nll[name] = float(importance_nll(run.model, run.guide, x, samples=args.samples, **settings[name]).mean())
            seconds[name].append(time.perf_counter() - started)
    evaluations = args.points * args.samples

    decoder = run.model.decoder
    first, second = _linears(decoder)
    throughput = {}
    for rows in (1000, 2000, 4000, 25000):
        z = torch.randn(rows, 20)
        with torch.no_grad():
            h = F.softplus(first(z))
            micro = per_row_microseconds(lambda: (first(z), second(h)), rows, max(3, 100_000 // rows))
        throughput[rows] = FLOPS / micro / 1e3  # GFLOP/s
    peak = max(throughput.values())
    bound = FLOPS / peak / 1e3  # µs per evaluation
    rows = ROWS_PER_PASS["cpu"]
    z = torch.randn(rows, 20)
    with torch.no_grad():
        pre = first(z)
        h = F.softplus(pre)
        logits = second(h)
        target = x[:1].reshape(1, -1).expand(rows, -1)
        pieces = {
            "two matrix products": per_row_microseconds(lambda: (first(z), second(h)), rows, 50),
            "hidden softplus (400)": per_row_microseconds(lambda: F.softplus(pre), rows, 50),
            "Bernoulli log-density (784, as torch computes it)": per_row_microseconds(
                lambda: F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1), rows, 50
            ),
        }
    lines = [
        "# Importance-weighted NLL: speed against the FLOP bound",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {harness.machine(1)}.",
        "",
        f"Fashion-MNIST VAE 784-400-20 trained {args.epochs} epochs, {args.points} test images, K = {args.samples} "
        f"importance samples, {args.rounds} interleaved rounds; µs per decoder evaluation (median).",
        "",
        "| pass | µs / evaluation | rounds | mean NLL (nats) | 10,000 x 5,000 at this speed |",
        "|---|---|---|---|---|",
    ]
    for name, values in seconds.items():
        micro = statistics.median(values) / evaluations * 1e6
        lines.append(
            f"| {name} | {micro:.2f} | {', '.join(f'{v:.1f} s' for v in values)} | {nll[name]:.2f} | "
            f"{micro * 5e7 / 1e6 / 60:.1f} min |"
        )
    default = statistics.median(seconds[list(settings)[1]]) / evaluations * 1e6
    lines += [
        "",
        "Matrix-product throughput on the decoder's shapes: "
        + ", ".join(f"{r:,} rows {g:.0f} GFLOP/s" for r, g in throughput.items())
        + f"; FLOP bound {bound:.2f} µs per evaluation ({FLOPS:,} FLOPs at {peak:.0f} GFLOP/s).",
        "",
        f"**Default pass: {default / bound:.2f} times the FLOP bound** (target <= 1.5: "
        f"{'met' if default / bound <= 1.5 else 'not met'}).",
        "",
        f"Where a default pass ({rows:,} rows) spends its time, µs per row:",
        "",
        "| piece | µs / row |",
        "|---|---|",
        *[f"| {k} | {v:.2f} |" for k, v in pieces.items()],
        "",
    ]
    harness.write_results(args, "iw_speed.md", "\n".join(lines))


def _linears(decoder):
    layers = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    if len(layers) != 2:
        raise SystemExit(f"expected the 20-400-784 decoder's two linear layers, found {len(layers)}")
    return layers


if __name__ == "__main__":
    main()
