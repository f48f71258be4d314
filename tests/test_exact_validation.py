"""Measures against exact values, and the errors raised for bad input by every exact solver."""

import numpy as np
import pytest

from pyroib.exact import (
    blahut_arimoto,
    deterministic_ib,
    entropy,
    ib_curve,
    iterative_ib,
    mutual_information,
    nats_to,
    rate_distortion_curve,
)

GOOD_JOINT = np.array([[0.3, 0.1], [0.1, 0.5]])
HAMMING_2 = 1.0 - np.eye(2)


def test_entropy_and_mutual_information_exact_values():
    assert entropy(np.full(8, 1 / 8)) == pytest.approx(np.log(8.0))
    assert entropy(np.full(8, 1 / 8), units="bits") == pytest.approx(3.0)
    assert entropy([1.0, 0.0]) == 0.0
    assert mutual_information(np.outer([0.2, 0.8], [0.5, 0.25, 0.25])) == pytest.approx(0.0, abs=1e-15)
    assert mutual_information(np.diag([0.25, 0.75])) == pytest.approx(entropy([0.25, 0.75]))
    assert mutual_information(np.eye(4) / 4, units="bits") == pytest.approx(2.0)
    np.testing.assert_allclose(nats_to(np.array([np.log(2.0), np.log(4.0)]), "bits"), [1.0, 2.0])


def test_normalisation_tolerance_is_relative_1e_8():
    assert np.isfinite(mutual_information(GOOD_JOINT * (1 + 5e-9)))
    with pytest.raises(ValueError, match="sums to"):
        mutual_information(GOOD_JOINT * (1 + 5e-8))


JOINT_CASES = {
    "not normalised": (GOOD_JOINT * 0.9, "sums to"),
    "negative": (np.array([[0.6, -0.1], [0.1, 0.4]]), "negative"),
    "nan": (np.array([[0.5, np.nan], [0.1, 0.4]]), "non-finite"),
    "inf": (np.array([[0.5, np.inf], [0.1, 0.4]]), "non-finite"),
    "not a matrix": (np.array([0.5, 0.5]), "2-d"),
}


@pytest.mark.parametrize(
    "solver",
    [
        lambda p: iterative_ib(p, 2.0, 2),
        lambda p: deterministic_ib(p, 2.0, 2),
        lambda p: ib_curve(p, [1.0, 2.0]),
        mutual_information,
    ],
    ids=["iterative_ib", "deterministic_ib", "ib_curve", "mutual_information"],
)
@pytest.mark.parametrize("case", JOINT_CASES, ids=list(JOINT_CASES))
def test_bad_joints_raise(solver, case):
    joint, message = JOINT_CASES[case]
    with pytest.raises(ValueError, match=message):
        solver(joint)


@pytest.mark.parametrize("beta", [0.0, -1.0, np.inf, np.nan])
@pytest.mark.parametrize("solver", [iterative_ib, deterministic_ib])
def test_beta_must_be_positive_and_finite(solver, beta):
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        solver(GOOD_JOINT, beta, 2)


def test_ib_curve_betas_must_be_positive_and_increasing():
    with pytest.raises(ValueError, match="> 0"):
        ib_curve(GOOD_JOINT, [0.0, 1.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        ib_curve(GOOD_JOINT, [2.0, 1.0])
    with pytest.raises(ValueError, match="non-empty"):
        ib_curve(GOOD_JOINT, [])


@pytest.mark.parametrize("solver", [iterative_ib, deterministic_ib])
def test_cardinality_must_be_a_positive_integer(solver):
    with pytest.raises(ValueError, match="cardinality of T"):
        solver(GOOD_JOINT, 2.0, 0)
    with pytest.raises(TypeError, match="integer"):
        solver(GOOD_JOINT, 2.0, 1.5)
    with pytest.raises(ValueError, match="restarts"):
        solver(GOOD_JOINT, 2.0, 2, restarts=0)
    with pytest.raises(ValueError, match="cardinality of T"):
        ib_curve(GOOD_JOINT, [1.0], n_clusters=0)


def test_single_cluster_is_allowed_and_trivial():
    solution = iterative_ib(GOOD_JOINT, 50.0, 1)
    assert solution.i_xt == pytest.approx(0.0, abs=1e-15) and solution.i_ty == pytest.approx(0.0, abs=1e-15)


def test_distortion_shape_and_values_are_checked():
    with pytest.raises(ValueError, match="3 rows but p_x has 2"):
        blahut_arimoto([0.5, 0.5], np.ones((3, 2)), 1.0)
    with pytest.raises(ValueError, match="2-d"):
        blahut_arimoto([0.5, 0.5], np.ones(2), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        blahut_arimoto([0.5, 0.5], np.array([[0.0, np.inf], [1.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        blahut_arimoto([0.5, 0.5], np.array([[0.0, np.nan], [1.0, 0.0]]), 1.0)


def test_source_slope_and_iteration_controls_are_checked():
    with pytest.raises(ValueError, match="p_x sums to"):
        blahut_arimoto([0.5, 0.6], HAMMING_2, 1.0)
    with pytest.raises(ValueError, match="negative"):
        blahut_arimoto([1.5, -0.5], HAMMING_2, 1.0)
    with pytest.raises(ValueError, match="slope must be finite and >= 0"):
        blahut_arimoto([0.5, 0.5], HAMMING_2, -1.0)
    with pytest.raises(ValueError, match="slope"):
        rate_distortion_curve([0.5, 0.5], HAMMING_2, [1.0, np.nan])
    with pytest.raises(ValueError, match="max_iter"):
        blahut_arimoto([0.5, 0.5], HAMMING_2, 1.0, max_iter=0)
    with pytest.raises(ValueError, match="tol"):
        iterative_ib(GOOD_JOINT, 1.0, 2, tol=0.0)
    with pytest.raises(ValueError, match="initial_marginal needs 2"):
        blahut_arimoto([0.5, 0.5], HAMMING_2, 1.0, initial_marginal=[1.0])


def test_units_are_checked_and_results_are_read_only():
    with pytest.raises(ValueError, match="'nats' or 'bits'"):
        entropy([0.5, 0.5], units="bans")
    with pytest.raises(TypeError, match="real numbers"):
        entropy(["a", "b"])
    solution = iterative_ib(GOOD_JOINT, 3.0, 2)
    with pytest.raises(ValueError):
        solution.encoder[0, 0] = 1.0
