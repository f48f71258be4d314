"""Evaluation of a trained model/guide pair on a data split, in nats per data point.

* ``split_terms``: the objective's own breakdown (ELBO, rate, distortion, per-dimension KL, extra terms) averaged
  over the split in memory-bounded chunks, with bottleneck weights off (β = 1): the ELBO reported is the true bound.
* ``importance_nll``: -log p(x) estimated with K importance samples from the guide (Burda et al. 2016),
  log p(x) ≈ logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K, with the K samples drawn in chunks and combined by a
  running logsumexp, so memory stays bounded for K = 5,000. Its expectation is a bound at least as tight as the ELBO.
* ``active_units``: dimensions j with Cov_x(E_q[z_j | x]) > 0.01 (Burda et al. 2016).
"""
from __future__ import annotations

import ctypes
import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .objectives import DATA_PLATE, InfoELBO


PARTICLE_PLATE = "importance_particles"


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def split_terms(model, guide, objective: InfoELBO, x: torch.Tensor, y: torch.Tensor | None = None,
                batch_size: int = 1000, analytic_kl: bool = True) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Average of ``objective.terms`` over ``x`` (β = 1, one particle per point): (values, kl_per_dim).

    The rate uses closed-form KL where torch has one (``analytic_kl``): the same expectation as the Monte Carlo
    estimate the training loss uses, without its noise (per-dimension KLs never read negative).
    """
    totals: dict[str, float] = {}
    per_dim: dict[str, torch.Tensor] = {}
    saved, objective.analytic_kl = objective.analytic_kl, analytic_kl or objective.analytic_kl
    try:
        with torch.no_grad():
            for sl in _chunks(x.shape[0], batch_size):
                terms = objective.terms(model, guide, x[sl], None if y is None else y[sl])
                n = sl.stop - sl.start
                for k, v in terms.values.items():
                    totals[k] = totals.get(k, 0.0) + v * n
                for k, v in terms.kl_per_dim.items():
                    per_dim[k] = per_dim.get(k, 0.0) + v * n
    finally:
        objective.analytic_kl = saved
    count = x.shape[0]
    values = {k: float(v) / count for k, v in totals.items()}
    return values, {k: (v / count).tolist() for k, v in per_dim.items()}


def max_plate_nesting_of(model, guide, x, y) -> int:
    """How many plate dimensions the program uses (so a particle plate can go to their left)."""
    y2 = None if y is None else y[:2]
    with torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(x[:2], y2)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x[:2], y2)
    dims = [-f.dim for trace in (guide_trace, model_trace) for site in trace.nodes.values()
            if site["type"] == "sample" for f in site["cond_indep_stack"] if f.vectorized]
    return max(dims, default=0)


def _per_point_log_prob(trace, particle_dim: int) -> torch.Tensor:
    """Σ over sites of log densities, reduced to shape (K, B): every dim but the particle and data dims summed."""
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        data_frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        if not data_frames:
            raise ValueError(f"site {name!r} lies outside the data plate: importance-weighted NLL needs every latent "
                             "and observed site to be local to a data point")
        # the particle plate broadcasts every site, so log_p has both the particle and the data dimension
        log_p = site["fn"].log_prob(site["value"])
        moved = log_p.movedim((particle_dim, data_frames[0].dim), (0, 1))
        total = total + moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)
    return total


def importance_log_weights(model, guide, x, y=None, particles: int = 100, max_plate_nesting: int | None = None):
    """log p(x, z_k) - log q(z_k | x) for k = 1..particles, shape (particles, B); no gradient (an evaluation).

    The log densities are computed under ``no_grad`` too, not only the traces: a learned prior (a flow) evaluates
    its own parameters inside ``log_prob``, and a graph hanging off each pass's weights made the running log-sum-exp
    of :func:`importance_nll` hold every pass's intermediates (about 300 MB per pass for a flow prior).
    """
    if max_plate_nesting is None:
        max_plate_nesting = max_plate_nesting_of(model, guide, x, y)
    particle_dim = -(max_plate_nesting + 1)
    plate = pyro.plate(PARTICLE_PLATE, particles, dim=particle_dim)
    with torch.no_grad():
        guide_trace = poutine.trace(plate(guide)).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(plate(model), trace=guide_trace)).get_trace(x, y)
        guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
        return _per_point_log_prob(model_trace, particle_dim) - _per_point_log_prob(guide_trace, particle_dim)


def _trim_heap() -> None:
    """Hand glibc's freed heap blocks back to the system.

    Flow priors allocate many temporaries of varying sizes per importance-sampling pass; glibc keeps the freed
    blocks fragmented in its heap, and the resident size grew by about 200 MB per ``importance_nll`` call (the Python
    heap of tensors stayed constant; with a lower mmap threshold it stayed flat). ``malloc_trim`` returns them.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def importance_nll(model, guide, x, y=None, samples: int = 1000, batch_size: int = 100,
                   particles_per_pass: int = 250) -> torch.Tensor:
    """Per-point -log p(x) estimates (nats) with ``samples`` importance samples, bounded memory."""
    if samples < 1:
        raise ValueError(f"--iw-samples must be >= 1, got {samples}")
    nesting = max_plate_nesting_of(model, guide, x, y)
    out = []
    for sl in _chunks(x.shape[0], batch_size):
        xb, yb = x[sl], None if y is None else y[sl]
        running = None
        for part in _chunks(samples, particles_per_pass):
            log_w = importance_log_weights(model, guide, xb, yb, part.stop - part.start, nesting)
            chunk = torch.logsumexp(log_w, 0)
            running = chunk if running is None else torch.logaddexp(running, chunk)
        out.append(-(running - math.log(samples)))
        if x.device.type == "cpu":
            _trim_heap()
    return torch.cat(out)


def active_units(guide, x, threshold: float = 0.01, batch_size: int = 1000) -> tuple[int, list[float]]:
    """Number of latent dimensions whose posterior mean varies across data (Cov_x E[z_j|x] > threshold)."""
    with torch.no_grad():
        means = torch.cat([guide.encode(x[sl])[0] for sl in _chunks(x.shape[0], batch_size)])
    variance = means.var(0)
    return int((variance > threshold).sum()), variance.tolist()
