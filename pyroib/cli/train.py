"""``pyroib train``: the flags are derived, never written twice.

They come from three places, parsed in two stages: the fields of :class:`pyroib.run.RunSpec` (``batch_size`` ->
``--batch-size``, with the help in the field's metadata), the fields of the chosen program's frozen ``Config``
(``latent_dim`` -> ``--latent-dim``), and the options of the chosen objective (``tc_weight`` -> ``--tc-weight``).
So ``pyroib train --model NAME --help`` lists the model's and objective's flags, and a user's own model file gets
flags for its config without any edit here. A few flags set parts of a field (the prior's options) or only steer
the command (``--out``, ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import typing

# prior options: flag -> (priors it applies to, option name or a function of the prior's name)
PRIOR_FLAGS = {
    "prior_components": (
        ("mixture", "vamp"),
        lambda prior: "n_components" if prior == "mixture" else "n_pseudo_inputs",
    ),
    "prior_init": (("vamp",), "init"),
    "prior_range_map": (("vamp",), "range_map"),
    "prior_flow_layers": (("flow",), "n_flows"),
    "prior_flow_hidden": (("flow",), "hidden"),
}
# Config fields that the data set fills
DATA_FIELDS = ("data_shape", "n_classes")


def parse_list(text: str, what: str, kind=float) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{what} must be comma-separated {noun}, got {text!r}") from None


def parse_beta(text: str) -> float | dict[str, float]:
    """``4`` -> 4.0 for every latent site; ``z1=1,z2=4`` -> {"z1": 1.0, "z2": 4.0}."""
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--beta must be a number or SITE=β pairs (z1=1,z2=4), got {text!r}") from None
    weights = {}
    for part in text.split(","):
        site, _, value = part.partition("=")
        try:
            weights[site.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--beta must be a number or SITE=β pairs (z1=1,z2=4), got {text!r}") from None
    return weights


def parse_anchors(texts: list[str] | None) -> list[float] | dict[str, list[float]] | None:
    """``["1,2,3"]`` -> [1, 2, 3] for every latent site; ``["z1=1,2", "z2=3,4,5"]`` -> per site."""
    if not texts:
        return None
    if all("=" not in t for t in texts):
        if len(texts) > 1:
            raise ValueError("--anchors without a site name may be given once; name sites as SITE=w1,w2,...")
        return parse_list(texts[0], "--anchors")
    if any("=" not in t for t in texts):
        raise ValueError("--anchors: name a site in every use (SITE=w1,w2,...) or in none")
    per_site = {}
    for text in texts:
        site, _, values = text.partition("=")
        per_site[site.strip()] = parse_list(values, f"--anchors {site.strip()}")
    return per_site


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _sequence_parser(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def flag_type(default, annotation=None):
    """The parser of a flag: from the field's type annotation where it names one (``float | None`` -> float,
    ``tuple[int, ...]`` -> comma-separated ints), else from the default's type."""
    if annotation is not None:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        origin = typing.get_origin(annotation)
        if origin in (tuple, list) and args:
            return _sequence_parser(args[0] if args[0] is not Ellipsis else int)
        if origin is not None and len(args) == 1:  # Optional[X], X | None
            return flag_type(default, args[0])
        if annotation is bool:
            return parse_bool
        if annotation in (int, float, str):
            return annotation
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, tuple | list):
        return _sequence_parser(type(default[0]) if default else int)
    if default is None:
        return str
    return type(default)


def _field_annotations(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve (a forward reference): fall back to the defaults
        return {}


_SPECIAL_TYPES = {
    "beta": parse_beta,
    "anchors": str,
    "sites": lambda s: [v.strip() for v in s.split(",") if v],
    "classes": lambda s: parse_list(s, "--classes", int),
}


def _spec_flags(parser: argparse.ArgumentParser, defaults: dict) -> None:
    from ..run import RunSpec

    for f in dataclasses.fields(RunSpec):
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        flag = "--" + meta.get("flag", f.name).replace("_", "-")
        default = defaults.get(f.name, f.default)
        if meta.get("action") == "store_true":
            parser.add_argument(flag, dest=f.name, action="store_true", default=default, help=meta["help"])
            continue
        kind = meta.get("type", None)
        kind = _SPECIAL_TYPES.get(kind, kind) if isinstance(kind, str) or kind else flag_type(f.default)
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=default,
            action=meta.get("action", "store"),
            metavar=flag[2:].upper(),
            help=meta["help"] + ("" if default is None else f" (default {default})"),
        )


def parameter_docs(cls) -> dict[str, str]:
    """``:param name: text`` entries of a class's docstrings along its MRO, first sentence each."""
    docs = {}
    for klass in reversed(cls.__mro__):
        text = " ".join((klass.__doc__ or "").split())
        for name, body in re.findall(r":param (\w+): (.*?)(?=:param |$)", text):
            docs[name] = body.split(". ")[0].rstrip(". ").replace("%", "%%")  # argparse formats help with %
    return docs


def _own_flag(name: str, taken: set[str], what: str) -> str:
    """``--name`` for a program's or objective's field, refused when pyroib train already has that flag."""
    flag = name.replace("_", "-")
    if flag in taken:
        from ..program import ProgramError

        raise ProgramError(
            f"{what} {name!r} would be the flag --{flag}, which pyroib train already has: rename the field"
        )
    taken.add(flag)
    return "--" + flag


def train_parser(program=None, architecture=None, add_help: bool = True) -> argparse.ArgumentParser:
    """The parser of ``pyroib train``: RunSpec's flags, then the program's Config and the objective's options."""
    p = argparse.ArgumentParser(
        prog="pyroib train", add_help=add_help, description="Train a model/guide pair with SVI."
    )
    _spec_flags(p, dict(architecture.defaults) if architecture is not None else {})
    prior = p.add_argument_group("prior options")
    prior.add_argument(
        "--prior-components",
        type=int,
        default=None,
        help="mixture: components (default 10); vamp: pseudo-inputs (default 500)",
    )
    prior.add_argument("--prior-flow-layers", type=int, default=None, help="flow: spline-coupling layers (default 2)")
    prior.add_argument(
        "--prior-flow-hidden",
        default=None,
        help="flow: hidden sizes of each coupling's network, comma-separated (default 64,64)",
    )
    prior.add_argument(
        "--prior-init",
        default=None,
        choices=["data"],
        help="vamp: start the pseudo-inputs at random training images instead of grey noise",
    )
    prior.add_argument(
        "--prior-range-map",
        default=None,
        choices=["sigmoid", "clamp"],
        help="vamp: how raw parameters map into the data range, sigmoid (default) or clamp (moves "
        "saturated pixels; use it with --prior-init data)",
    )
    run = p.add_argument_group("the command")
    run.add_argument("--out", default=None, help="run directory (required)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument("--validate", action="store_true", help="keep Pyro's validation checks on (slower)")
    run.add_argument("--no-progress", action="store_true")
    taken = {option.lstrip("-") for action in p._actions for option in action.option_strings}
    if program is not None:
        group = p.add_argument_group(f"model config ({program.name})")
        annotations = _field_annotations(program.Config)
        config_defaults = architecture.defaults.get("model_config", {}) if architecture is not None else {}
        for f in dataclasses.fields(program.Config):
            if f.name in DATA_FIELDS:
                continue
            flag = _own_flag(f.name, taken, f"{program.name}'s Config field")
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            default = config_defaults.get(f.name, default)
            group.add_argument(
                flag,
                dest=f"config__{f.name}",
                type=flag_type(default, annotations.get(f.name)),
                default=default,
                required=required,
                metavar=f.name.upper(),
                help="required" if required else f"default {default}",
            )
    if architecture is not None and architecture.options:
        group = p.add_argument_group(f"objective ({architecture.objective.__name__})")
        documented = parameter_docs(architecture.objective)
        for name, default in architecture.options.items():
            _own_flag(name, taken, f"the objective option of {architecture.program}")
            group.add_argument(
                "--" + name.replace("_", "-"),
                dest=f"option__{name}",
                type=flag_type(default),
                default=default,
                metavar=name.upper(),
                help=f"{documented.get(name, '')} (default {default})".lstrip(),
            )
    return p


def spec_from_args(argv: list[str]):
    """Parse ``pyroib train`` flags; returns (RunSpec, args)."""
    from ..architectures import resolve
    from ..handlers import validate_weights
    from ..run import RunSpec, architecture_of

    first, _ = train_parser(add_help=False).parse_known_args(argv)
    program = resolve(first.model)
    architecture = architecture_of(RunSpec(model=first.model, objective=first.objective), program)
    args = train_parser(program, architecture).parse_args(argv)
    anchors = parse_anchors(args.anchors)
    validate_weights(args.beta, anchors)
    prior_options = {}
    for name, (priors, option) in PRIOR_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if args.prior not in priors:
            raise ValueError(f"{flag} is for --prior {' or '.join(priors)}; got --prior {args.prior}")
        if name == "prior_flow_hidden":
            value = parse_list(value, flag, int)
        prior_options[option(args.prior) if callable(option) else option] = value
    model_config = {
        k[len("config__") :]: list(v) if isinstance(v, tuple) else v
        for k, v in vars(args).items()
        if k.startswith("config__")
    }
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSpec) if f.metadata.get("cli") is not False}
    spec = RunSpec(
        **{
            **fields,
            "anchors": anchors,
            "model_config": model_config,
            "prior_options": prior_options,
            "objective_options": {k[len("option__") :]: v for k, v in vars(args).items() if k.startswith("option__")},
        }
    )
    return spec, args


def main(argv: list[str]) -> None:
    import pyro

    from ..train import train

    spec, args = spec_from_args(argv)
    if args.out is None:
        raise ValueError("--out is required: the run directory to write")
    pyro.enable_validation(args.validate)
    # train() builds the run, checks the program and its schedule before it writes anything
    rows = train(spec, args.out, resume=args.resume, progress=not args.no_progress)
    last = rows[-1]
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks for the run
        return
    print(
        f"trained {spec.model} on {spec.dataset} for {last['epoch']} epochs: validation ELBO "
        f"{last['val_elbo']:.3f} nats per data point; run in {args.out}"
    )
