"""Fréchet distance against closed forms, and the versioned Fashion-MNIST feature network."""

import hashlib
import json
from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch

from pyroib.data import fashion_mnist_dirs
from pyroib.frechet import (
    ASSET_INFO,
    ASSET_WEIGHTS,
    FEATURE_DIM,
    SUBSET,
    accuracy,
    frechet_distance,
    gaussian_frechet_distance,
    image_features,
    load_feature_network,
    sample_fid,
)
from pyroib.priors import StandardNormal

RNG = np.random.default_rng(0)


def _fashion_available() -> bool:
    return any((d / "t10k-images-idx3-ubyte.gz").is_file() for d in fashion_mnist_dirs())


needs_fashion = pytest.mark.skipif(
    not _fashion_available(), reason="Fashion-MNIST files are not installed (apt-get install dataset-fashion-mnist)"
)


def test_identical_feature_sets_are_at_distance_zero():
    a = RNG.normal(size=(500, 8))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_diagonal_gaussians_match_the_explicit_formula():
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert gaussian_frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)


def test_full_covariances_match_the_matrix_square_root_definition():
    d = 5
    left, right = RNG.normal(size=(d, d)), RNG.normal(size=(d, d))
    cov_a, cov_b = left @ left.T + 0.1 * np.eye(d), right @ right.T + 0.1 * np.eye(d)
    mean_a, mean_b = RNG.normal(size=d), RNG.normal(size=d)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root.real)
    assert gaussian_frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_sample_estimate_converges_to_the_gaussian_distance():
    mean_b, var_b = np.array([1.0, 0.0]), np.array([4.0, 0.25])
    a = RNG.normal(size=(100_000, 2))
    b = mean_b + np.sqrt(var_b) * RNG.normal(size=(100_000, 2))
    expected = 1.0 + (1 - 2) ** 2 + (1 - 0.5) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.05)


def test_symmetric_and_a_shift_adds_its_squared_length():
    a = RNG.normal(size=(400, 4))
    b = RNG.normal(size=(300, 4)) @ np.diag([1.0, 2.0, 0.5, 1.0])
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    shift = np.array([0.5, -1.0, 2.0, 0.0])
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    distances = [frechet_distance(a, b + t) for t in (0.0, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[-1] > distances[0] + 4


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.zeros(10), np.zeros((10, 2)), "(n, d)"),
        (np.zeros((10, 3)), np.zeros((10, 2)), "same width"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), "finite"),
        (np.zeros((1, 2)), np.zeros((10, 2)), "n >= 2"),
    ],
)
def test_bad_feature_sets_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(a, b)


def test_versioned_weights_match_their_record():
    assets = resources.files("pyroib") / "assets"
    info = json.loads((assets / ASSET_INFO).read_text())
    assert hashlib.sha256((assets / ASSET_WEIGHTS).read_bytes()).hexdigest() == info["sha256"]
    network = load_feature_network()
    features = image_features(torch.rand(5, 1, 28, 28), network)
    assert features.shape == (5, FEATURE_DIM) and (features >= 0).all()
    with pytest.raises(ValueError, match="28, 28"):
        image_features(torch.rand(5, 1, 8, 8), network)


@needs_fashion
def test_versioned_classifier_has_its_recorded_test_accuracy():
    from pyroib.data import load_dataset

    info = json.loads((resources.files("pyroib") / "assets" / ASSET_INFO).read_text())
    test = load_dataset("fashion-mnist", binarize="none")
    measured = accuracy(load_feature_network(), test.test[:SUBSET], test.test_labels[:SUBSET])
    assert measured == pytest.approx(info[f"test_accuracy_first_{SUBSET}"], abs=1e-3)
    assert abs(measured - info["test_accuracy"]) < 0.03  # the subset tracks the full-test figure


@needs_fashion
def test_sample_fid_ranks_real_images_above_noise():
    from pyroib.data import load_dataset

    grey = load_dataset("fashion-mnist", binarize="none")
    pool = grey.train[:500]

    class Picker(torch.nn.Module):  # "decodes" a code into a training image, or into noise
        def __init__(self, noise):
            super().__init__()
            self.noise = noise

        def decode(self, z):
            index = (z[:, 0].abs() * 1e4).long() % len(pool)
            return torch.rand_like(pool[index]) if self.noise else pool[index]

    def run_with(noise):
        return SimpleNamespace(model=Picker(noise), device=torch.device("cpu"))

    prior = StandardNormal(2)
    real = sample_fid(run_with(False), prior, 500, reference=grey.test[:1000])
    noise = sample_fid(run_with(True), prior, 500, reference=grey.test[:1000])
    assert real < 0.1 * noise
