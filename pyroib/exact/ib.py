r"""The information bottleneck of a discrete joint p(x, y), solved exactly by its self-consistent equations.

**Iterative IB** (Tishby, Pereira & Bialek 1999). For a trade-off β > 0 and a bottleneck T with |T| letters, the
stationary points of the Lagrangian I(X;T) - β I(T;Y) over encoders p(t|x) satisfy

    p(t|x) = p(t) exp(-β KL[p(y|x) || p(y|t)]) / Z(x, β),
    p(t) = Σ_x p(x) p(t|x),        p(y|t) = Σ_x p(y|x) p(x|t).

Iterating these equations never increases the Lagrangian, but it stops at a *local* optimum that depends on the
start; ``iterative_ib`` therefore runs several random starts and keeps the lowest Lagrangian.

**Deterministic IB** (Strouse & Schwab 2017) replaces I(X;T) by H(T), i.e. minimises H(T) - β I(T;Y); its optimum
is a hard assignment t = f(x) found by iterating f(x) = argmax_t [log p(t) - β KL(p(y|x) || p(y|t))] until no
assignment changes.

Conventions: everything is in nats. A letter x with p(x) = 0 carries no information; its encoder row is set to
p(t) (IB) or to the most probable cluster (DIB), which changes none of the information terms. Where p(y|t) = 0
while p(y|x) > 0 the KL divergence is infinite; it is evaluated with log p(y|t) floored at log(tiny) (about
-708), which keeps such assignments at zero probability without producing nan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import entr, rel_entr

from .measures import check_cardinality, check_count, check_iteration_controls, check_joint, check_positive, read_only

_TINY = np.finfo(np.float64).tiny
_FLUSH_EXPONENT = 700.0


@dataclass(frozen=True, eq=False)
class IBSolution:
    """A solution of the (deterministic) IB at one β. Information terms in nats.

    ``encoder[x, t]`` = p(t|x) (one-hot rows for the deterministic IB), ``p_t`` the cluster marginal,
    ``p_y_given_t[t, y]`` the decoder (rows of empty clusters are zero). ``lagrangian`` is the minimised objective:
    I(X;T) - β I(T;Y) for the IB, H(T) - β I(T;Y) for the deterministic IB.
    """

    beta: float
    encoder: np.ndarray
    p_t: np.ndarray
    p_y_given_t: np.ndarray
    i_xt: float
    i_ty: float
    h_t: float
    lagrangian: float
    deterministic: bool
    converged: bool
    iterations: int

    @property
    def assignment(self) -> np.ndarray:
        """The most probable cluster of each x (the hard assignment f(x) for the deterministic IB)."""
        return self.encoder.argmax(axis=1)


@dataclass(frozen=True)
class _Problem:
    """A checked joint restricted to the letters x with p(x) > 0, in the forms the updates need."""

    p_xy_support: np.ndarray
    support: np.ndarray
    p_x: np.ndarray
    p_y: np.ndarray
    p_y_given_x: np.ndarray


def prepare(p_xy) -> _Problem:
    p_xy = check_joint(p_xy)
    p_x_full = p_xy.sum(axis=1)
    support = p_x_full > 0
    p_x = p_x_full[support]
    return _Problem(
        p_xy_support=p_xy[support],
        support=support,
        p_x=p_x,
        p_y=p_xy.sum(axis=0),
        p_y_given_x=p_xy[support] / p_x[:, None],
    )


def cluster_statistics(problem: _Problem, encoder: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p(t), the joint p(t, y) and p(y|t) of an encoder given on the support of p(x)."""
    p_t = problem.p_x @ encoder
    # (p_xy^T encoder)^T rather than encoder^T p_xy: the same numbers, but OpenBLAS runs this order ~3x faster.
    joint_ty = (problem.p_xy_support.T @ encoder).T
    p_y_given_t = np.divide(joint_ty, p_t[:, None], out=np.zeros_like(joint_ty), where=p_t[:, None] > 0)
    return p_t, joint_ty, p_y_given_t


def _assignment_logits(problem: _Problem, beta: float, p_t: np.ndarray, p_y_given_t: np.ndarray) -> np.ndarray:
    """log p(t) - β KL(p(y|x) || p(y|t)) up to a per-x constant (the -β H(Y|x) term cancels in normalising)."""
    log_p_y_given_t = np.log(np.maximum(p_y_given_t, _TINY))
    with np.errstate(divide="ignore"):
        log_p_t = np.log(p_t)
    return log_p_t[None, :] + beta * (problem.p_y_given_x @ log_p_y_given_t.T)


def iterate_ib(
    problem: _Problem,
    encoder: np.ndarray,
    beta: float,
    tol: float,
    max_iter: int,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, bool, int]:
    """Iterate the IB equations from ``encoder`` until no entry of p(t|x) moves by ``tol`` or more."""
    for iteration in range(1, max_iter + 1):
        p_t, _, p_y_given_t = cluster_statistics(problem, encoder)
        logits = _assignment_logits(problem, beta, p_t, p_y_given_t)
        # A softmax by hand: each row has a finite maximum (a cluster that x belongs to), so it cannot overflow;
        # weights below e^-700 are flushed to zero, as subnormal numbers slow the next matrix products a hundredfold.
        shifted = logits - logits.max(axis=1, keepdims=True)
        updated = np.exp(shifted, where=shifted > -_FLUSH_EXPONENT, out=np.zeros_like(shifted))
        updated /= updated.sum(axis=1, keepdims=True)
        if callback is not None:
            callback(iteration, updated)
        change = np.abs(updated - encoder).max()
        encoder = updated
        if change < tol:
            return encoder, True, iteration
    return encoder, False, max_iter


def summarise(
    problem: _Problem, encoder: np.ndarray, beta: float, deterministic: bool, converged: bool, iterations: int
) -> IBSolution:
    """Compute every reported quantity from the final encoder, so they describe exactly that encoder."""
    p_t, joint_ty, p_y_given_t = cluster_statistics(problem, encoder)
    i_xt = float(problem.p_x @ rel_entr(encoder, p_t[None, :]).sum(axis=1))
    i_ty = float(rel_entr(joint_ty, np.outer(p_t, problem.p_y)).sum())
    h_t = float(entr(p_t).sum())
    compression = h_t if deterministic else i_xt
    full = np.empty((problem.support.size, encoder.shape[1]))
    full[problem.support] = encoder
    if deterministic:
        full[~problem.support] = np.eye(encoder.shape[1])[p_t.argmax()]
    else:
        full[~problem.support] = p_t
    return IBSolution(
        beta=beta,
        encoder=read_only(full),
        p_t=read_only(p_t),
        p_y_given_t=read_only(p_y_given_t),
        i_xt=max(i_xt, 0.0),
        i_ty=max(i_ty, 0.0),
        h_t=h_t,
        lagrangian=compression - beta * i_ty,
        deterministic=deterministic,
        converged=converged,
        iterations=iterations,
    )


def iterative_ib(
    p_xy,
    beta: float,
    n_clusters: int,
    *,
    restarts: int = 5,
    seed: int | None = 0,
    tol: float = 1e-9,
    max_iter: int = 5_000,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> IBSolution:
    """Minimise I(X;T) - β I(T;Y) over encoders p(t|x) with |T| = ``n_clusters``, from ``restarts`` random starts.

    ``p_xy`` is the joint as a |X| x |Y| matrix. Each start draws every row of p(t|x) uniformly from the simplex
    (seeded by ``seed``); the solution with the lowest Lagrangian is returned. ``callback(iteration, p(t|x))``
    sees every iterate (rows of letters with p(x) > 0 only).
    """
    problem = prepare(p_xy)
    beta = check_positive(beta, "beta")
    n_clusters = check_cardinality(n_clusters)
    restarts = check_count(restarts, "restarts")
    tol, max_iter = check_iteration_controls(tol, max_iter)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        start = rng.dirichlet(np.ones(n_clusters), size=problem.p_x.size)
        encoder, converged, iterations = iterate_ib(problem, start, beta, tol, max_iter, callback)
        candidate = summarise(problem, encoder, beta, False, converged, iterations)
        if best is None or candidate.lagrangian < best.lagrangian:
            best = candidate
    return best


def _cluster_costs(joint: np.ndarray, beta: float) -> np.ndarray:
    """Each cluster's share of H(T) - β I(T;Y) up to a constant: (β - 1) φ(p_t) - β Σ_y φ(p(t, y)), φ(u) = u log u
    (the Lagrangian is a sum of these over clusters plus β Σ_y φ(p(y)))."""
    mass = joint.sum(axis=-1)
    return (beta - 1.0) * -entr(mass) - beta * -entr(joint).sum(axis=-1)


def _polish(problem: _Problem, assignment: np.ndarray, beta: float, n_clusters: int) -> bool:
    """Move letters one at a time to whichever cluster (an empty one too: a new cluster of one letter) lowers
    H(T) - β I(T;Y) most, and merge the pair of clusters whose merger lowers it most, until neither lowers it;
    ``assignment`` is changed in place. Returns whether anything changed. A move changes two clusters' costs, so one
    letter costs O(|T| |Y|) and the mergers O(|T|² |Y|)."""
    joint = np.zeros((n_clusters, problem.p_y.size))
    np.add.at(joint, assignment, problem.p_xy_support)
    moved = False
    improved = True
    while improved:
        improved = _merge_best_pair(joint, assignment, beta)
        moved |= improved
        for x in range(assignment.size):
            row, here = problem.p_xy_support[x], assignment[x]
            without = np.maximum(joint[here] - row, 0.0)  # rounding may leave -1e-17 where x was alone
            gain_here = _cluster_costs(joint[here], beta) - _cluster_costs(without, beta)
            costs_now = _cluster_costs(joint, beta)
            costs_with = _cluster_costs(joint + row, beta)
            change = costs_with - costs_now - gain_here
            change[here] = 0.0
            target = int(change.argmin())
            if change[target] < -1e-12:
                joint[here] = without
                joint[target] += row
                assignment[x] = target
                improved = moved = True
    return moved


def _merge_best_pair(joint: np.ndarray, assignment: np.ndarray, beta: float) -> bool:
    """Merge the two clusters whose union lowers H(T) - β I(T;Y) most, if any pair does (a fixed point of single
    moves can still be improved by moving a whole cluster)."""
    used = np.flatnonzero(joint.sum(axis=1) > 0)
    if used.size < 2:
        return False
    costs = _cluster_costs(joint[used], beta)
    merged = _cluster_costs(joint[used][:, None, :] + joint[used][None, :, :], beta)
    change = merged - costs[:, None] - costs[None, :]
    change[np.tril_indices(used.size)] = np.inf
    a, b = np.unravel_index(int(change.argmin()), change.shape)
    if change[a, b] >= -1e-12:
        return False
    keep, gone = used[a], used[b]
    joint[keep] += joint[gone]
    joint[gone] = 0.0
    assignment[assignment == gone] = keep
    return True


def _random_partition(rng: np.random.Generator, n_letters: int, n_clusters: int, all_clusters: bool) -> np.ndarray:
    """A random hard assignment of ``n_letters`` letters to clusters, every used cluster non-empty.

    The first start uses k = min(|X|, |T|) clusters; later ones draw k uniformly from 1..min(|X|, |T|). With one
    fixed k = |X| every start would be the same partition up to relabelling (one letter per cluster), which the
    iteration leaves only for a nearby local optimum. k distinct random letters seed the k clusters, the rest join
    them uniformly.
    """
    most = min(n_letters, n_clusters)
    k = most if all_clusters else int(rng.integers(1, most + 1))
    clusters = rng.permutation(n_clusters)[:k]
    assignment = clusters[rng.integers(k, size=n_letters)]
    assignment[rng.permutation(n_letters)[:k]] = clusters
    return assignment


def deterministic_ib(
    p_xy, beta: float, n_clusters: int, *, restarts: int = 5, seed: int | None = 0, max_iter: int = 1_000
) -> IBSolution:
    """Minimise H(T) - β I(T;Y) over hard assignments t = f(x) with at most ``n_clusters`` clusters.

    Each start is a random partition (seeded by ``seed``): the first into min(|X|, ``n_clusters``) clusters, the
    others into a number of clusters drawn uniformly from 1 to that, so that starts differ even when |T| >= |X|
    (Strouse & Schwab also start from random assignments); iteration stops when no assignment changes
    (``converged``) or after ``max_iter`` sweeps. The update never refills an empty cluster; the polish between
    fixed points may (a letter moved into a cluster of its own), and may merge two, so the
    result may use fewer than ``n_clusters`` clusters. The lowest H(T) - β I(T;Y) over the starts is returned.
    """
    problem = prepare(p_xy)
    beta = check_positive(beta, "beta")
    n_clusters = check_cardinality(n_clusters)
    restarts = check_count(restarts, "restarts")
    _, max_iter = check_iteration_controls(1.0, max_iter)
    rng = np.random.default_rng(seed)
    one_hot = np.eye(n_clusters)
    best = None
    n_letters = problem.p_x.size
    for restart in range(restarts):
        assignment = _random_partition(rng, n_letters, n_clusters, all_clusters=restart == 0)
        converged, iteration = False, 0
        while iteration < max_iter:
            iteration += 1
            p_t, _, p_y_given_t = cluster_statistics(problem, one_hot[assignment])
            updated = _assignment_logits(problem, beta, p_t, p_y_given_t).argmax(axis=1)
            if not np.array_equal(updated, assignment):
                assignment = updated
                continue
            # a fixed point of the update: polish it by moving single letters, new clusters included, and go on
            # iterating only if that found something better
            if not _polish(problem, assignment, beta, n_clusters):
                converged = True
                break
        candidate = summarise(problem, one_hot[assignment], beta, True, converged, iteration)
        if best is None or candidate.lagrangian < best.lagrangian:
            best = candidate
    return best
