"""Evaluation of a trained model/guide pair on a data split, in nats per data point: one function,
:func:`evaluate_run`, behind ``pyroib evaluate``, ``report``, ``sweep`` and the evaluation of other priors.

* ``evaluate_run``: everything below for one run, split and prior, as one flat dict (what ``--json`` prints).
* ``split_terms``: the objective's own breakdown (ELBO, rate, distortion, per-dimension KL, extra terms) averaged
  over the split in memory-bounded chunks, with bottleneck weights off (β = 1): the ELBO reported is the true bound.
* ``importance_nll``: -log p(x) estimated with K importance samples from the guide (Burda et al. 2016),
  log p(x) ≈ logsumexp_k [log p(x, z_k) - log q(z_k|x)] - log K, with the K samples drawn in chunks and combined by a
  running logsumexp, so memory stays bounded for K = 5,000. Its expectation is a bound at least as tight as the ELBO.
* ``active_units``: dimensions j with Cov_x(E_q[z_j | x]) > 0.01 (Burda et al. 2016).
"""

from __future__ import annotations

import copy
import ctypes
import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from .clustering import cluster_evaluation
from .full_data import FULL_DATA_MAX_POINTS, full_data_evaluation
from .objectives.core import InfoELBO, choose_site, latent_site_names
from .plates import DATA_PLATE, max_plate_nesting
from .program import is_factor, not_broadcasting

PARTICLE_PLATE = "importance_particles"


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def split_terms(
    model,
    guide,
    objective: InfoELBO,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    batch_size: int = 1000,
    analytic_kl: bool = True,
    processes=None,
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Average of ``objective.terms`` over ``x`` (β = 1, one particle per point): (values, kl_per_dim).

    The rate uses closed-form KL where torch has one (``analytic_kl``): the same expectation as the Monte Carlo
    estimate the training loss uses, without its noise (per-dimension KLs never read negative). With data-parallel
    ``processes`` (:class:`pyroib.distributed.Processes`) the chunks of one process's evaluation are dealt out (chunk
    j to process j mod K) and the sums added up across processes, so every process returns the same averages, those
    of one process up to the order of summation and the random draws; with fewer chunks than processes each process
    evaluates all of them alone.
    """
    from .distributed import total

    chunks = list(_chunks(x.shape[0], batch_size))
    parallel = processes is not None and processes.parallel and len(chunks) >= processes.world
    if parallel:
        chunks = chunks[processes.rank :: processes.world]
    totals: dict[str, torch.Tensor] = {}
    objective = copy.copy(objective)  # the run's objective is left as it was
    objective.analytic_kl = analytic_kl or objective.analytic_kl
    with torch.no_grad():
        for sl in chunks:
            terms = objective.terms(model, guide, x[sl], None if y is None else y[sl])
            n = sl.stop - sl.start
            for k, v in [*terms.values.items(), *((f"kl_per_dim/{k}", v) for k, v in terms.kl_per_dim.items())]:
                totals[k] = totals.get(k, 0.0) + torch.as_tensor(v).detach().double() * n
    points = sum(sl.stop - sl.start for sl in chunks)
    totals["points"] = torch.tensor(float(points), dtype=torch.float64, device=x.device)
    if parallel:
        totals = total(processes, totals)
    count = float(totals.pop("points"))
    prefix = "kl_per_dim/"
    values = {k: float(v) / count for k, v in totals.items() if not k.startswith(prefix)}
    per_dim = {k[len(prefix) :]: (v / count).float().tolist() for k, v in totals.items() if k.startswith(prefix)}
    return values, per_dim


def max_plate_nesting_of(model, guide, x, y) -> int:
    """How many plate dimensions the program uses (so a particle plate can go to their left)."""
    return max_plate_nesting(model, guide, x[:2], None if y is None else y[:2])


def _per_point_log_prob(trace, particle_dim: int) -> torch.Tensor:
    """Σ over sites of log densities, reduced to shape (K, B): every dim but the particle and data dims summed, and
    the values of sites enumerated in the model summed out (log-sum-exp) after their sites are added up."""
    enum_dims = {
        site["infer"]["_enumerate_dim"]
        for site in trace.nodes.values()
        if site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None
    }
    total = 0.0
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_factor(site):  # a program's penalty is not part of p(x) (rule 7)
            continue
        data_frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
        if not data_frames:
            raise ValueError(
                f"site {name!r} lies outside the data plate: importance-weighted NLL needs every latent "
                "and observed site to be local to a data point"
            )
        data_dim = data_frames[0].dim
        keep = {particle_dim, data_dim, *enum_dims}
        # the particle plate broadcasts every site, so log_p has both the particle and the data dimension
        log_p = site["fn"].log_prob(site["value"])
        rank = max(-min(keep), log_p.dim())
        log_p = log_p.reshape((1,) * (rank - log_p.dim()) + log_p.shape)
        others = [d for d in range(-rank, 0) if d not in keep]
        total = total + (log_p.sum(others, keepdim=True) if others else log_p)
    if enum_dims:
        total = torch.logsumexp(total, sorted(enum_dims), keepdim=True)
    moved = total.movedim((particle_dim, data_dim), (0, 1))
    return moved.reshape(moved.shape[0], moved.shape[1], -1).sum(-1)


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
        # sites the model enumerates (absent from the guide) are summed out, left of the particles; the guide's are
        # sampled from q like any other site, a proposal as valid as another
        enumerated = EnumMessenger(first_available_dim=particle_dim - 1)
        model_trace = poutine.trace(enumerated(poutine.replay(plate(model), trace=guide_trace))).get_trace(x, y)
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


# rows (particles × points) per importance-sampling pass. On the CPU, small passes keep each layer's activations in
# cache: at 2,000 rows the 784-400-20 VAE cost 9.1 µs per decoder evaluation against 15.9 µs at 25,000 rows
# (benchmarks/results/iw_speed.md); a GPU keeps the large passes it had
ROWS_PER_PASS = {"cpu": 2048}
ROWS_PER_PASS_ELSEWHERE = 25000


def importance_nll(
    model, guide, x, y=None, samples: int = 1000, batch_size: int = 100, particles_per_pass: int | None = None
) -> torch.Tensor:
    """Per-point -log p(x) estimates (nats) with ``samples`` importance samples, bounded memory. Each pass scores
    ``particles_per_pass`` particles of up to ``batch_size`` points (default: a pass of about
    :data:`ROWS_PER_PASS` rows on the CPU)."""
    if samples < 1:
        raise ValueError(f"--iw-samples must be >= 1, got {samples}")
    if particles_per_pass is None:
        rows = ROWS_PER_PASS.get(x.device.type, ROWS_PER_PASS_ELSEWHERE)
        particles_per_pass = max(1, rows // max(1, min(batch_size, x.shape[0])))
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


def broadcasting_problem(model, guide, x, y=None) -> str | None:
    """None if the program takes a plate of particles left of its data plate (rule 6 of the program contract), else
    the note saying why not: one pass of 2 particles on 2 points, so that any later error is a real one."""
    try:
        importance_log_weights(model, guide, x[:2], None if y is None else y[:2], particles=2)
    except (RuntimeError, ValueError) as error:
        return not_broadcasting(error)
    return None


class PriorSwap(Messenger):
    """Score the model under another prior p'(z) at one latent site: the generative model p'(z) p(x | z) that shares
    the decoder. The run's model is not touched; the swap lasts as long as the handler wraps it."""

    def __init__(self, prior, site: str):
        super().__init__()
        self.prior, self.site = prior, site

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == self.site:
            batch_shape = msg["fn"].batch_shape
            msg["fn"] = self.prior(batch_shape[-1]).expand(batch_shape)


def prior_site(run, x: torch.Tensor, y=None) -> str:
    """The latent site an injected prior occupies: the objective's or program's ``latent_site``, else the only one."""
    with torch.no_grad():
        guide_trace = poutine.trace(run.guide).get_trace(x[:2], None if y is None else y[:2])
        model_trace = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(
            x[:2], None if y is None else y[:2]
        )
    return choose_site(
        latent_site_names(model_trace, guide_trace),
        run.objective.latent_site,
        "latent",
        "Model.latent_site in the program, or --latent-site when training,",
    )


def load_splits(run):
    from .data import load_spec_dataset

    return load_spec_dataset(run.spec, run.device)


def evaluate_run(
    run,
    split: str = "test",
    *,
    iw_samples: int = 100,
    batch_size: int | None = None,
    seed: int = 0,
    full_data_points: int = FULL_DATA_MAX_POINTS,
    prior=None,
    splits=None,
    device: str = "auto",
    checkpoint: str = "last",
) -> dict:
    """ELBO, rate, distortion, IWAE NLL, active units, per-dimension KL, the full-data information terms and the
    program's own metrics of a run on a split, in nats per data point.

    ``run`` is a loaded run or a run directory (then loaded on ``device`` from ``checkpoint``). ``prior`` scores the
    model under another p(z) at the program's latent site (:class:`PriorSwap`; the aggregate posterior of
    :mod:`pyroib.aggregate_prior`, say): the ELBO and IWAE bound are then those of the model p'(z) p(x | z). ``nll_iw``
    estimates -log p(x) and is reported only for a program that observes x (``Model.observes_inputs``); the
    full-data terms cover at most ``full_data_points`` points (0 skips them: their cost is O(M² D)).
    ``batch_size`` is the points per importance pass; by default 100, or under an aggregate prior as many as keep
    its log-density tensors near 256 MB.
    """
    from .run import load_run

    if iw_samples < 0:
        raise ValueError(f"--iw-samples must be >= 0 (0 skips the importance-weighted NLL), got {iw_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if not hasattr(run, "model"):
        run = load_run(run, device, checkpoint)
    capabilities = run.capabilities
    x, y = (splits or load_splits(run)).split(split)
    model, guide = run.model, run.guide
    if prior is not None:
        model = PriorSwap(prior.to(x.device), prior_site(run, x, y))(model)
    batch_size = batch_size or _importance_batch_size(prior, iw_samples)
    torch.manual_seed(seed)
    values, kl_per_dim = split_terms(model, guide, run.objective, x, y, batch_size=max(batch_size, 500))
    result = {
        "split": split,
        "n": int(x.shape[0]),
        "epoch": run.epoch,
        "checkpoint": run.checkpoint,
        "elbo": values.pop("elbo"),
        "rate": values.pop("rate"),
        "distortion": values.pop("distortion"),
    }
    values.pop("loss", None)
    if iw_samples > 0 and capabilities.observes_inputs and not capabilities.importance_sampling:
        result["nll_iw_note"] = (
            "the program declares importance_sampling = False: its ELBO is reported (and its own metrics), no "
            "importance-weighted estimate"
        )
    elif iw_samples > 0 and capabilities.observes_inputs:
        problem = broadcasting_problem(model, guide, x, y)
        if problem is not None:  # the particles are a plate left of the data plate: say why there is no estimate
            result["nll_iw_note"] = problem
        else:
            nll = importance_nll(model, guide, x, y, samples=iw_samples, batch_size=batch_size)
            result["nll_iw"] = float(nll.mean())
            result["iw_samples"] = iw_samples
    if capabilities.encode:
        result["active_units"], result["posterior_mean_variance"] = active_units(guide, x)
    result["kl_per_dim"] = [v for site in sorted(kl_per_dim) for v in kl_per_dim[site]]
    if len(kl_per_dim) > 1:
        result["kl_per_dim_by_site"] = kl_per_dim
    result.update(values)
    if full_data_points > 0:
        result.update(full_data_evaluation(run, x, seed=seed, max_points=full_data_points, prior=prior))
    if capabilities.metrics:
        result.update(run.model.metrics(run.guide, x, y))
    if y is not None and y.dim() == 1 and not y.is_floating_point():
        result.update(cluster_evaluation(model, guide, x, y))
    return result


MEMORY_BUDGET_FLOATS = 2**26  # 256 MB of float32 for the log-density tensors of an aggregate prior


def _importance_batch_size(prior, iw_samples: int) -> int:
    from .priors import AggregatePosterior

    if not isinstance(prior, AggregatePosterior):
        return 100
    # the factorised form broadcasts (particles, batch, D, M); the joint one scores (particles, batch, M) in float64
    # with a few temporaries (DiagonalNormalMixture)
    per_component = 4 if prior.joint else prior.latent_dim
    per_point = min(250, max(iw_samples, 1)) * prior.n_components * per_component
    return max(1, min(100, MEMORY_BUDGET_FLOATS // per_point))
