"""A run: its resolved specification (``config.json``) and the objects it builds.

The specification is the single source for training, resuming, evaluating and reporting: everything the CLI was
told, resolved to explicit values, saved atomically next to the checkpoint, and used to rebuild the same model,
guide, prior and objective later.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from .architectures import ARCHITECTURES, resolve
from .checkpoint import load_checkpoint
from .program import Program, ProgramError, file_sha256

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
# the weights of the epoch with the best validation ELBO so far: what early stopping would keep, and what survives
# a late divergence that the last checkpoint does not
BEST_FILE = "best.pt"
CHECKPOINTS = {"last": CHECKPOINT_FILE, "best": BEST_FILE}
METRICS_FILE = "metrics.jsonl"
# a run trained from a user's model file keeps a copy of it here, and is rebuilt from it
PROGRAM_FILE = "program.py"


def _option(default, help: str, **cli):
    """A RunSpec field with its command-line help; ``cli`` may give ``flag`` (another name), ``type`` (a parser),
    ``action`` or ``cli=False`` (set by other flags)."""
    factory = {"default_factory": default} if callable(default) else {"default": default}
    return field(**factory, metadata={"help": help, **cli})


@dataclass(frozen=True)
class RunSpec:
    """Everything a run is: the ``pyroib train`` flags are derived from these fields (:mod:`pyroib.cli.train`)."""

    model: str = _option("vae", "architecture or program name, or PATH.py of your own model")
    model_config: dict = _option(dict, "the program's Config fields", cli=False)
    dataset: str = _option("digits", "fashion-mnist, digits, synthetic or dsprites")
    data_dir: str | None = _option(None, "directory holding the dataset's files")
    binarize: str = _option("dynamic", "none, static or dynamic (resampled every pass)")
    val_size: int | None = _option(None, "validation points carved from the training split", type=int)
    train_size: int | None = _option(
        None, "train on a seeded random subset of this many training points (quick runs)", type=int
    )
    classes: list[int] | None = _option(
        None,
        "train and validate on the points of these labels only, comma-separated (one-class novelty detection); "
        "the test split keeps every class",
        type="classes",
    )
    prior: str = _option("standard", "standard, learned, mixture, vamp or flow")
    prior_options: dict = _option(dict, "the prior's options", cli=False)
    objective_options: dict = _option(dict, "the objective's options", cli=False)
    # one β for every latent site, or {site: β} (sites left out keep 1)
    beta: float | dict = _option(
        1.0,
        "weight of the rate; 0 switches it off; SITE=β,SITE=β weights latent sites apart (unnamed sites keep 1)",
        type="beta",
    )
    # per-dimension weights for every latent site, or {site: [w, ...]}
    anchors: list[float] | dict | None = _option(
        None,
        "per-latent rate weights w1,w2,... (AnchorVAE); repeat SITE=w1,w2,... to weight one site's dimensions",
        type="anchors",
        action="append",
    )
    schedule: str = _option("constant", "constant, linear, cyclical or capacity")
    schedule_sites: list[str] | None = _option(
        None, "latent sites whose β follows --schedule (default: all)", type="sites"
    )
    warmup_epochs: float = _option(10.0, "linear schedule: epochs to reach β")
    cycle_epochs: float = _option(10.0, "cyclical schedule: epochs per cycle")
    cycle_ratio: float = _option(0.5, "cyclical schedule: rising fraction of a cycle")
    capacity_max: float = _option(25.0, "capacity schedule: final C in nats")
    capacity_epochs: float = _option(50.0, "capacity schedule: epochs to reach C")
    epochs: int = _option(10, "epochs to train (in all, when resuming)")
    batch_size: int = _option(128, "points per minibatch")
    lr: float = _option(1e-3, "Adam's learning rate")
    grad_clip: float | None = _option(
        None,
        "clip the gradient of the per-data-point loss to this norm (off by "
        "default); each epoch's metrics row counts the clipped steps",
        type=float,
    )
    num_particles: int = _option(1, "samples of the latents per data point per step", flag="particles")
    analytic_kl: bool = _option(False, "closed-form KL where available", action="store_true")
    seed: int = _option(0, "random seed")
    device: str = _option("auto", "auto, cpu or cuda")
    # a run directory (its best.pt, else checkpoint.pt) or a checkpoint file
    init_from: str | None = _option(
        None,
        "start from the weights of a run directory (its best.pt, else checkpoint.pt) or a .pt file, where names match",
    )
    objective: str | None = _option(
        None, "train the program under this architecture's objective (e.g. beta-tcvae, infovae) instead of its own"
    )
    # of a user's model file; train fills it and keeps a copy of the file in the run
    model_sha256: str | None = _option(None, "", cli=False)
    # how many data-parallel processes (torch.distributed, launched by torchrun) trained the run; train fills it
    processes: int = _option(1, "", cli=False)
    batch_terms: str = _option(
        "local",
        "under torchrun: batch-level terms (TC, marginal KL, MMD) read each process's batch (local) or every "
        "process's (global, gathered)",
    )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_model(cls, model: str, **fields) -> "RunSpec":
        """The spec ``pyroib train --model MODEL`` starts from: the architecture's own defaults (β = 4 for
        ``beta-vae``, grey levels and batch 32 for ``hvae``, ...) under the fields given. ``RunSpec(model=...)``
        takes the plain defaults of every field instead."""
        defaults = dict(ARCHITECTURES[model].defaults) if model in ARCHITECTURES else {}
        model_config = {**defaults.pop("model_config", {}), **fields.pop("model_config", {})}
        return cls(model=model, **{**defaults, **fields, "model_config": model_config})

    @classmethod
    def from_json(cls, obj: dict) -> "RunSpec":
        """The spec of a ``config.json`` object, every field checked against its type (ValueError naming it)."""
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in obj:
                if not matches_type(obj[f.name], hints[f.name]):
                    raise ValueError(f"field {f.name} is {obj[f.name]!r}, which is not a {_type_name(hints[f.name])}")
                values[f.name] = obj[f.name]
        return cls(**values)


def matches_type(value, annotation) -> bool:
    """Whether a JSON value fits a field's annotation (int, float, str, bool, dict, list, tuple, their unions with
    None); an annotation it does not know is taken to fit."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation is dict or origin is dict:
        return isinstance(value, dict)
    if annotation in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        element = [a for a in args if a is not Ellipsis]
        return len(element) != 1 or all(matches_type(v, element[0]) for v in value)
    return True


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def make_config(config_cls, values: dict):
    """Build a frozen config from JSON values (lists become tuples where the field's default is a tuple)."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{config_cls.__module__}.Config has no field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(config_cls) if _resolvable(config_cls) else {}
    kwargs = {}
    for name, value in values.items():
        if name in hints and not matches_type(value, hints[name]):
            raise ValueError(
                f"model_config field {name} is {value!r}, which is not a {_type_name(hints[name])} as "
                f"{config_cls.__name__}.{name} declares"
            )
        default = fields[name].default
        if isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING):
            value = tuple(value)
        kwargs[name] = value
    return config_cls(**kwargs)


def _resolvable(cls) -> bool:
    try:
        typing.get_type_hints(cls)
    except Exception:  # a forward reference that does not resolve: skip the check rather than fail
        return False
    return True


def program_of(spec: RunSpec, run_dir: str | Path | None = None) -> Program:
    """The run's program. A user's file is rebuilt from the copy kept in the run directory (``program.py``), so a
    later edit of the original, or another working directory, cannot change an old run."""
    if run_dir is not None and spec.model_sha256 is not None:
        kept = Path(run_dir) / PROGRAM_FILE
        if not kept.is_file():
            raise FileNotFoundError(
                f"{run_dir} was trained from a model file, but its copy {kept} is missing; "
                "the run cannot be rebuilt faithfully"
            )
        if file_sha256(kept) != spec.model_sha256:
            raise ValueError(
                f"{kept} does not match the sha256 recorded in {Path(run_dir) / CONFIG_FILE}: the run's "
                "copy of its model file was edited, so its weights may not fit it"
            )
        return resolve(kept)
    return resolve(spec.model)


def architecture_of(spec: RunSpec, program: Program):
    """The objective's architecture: ``spec.objective`` (an architecture name) if given, else the program's own."""
    if spec.objective is None:
        return program.architecture
    if spec.objective not in ARCHITECTURES:
        raise ValueError(f"unknown --objective {spec.objective!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[spec.objective]


def build(spec: RunSpec, device: torch.device | str = "cpu", program: Program | None = None) -> SimpleNamespace:
    """Model, guide, prior and objective of a run, freshly initialised, on ``device``.

    ``prior=`` reaches only a model that takes one (the program's declared capability) and whose Config has
    ``latent_dim`` to size it; any other model is built as ``Model(config)`` and refuses any ``--prior`` but the
    default (its own).
    """
    from .priors import prior_from_name, require_factorised

    program = program or resolve(spec.model)
    capabilities = program.capabilities
    config = make_config(program.Config, spec.model_config)
    guide = program.Guide(config)
    sized = "latent_dim" in {f.name for f in dataclasses.fields(config)}
    if not capabilities.takes_prior or not sized:
        if spec.prior != "standard" or spec.prior_options:
            capabilities.require("takes_prior", f"--prior {spec.prior}")
            raise ProgramError(
                f"--prior {spec.prior} is sized by Config.latent_dim, which {program.name}'s Config does not have"
            )
        model = program.Model(config)
        # nothing was injected: the run has no prior pyroib knows, whatever the constructor accepts
        capabilities = dataclasses.replace(capabilities, takes_prior=False)
    else:
        prior_kwargs = dict(spec.prior_options)
        if spec.prior == "vamp":
            capabilities.require("encode", "the VampPrior (it encodes its pseudo-inputs)")
            if prior_kwargs.get("init") == "data":
                del prior_kwargs["init"]  # training sets the pseudo-inputs to training images
            prior_kwargs.setdefault("encoder", guide.encode)
            prior_kwargs.setdefault("data_shape", tuple(config.data_shape))
        prior = prior_from_name(spec.prior, config.latent_dim, **prior_kwargs)
        if spec.anchors is not None:
            require_factorised(prior, "per-latent anchor weights (--anchors)")
        model = program.Model(config, prior=prior)
    arch = architecture_of(spec, program)
    options = {**arch.options, **spec.objective_options}
    if options.get("latent_site") is None and capabilities.latent_site is not None:
        options["latent_site"] = capabilities.latent_site
    objective = arch.objective(num_particles=spec.num_particles, analytic_kl=spec.analytic_kl, **options)
    return SimpleNamespace(
        model=model.to(device),
        guide=guide.to(device),
        objective=objective,
        config=config,
        program=program,
        capabilities=capabilities,
        spec=spec,
    )


def initialise_pseudo_inputs(built: SimpleNamespace, train_x: torch.Tensor) -> None:
    """``prior_options={"init": "data"}`` for a VampPrior: its K pseudo-inputs start as K distinct training images
    drawn with the run's seed (Tomczak and Welling's data initialisation)."""
    if built.spec.prior != "vamp" or built.spec.prior_options.get("init") != "data":
        return
    prior = built.model.prior
    k = prior.n_pseudo_inputs
    if k > train_x.shape[0]:
        raise ValueError(
            f"{k} pseudo-inputs initialised from data need at least {k} training images; the training "
            f"split has {train_x.shape[0]}"
        )
    chosen = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(built.spec.seed))[:k]
    from .data import as_images

    prior.set_pseudo_inputs(as_images(train_x[chosen.to(train_x.device)]))


def warm_start(built: SimpleNamespace, source: str | Path) -> dict[str, list[str]]:
    """Copy into a freshly built run every model and guide weight of ``source`` whose name it shares.

    ``source`` is a run directory (its best.pt, or checkpoint.pt when it has none) or a checkpoint file. A shared
    name with another shape is an error; weights only the new run has (a VampPrior's pseudo-inputs on a run trained
    with the standard prior) keep their initialisation; weights only the source has are ignored. Returns the names
    under "loaded", "kept" and "ignored".
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(
            f"--init-from {source} does not exist; pass a pyroib run directory or a .pt "
            "checkpoint file (nothing was written)"
        )
    if source.is_dir():
        path = source / BEST_FILE if (source / BEST_FILE).is_file() else source / CHECKPOINT_FILE
    else:
        path = source
    if not path.is_file():
        raise FileNotFoundError(
            f"--init-from {source}: no checkpoint there; pass a pyroib run directory or a .pt checkpoint file"
        )
    state = load_checkpoint(path)  # load_state_dict copies onto the run's device
    if "model" not in state or "guide" not in state:
        raise ValueError(f"--init-from {path} is not a pyroib checkpoint (it has no model and guide weights)")
    summary = {"loaded": [], "kept": [], "ignored": []}
    for part in ("model", "guide"):
        module, weights = getattr(built, part), state[part]
        own = module.state_dict()
        for name, value in own.items():
            if name not in weights:
                summary["kept"].append(f"{part}.{name}")
            elif weights[name].shape != value.shape:
                raise ValueError(
                    f"--init-from {path}: {part} weight {name} has shape {tuple(weights[name].shape)} "
                    f"there but {tuple(value.shape)} in this run; the networks must match where their "
                    "names do"
                )
            else:
                summary["loaded"].append(f"{part}.{name}")
        summary["ignored"] += [f"{part}.{name}" for name in weights if name not in own]
        module.load_state_dict({name: weights[name] for name in own if name in weights}, strict=False)
    if not summary["loaded"]:
        raise ValueError(
            f"--init-from {path}: no weight name in common with this run; it was trained with another model"
        )
    return summary


def restore_weights(built: SimpleNamespace, state: dict, path: Path, keys=("model", "guide", "objective")) -> None:
    """Load a checkpoint's weights into a built run; a checkpoint that does not fit (edited, truncated, from another
    run) is refused in one line naming the file and the first mismatch."""
    try:
        for key in keys:
            if key == "objective":
                if state.get("objective"):
                    built.objective.load_state_dict(state["objective"])
            else:
                getattr(built, key).load_state_dict(state[key])
        if not isinstance(state.get("epoch"), int):
            raise KeyError("epoch")
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(
            f"{path} does not fit this run ({type(error).__name__}: {detail}); it was edited or comes from another "
            "run. Restore it, or retrain"
        ) from None


def read_spec(run_dir: str | Path) -> RunSpec:
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist: train one with pyroib train --out {run_dir}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a pyroib run (no {CONFIG_FILE}); pass the --out directory of pyroib train"
        )
    try:
        return RunSpec.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is damaged ({error}); it cannot be read as a pyroib run configuration") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", checkpoint: str = "last") -> SimpleNamespace:
    """Rebuild a trained run (model, guide, objective, spec) from its directory, weights loaded, in eval mode.

    ``checkpoint="last"`` loads the end of training (``checkpoint.pt``), ``"best"`` the epoch with the best
    validation ELBO (``best.pt``).
    """
    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(
            f"unknown checkpoint {checkpoint!r}: choose last (the end of training) or best (the best validation ELBO)"
        )
    spec = read_spec(run_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    program = program_of(spec, run_dir)
    try:
        built = build(spec, device, program)
    except (TypeError, ValueError) as error:  # everything build reads comes from the run's config.json: name it
        raise ValueError(f"{run_dir / CONFIG_FILE}: {error}") from None
    path = run_dir / CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not path.is_file() and (run_dir / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {BEST_FILE} (runs trained before pyroib kept one); use the last "
            "checkpoint, or resume training for an epoch to write it"
        )
    state = load_checkpoint(path, map_location=device)
    restore_weights(built, state, path)
    built.model.eval()
    built.guide.eval()
    built.epoch = state["epoch"]
    built.checkpoint = checkpoint
    built.run_dir = run_dir
    built.device = device
    return built
