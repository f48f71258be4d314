"""A VIB trained on a discrete joint against the exact IB curve of that joint (all numbers in nats)."""

import numpy as np
import pytest
import torch

from pyroib.exact import entropy, mutual_information
from pyroib.vib_vs_exact import example_joint, fit_vib_discrete, information_estimates, plane

P_XY = example_joint(8, 3, seed=0)
BETAS_IB = np.geomspace(1.0, 200.0, 80)
# β_VIB = 0.1 is β_IB = 10, past the exact curve's first transitions (β_IB ≈ 3.6 and 5.7): informative.
# β_VIB = 0.5 is β_IB = 2, below the first transition, where the exact optimum is the trivial encoder.
INFORMATIVE, TRIVIAL = 0.1, 0.5
STEPS = 400


@pytest.fixture(scope="module")
def result():
    return plane(P_XY, BETAS_IB, [INFORMATIVE, TRIVIAL], steps=STEPS)


def mc_margin(point, name):
    return 3 * point[f"{name}_se"] + 1e-3


class FixedEncoder:
    """A stand-in guide whose q(z|x) = N(loc[x], scale² I), for checking the estimator against closed forms."""

    def __init__(self, loc, scale):
        self.loc, self.scale = torch.as_tensor(loc, dtype=torch.float32), scale

    def encode(self, x):
        loc = x @ self.loc
        return loc, torch.full_like(loc, self.scale)


def test_estimates_match_closed_forms_at_the_extremes():
    n_x = P_XY.shape[0]
    # far-apart, nearly deterministic encoders: Z reveals X, so I(X;Z) = H(X) and I(Z;Y) = I(X;Y)
    separated = information_estimates(P_XY, FixedEncoder(50 * np.eye(n_x, 2 * n_x), 0.1), samples=500)
    assert separated["i_xz"] == pytest.approx(entropy(P_XY.sum(1)), abs=1e-3)
    assert separated["i_zy"] == pytest.approx(mutual_information(P_XY), abs=1e-3)
    # one shared encoder: Z is independent of X
    shared = information_estimates(P_XY, FixedEncoder(np.zeros((n_x, 2)), 1.0), samples=500)
    assert shared["i_xz"] == pytest.approx(0.0, abs=1e-9)
    assert shared["i_zy"] == pytest.approx(0.0, abs=1e-9)


def test_vib_points_lie_on_or_below_the_exact_curve(result):
    # The IB curve bounds I(Z;Y) at given I(X;Z) for every encoder. Allowances: 3 Monte Carlo standard errors, and
    # 0.01 nats for the interpolating chord on the 80-point grid and annealing following a local branch.
    for point in result.points:
        bound = result.curve_at(point["i_xz"])
        assert point["i_zy"] <= bound + mc_margin(point, "i_zy") + 0.01, point


def test_informative_vib_lands_near_the_exact_curve(result):
    point = result.points[0]
    assert point["i_xz"] > 0.3 and point["i_zy"] > 0.1  # really informative, not the trivial corner
    # 0.05 nats is a quarter of I(X;Y) ≈ 0.23: room for a Gaussian encoder (whose clusters overlap, unlike the exact
    # IB's discrete T) and for 400 Adam steps; measured gap ≈ 0.017. A failed fit (collapse, or a fit that
    # ignores β) misses the curve by far more: at I(X;Z) ≈ 0.7 the curve is at ≈ 0.15.
    assert result.curve_at(point["i_xz"]) - point["i_zy"] < 0.05


def test_below_the_first_transition_the_vib_collapses_as_the_exact_ib_does(result):
    first_transition = result.curve.transitions[0][0]
    point = result.points[1]
    assert point["beta_ib"] < first_transition
    assert point["i_xz"] < 0.02 and point["i_zy"] < 0.01


def test_variational_bounds_bracket_the_monte_carlo_estimates(result):
    for point in result.points:
        assert point["rate"] >= point["i_xz"] - mc_margin(point, "i_xz")
        assert point["i_zy_lower"] <= point["i_zy"] + mc_margin(point, "i_zy") + 3e-3  # CE itself is MC (2000 z)
        assert point["beta_ib"] == pytest.approx(1 / point["beta_vib"])


@pytest.mark.parametrize(
    "p_xy, match",
    [
        (np.array([[0.5, 0.2], [0.2, 0.2]]), "sum"),
        (np.array([[0.5, -0.1], [0.4, 0.2]]), "negative"),
        (np.array([0.5, 0.5]), "2-d"),
    ],
)
def test_bad_joint_raises(p_xy, match):
    with pytest.raises(ValueError, match=match):
        fit_vib_discrete(p_xy, 0.1, steps=1)


@pytest.mark.parametrize("beta", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="beta"):
        fit_vib_discrete(P_XY, beta, steps=1)
