"""The diffusion model against the VAE on Fashion-MNIST grey levels, at a stated CPU budget: test bound in bits per
dimension (the same discretised likelihood for both), the Fréchet distance of samples to the test images, and the KL
per timestep of every noise schedule and β_t shape (Yang et al. 2024's Figure 5 as a measurement of pyroib's own
models).

Every model trains from the command line a user would type (``pyroib train --model diffusion ...``) for ``--epochs``
epochs. Bits per dimension come from ``pyroib evaluate`` (the diffusion: L_0 and L_T on every test image, each
L_{t-1} on 64 images per timestep; the VAE: the importance-weighted bound with 100 samples). Samples: ``--samples``
images (ancestral, ``--steps`` respaced timesteps for the diffusion; for the VAEs, decoded draws of their own
prior, N(0, I) or the VampPrior, and of the factorised and joint aggregate posteriors), their squared Fréchet
distance to the 10,000 test images in pyroib's Fashion-MNIST features. The VAE samplers of ``sample_quality.md``
(10,000 samples, Bernoulli VAE) are the issue's comparison: best sampler there 54.37 (joint aggregate), N(0, I) 126.66.

Resumable: each run trains in a folder under ``--out``; its measured result is a unit of ``harness.Units``, keyed by
its budget (epochs, U-Net widths, training images) and committed with ``--record``, so a later checkout goes on.
``--only`` chooses what to train; the table and figure show every unit measured so far, each with its budget.
``--minutes`` stops starting new ones after that long.

    python benchmarks/diffusion.py --record [--epochs 10] [--samples 2000] [--steps 100] [--minutes 120]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
UNET = ["--model", "diffusion", "--channels", "32,64,64"]
RUNS = {
    "diffusion, linear noise, constant β_t (ELBO)": [*UNET, "--noise-schedule", "linear"],
    "diffusion, cosine noise, constant β_t (ELBO)": [*UNET, "--noise-schedule", "cosine"],
    "diffusion, linear noise, simple β_t (Ho et al.)": [
        *UNET,
        "--noise-schedule",
        "linear",
        "--timestep-weights",
        "simple",
    ],  # fmt: skip
    "diffusion, cosine noise, simple β_t (Ho et al.)": [
        *UNET,
        "--noise-schedule",
        "cosine",
        "--timestep-weights",
        "simple",
    ],  # fmt: skip
    "diffusion, linear noise, increasing β_t": [
        *UNET,
        "--noise-schedule",
        "linear",
        "--timestep-weights",
        "increasing",
    ],  # fmt: skip
    "diffusion, linear noise, decreasing β_t": [
        *UNET,
        "--noise-schedule",
        "linear",
        "--timestep-weights",
        "decreasing",
    ],  # fmt: skip
    "VAE, discretised likelihood, 40-d": [
        "--model",
        "vae",
        "--likelihood",
        "discretised-gaussian",
        "--binarize",
        "none",
        "--latent-dim",
        "40",
        "--hidden",
        "300,300",
    ],  # fmt: skip
}
RUNS["VAE + VampPrior, discretised likelihood, 40-d"] = [*RUNS["VAE, discretised likelihood, 40-d"], "--prior", "vamp"]


AGGREGATES = (("factorised", "aggregate"), ("joint", "aggregate-joint"))


def _unit_name(name: str, args) -> str:
    budget = f"-e{args.epochs}" + (f"-c{args.channels.replace(',', '-')}" if name.startswith("diffusion") else "")
    return harness.slug(name)[:60] + budget + (f"-n{args.train_size}" if args.train_size else "")


def unit(name: str, args, units: harness.Units) -> dict:
    import torch

    from pyroib.frechet import frechet_distance, image_features, load_feature_network
    from pyroib.run import load_run

    if (done := units.get(_unit_name(name, args))) is not None:
        return done
    folder = args.out / _unit_name(name, args)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    flags = [args.channels if f == "32,64,64" else f for f in RUNS[name]]
    flags += ["--dataset", "fashion-mnist", "--epochs", str(args.epochs), "--seed", str(args.seed)]
    if args.train_size is not None:
        flags += ["--train-size", str(args.train_size)]
    run_dir = harness.train_run(folder, flags)
    trained = time.perf_counter() - started
    evaluate = ["evaluate", str(run_dir), "--json", "--device", "cpu", "--full-data-points", "0"]
    evaluation = json.loads(harness.pyroib(evaluate, folder / "log.txt", capture=True))
    run = load_run(run_dir)
    from pyroib.data import load_spec_dataset

    test = load_spec_dataset(run.spec, "cpu", binarize="none").test
    network = load_feature_network()
    reference = image_features(test, network)
    generator = torch.Generator().manual_seed(args.seed)
    dims = math.prod(test.shape[1:])
    result = {"name": name, "epochs": args.epochs, "train_seconds": trained, "samples": args.samples}
    result.update(channels=args.channels if name.startswith("diffusion") else None, train_size=args.train_size)
    if "bits_per_dim" in evaluation:
        result.update({k: evaluation[k] for k in ("bits_per_dim", "bits_per_dim_se", "kl_per_timestep", "data_term",
                                                  "prior_term")})  # fmt: skip
        images = torch.cat([run.model.sample_images(min(500, args.samples - i), args.steps, generator)
                            for i in range(0, args.samples, 500)])  # fmt: skip
        result["frechet"] = {f"ancestral, {args.steps} steps": frechet_distance(image_features(images, network),
                                                                               reference)}  # fmt: skip
    else:
        result["bits_per_dim"] = evaluation["nll_iw"] / (dims * math.log(2))
        result["elbo_bits_per_dim"] = -evaluation["elbo"] / (dims * math.log(2))
        from pyroib.aggregate_prior import prior_by_name
        from pyroib.frechet import prior_draws

        result["frechet"] = {}
        own = "N(0, I)" if run.spec.prior == "standard" else f"its {run.spec.prior} prior"
        samplers = [(own, run.model.prior), *((f"{f} aggregate", prior_by_name(run, n)) for f, n in AGGREGATES)]
        for label, prior in samplers:
            with torch.no_grad():
                images = run.model.decode(prior_draws(prior, args.samples, generator))
            result["frechet"][label] = frechet_distance(image_features(images, network), reference)
    result["seconds"] = time.perf_counter() - started
    return units.put(_unit_name(name, args), result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100, help="respaced timesteps of each ancestral sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-size", type=int, default=None, help="a subset of the training images (smoke runs)")
    parser.add_argument("--channels", default="32,64,64", help="the diffusion U-Net's widths (a smaller budget)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "diffusion")
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    harness.add_record_flag(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    units, pending = harness.Units(args, "diffusion"), []
    for name in RUNS:
        if (args.only is not None and name not in args.only) or units.done(_unit_name(name, args)):
            continue
        if args.minutes is not None and time.perf_counter() - started > 60 * args.minutes:
            pending.append(name)
            continue
        unit(name, args, units)
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    order = {name: i for i, name in enumerate(RUNS)}
    stored = [json.loads(path.read_text()) for path in units.folder.glob("*.json")]
    results = sorted(stored, key=lambda r: (order.get(r["name"], len(order)), r["epochs"]))
    lines = [
        "# Diffusion against the VAE on Fashion-MNIST (grey levels, 8-bit discretised likelihood)",
        "",
        f"Command: `{harness.command()}`  ",
        f"Machine: {harness.machine()}  ",
        f"Every row: its epochs (and U-Net widths) as stated, batch 128, Adam 1e-3, seed {args.seed}, one thread per "
        "process. Samples: the stated number per sampler against the 10,000 test images (fewer samples bias the "
        "Fréchet distance upwards).",
        "",
        "| model | budget | test bound (bits/dim) | sampler | samples | Fréchet distance | train (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        bound = f"{r['bits_per_dim']:.3f}" + (f" ± {r['bits_per_dim_se']:.3f}" if "bits_per_dim_se" in r else " (IW)")
        budget = f"{r['epochs']} epochs" + (f", U-Net {r['channels']}" if r.get("channels") else "")
        budget += f", {r['train_size']} images" if r.get("train_size") else ""
        for sampler, fid in r["frechet"].items():
            lines.append(
                f"| {r['name']} | {budget} | {bound} | {sampler} | {r.get('samples', '—')} | {fid:.2f} | "
                f"{r['train_seconds'] / 60:.0f} |"
            )
    curves = {f"{r['name']} ({r['epochs']} ep.)": r["kl_per_timestep"] for r in results if "kl_per_timestep" in r}
    if curves:
        from pyroib.evaluate_diffusion import plot_kl_per_timestep
        from pyroib.figures import plot

        figure = harness.results_path(args, "diffusion_kl_per_timestep.png")
        plot(figure, lambda ax: plot_kl_per_timestep(ax, curves))
        lines += ["", f"KL per timestep (test split): ![KL per timestep]({figure.name})"]
    if pending:
        lines += ["", f"Not yet run (rerun the command to go on): {', '.join(pending)}."]
    harness.write_results(args, "diffusion.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
