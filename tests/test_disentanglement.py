"""Disentanglement metrics against answers derived here: codes that are the ground truth (as given, permuted and
rescaled), constant codes, noise, each factor in two codes, and one code for two factors."""

import math

import numpy as np
import pytest
import torch

from pyroib import disentanglement as metrics

SIZES = (3, 6, 8, 5)


class Grid:
    """A ground truth whose observations are its factor values."""

    factor_sizes = SIZES

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(0, size, n) for size in SIZES], 1)

    def observations(self, factors):
        return torch.as_tensor(factors, dtype=torch.float64)


def identity(x):
    return x.numpy()


PERMUTATION, SCALES = [2, 0, 3, 1], np.array([0.5, -3.0, 10.0, 0.01])


def permuted_rescaled(x):
    return x.numpy()[:, PERMUTATION] * SCALES + 7.0


def constant(x):
    return np.zeros((x.shape[0], 4))


_noise = np.random.default_rng(123)


def noise(x):
    return _noise.standard_normal((x.shape[0], 4))


def duplicated(x):
    return np.concatenate([x.numpy(), x.numpy()], 1)


def one_code_for_two(x):
    """Code 0 holds factors 1 and 2 together (a distinct value per pair); codes 1 and 2 hold factors 0 and 3."""
    f = x.numpy()
    return np.stack([f[:, 1] * SIZES[2] + f[:, 2], f[:, 0], f[:, 3]], 1)


def _rng():
    return np.random.default_rng(0)


GROUND_TRUTH = Grid()


@pytest.mark.parametrize("represent", [identity, permuted_rescaled], ids=["identity", "permuted"])
def test_the_ground_truth_itself_scores_at_the_top(represent):
    assert metrics.mig(GROUND_TRUTH, represent, _rng(), num_train=4000)["mig"] > 0.98
    beta = metrics.beta_vae_score(GROUND_TRUTH, represent, _rng(), batch_size=32, num_train=300, num_eval=200)
    assert beta["eval_accuracy"] == 1.0
    factor = metrics.factor_vae_score(
        GROUND_TRUTH, represent, _rng(), batch_size=32, num_train=300, num_eval=2000, num_variance_estimate=2000
    )
    if represent is identity:
        # every factor has a code of zero variance when it is held fixed, so every vote is right
        assert factor["eval_accuracy"] == 1.0 and factor["num_active_dims"] == 4
    else:
        # the code of factor 1 is scaled by 0.01: variance 1e-4 · 35/12 < 0.05, pruned before normalising (as
        # disentanglement_lib does), so the quarter of the votes that hold factor 1 fixed cannot be right
        assert factor["num_active_dims"] == 3
        assert factor["eval_accuracy"] == pytest.approx(0.75, abs=0.03)
    scores = metrics.modularity_and_explicitness(GROUND_TRUTH, represent, _rng(), num_train=3000, num_test=1000)
    assert scores["modularity"] > 0.99 and scores["explicitness_test"] > 0.95


def test_factor_vae_prunes_on_the_standard_deviation_not_the_variance():
    """disentanglement_lib drops a code whose standard deviation is below 0.05: factor 3 (5 values, variance 2)
    scaled by 0.06 has sd 0.085 (variance 0.0072), so it stays, and every vote can be right."""

    def narrow(x):
        return x.numpy() * np.array([1.0, 1.0, 1.0, 0.06])

    factor = metrics.factor_vae_score(
        GROUND_TRUTH, narrow, _rng(), batch_size=32, num_train=300, num_eval=2000, num_variance_estimate=2000
    )
    assert factor["num_active_dims"] == 4 and factor["eval_accuracy"] == 1.0


def test_dci_of_the_ground_truth_constant_codes_and_duplicates():
    truth = metrics.dci(GROUND_TRUTH, permuted_rescaled, _rng(), num_train=1000, num_test=500)
    assert truth["disentanglement"] > 0.95 and truth["completeness"] > 0.95
    assert truth["informativeness_test"] == 1.0
    flat = metrics.dci(GROUND_TRUTH, constant, _rng(), num_train=1000, num_test=500)
    assert flat["disentanglement"] == pytest.approx(0.0, abs=1e-6)
    assert flat["completeness"] == pytest.approx(0.0, abs=1e-6)
    # each factor's importance splits over its two copies: completeness 1 - log 2 / log 8 at best (8 codes)
    twice = metrics.dci(GROUND_TRUTH, duplicated, _rng(), num_train=1000, num_test=500)
    assert twice["disentanglement"] > 0.95
    assert twice["completeness"] <= 1 - math.log(2) / math.log(8) + 0.05


def test_dci_from_importance_matches_the_formula_on_a_hand_computed_matrix():
    importance = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    result = metrics._dci_from_importance(importance)
    # code 0: entropy 0 (weight 1/2); code 1: entropy 1 in base 2 (weight 1/2); code 2 carries no weight
    assert result["disentanglement"] == pytest.approx(0.5, abs=1e-6)
    # factor 0: (2/3, 1/3, 0) in base 3, weight 3/4; factor 1: (0, 1, 0), entropy 0, weight 1/4
    h0 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3)
    assert result["completeness"] == pytest.approx(0.75 * (1 - h0) + 0.25, abs=1e-6)


def test_constant_codes_score_nothing():
    assert metrics.mig(GROUND_TRUTH, constant, _rng(), num_train=2000)["mig"] == pytest.approx(0.0, abs=1e-9)
    beta = metrics.beta_vae_score(GROUND_TRUTH, constant, _rng(), batch_size=16, num_train=400, num_eval=400)
    assert beta["eval_accuracy"] < 1 / 4 + 0.1  # chance: four factors drawn uniformly
    factor = metrics.factor_vae_score(GROUND_TRUTH, constant, _rng(), num_variance_estimate=500)
    assert factor == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    assert metrics.sap(GROUND_TRUTH, constant, _rng(), num_train=500, num_test=500)["sap"] == 0.0
    scores = metrics.modularity_and_explicitness(GROUND_TRUTH, constant, _rng(), num_train=500, num_test=500)
    assert scores["modularity"] == 0.0 and scores["explicitness_test"] == pytest.approx(0.5)


def test_noise_scores_near_chance():
    assert metrics.mig(GROUND_TRUTH, noise, _rng(), num_train=4000)["mig"] < 0.03
    beta = metrics.beta_vae_score(GROUND_TRUTH, noise, _rng(), batch_size=16, num_train=400, num_eval=400)
    assert beta["eval_accuracy"] < 1 / 4 + 0.1
    assert metrics.sap(GROUND_TRUTH, noise, _rng(), num_train=1000, num_test=1000)["sap"] < 0.05
    scores = metrics.modularity_and_explicitness(GROUND_TRUTH, noise, _rng(), num_train=2000, num_test=1000)
    assert scores["explicitness_test"] < 0.6


def test_a_factor_in_two_codes_has_no_gap():
    # the two copies have the same plug-in information and the same single-code accuracy: both gaps are 0
    assert metrics.mig(GROUND_TRUTH, duplicated, _rng(), num_train=2000)["mig"] == pytest.approx(0.0, abs=1e-12)
    assert metrics.sap(GROUND_TRUTH, duplicated, _rng(), num_train=500, num_test=500)["sap"] == pytest.approx(0.0)
    scores = metrics.modularity_and_explicitness(GROUND_TRUTH, duplicated, _rng(), num_train=3000, num_test=500)
    assert scores["modularity"] > 0.99  # each code still holds one factor


def _population_information_of_the_mixed_code() -> tuple[float, float]:
    """I(bin; v1) and I(bin; v2) in nats for code 0 = 8·v1 + v2, uniform over its 48 values, cut into 20 equal bins
    over [0, 47] as disentanglement_lib's histogram does: exact, by enumerating the 48 values."""
    values = np.arange(48)
    bins = np.digitize(values, np.histogram(values, 20)[1][:-1])
    result = []
    for factor in (values // 8, values % 8):
        joint = np.zeros((21, factor.max() + 1))
        np.add.at(joint, (bins, factor), 1 / 48)
        outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
        nonzero = joint > 0
        result.append(float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum()))
    return result[0], result[1]


def test_one_code_for_two_factors_loses_modularity_and_gap_as_derived():
    i1, i2 = _population_information_of_the_mixed_code()
    assert 0 < i2 < math.log(8) and i1 == pytest.approx(math.log(6), abs=0.25)  # bins straddle the blocks of 8
    # modularity: codes 1 and 2 hold one factor each (1); code 0 holds factors 1 and 2 (1 - second² / (best² · 3))
    best, second = max(i1, i2), min(i1, i2)
    expected_modularity = (1 + 1 + 1 - second**2 / (best**2 * 3)) / 3
    scores = metrics.modularity_and_explicitness(GROUND_TRUTH, one_code_for_two, _rng(), num_train=6000, num_test=500)
    assert scores["modularity"] == pytest.approx(expected_modularity, abs=0.02)
    # MIG: factors 0 and 3 have their own code (gap 1); factors 1 and 2 only code 0's information over their entropy
    expected_mig = (1 + i1 / math.log(6) + i2 / math.log(8) + 1) / 4
    assert metrics.mig(GROUND_TRUTH, one_code_for_two, _rng(), num_train=6000)["mig"] == pytest.approx(
        expected_mig, abs=0.02
    )


def test_modularity_of_a_hand_written_information_matrix():
    information = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # code 0: 1; code 1: 1 - 1 / (1 · 2) = 0.5; code 2: no information, 0
    assert metrics.modularity(information) == pytest.approx((1 + 0.5 + 0) / 3)


def test_chen_mig_of_encoders_with_known_information():
    """An encoder whose code j is factor j plus Gaussian noise of sd σ: at σ → 0 every factor is recovered, so
    I(z_j; v_j) → H(v_j) and MIG → 1; an encoder that ignores the factors (noise only) has MIG 0 up to estimation
    noise. Chen's estimator and the histogram one are different numbers for the same codes."""

    def encoder(sd):
        def encode(x):
            return x.double(), torch.full_like(x.double(), sd)

        return encode

    sharp = metrics.mig_chen(GROUND_TRUTH, encoder(0.05), _rng(), num_points=3000)["mig_chen"]
    assert sharp > 0.98

    def blind(x):
        return torch.zeros(x.shape[0], 4, dtype=torch.float64), torch.ones(x.shape[0], 4, dtype=torch.float64)

    assert abs(metrics.mig_chen(GROUND_TRUTH, blind, _rng(), num_points=3000)["mig_chen"]) < 0.02
    wide = metrics.mig_chen(GROUND_TRUTH, encoder(1.0), _rng(), num_points=3000)["mig_chen"]
    # noise of sd 1 on integer factors hides part of each: I(v + N(0, 1); v) = h(z) - h(z | v) by quadrature, with z
    # a uniform mixture of unit Gaussians at 0 .. size - 1
    grid = np.linspace(-8, 15, 20001)
    gaps = []
    for size in SIZES:
        density = np.exp(-0.5 * (grid[:, None] - np.arange(size)) ** 2).mean(1) / math.sqrt(2 * math.pi)
        entropy = -np.trapezoid(density * np.log(density), grid)
        gaps.append((entropy - 0.5 * math.log(2 * math.pi * math.e)) / math.log(size))
    assert wide == pytest.approx(np.mean(gaps), abs=0.03)


def test_chen_mig_credits_nothing_to_narrow_codes_that_ignore_the_factors():
    """Codes drawn afresh for every image (independent of every factor) with a narrow posterior: each point's own
    component would dominate its conditional mixture, and I(z_j; v_k) would come out near log of the mixture sizes'
    ratio; left out, the information is 0 (clamped, as Chen et al.'s)."""
    draws = np.random.default_rng(7)

    def random_codes(x):
        loc = torch.from_numpy(draws.standard_normal((x.shape[0], 4)))
        return loc, torch.full_like(loc, 0.002)

    result = metrics.mig_chen(GROUND_TRUTH, random_codes, _rng(), num_points=2000)
    assert result["mutual_information"].max() < 0.02 and result["mig_chen"] < 0.02


def test_chen_mig_averages_over_the_factors_the_ground_truth_names():
    """Factor 0 is in no code: its gap is 0. Over all four factors MIG is 3/4 of the recovered ones'; a ground truth
    that lists factors 1-3 as Chen's (as dSprites leaves shape out) scores the rest alone."""

    def three(x):
        loc = x.double().clone()
        loc[:, 0] = 0.0
        return loc, torch.full_like(loc, 0.05)

    class ChenGrid(Grid):
        chen_factors = (1, 2, 3)

    every = metrics.mig_chen(GROUND_TRUTH, three, _rng(), num_points=3000)
    chosen = metrics.mig_chen(ChenGrid(), three, _rng(), num_points=3000)
    assert chosen["mig_chen"] > 0.98 and chosen["factors"] == [1, 2, 3]
    assert every["mig_chen"] == pytest.approx(0.75 * chosen["mig_chen"], abs=0.01)


def test_representation_of_a_guide_gives_means_or_draws():
    class Guide:
        def encode(self, x):
            return x.sum(1, keepdim=True).repeat(1, 2), torch.ones(x.shape[0], 2)

    x = torch.ones(5, 3)
    np.testing.assert_allclose(metrics.representation(Guide())(x), np.full((5, 2), 3.0))
    drawn = metrics.representation(Guide(), sample=True, seed=1)(x)
    assert drawn.shape == (5, 2) and not np.allclose(drawn, 3.0)


def test_rendered_observations_follow_the_guide_to_its_device():
    from types import SimpleNamespace

    from pyroib.disentanglement import _on_device

    class Truth:
        factor_sizes = (2, 3)

        @staticmethod
        def sample_factors(n, rng):
            return np.zeros((n, 2), dtype=np.int64)

        @staticmethod
        def observations(factors):
            return torch.zeros(len(factors), 1, 4, 4)  # rendered on the CPU, as dSprites is

    run = SimpleNamespace(guide=torch.nn.Linear(1, 1, device="meta"))  # a device other than the CPU, without a GPU
    truth = _on_device(Truth(), run)
    assert truth.observations(truth.sample_factors(5, None)).device.type == "meta"
    assert truth.factor_sizes == (2, 3) and truth.chen_factors == (0, 1)


def test_dci_of_one_code_for_two_factors_is_three_quarters_as_derived():
    """Factors 1 and 2 depend on code 0 alone and factors 0 and 3 on codes 1 and 2 alone, so each factor's boosted
    importances sit on one code: R = [[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]]. Code 0 splits its weight over two of
    four factors (1 - log 2 / log 4 = 1/2) and carries half the total importance; codes 1 and 2 score 1 with a quarter
    each: disentanglement 0.5 · 0.5 + 0.25 + 0.25 = 0.75. Each factor is explained by one code: completeness 1."""
    scores = metrics.dci(GROUND_TRUTH, one_code_for_two, _rng(), num_train=1000, num_test=500)
    assert scores["disentanglement"] == pytest.approx(0.75, abs=0.02)
    assert scores["completeness"] == pytest.approx(1.0, abs=0.02)


class BinaryGrid(Grid):
    factor_sizes = (2, 2, 2)

    def sample_factors(self, n, rng):
        return rng.integers(0, 2, (n, 3))


def test_sap_of_binary_factors_is_one_half_as_derived():
    """Each binary factor is its own code, which a single-code SVM reads perfectly (accuracy 1); every other code is
    independent of it, and the balanced SVM on it is right half the time: the gap, and SAP, is 1 - 1/2."""
    score = metrics.sap(BinaryGrid(), identity, _rng(), num_train=2000, num_test=2000)["sap"]
    assert score == pytest.approx(0.5, abs=0.03)
