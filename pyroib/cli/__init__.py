"""The ``pyroib`` command line: one table of commands, each a module of this package with a ``main(argv)``.

The table is the only registry: a command is added by a line here and a module beside this one. Commands import
the library; the library never imports the command line.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module of pyroib.cli, function, one-line help)
COMMANDS = {
    "train": ("pyroib.cli.train", "main", "train a model/guide pair with SVI (pyroib train --model NAME --help)"),
    "evaluate": ("pyroib.cli.evaluate", "evaluate", "evaluate a trained run on a split (nats per data point)"),
    "report": ("pyroib.cli.evaluate", "report", "write DIR/report/ with plots and report.md"),
    "sample": ("pyroib.cli.generate", "sample", "decode prior draws of a run into a PNG grid"),
    "fit-prior": (
        "pyroib.cli.generate",
        "fit_prior",
        "fit the aggregate posterior of a run's training encodings (DIR/aggregate_prior.pt)",
    ),
    "compress": ("pyroib.cli.codec", "compress", "entropy-code a split with a vector-quantised run into one file"),
    "decompress": ("pyroib.cli.codec", "decompress", "decode a file written by compress into PNG images"),
    "score": ("pyroib.cli.score", "main", "per-point novelty scores of a split (one CSV row per point)"),
    "sweep": ("pyroib.cli.sweep", "main", "train and evaluate one run per β; table and plot (pyroib sweep --help)"),
}

# what a user's mistake raises: printed as one line, exit status 2
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError, ImportError)


def usage() -> str:
    lines = [f"  {name:<12} {help}" for name, (_, _, help) in COMMANDS.items()]
    return "usage: pyroib COMMAND [options]\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(usage() + f"\npyroib: error: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[argv[0]]
    command = getattr(importlib.import_module(module), function)
    try:
        command(argv[1:])
    except KeyboardInterrupt:
        print("pyroib: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        print(f"pyroib {argv[0]}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
