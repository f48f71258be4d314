"""Step overhead: a pyroib training step against a hand-written PyTorch step of the same networks and loss, and
where the difference goes.

β-VAE (β = 4), 784-400-20 MLP, Bernoulli likelihood, Adam, CPU, at each ``--batch-sizes``. All timed calls run in
this one process, interleaved call by call in rounds so that machine load hits them alike; the ratio of medians is
the figure (target <= 1.10 at batch 128). Pyro validation is off for the pyroib step, as ``pyroib train`` has it.
Both steps use the same optimiser (fused Adam, as pyroib trains), so the ratio is the cost of pyroib's machinery.
The anatomy times forward passes alone (no gradient step): the hand-written forward, Pyro's traces of guide and
model with their log densities (``get_importance_trace``, which every Pyro ELBO runs), and pyroib's
``InfoELBO.terms`` under the bottleneck handlers (the traces plus the term split); the differences are what the
Pyro trace and the term split add per step.

    python benchmarks/step_overhead.py [--batch-sizes 32,128,512] [--steps 100] [--rounds 12] [--record]
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import harness
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.enum import get_importance_trace

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


def manual_forward(model, guide, x, size):
    loc, scale = guide.encoder(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = dist.Bernoulli(logits=model.decoder(z)).to_event(3).log_prob(x)
    rate = (torch.distributions.Normal(loc, scale).log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(
        -1
    )
    return size / x.shape[0] * (-(log_lik) + BETA * rate).sum()


def measure(batch_size: int, splits, args) -> dict[str, list[float]]:
    size = splits.train.shape[0]
    config = Config(data_shape=(1, 28, 28), latent_dim=20, hidden=(400,))
    torch.manual_seed(0)
    model, guide = Model(config), Guide(config)
    twin_model, twin_guide = Model(config), Guide(config)
    twin_model.load_state_dict(model.state_dict())
    twin_guide.load_state_dict(guide.state_dict())
    objective = InfoELBO()
    opt = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=1e-3, fused=True)
    twin_opt = torch.optim.Adam([*twin_model.parameters(), *twin_guide.parameters()], lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(size, generator=gen)[:batch_size] for _ in range(args.steps)]
    queue = itertools.cycle(batches)

    def pyroib():
        index = next(queue)
        pyroib_step(model, guide, objective, opt, splits.train[index], index, size)

    def hand_written():
        manual_step(twin_model, twin_guide, twin_opt, splits.train[next(queue)], size)

    def hand_forward():
        manual_forward(twin_model, twin_guide, splits.train[next(queue)], size)

    def pyro_traces():
        index = next(queue)
        m, g = bottleneck(model, guide, BETA)
        get_importance_trace("flat", 1, m, g, (splits.train[index], None), {"index": index, "size": size})

    def pyroib_terms():
        index = next(queue)
        m, g = bottleneck(model, guide, BETA)
        objective.terms(m, g, splits.train[index], None, index=index, size=size, per_dimension=False)

    steps = {"pyroib": pyroib, "hand-written": hand_written}
    timings = harness.interleaved(steps, args.rounds, args.steps)
    with torch.no_grad():
        forwards = {"hand forward": hand_forward, "Pyro traces": pyro_traces, "pyroib terms": pyroib_terms}
        timings.update(harness.interleaved(forwards, args.rounds, args.steps))
    return timings


def main():
    p = harness.add_record_flag(argparse.ArgumentParser())
    p.add_argument("--batch-sizes", default="32,128,512")
    p.add_argument("--steps", type=int, default=100, help="calls per round for each timed call")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    splits = load_dataset("fashion-mnist", binarize="static")
    lines = [
        "# Step overhead",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {harness.machine(args.threads)}.",
        "",
        f"β-VAE β = {BETA}, 784-400-20 MLP, Bernoulli, fused Adam for both steps, CPU, Pyro validation off; the "
        f"timed calls alternate call by call, {args.rounds} rounds of {args.steps} calls each, the figure per round "
        "the median; milliseconds per call (median over rounds).",
        "",
        "| batch | hand-written step | pyroib step | ratio | hand forward | Pyro traces | pyroib terms | "
        "Pyro trace cost | term split cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        timings = measure(batch_size, splits, args)
        median = {k: statistics.median(v) for k, v in timings.items()}
        ratios[batch_size] = median["pyroib"] / median["hand-written"]
        lines.append(
            f"| {batch_size} | {median['hand-written']:.3f} | {median['pyroib']:.3f} | **{ratios[batch_size]:.3f}** | "
            f"{median['hand forward']:.3f} | {median['Pyro traces']:.3f} | {median['pyroib terms']:.3f} | "
            f"{median['Pyro traces'] - median['hand forward']:.3f} | "
            f"{median['pyroib terms'] - median['Pyro traces']:.3f} |"
        )
    lines += [
        "",
        "Pyro trace cost: Pyro's traces of guide and model with their log densities, less the hand-written forward "
        "pass. Term split cost: pyroib's InfoELBO.terms (distortion, rate per site, the values logged), less the "
        "traces it runs. The rest of the step's difference is the backward pass through the larger graph.",
        "",
    ]
    if 128 in ratios:
        verdict = "met" if ratios[128] <= 1.10 else "not met"
        lines.append(f"**Ratio pyroib / hand-written at batch 128: {ratios[128]:.3f}** (target <= 1.10: {verdict}).")
        lines.append("")
    text = "\n".join(lines)
    harness.write_results(args, "step_overhead.md", text)


if __name__ == "__main__":
    main()
