"""What every benchmark shares: the machine it ran on, the command that ran it, interleaved timing, and where its
results go.

A run writes its results file to ``runs/benchmarks/`` (a work directory) unless it is given ``--record``, which
writes to ``benchmarks/results/``, the files the README and closing notes cite. So trying a benchmark never
overwrites a recorded result by accident.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(__file__).resolve().parent.parent / "runs" / "benchmarks"


def add_record_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--record`` writes to benchmarks/results/ (``--record PATH``, or its older name ``--results PATH``, to that
    file); without it the results go to the work directory."""
    parser.add_argument(
        "--record",
        "--results",
        dest="record",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help=f"write the results file to {RESULTS} (the recorded results), or to PATH; default: {WORK}",
    )
    return parser


def results_path(args: argparse.Namespace, filename: str) -> Path:
    if isinstance(args.record, str):
        path = Path(args.record)
    else:
        path = (RESULTS if args.record else WORK) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


NOTES_MARK = "<!-- notes written by hand: kept when the benchmark rewrites this file -->"


def write_results(args: argparse.Namespace, filename: str, text: str) -> Path:
    """Print ``text``, write it atomically (a kill leaves the old file whole) and say where. Whatever follows
    ``NOTES_MARK`` in the file already there (a slice's notes, written after the run) is carried over."""
    print(text)
    path = results_path(args, filename)
    if path.is_file() and NOTES_MARK in (old := path.read_text()):
        text = text.rstrip("\n") + "\n\n" + NOTES_MARK + old.split(NOTES_MARK, 1)[1]
    _write_atomically(path, text)
    print(f"results written to {path}" + ("" if args.record else " (pass --record to update the recorded results)"))
    return path


def command() -> str:
    """The command line that is running, as a reader would retype it from the repository root."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def machine(threads: int | None = None) -> str:
    """One line on the hardware and software the figures came from."""
    import numpy
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", 1-minute load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    device = f", CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    thread_text = f", {threads} torch thread(s)" if threads else ""
    return (
        f"{platform.machine()} {platform.processor() or ''}".strip()
        + f", {cores} CPU cores available{load}{thread_text}{device}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, NumPy {numpy.__version__}"
    )


def interleaved(steps: dict[str, Callable[[], object]], rounds: int, repeats: int = 1) -> dict[str, list[float]]:
    """Milliseconds per call of each step, ``rounds`` times, the steps alternating call by call (and the order
    reversed every other round), so that a change of machine load hits all steps alike. Each round's figure is the
    median over its ``repeats`` calls."""
    timings = {name: [] for name in steps}
    names = list(steps)
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        per_call = {name: [] for name in steps}
        for _ in range(repeats):
            for name in order:
                started = time.perf_counter()
                steps[name]()
                per_call[name].append((time.perf_counter() - started) * 1e3)
        for name, values in per_call.items():
            timings[name].append(statistics.median(values))
    return timings


def ratio_of_medians(timings: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(timings[numerator]) / statistics.median(timings[denominator])


def pyroib(argv: list[str], log: Path, capture: bool = False) -> str:
    """Run ``python -m pyroib ARGV`` from the repository root on one thread, appending its output (its stderr only,
    with ``capture``, which returns stdout) to ``log``; a failure raises naming the log."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pyroib", *argv],
            stdout=subprocess.PIPE if capture else out,
            stderr=out,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
    if done.returncode:
        raise RuntimeError(f"pyroib {' '.join(argv)} failed; see {log}")
    return done.stdout or ""


def mean_sd(values: list[float]) -> str:
    """A table cell: mean ± sample sd over seeds (one value alone, a dash for none)."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def slug(name: str) -> str:
    """A unit's file name from its configuration's name: every character but letters and digits becomes '-'."""
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


class Units:
    """The finished units of a resumable benchmark (a trained and measured configuration, a seed), one JSON file each.

    A recorded run (``--record``) keeps them in ``benchmarks/results/units/NAME/``, committed with the results file:
    a later checkout has no ``runs/`` (git ignores it), and without them its next slice would start over. Other runs
    keep them in the work directory. A unit's run folder (checkpoints) stays under ``runs/`` either way: an unfinished
    unit resumes from it on the machine it started on, and starts again on another."""

    def __init__(self, args: argparse.Namespace, name: str):
        self.folder = (RESULTS if args.record else WORK) / "units" / name

    def path(self, unit: str) -> Path:
        return self.folder / f"{unit}.json"

    def get(self, unit: str) -> dict | None:
        path = self.path(unit)
        return json.loads(path.read_text()) if path.is_file() else None

    def done(self, unit: str) -> bool:
        return self.path(unit).is_file()

    def put(self, unit: str, result: dict) -> dict:
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path(unit), json.dumps(result, indent=1) + "\n")
        return result


def stored(result_file: Path) -> dict | None:
    """A resumable unit's stored result, or None after making its folder (the unit then runs)."""
    if result_file.is_file():
        return json.loads(result_file.read_text())
    result_file.parent.mkdir(parents=True, exist_ok=True)
    return None


def train_run(folder: Path, flags: list[str]) -> Path:
    """``pyroib train FLAGS --device cpu --no-progress --out FOLDER/run``, resumed when a checkpoint is there (a slice
    cut short goes on where it stopped); logs to FOLDER/log.txt. Returns the run directory."""
    run = folder / "run"
    argv = ["train", *flags, "--device", "cpu", "--no-progress", "--out", str(run)]
    if (run / "checkpoint.pt").is_file():
        argv.append("--resume")
    pyroib(argv, folder / "log.txt")
    return run
