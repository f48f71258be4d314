"""Step overhead: a pyroib training step against a hand-written PyTorch step of the same networks and loss.

β-VAE (β = 4), 784-400-20 MLP, Bernoulli likelihood, batch 128, Adam, CPU. Both steps run in this one process,
interleaved in rounds so that machine load hits both alike; the ratio of medians is the figure
(target <= 1.10). Pyro validation is off for the pyroib step, as ``pyroib train`` has it.

    python benchmarks/step_overhead.py [--steps 200] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

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
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--record", default=str(Path(__file__).parent / "results" / "step_overhead.md"))
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
    timings = {"pyroib": [], "hand-written": []}
    for round_ in range(args.rounds):
        # alternate which step goes first, so a drift in machine load does not favour one of them
        for name in ("pyroib", "hand-written") if round_ % 2 == 0 else ("hand-written", "pyroib"):
            start = time.perf_counter()
            for index in batches:
                x = splits.train[index]
                if name == "pyroib":
                    pyroib_step(model, guide, objective, opt, x, index, size)
                else:
                    manual_step(twin_model, twin_guide, twin_opt, x, size)
            timings[name].append((time.perf_counter() - start) / args.steps * 1e3)
    ours, base = statistics.median(timings["pyroib"]), statistics.median(timings["hand-written"])
    ratio = ours / base
    per_round = [a / b for a, b in zip(timings["pyroib"], timings["hand-written"])]
    lines = [
        "# Step overhead (issue 2)",
        "",
        f"Command: `python benchmarks/step_overhead.py --steps {args.steps} --rounds {args.rounds} "
        f"--threads {args.threads}`",
        "",
        f"β-VAE β = {BETA}, 784-400-20 MLP, Bernoulli, batch 128, Adam, CPU, {args.threads} torch thread(s), "
        "Pyro validation off; medians over interleaved rounds in one process.",
        "",
        "| step | ms per step (median) | all rounds |",
        "|---|---|---|",
        f"| hand-written PyTorch | {base:.2f} | {', '.join(f'{t:.2f}' for t in timings['hand-written'])} |",
        f"| pyroib (bottleneck handlers + InfoELBO.terms) | {ours:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in timings['pyroib'])} |",
        "",
        f"**Ratio pyroib / hand-written: {ratio:.3f}** (target <= 1.10); median of the per-round ratios "
        f"{statistics.median(per_round):.3f} (rounds: {', '.join(f'{r:.3f}' for r in per_round)}).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(args.record).write_text(text)


if __name__ == "__main__":
    main()
