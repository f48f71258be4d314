"""Evaluation and sampling of the diffusion program: the KL per timestep over a split, the bound in bits per
dimension, ancestral samples.

The ELBO's T + 1 terms (:mod:`pyroib.diffusion`) are measured as Ho et al. report them, on the CPU's budget: the data
term L_0 and the prior term L_T at every point of the split, and each L_{t-1} (t = 2..T) as its mean over
``points`` points drawn at random for that timestep (a fresh x_t ~ q(x_t | x_0) each). Their sum is an unbiased
estimate of the split's mean negative ELBO, with a standard error from the per-timestep spreads; ``points`` =
the split's size makes it the full measurement.
"""

from __future__ import annotations

import math

import torch

from .diffusion import to_levels

CHUNK = 256


def diffusion_curve(model, x: torch.Tensor, points: int = 64, seed: int = 0) -> dict:
    """``kl_per_timestep`` (nats per image, t = 1..T: L_0 first, then L_1..L_{T-1}, i.e. the KL entering at each
    step), ``prior_term`` L_T, ``data_term`` L_0, ``rate`` (L_T + Σ L_{t-1}), ``distortion`` (L_0), ``elbo``,
    ``bits_per_dim`` and its standard error ``bits_per_dim_se``, ``cumulative_rate`` (Σ_{s<=t} L_{s-1} from t = 2)."""
    T = model.config.timesteps
    generator = torch.Generator().manual_seed(seed)
    n, dims = x.shape[0], math.prod(x.shape[1:])
    with torch.no_grad():
        data = torch.cat([model.data_term(x[i : i + CHUNK]) for i in range(0, n, CHUNK)])
        prior = torch.cat([model.prior_term(x[i : i + CHUNK]) for i in range(0, n, CHUNK)])
        # one (timestep, point) pair per row: every t = 2..T with `points` random points each
        steps = torch.arange(2, T + 1).repeat_interleave(points)
        chosen = torch.randint(n, (len(steps),), generator=generator)
        noise = torch.randn((len(steps), *x.shape[1:]), generator=generator)
        values = torch.cat(
            [
                model.timestep_kl(
                    x[chosen[i : i + CHUNK].to(x.device)],
                    steps[i : i + CHUNK].to(x.device),
                    noise[i : i + CHUNK].to(x.device),
                ).cpu()
                for i in range(0, len(steps), CHUNK)
            ]
        ).reshape(T - 1, points)
    per_step = values.double().mean(1)
    variance = (values.double().var(1) / points).sum() if points > 1 else torch.tensor(math.nan)
    variance = variance + data.double().var() / n + prior.double().var() / n
    rate = float(prior.double().mean() + per_step.sum())
    distortion = float(data.double().mean())
    nats = rate + distortion
    return {
        "kl_per_timestep": [distortion, *per_step.tolist()],
        "cumulative_rate": per_step.cumsum(0).tolist(),
        "prior_term": float(prior.double().mean()),
        "data_term": distortion,
        "rate": rate,
        "distortion": distortion,
        "elbo": -nats,
        "bits_per_dim": nats / (dims * math.log(2)),
        "bits_per_dim_se": float(variance.sqrt()) / (dims * math.log(2)),
        "curve_points_per_timestep": points,
    }


def ancestral_samples(model, n: int, steps: int | None = None, generator: torch.Generator | None = None):
    """x_0 in [0, 1] on 256 levels (the data term's mean at the last step), from x_T ~ N(0, I) through ``steps``
    evenly spaced timesteps of the T. Each jump t -> s draws from N(mean of q(x_s | x_t, x̂_0), σ²) with x̂_0 the
    prediction from ε_θ clipped to [-1, 1] (as Ho et al.'s and Nichol and Dhariwal's samplers do) and σ² the
    model's kind of variance for that pair: with every timestep and no clipping needed this is the model's own
    reverse step; fewer steps are the respaced schedule of Nichol and Dhariwal (2021, §4)."""
    T = model.config.timesteps
    steps = T if steps is None else steps
    if not 2 <= steps <= T:
        raise ValueError(f"--steps must be from 2 to the model's {T} timesteps, got {steps}")
    schedule = model.schedule
    device = schedule.betas.device
    shape = (n, *model.config.data_shape)
    times = torch.linspace(T, 1, steps).round().long().unique_consecutive().tolist()
    alpha_bar = schedule.alpha_bar.double()
    with torch.no_grad():
        xt = torch.randn(shape, generator=generator, device=device)
        for t, s in zip(times[:-1], times[1:]):
            epsilon = model.network(xt, torch.full((n,), t, dtype=torch.long, device=device))
            mean, variance = respaced_step(
                alpha_bar[t - 1],
                alpha_bar[s - 1],
                xt.double(),
                epsilon.double(),
                variance=model.config.reverse_variance,
            )
            noise = torch.randn(shape, generator=generator, device=device).double()
            xt = (mean + variance.sqrt() * noise).float()
        mean, _ = model.reverse(xt, 1)
        return to_levels(mean)


def respaced_step(
    alpha_bar_t, alpha_bar_s, xt: torch.Tensor, epsilon: torch.Tensor, clip: bool = True, variance: str = "posterior"
):
    """(mean, variance) of the step t -> s < t: the mean of q(x_s | x_t, x̂_0), with x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) /
    sqrt(ᾱ_t) (clipped to [-1, 1] with ``clip``), and the pair's posterior variance or its β = 1 - ᾱ_t / ᾱ_s
    (``variance="beta"``, Ho et al.'s larger choice)."""
    x0 = (xt - (1 - alpha_bar_t).sqrt() * epsilon) / alpha_bar_t.sqrt()
    if clip:
        x0 = x0.clamp(-1, 1)
    beta = 1 - alpha_bar_t / alpha_bar_s
    mean = (alpha_bar_s.sqrt() * beta / (1 - alpha_bar_t)) * x0 + (
        (1 - beta).sqrt() * (1 - alpha_bar_s) / (1 - alpha_bar_t)
    ) * xt
    return mean, beta * (1 - alpha_bar_s) / (1 - alpha_bar_t) if variance == "posterior" else beta


def plot_kl_per_timestep(ax, curves: dict[str, list[float]]) -> None:
    """L_{t-1} against t on a log scale, one line per run (``curves``: label -> kl_per_timestep, L_0 first)."""
    for label, values in curves.items():  # values[t - 1] is L_{t-1}: L_{t-1} at timestep t, t = 2..T
        ax.plot(range(2, len(values) + 1), values[1:], label=label, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("L_{t-1} = KL (nats per image)")
    ax.legend(fontsize=7)


def report_section(run, splits, out_dir) -> dict[str, str]:
    """For ``pyroib report`` of a diffusion run: the KL per timestep and the cumulative rate (from the report's own
    evaluation.json), and a grid of ancestral samples. {title: png}."""
    import json
    from pathlib import Path

    if not callable(getattr(run.model, "timestep_kl", None)):
        return {}
    from .figures import plot, save_grid

    out_dir = Path(out_dir)
    result = json.loads((out_dir / "evaluation.json").read_text())
    figures = {}
    if "kl_per_timestep" in result:
        curve = result["kl_per_timestep"]

        def draw(ax):
            plot_kl_per_timestep(ax, {f"test split, {result['bits_per_dim']:.3f} bits/dim": curve})
            twin = ax.twinx()
            twin.plot(range(2, len(curve) + 1), result["cumulative_rate"], "k--", linewidth=1)
            twin.set_ylabel("Σ_{s<=t} L_{s-1} (nats per image)")
            ax.set_title(f"data term L_0 = {result['data_term']:.1f}, prior term L_T = {result['prior_term']:.3g} nats")

        plot(out_dir / "kl_per_timestep.png", draw)
        figures["KL per timestep"] = "kl_per_timestep.png"
    generator = torch.Generator(device=run.device).manual_seed(0)
    save_grid(
        run.model.sample_images(64, generator=generator).cpu(),
        out_dir / "diffusion_samples.png",
        nrow=8,
        title=f"ancestral samples, all {run.model.config.timesteps} timesteps",
    )
    figures["Ancestral samples"] = "diffusion_samples.png"
    return figures
