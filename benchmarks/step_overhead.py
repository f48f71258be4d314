"""Step overhead: a pyroib training step against a hand-written PyTorch step of the same networks and loss.

β-VAE (β = 4), 784-400-20 MLP, Bernoulli likelihood, batch 128, Adam, CPU. Both steps run in this one process,
interleaved in rounds so that machine load hits both alike; the ratio of medians is the figure
(target <= 1.10). Pyro validation is off for the pyroib step, as ``pyroib train`` has it.

    python benchmarks/step_overhead.py [--steps 200] [--rounds 5] [--threads 1] [--record]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import harness
import pyro
import pyro.distributions as dist
import torch

from pyroib.data import load_dataset
from pyroib.guides.vae import Guide
from pyroib.handlers import bottleneck
from pyroib.models.vae import Config, Model
from pyroib.objectives import InfoELBO

BETA = 4.0


def pyroib_step(model, guide, objective, optimizer, x, index, size):
    m, g = bottleneck(model, guide, BETA)
    terms = objective.terms(m, g, x, None, index=index, size=size, per_dimension=False)
    optimizer.zero_grad(set_to_none=True)
    terms.surrogate.backward()
    optimizer.step()
    return terms.loss


def manual_step(model, guide, optimizer, x, size):
    loc, scale = guide.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = dist.Bernoulli(logits=model.decoder(z)).to_event(3).log_prob(x)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    # Monte Carlo rate as in the pyroib step: log q(z|x) - log p(z) at the sampled z
    rate = (torch.distributions.Normal(loc, scale).log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(
        -1
    )
    del kl
    loss = size / x.shape[0] * (-(log_lik) + BETA * rate).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def main():
    p = harness.add_record_flag(argparse.ArgumentParser())
    p.add_argument("--steps", type=int, default=200, help="steps per round for each of the two")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    splits = load_dataset("fashion-mnist", binarize="static")
    size = splits.train.shape[0]
    config = Config(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,))
    torch.manual_seed(0)
    model, guide = Model(config), Guide(config)
    twin_model, twin_guide = Model(config), Guide(config)
    twin_model.load_state_dict(model.state_dict())
    twin_guide.load_state_dict(guide.state_dict())
    objective = InfoELBO()
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3)
    twin_opt = torch.optim.Adam([*twin_model.parameters(), *twin_guide.parameters()], lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(size, generator=gen)[:128] for _ in range(args.steps)]
    queues = {"pyroib": itertools.cycle(batches), "hand-written": itertools.cycle(batches)}

    def pyroib():
        index = next(queues["pyroib"])
        pyroib_step(model, guide, objective, opt, splits.train[index], index, size)

    def hand_written():
        manual_step(twin_model, twin_guide, twin_opt, splits.train[next(queues["hand-written"])], size)

    timings = harness.interleaved({"pyroib": pyroib, "hand-written": hand_written}, args.rounds, args.steps)
    ours, base = statistics.median(timings["pyroib"]), statistics.median(timings["hand-written"])
    per_round = [a / b for a, b in zip(timings["pyroib"], timings["hand-written"])]
    lines = [
        "# Step overhead",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {harness.machine(args.threads)}.",
        "",
        f"β-VAE β = {BETA}, 784-400-20 MLP, Bernoulli, batch 128, Adam, CPU, Pyro validation off; the two steps "
        f"alternate call by call, {args.rounds} rounds of {args.steps} steps each, the figure per round the median.",
        "",
        "| step | ms per step (median) | all rounds |",
        "|---|---|---|",
        f"| hand-written PyTorch | {base:.2f} | {', '.join(f'{t:.2f}' for t in timings['hand-written'])} |",
        f"| pyroib (bottleneck handlers + InfoELBO.terms) | {ours:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in timings['pyroib'])} |",
        "",
        f"**Ratio pyroib / hand-written: {ours / base:.3f}** (target <= 1.10); median of the per-round ratios "
        f"{statistics.median(per_round):.3f} (rounds: {', '.join(f'{r:.3f}' for r in per_round)}).",
        "",
    ]
    text = "\n".join(lines)
    harness.write_results(args, "step_overhead.md", text)


if __name__ == "__main__":
    main()
