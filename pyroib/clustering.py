"""Clustering read off a program's categorical latent site, scored against the data set's labels.

Each point goes to the value of highest posterior probability: q(y | x) for a site the guide samples, averaged over
the guide's draws of the sites above it (q(y | x) = E_q(z|x) q(y | z)), or p(y | z, x) for a site summed out in the
model, from Pyro's ``TraceEnum_ELBO.compute_marginals`` over the guide's draws. Scores:

* ``cluster_accuracy``: the fraction of points whose cluster maps to their label under the best one-to-one map of
  clusters to labels (the Hungarian method, ``scipy.optimize.linear_sum_assignment``; unmatched clusters count as
  errors), the unsupervised accuracy of Xie et al. 2016 and Gao et al. 2019;
* ``nmi``: normalised mutual information (arithmetic normalisation, scikit-learn's default);
* ``ari``: the adjusted Rand index (0 for chance, 1 for identical partitions).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from .plates import max_plate_nesting
from .program import trace_pair

CATEGORICAL = (dist.Categorical, dist.OneHotCategorical)


def hungarian_accuracy(labels, clusters) -> float:
    """Accuracy under the one-to-one map of clusters to labels that maximises it."""
    # imported here: scikit-learn and SciPy take 0.8 s to import, which every `pyroib train` paid through evaluate
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics.cluster import contingency_matrix

    table = contingency_matrix(labels, clusters)  # labels x clusters
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def clustering_scores(labels, clusters) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = torch.as_tensor(labels).cpu().numpy()
    clusters = torch.as_tensor(clusters).cpu().numpy()
    return {
        "cluster_accuracy": hungarian_accuracy(labels, clusters),
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
    }


def categorical_sites(model, guide, x, y=None) -> dict[str, str]:
    """Categorical latent sites in model order: name -> "guide" (sampled or enumerated by the guide) or "model"
    (enumerated in the model only)."""
    model_trace, guide_trace = trace_pair(model, guide, x[:2], None if y is None else y[:2])
    found = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name in guide_trace.nodes and isinstance(guide_trace.nodes[name]["fn"], CATEGORICAL):
            found[name] = "guide"
        elif name not in guide_trace.nodes and site["infer"].get("enumerate") and isinstance(site["fn"], CATEGORICAL):
            found[name] = "model"
    return found


def cluster_probabilities(
    model, guide, x, site: str, where: str, y=None, samples: int = 8, batch_size: int = 1000
) -> torch.Tensor:
    """(N, K) posterior probabilities of ``site``'s values, averaged over ``samples`` draws of the other sites."""
    marginals = TraceEnum_ELBO(max_plate_nesting=max_plate_nesting(model, guide, x[:2], None if y is None else y[:2]))
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        yb = None if y is None else y[start : start + batch_size]
        total = 0.0
        for _ in range(samples):
            with torch.no_grad():
                if where == "guide":
                    probs = poutine.trace(guide).get_trace(xb, yb).nodes[site]["fn"].probs
                else:
                    probs = marginals.compute_marginals(model, guide, xb, yb)[site].probs
            total = total + probs.reshape(xb.shape[0], -1)
        out.append(total / samples)
    return torch.cat(out)


def cluster_evaluation(model, guide, x, labels, y=None, samples: int = 8) -> dict:
    """Scores of every categorical site against ``labels``; the first site in model order (the top of the story)
    also under the plain keys ``cluster_accuracy``, ``nmi``, ``ari``. {} for a program without one."""
    sites = categorical_sites(model, guide, x, y)
    result: dict = {}
    for i, (name, where) in enumerate(sites.items()):
        probabilities = cluster_probabilities(model, guide, x, name, where, y, samples)
        scores = clustering_scores(labels, probabilities.argmax(-1))
        used = torch.bincount(probabilities.argmax(-1), minlength=probabilities.shape[-1])
        scores["clusters_used"] = int((used > 0).sum())
        if i == 0:
            result.update(scores)
            result["cluster_site"] = name
        if len(sites) > 1:
            result.update({f"{key}/{name}": value for key, value in scores.items()})
    return result


__all__ = [
    "categorical_sites",
    "cluster_evaluation",
    "cluster_probabilities",
    "clustering_scores",
    "hungarian_accuracy",
]
