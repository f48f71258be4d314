"""The annealed IB curve: its shape, its end points and where the number of clusters changes."""

import numpy as np
import pytest

from pyroib.exact import effective_clusters, entropy, ib_curve, mutual_information


def second_singular_value_squared(p_xy):
    """ρ_m², the squared maximal correlation: the trivial encoder becomes unstable at β = 1 / ρ_m²."""
    p_x, p_y = p_xy.sum(axis=1), p_xy.sum(axis=0)
    return np.linalg.svd(p_xy / np.sqrt(np.outer(p_x, p_y)), compute_uv=False)[1] ** 2


# Two well separated groups of letters, {0, 1} and {2, 3}, each of two similar letters: annealing should first
# split the groups apart, then separate the letters inside them.
HIERARCHICAL = np.array([0.3, 0.2, 0.25, 0.25])[:, None] * np.array(
    [[0.80, 0.15, 0.05], [0.70, 0.25, 0.05], [0.05, 0.25, 0.70], [0.10, 0.10, 0.80]]
)
GRID = np.geomspace(1.0, 1000.0, 70)
GRID_RATIO = GRID[1] / GRID[0]


@pytest.fixture(scope="module")
def hierarchical_curve():
    return ib_curve(HIERARCHICAL, GRID, seed=0)


def test_curve_starts_at_the_origin(hierarchical_curve):
    # At β <= 1 the trivial encoder is optimal because I(T;Y) <= I(X;T).
    assert hierarchical_curve.i_xt[0] < 1e-9 and hierarchical_curve.i_ty[0] < 1e-9
    assert hierarchical_curve.cardinalities[0] == 1


def test_curve_is_non_decreasing_and_concave_with_slope_one_over_beta(hierarchical_curve):
    # On the optimal IB curve dI(T;Y)/dI(X;T) = 1/β, and the curve is concave, so the chord between the points
    # at β_k < β_k+1 has a slope in [1/β_k+1, 1/β_k].
    i_xt, i_ty = hierarchical_curve.i_xt, hierarchical_curve.i_ty
    assert np.all(np.diff(i_xt) >= -1e-9) and np.all(np.diff(i_ty) >= -1e-9)
    d_xt, d_ty = np.diff(i_xt), np.diff(i_ty)
    moved = d_xt > 1e-6
    assert moved.sum() > 30
    chord = d_ty[moved] / d_xt[moved]
    assert np.all(chord <= 1.0 / GRID[:-1][moved] + 1e-6)
    assert np.all(chord >= 1.0 / GRID[1:][moved] - 1e-6)
    assert np.all(np.diff(chord) <= 1e-6)


def test_curve_saturates_at_entropy_and_mutual_information(hierarchical_curve):
    p_x = HIERARCHICAL.sum(axis=1)
    assert hierarchical_curve.i_xt[-1] == pytest.approx(entropy(p_x), abs=1e-3)
    assert hierarchical_curve.i_ty[-1] == pytest.approx(mutual_information(HIERARCHICAL), abs=1e-6)
    assert hierarchical_curve.cardinalities[-1] == 4


def test_transitions_go_one_cluster_at_a_time_from_the_instability_threshold(hierarchical_curve):
    transitions = hierarchical_curve.transitions
    assert [cardinality for _, cardinality in transitions] == [2, 3, 4]
    assert np.all(np.diff(hierarchical_curve.cardinalities) >= 0)
    critical = 1.0 / second_singular_value_squared(HIERARCHICAL)
    # The split grows like sqrt(β - β_c), so it may need one more grid step to pass merge_tol.
    assert critical < transitions[0][0] <= critical * GRID_RATIO**2


def test_binary_symmetric_source_splits_once_at_its_critical_beta():
    flip = 0.1
    p_xy = np.array([[1 - flip, flip], [flip, 1 - flip]]) / 2
    critical = 1.0 / (1.0 - 2.0 * flip) ** 2
    assert critical == pytest.approx(1.0 / second_singular_value_squared(p_xy))
    betas = np.geomspace(1.0, 20.0, 40)
    curve = ib_curve(p_xy, betas, n_clusters=3)
    assert len(curve.transitions) == 1
    beta, cardinality = curve.transitions[0]
    assert cardinality == 2
    assert critical < beta <= critical * (betas[1] / betas[0]) ** 2
    assert np.all(curve.i_xt[betas < critical] < 1e-8)


def test_annealing_does_no_worse_than_cold_starts_on_a_random_joint():
    from pyroib.exact import iterative_ib

    rng = np.random.default_rng(1)
    p_xy = rng.dirichlet(np.full(30, 0.3)).reshape(6, 5)
    betas = np.geomspace(1.0, 20.0, 25)
    curve = ib_curve(p_xy, betas, n_clusters=3, restarts=2)
    cold = iterative_ib(p_xy, 20.0, 3, restarts=3, seed=0)
    assert curve.lagrangians[-1] <= cold.lagrangian + 1e-6


def test_effective_clusters_merges_equal_decoders_and_ignores_empty_ones():
    p_t = np.array([0.5, 0.3, 0.2, 1e-9])
    decoders = np.array([[0.2, 0.8], [0.2 + 1e-6, 0.8 - 1e-6], [0.9, 0.1], [0.5, 0.5]])
    labels = effective_clusters(p_t, decoders)
    np.testing.assert_array_equal(labels, [0, 0, 1, -1])
