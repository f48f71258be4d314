"""Blahut–Arimoto against closed-form rate–distortion functions (Cover & Thomas, ch. 10)."""

import numpy as np
import pytest

from pyroib.exact import blahut_arimoto, entropy, nats_to, rate_distortion_curve


def binary_entropy(d):
    return entropy([d, 1.0 - d])


HAMMING_2 = 1.0 - np.eye(2)


def test_fair_coin_at_slope_two_matches_reference_numbers():
    point = blahut_arimoto([0.5, 0.5], HAMMING_2, 2.0)
    assert point.converged
    assert point.distortion == pytest.approx(0.119203, abs=1e-6)
    assert point.rate == pytest.approx(0.327813, abs=1e-6)
    assert nats_to(point.rate, "bits") == pytest.approx(0.327813 / np.log(2), abs=1e-6)


@pytest.mark.parametrize("p", [0.2, 0.35, 0.5, 0.9])
@pytest.mark.parametrize("slope", [2.5, 4.0, 6.0])
def test_bernoulli_hamming_points_lie_on_closed_form_curve(p, slope):
    # For a Bernoulli(p) source under Hamming distortion R(D) = H_b(p) - H_b(D) on D <= min(p, 1 - p), and
    # dR/dD = -log((1 - D) / D) = -s puts the slope-s point at D = 1 / (1 + e^s) (inside that range here).
    expected_distortion = 1.0 / (1.0 + np.exp(slope))
    assert expected_distortion <= min(p, 1 - p)
    point = blahut_arimoto([p, 1 - p], HAMMING_2, slope, tol=1e-12)
    assert point.converged
    assert point.distortion == pytest.approx(expected_distortion, abs=1e-9)
    assert point.rate == pytest.approx(binary_entropy(p) - binary_entropy(point.distortion), abs=1e-9)


def test_gaussian_source_squared_error_by_fine_discretisation():
    # N(0, 1) as masses on 200 points over ±6σ (spacing h = 0.06), reproduction on the same grid. Tolerances:
    # the truncated tails hold ~2e-9 of the mass; by Poisson summation a lattice sum of a Gaussian of variance v
    # differs from its integral by ~2 exp(-2π² v / h²) relative, negligible for v = D >= 0.06; so what remains is
    # the solver's stopping error, measured at < 1e-8 in R and D for tol = 1e-8. The bounds leave 100x room.
    grid = np.linspace(-6.0, 6.0, 200)
    p_x = np.exp(-0.5 * grid**2)
    p_x /= p_x.sum()
    variance = p_x @ grid**2
    squared_error = (grid[:, None] - grid[None, :]) ** 2
    slopes = [0.75, 2.0, 8.0]
    curve = rate_distortion_curve(p_x, squared_error, slopes)
    assert curve.converged.all()
    # dR/dD = -1 / (2D) = -s puts the slope-s point at D = 1 / (2s).
    np.testing.assert_allclose(curve.distortions, 1.0 / (2.0 * np.array(slopes)), atol=1e-6)
    np.testing.assert_allclose(curve.rates, 0.5 * np.log(variance / curve.distortions), atol=1e-6)


def test_curve_is_decreasing_convex_with_chord_slopes_between_the_multipliers():
    # On any R(D) curve the chord between the points at slopes s1 < s2 has slope in [-s2, -s1] (convexity).
    rng = np.random.default_rng(3)
    p_x = rng.dirichlet(np.ones(5))
    distortion = rng.uniform(0.0, 2.0, size=(5, 4))
    slopes = np.geomspace(1.0, 30.0, 10)
    curve = rate_distortion_curve(p_x, distortion, slopes, tol=1e-10, max_iter=20_000)
    assert curve.converged.all()
    d_rate, d_distortion = np.diff(curve.rates), np.diff(curve.distortions)
    moved = np.abs(d_distortion) > 1e-7
    assert np.all(d_distortion <= 1e-12) and np.all(d_rate >= -1e-12)
    chord = d_rate[moved] / d_distortion[moved]
    assert np.all(chord <= -slopes[:-1][moved] + 1e-6)
    assert np.all(chord >= -slopes[1:][moved] - 1e-6)


def test_every_iterate_is_a_channel():
    rng = np.random.default_rng(0)
    p_x = rng.dirichlet(np.ones(6))
    distortion = rng.uniform(size=(6, 3))
    row_sums, minima = [], []

    def record(iteration, conditional):
        row_sums.append(conditional.sum(axis=1))
        minima.append(conditional.min())

    point = blahut_arimoto(p_x, distortion, 4.0, max_iter=50, callback=record)
    assert len(row_sums) == point.iterations
    np.testing.assert_allclose(np.array(row_sums), 1.0, atol=1e-12)
    assert min(minima) >= 0.0
    np.testing.assert_allclose(point.conditional.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_bound_gap_certifies_the_lagrangian(iterations):
    # The exact minimum of R + sD for Bernoulli(p) under Hamming distortion is known in closed form; a point
    # stopped early must lie above it by no more than the reported certificate.
    p, slope = 0.2, 3.0
    optimal_distortion = 1.0 / (1.0 + np.exp(slope))
    optimum = binary_entropy(p) - binary_entropy(optimal_distortion) + slope * optimal_distortion
    point = blahut_arimoto([p, 1 - p], HAMMING_2, slope, max_iter=iterations)
    excess = point.rate + slope * point.distortion - optimum
    assert -1e-12 <= excess <= point.bound_gap + 1e-12


def test_huge_slope_with_a_vanishing_start_stays_finite():
    # exp(-800) underflows and the start puts 1e-300 on two letters, so Z(x) underflows in the multiplicative
    # update; the solver must carry on in logs and reach the lossless point R = log 3, D = 0.
    hamming_3 = 1.0 - np.eye(3)
    point = blahut_arimoto(np.full(3, 1 / 3), hamming_3, 800.0, initial_marginal=[1 - 2e-300, 1e-300, 1e-300])
    assert point.converged
    assert point.rate == pytest.approx(np.log(3.0), abs=1e-12)
    assert point.distortion == pytest.approx(0.0, abs=1e-12)


def test_zero_slope_gives_zero_rate():
    point = blahut_arimoto([0.3, 0.7], HAMMING_2, 0.0)
    assert point.rate == pytest.approx(0.0, abs=1e-12)
    assert point.distortion == pytest.approx(0.5, abs=1e-12)
