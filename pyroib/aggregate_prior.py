"""Generation from a trained run, and the empirical aggregate prior fitted to its training encodings.

The aggregate posterior of N training encodings q(z|x_n) = N(loc_n, diag scale_n²) is q(z) = (1/N) Σ_n q(z|x_n).
``pyroib fit-prior DIR`` stores two forms of it in ``DIR/aggregate_prior.pt`` (a weights-only file):

* factorised, Π_j q(z_j) with q(z_j) = (1/N) Σ_n N(loc_nj, scale_nj²): sampling mixes dimensions of different
  data points, as the CorEx paper does to generate images from the aggregate;
* joint, (1/N) Σ_n N(loc_n, diag scale_n²): a draw is a perturbed training code.

``pyroib sample DIR --prior standard|aggregate|aggregate-joint`` decodes draws into a grid PNG. Training encodings
of a dynamically binarised run are taken from one fixed-seed Bernoulli draw of the training images, which is what
the encoder saw during training (its grey levels it never saw).

Memory: the log density of either form over M components builds a (batch, M, D) tensor per call, so evaluation under
an aggregate prior (``pyroib.evaluate.evaluate_run(run, prior=...)``) keeps M small: ``--max-components`` (default
5,000) subsamples the encodings uniformly without replacement, the same subset for both forms. At M = 5,000 and
D = 40 the importance passes use batches of one or two points and take seconds per point; the ELBO pass of
``evaluate_run`` (batches of 500) peaks near 2 GB. Evaluate on the test split: on the training split a point's own
component sits in the mixture.

``report_section`` adds to ``pyroib report`` the per-dimension variance of the aggregate posterior,
Var_q(z_j) = Var_n(loc_nj) + mean_n scale_nj², against the per-dimension mutual information I(x; z_j) (the CorEx
paper's figure 7 analysis) and samples from the run's prior beside samples from the factorised aggregate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from .data import as_images
from .estimators import logsumexp_floored
from .evaluate import load_splits
from .priors import AggregatePosterior

AGGREGATE_FILE = "aggregate_prior.pt"
DEFAULT_MAX_COMPONENTS = 5000
SAMPLE_PRIORS = ("standard", "aggregate", "aggregate-joint")
GRID_PADDING = 2


def training_encodings(run, limit: int | None = None, batch_size: int = 1000, seed: int = 0):
    """(loc, scale) of q(z|x) for the run's training split (or its first ``limit`` points), encoded in chunks."""
    run.capabilities.require("encode", "encoding the training split")
    splits = load_splits(run)
    x = splits.train if limit is None else splits.train[:limit]
    if run.spec.binarize == "dynamic" and x.is_floating_point():  # a data set kept as bytes is binary already
        coin = torch.Generator(device=x.device).manual_seed(seed)
        x = torch.bernoulli(x, generator=coin)
    with torch.no_grad():
        parts = [run.guide.encode(as_images(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def aggregate_variance(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Var(z_j) under q(z) = (1/N) Σ_n N(loc_n, diag scale_n²): Var_n(loc_nj) + mean_n scale_nj² (law of total
    variance, population variance over the N encodings)."""
    return loc.var(0, unbiased=False) + scale.pow(2).mean(0)


def fit_aggregate_priors(
    loc: torch.Tensor, scale: torch.Tensor, max_components: int | None = DEFAULT_MAX_COMPONENTS, seed: int = 0
) -> dict[str, AggregatePosterior]:
    """Both aggregate forms of the encodings, each over the same uniform subsample of ``max_components``."""
    forms = {}
    for name, joint in (("factorised", False), ("joint", True)):
        generator = torch.Generator(device=loc.device).manual_seed(seed)  # same subset for both forms
        forms[name] = AggregatePosterior.fit(
            loc, scale, joint=joint, max_components=max_components, generator=generator
        )
    return forms


def fit_and_save(run, max_components: int | None = DEFAULT_MAX_COMPONENTS, seed: int = 0) -> dict:
    """Encode the training split, fit both forms, store them atomically in ``run_dir/aggregate_prior.pt``."""
    loc, scale = training_encodings(run, seed=seed)
    forms = fit_aggregate_priors(loc, scale, max_components, seed)
    stored = {
        "factorised": forms["factorised"].state_dict(),
        "joint": forms["joint"].state_dict(),
        "n_encodings": int(loc.shape[0]),
        "max_components": max_components or 0,
        "epoch": run.epoch,
        "variance": aggregate_variance(loc, scale).cpu(),
    }
    remove_stale_temporaries(run.run_dir)  # what a killed fit left behind
    save_checkpoint(stored, Path(run.run_dir) / AGGREGATE_FILE)
    return {**forms, "n_encodings": int(loc.shape[0]), "variance": stored["variance"]}


def load_aggregate_priors(run, max_components: int | None = DEFAULT_MAX_COMPONENTS):
    """{"factorised": prior, "joint": prior} from ``run_dir/aggregate_prior.pt``, fitted and saved when absent or
    when it holds the encodings of other weights (another epoch: a resumed run, or the other checkpoint)."""
    path = Path(run.run_dir) / AGGREGATE_FILE
    state = load_checkpoint(path, map_location=run.device) if path.is_file() else None
    if state is None or state.get("epoch") != run.epoch:
        if state is not None:  # refit as the user fitted it
            max_components = state.get("max_components", max_components) or None
        fitted = fit_and_save(run, max_components)
        return {k: fitted[k] for k in ("factorised", "joint")}
    return {k: AggregatePosterior.from_state_dict(state[k]) for k in ("factorised", "joint")}


def per_dim_mutual_information(
    loc: torch.Tensor, scale: torch.Tensor, samples: int = 1, generator: torch.Generator | None = None, chunk: int = 256
) -> torch.Tensor:
    """I(x; z_j) in nats for each dimension j, with the aggregate q(z_j) taken as the 1-d mixture over the given
    M encodings: E_n E_{z_j ~ q(z_j|x_n)} [log q(z_j|x_n) - log (1/M) Σ_m q(z_j|x_m)], ``samples`` draws per point.

    The point's own component is in the mixture, so each estimate lies in [0, log M]: pass M large enough that log M
    clears the information expected (M = 2,000 gives a ceiling of 7.6 nats).
    """
    m = loc.shape[0]
    z = loc + scale * torch.randn((samples, *loc.shape), generator=generator, device=loc.device, dtype=loc.dtype)
    own = torch.distributions.Normal(loc, scale).log_prob(z)  # (S, M, D)
    mixture = torch.distributions.Normal(loc, scale)
    aggregate = torch.cat(
        [logsumexp_floored(mixture.log_prob(z[:, i : i + chunk, None, :]), -2) for i in range(0, m, chunk)], dim=1
    ) - math.log(m)
    return (own - aggregate).mean((0, 1))


def decode_prior_draws(run, prior, n: int, seed: int = 0) -> torch.Tensor:
    from .frechet import prior_draws

    torch.manual_seed(seed)
    generator = torch.Generator(device=run.device).manual_seed(seed)
    with torch.no_grad():
        return run.model.decode(prior_draws(prior, n, generator))


def write_grid(images: torch.Tensor, path: str | Path, nrow: int) -> tuple[int, int]:
    """Images (n, C, H, W) in [0, 1] as one pixel-exact PNG grid (``GRID_PADDING`` white pixels between tiles);
    returns the grid's (height, width)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=nrow, padding=GRID_PADDING, pad_value=1.0)
    array = grid.permute(1, 2, 0).numpy()
    if images.shape[1] == 1:
        array = array[..., 0]  # make_grid repeats a grey channel three times
    matplotlib.image.imsave(str(path), array, cmap="gray", vmin=0.0, vmax=1.0)
    return tuple(array.shape[:2])


def check_prior_name(name: str) -> str:
    """``name`` if it is one of SAMPLE_PRIORS; commands call it before loading a run, so a bad flag fails fast."""
    if name not in SAMPLE_PRIORS:
        raise ValueError(f"unknown --prior {name!r}; choose one of {', '.join(SAMPLE_PRIORS)}")
    return name


def prior_by_name(run, name: str):
    """The run's own prior (``"standard"``), or the factorised (``"aggregate"``) or joint (``"aggregate-joint"``)
    aggregate posterior, fitted and saved first when the run has none."""
    if check_prior_name(name) == "standard":
        run.capabilities.require("takes_prior", "the run's own prior")
        return run.model.prior
    forms = load_aggregate_priors(run)
    return forms["factorised" if name == "aggregate" else "joint"].to(run.device)


def report_section(run, splits, out_dir, max_points: int = 5000, mi_points: int = 1000) -> dict[str, str]:
    """Aggregate-posterior analysis for ``pyroib report``: {title: png}; also writes aggregate_prior.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    capabilities = run.capabilities
    if not (capabilities.encode and capabilities.decode and capabilities.takes_prior and len(splits.data_shape) == 3):
        return {}
    out_dir = Path(out_dir)
    loc, scale = training_encodings(run, limit=max_points)
    variance = aggregate_variance(loc, scale)
    generator = torch.Generator(device=loc.device).manual_seed(0)
    keep = torch.randperm(loc.shape[0], generator=generator, device=loc.device)[:mi_points]
    information = per_dim_mutual_information(loc[keep], scale[keep], generator=generator)
    (out_dir / "aggregate_prior.json").write_text(
        json.dumps(
            {
                "encodings": int(loc.shape[0]),
                "mi_points": int(keep.numel()),
                "variance": variance.tolist(),
                "mutual_information_nats": information.tolist(),
            },
            indent=2,
        )
    )

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(information.cpu(), variance.cpu())
    for j, (i_j, v_j) in enumerate(zip(information.tolist(), variance.tolist())):
        ax.annotate(str(j), (i_j, v_j), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("I(x; z_j) (nats)")
    ax.set_ylabel("Var of z_j under q(z)")
    ax.set_title(f"aggregate posterior per dimension ({loc.shape[0]} training encodings)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "aggregate_variance_mi.png", dpi=120)
    plt.close(fig)

    factorised = AggregatePosterior.fit(loc, scale, joint=False)
    left = decode_prior_draws(run, run.model.prior, 64)
    right = decode_prior_draws(run, factorised, 64)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8))
    for ax, images, title in (
        (axes[0], left, f"z ~ trained prior ({type(run.model.prior).__name__})"),
        (axes[1], right, "z ~ factorised aggregate posterior"),
    ):
        from torchvision.utils import make_grid

        grid = make_grid(images.cpu().clamp(0, 1), nrow=8, padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "aggregate_samples.png", dpi=120)
    plt.close(fig)
    return {
        "Aggregate posterior: variance against information per dimension": "aggregate_variance_mi.png",
        "Samples: trained prior and factorised aggregate posterior": "aggregate_samples.png",
    }
