r"""Rate–distortion functions of discrete sources by the Blahut–Arimoto algorithm (Blahut 1972).

For a source p(x), a distortion d(x, x̂) and a slope s >= 0, the point of the R(D) curve where dR/dD = -s minimises
the Lagrangian I(X; X̂) + s E[d(X, X̂)] over channels q(x̂|x). Blahut's alternating minimisation keeps an output
distribution q(x̂) and repeats

    q(x̂|x) = q(x̂) exp(-s d(x, x̂)) / Z(x),      Z(x) = Σ_x̂ q(x̂) exp(-s d(x, x̂)),
    q(x̂)  ← Σ_x p(x) q(x̂|x) = q(x̂) c(x̂),      c(x̂) = Σ_x p(x) exp(-s d(x, x̂)) / Z(x).

The problem is convex and the iteration reaches the global optimum for every slope, but only linearly. Iteration
stops when one update moves q(x̂) by less than ``tol`` in L1 norm. Blahut's bounds on the minimum of the Lagrangian
I + sE[d] give a certificate, reported as ``bound_gap`` = max_x̂ log c(x̂) - Σ_x̂ q'(x̂) log c(x̂) (q' the updated
q): the point is at most that many nats from the optimal Lagrangian. The certificate is loose when letters of
vanishing optimal mass sit next to the support (fine grids of continuous sources): there (R, D) is accurate to
~1e-9 long before the gap shrinks, because an error of q along the optimum's flat directions moves the point along
the curve, not off it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, rel_entr

from .measures import check_distortion, check_distribution, check_iteration_controls, check_positive, read_only

#: Below this value Z(x) from the multiplicative update is no longer trustworthy and the solver continues in logs.
_UNDERFLOW_GUARD = 1e-280
#: exp(-x) for x beyond this is set to zero rather than left subnormal.
_FLUSH_EXPONENT = 700.0


@dataclass(frozen=True, eq=False)
class RateDistortionPoint:
    """One point of the R(D) curve. ``rate`` in nats (convert with ``nats_to``), ``distortion`` in d's units.

    ``conditional[x, x̂]`` is the optimal test channel q(x̂|x), ``marginal`` the output distribution it induces,
    ``bound_gap`` the certified distance (nats) of the Lagrangian from its minimum when iteration stopped.
    """

    slope: float
    rate: float
    distortion: float
    conditional: np.ndarray
    marginal: np.ndarray
    converged: bool
    iterations: int
    bound_gap: float


@dataclass(frozen=True, eq=False)
class RateDistortionCurve:
    """Points of R(D) for a sweep of slopes; ``rates`` (nats) and ``distortions`` follow ``slopes``' order."""

    slopes: np.ndarray
    rates: np.ndarray
    distortions: np.ndarray
    converged: np.ndarray
    points: tuple[RateDistortionPoint, ...]


def blahut_arimoto(
    p_x,
    distortion,
    slope: float,
    *,
    tol: float = 1e-8,
    max_iter: int = 10_000,
    initial_marginal=None,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> RateDistortionPoint:
    """Solve min_{q(x̂|x)} I(X; X̂) + slope · E d(X, X̂) for a source ``p_x`` and a |X| x |X̂| ``distortion``.

    ``slope`` = s >= 0 is minus the slope of R(D) at the returned point (s = 0 gives rate 0). Iteration stops when
    an update changes q(x̂) by less than ``tol`` in L1 norm (``converged=True``) or after ``max_iter`` updates.
    ``initial_marginal`` (a distribution over x̂, default uniform) warm-starts the solver; letters it gives zero
    mass stay at zero. ``callback(iteration, q(x̂|x))`` sees the channel of every iterate.
    """
    p_x = check_distribution(p_x, "p_x", ndim=1)
    distortion = check_distortion(p_x, distortion)
    slope = check_positive(slope, "slope", allow_zero=True)
    tol, max_iter = check_iteration_controls(tol, max_iter)
    n_out = distortion.shape[1]
    if initial_marginal is None:
        log_q = np.full(n_out, -np.log(n_out))
    else:
        initial_marginal = check_distribution(initial_marginal, "initial_marginal", ndim=1)
        if initial_marginal.shape != (n_out,):
            raise ValueError(
                f"initial_marginal needs {n_out} entries (one per column of distortion), "
                f"got {initial_marginal.shape[0]}"
            )
        with np.errstate(divide="ignore"):
            log_q = np.log(initial_marginal)

    support = p_x > 0
    p = p_x[support]
    # Shifting each row by its smallest distortion changes Z(x) by a constant factor only, and keeps one kernel
    # entry per row at exactly 1, which postpones underflow at large slopes.
    scaled = slope * (distortion[support] - distortion[support].min(axis=1, keepdims=True))
    # Entries below e^-700 are flushed to zero: subnormal numbers slow matrix products down a hundredfold, and
    # next to the entry 1 in the same row they only matter once Z(x) underflows, where the solver uses logs.
    kernel = np.exp(-scaled, where=scaled < _FLUSH_EXPONENT, out=np.zeros_like(scaled))
    use_logs = False
    converged, gap, iteration = False, np.inf, 0
    for iteration in range(1, max_iter + 1):
        if callback is not None:
            callback(iteration, _channel(log_q, slope, distortion))
        if not use_logs:
            z = kernel @ np.exp(log_q)
            use_logs = bool(z.min() < _UNDERFLOW_GUARD)
        if use_logs:
            log_z = logsumexp(log_q[None, :] - scaled, axis=1)
            log_c = logsumexp(np.log(p)[:, None] - scaled - log_z[:, None], axis=0)
        else:
            with np.errstate(divide="ignore"):
                log_c = np.log(kernel.T @ (p / z))
        new_log_q = log_q + log_c
        new_log_q -= logsumexp(new_log_q)
        q, new_q = np.exp(log_q), np.exp(new_log_q)
        gap = float(log_c.max() - new_q @ np.where(np.isfinite(log_c), log_c, 0.0))
        step = float(np.abs(new_q - q).sum())
        log_q = new_log_q
        if step < tol:
            converged = True
            break

    conditional = _channel(log_q, slope, distortion)
    marginal = p_x @ conditional
    rate = float(p_x @ rel_entr(conditional, marginal[None, :]).sum(axis=1))
    mean_distortion = float(p_x @ (conditional * distortion).sum(axis=1))
    return RateDistortionPoint(
        slope=slope,
        rate=max(rate, 0.0),
        distortion=mean_distortion,
        conditional=read_only(conditional),
        marginal=read_only(marginal),
        converged=converged,
        iterations=iteration,
        bound_gap=gap,
    )


def rate_distortion_curve(p_x, distortion, slopes, *, tol: float = 1e-8, max_iter: int = 10_000) -> RateDistortionCurve:
    """Sweep ``slopes`` (each >= 0) with ``blahut_arimoto`` and collect the R(D) curve.

    Each slope is solved from the uniform start. Warm starts from the neighbouring slope do not pay here: the
    previous optimum puts its mass on the wrong letters, and draining mass from letters of vanishing optimal
    probability is the slowest part of the iteration.
    """
    slopes = np.array(slopes, dtype=np.float64)
    if slopes.ndim != 1 or slopes.size == 0:
        raise ValueError(f"slopes must be a non-empty 1-d sequence, got shape {slopes.shape}")
    points = [blahut_arimoto(p_x, distortion, slope, tol=tol, max_iter=max_iter) for slope in slopes]
    return RateDistortionCurve(
        slopes=read_only(slopes),
        rates=read_only(np.array([p.rate for p in points])),
        distortions=read_only(np.array([p.distortion for p in points])),
        converged=read_only(np.array([p.converged for p in points])),
        points=tuple(points),
    )


def _channel(log_q: np.ndarray, slope: float, distortion: np.ndarray) -> np.ndarray:
    """q(x̂|x) ∝ q(x̂) exp(-s d(x, x̂)), normalised in logs so that no row underflows."""
    logits = log_q[None, :] - slope * distortion
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))
