"""How well the amortized guide fits the true posterior, per data point, read from the ArviZ bridge's container.

With S draws z_s ~ q(z | x) and importance weights w_s = p(x, z_s) / q(z_s | x) (``sample_stats.log_weight``):

* **Pareto k̂** (Vehtari et al. 2017/2024, PSIS): the shape of a generalized Pareto distribution fitted to the
  M = ceil(min(0.2 S, 3 √S)) largest weights, by the empirical-Bayes estimate of Zhang & Stephens (2009) with
  Vehtari's weak prior pulling k̂ towards 0.5 (weight 10 points). k̂ < 0.5: the weights have finite variance and
  importance sampling from q is reliable; 0.5-0.7: usable; > 0.7: q misses mass of p(z | x) (too narrow or
  misplaced) and estimates that rely on the weights, the IWAE bound included, are unreliable. Weights equal to
  within rounding (q is the exact posterior) have no tail: k̂ = -inf.
* **Importance ESS** = (Σ w)² / Σ w², between 1 (one draw carries all weight) and S (q = p(z | x)).
* **IWAE bound** log (1/S) Σ w_s <= log p(x) (Burda et al. 2016), and the ELBO (1/S) Σ log w_s below it.

Implemented here rather than taken from ``arviz.psislw``, whose home and signature differ between ArviZ 0.23 and
1.x; the tests check the two agree on the installed line. Codes (:func:`code_summary`) and posterior predictive
checks (:func:`predictive_checks`) complete the picture; :func:`report_section` puts them into ``pyroib report``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.special import logsumexp

from .arviz_bridge import POINT_DIM, from_run, group, group_names
from .evaluate import broadcasting_problem

SAMPLE_DIMS = ("chain", "draw")
PRIOR_WEIGHT, PRIOR_SHAPE = 10, 0.5  # Vehtari's weak prior on k: 10 pseudo-observations at k = 0.5
MIN_TAIL = 5


def _gpd_shape(exceedances: np.ndarray) -> float:
    """Zhang & Stephens (2009) estimate of the generalized Pareto shape k from sorted exceedances (all >= 0).

    The profile likelihood over θ = -k/σ is averaged over a grid of m = 30 + ⌊√n⌋ values placed by the quantiles of
    a prior on θ; k(θ) = mean log(1 - θ x); then k is shrunk towards 0.5 as in Vehtari et al.
    """
    n = exceedances.size
    m = 30 + int(math.sqrt(n))
    quartile = exceedances[int(n / 4 + 0.5) - 1]
    grid = 1 / exceedances[-1] + (1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))) / (3 * quartile)
    shape = np.log1p(-grid[:, None] * exceedances).mean(axis=1)
    profile = n * (np.log(-grid / shape) - shape - 1)
    weights = 1 / np.exp(profile[None, :] - profile[:, None]).sum(axis=1)
    keep = weights >= 10 * np.finfo(float).eps  # drop grid points of negligible posterior weight
    theta = np.sum(grid[keep] * weights[keep]) / weights[keep].sum()
    k = np.log1p(-theta * exceedances).mean()
    return float((n * k + PRIOR_WEIGHT * PRIOR_SHAPE) / (n + PRIOR_WEIGHT))


def _khat_one(log_weights: np.ndarray, tolerance: float) -> float:
    x = np.sort(log_weights - log_weights.max())
    if -x[0] <= tolerance:
        return -math.inf
    tail_length = math.ceil(min(0.2 * x.size, 3 * math.sqrt(x.size)))
    cutoff = max(x[-tail_length - 1], math.log(np.finfo(float).tiny))
    tail = x[x > cutoff]
    if tail.size < MIN_TAIL:
        return math.inf
    return _gpd_shape(np.exp(tail) - math.exp(cutoff))


def pareto_khat(log_weights, axis: int = -1) -> np.ndarray:
    """Pareto k̂ of importance weights given as log-weights, reduced along ``axis`` (the draws).

    Needs at least 21 draws (a tail of 5). Log-weights whose spread is within 64 rounding units of their
    magnitude count as constant (k̂ = -inf); a tail with fewer than 5 distinct values gives +inf, as in ArviZ.
    """
    array = np.asarray(log_weights)
    eps = np.finfo(array.dtype).eps if np.issubdtype(array.dtype, np.floating) else np.finfo(float).eps
    array = np.moveaxis(array.astype(np.float64), axis, -1)
    if array.shape[-1] < 21:
        raise ValueError(
            f"Pareto k-hat needs at least 21 draws per point (a tail of {MIN_TAIL}); got "
            f"{array.shape[-1]}. Draw more posterior samples (draws=...)"
        )
    flat = array.reshape(-1, array.shape[-1])
    out = [_khat_one(row, 64 * eps * max(1.0, float(np.abs(row).max()))) for row in flat]
    return np.asarray(out).reshape(array.shape[:-1])


def importance_ess(log_weights, axis: int = -1) -> np.ndarray:
    """(Σ w)² / Σ w² along ``axis``, computed from log-weights without overflow."""
    lw = np.asarray(log_weights, dtype=np.float64)
    return np.exp(2 * logsumexp(lw, axis=axis) - logsumexp(2 * lw, axis=axis))


def iwae_bound(log_weights, axis: int = -1) -> np.ndarray:
    """log (1/S) Σ_s w_s: the importance-weighted lower bound on log p(x), nats."""
    lw = np.asarray(log_weights, dtype=np.float64)
    return logsumexp(lw, axis=axis) - math.log(lw.shape[axis])


def _stacked(array: xr.DataArray) -> np.ndarray:
    """(point, ..., chain*draw) numpy array: draws last, pooled over chains."""
    stacked = array.stack(__draws__=SAMPLE_DIMS)
    return stacked.transpose(POINT_DIM, ..., "__draws__").values


def importance_diagnostics(data) -> xr.Dataset:
    """Per data point: ``khat``, ``ess``, ``ess_fraction`` (ESS / S), ``iwae`` and ``elbo`` (nats)."""
    stats = group(data, "sample_stats")
    log_w = _stacked(stats["log_weight"])
    values = {
        "khat": pareto_khat(log_w),
        "ess": importance_ess(log_w),
        "iwae": iwae_bound(log_w),
        "elbo": log_w.astype(np.float64).mean(-1),
    }
    values["ess_fraction"] = values["ess"] / log_w.shape[-1]
    return xr.Dataset({k: (POINT_DIM, v) for k, v in values.items()}, coords={POINT_DIM: stats[POINT_DIM].values})


def code_summary(data, site: str = "z") -> xr.Dataset:
    """Per latent dimension of ``site``: across points, the mean and sd of the posterior means E[z_j | x], and the
    mean posterior sd (E_x sd[z_j | x]). sd of means >> posterior sd: the dimension carries information about x;
    sd of means ≈ 0 with posterior sd ≈ prior sd: an inactive (collapsed) dimension."""
    posterior = group(data, "posterior")
    if site not in posterior:
        raise ValueError(f"no latent site {site!r} in the posterior; it holds {', '.join(posterior.data_vars)}")
    samples = posterior[site].astype(np.float64)
    means, sds = samples.mean(SAMPLE_DIMS), samples.std(SAMPLE_DIMS)
    return xr.Dataset(
        {
            "mean_of_means": means.mean(POINT_DIM),
            "sd_of_means": means.std(POINT_DIM),
            "mean_posterior_sd": sds.mean(POINT_DIM),
        }
    )


def predictive_checks(data, site: str = "x") -> xr.Dataset:
    """Posterior predictive checks of observed site ``site``.

    ``replicated_mean`` / ``observed_mean``: each feature (pixel) averaged over points (and draws): a calibrated
    model puts the two on the diagonal. ``statistic_observed`` (per point) and ``statistic_replicated`` (per draw and
    point): T(x) = mean of a point's features; ``p_value`` per point is P(T(x_rep) >= T(x) | x) under the posterior
    predictive (values piling up near 0 or 1 flag misfit).
    """
    replicated = group(data, "posterior_predictive")[site].astype(np.float64)
    observed = group(data, "observed_data")[site].astype(np.float64)
    features = [d for d in observed.dims if d != POINT_DIM]
    t_rep, t_obs = replicated.mean(features), observed.mean(features)
    return xr.Dataset(
        {
            "replicated_mean": replicated.mean((*SAMPLE_DIMS, POINT_DIM)),
            "observed_mean": observed.mean(POINT_DIM),
            "statistic_observed": t_obs,
            "statistic_replicated": t_rep,
            "p_value": (t_rep >= t_obs).mean(SAMPLE_DIMS),
        }
    )


def _figure(path: Path, ncols: int, draw) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4))
    draw(np.atleast_1d(axes))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_importance(diagnostics: xr.Dataset, axes) -> None:
    """k̂ per point against the 0.5 and 0.7 thresholds, and the histogram of ESS / S."""
    khat = np.clip(diagnostics["khat"].values, -0.5, 1.5)  # -inf (exact guide) and +inf shown at the edges
    axes[0].plot(np.arange(khat.size), khat, ".", ms=4)
    for level, style in ((0.5, ":"), (0.7, "--")):
        axes[0].axhline(level, color="k", ls=style, lw=0.8)
    axes[0].set_xlabel("data point")
    axes[0].set_ylabel("Pareto k̂")
    bad = float((diagnostics["khat"] > 0.7).mean())
    axes[0].set_title(f"k̂ > 0.7 for {bad:.0%} of points", fontsize=9)
    axes[1].hist(diagnostics["ess_fraction"].values, bins=20, range=(0, 1))
    axes[1].set_xlabel("importance ESS / draws")
    axes[1].set_ylabel("data points")


def plot_codes(summary: xr.Dataset, axes, site: str = "z") -> None:
    """Per dimension: spread of posterior means across points (signal) against the mean posterior sd (noise)."""
    index = np.arange(summary["sd_of_means"].size)
    axes[0].bar(index - 0.2, summary["sd_of_means"].values.ravel(), 0.4, label="sd over x of E[z_j | x]")
    axes[0].bar(index + 0.2, summary["mean_posterior_sd"].values.ravel(), 0.4, label="mean over x of sd[z_j | x]")
    axes[0].set_xlabel(f"{site} dimension")
    axes[0].legend(fontsize=7)


def plot_predictive(checks: xr.Dataset, axes) -> None:
    """Observed against replicated per-feature means, and the histogram of posterior predictive p-values."""
    observed, replicated = checks["observed_mean"].values.ravel(), checks["replicated_mean"].values.ravel()
    axes[0].plot(observed, replicated, ".", ms=3)
    low, high = min(observed.min(), replicated.min()), max(observed.max(), replicated.max())
    axes[0].plot([low, high], [low, high], "k--", lw=0.8)
    axes[0].set_xlabel("observed mean per feature")
    axes[0].set_ylabel("replicated mean per feature")
    axes[1].hist(checks["p_value"].values, bins=20, range=(0, 1))
    axes[1].set_xlabel("p-value of T(x) = mean feature")
    axes[1].set_ylabel("data points")


def _file_safe(site: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in site)


def report_section(run, splits, out_dir, points: int = 200, draws: int = 100) -> dict[str, str]:
    """Posterior diagnostics of a run on its test split for ``pyroib report``: {title: png file name}.

    Writes ``posterior_diagnostics.json`` (summaries over the points) beside the figures. A program whose sites are
    not all local to a data point has no per-point posterior; the section is then skipped and the JSON says why.
    """
    out_dir = Path(out_dir)
    summary_path = out_dir / "posterior_diagnostics.json"
    if not run.capabilities.importance_sampling:
        # its latent sites are whole images at every timestep (the diffusion chain): importance weights over them
        # would cost T sites x points x draws, and the program says they are not its estimate
        problem = "the program declares importance_sampling = False: no importance-weight diagnostics"
    else:
        problem = broadcasting_problem(run.model, run.guide, *splits.split("test"))
    if problem is not None:
        summary_path.write_text(json.dumps({"skipped": problem}, indent=2))
        return {}
    try:
        data = from_run(run, split="test", points=points, draws=draws, splits=splits)
    except ValueError as error:
        summary_path.write_text(json.dumps({"skipped": str(error)}, indent=2))
        return {}
    diagnostics = importance_diagnostics(data)
    figures = {}
    _figure(out_dir / "posterior_importance.png", 2, lambda axes: plot_importance(diagnostics, axes))
    figures["Posterior fit: Pareto k̂ and ESS of the importance weights"] = "posterior_importance.png"
    summary = {
        "points": int(diagnostics.sizes[POINT_DIM]),
        "draws": draws,
        "khat_median": float(diagnostics["khat"].median()),
        "khat_above_0.7": float((diagnostics["khat"] > 0.7).mean()),
        "ess_fraction_mean": float(diagnostics["ess_fraction"].mean()),
        "iwae_mean": float(diagnostics["iwae"].mean()),
        "elbo_mean": float(diagnostics["elbo"].mean()),
    }
    posterior = group(data, "posterior")
    for site in posterior.data_vars:
        if np.issubdtype(posterior[site].dtype, np.floating):
            codes = code_summary(data, site)
            name = f"posterior_codes_{_file_safe(site)}.png"
            _figure(out_dir / name, 1, lambda axes, codes=codes, site=site: plot_codes(codes, axes, site))
            figures[f"Posterior codes of {site}"] = name
    if "posterior_predictive" in group_names(data):
        for site in group(data, "posterior_predictive").data_vars:
            checks = predictive_checks(data, site)
            name = f"posterior_predictive_{_file_safe(site)}.png"
            _figure(out_dir / name, 2, lambda axes, checks=checks: plot_predictive(checks, axes))
            figures[f"Posterior predictive check of {site}"] = name
            summary[f"p_value_mean/{site}"] = float(checks["p_value"].mean())
    summary_path.write_text(json.dumps(summary, indent=2))
    return figures


__all__ = [
    "code_summary",
    "importance_diagnostics",
    "importance_ess",
    "iwae_bound",
    "pareto_khat",
    "plot_codes",
    "plot_importance",
    "plot_predictive",
    "predictive_checks",
    "report_section",
]
