"""Per-point scores of a trained run, for novelty detection (``pyroib score``): how far each point is from what the
run was trained on, one number per term of the bounded information bottleneck (Voloshynovskiy et al., BIB-AE).

Each score is in nats for one data point; larger means more novel, except the critics' logits and the ELBO, which
are larger for points that look like training data (their sign is kept as the estimators define them):

* ``rate``: A = log q(z|x) - log p(z) at one draw z ~ q(z|x) (for a point-mass code, the code length).
* ``distortion``: C = -log p(x | z) at that draw.
* ``factor/<name>``: each ``pyro.factor`` penalty of the model (a quantiser's commitment cost, say).
* ``elbo``: -(A + C).
* ``nll_iw``: -log p(x) by importance sampling with K draws (Burda et al. 2016).
* ``marginal_log_ratio``: B's integrand log q(z) - log p(z) at the point's code, q(z) the aggregate posterior of
  the *training* encodings (the exact mixture of a subsample for a Gaussian encoder; the codes' frequencies for a
  vector quantiser).
* ``critic/<name>``: the logit of each density-ratio critic the objective trained (``data``: T(x) ≈ log
  p_data(x) / p_θ(x), BIB-AE's D; ``marginal``: T(z) ≈ log q(z) / p(z); ``tc``).
"""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from .data import as_images
from .evaluate import importance_nll
from .objectives.core import latent_site_names
from .plates import DATA_PLATE
from .program import is_factor

MARGINAL_COMPONENTS = 5000  # training encodings in the aggregate posterior of a Gaussian encoder


def _per_point(site) -> torch.Tensor:
    """A site's log density summed over every dimension but the data plate's: shape (B,)."""
    log_p = site["fn"].log_prob(site["value"])
    frames = [f for f in site["cond_indep_stack"] if f.name == DATA_PLATE]
    if not frames:
        raise ValueError(f"site {site['name']!r} is outside the data plate: it has no per-point score")
    dim = frames[0].dim
    if log_p.dim() < -dim:
        raise ValueError(f"site {site['name']!r} has no data dimension in its log density")
    return log_p.movedim(dim, 0).reshape(log_p.shape[dim], -1).sum(-1)


def point_terms(model, guide, x: torch.Tensor, y=None) -> dict[str, torch.Tensor]:
    """rate, distortion, factors and elbo per point (one draw from the guide), in nats; β = 1."""
    with torch.no_grad():
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(x, y))
        model_trace = prune_subsample_sites(poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y))
    enumerated = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and s["infer"].get("enumerate")]
    if enumerated:
        raise ValueError(
            f"per-point rate and distortion need every latent drawn once, and this program enumerates "
            f"{', '.join(enumerated)}: score it with nll_iw only (--terms nll_iw)"
        )
    latents = latent_site_names(model_trace, guide_trace)
    scores: dict[str, torch.Tensor] = {"rate": 0.0, "distortion": 0.0}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if is_factor(site):
            scores[f"factor/{name}"] = -_per_point(site)
        elif site["is_observed"]:
            scores["distortion"] = scores["distortion"] - _per_point(site)
        elif name in latents:
            scores["rate"] = scores["rate"] + _per_point(guide_trace.nodes[name]) - _per_point(site)
    scores["elbo"] = -(scores["rate"] + scores["distortion"])
    return scores


def _codes(run, x: torch.Tensor, site: str) -> torch.Tensor:
    """The guide's draw at ``site`` for each point, flattened to (B, D)."""
    with torch.no_grad():
        trace = poutine.trace(run.guide).get_trace(x)
    z = trace.nodes[site]["value"]
    return z.reshape(z.shape[0], -1)


class MarginalRatio:
    """log q(z) - log p(z) at a point's code, q(z) from the training split's encodings."""

    def __init__(self, run, train_x: torch.Tensor, site: str, seed: int = 0):
        self.run, self.site = run, site
        model = run.model
        if hasattr(model, "quantiser"):  # a vector quantiser: the training codes' frequencies against π
            from .codec import code_indices
            from .quantisation import code_counts

            index = code_indices(run, train_x)
            counts = code_counts(index, model.quantiser.size)
            # (M, K), with half a count each (Krichevsky-Trofimov), so that a code unseen in training stays finite
            self.log_q = ((counts + 0.5) / (index.shape[0] + 0.5 * counts.shape[1])).log()
            self.log_p = model.quantiser.log_probabilities().detach().cpu().double()
            self.kind = "codes"
            return
        run.capabilities.require("encode", "the marginal term's per-point score (an aggregate posterior)")
        run.capabilities.require("takes_prior", "the marginal term's per-point score (log p(z))")
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(train_x.shape[0], generator=generator)[:MARGINAL_COMPONENTS]
        with torch.no_grad():
            self.loc, self.scale = run.guide.encode(as_images(train_x[keep.to(train_x.device)]))
        self.kind = "gaussian"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from .estimators import exact_log_qz

        if self.kind == "codes":
            from .codec import code_indices

            index = code_indices(self.run, x)
            rows = torch.arange(index.shape[1])
            return (self.log_q[rows, index] - self.log_p[rows, index]).sum(-1).float()
        with torch.no_grad():
            z = _codes(self.run, x, self.site)
            log_q, _ = exact_log_qz(z, self.loc, self.scale)
            prior = self.run.model.prior(z.shape[0])
            return (log_q - prior.log_prob(z)).cpu()


def critic_scores(run, x: torch.Tensor, site: str | None) -> dict[str, torch.Tensor]:
    """Each trained critic's logit on the points (``data``) or their codes (``marginal``, ``tc``)."""
    critics = getattr(run.objective, "critics", {})
    out = {}
    with torch.no_grad():
        for name, critic in critics.items():
            inputs = x.reshape(x.shape[0], -1) if name == "data" else _codes(run, x, site)
            out[f"critic/{name}"] = critic(inputs).reshape(-1).cpu()
    return out


def score_run(
    run, x: torch.Tensor, y=None, *, train_x=None, iw_samples: int = 100, batch_size: int = 500, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Every score for each point of ``x``: {name: (N,) tensor}."""
    torch.manual_seed(seed)
    with torch.no_grad():
        guide_trace = poutine.trace(run.guide).get_trace(x[:2])
        model_trace = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(x[:2])
    latents = latent_site_names(model_trace, guide_trace)
    site = run.objective.latent_site or run.capabilities.latent_site or (latents[0] if len(latents) == 1 else None)
    marginal = MarginalRatio(run, train_x, site, seed) if train_x is not None and site is not None else None
    columns: dict[str, list[torch.Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        xb = as_images(x[start : start + batch_size])
        yb = None if y is None else y[start : start + batch_size]
        parts = {k: v.cpu() for k, v in point_terms(run.model, run.guide, xb, yb).items()}
        if iw_samples > 0 and run.capabilities.observes_inputs and run.capabilities.importance_sampling:
            parts["nll_iw"] = importance_nll(run.model, run.guide, xb, yb, samples=iw_samples).cpu()
        if marginal is not None:
            parts["marginal_log_ratio"] = marginal(xb)
        parts.update(critic_scores(run, xb, site))
        for k, v in parts.items():
            columns.setdefault(k, []).append(v.reshape(-1).float())
    return {k: torch.cat(v) for k, v in columns.items()}


def write_csv(path, scores: dict[str, torch.Tensor], labels=None) -> None:
    """One row per point: index, label (when the split has labels), then every score, atomically."""
    import csv
    import io

    from .checkpoint import write_text_atomic

    names = list(scores)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    has_labels = labels is not None and labels.dim() == 1
    writer.writerow(["index", *(["label"] if has_labels else []), *names])
    table = torch.stack([scores[k] for k in names], 1).tolist()
    label_list = labels.tolist() if has_labels else None
    for i, row in enumerate(table):
        cells = [f"{v:.6g}" if math.isfinite(v) else str(v) for v in row]
        writer.writerow([i, *([label_list[i]] if has_labels else []), *cells])
    write_text_atomic(path, buffer.getvalue())
