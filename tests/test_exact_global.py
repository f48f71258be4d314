"""The exact solvers reach global optima: the deterministic IB against exhaustive enumeration of every partition of
X, the annealed IB curve against many-restart runs of the IB equations at every β of a dense grid."""

import numpy as np
import pytest

from pyroib.exact import deterministic_ib, ib_curve, iterative_ib


def partitions(n_letters: int, max_blocks: int):
    """Every partition of range(n_letters) into at most ``max_blocks`` blocks, as restricted growth strings."""

    def grow(prefix, used):
        if len(prefix) == n_letters:
            yield tuple(prefix)
            return
        for block in range(min(used + 1, max_blocks)):
            yield from grow([*prefix, block], max(used, block + 1))

    yield from grow([0], 1)


def dib_lagrangian(p_xy: np.ndarray, assignment, beta: float) -> float:
    """H(T) - β I(T;Y) of the hard assignment t = assignment[x], written out from the definitions (nats)."""
    joint = np.zeros((max(assignment) + 1, p_xy.shape[1]))
    for x, t in enumerate(assignment):
        joint[t] += p_xy[x]
    p_t, p_y = joint.sum(1), p_xy.sum(0)
    h_t = -sum(p * np.log(p) for p in p_t if p > 0)
    i_ty = sum(
        joint[t, y] * np.log(joint[t, y] / (p_t[t] * p_y[y]))
        for t in range(joint.shape[0])
        for y in range(joint.shape[1])
        if joint[t, y] > 0
    )
    return h_t - beta * i_ty


def test_enumeration_counts_partitions():
    assert sum(1 for _ in partitions(5, 5)) == 52  # the Bell number B_5
    assert sum(1 for _ in partitions(4, 2)) == 8  # S(4,1) + S(4,2) = 1 + 7


CASES = [(seed, n_x) for seed in range(4) for n_x in range(2, 8)]


@pytest.mark.parametrize("seed, n_x", CASES)
def test_deterministic_ib_is_global_below_at_and_above_the_size_of_x(seed, n_x):
    rng = np.random.default_rng(100 * seed + n_x)
    n_y = int(rng.integers(2, 5))
    p_xy = rng.dirichlet(np.ones(n_x * n_y)).reshape(n_x, n_y)  # full support: the case that failed most
    beta = float(rng.choice([0.7, 2.0, 5.0, 20.0]))
    for n_clusters in sorted({max(1, n_x - 1), n_x, n_x + 2}):
        best = min(dib_lagrangian(p_xy, f, beta) for f in partitions(n_x, n_clusters))
        found = deterministic_ib(p_xy, beta, n_clusters, seed=seed)
        assert found.lagrangian == pytest.approx(best, abs=1e-9), (n_clusters, found.lagrangian, best)
        assert dib_lagrangian(p_xy, found.assignment, beta) == pytest.approx(found.lagrangian, abs=1e-9)


@pytest.mark.parametrize("seed", range(8))
def test_deterministic_ib_is_global_at_any_beta(seed):
    """β drawn from a continuous range, sparse and dense joints: where fixed points that merging two clusters would
    improve are common."""
    rng = np.random.default_rng(1000 + seed)
    for _ in range(6):
        n_x, n_y = int(rng.integers(3, 7)), int(rng.integers(2, 5))
        p_xy = rng.dirichlet(np.full(n_x * n_y, float(rng.choice([0.3, 1.0])))).reshape(n_x, n_y)
        beta, n_clusters = float(rng.uniform(0.5, 6.0)), int(rng.choice([max(1, n_x - 1), n_x, n_x + 2]))
        best = min(dib_lagrangian(p_xy, f, beta) for f in partitions(n_x, n_clusters))
        assert deterministic_ib(p_xy, beta, n_clusters).lagrangian == pytest.approx(best, abs=1e-9)


# a letter (the last) whose label is certain and whose mass is small: from β ≈ 3 the optimum puts it in a cluster of
# its own, a cluster born holding a single letter, which splitting copies of the one cluster never proposes
ONE_LETTER_CLUSTER = np.array([[0.608, 0.138], [0.094, 0.029], [0.04, 0.021], [0.0, 0.07]])


def test_annealing_proposes_a_cluster_of_one_letter():
    beta = 3.3693281099805
    reference = iterative_ib(ONE_LETTER_CLUSTER, beta, 4, restarts=40, seed=1).lagrangian
    grid = np.geomspace(1.0, beta, 8)
    # annealing alone (no cold starts): splits and births are all that can move it off one cluster
    without_births = ib_curve(ONE_LETTER_CLUSTER, grid, births=0, cold_starts=0)
    with_births = ib_curve(ONE_LETTER_CLUSTER, grid, cold_starts=0)
    assert without_births.lagrangians[-1] > reference + 0.05  # the local branch the split step alone stays on
    assert with_births.lagrangians[-1] == pytest.approx(reference, abs=1e-8)
    assert with_births.cardinalities[-1] == 2 and without_births.cardinalities[-1] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_annealed_curve_is_as_low_as_many_restarts_at_every_beta(seed):
    rng = np.random.default_rng(seed)
    n_x, n_y = int(rng.integers(3, 6)), int(rng.integers(2, 4))
    p_xy = rng.dirichlet(np.full(n_x * n_y, 0.7)).reshape(n_x, n_y)
    betas = np.geomspace(0.8, 40, 16)
    curve = ib_curve(p_xy, betas)
    for beta, lagrangian in zip(betas, curve.lagrangians):
        reference = iterative_ib(p_xy, beta, n_x, restarts=30, seed=1).lagrangian
        # the iterations stop at a tolerance; next to a bifurcation they converge slowly, hence 1e-4 nats
        assert lagrangian <= reference + 1e-4, (beta, lagrangian, reference)
