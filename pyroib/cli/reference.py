"""The CLI reference (``docs/cli.md``) generated from the commands' own ``--help``:
``python -m pyroib.cli.reference > docs/cli.md``; a test checks that the page is current."""

from __future__ import annotations

import contextlib
import io
import os
import sys

from . import COMMANDS, main

# help of these commands shown for a second model too: its config and objective add flags
EXTRA = {"train": [["--model", "beta-tcvae"]]}


def _help(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    return out.getvalue().rstrip()


def render() -> str:
    os.environ["COLUMNS"] = "110"  # argparse wraps to the terminal: fix the width so the page is reproducible
    parts = [
        "# Command-line reference",
        "",
        "Generated from each command's `--help` by `python -m pyroib.cli.reference > docs/cli.md`.",
        "",
    ]
    for name, (_, _, summary) in COMMANDS.items():
        parts += [f"## pyroib {name}", "", summary, "", "```", _help([name]), "```", ""]
        for extra in EXTRA.get(name, []):
            parts += [
                f"`pyroib {name} {' '.join(extra)} --help` adds:",
                "",
                "```",
                _help([name, *extra]).split("\n\n")[-1],
                "```",
                "",
            ]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
