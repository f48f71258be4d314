"""Per-layer information of a hierarchical program (``models/hvae.py``), read as stacked CorEx (Gao et al. 2019).

With u = z^(l-1) the layer below (x for l = 1), each layer l gets, in nats, over the aggregate posterior of the split:

* ``layer_mi/z<l>``: I(u; z^(l)), from q(z^(l) | u) over one draw of u per point: for a Gaussian layer the exact
  mixture estimate of :func:`pyroib.estimators.exact_log_qz` (at most log M), for a categorical layer
  H(E q(z|u)) − E H(q(z|u)). For l = 1 this is I(x; z1); above, by data processing, an upper bound on I(x; z^(l)).
* ``layer_tc/z<l>``: TC(z^(l)) of a Gaussian layer's aggregate posterior. The seed's claim is that it falls with depth.
* ``corex_term/z<l>``: a lower bound on the layer's CorEx term (Ver Steeg & Galstyan 2015, the terms Gao et al.'s
  Theorem 1 adds up): TC_L(u; z^(l)) = Σ_i I(u_i; z^(l)) − Σ_j I(z^(l)_j; u), with each I(u_i; z^(l)) ≥
  max(0, H(u_i) − E[−log p(u_i | z^(l))]) (Barber & Agakov, with the model's own factorised p(u | z^(l)) as the
  variational decoder). H(u_i) is the entropy of a binary pixel's mean for l = 1 (binary data only) and the
  differential entropy of the aggregate posterior's marginal above. ``corex_bound`` is their sum, a lower bound on
  TC(x) when every layer has a term.

All of these are quantities of the M-point empirical distribution of the split: an information about x is at most
log M (7.6 nats for the default 2,000 points).
* ``top_dims/z1`` and ``top_mi/z1``: the two dimensions of z1 with the largest I(x; z1_i), and those values.
"""

from __future__ import annotations

import torch

from .estimators import exact_log_qz, gaussian_log_prob_per_dim
from .hierarchy import site_name


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-30).log()).sum(-1)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    return _entropy(torch.stack([p, 1 - p], -1))


def _gaussian_layer(loc, scale, generator):
    """One code per point, and the aggregate posterior's terms: (codes, I, TC, per-dim I, per-dim marginal entropy)."""
    z = loc + scale * torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
    log_qz, log_qz_per_dim = exact_log_qz(z, loc, scale)
    given = gaussian_log_prob_per_dim(z, loc, scale)
    mi = (given.sum(-1) - log_qz).mean()
    tc = (log_qz - log_qz_per_dim.sum(-1)).mean()
    return z, mi, tc, (given - log_qz_per_dim).mean(0), -log_qz_per_dim.mean(0)


def layer_information(model, guide, x: torch.Tensor, y=None, max_points: int = 2000, seed: int = 0) -> dict:
    """The numbers above for a subset of at most ``max_points`` points of ``x`` (cost O(M² D) per Gaussian layer)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    if x.shape[0] > max_points:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        x = x[keep.to(x.device)]
    layers = model.layers
    out: dict = {}
    terms = []
    with torch.no_grad():
        loc, scale = guide.encode(x)
        z1, mi, tc, mi_per_dim, entropy_per_dim = _gaussian_layer(loc, scale, generator)
        out["layer_mi/z1"], out["layer_tc/z1"] = float(mi), float(tc)
        top = mi_per_dim.topk(min(2, mi_per_dim.numel()))
        out["top_dims/z1"], out["top_mi/z1"] = top.indices.tolist(), top.values.tolist()
        likelihood = model.likelihood(model.decoder(z1))
        binary = bool(((x == 0) | (x == 1)).all())
        if binary and hasattr(likelihood, "base_dist"):
            pixel_entropy = _binary_entropy(x.mean(0))
            pixel_cross_entropy = -likelihood.base_dist.log_prob(x).mean(0)
            per_pixel = (pixel_entropy - pixel_cross_entropy).clamp_min(0)
            out["corex_term/z1"] = float(per_pixel.sum() - mi_per_dim.sum())
            terms.append(out["corex_term/z1"])
        lower, lower_layer, lower_entropy = z1, layers[0], entropy_per_dim
        if len(layers) > 1 and not hasattr(guide, "upper"):
            out["layer_note"] = (
                "the guide does not infer the layers bottom-up (no Guide.upper): terms above z1 are not estimated"
            )
            return out
        for level in range(2, len(layers) + 1):
            layer, name = layers[level - 1], site_name(level)
            q = guide.upper(level, lower)
            if layer.categorical:
                probs = q.probs.reshape(lower.shape[0], -1)
                mi = _entropy(probs.mean(0)) - _entropy(probs).mean()
                out["clusters_effective/" + name] = float(_entropy(probs.mean(0)).exp())
                values = torch.arange(layer.size, device=x.device)
                # p(u_i | z = k) for every k at once: (K, M, D) per-dimension log densities
                conditional = model.conditional(level - 1, values[:, None])
                per_dim = conditional.base_dist.log_prob(lower) if not lower_layer.categorical else None
                cross_entropy = None if per_dim is None else -(probs.T[..., None] * per_dim).sum(0).mean(0)
                upper = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
                upper_entropy = None
            else:
                upper, mi, tc, upper_mi_per_dim, upper_entropy = _gaussian_layer(
                    q.base_dist.loc, q.base_dist.scale, generator
                )
                out["layer_tc/" + name] = float(tc)
                conditional = model.conditional(level - 1, upper)
                per_dim = None if lower_layer.categorical else conditional.base_dist.log_prob(lower)
                cross_entropy = None if per_dim is None else -per_dim.mean(0)
            out["layer_mi/" + name] = float(mi)
            if cross_entropy is not None:  # a categorical layer below is one variable: its CorEx term is 0
                # Σ_j I(z_j; u): one variable for a categorical layer, per dimension for a Gaussian one
                explained = mi if layer.categorical else upper_mi_per_dim.sum()
                out["corex_term/" + name] = float((lower_entropy - cross_entropy).clamp_min(0).sum() - explained)
                terms.append(out["corex_term/" + name])
            lower, lower_layer, lower_entropy = upper, layer, upper_entropy
    if terms and len(terms) == len(layers):
        out["corex_bound"] = float(sum(terms))
    return out


def _means_down(model, top_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) of z1 under the generative chain from a top-layer value, each layer at its conditional's mean
    (a categorical layer in between at its most probable value)."""
    value = top_value
    for level in range(len(model.layers) - 1, 0, -1):
        conditional = model.conditional(level, value)
        if model.layers[level - 1].categorical:
            value = conditional.probs.argmax(-1)
        else:
            value, scale = conditional.base_dist.loc, conditional.base_dist.scale
    return value, scale


def report_section(run, splits, out) -> dict:
    """The traversal figure of a hierarchy whose top layer is categorical: one row per top value, the two z1
    dimensions with the largest I(x; z1_i) moved from -2 to 2 standard deviations of p(z1 | top) around its mean,
    the others held at that mean; and the per-layer terms as bars. {} for other programs."""
    import json

    from .figures import plot, save_grid

    model = run.model
    layers = getattr(model, "layers", None)
    if not layers or not run.capabilities.decode or len(splits.data_shape) != 3:
        return {}
    result = json.loads((out / "evaluation.json").read_text())
    figures = {}
    top = layers[-1]
    if top.categorical and len(layers) > 1 and "top_dims/z1" in result:
        dims = result["top_dims/z1"]
        device = run.device  # report loads the run with --device auto
        steps = torch.linspace(-2, 2, 7, device=device)
        rows = []
        with torch.no_grad():
            for k in range(top.size):
                mean, scale = _means_down(model, torch.tensor([k], device=device))
                for j in dims:
                    codes = mean.repeat(len(steps), 1)
                    codes[:, j] = mean[0, j] + steps * scale[0, j]
                    rows.append(model.decode(codes))
        save_grid(
            torch.cat(rows),
            out / "layer_traversals.png",
            nrow=len(steps) * len(dims),
            title=f"one row per value of {site_name(len(layers))}; z1 dims {dims} (largest I(x; z1_i)) from -2 to 2 sd",
        )
        figures["Traversals per value of the top layer"] = "layer_traversals.png"
    names = [site_name(i + 1) for i in range(len(layers))]
    kinds = [("layer_mi/", "I(layer below; layer)"), ("layer_tc/", "TC(layer)"), ("rate/", "rate")]

    def bars(ax):
        width = 0.8 / len(kinds)
        for i, (prefix, label) in enumerate(kinds):
            values = [result.get(prefix + name, float("nan")) for name in names]
            ax.bar([p + i * width for p in range(len(names))], values, width, label=label)
        ax.set_xticks([p + width for p in range(len(names))], names)
        ax.set_ylabel("nats per data point")
        ax.set_title("per-layer information on the test split (layer 1 next to x)")
        ax.legend(fontsize=8)

    plot(out / "layer_information.png", bars)
    figures["Per-layer information"] = "layer_information.png"
    return figures


__all__ = ["layer_information", "report_section"]
