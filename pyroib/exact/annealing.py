r"""The IB curve by deterministic annealing in β, and the β values where the optimal T gains clusters.

For β <= 1 the optimum of I(X;T) - β I(T;Y) is the trivial encoder (one effective cluster), since
I(T;Y) <= I(X;T). The trivial encoder stays a stable fixed point of the IB equations up to β = 1 / ρ_m², ρ_m the
Hirschfeld–Gebelein–Rényi maximal correlation of X and Y (the second singular value of
p(x,y) / sqrt(p(x) p(y))); for jointly Gaussian and doubly symmetric binary pairs it is also the global optimum up
to there. In general the global optimum may leave it earlier, at β = 1 / s* with s* >= ρ_m² the strong
data-processing (hypercontractivity) constant of p(x,y), through a jump that following one local branch does not
see; the births and cold starts below find such jumps (on the benchmark joint of benchmarks/ib_plane.py the first
transition is at β = 3.31, below 1 / ρ_m² = 3.55). As β grows the optimum goes through bifurcations where a
cluster becomes unstable and splits (Tishby, Pereira & Bialek 1999). Annealing follows this path: it starts from
one cluster at the smallest β and, at each next β, reuses the previous encoder after

1. merging clusters that are the same in effect (equal p(y|t): merging them changes neither information term),
2. dealing the |T| available slots out among the merged clusters, every slot a copy of its cluster,
3. perturbing the copies multiplicatively so that an unstable cluster can split,

and iterates the IB equations. ``restarts`` different perturbations are tried per β, with two other kinds of start:
births (one letter moved into a new cluster of its own, which no perturbation of existing clusters proposes) and
cold random encoders; the lowest Lagrangian is kept. Checked against many-restart ``iterative_ib`` at every β of
dense grids (tests/test_exact_global.py).

Effective cardinality counts clusters with mass above ``mass_tol`` whose decoders p(y|t) differ by at least
``merge_tol`` in total variation. Just above a bifurcation the two halves of a split cluster differ by only
O(sqrt(β - β_c)), so a transition is located at the first grid β where the split has grown past ``merge_tol``:
refine the grid around a transition to locate it more finely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ib import IBSolution, iterate_ib, prepare, summarise
from .measures import check_cardinality, check_count, check_iteration_controls, check_positive, read_only


@dataclass(frozen=True, eq=False)
class IBCurve:
    """Annealed IB solutions over an increasing β grid; information terms in nats.

    ``cardinalities[k]`` is the effective number of clusters at ``betas[k]``; ``transitions`` lists
    (β, new cardinality) at every grid β where it differs from the point before (annealing starts from one
    cluster, so a first point with more than one cluster is a transition too).
    """

    betas: np.ndarray
    i_xt: np.ndarray
    i_ty: np.ndarray
    lagrangians: np.ndarray
    cardinalities: np.ndarray
    converged: np.ndarray
    transitions: tuple[tuple[float, int], ...]
    solutions: tuple[IBSolution, ...]


def effective_clusters(p_t, p_y_given_t, *, mass_tol: float = 1e-6, merge_tol: float = 1e-4) -> np.ndarray:
    """Label each cluster with its effective cluster: -1 for mass <= ``mass_tol``, else a group index.

    Clusters join a group when the total variation between their p(y|t) and the group's heaviest member is below
    ``merge_tol``; groups are numbered by decreasing mass of that member. The effective cardinality is
    ``labels.max() + 1``.
    """
    p_t, p_y_given_t = np.asarray(p_t, dtype=np.float64), np.asarray(p_y_given_t, dtype=np.float64)
    labels = np.full(p_t.size, -1)
    representatives: list[np.ndarray] = []
    for t in np.argsort(-p_t, kind="stable"):
        if p_t[t] <= mass_tol:
            break
        distances = [0.5 * np.abs(p_y_given_t[t] - rep).sum() for rep in representatives]
        if distances and min(distances) < merge_tol:
            labels[t] = int(np.argmin(distances))
        else:
            labels[t] = len(representatives)
            representatives.append(p_y_given_t[t])
    return labels


def ib_curve(
    p_xy,
    betas,
    *,
    n_clusters: int | None = None,
    restarts: int = 3,
    seed: int | None = 0,
    perturbation: float = 0.1,
    tol: float = 1e-9,
    max_iter: int = 5_000,
    mass_tol: float = 1e-6,
    merge_tol: float = 1e-4,
    births: int = 16,
    cold_starts: int | None = None,
) -> IBCurve:
    """Trace the IB curve (I(X;T), I(T;Y)) over a strictly increasing grid of ``betas`` by annealing.

    ``n_clusters`` = |T| defaults to the number of letters x with p(x) > 0, enough to reach the end point
    (H(X), I(X;Y)) at large β. ``perturbation`` is the relative size of the multiplicative noise that lets a
    cluster split; ``tol`` and ``max_iter`` control each run of the IB equations; ``mass_tol`` and ``merge_tol``
    define effectively distinct clusters (see ``effective_clusters``). ``births`` is how many letters per β are
    also tried as a new cluster of their own (all of them when |X| is at most that): a split only perturbs copies of
    existing clusters, and never proposes a cluster that is born holding a single letter. ``cold_starts`` random
    encoders per β (default: ``restarts``) join the candidates too, so that the path cannot stay in a basin that a
    larger β no longer favours; the lowest Lagrangian over all candidates is kept.
    """
    problem = prepare(p_xy)
    betas = _check_increasing_betas(betas)
    n_clusters = check_cardinality(problem.p_x.size if n_clusters is None else n_clusters)
    restarts = check_count(restarts, "restarts")
    births = check_count(births, "births", minimum=0)
    cold_starts = restarts if cold_starts is None else check_count(cold_starts, "cold_starts", minimum=0)
    perturbation = check_positive(perturbation, "perturbation")
    tol, max_iter = check_iteration_controls(tol, max_iter)
    rng = np.random.default_rng(seed)

    merged = np.ones((problem.p_x.size, 1))
    previous_cardinality = 1
    solutions, cardinalities, transitions = [], [], []
    for beta in betas:
        best = None
        starts = [_split(merged, n_clusters, perturbation, rng) for _ in range(restarts)]
        starts += [_split(born, n_clusters, perturbation, rng) for born in _births(merged, n_clusters, births, rng)]
        # cold starts too: a greedy path can settle in a basin that a later β no longer favours
        starts += [rng.dirichlet(np.ones(n_clusters), size=problem.p_x.size) for _ in range(cold_starts)]
        for start in starts:
            encoder, converged, iterations = iterate_ib(problem, start, beta, tol, max_iter)
            candidate = summarise(problem, encoder, beta, False, converged, iterations)
            if best is None or candidate.lagrangian < best.lagrangian:
                best, best_encoder = candidate, encoder
        labels = effective_clusters(best.p_t, best.p_y_given_t, mass_tol=mass_tol, merge_tol=merge_tol)
        cardinality = int(labels.max()) + 1
        if cardinality != previous_cardinality:
            transitions.append((float(beta), cardinality))
        previous_cardinality = cardinality
        merged = _merge(best_encoder, best.p_y_given_t, labels)
        solutions.append(best)
        cardinalities.append(cardinality)

    return IBCurve(
        betas=read_only(betas),
        i_xt=read_only(np.array([s.i_xt for s in solutions])),
        i_ty=read_only(np.array([s.i_ty for s in solutions])),
        lagrangians=read_only(np.array([s.lagrangian for s in solutions])),
        cardinalities=read_only(np.array(cardinalities)),
        converged=read_only(np.array([s.converged for s in solutions])),
        transitions=tuple(transitions),
        solutions=tuple(solutions),
    )


def _merge(encoder: np.ndarray, p_y_given_t: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sum the encoder columns of each effective cluster.

    A cluster below ``mass_tol`` joins the group whose decoder is nearest in total variation rather than being
    dropped: a rare letter x may be its only member, and dropping it would leave that row empty.
    """
    representatives = np.array([p_y_given_t[labels == group][0] for group in range(labels.max() + 1)])
    labels = labels.copy()
    for t in np.flatnonzero(labels < 0):
        labels[t] = np.abs(representatives - p_y_given_t[t]).sum(axis=1).argmin()
    merged = np.zeros((encoder.shape[0], representatives.shape[0]))
    np.add.at(merged.T, labels, encoder.T)
    return merged / merged.sum(axis=1, keepdims=True)


def _births(merged: np.ndarray, n_clusters: int, births: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Encoders with one letter moved into a new cluster of its own, for up to ``births`` letters (random ones when
    there are more), while there is a free slot for it."""
    if merged.shape[1] >= n_clusters or births == 0:
        return []
    letters = np.arange(merged.shape[0])
    if letters.size > births:
        letters = rng.choice(letters, size=births, replace=False)
    out = []
    for x in letters:
        born = np.concatenate([merged, np.zeros((merged.shape[0], 1))], axis=1)
        born[x] = 0.0
        born[x, -1] = 1.0
        out.append(born)
    return out


def _split(merged: np.ndarray, n_clusters: int, perturbation: float, rng: np.random.Generator) -> np.ndarray:
    """Deal ``n_clusters`` slots round-robin over the merged clusters and perturb every copy.

    There are never more merged clusters than slots (they were made from the slots). Each copy of a cluster gets
    an equal share of its column times (1 + perturbation · u), u uniform on [-1, 1] independently per (x, copy):
    the copies start near the symmetric fixed point, which the IB equations leave only where splitting lowers
    the Lagrangian.
    """
    owner = np.arange(n_clusters) % merged.shape[1]
    copies = np.bincount(owner)
    start = merged[:, owner] / copies[owner]
    start = start * (1.0 + perturbation * rng.uniform(-1.0, 1.0, size=start.shape))
    return start / start.sum(axis=1, keepdims=True)


def _check_increasing_betas(betas) -> np.ndarray:
    betas = np.array(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-d sequence, got shape {betas.shape}")
    if not np.all(np.isfinite(betas)) or np.any(betas <= 0):
        raise ValueError(f"every beta must be finite and > 0, got min {np.min(betas)}; drop the others")
    if np.any(np.diff(betas) <= 0):
        raise ValueError("betas must be strictly increasing for annealing; pass np.unique(betas) (sorted)")
    return betas
