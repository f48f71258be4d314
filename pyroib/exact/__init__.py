"""Exact discrete information-theoretic solvers: the ground truth the variational estimators are tested against.

* ``blahut_arimoto`` / ``rate_distortion_curve``: R(D) of a discrete source under any distortion matrix.
* ``iterative_ib``: the self-consistent IB equations with random restarts.
* ``deterministic_ib``: the deterministic IB (hard clusters, H(T) - β I(T;Y)).
* ``ib_curve``: the IB curve by annealing in β, with the β values where the number of clusters changes.
* ``entropy``, ``mutual_information``, ``nats_to``: the measures, in nats unless bits are asked for.

Everything is NumPy float64 and in nats.
"""

from .annealing import IBCurve, effective_clusters, ib_curve
from .ib import IBSolution, deterministic_ib, iterative_ib
from .measures import entropy, mutual_information, nats_to
from .rate_distortion import RateDistortionCurve, RateDistortionPoint, blahut_arimoto, rate_distortion_curve

__all__ = [
    "IBCurve",
    "IBSolution",
    "RateDistortionCurve",
    "RateDistortionPoint",
    "blahut_arimoto",
    "deterministic_ib",
    "effective_clusters",
    "entropy",
    "ib_curve",
    "iterative_ib",
    "mutual_information",
    "nats_to",
    "rate_distortion_curve",
]
