"""A run's report: numbers in nats, and the plots a reader checks first.

``write_report`` renders what :func:`pyroib.evaluate.evaluate_run` measures on the test split into ``DIR/report/``:
reconstructions, prior samples and per-dimension latent traversals (for programs that declare ``encode`` and
``decode``), training curves and the per-dimension KL labelled by latent site, as PNGs, plus ``report.md`` showing
them with the run's numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import atomic_directory, read_jsonl
from .evaluate import evaluate_run, load_splits
from .figures import plot, save_grid
from .run import METRICS_FILE, load_run


def write_report(run_dir, iw_samples: int = 100, device: str = "auto", disentanglement_scale: float = 0.1) -> Path:
    """Write ``run_dir/report/`` whole: it is built in a temporary folder that replaces the old report at the end, so
    a kill never leaves a report with some of its files."""
    run = load_run(run_dir, device)
    with atomic_directory(Path(run_dir) / "report") as out:
        _write_report(run, run_dir, out, iw_samples, disentanglement_scale)
    return Path(run_dir) / "report"


def _write_report(run, run_dir, out: Path, iw_samples: int, disentanglement_scale: float = 0.1) -> None:
    splits = load_splits(run)
    result = evaluate_run(run, "test", iw_samples=iw_samples, splits=splits)
    if run.spec.dataset == "dsprites" and run.capabilities.encode:
        from .disentanglement import evaluate_disentanglement

        # by default a tenth of disentanglement_lib's points: the report is a look, evaluate --disentanglement the
        # measurement
        result.update(evaluate_disentanglement(run, scale=disentanglement_scale))
    (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    rows = read_jsonl(Path(run_dir) / METRICS_FILE)
    x, _ = splits.split("test")
    figures = {}
    torch.manual_seed(0)
    model, guide = run.model, run.guide
    capabilities = run.capabilities
    image_data = len(splits.data_shape) == 3 and capabilities.decode and capabilities.encode
    with torch.no_grad():
        if image_data:
            originals = x[:32]
            loc, _ = guide.encode(originals)
            recon = model.decode(loc)
            pairs = torch.stack([originals, recon], 1).reshape(-1, *splits.data_shape)
            save_grid(
                pairs,
                out / "reconstructions.png",
                nrow=16,
                title="test images (odd columns), reconstructions from the posterior mean (even)",
            )
            figures["Reconstructions"] = "reconstructions.png"
            if capabilities.takes_prior:
                z = model.prior(64).sample()
                save_grid(model.decode(z), out / "samples.png", nrow=8, title="samples, z ~ prior")
                figures["Samples from the prior"] = "samples.png"
            # rank the encoded site's dimensions: by their KL when the program has that one site, else by how much
            # the posterior mean varies across the split (both describe what encode returns)
            single_site = "kl_per_dim_by_site" not in result and len(result["kl_per_dim"]) == loc.shape[-1]
            ranking = result["kl_per_dim"] if single_site else result["posterior_mean_variance"]
            ranked_by = "highest KL" if single_site else "most varying posterior mean"
            order = torch.argsort(torch.tensor(ranking), descending=True)[: min(16, loc.shape[-1])]
            steps = torch.linspace(-3, 3, 11)
            base = loc[:1].repeat(len(steps), 1)
            rows_img = []
            for j in order.tolist():
                zz = base.clone()
                zz[:, j] = steps
                rows_img.append(model.decode(zz))
            save_grid(
                torch.cat(rows_img),
                out / "traversals.png",
                nrow=len(steps),
                title=f"latent traversals from -3 to 3, one row per dimension ({ranked_by} first)",
            )
            figures["Latent traversals"] = "traversals.png"
    if rows:
        epochs = [r["epoch"] for r in rows]

        def curves(ax):
            ax.plot(epochs, [-r["train_loss"] for r in rows], label="train objective (negated loss)")
            ax.plot(epochs, [r["val_elbo"] for r in rows], label="validation ELBO")
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats per data point")
            ax.legend(fontsize=8)

        plot(out / "training_curves.png", curves)
        figures["Training curves"] = "training_curves.png"

        def rate_distortion(ax):
            ax.plot(epochs, [r["val_rate"] for r in rows], label="validation rate")
            ax.plot(epochs, [r["val_distortion"] for r in rows], label="validation distortion")
            ax2 = ax.twinx()
            ax2.plot(epochs, [r["beta"] for r in rows], "k--", label="β")
            ax2.set_ylabel("β")
            ax.set_xlabel("epoch")
            ax.set_ylabel("nats per data point")
            ax.legend(fontsize=8, loc="upper left")

        plot(out / "rate_distortion.png", rate_distortion)
        figures["Rate and distortion"] = "rate_distortion.png"
    by_site = result.get("kl_per_dim_by_site")
    if result["kl_per_dim"]:

        def kl_bars(ax):
            sites = by_site or {"": result["kl_per_dim"]}
            start = 0
            for site, values in sorted(sites.items()):
                ax.bar(range(start, start + len(values)), values, label=site or None)
                start += len(values)
            if by_site:
                ax.legend(fontsize=8, title="latent site")
            ax.set_xlabel("latent dimension")
            ax.set_ylabel("KL (nats per data point)")
            ax.set_title(f"per-dimension KL on the test split; {result.get('active_units', '?')} active units")

        plot(out / "kl_per_dim.png", kl_bars)
        figures["Per-dimension KL"] = "kl_per_dim.png"
    for extra in _extra_sections():
        figures.update(extra(run, splits, out) or {})
    spec = run.spec
    lines = [
        f"# Run report: {spec.model} on {spec.dataset}",
        "",
        f"Trained {run.epoch} epochs, β = {spec.beta} ({spec.schedule} schedule), "
        f"{f'prior {spec.prior}' if run.capabilities.takes_prior else 'the prior the program writes'}, "
        f"{f'{len(kl)} latent dimensions, ' if (kl := result['kl_per_dim']) else ''}seed {spec.seed}.",
        "",
        "## Test split (nats per data point)",
        "",
        "| quantity | value |",
        "|---|---|",
    ]
    for k, v in result.items():
        if isinstance(v, (int, float)):
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines.append("")
    for key in (k for k in result if k.startswith("top_dims/")):
        site = key.split("/", 1)[1]
        named = ", ".join(f"{d} ({mi:.2f} nats)" for d, mi in zip(result[key], result.get(f"top_mi/{site}", [])))
        lines += [f"Most informative dimensions of {site}, by I(x; {site}_i): {named}.", ""]
    for title, file in figures.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    (out / "report.md").write_text("\n".join(lines))


def _extra_sections():
    """Report sections that other modules contribute (e.g. posterior diagnostics); each returns {title: png}."""
    import importlib

    sections = []
    for name in (
        "pyroib.diagnostics",
        "pyroib.aggregate_prior",
        "pyroib.layer_information",
        "pyroib.disentanglement",
        "pyroib.codec",
        "pyroib.evaluate_diffusion",
    ):
        try:
            sections.append(importlib.import_module(name).report_section)
        except ModuleNotFoundError as error:
            if error.name != name:  # a module that exists but fails to import is a bug to show, not to hide
                raise
    return sections
