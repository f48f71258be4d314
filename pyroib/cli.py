"""The ``pyroib`` command line: train, evaluate, report (and the commands later modules add).

Flags of ``train`` come from three places, parsed in two stages: the training flags below, the fields of the chosen
model program's frozen ``Config`` dataclass (``latent_dim`` -> ``--latent-dim``), and the options of the chosen
architecture's objective. So a user's own model file gets flags for its config without any edit here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

COMMANDS = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn
    return register


def _parse_list(text: str, what: str, kind=float) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        noun = "whole numbers" if kind is int else "numbers"
        raise ValueError(f"{what} must be comma-separated {noun}, got {text!r}") from None


def _flag_type(default):
    if isinstance(default, bool):
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if isinstance(default, tuple):
        kind = type(default[0]) if default else int
        return lambda s: tuple(kind(v) for v in s.split(",") if v.strip())
    if default is None:
        return str
    return type(default)


def _train_parser(config_cls=None, options: dict | None = None, defaults: dict | None = None):
    p = argparse.ArgumentParser(prog="pyroib train", description="Train a model/guide pair with SVI.")
    p.add_argument("--model", default="vae", help="architecture or program name, or PATH.py of your own model")
    p.add_argument("--dataset", default="digits", help="fashion-mnist, digits or synthetic")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument("--binarize", default="dynamic", help="none, static or dynamic")
    p.add_argument("--val-size", type=int, default=None)
    p.add_argument("--prior", default="standard", help="standard, learned, mixture, vamp or flow")
    p.add_argument("--prior-components", type=int, default=None,
                   help="mixture: components (default 10); vamp: pseudo-inputs (default 500)")
    p.add_argument("--prior-flow-layers", type=int, default=None, help="flow: spline-coupling layers (default 2)")
    p.add_argument("--prior-flow-hidden", default=None,
                   help="flow: hidden sizes of each coupling's network, comma-separated (default 64,64)")
    p.add_argument("--prior-init", default=None, choices=["data"],
                   help="vamp: start the pseudo-inputs at random training images instead of grey noise")
    p.add_argument("--prior-range-map", default=None, choices=["sigmoid", "clamp"],
                   help="vamp: how raw parameters map into the data range, sigmoid (default) or clamp (moves "
                        "saturated pixels; use it with --prior-init data)")
    p.add_argument("--init-from", default=None,
                   help="start from the weights of a run directory (its best.pt, else checkpoint.pt) or a .pt file, "
                        "where names match: fine-tune, or warm-start another prior")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the gradient of the per-data-point loss to this norm (off by default); each epoch's "
                        "metrics row counts the clipped steps")
    p.add_argument("--beta", type=float, default=1.0, help="weight of the rate (β); 0 switches it off")
    p.add_argument("--anchors", default=None, help="per-latent rate weights w1,w2,... (AnchorVAE)")
    p.add_argument("--schedule", default="constant", help="constant, linear, cyclical or capacity")
    p.add_argument("--warmup-epochs", type=float, default=10.0, help="linear schedule: epochs to reach β")
    p.add_argument("--cycle-epochs", type=float, default=10.0, help="cyclical schedule: epochs per cycle")
    p.add_argument("--cycle-ratio", type=float, default=0.5, help="cyclical schedule: rising fraction of a cycle")
    p.add_argument("--capacity-max", type=float, default=25.0, help="capacity schedule: final C in nats")
    p.add_argument("--capacity-epochs", type=float, default=50.0, help="capacity schedule: epochs to reach C")
    p.add_argument("--particles", type=int, default=1, help="samples of z per data point per step")
    p.add_argument("--analytic-kl", action="store_true", help="closed-form KL where available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--validate", action="store_true", help="keep Pyro's validation checks on (slower)")
    p.add_argument("--no-progress", action="store_true")
    if config_cls is not None:
        group = p.add_argument_group("model config")
        for f in dataclasses.fields(config_cls):
            if f.name in ("data_shape", "n_classes"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            group.add_argument("--" + f.name.replace("_", "-"), dest=f"config__{f.name}", type=_flag_type(default),
                               default=default)
    for name, default in (options or {}).items():
        p.add_argument("--" + name.replace("_", "-"), dest=f"option__{name}", type=_flag_type(default),
                       default=default)
    if defaults:
        p.set_defaults(**defaults)
    return p


def spec_from_args(argv: list[str]):
    """Parse ``pyroib train`` flags; returns (RunSpec, args, the loaded data splits)."""
    from .architectures import resolve
    from .data import load_dataset
    from .run import RunSpec, resolve_device

    first, _ = _train_parser().parse_known_args(argv)
    program = resolve(first.model)
    parser = _train_parser(program.Config, program.architecture.options, program.architecture.defaults)
    args = parser.parse_args(argv)
    from .handlers import validate_weights
    validate_weights(args.beta, _parse_list(args.anchors, "--anchors") if args.anchors else None)
    splits = load_dataset(args.dataset, data_dir=args.data_dir, binarize=args.binarize, val_size=args.val_size,
                          device=resolve_device(args.device))
    info = {"data_shape": splits.data_shape, "n_classes": splits.n_classes}
    model_config = {k[len("config__"):]: v for k, v in vars(args).items() if k.startswith("config__")}
    config_fields = {f.name for f in dataclasses.fields(program.Config)}
    if "data_shape" in config_fields:
        model_config["data_shape"] = list(info["data_shape"])
    if "n_classes" in config_fields:
        model_config["n_classes"] = info["n_classes"]
    model_config = {k: list(v) if isinstance(v, tuple) else v for k, v in model_config.items()}
    prior_options = {}
    hidden = _parse_list(args.prior_flow_hidden, "--prior-flow-hidden", int) if args.prior_flow_hidden else None
    for flag, priors, option, value in (
            ("--prior-components", ("mixture", "vamp"),
             "n_components" if args.prior == "mixture" else "n_pseudo_inputs", args.prior_components),
            ("--prior-init data", ("vamp",), "init", args.prior_init),
            ("--prior-range-map", ("vamp",), "range_map", args.prior_range_map),
            ("--prior-flow-layers", ("flow",), "n_flows", args.prior_flow_layers),
            ("--prior-flow-hidden", ("flow",), "hidden", hidden)):
        if value is not None:
            if args.prior not in priors:
                raise ValueError(f"{flag} is for --prior {' or '.join(priors)}; got --prior {args.prior}")
            prior_options[option] = value
    spec = RunSpec(
        model=args.model, model_config=model_config, dataset=args.dataset, data_dir=args.data_dir,
        binarize=args.binarize, val_size=args.val_size, prior=args.prior, prior_options=prior_options,
        objective_options={k[len("option__"):]: v for k, v in vars(args).items() if k.startswith("option__")},
        beta=args.beta, anchors=_parse_list(args.anchors, "--anchors") if args.anchors else None,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs, cycle_epochs=args.cycle_epochs,
        cycle_ratio=args.cycle_ratio, capacity_max=args.capacity_max, capacity_epochs=args.capacity_epochs,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip,
        num_particles=args.particles,
        analytic_kl=args.analytic_kl, seed=args.seed, device=args.device, init_from=args.init_from)
    return spec, args, splits


@command("train", "train a model (pyroib train --help)")
def _train(argv):
    import pyro

    from .train import train

    spec, args, splits = spec_from_args(argv)
    pyro.enable_validation(args.validate)
    # train() builds the run and its schedule before it writes anything, so bad settings fail with nothing written
    rows = train(spec, args.out, resume=args.resume, progress=not args.no_progress, splits=splits)
    last = rows[-1]
    print(f"trained {spec.model} on {spec.dataset} for {last['epoch']} epochs: validation ELBO "
          f"{last['val_elbo']:.3f} nats per data point; run in {args.out}")


@command("evaluate", "evaluate a trained run on a split")
def _evaluate(argv):
    from .information import FULL_DATA_MAX_POINTS
    from .report import evaluate_run

    p = argparse.ArgumentParser(prog="pyroib evaluate")
    p.add_argument("run")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=None,
                   help="points per importance-sampling pass (default 100; under an aggregate prior, chosen to keep "
                        "its log density within about 256 MB)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default="last",
                   help="last (the end of training) or best (the epoch with the best validation ELBO)")
    p.add_argument("--prior", default="standard",
                   help="standard (the prior the model was trained with), aggregate (the factorised aggregate "
                        "posterior of the training encodings) or aggregate-joint, in place of p(z); the aggregate is "
                        "fitted and saved first if DIR/aggregate_prior.pt is missing")
    p.add_argument("--full-data-points", type=int, default=FULL_DATA_MAX_POINTS,
                   help="at most this many points of the split for the full-data MI/TC/KL estimates, a random subset "
                        "above it (time grows with its square: 60,000 10-d codes take about 100 s on one CPU core; "
                        "0 skips)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    from .generate import check_prior_name, evaluate_with_prior, prior_by_name  # generate registers on cli
    if check_prior_name(args.prior) == "standard":
        result = evaluate_run(args.run, split=args.split, iw_samples=args.iw_samples, device=args.device,
                              batch_size=args.batch_size or 100, seed=args.seed,
                              full_data_points=args.full_data_points, checkpoint=args.checkpoint)
    else:
        from .run import load_run
        run = load_run(args.run, args.device, args.checkpoint)
        result = evaluate_with_prior(run, prior_by_name(run, args.prior), split=args.split,
                                     iw_samples=args.iw_samples, batch_size=args.batch_size, seed=args.seed,
                                     full_data_points=args.full_data_points)
        result = {"prior": args.prior, **result}
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}  {v:.4f}" if isinstance(v, float) else f"{k:>24}  {v}")


@command("report", "write DIR/report/ with plots and report.md")
def _report(argv):
    from .report import write_report

    p = argparse.ArgumentParser(prog="pyroib report")
    p.add_argument("run")
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    path = write_report(args.run, iw_samples=args.iw_samples, device=args.device)
    print(f"report written to {path}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_extensions()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {help}" for name, (_, help) in COMMANDS.items()]
        print("usage: pyroib COMMAND [options]\n\ncommands:\n" + "\n".join(lines), file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"pyroib: error: unknown command {argv[0]!r}", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    fn, _ = COMMANDS[argv[0]]
    try:
        fn(argv[1:])
    except KeyboardInterrupt:
        print("pyroib: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as error:
        print(f"pyroib {argv[0]}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _load_extensions() -> None:
    """Modules that add commands register them on import (sample, fit-prior, sweep, ...)."""
    import importlib
    for name in ("pyroib.generate", "pyroib.sweep"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise


if __name__ == "__main__":
    # `python -m pyroib.cli` runs this file as __main__, a second copy of the module: extensions register their
    # commands in pyroib.cli, so dispatch through that one
    from pyroib.cli import main as _main
    sys.exit(_main())
