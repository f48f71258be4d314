"""Architectures by name: a model/guide program pair, an objective class and its default weights.

A *program* is found by convention: ``pyroib.models.<name>`` exports ``Config`` and ``Model``, and
``pyroib.guides.<name>`` exports ``Guide`` (hyphens in names become underscores), so a new generative story needs two
files and no edit here. A user's own file ``PATH.py`` exports ``Config``, ``Model`` and ``Guide`` together (and may
export ``objective``, an ELBO class, and ``options``, its keyword defaults). This table only names the variants that
pair a program with a different objective or defaults; its ``options`` become command-line flags.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from .objectives import (
    MMDELBO,
    AdversarialELBO,
    BoundedIBELBO,
    DiffusionELBO,
    FactorVAEELBO,
    InfoELBO,
    TotalCorrelationELBO,
)
from .program import Program, ProgramError, check_classes, load_module

_CRITIC = {"critic_width": 256, "critic_depth": 2, "critic_lr": 1e-4, "critic_steps": 1}
# batch-level terms read one latent site; None: the program's only one, or its declared Model.latent_site
_SITE = {"latent_site": None}


@dataclass(frozen=True)
class Architecture:
    program: str
    objective: type = InfoELBO
    options: dict = field(default_factory=lambda: dict(_SITE))  # objective keyword -> default; each becomes a --flag
    # training defaults, e.g. {"beta": 4.0}; "model_config" holds defaults of the program's Config fields
    defaults: dict = field(default_factory=dict)
    summary: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "vae": Architecture(
        "vae", summary="VAE; β-VAE, annealed/cyclical/capacity β and AnchorVAE via --beta, --schedule and --anchors"
    ),
    "beta-vae": Architecture("vae", defaults={"beta": 4.0}, summary="the VAE with β = 4 by default"),
    "beta-tcvae": Architecture(
        "vae",
        TotalCorrelationELBO,
        options={"alpha": 1.0, "tc_weight": 6.0, "gamma": 1.0, "estimator": "mss", **_SITE},
        summary="β-TCVAE: α·MI + tc_weight·TC + γ·dimension-wise KL, minibatch stratified",
    ),
    "factorvae": Architecture(
        "vae",
        FactorVAEELBO,
        options={"tc_weight": 10.0, **_CRITIC, **_SITE},
        summary="FactorVAE: rate + tc_weight·TC, TC from a critic on permuted codes",
    ),
    "infovae": Architecture(
        "vae",
        MMDELBO,
        options={"mmd_weight": 1000.0, "kernel": "rbf", **_SITE},
        summary="InfoVAE: β·rate + mmd_weight·MMD²(q(z), p(z))",
    ),
    "aae": Architecture(
        "vae",
        AdversarialELBO,
        options={
            "marginal_weight": 1.0,
            "divergence": "critic",
            "kernel": "rbf",
            "deterministic_encoder": False,
            **_CRITIC,
            **_SITE,
        },
        defaults={"beta": 0.0},
        summary="adversarial autoencoder: distortion + marginal_weight·B (critic or MMD), no per-point rate",
    ),
    "bibae": Architecture(
        "vae",
        BoundedIBELBO,
        options={
            "marginal_kl_weight": 1.0,
            "data_kl_weight": 1.0,
            "marginal_estimator": "mss",
            "data_site": None,
            **_CRITIC,
            **_SITE,
        },
        summary="BIB-AE: β·A + B + D + distortion, D from a critic on images",
    ),
    # grey levels under a Gaussian likelihood, batch 32: on digits (30 epochs) the 10-way layer went unused with
    # Bernoulli pixels (dynamic binarisation), and clustered at 0.29 (batch 128), 0.46 (64), 0.60 (32) accuracy
    "hvae": Architecture(
        "hvae",
        defaults={"binarize": "none", "batch_size": 32},
        summary="hierarchical VAE as stacked CorEx (Gao et al. 2019): z1 Gaussian, z2 10-way, enumerated",
    ),
    "gmvae": Architecture(
        "gmvae",
        defaults={"binarize": "none", "batch_size": 32},
        summary="Gaussian-mixture VAE: q(z2|x) q(z1|x,z2), the cluster z2 enumerated in the guide or the model",
    ),
    # a codec of grey levels: squared error is the distortion of the rate-distortion tables
    "vqvae": Architecture(
        "vqvae",
        defaults={"binarize": "none"},
        summary="Shannon rate-distortion autoencoder: vector-quantised code, learned entropy model (pyroib compress)",
    ),
    "generative-codec": Architecture(
        "vqvae",
        BoundedIBELBO,
        options={
            "marginal_kl_weight": 0.0,
            "data_kl_weight": 1.0,
            "data_fakes": "reconstructions",
            "marginal_estimator": "mss",
            "data_site": None,
            **_CRITIC,
            **_SITE,
        },
        defaults={"binarize": "none", "model_config": {"noise_dim": 16}},
        summary="generative compression: the VQ code plus decoder noise U, and a critic on reconstructions (term D)",
    ),
    "diffusion": Architecture(
        "diffusion",
        DiffusionELBO,
        options={"timestep_weights": "constant", "timestep_sampling": "uniform"},
        defaults={"binarize": "none"},
        summary="denoising diffusion (Ho et al. 2020): L_0 + Σ_t β_t L_{t-1} + L_T, one sampled timestep per image",
    ),
    # grey levels: a classifier gains nothing from Bernoulli noise on its inputs (0.84 vs 0.95 accuracy on digits)
    "vib": Architecture(
        "vib", defaults={"binarize": "none"}, summary="deep VIB (Alemi et al. 2016): cross-entropy + β·rate"
    ),
}


class UnknownModelError(ProgramError):
    pass


def program_names() -> list[str]:
    import pyroib.models as models_pkg

    roots = [Path(p) for p in models_pkg.__path__]
    return sorted({p.stem.replace("_", "-") for r in roots for p in r.glob("*.py") if not p.stem.startswith("_")})


def known_names() -> list[str]:
    return sorted(set(ARCHITECTURES) | set(program_names()))


def load_program_file(path: str | Path) -> Program:
    """A user's ``PATH.py`` holding Config, Model and Guide (and optionally ``objective``, an ELBO class, with
    ``options``, its keyword defaults, which become flags)."""
    path = Path(path).resolve()
    module, digest = load_module(path)
    missing = [n for n in ("Config", "Model", "Guide") if n not in vars(module)]
    if missing:
        raise UnknownModelError(f"{path} must define Config, Model and Guide; it lacks {', '.join(missing)}")
    objective = vars(module).get("objective", InfoELBO)
    options = {**_SITE, **vars(module).get("options", {})}
    arch = Architecture(str(path), objective=objective, options=options)
    return Program(
        str(path),
        module.Config,
        module.Model,
        module.Guide,
        check_classes(str(path), module.Config, module.Model, module.Guide),
        arch,
        path,
        digest,
    )


def resolve(name: str | Path) -> Program:
    """The program of an architecture name, a program name (``models/NAME.py``) or a path to a user's file."""
    if str(name).endswith(".py"):
        return load_program_file(name)
    arch = ARCHITECTURES.get(name)
    program = arch.program if arch else name
    if arch is None and program not in program_names():
        raise UnknownModelError(
            f"unknown model {name!r}: choose one of {', '.join(known_names())}, "
            "or give the path to your own model file (PATH.py defining Config, Model and Guide)"
        )
    module_name = program.replace("-", "_")
    models = importlib.import_module(f"pyroib.models.{module_name}")
    try:
        guides = importlib.import_module(f"pyroib.guides.{module_name}")
    except ModuleNotFoundError:
        raise UnknownModelError(f"model program {program!r} has no guide: add guides/{module_name}.py") from None
    capabilities = check_classes(f"models/{module_name}.py", models.Config, models.Model, guides.Guide)
    return Program(name, models.Config, models.Model, guides.Guide, capabilities, arch or Architecture(program))
