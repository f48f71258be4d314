"""What DiagonalNormalMixture saves a VampPrior, against torch's broadcast MixtureSameFamily, in one process.

Two timings, each interleaved in rounds so machine load hits both forms alike, reported as the ratio of medians:

* a training step of the Fashion-MNIST VampPrior VAE (gated 784-300-300-40 networks, 500 pseudo-inputs, batch 100,
  Adam, Pyro validation off as ``pyroib train`` runs), on random binary images;
* one importance-sampling pass of ``pyroib.evaluate.importance_log_weights`` (250 particles x 25 points), the unit
  of the K = 5,000 test NLL (8,000 such passes for 10,000 test points).

It also records the largest difference between the two forms' log weights on that pass (float32 inputs; the
broadcast form rounds in float32, DiagonalNormalMixture computes its quadratic forms in float64).

    python benchmarks/mixture_log_prob.py [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import harness
import pyro
import pyro.distributions as dist
import torch

from pyroib.evaluate import importance_log_weights
from pyroib.guides.vae import Guide
from pyroib.handlers import bottleneck
from pyroib.models.vae import Config, Model
from pyroib.objectives import InfoELBO
from pyroib.priors import VampPrior


class BroadcastVampPrior(VampPrior):
    """The same prior scored the textbook way: every point against every component, (n, K, D) at once."""

    def forward(self, batch_size: int):
        loc, scale = self.encoder(self.pseudo_inputs)
        uniform = dist.Categorical(logits=loc.new_zeros(self.n_pseudo_inputs))
        return dist.MixtureSameFamily(uniform, dist.Normal(loc, scale).to_event(1)).expand([batch_size])


def build(prior_class, seed=0):
    torch.manual_seed(seed)
    config = Config(data_shape=(1, 28, 28), latent_dim=40, hidden=(300, 300), network="gated")
    guide = Guide(config)
    prior = prior_class(guide.encode, (1, 28, 28), n_pseudo_inputs=500)
    return Model(config, prior=prior), guide


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def main():
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    x = torch.bernoulli(torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(1)))
    index = torch.arange(100)
    forms = {"broadcast": build(BroadcastVampPrior), "matrix product": build(VampPrior)}
    objective = InfoELBO()

    def train_step(model, guide, optimizer):
        def step():
            m, g = bottleneck(model, guide, 1.0)
            terms = objective.terms(m, g, x, None, index=index, size=50_000, per_dimension=False)
            optimizer.zero_grad(set_to_none=True)
            terms.surrogate.backward()
            optimizer.step()

        return step

    steps = {
        name: train_step(m, g, torch.optim.Adam([*m.parameters(), *g.parameters()], lr=1e-4))
        for name, (m, g) in forms.items()
    }
    passes = {
        name: (lambda m=m, g=g: importance_log_weights(m.eval(), g.eval(), x[:25], None, 250))
        for name, (m, g) in forms.items()
    }
    step_times = {name: [] for name in forms}
    pass_times = {name: [] for name in forms}
    for _ in range(args.rounds):
        for name in forms:
            step_times[name].append(median_seconds(steps[name], 10))
            pass_times[name].append(median_seconds(passes[name], 2))
    # both models start from the same seed, so after the same number of identical steps their weights agree to
    # float32 rounding; compare the log weights on fresh copies instead, untouched by training
    fresh = {name: build(cls) for name, cls in (("broadcast", BroadcastVampPrior), ("matrix product", VampPrior))}
    torch.manual_seed(2)
    broadcast = importance_log_weights(*(m.eval() for m in fresh["broadcast"]), x[:25], None, 250)
    torch.manual_seed(2)
    product = importance_log_weights(*(m.eval() for m in fresh["matrix product"]), x[:25], None, 250)
    difference = float((broadcast - product).abs().max())

    def med(values):
        return statistics.median(values)

    step_ratio = med(step_times["broadcast"]) / med(step_times["matrix product"])
    pass_ratio = med(pass_times["broadcast"]) / med(pass_times["matrix product"])
    lines = [
        "# VampPrior log density: matrix product (DiagonalNormalMixture) against the broadcast mixture",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work, {args.threads} "
        f"torch thread(s); Python {platform.python_version()}, torch {torch.__version__}. Medians over "
        f"{args.rounds} interleaved rounds.",
        "",
        "| unit | broadcast (ms) | matrix product (ms) | speed-up |",
        "|---|---|---|---|",
        f"| training step, batch 100, 500 pseudo-inputs | {1e3 * med(step_times['broadcast']):.1f} | "
        f"{1e3 * med(step_times['matrix product']):.1f} | {step_ratio:.2f}x |",
        f"| importance pass, 250 particles x 25 points | {1e3 * med(pass_times['broadcast']):.0f} | "
        f"{1e3 * med(pass_times['matrix product']):.0f} | {pass_ratio:.2f}x |",
        "",
        f"Largest difference between the two forms' log importance weights on one pass: {difference:.2e} nats.",
        "",
    ]
    text = "\n".join(lines)
    harness.write_results(args, "mixture_log_prob.md", text)


if __name__ == "__main__":
    main()
