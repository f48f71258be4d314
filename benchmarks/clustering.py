"""Unsupervised clustering of Fashion-MNIST and digits from a categorical latent: the hierarchical VAE (stacked CorEx,
Gao et al. 2019) and the Gaussian-mixture VAE against k-means on pixels and k-means on a β-VAE's codes.

Every model trains from the command line a user would type (``pyroib train --model hvae ...``, the architectures'
defaults), and is scored on the test split: Hungarian accuracy, NMI and ARI (:mod:`pyroib.clustering`), mean ± sd
over seeds. k-means is scikit-learn's (10 clusters, 10 initialisations, seeded). A three-layer hierarchy (64-d and
32-d Gaussian layers under the 10-way one) reports each Gaussian layer's total correlation over its aggregate
posterior, the seed's claim being that TC falls with depth. Published Fashion-MNIST anchors (Hungarian accuracy,
10-run means): k-means on an autoencoder's codes 0.606, DEC 0.618, ClusterGAN 0.612, N2D 0.672.

Resumable: each (data set, method, seed) trains in a folder under ``--out`` (a run cut short resumes from its
checkpoint) and its scores are a unit of ``harness.Units`` (committed with ``--record``, so a later checkout goes on).
``--minutes`` stops starting new units after that long; run the same command again to go on. ``--methods`` trains
only those (e.g. ``hvae gmvae`` first); units already measured are reported whatever it says.

    python benchmarks/clustering.py --record [--seeds 5] [--epochs 30] [--workers 2] [--minutes 80]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
THREE_LAYERS = ["--layer-sizes", "64,32,10", "--layer-types", "gaussian,gaussian,categorical"]
METHODS = {
    "k-means on pixels": None,
    "k-means on β-VAE codes": ["--model", "beta-vae", "--latent-dim", "10"],
    "Gaussian-mixture VAE": ["--model", "gmvae"],
    "hierarchical VAE (Gao et al. sizes)": ["--model", "hvae"],
    "hierarchical VAE, three layers": ["--model", "hvae", *THREE_LAYERS],
}
SCORES = ("cluster_accuracy", "nmi", "ari")


def _kmeans_scores(features, labels, seed: int) -> dict:
    from sklearn.cluster import KMeans

    from pyroib.clustering import clustering_scores

    clusters = KMeans(10, n_init=10, random_state=seed).fit_predict(features)
    return clustering_scores(labels, clusters)


def _unit_name(dataset: str, method: str, seed: int) -> str:
    return f"{dataset}-{METHODS_SLUG[method]}-s{seed}"


def _unit(dataset: str, method: str, seed: int, epochs: int, out: Path, units: harness.Units) -> dict:
    if (done := units.get(_unit_name(dataset, method, seed))) is not None:
        return done
    folder = out / dataset / f"{METHODS_SLUG[method]}-s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    flags = METHODS[method]
    if flags is None:
        from pyroib.data import load_dataset

        splits = load_dataset(dataset, binarize="none")
        x, labels = splits.test.flatten(1).numpy(), splits.test_labels.numpy()
        scores = _kmeans_scores(x, labels, seed)
    else:
        run = folder / "run"
        train = ["train", *flags, "--dataset", dataset, "--epochs", str(epochs), "--seed", str(seed)]
        train += ["--device", "cpu", "--no-progress", "--out", str(run)]
        if (run / "checkpoint.pt").is_file():
            train.append("--resume")
        harness.pyroib(train, folder / "log.txt")
        if "beta-vae" in flags:
            scores = _codes_kmeans(run, seed)
        else:
            evaluation = folder / "evaluation.json"
            argv = ["evaluate", str(run), "--split", "test", "--json", "--device", "cpu", "--iw-samples", "0"]
            argv += ["--full-data-points", "2000"]
            text = harness.pyroib(argv, folder / "log.txt", capture=True)
            evaluation.write_text(text)
            result = json.loads(text)
            scores = {k: result[k] for k in SCORES}
            scores.update({k: v for k, v in result.items() if k.startswith(("layer_tc/", "layer_mi/", "rate/"))})
            scores["clusters_used"] = result["clusters_used"]
    scores.update(seconds=time.perf_counter() - started, epochs=epochs)
    return units.put(_unit_name(dataset, method, seed), scores)


def _codes_kmeans(run: Path, seed: int) -> dict:
    import torch

    from pyroib.evaluate import load_splits
    from pyroib.run import load_run

    loaded = load_run(run, "cpu")
    splits = load_splits(loaded)
    with torch.no_grad():
        codes = torch.cat([loaded.guide.encode(part)[0] for part in splits.test.split(1000)])
    return _kmeans_scores(codes.numpy(), splits.test_labels.numpy(), seed)


METHODS_SLUG = {
    "k-means on pixels": "kmeans-pixels",
    "k-means on β-VAE codes": "kmeans-betavae",
    "Gaussian-mixture VAE": "gmvae",
    "hierarchical VAE (Gao et al. sizes)": "hvae",
    "hierarchical VAE, three layers": "hvae3",
}


def _epochs_text(args) -> str:
    return ", ".join(f"{e} epochs on {d}" for d, e in args.epochs_by_dataset.items())


def _report(results: dict, args, wall: float) -> str:
    lines = [
        "# Clustering from a categorical latent: Hungarian accuracy, NMI, ARI on the test split",
        "",
        f"Command: `{harness.command()}`  ",
        f"Machine: {harness.machine(1)}; {args.workers} units at a time, one thread each  ",
        f"Wall time of this slice: {wall / 60:.1f} min; each unit's own time is in its file under "
        f"`{args.units.folder.relative_to(ROOT)}`",
        "",
        f"Each model trains {_epochs_text(args)} with its architecture's defaults (hvae and gmvae: grey levels, "
        "Gaussian likelihood, batch 32; β-VAE: β = 4, 10 latents, Bernoulli, dynamic binarisation); mean ± sd over "
        "the seeds finished so far (n).",
        "",
    ]
    for dataset in args.datasets:
        lines += [f"## {dataset}", "", "| method | n | accuracy | NMI | ARI |", "|---|---|---|---|---|"]
        for method in METHODS:
            rows = results.get((dataset, method), [])
            cells = [harness.mean_sd([r[k] for r in rows]) for k in SCORES]
            lines.append(f"| {method} | {len(rows)} | {' | '.join(cells)} |")
        lines.append("")
        deep = results.get((dataset, "hierarchical VAE, three layers"), [])
        if deep:
            lines += [
                "Three-layer hierarchy, per-layer terms over the aggregate posterior (2,000 test points, nats): "
                "TC(z^(l)) of each Gaussian layer, I(x; z1), I(z^(l-1); z^(l)) above.",
                "",
                "| layer | TC | I(input; layer) | rate |",
                "|---|---|---|---|",
            ]
            for name in ("z1", "z2", "z3"):
                tc = [r[f"layer_tc/{name}"] for r in deep if f"layer_tc/{name}" in r]
                mi = [r[f"layer_mi/{name}"] for r in deep if f"layer_mi/{name}" in r]
                rate = [r[f"rate/{name}"] for r in deep if f"rate/{name}" in r]
                lines.append(f"| {name} | {harness.mean_sd(tc)} | {harness.mean_sd(mi)} | {harness.mean_sd(rate)} |")
            lines.append("")
    return "\n".join(lines)


def main():
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--dataset-epochs", default="", help="per data set overrides of --epochs, e.g. fashion-mnist=20,digits=30"
    )
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS_SLUG.values()),
        default=list(METHODS_SLUG.values()),
        help="the methods this slice trains; the table shows every unit measured so far",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--minutes", type=float, default=None, help="start no new unit after this many minutes")
    p.add_argument("--out", default=str(ROOT / "runs" / "clustering"))
    args = p.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    units = [(d, m, s) for d in args.datasets for s in range(args.seeds) for m in METHODS]
    epochs = {d: args.epochs for d in args.datasets}
    epochs.update({k: int(v) for k, v in (item.split("=") for item in args.dataset_epochs.split(",") if item)})
    args.epochs_by_dataset = epochs
    args.units = store = harness.Units(args, "clustering")

    def work(unit):
        late = args.minutes is not None and time.perf_counter() - started > 60 * args.minutes
        chosen = METHODS_SLUG[unit[1]] in args.methods
        if (late or not chosen) and not store.done(_unit_name(*unit)):
            return unit, None
        return unit, _unit(*unit, epochs[unit[0]], out, store)

    results: dict = {}
    with ThreadPoolExecutor(args.workers) as pool:
        for (dataset, method, _), scores in pool.map(work, units):
            if scores is not None:
                results.setdefault((dataset, method), []).append(scores)
    harness.write_results(args, "clustering.md", _report(results, args, time.perf_counter() - started))


if __name__ == "__main__":
    main()
