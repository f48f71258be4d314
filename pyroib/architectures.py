"""Architectures by name: a model/guide program pair, an objective class and its default weights.

A *program* is found by convention: ``pyroib.models.<name>`` exports ``Config`` and ``Model``, and
``pyroib.guides.<name>`` exports ``Guide`` (hyphens in names become underscores), so a new generative story needs two
files and no edit here. A user's own file ``PATH.py`` exports ``Config``, ``Model`` and ``Guide`` together (and may
export ``objective``, an ELBO class, and ``options``, its keyword defaults). This table only names the variants that
pair a program with a different objective or defaults; its ``options`` become command-line flags.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

from .information import MMDELBO, TotalCorrelationELBO
from .information_critics import AdversarialELBO, BoundedIBELBO, FactorVAEELBO
from .objectives import InfoELBO

_CRITIC = {"critic_width": 256, "critic_depth": 2, "critic_lr": 1e-4, "critic_steps": 1}


@dataclass(frozen=True)
class Architecture:
    program: str
    objective: type = InfoELBO
    options: dict = field(default_factory=dict)   # objective keyword -> default; each becomes a --flag
    defaults: dict = field(default_factory=dict)  # training defaults, e.g. {"beta": 4.0}
    summary: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "vae": Architecture("vae", summary="VAE; β-VAE, annealed/cyclical/capacity β and AnchorVAE via --beta, "
                                       "--schedule and --anchors"),
    "beta-vae": Architecture("vae", defaults={"beta": 4.0}, summary="the VAE with β = 4 by default"),
    "beta-tcvae": Architecture("vae", TotalCorrelationELBO,
                               options={"alpha": 1.0, "tc_weight": 6.0, "gamma": 1.0, "estimator": "mss"},
                               summary="β-TCVAE: α·MI + tc_weight·TC + γ·dimension-wise KL, minibatch stratified"),
    "factorvae": Architecture("vae", FactorVAEELBO, options={"tc_weight": 10.0, **_CRITIC},
                              summary="FactorVAE: rate + tc_weight·TC, TC from a critic on permuted codes"),
    "infovae": Architecture("vae", MMDELBO, options={"mmd_weight": 1000.0, "kernel": "rbf"},
                            summary="InfoVAE: β·rate + mmd_weight·MMD²(q(z), p(z))"),
    "aae": Architecture("vae", AdversarialELBO,
                        options={"marginal_weight": 1.0, "divergence": "critic", "kernel": "rbf",
                                 "deterministic_encoder": False, **_CRITIC},
                        defaults={"beta": 0.0}, summary="adversarial autoencoder: distortion + marginal_weight·B "
                                                        "(critic or MMD), no per-point rate"),
    "bibae": Architecture("vae", BoundedIBELBO,
                          options={"marginal_kl_weight": 1.0, "data_kl_weight": 1.0, "marginal_estimator": "mss",
                                   **_CRITIC},
                          summary="BIB-AE: β·A + B + D + distortion, D from a critic on images"),
    # grey levels: a classifier gains nothing from Bernoulli noise on its inputs (0.84 vs 0.95 accuracy on digits)
    "vib": Architecture("vib", defaults={"binarize": "none"}, summary="deep VIB (Alemi et al. 2016): "
                                                                       "cross-entropy + β·rate"),
}


class UnknownModelError(ValueError):
    pass


def _load_path(path: Path) -> ModuleType:
    if not path.is_file():
        raise UnknownModelError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"pyroib_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    missing = [n for n in ("Config", "Model", "Guide") if not hasattr(module, n)]
    if missing:
        raise UnknownModelError(f"{path} must define Config, Model and Guide; it lacks {', '.join(missing)}")
    return module


def program_names() -> list[str]:
    root = Path(__file__).resolve().parent.parent / "models"
    import pyroib.models as models_pkg
    roots = [Path(p) for p in models_pkg.__path__] or [root]
    return sorted({p.stem.replace("_", "-") for r in roots for p in r.glob("*.py") if not p.stem.startswith("_")})


def known_names() -> list[str]:
    return sorted(set(ARCHITECTURES) | set(program_names()))


def resolve(name: str) -> SimpleNamespace:
    """Return ``(name, Config, Model, Guide, architecture)`` for an architecture name, a program name or a path."""
    if name.endswith(".py"):
        module = _load_path(Path(name))
        arch = Architecture(str(Path(name).resolve()), objective=getattr(module, "objective", InfoELBO),
                            options=dict(getattr(module, "options", {})))
        return SimpleNamespace(name=name, Config=module.Config, Model=module.Model, Guide=module.Guide,
                               architecture=arch)
    arch = ARCHITECTURES.get(name)
    program = arch.program if arch else name
    if arch is None and program not in program_names():
        raise UnknownModelError(f"unknown model {name!r}: choose one of {', '.join(known_names())}, "
                                "or give the path to your own model file (PATH.py defining Config, Model and Guide)")
    module_name = program.replace("-", "_")
    models = importlib.import_module(f"pyroib.models.{module_name}")
    try:
        guides = importlib.import_module(f"pyroib.guides.{module_name}")
    except ModuleNotFoundError:
        raise UnknownModelError(f"model program {program!r} has no guide: add guides/{module_name}.py") from None
    return SimpleNamespace(name=name, Config=models.Config, Model=models.Model, Guide=guides.Guide,
                           architecture=arch or Architecture(program))
