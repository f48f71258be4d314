"""Entropy, mutual information, unit conversion and the input checks shared by the exact solvers.

All quantities are in nats (natural logarithms); ``units="bits"`` divides by log 2. The convention 0 log 0 = 0 is
applied everywhere through ``scipy.special`` (``entr``, ``rel_entr``), which also keeps NumPy from warning on zeros.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import entr, rel_entr

#: A distribution must sum to one within this relative tolerance.
NORMALISATION_TOLERANCE = 1e-8

_UNIT_DIVISORS = {"nats": 1.0, "bits": math.log(2.0)}


def nats_to(value, units: str = "nats"):
    """Express ``value`` (nats; a number or an array) in ``units``: ``"nats"`` or ``"bits"``."""
    try:
        divisor = _UNIT_DIVISORS[units]
    except KeyError:
        raise ValueError(f"units must be 'nats' or 'bits', got {units!r}") from None
    return value / divisor


def entropy(p, units: str = "nats") -> float:
    """Shannon entropy H(p) = -Σ p log p of a distribution given as an array of any shape."""
    p = check_distribution(p, "p")
    return float(nats_to(entr(p).sum(), units))


def mutual_information(p_xy, units: str = "nats") -> float:
    """I(X;Y) = Σ p(x,y) log[p(x,y) / (p(x) p(y))] of a joint given as a |X| x |Y| matrix."""
    p_xy = check_joint(p_xy)
    product = np.outer(p_xy.sum(axis=1), p_xy.sum(axis=0))
    return float(nats_to(rel_entr(p_xy, product).sum(), units))


def _as_float_array(values, name: str) -> np.ndarray:
    try:
        array = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array of real numbers; could not convert it ({error})") from None
    return array


def check_distribution(p, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``p`` as a float64 array after checking it is a probability distribution.

    Raises ValueError when an entry is negative or not finite, or when the entries do not sum to one within
    ``NORMALISATION_TOLERANCE`` (relative); TypeError when it is not numeric.
    """
    p = _as_float_array(p, name)
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {p.shape}")
    if p.size == 0:
        raise ValueError(f"{name} is empty; pass at least one outcome")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} has non-finite entries (nan or inf); pass finite probabilities")
    if np.any(p < 0):
        raise ValueError(f"{name} has negative entries (smallest {p.min():.3g}); probabilities must be >= 0")
    total = p.sum()
    if abs(total - 1.0) > NORMALISATION_TOLERANCE:
        raise ValueError(
            f"{name} sums to {total:.12g}, not 1 (tolerance {NORMALISATION_TOLERANCE:g}); divide it by its sum first"
        )
    return p


def check_joint(p_xy) -> np.ndarray:
    """Check a joint distribution p(x, y) given as a |X| x |Y| matrix (see ``check_distribution``)."""
    return check_distribution(p_xy, "the joint p_xy (rows x, columns y)", ndim=2)


def check_distortion(p_x: np.ndarray, distortion) -> np.ndarray:
    """Check a distortion matrix d(x, x_hat) of shape |X| x |X_hat| against the source p(x)."""
    distortion = _as_float_array(distortion, "distortion")
    if distortion.ndim != 2:
        raise ValueError(f"distortion must be a 2-d matrix d[x, x_hat], got shape {distortion.shape}")
    if distortion.shape[0] != p_x.shape[0]:
        raise ValueError(
            f"distortion has {distortion.shape[0]} rows but p_x has {p_x.shape[0]} outcomes; "
            "row i of the distortion matrix must belong to outcome i of p_x"
        )
    if distortion.shape[1] == 0:
        raise ValueError("distortion has no columns; pass at least one reproduction letter x_hat")
    if not np.all(np.isfinite(distortion)):
        raise ValueError("distortion has non-finite entries; forbid a pair with a large finite cost instead of inf")
    return distortion


def check_positive(value, name: str, allow_zero: bool = False) -> float:
    """Check that a trade-off parameter (β, slope) is a finite real number > 0 (or >= 0)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    bound_ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and bound_ok):
        relation = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {relation}, got {value}")
    return value


def check_count(value, name: str, meaning: str = "", minimum: int = 1) -> int:
    """Check that ``value`` is an integer >= ``minimum`` (a cardinality, a number of restarts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}{meaning} must be >= {minimum}, got {value}")
    return int(value)


def check_cardinality(n_clusters) -> int:
    """Check the cardinality |T| of the bottleneck variable: an integer >= 1."""
    return check_count(n_clusters, "n_clusters", " (the cardinality of T)")


def check_iteration_controls(tol, max_iter) -> tuple[float, int]:
    """Check a convergence tolerance (> 0) and an iteration cap (integer >= 1)."""
    tol = check_positive(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    return tol, int(max_iter)


def read_only(array: np.ndarray) -> np.ndarray:
    """Freeze an array that is handed out in a frozen result, so the result cannot be changed in place."""
    array.setflags(write=False)
    return array
