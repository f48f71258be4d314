"""The ArviZ bridge: posterior draws of an amortized guide, per data point, as an ArviZ container.

For data points x_1..x_B and S draws per point, one pass of :func:`pyroib.evaluate.importance_log_weights`
(the evaluator's own computation, so the bound read here is the bound it reports) gives

    z_{s,b} ~ q(z | x_b)                                   every latent site the model declares, discrete ones too
    log w_{s,b} = log p(x_b, z_{s,b}) - log q(z_{s,b} | x_b)  importance log-weights, nats
    x^rep_{s,b} ~ p(x | z_{s,b})                           one replicate of every observed site per draw

and the groups of the container are

* ``posterior``: each latent site, dims (chain, draw, point, <site>_dim...), e.g. ``z`` with ("point", "z_dim");
  scalar-per-point sites (a categorical ``c``) have ("point",).
* ``posterior_predictive``: each observed site replicated, dims (chain, draw, point, <site>_dim_0, ...).
* ``observed_data``: each observed site, dims (point, <site>_dim_0, ...); ``constant_data``: ``y`` when given.
* ``log_likelihood``: log p(x_b | z_{s,b}) per observed site, summed over the site's other dims (one value per
  data point), dims (chain, draw, point).
* ``sample_stats``: ``log_weight`` = log w_{s,b} above, dims (chain, draw, point). These are the weights whose
  log-mean-exp is the IWAE bound and whose tail gives Pareto k̂ (:mod:`pyroib.diagnostics`).

The draws are independent draws from q, not a Markov chain: ArviZ's chain/draw convention holds them as one chain
(chain = 1, draw = S). R-hat is then undefined and the ESS columns of ``az.summary`` describe i.i.d. draws; the
importance ESS of :func:`pyroib.diagnostics.importance_ess` is the number that measures the guide's fit. The
sample dimension is deliberately not called "sample" (it clashes with ArviZ 1.x's ``plot_ppc_dist``).

:func:`to_arviz` is the one place that knows ArviZ's version: 1.x (Python >= 3.12) builds an ``xarray.DataTree``,
0.23 (Python 3.11) an ``InferenceData``, from the same dict of numpy arrays.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .evaluate import PARTICLE_PLATE, importance_log_weights, max_plate_nesting_of
from .plates import DATA_PLATE
from .program import is_factor

POINT_DIM = "point"


def import_arviz():
    """``import arviz``, without the once-a-day FutureWarning of ArviZ 0.23 about its refactor.

    The warning is informational, but under ``-W error`` (the test suite) it would turn the first import of the
    day into a failure.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
        import arviz
    return arviz


import_arviz()  # so that a later plain `import arviz` is quiet too


def to_arviz(
    groups: dict[str, dict[str, np.ndarray]],
    dims: dict[str, list[str]] | None = None,
    coords: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
):
    """Build ArviZ's container from ``{group: {variable: array}}``: a DataTree on ArviZ >= 1, else InferenceData.

    Arrays of sampled groups lead with (chain, draw); ``observed_data`` and ``constant_data`` do not. ``dims`` maps a
    variable name to the names of its dimensions after (chain, draw); in ``log_likelihood`` the trailing names that
    the array lacks are dropped, so one mapping serves ``x`` in every group.
    """
    az = import_arviz()
    major = int(str(az.__version__).split(".")[0])
    if major >= 1:
        # ArviZ 1.x (arviz_base.from_dict): one nested dict; groups named *data* carry no sample dims
        return az.from_dict(groups, dims=dims, coords=coords, attrs={"/": dict(attrs or {})})
    return az.from_dict(**groups, dims=dims, coords=coords, attrs=dict(attrs or {}))


def group_names(data) -> list[str]:
    """The group names of ArviZ's container: ``InferenceData.groups()`` (0.23) or the DataTree's children (1.x)."""
    return list(data.groups()) if callable(getattr(data, "groups", None)) else list(data.children)


def group(data, name: str):
    """One group as an ``xarray.Dataset``, from an InferenceData (ArviZ 0.23) or a DataTree (ArviZ 1.x)."""
    import xarray as xr

    node = data[name]
    return node if isinstance(node, xr.Dataset) else node.to_dataset()


def _draw_point_first(tensor: torch.Tensor, batch_shape: torch.Size, site) -> torch.Tensor:
    """Move a site tensor's particle and data-plate dims to the front: (S, B, remaining dims...)."""
    dims = {frame.name: frame.dim for frame in site["cond_indep_stack"]}
    if DATA_PLATE not in dims:
        raise ValueError(
            f"site {site['name']!r} lies outside the data plate: the bridge draws a posterior per data "
            f"point, so every latent and observed site must sit inside pyro.plate({DATA_PLATE!r}, ...)"
        )
    rank = len(batch_shape)
    tensor = tensor.expand(tuple(batch_shape) + tuple(tensor.shape[rank:]))
    return tensor.movedim((rank + dims[PARTICLE_PLATE], rank + dims[DATA_PLATE]), (0, 1))


def _site_arrays(site) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, log density per draw and point) of one traced site, shapes (S, B, ...) and (S, B)."""
    fn, value = site["fn"], site["value"]
    batch_shape = fn.batch_shape
    value = value.expand(tuple(batch_shape) + tuple(fn.event_shape))
    log_prob = fn.log_prob(value).expand(batch_shape)
    log_prob = _draw_point_first(log_prob, batch_shape, site)
    return _draw_point_first(value, batch_shape, site), log_prob.reshape(*log_prob.shape[:2], -1).sum(-1)


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _chunk_draws(model, guide, x, y, draws: int, nesting: int) -> tuple[dict[str, dict], list]:
    """Posterior draws, weights and likelihoods for one chunk of points, and its observed sites for replicates.

    Model and guide run inside ``importance_log_weights`` wrapped in ``poutine.trace``, so the recorded traces hold
    exactly the draws (with the particle plate already applied) that the returned weights belong to.
    """
    guide_recorder, model_recorder = poutine.trace(guide), poutine.trace(model)
    log_weight = importance_log_weights(model_recorder, guide_recorder, x, y, draws, nesting)
    model_trace = prune_subsample_sites(model_recorder.trace)
    out = {"posterior": {}, "observed_data": {}, "log_likelihood": {}, "sample_stats": {"log_weight": log_weight}}
    observed_sites = []
    with torch.no_grad():
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or is_factor(site):
                continue
            value, log_prob = _site_arrays(site)
            if not site["is_observed"]:
                out["posterior"][name] = value
                continue
            out["observed_data"][name] = value[0]
            out["log_likelihood"][name] = log_prob
            observed_sites.append(site)
    return out, observed_sites


def _replicates(observed_sites) -> dict[str, torch.Tensor]:
    """x_rep ~ p(x | z) at each draw; drawn after all weights, so the weights' random stream matches the evaluator's."""
    with torch.no_grad():
        return {site["name"]: _site_arrays({**site, "value": site["fn"].sample()})[0] for site in observed_sites}


def draw_posterior(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    draws: int = 100,
    seed: int | None = 0,
    batch_size: int = 100,
    predictive: bool = True,
) -> dict[str, dict]:
    """``{group: {variable: numpy array}}`` of the posterior over the points of ``x`` (see the module docstring).

    ``draws`` importance samples per point are drawn in chunks of ``batch_size`` points. With a ``seed`` the global
    torch generators are seeded inside :func:`torch.random.fork_rng` (the caller's random state is left as it was),
    and the draws equal those of :func:`pyroib.evaluate.importance_nll` called after ``torch.manual_seed(seed)`` with
    ``samples=draws``, the same ``batch_size`` and ``particles_per_pass >= draws``. Tensors move to the CPU before
    they become numpy arrays, so CUDA models work unchanged.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor of data points (N, ...), got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must hold at least one data point along its first dimension, got shape {tuple(x.shape)}")
    if y is not None and (not torch.is_tensor(y) or y.shape[0] != x.shape[0]):
        raise ValueError("y must be a tensor with one entry per data point of x, or None")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer (posterior samples per data point), got {draws!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    devices = [x.device] if x.device.type == "cuda" else []
    chunks = []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        nesting = max_plate_nesting_of(model, guide, x, y)
        pending = []
        for start in range(0, x.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            chunk, observed_sites = _chunk_draws(model, guide, x[sl], None if y is None else y[sl], draws, nesting)
            chunks.append(chunk)
            pending.append(observed_sites)
        if predictive:
            for chunk, observed_sites in zip(chunks, pending):
                chunk["posterior_predictive"] = _replicates(observed_sites)
    groups: dict[str, dict[str, np.ndarray]] = {}
    for group, variables in chunks[0].items():
        point_axis = 0 if group == "observed_data" else 1
        groups[group] = {
            name: _numpy(torch.cat([chunk[group][name] for chunk in chunks], point_axis)) for name in variables
        }
        if point_axis == 1:  # a leading chain axis of length 1: the draws are one i.i.d. "chain"
            groups[group] = {name: array[None] for name, array in groups[group].items()}
    if y is not None:
        groups["constant_data"] = {"y": _numpy(y)}
    return {group: variables for group, variables in groups.items() if variables}


def _dims_of(groups: dict[str, dict[str, np.ndarray]]) -> dict[str, list[str]]:
    """("point", "z_dim") for a vector site z, ("point", "x_dim_0", "x_dim_1", ...) for an image x."""
    dims = {}
    for group, variables in groups.items():
        lead = 1 if group in ("observed_data", "constant_data") else 3
        for name, array in variables.items():
            rest = array.ndim - lead
            if name in dims and len(dims[name]) - 1 >= rest:
                continue
            extra = [f"{name}_dim"] if rest == 1 else [f"{name}_dim_{i}" for i in range(rest)]
            dims[name] = [POINT_DIM, *extra]
    return dims


def from_pair(
    model,
    guide,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    draws: int = 100,
    seed: int | None = 0,
    batch_size: int = 100,
    predictive: bool = True,
    point_index: Sequence[int] | np.ndarray | None = None,
):
    """ArviZ container of q(z | x) for a (model, guide) pair on the points of ``x`` (see :func:`draw_posterior`).

    ``point_index`` labels the points (the ``point`` coordinate), e.g. their indices in the dataset split.
    """
    groups = draw_posterior(model, guide, x, y, draws=draws, seed=seed, batch_size=batch_size, predictive=predictive)
    coords = {POINT_DIM: np.arange(x.shape[0]) if point_index is None else np.asarray(point_index)}
    if coords[POINT_DIM].shape != (x.shape[0],):
        raise ValueError(
            f"point_index must hold one label per data point ({x.shape[0]}), got shape {coords[POINT_DIM].shape}"
        )
    attrs = {
        "draws": draws,
        "seed": -1 if seed is None else seed,
        "log_weight": "sample_stats.log_weight = log p(x, z) - log q(z|x) in nats, per draw and point",
    }
    return to_arviz(groups, dims=_dims_of(groups), coords=coords, attrs=attrs)


def from_run(
    run,
    *,
    split: str = "test",
    points: int | Sequence[int] = 100,
    draws: int = 100,
    seed: int | None = 0,
    device: str = "auto",
    batch_size: int = 100,
    predictive: bool = True,
    splits=None,
):
    """ArviZ container of a trained run's posterior on ``points`` of ``split``.

    ``run`` is a run directory (``pyroib train --out DIR``) or what :func:`pyroib.run.load_run` returned;
    ``points`` is a count (the first points of the split) or a sequence of indices into it, which become the
    ``point`` coordinate. The model and guide are used without bottleneck weights: the posterior is that of the
    generative model itself, whatever β the run was trained with.
    """
    from .data import load_spec_dataset
    from .run import load_run

    if not hasattr(run, "guide"):
        run = load_run(run, device)
    if splits is None:
        splits = load_spec_dataset(run.spec, run.device)
    x, y = splits.split(split)
    if isinstance(points, (int, np.integer)) and not isinstance(points, bool):
        if points < 1:
            raise ValueError(f"points must be >= 1, got {points}")
        index = np.arange(min(int(points), x.shape[0]))
    else:
        index = np.asarray(points, dtype=np.int64).reshape(-1)
        if index.size == 0 or index.min() < 0 or index.max() >= x.shape[0]:
            raise ValueError(f"points must be indices in 0..{x.shape[0] - 1} of the {split} split, got {points!r}")
    selected = torch.as_tensor(index, device=x.device)
    return from_pair(
        run.model,
        run.guide,
        x[selected],
        y[selected],
        draws=draws,
        seed=seed,
        batch_size=batch_size,
        predictive=predictive,
        point_index=index,
    )


__all__ = ["draw_posterior", "from_pair", "from_run", "group", "group_names", "import_arviz", "to_arviz"]
