"""Added cost of the β-TCVAE total-correlation term per training step, as a ratio to the plain β-VAE step.

Fashion-MNIST, 784-400-D MLP (D = 10 latents), Bernoulli likelihood, batch 256, Adam, CPU, Pyro validation off (as
``pyroib train`` runs). The β-VAE step is InfoELBO under β = 4; the β-TCVAE step is TotalCorrelationELBO (α = γ = 1,
TC weight 6, minibatch stratified sampling) on twin networks. Both run in this one process, interleaved in rounds
so machine load hits both alike; the figure is the ratio of the median times (target <= 1.25).

    python benchmarks/tc_overhead.py [--steps 40] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import harness
import pyro
import torch

from pyroib.data import load_dataset
from pyroib.guides.vae import Guide
from pyroib.handlers import bottleneck
from pyroib.models.vae import Config, Model
from pyroib.objectives import InfoELBO, TotalCorrelationELBO


def make_step(model, guide, objective, beta):
    optimizer = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)

    def step(x, index, size):
        m, g = bottleneck(model, guide, beta)
        terms = objective.terms(m, g, x, None, index=index, size=size, per_dimension=False)
        optimizer.zero_grad(set_to_none=True)
        terms.surrogate.backward()
        optimizer.step()

    return step


def main():
    p = harness.add_record_flag(argparse.ArgumentParser())
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    splits = load_dataset("fashion-mnist", binarize="static")
    size = splits.train.shape[0]
    config = Config(data_shape=(1, 28, 28), latent_dim=args.latent_dim, hidden=(400,))
    torch.manual_seed(0)
    nets = {}
    for name in ("β-VAE", "β-TCVAE"):
        model, guide = Model(config), Guide(config)
        if nets:
            first_model, first_guide = next(iter(nets.values()))
            model.load_state_dict(first_model.state_dict())
            guide.load_state_dict(first_guide.state_dict())
        nets[name] = (model, guide)
    steps = {
        "β-VAE": make_step(*nets["β-VAE"], InfoELBO(), beta=4.0),
        "β-TCVAE": make_step(*nets["β-TCVAE"], TotalCorrelationELBO(tc_weight=6.0), beta=1.0),
    }
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(size, generator=gen)[: args.batch_size] for _ in range(args.steps)]
    for name, step in steps.items():  # warm-up: first-call costs (allocator, plate nesting guess)
        for index in batches[:3]:
            step(splits.train[index], index, size)
    queue = itertools.cycle(batches)
    current = {}

    def next_batch():
        index = next(queue)
        current.update(x=splits.train[index], index=index)

    # the two steps alternate call by call on the same batch (the batch is drawn by a third, untimed entry)
    calls = {
        "batch": next_batch,
        **{name: (lambda step=step: step(current["x"], current["index"], size)) for name, step in steps.items()},
    }
    timings = harness.interleaved(calls, args.rounds, args.steps)
    del timings["batch"]
    medians = {name: statistics.median(t) for name, t in timings.items()}
    ratio = medians["β-TCVAE"] / medians["β-VAE"]
    round_ratios = [b / a for a, b in zip(timings["β-VAE"], timings["β-TCVAE"])]
    lines = [
        "# Total-correlation term: cost per training step",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {harness.machine(args.threads)}.",
        "",
        f"Fashion-MNIST, 784-400-{args.latent_dim} MLP, batch {args.batch_size}, Adam, validation off; "
        f"{args.rounds} rounds of {args.steps} steps, the two steps alternating one by one; per round the median "
        "ms per step.",
        "",
        "| step | median ms | all rounds (ms) |",
        "|---|---|---|",
    ]
    for name, t in timings.items():
        lines.append(f"| {name} | {medians[name]:.2f} | {', '.join(f'{v:.1f}' for v in t)} |")
    lines += [
        "",
        f"Ratio β-TCVAE / β-VAE of the medians: **{ratio:.3f}** (target <= 1.25); per round: "
        f"{', '.join(f'{r:.2f}' for r in round_ratios)}. The TC term adds one (B, B, D) tensor "
        "of pairwise Gaussian log densities and two log-sum-exps over it: O(B² D) against the network's "
        "O(B · 784 · 400).",
        "",
    ]
    harness.write_results(args, "tc_overhead.md", "\n".join(lines))


if __name__ == "__main__":
    main()
