"""Sample quality of Fashion-MNIST VAEs: standard-normal prior against the aggregate posterior, same models.

For each β (default 1 and 4) one VAE is trained (dynamic binarisation, 40-d latents, 300-300 MLPs, standard normal
prior); then n decoded samples (mean images E[x|z]) from three samplers are compared with the 10,000 grey-level test
images by the Fréchet distance in the feature space of the versioned classifier (:mod:`pyroib.frechet`):

* z ~ N(0, I), the prior the model was trained with;
* z ~ factorised aggregate posterior of all training encodings (each z_j from its own 1-d mixture);
* z ~ joint aggregate posterior (a training code plus its posterior noise).

Two references bound the scale: 10,000 grey-level training images (the floor for n = 10,000, sampling noise of the
distance itself) and the test images' reconstructions (decoder quality with codes the encoder chose). Each sampler
is scored with three sampling seeds; the table shows their mean and range.

Run from the repository root (results in benchmarks/results/sample_quality.md):

    .venv/bin/python benchmarks/sample_quality.py --epochs 10
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import harness

SEEDS = (0, 1, 2)


def train_one(beta: float, args: argparse.Namespace) -> str:
    import pyro
    import torch

    from pyroib.run import CHECKPOINT_FILE, RunSpec
    from pyroib.train import train

    torch.set_num_threads(1)
    pyro.enable_validation(False)
    out = Path(args.root) / f"beta{beta:g}"
    spec = RunSpec(
        model="vae",
        model_config={"data_shape": [1, 28, 28], "latent_dim": 40, "hidden": [300, 300]},
        dataset="fashion-mnist",
        binarize="dynamic",
        beta=beta,
        epochs=args.epochs,
        batch_size=128,
        lr=1e-3,
        seed=args.seed,
        device="cpu",
    )
    if not (out / CHECKPOINT_FILE).is_file():
        train(spec, out, progress=False)
    return str(out)


def score(run_dir: str, args: argparse.Namespace) -> dict:
    import torch

    from pyroib.aggregate_prior import aggregate_variance, fit_and_save
    from pyroib.data import load_dataset
    from pyroib.frechet import frechet_distance, image_features, load_feature_network, sample_fid
    from pyroib.run import load_run

    torch.set_num_threads(1)
    run = load_run(run_dir, "cpu")
    grey = load_dataset("fashion-mnist", binarize="none", seed=args.seed)
    network = load_feature_network()
    test_features = image_features(grey.test, network)
    fitted = fit_and_save(run, max_components=None)
    samplers = {
        "N(0, I) (trained prior)": run.model.prior,
        "factorised aggregate": fitted["factorised"],
        "joint aggregate": fitted["joint"],
    }
    rows = {
        name: [sample_fid(run, prior, args.n, seed=s, reference_features=test_features) for s in SEEDS]
        for name, prior in samplers.items()
    }
    with torch.no_grad():
        binary_test, _ = load_dataset("fashion-mnist", binarize="dynamic", seed=args.seed).split("test")
        recon = torch.cat(
            [run.model.decode(run.guide.encode(binary_test[i : i + 1000])[0]) for i in range(0, len(binary_test), 1000)]
        )
    rows["reconstructions of test images"] = [frechet_distance(image_features(recon, network), test_features)]
    rows["training images (floor)"] = [frechet_distance(image_features(grey.train[: args.n], network), test_features)]
    variance = aggregate_variance(fitted["factorised"].loc, fitted["factorised"].scale)
    return {
        "run": run_dir,
        "beta": run.spec.beta,
        "epochs": run.epoch,
        "rows": rows,
        "variance_min": float(variance.min()),
        "variance_max": float(variance.max()),
        "active": int((fitted["factorised"].loc.var(0) > 0.01).sum()),
    }


def write_results(results: list[dict], args, command: str, minutes: float) -> str:
    lines = [
        "# Sample quality: standard-normal against aggregate-posterior sampling (Fashion-MNIST)",
        "",
        f"Command: `{command}` ({minutes:.0f} min wall time)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, one torch thread per "
        f"process; Python {platform.python_version()}.",
        "",
        f"Models: VAE, 40-d latents, 300-300 MLPs, Bernoulli likelihood, dynamic binarisation, {args.epochs} "
        f"epochs, batch 128, Adam 1e-3, seed {args.seed}. Distance: squared Fréchet distance between "
        f"{args.n:,} decoded mean images and the 10,000 grey-level test images in the 64-d feature space of "
        "pyroib's versioned classifier (pyroib/assets/fashion_features.json). Lower is better; the scale is "
        "this network's, not Inception's. Mean over sampling seeds 0, 1, 2 with [min, max].",
        "",
    ]
    for r in results:
        lines += [
            f"## β = {r['beta']:g} ({r['epochs']} epochs, {r['active']} of 40 dimensions active, "
            f"aggregate variance per dimension {r['variance_min']:.3f}–{r['variance_max']:.3f})",
            "",
            "| sampler | Fréchet distance |",
            "|---|---|",
        ]
        for name, values in r["rows"].items():
            spread = f" [{min(values):.2f}, {max(values):.2f}]" if len(values) > 1 else ""
            lines.append(f"| {name} | {sum(values) / len(values):.2f}{spread} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--betas", default="1,4")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n", type=int, default=10_000, help="samples per sampler and seed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", default="runs/benchmarks/sample_quality")
    args = p.parse_args(argv)
    betas = [float(b) for b in args.betas.split(",") if b]
    command = " ".join([".venv/bin/python", "benchmarks/sample_quality.py", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=len(betas), mp_context=get_context("spawn")) as pool:
        run_dirs = list(pool.map(train_one, betas, [args] * len(betas)))
        results = list(pool.map(score, run_dirs, [args] * len(run_dirs)))
    text = write_results(results, args, command, (time.perf_counter() - started) / 60)
    harness.write_results(args, "sample_quality.md", text)


if __name__ == "__main__":
    main()
