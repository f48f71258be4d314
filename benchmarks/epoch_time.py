"""Wall time of whole training runs: pyroib against the loop a user writes by hand and against pythae's pipeline.

Fashion-MNIST (statically binarised, 55,000 training and 5,000 validation images), the 784-400-20 softplus MLP
encoder and decoder, Bernoulli likelihood, Adam at 1e-3, one torch thread, on the CPU. A run is timed from the call
to its end, set-up included: reading the data set, building the networks, every epoch's training and validation
pass, and a checkpoint per epoch; the libraries are imported before the timing starts. The contenders:

* ``pyroib``: ``pyroib.train.train`` as ``pyroib train`` runs it (``--binarize static``; the decoded data set
  comes from its on-disk cache).
* ``hand-written``: the PyTorch loop a user writes (data decoded from the gzip files with numpy, a random
  permutation per epoch, ``torch.optim.Adam`` with its defaults, the analytic KL, a no-grad validation pass and a
  ``torch.save`` of networks and optimiser per epoch). VAE only.
* ``pythae``: pythae 0.1.2's ``TrainingPipeline`` with the same networks as pythae encoder/decoder modules and the
  same data (an optional dependency: ``pip install pythae==0.1.2``); its VAE and its β-TCVAE (α = 1, β = 6, γ = 1,
  minibatch stratified sampling, as pyroib's ``beta-tcvae`` defaults).

Units (model, batch size, epochs, round, contender) run in interleaved rounds, the order of the contenders reversed
every other round, and each unit's time is stored under ``--out``, so an interrupted slice (``--minutes``) resumes
with the same command. The figure is the ratio of median wall times in the same rounds.

    python benchmarks/epoch_time.py [--batch-sizes 32,128,512] [--epochs 3,20] [--rounds 2] [--minutes M] [--record]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
LATENT, HIDDEN, LR, VAL = 20, 400, 1e-3, 5000
TC = {"alpha": 1.0, "beta": 6.0, "gamma": 1.0}


def networks() -> tuple[nn.Module, nn.Module]:
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 2 * LATENT))
    decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 784))
    return encoder, decoder


def read_fashion_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) as a user reads them: the gzip files decoded with numpy, binarised once."""
    from pyroib.data import fashion_mnist_dirs

    folder = next(d for d in fashion_mnist_dirs() if (d / "train-images-idx3-ubyte.gz").is_file())
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    images = torch.bernoulli(images, generator=torch.Generator().manual_seed(0))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order[VAL:]], images[order[:VAL]]


def negative_elbo(encoder, decoder, x: torch.Tensor) -> torch.Tensor:
    loc, log_var = encoder(x).chunk(2, dim=-1)
    z = loc + torch.randn_like(loc) * (0.5 * log_var).exp()
    distortion = F.binary_cross_entropy_with_logits(decoder(z), x.flatten(1), reduction="none").sum(-1)
    rate = 0.5 * (loc.pow(2) + log_var.exp() - 1 - log_var).sum(-1)
    return (distortion + rate).mean()


def hand_written(batch_size: int, epochs: int, out: Path) -> None:
    train, val = read_fashion_mnist()
    torch.manual_seed(0)
    encoder, decoder = networks()
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR)
    for epoch in range(epochs):
        encoder.train(), decoder.train()
        for index in torch.randperm(len(train)).split(batch_size):
            loss = negative_elbo(encoder, decoder, train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        encoder.eval(), decoder.eval()
        with torch.no_grad():
            val_loss = sum(float(negative_elbo(encoder, decoder, v)) * len(v) for v in val.split(1000)) / len(val)
        state = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict(), "optimizer": optimizer.state_dict()}
        torch.save({**state, "epoch": epoch, "val_loss": val_loss}, out / "checkpoint.pt")


def pyroib_run(model: str, batch_size: int, epochs: int, out: Path) -> None:
    import pyro

    from pyroib.run import RunSpec
    from pyroib.train import train

    pyro.enable_validation(False)  # as pyroib train runs
    config = {"latent_dim": LATENT, "hidden": [HIDDEN]}
    spec = RunSpec(model=model, dataset="fashion-mnist", binarize="static", epochs=epochs, batch_size=batch_size)
    train(dataclasses.replace(spec, lr=LR, device="cpu", model_config=config), out / "run", progress=False)


def pythae_run(model: str, batch_size: int, epochs: int, out: Path) -> None:
    from pythae.models import VAE, BetaTCVAE, BetaTCVAEConfig, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            loc, log_var = self.body(x).chunk(2, dim=-1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)).reshape(-1, 1, 28, 28))

    train, val = read_fashion_mnist()
    torch.manual_seed(0)
    encoder, decoder = networks()
    shape = dict(input_dim=(1, 28, 28), latent_dim=LATENT, reconstruction_loss="bce")
    if model == "vae":
        vae = VAE(VAEConfig(**shape), encoder=Encoder(encoder), decoder=Decoder(decoder))
    else:
        config = BetaTCVAEConfig(**shape, **TC, use_mss=True)
        vae = BetaTCVAE(config, encoder=Encoder(encoder), decoder=Decoder(decoder))
    config = BaseTrainerConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=1000,
        num_epochs=epochs,
        learning_rate=LR,
        steps_saving=1,  # a checkpoint per epoch, as the other two write
        no_cuda=True,
    )
    TrainingPipeline(model=vae, training_config=config)(train_data=train, eval_data=val)


CONTENDERS = {
    "vae": {
        "pyroib": lambda b, e, o: pyroib_run("vae", b, e, o),
        "hand-written": hand_written,
        "pythae": lambda b, e, o: pythae_run("vae", b, e, o),
    },
    "beta-tcvae": {
        "pyroib": lambda b, e, o: pyroib_run("beta-tcvae", b, e, o),
        "pythae": lambda b, e, o: pythae_run("beta-tcvae", b, e, o),
    },
}


def timed(contender, batch_size: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="pyroib-epoch-time-") as folder:
        started = time.perf_counter()
        contender(batch_size, epochs, Path(folder))
        return time.perf_counter() - started


def main() -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--batch-sizes", default="32,128,512")
    p.add_argument("--epochs", default="3,20", help="run lengths, comma-separated")
    p.add_argument("--models", default="vae,beta-tcvae")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--minutes", type=float, default=None, help="stop starting new units after this long")
    p.add_argument("--out", default=str(ROOT / "runs" / "epoch_time"), help="folder of the stored unit times")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("pythae").setLevel(logging.WARNING)
    # every contender's modules imported before any timing: a unit measures the run, not the first import of a
    # library (which a fresh `pyroib train` process pays once)
    import pyroib.train  # noqa: F401

    try:
        import pythae.pipelines  # noqa: F401
    except ImportError:
        print("pythae is not installed (pip install pythae==0.1.2): its units are left out", flush=True)
        for contenders in CONTENDERS.values():
            contenders.pop("pythae")

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    lengths = [int(e) for e in args.epochs.split(",")]
    models = args.models.split(",")
    out, started, complete = Path(args.out), time.perf_counter(), True
    for round_ in range(args.rounds):
        for model in models:
            for epochs in lengths:
                for batch_size in batch_sizes:
                    names = list(CONTENDERS[model]) if round_ % 2 == 0 else list(CONTENDERS[model])[::-1]
                    for name in names:
                        unit = out / f"{model}-b{batch_size}-e{epochs}-r{round_}-{name}.json"
                        if harness.stored(unit) is not None:
                            continue
                        if args.minutes is not None and time.perf_counter() - started > 60 * args.minutes:
                            complete = False
                            continue
                        seconds = timed(CONTENDERS[model][name], batch_size, epochs)
                        unit.write_text(json.dumps({"seconds": seconds}))
                        print(f"{unit.stem}: {seconds:.1f} s", flush=True)
    write_table(args, out, models, lengths, batch_sizes, complete)


def write_table(args, out: Path, models, lengths, batch_sizes, complete: bool) -> None:
    def seconds(model, b, e, name):
        return [json.loads(f.read_text())["seconds"] for f in sorted(out.glob(f"{model}-b{b}-e{e}-r*-{name}.json"))]

    lines = [
        "# Whole-run wall time: pyroib, a hand-written PyTorch loop and pythae",
        "",
        f"Command: `{harness.command()}`" + ("" if complete else " (a slice: not every unit has run yet)"),
        "",
        f"Machine: {harness.machine(1)}.",
        "",
        "Fashion-MNIST statically binarised (55,000 training, 5,000 validation images), 784-400-20 softplus MLPs, "
        "Bernoulli likelihood, Adam 1e-3, set-up, validation and a checkpoint per epoch included; median wall "
        "seconds over interleaved rounds (the number of rounds in brackets). Each unit's time is stored under "
        "`--out` when it runs, so a table may gather units of several slices; the machine line is the one of the "
        "command that wrote the table.",
        "",
    ]
    for model in models:
        names = list(CONTENDERS[model])
        others = [n for n in names if n != "pyroib"]
        lines += [
            f"## {model}",
            "",
            "| epochs | batch | "
            + " | ".join(f"{n} s" for n in names)
            + " | "
            + " | ".join(f"pyroib / {n}" for n in others)
            + " |",
            "|---" * (2 + len(names) + len(others)) + "|",
        ]
        for e in lengths:
            for b in batch_sizes:
                times = {n: seconds(model, b, e, n) for n in names}
                if not all(times.values()):
                    continue
                medians = {n: statistics.median(v) for n, v in times.items()}
                cells = [f"{medians[n]:.1f} ({len(times[n])})" for n in names]
                ratios = [f"{medians['pyroib'] / medians[n]:.3f}" for n in others]
                lines.append(f"| {e} | {b} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        lines.append("")
    lines += [
        "Targets (issue: faster than the hand-written loop and pythae): pyroib / hand-written ≤ 0.90 at batch 128 and "
        "≤ 1.00 at batch 32 for 20-epoch runs; pyroib / pythae ≤ 0.80 (1.25 times faster) at every batch size.",
        "",
    ]
    targets = [("vae", "hand-written", 128, 0.90), ("vae", "hand-written", 32, 1.00)]
    targets += [(m, "pythae", b, 0.80) for m in models for b in batch_sizes]
    for model, other, b, limit in targets:
        if model not in models or other not in CONTENDERS[model] or b not in batch_sizes:
            continue
        ours, theirs = seconds(model, b, max(lengths), "pyroib"), seconds(model, b, max(lengths), other)
        if ours and theirs:
            ratio = statistics.median(ours) / statistics.median(theirs)
            verdict = "met" if ratio <= limit else "**not met**"
            run = f"{model}, batch {b}, {max(lengths)} epochs"
            lines.append(f"- {run}: pyroib / {other} {ratio:.3f} (≤ {limit}): {verdict}")
    lines.append("")
    harness.write_results(args, "epoch_time.md", "\n".join(lines))


if __name__ == "__main__":
    main()
