r"""Where the variational and the exact information bottleneck meet: a VIB trained on a discrete joint p(x, y).

The exact IB (:mod:`pyroib.exact`) minimises I(X;T) - β_IB I(T;Y) over encoders p(t|x). The deep VIB
(:mod:`pyroib.models.vib`, :mod:`pyroib.guides.vib`) minimises

    E_{p(x,y)} E_{q(z|x)}[-log p(y | z)]  +  β_VIB · E_{p(x)} KL(q(z|x) || N(0, I))       (cross-entropy + β·rate)

and since cross-entropy >= H(Y) - I(Z;Y) and rate >= I(X;Z), dividing by β_VIB gives a bound on
I(X;Z) - (1/β_VIB) I(Z;Y) + const: the two trade-offs correspond through **β_VIB = 1 / β_IB**.

Here x is the one-hot code of one of |X| letters, so the data set is the joint itself: every pair (x, y) with
p(x, y) > 0 is one data point and its log densities are weighted by p(x, y) through ``poutine.scale``, so the loss is
the expectation above, computed exactly rather than from samples of p(x, y).

Because there are only |X| encoders, the aggregate q(z) = Σ_x p(x) q(z|x) is an explicit mixture, and the actual
information of the trained encoder is a cheap Monte Carlo estimate (z_s ~ q(z|x), S draws per letter):

    I(X;Z) = Σ_x p(x) E_{q(z|x)}[log q(z|x) - log q(z)],
    I(Z;Y) = Σ_{x,y} p(x,y) E_{q(z|x)}[log q(z|y) - log q(z)],   q(z|y) = Σ_x p(x|y) q(z|x)   (Y - X - Z Markov).

The IB curve bounds every encoder, Gaussian ones included: I(Z;Y) <= I*(I(X;Z)), the exact curve's value at the
same I(X;Z). All numbers are in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyroib.exact import IBCurve, ib_curve
from pyroib.exact.measures import check_joint, check_positive
from pyroib.guides.vib import Guide
from pyroib.handlers import bottleneck
from pyroib.models.vib import Config, Model
from pyroib.objectives import InfoELBO


def _pairs(p_xy: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-hot x, label y and weight p(x, y) of every pair with p(x, y) > 0 (Pyro refuses a zero scale)."""
    xs, ys = np.nonzero(p_xy > 0)
    x = torch.nn.functional.one_hot(torch.as_tensor(xs), p_xy.shape[0]).to(torch.get_default_dtype())
    weight = torch.as_tensor(p_xy[xs, ys], dtype=torch.get_default_dtype())
    return x, torch.as_tensor(ys), weight


def _weighted(program, weight: torch.Tensor):
    def weighted(*args, **kwargs):
        with poutine.scale(scale=weight):
            return program(*args, **kwargs)

    return weighted


def information_estimates(p_xy, guide: Guide, samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Monte Carlo I(X;Z) and I(Z;Y) of ``guide``'s encoder on p(x, y), each with its standard error (nats).

    Each of the |X| letters gets ``samples`` draws; the per-letter sample means are combined with weights p(x) (or
    the row p(x, ·) for I(Z;Y)), so the standard error is sqrt(Σ_x w_x² var_x / S).
    """
    p_xy = check_joint(p_xy)
    p_x = p_xy.sum(1)
    support = np.nonzero(p_x > 0)[0]
    n_x = p_xy.shape[0]
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        eye = torch.eye(n_x, dtype=torch.get_default_dtype())
        loc, scale = guide.encode(eye[support])  # (X', D)
        encoders = dist.Normal(loc, scale).to_event(1)
        z = loc + scale * torch.randn((samples, *loc.shape), generator=generator)  # (S, X', D) z_s ~ q(z | x)
        log_q = encoders.log_prob(z.unsqueeze(-2))  # (S, X', X') log q(z | x')
    log_q = log_q.double().numpy()
    joint = p_xy[support]
    log_p_x = np.log(joint.sum(1))
    log_aggregate = _logsumexp(log_q + log_p_x, -1)  # log q(z)
    own = np.diagonal(log_q, axis1=1, axis2=2)  # log q(z | x), (S, X')
    xz_values = own - log_aggregate  # (S, X')
    with np.errstate(divide="ignore"):
        log_p_x_given_y = np.log(joint / joint.sum(0, keepdims=True).clip(min=1e-300))  # (X', Y)
    log_q_given_y = _logsumexp(log_q[..., None] + log_p_x_given_y, -2)  # (S, X', Y) log q(z | y)
    p_y_given_x = joint / joint.sum(1, keepdims=True)
    # a label with p(y) = 0 has log q(z|y) = -inf and weight 0: leave it out rather than make 0 * inf = nan
    pointwise = np.where(p_y_given_x > 0, log_q_given_y - log_aggregate[..., None], 0.0)
    zy_values = (pointwise * p_y_given_x).sum(-1)
    p_x = np.exp(log_p_x)
    return {
        "i_xz": float(xz_values.mean(0) @ p_x),
        "i_xz_se": _stderr(xz_values, p_x),
        "i_zy": float(zy_values.mean(0) @ p_x),
        "i_zy_se": _stderr(zy_values, p_x),
    }


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(a - top).sum(axis)) + np.squeeze(top, axis)


def _stderr(values: np.ndarray, weights: np.ndarray) -> float:
    return float(math.sqrt((weights**2 * values.var(0, ddof=1)).sum() / values.shape[0]))


def fit_vib_discrete(
    p_xy,
    beta: float,
    latent_dim: int = 2,
    hidden: int = 32,
    steps: int = 600,
    lr: float = 0.02,
    seed: int = 0,
    particles: int = 16,
    mc_samples: int = 2000,
) -> dict:
    """Train a VIB with ``β_VIB = beta`` (the exact IB's β_IB = 1 / beta) on the joint ``p_xy`` and measure it.

    Full-batch Adam on the exact expected loss (all pairs weighted by p(x, y)), closed-form KL (``analytic_kl``),
    ``particles`` reparameterised draws per step for the cross-entropy. Returns, in nats:
    ``rate`` = E_x KL(q(z|x) || p(z)) (>= I(X;Z)), ``cross_entropy``, ``h_y``, ``i_zy_lower`` = H(Y) - cross_entropy
    (<= I(Z;Y)), the Monte Carlo ``i_xz``, ``i_zy`` with standard errors ``i_xz_se``, ``i_zy_se``, ``beta_vib``,
    ``beta_ib``, the final ``loss`` and the trained ``model`` and ``guide``.
    """
    p_xy = check_joint(p_xy)
    beta = check_positive(beta, "beta (the VIB's weight on the rate; beta_IB = 1 / beta)")
    if steps < 1 or particles < 1 or mc_samples < 2:
        raise ValueError(
            f"steps and particles must be >= 1 and mc_samples >= 2, got {steps}, {particles}, {mc_samples}"
        )
    pyro.set_rng_seed(seed)
    config = Config(data_shape=(p_xy.shape[0],), latent_dim=latent_dim, hidden=(hidden,), n_classes=p_xy.shape[1])
    model, guide = Model(config), Guide(config)
    x, y, weight = _pairs(p_xy)
    weighted_model, weighted_guide = bottleneck(_weighted(model, weight), _weighted(guide, weight), beta=beta)
    objective = InfoELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1, analytic_kl=True)
    optimizer = torch.optim.Adam([*model.parameters(), *guide.parameters()], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = objective.differentiable_loss(weighted_model, weighted_guide, x, y)
        loss.backward()
        optimizer.step()
    return {
        **_bounds(p_xy, model, guide, x, y, weight, mc_samples, seed),
        "beta_vib": beta,
        "beta_ib": 1.0 / beta,
        "loss": float(loss.detach()),
        **information_estimates(p_xy, guide, mc_samples, seed),
        "model": model,
        "guide": guide,
    }


def _bounds(p_xy, model, guide, x, y, weight, samples, seed) -> dict[str, float]:
    """Rate and cross-entropy as exact p(x, y)-weighted sums (Monte Carlo over z only for the cross-entropy)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        loc, scale = guide.encode(x)
        rate = float((kl_divergence(dist.Normal(loc, scale).to_event(1), model.prior(x.shape[0])) * weight).sum())
        z = loc + scale * torch.randn((samples, *loc.shape), generator=generator)
        log_p = torch.log_softmax(model.classifier(z), -1).gather(-1, y.expand(samples, -1).unsqueeze(-1))
        cross_entropy = float(-(log_p.squeeze(-1).mean(0) * weight).sum())
    p_y = p_xy.sum(0)
    h_y = float(-(p_y[p_y > 0] * np.log(p_y[p_y > 0])).sum())
    return {"rate": rate, "cross_entropy": cross_entropy, "h_y": h_y, "i_zy_lower": h_y - cross_entropy}


@dataclass(frozen=True, eq=False)
class Plane:
    """The exact IB curve and VIB points (dicts from :func:`fit_vib_discrete`, without the networks)."""

    curve: IBCurve
    points: tuple[dict, ...]

    def curve_at(self, i_xz: float) -> float:
        """I*(R): the exact curve's I(T;Y) at I(X;T) = R by linear interpolation (a chord: it lies below the
        concave curve, so a dense β grid is needed for it to be tight), flat beyond the last point."""
        order = np.argsort(self.curve.i_xt)
        return float(np.interp(i_xz, self.curve.i_xt[order], self.curve.i_ty[order]))


def plane(p_xy, betas_ib, vib_betas, **fit_options) -> Plane:
    """Exact IB curve over ``betas_ib`` (increasing, annealed) and one VIB per β_VIB in ``vib_betas``."""
    curve = ib_curve(p_xy, np.asarray(betas_ib, dtype=np.float64))
    points = []
    for beta in vib_betas:
        fit = fit_vib_discrete(p_xy, beta, **fit_options)
        points.append({k: v for k, v in fit.items() if k not in ("model", "guide")})
    return Plane(curve=curve, points=tuple(points))


def plot_plane(result: Plane, path, title: str = "Information plane: exact IB vs VIB") -> None:
    """Save the information plane (nats): exact curve, VIB Monte Carlo points with 2-SE bars, and the VIB bounds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(result.curve.i_xt, result.curve.i_ty, "-", color="black", label="exact IB (annealed)")
    for point in result.points:
        label = f"β_VIB={point['beta_vib']:.3g}"
        ax.errorbar(
            point["i_xz"],
            point["i_zy"],
            xerr=2 * point["i_xz_se"],
            yerr=2 * point["i_zy_se"],
            fmt="o",
            label=f"VIB MC, {label}",
        )
        ax.plot([point["i_xz"], point["rate"]], [point["i_zy"], point["i_zy_lower"]], ":", color="grey")
        ax.plot(point["rate"], point["i_zy_lower"], "x", color="grey")
    ax.plot([], [], "x:", color="grey", label="VIB bounds (rate, H(Y)-CE)")
    ax.set_xlabel("I(X;Z) [nats]")
    ax.set_ylabel("I(Z;Y) [nats]")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def example_joint(n_x: int = 8, n_y: int = 3, seed: int = 0, concentration: float = 0.5) -> np.ndarray:
    """A structured joint: p(x) ~ Dirichlet(5), p(y|x) ~ Dirichlet(concentration) (small: peaked, distinct rows)."""
    if n_x < 2 or n_y < 2:
        raise ValueError(f"need |X| >= 2 and |Y| >= 2, got {n_x}, {n_y}")
    rng = np.random.default_rng(seed)
    p_x = rng.dirichlet(np.full(n_x, 5.0))
    p_y_given_x = rng.dirichlet(np.full(n_y, concentration), size=n_x)
    return p_x[:, None] * p_y_given_x


__all__ = ["Plane", "example_joint", "fit_vib_discrete", "information_estimates", "plane", "plot_plane"]
