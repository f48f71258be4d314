"""Disentanglement metrics: functions of a representation function and a ground-truth data set.

A *ground-truth data set* has discrete factors of variation (``factor_sizes``), draws factor values
(``sample_factors(n, rng)``, an int array (n, K)) and renders observations for any factor values
(``observations(factors)``). A *representation function* maps a batch of observations to codes (n, D): the
posterior means of a trained run, or codes sampled from q(z|x) (:func:`representation`).

Each metric follows the definition and defaults of disentanglement_lib (Locatello et al., Challenging Common
Assumptions in the Unsupervised Learning of Disentangled Representations, ICML 2019), cited per function, with
scikit-learn's estimators. Chen et al.'s MIG (β-TCVAE paper, 2018) is a different estimator of the same idea and is
kept separate (:func:`mig_chen`): it measures I(z_j; v_k) with the encoder's densities instead of histograms.
Scores lie in [0, 1] unless stated; mutual informations are in nats.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.preprocessing import StandardScaler, label_binarize
from sklearn.svm import LinearSVC

Representation = Callable[[torch.Tensor], np.ndarray]


def _logistic_regression() -> LogisticRegression:
    """scikit-learn's logistic regression, run to convergence: disentanglement_lib used the library's default of its
    day (liblinear, one-vs-rest), which today's default (lbfgs, multinomial) replaces with a limit of 100 iterations
    that these features often reach before converging."""
    return LogisticRegression(max_iter=5000, random_state=0)


def _fit(model, x, y):
    """``model.fit(x, y)``, quiet about a fit that stops at its iteration limit: the gradient-boosted and SVM models
    keep disentanglement_lib's limits, which are part of the metric's definition, not an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # a factor with many values scored on few points (a quick look at a small scale) is still classification
        warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
        return model.fit(x, y)


class GroundTruth(Protocol):
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def observations(self, factors: np.ndarray) -> torch.Tensor: ...


def representation(guide, sample: bool = False, seed: int = 0) -> Representation:
    """Codes of a guide with ``encode``: its posterior means, or one draw from q(z|x) per observation."""
    generator = torch.Generator().manual_seed(seed)

    def represent(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            loc, scale = guide.encode(x)
            if sample:
                noise = torch.randn(loc.shape, generator=generator).to(device=loc.device, dtype=loc.dtype)
                loc = loc + scale * noise
        return loc.double().cpu().numpy()

    return represent


def codes_and_factors(ground_truth, represent, n: int, rng, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """n random factor draws and their codes: (codes (n, D), factors (n, K))."""
    factors = ground_truth.sample_factors(n, rng)
    codes = [represent(ground_truth.observations(factors[i : i + batch_size])) for i in range(0, n, batch_size)]
    return np.concatenate(codes), factors


def histogram_discretize(codes: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each code dimension cut into ``bins`` equal-width bins over its observed range (disentanglement_lib's
    ``_histogram_discretize``, 20 bins)."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], bins)[1]
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def discrete_mutual_information(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """(D, K) plug-in mutual informations between discretised codes and factors, nats."""
    return np.array(
        [
            [mutual_info_score(factors[:, k], discrete_codes[:, j]) for k in range(factors.shape[1])]
            for j in range(discrete_codes.shape[1])
        ]
    )


def _factor_entropies(factors: np.ndarray) -> np.ndarray:
    return np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])


def _gap_of_top_two(matrix: np.ndarray) -> np.ndarray:
    """Per column (factor): the largest entry minus the second largest, over rows (codes)."""
    ordered = np.sort(matrix, axis=0)
    return ordered[-1] - ordered[-2] if matrix.shape[0] > 1 else ordered[-1]


def beta_vae_score(ground_truth, represent, rng, batch_size=64, num_train=10000, num_eval=5000) -> dict:
    """BetaVAE score (Higgins et al. 2017; disentanglement_lib ``beta_vae.compute_beta_vae_sklearn``, these
    defaults): a point is the mean |z(x1) − z(x2)| over ``batch_size`` pairs that share the value of one random
    factor k, labelled k; the score is the accuracy of a logistic regression (run to convergence, see
    ``_logistic_regression``) predicting k on ``num_eval`` held-out points."""

    def points(n):
        features, labels = [], []
        for _ in range(n):
            k = int(rng.integers(len(ground_truth.factor_sizes)))
            first = ground_truth.sample_factors(batch_size, rng)
            second = ground_truth.sample_factors(batch_size, rng)
            second[:, k] = first[:, k]
            difference = np.abs(
                represent(ground_truth.observations(first)) - represent(ground_truth.observations(second))
            )
            features.append(difference.mean(0))
            labels.append(k)
        return np.array(features), np.array(labels)

    x_train, y_train = points(num_train)
    x_eval, y_eval = points(num_eval)
    model = _fit(_logistic_regression(), x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)), "eval_accuracy": float(model.score(x_eval, y_eval))}


def factor_vae_score(
    ground_truth, represent, rng, batch_size=64, num_train=10000, num_eval=5000, num_variance_estimate=10000
) -> dict:
    """FactorVAE score (Kim & Mnih 2018; disentanglement_lib ``factor_vae.compute_factor_vae``, these defaults):
    codes are divided by their standard deviation over ``num_variance_estimate`` draws and dimensions whose standard
    deviation is below 0.05 are dropped (``prune_dims.threshold``, a cut on the standard deviation); a point fixes
    one random factor k over ``batch_size`` draws and votes for the dimension of least normalised variance; each
    dimension predicts the factor it got most votes for, and the score is the accuracy of that majority-vote
    classifier on ``num_eval`` held-out votes (0 with no active dimension)."""
    codes, _ = codes_and_factors(ground_truth, represent, num_variance_estimate, rng)
    variance = codes.var(0, ddof=1)
    active = np.sqrt(variance) >= 0.05
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    factors_count = len(ground_truth.factor_sizes)

    def votes(n):
        table = np.zeros((int(active.sum()), factors_count), dtype=np.int64)
        for _ in range(n):
            k = int(rng.integers(factors_count))
            factors = ground_truth.sample_factors(batch_size, rng)
            factors[:, k] = factors[0, k]
            local = represent(ground_truth.observations(factors)).var(0, ddof=1)
            table[int(np.argmin(local[active] / variance[active])), k] += 1
        return table

    train, evaluation = votes(num_train), votes(num_eval)
    classifier = train.argmax(1)
    rows = np.arange(len(classifier))
    return {
        "train_accuracy": float(train[rows, classifier].sum() / train.sum()),
        "eval_accuracy": float(evaluation[rows, classifier].sum() / evaluation.sum()),
        "num_active_dims": int(active.sum()),
    }


def mig(ground_truth, represent, rng, num_train=10000, bins=20) -> dict:
    """Mutual information gap as disentanglement_lib computes it (``mig.compute_mig``: 10,000 draws, codes cut into
    20 equal-width bins): for each factor, the gap between the two largest plug-in I(z_j; v_k), divided by H(v_k),
    averaged over factors. Not Chen et al.'s estimator (:func:`mig_chen`). Also returns the (codes, factors)
    ``mutual_information`` matrix and the factors' entropies, nats."""
    codes, factors = codes_and_factors(ground_truth, represent, num_train, rng)
    information = discrete_mutual_information(histogram_discretize(codes, bins), factors)
    entropies = _factor_entropies(factors)
    return {
        "mig": float(np.mean(_gap_of_top_two(information) / entropies)),
        "mutual_information": information,
        "factor_entropy": entropies,
    }


def mig_chen(ground_truth, encode: Callable, rng, num_points=10000, chunk_size=512) -> dict:
    """Chen et al.'s MIG (Isolating Sources of Disentanglement in VAEs, 2018, §4.1 and their reference code): I(z_j;
    v_k) from the encoder's Gaussian densities, not histograms. Over ``num_points`` factor draws, one code
    z_n ~ q(z|x_n) each: I(z_j; v_k) = E[log q(z_j | v_k) − log q(z_j)], with q(z_j) the mixture of the draws'
    q(z_j | x) and q(z_j | v_k = v) the mixture over draws with that factor value, each query leaving its own
    component out (Chen et al. mix all 737,280 images, where one point's own term weighs nothing; among a few thousand
    draws it would dominate the narrow conditionals and credit information to codes that carry none). Informations
    are clamped at 0 (as theirs), normalised by H(v_k) = log |V_k| (uniform factors) and the gap of the top two
    averaged over the factors the ground truth lists as ``chen_factors`` (dSprites: all but shape, as Chen et al.),
    all factors if it lists none. A point alone with its factor value has no conditional and is left out of that
    factor's mean. ``encode(x) -> (loc, scale)``."""
    from .estimators import exact_log_qz

    factors = ground_truth.sample_factors(num_points, rng)
    parts = [encode(ground_truth.observations(factors[i : i + 256])) for i in range(0, num_points, 256)]
    loc = torch.cat([p[0] for p in parts]).double()
    scale = torch.cat([p[1] for p in parts]).double()
    noise = torch.from_numpy(rng.standard_normal(loc.shape))
    z = loc + scale * noise
    _, log_qz = exact_log_qz(z, loc, scale, chunk_size, exclude_self=True)
    information = np.zeros((loc.shape[1], factors.shape[1]))
    for k in range(len(ground_truth.factor_sizes)):
        conditional = torch.full_like(log_qz, math.nan)
        for value in np.unique(factors[:, k]):
            members = torch.from_numpy(factors[:, k] == value)
            if members.sum() > 1:
                _, conditional[members] = exact_log_qz(
                    z[members], loc[members], scale[members], chunk_size, exclude_self=True
                )
        information[:, k] = np.nanmean((conditional - log_qz).numpy(), 0)
    information = information.clip(min=0)
    entropies = np.log(np.array(ground_truth.factor_sizes, dtype=float))
    chosen = list(getattr(ground_truth, "chen_factors", range(len(entropies))))
    gaps = _gap_of_top_two(information[:, chosen]) / entropies[chosen]
    return {"mig_chen": float(np.mean(gaps)), "mutual_information": information, "factors": chosen}


def dci(ground_truth, represent, rng, num_train=10000, num_test=5000) -> dict:
    """DCI (Eastwood & Williams 2018; disentanglement_lib ``dci.compute_dci``, these defaults): one gradient-boosted
    classifier per factor (scikit-learn defaults) gives an importance R_jk of code j for factor k. Disentanglement:
    Σ_j ρ_j (1 − H_K(P_j·)), P_jk = R_jk / Σ_k R_jk, ρ_j code j's share of all importance, entropy base K factors;
    completeness: the same per factor over codes (base D); informativeness: the classifiers' mean test accuracy."""
    x_train, y_train = codes_and_factors(ground_truth, represent, num_train, rng)
    x_test, y_test = codes_and_factors(ground_truth, represent, num_test, rng)
    importance = np.zeros((x_train.shape[1], y_train.shape[1]))
    train_accuracy, test_accuracy = [], []
    for k in range(y_train.shape[1]):
        model = _fit(GradientBoostingClassifier(random_state=0), x_train, y_train[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_accuracy.append(model.score(x_train, y_train[:, k]))
        test_accuracy.append(model.score(x_test, y_test[:, k]))
    return {
        **_dci_from_importance(importance),
        "informativeness_train": float(np.mean(train_accuracy)),
        "informativeness_test": float(np.mean(test_accuracy)),
    }


def _dci_from_importance(importance: np.ndarray) -> dict:
    codes, factors = importance.shape
    total = importance.sum()
    per_code = 1.0 - entropy(importance.T + 1e-11, base=factors) if factors > 1 else np.ones(codes)
    code_weight = importance.sum(1) / total if total > 0 else np.ones(codes) / codes
    per_factor = 1.0 - entropy(importance + 1e-11, base=codes) if codes > 1 else np.ones(factors)
    factor_weight = importance.sum(0) / total if total > 0 else np.ones(factors) / factors
    return {
        "disentanglement": float(np.sum(per_code * code_weight)),
        "completeness": float(np.sum(per_factor * factor_weight)),
    }


def sap(ground_truth, represent, rng, num_train=10000, num_test=5000) -> dict:
    """Separated attribute predictability (Kumar et al. 2018; disentanglement_lib ``sap_score.compute_sap``, these
    defaults, discrete factors): for each code j and factor k the test accuracy of a linear SVM (C = 0.01, balanced
    class weights) on code j alone; per factor the gap between the two best codes, averaged."""
    x_train, y_train = codes_and_factors(ground_truth, represent, num_train, rng)
    x_test, y_test = codes_and_factors(ground_truth, represent, num_test, rng)
    scores = np.zeros((x_train.shape[1], y_train.shape[1]))
    for j in range(x_train.shape[1]):
        for k in range(y_train.shape[1]):
            if np.ptp(x_train[:, j]) == 0:  # a constant code predicts nothing
                scores[j, k] = np.mean(y_test[:, k] == np.bincount(y_train[:, k]).argmax())
                continue
            svm = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
            model = _fit(svm, x_train[:, j : j + 1], y_train[:, k])
            scores[j, k] = model.score(x_test[:, j : j + 1], y_test[:, k])
    return {"sap": float(np.mean(_gap_of_top_two(scores)))}


def modularity_and_explicitness(ground_truth, represent, rng, num_train=10000, num_test=5000, bins=20) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer 2018; disentanglement_lib
    ``modularity_explicitness.compute_modularity_explicitness``, these defaults). Modularity: for each code, with
    θ its largest plug-in I(z_j; v_k) (20 bins), 1 − Σ_{k ≠ best} I_jk² / (θ² (K − 1)), averaged over codes (0 for a
    code with θ = 0). Explicitness: per factor, the one-vs-rest ROC AUC of a logistic regression on the standardised
    codes, averaged over factors."""
    x_train, y_train = codes_and_factors(ground_truth, represent, num_train, rng)
    x_test, y_test = codes_and_factors(ground_truth, represent, num_test, rng)
    information = discrete_mutual_information(histogram_discretize(x_train, bins), y_train)
    result = {"modularity": modularity(information)}
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    train_auc, test_auc = [], []
    for k, size in enumerate(ground_truth.factor_sizes):
        model = _fit(_logistic_regression(), x_train, y_train[:, k])
        classes = np.arange(size)
        for x, y, out in ((x_train, y_train, train_auc), (x_test, y_test, test_auc)):
            probabilities = np.zeros((x.shape[0], size))
            probabilities[:, model.classes_] = model.predict_proba(x)
            truth = label_binarize(y[:, k], classes=classes)
            if size == 2:
                truth = np.hstack([1 - truth, truth])
            present = truth.any(0) & ~truth.all(0)
            out.append(roc_auc_score(truth[:, present], probabilities[:, present], average="macro"))
    result.update(explicitness_train=float(np.mean(train_auc)), explicitness_test=float(np.mean(test_auc)))
    return result


def modularity(information: np.ndarray) -> float:
    """Ridgeway & Mozer's modularity of a (codes, factors) mutual-information matrix."""
    squared = information**2
    best = squared.max(1)
    deviation = (squared.sum(1) - best) / (best * (information.shape[1] - 1) + (best == 0))
    per_code = np.where(best > 0, 1.0 - deviation, 0.0)
    return float(per_code.mean())


DISENTANGLEMENT_KEYS = (
    "beta_vae_score",
    "factor_vae_score",
    "mig",
    "mig_chen",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "modularity",
    "explicitness",
)


def ground_truth_of(run):
    """The ground truth of the run's data set, or a ValueError naming the data sets that have one."""
    if run.spec.dataset != "dsprites":
        raise ValueError(
            f"--disentanglement needs a data set with ground-truth factors (dsprites); this run trained on "
            f"{run.spec.dataset}"
        )
    from .dsprites import DSprites

    return DSprites()


def _on_device(truth, run):
    """The ground truth with its observations on the device of the run's guide (rendered images are CPU tensors)."""
    device = next(iter(run.guide.parameters())).device

    class OnDevice:
        factor_sizes = truth.factor_sizes
        chen_factors = getattr(truth, "chen_factors", tuple(range(len(truth.factor_sizes))))
        sample_factors = staticmethod(truth.sample_factors)

        @staticmethod
        def observations(factors):
            return truth.observations(factors).to(device)

    return OnDevice


def evaluate_disentanglement(run, scale: float = 1.0, seed: int = 0, sample: bool = False) -> dict:
    """Every metric above for a run on a ground-truth data set, under the keys of ``pyroib evaluate --disentanglement``.

    ``scale`` multiplies every metric's numbers of points (1: disentanglement_lib's defaults, which encode about
    three million images, two thirds of them for the BetaVAE score; 0.1 for a quick look). ``sample`` scores codes
    drawn from q(z|x) instead of its means."""
    if not 0 < scale <= 10:
        raise ValueError(f"--disentanglement-scale must lie in (0, 10], got {scale}")
    run.capabilities.require("encode", "disentanglement metrics")
    OnDevice = _on_device(ground_truth_of(run), run)
    represent = representation(run.guide, sample=sample, seed=seed)

    def n(count):
        return max(10, round(count * scale))

    def rng():
        return np.random.default_rng(seed)

    def encode(x):
        with torch.no_grad():
            return tuple(part.cpu() for part in run.guide.encode(x))

    beta = beta_vae_score(OnDevice, represent, rng(), num_train=n(10000), num_eval=n(5000))
    factor = factor_vae_score(
        OnDevice, represent, rng(), num_train=n(10000), num_eval=n(5000), num_variance_estimate=n(10000)
    )
    dci_scores = dci(OnDevice, represent, rng(), num_train=n(10000), num_test=n(5000))
    modular = modularity_and_explicitness(OnDevice, represent, rng(), num_train=n(10000), num_test=n(5000))
    histogram = mig(OnDevice, represent, rng(), num_train=n(10000))
    return {
        "beta_vae_score": beta["eval_accuracy"],
        "factor_vae_score": factor["eval_accuracy"],
        "mig": histogram["mig"],
        # (codes, factors) plug-in I(z_j; v_k) in nats, and H(v_k): which code holds which factor
        "factor_information": histogram["mutual_information"].tolist(),
        "factor_entropy": histogram["factor_entropy"].tolist(),
        "mig_chen": mig_chen(OnDevice, encode, rng(), num_points=n(10000))["mig_chen"],
        "dci_disentanglement": dci_scores["disentanglement"],
        "dci_completeness": dci_scores["completeness"],
        "dci_informativeness": dci_scores["informativeness_test"],
        "sap": sap(OnDevice, represent, rng(), num_train=n(10000), num_test=n(5000))["sap"],
        "modularity": modular["modularity"],
        "explicitness": modular["explicitness_test"],
        "disentanglement_codes": "sampled" if sample else "means",
        "disentanglement_scale": scale,
    }


def report_section(run, splits, out) -> dict:
    """For a run on dSprites: the per-dimension mutual information with each factor as a heat map (histogram MI over
    10,000 draws times the report's scale, at least 1,000; dimensions ordered by KL), and traversals of every
    dimension from -2 to 2 around three codes."""
    if run.spec.dataset != "dsprites" or not (run.capabilities.encode and run.capabilities.decode):
        return {}
    import json

    from .dsprites import FACTOR_NAMES
    from .figures import plot, save_grid

    result = json.loads((out / "evaluation.json").read_text())
    kl = np.array(result.get("kl_per_dim") or [])
    truth = _on_device(ground_truth_of(run), run)
    represent = representation(run.guide)
    points = max(1000, round(10000 * result.get("disentanglement_scale", 1.0)))
    if points == round(10000 * result.get("disentanglement_scale", 0.0)) and "factor_information" in result:
        information = np.array(result["factor_information"])  # the matrix behind the evaluation's MIG
    else:
        information = mig(truth, represent, np.random.default_rng(0), num_train=points)["mutual_information"]
    order = np.argsort(-kl) if len(kl) == information.shape[0] else np.arange(information.shape[0])

    def heat_map(ax):
        image = ax.imshow(information[order].T, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(order)), [str(j) for j in order])
        ax.set_yticks(range(len(FACTOR_NAMES)), FACTOR_NAMES)
        ax.set_xlabel("latent dimension (highest KL first)")
        ax.figure.colorbar(image, ax=ax, label="I(z_j; factor), nats (20-bin histogram)")

    plot(out / "factor_information.png", heat_map)
    codes = torch.as_tensor(represent(truth.observations(truth.sample_factors(3, np.random.default_rng(1)))))
    steps = torch.linspace(-2, 2, 9, dtype=codes.dtype)
    device = next(iter(run.model.parameters())).device
    rows = []
    with torch.no_grad():
        for j in order:
            for base in codes:
                varied = base.repeat(len(steps), 1)
                varied[:, j] = steps
                rows.append(run.model.decode(varied.to(device=device, dtype=torch.get_default_dtype())).cpu())
    save_grid(
        torch.cat(rows),
        out / "factor_traversals.png",
        nrow=len(steps),
        title="each dimension (highest KL first) from -2 to 2 around three codes, one row per code",
    )
    return {
        "Mutual information of each dimension with each factor": "factor_information.png",
        "Traversals around three codes": "factor_traversals.png",
    }


__all__ = [
    "DISENTANGLEMENT_KEYS",
    "GroundTruth",
    "beta_vae_score",
    "codes_and_factors",
    "dci",
    "discrete_mutual_information",
    "evaluate_disentanglement",
    "factor_vae_score",
    "ground_truth_of",
    "report_section",
    "histogram_discretize",
    "mig",
    "mig_chen",
    "modularity",
    "modularity_and_explicitness",
    "representation",
    "sap",
]
