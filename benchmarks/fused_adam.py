"""Epoch wall time of ``pyroib.train`` with fused Adam against the single-tensor Adam, in one process.

Fashion-MNIST, the VAE (784-400-20 MLP, Bernoulli), batch 128, one torch thread, Pyro validation off as ``pyroib
train`` runs. Each round trains a fresh 2-epoch run with each optimiser, the order alternating between rounds; the
figure is the ratio of the median seconds per epoch (training pass and validation, from ``metrics.jsonl``).

    python benchmarks/fused_adam.py [--rounds 3] [--epochs 2] [--record]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import harness
import pyro
import torch

import pyroib.train as training
from pyroib.data import load_dataset
from pyroib.run import RunSpec


def main() -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    splits = load_dataset("fashion-mnist", binarize="dynamic")
    spec = RunSpec(
        model="vae",
        dataset="fashion-mnist",
        epochs=args.epochs,
        batch_size=args.batch_size,
        model_config={"latent_dim": 20, "hidden": [400]},
        device="cpu",
    )
    seconds = {"fused": [], "single-tensor": []}
    work = Path(tempfile.mkdtemp(prefix="pyroib-fused-adam-"))
    for round_ in range(args.rounds):
        order = ["fused", "single-tensor"] if round_ % 2 == 0 else ["single-tensor", "fused"]
        for name in order:
            training.FUSED_ADAM_DEVICES = ("cpu",) if name == "fused" else ()
            rows = training.train(spec, work / f"{name}-{round_}", progress=False, splits=splits)
            seconds[name].append(statistics.median(r["seconds"] for r in rows))
    fused, single = statistics.median(seconds["fused"]), statistics.median(seconds["single-tensor"])
    lines = [
        "# Fused Adam in pyroib's training loop",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {harness.machine(1)}.",
        "",
        f"Fashion-MNIST VAE 784-400-20, batch {args.batch_size}, {args.epochs}-epoch runs, {args.rounds} rounds "
        "alternating the order; seconds per epoch (training pass plus validation).",
        "",
        "| Adam | median s / epoch | all runs |",
        "|---|---|---|",
        *[f"| {k} | {statistics.median(v):.2f} | {', '.join(f'{s:.2f}' for s in v)} |" for k, v in seconds.items()],
        "",
        f"**Epoch time fused / single-tensor: {fused / single:.3f}.**",
        "",
    ]
    text = "\n".join(lines)
    harness.write_results(args, "fused_adam.md", text)


if __name__ == "__main__":
    main()
