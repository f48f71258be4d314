"""β sweeps: one ordinary run per bottleneck weight, then a table and the curve they trace.

:func:`run_sweep` takes a :class:`~pyroib.run.RunSpec` and the weights; ``pyroib sweep --model NAME --beta
START:STOP:COUNT[:log] --out DIR [--workers W] [train flags]`` builds both from its flags. It trains
``DIR/beta-<β>/`` for every β (each a normal run directory: ``pyroib evaluate`` and ``pyroib report`` work on it),
evaluates each on the test split (:func:`run_one`) and writes

* ``DIR/sweep.csv`` and ``DIR/sweep.md``: one row per β with its status and test numbers (nats per data point);
* ``DIR/sweep.png``: for the VAE family the rate–distortion curve (rate R against distortion D: every point is one
  β's trade-off, and the ELBO is -(R + D)); for supervised IB models, recognised by ``i_zy_lower`` in their
  evaluation, the information plane (the upper bound on I(X; Z) against the lower bound on I(Z; Y)) and the test
  error against β.

Runs are independent: a failed run is reported in the table and the others go on (the command then exits with an
error naming the failures). Rerunning the same sweep skips finished runs and resumes unfinished ones, so a killed
sweep continues where it stopped. ``--workers W`` trains W runs at a time in spawned processes, each with
``cpu_count // W`` torch threads.

Under torchrun (``torchrun --nproc-per-node K -m pyroib sweep ...``) the K processes train each run together, one run
after another (data-parallel, :mod:`pyroib.distributed`), and rank 0 alone evaluates and writes the tables; a failed
run then stops the sweep (the other processes cannot go on to the next run without it), and rerunning the command
resumes it.
"""

from __future__ import annotations

import csv
import datetime
import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .checkpoint import save_figure, write_text_atomic

# how long the other processes of a torchrun sweep wait for rank 0's evaluation of a run (--iw-samples 5000 on
# 10,000 images takes about 8 minutes on one CPU thread)
SWEEP_WAIT = datetime.timedelta(hours=3)

TABLE_COLUMNS = (
    "epoch",
    "accuracy",
    "i_xz_upper",
    "i_zy_lower",
    "h_y",
    "cross_entropy",
    "predictive_nll",
    "rate",
    "distortion",
    "elbo",
    "nll_iw",
    "active_units",
)


def parse_betas(text: str) -> list[float]:
    """``START:STOP:COUNT[:lin]`` -> COUNT values evenly spaced from START to STOP; ``...:log`` -> evenly in log β."""
    parts = text.split(":")
    usage = "give --beta as START:STOP:COUNT or START:STOP:COUNT:log, e.g. 0.5:4:3 or 1e-4:1e-1:4:log"
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] not in ("log", "lin")):
        raise ValueError(f"bad --beta {text!r}: {usage}")
    try:
        start, stop = float(parts[0]), float(parts[1])
        count = int(parts[2])
    except ValueError:
        raise ValueError(f"bad --beta {text!r}: START and STOP must be numbers and COUNT an integer; {usage}") from None
    if count < 1:
        raise ValueError(f"bad --beta {text!r}: COUNT must be at least 1, got {count}")
    if not (math.isfinite(start) and math.isfinite(stop)) or start < 0 or stop < 0:
        raise ValueError(f"bad --beta {text!r}: β must be finite and >= 0 (it weights the rate)")
    if len(parts) == 4 and parts[3] == "log":
        if start <= 0 or stop <= 0:
            raise ValueError(
                f"bad --beta {text!r}: a log-spaced sweep needs START > 0 and STOP > 0; "
                "use a linear sweep to include β = 0"
            )
        return [float(b) for b in np.geomspace(start, stop, count)]
    return [float(b) for b in np.linspace(start, stop, count)]


def run_name(beta: float) -> str:
    return f"beta-{beta:.6g}"


def _state(spec, out: Path) -> str:
    """ "new", "partial" (resume it) or "finished"; a run trained with other settings raises ValueError."""
    from .checkpoint import load_checkpoint
    from .program import file_sha256
    from .run import CHECKPOINT_FILE, read_spec
    from .train import OPTIMISER_SETTINGS, RESUMABLE_CHANGES

    if not (out / CHECKPOINT_FILE).is_file():
        return "new"
    old, new = read_spec(out).to_json(), spec.to_json()
    # the data set fills these config fields when a run starts; a spec built from flags leaves them out
    filled = {k: v for k, v in old["model_config"].items() if k in ("data_shape", "n_classes")}
    new["model_config"] = {**filled, **new["model_config"]}
    if old.get("model_sha256"):  # a user's file: the same file if its content is, wherever it was named from
        given = Path(new["model"])
        if given.is_file() and file_sha256(given) == old["model_sha256"]:
            new["model"], new["model_sha256"] = old["model"], old["model_sha256"]
    # a sweep point is defined by all its settings but where it runs: a new --lr or --grad-clip is a new sweep, not
    # a continuation
    changed = sorted(k for k in old if old[k] != new.get(k) and k not in RESUMABLE_CHANGES - OPTIMISER_SETTINGS)
    if changed:
        raise ValueError(
            f"{out} holds a run trained with other settings ({', '.join(changed)}); rerun the sweep "
            "with its original flags or choose another --out"
        )
    # the checkpoint, not the log, says how far a run got: the log is written first, and a kill between the two
    # leaves it one epoch ahead
    return "finished" if load_checkpoint(out / CHECKPOINT_FILE)["epoch"] >= spec.epochs else "partial"


def run_one(
    spec,
    out: str | Path,
    progress: bool = False,
    threads: int | None = None,
    iw_samples: int = 0,
    validate: bool = False,
    evaluate: bool = True,
) -> dict:
    """Train (or skip, or resume) the run of ``spec`` in ``out``, then evaluate it on the test split with
    :func:`pyroib.evaluate.evaluate_run` (without the full-data terms, whose O(N² D) cost would dominate a sweep:
    run ``pyroib evaluate`` on a run directory for those); returns the evaluation with ``status`` added.
    Top-level, so spawned workers can import it. ``evaluate=False`` trains only (the other data-parallel processes).
    """
    import pyro
    import torch

    from .distributed import alone
    from .evaluate import evaluate_run
    from .run import load_run
    from .train import train

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    state = _state(spec, out)
    with pyro.validation_enabled(validate):
        if state != "finished":
            train(spec, out, resume=state == "partial", progress=progress)
        if not evaluate:
            return {}
        torch.manual_seed(0)
        # one process evaluates: nothing in it may wait for the others (a critic loaded from the checkpoint, say)
        with alone():
            result = evaluate_run(load_run(out, spec.device), "test", iw_samples=iw_samples, full_data_points=0)
    result["status"] = {"new": "trained", "partial": "resumed", "finished": "skipped (finished earlier)"}[state]
    return result


def run_sweep(
    spec,
    betas: list[float],
    out: str | Path,
    *,
    workers: int = 1,
    iw_samples: int = 0,
    progress: bool = True,
    validate: bool = False,
) -> list[dict]:
    """Train and evaluate ``spec`` once per β into ``out/beta-<β>/``; write the table and plot; return the rows.

    ``spec`` is a :class:`~pyroib.run.RunSpec`; each run is ``dataclasses.replace(spec, beta=β)``.
    """
    import dataclasses

    from .run import RunSpec

    out = Path(out)
    if not isinstance(spec, RunSpec):
        raise TypeError(f"run_sweep takes a RunSpec, got {type(spec).__name__}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if iw_samples < 0:
        raise ValueError(f"--iw-samples must be >= 0, got {iw_samples}")
    if not betas:
        raise ValueError("the sweep has no β values")
    names = [run_name(b) for b in betas]
    if len(set(names)) != len(names):
        raise ValueError(f"β values {betas} coincide at 6 significant digits; use fewer or wider-spaced values")
    specs = [dataclasses.replace(spec, beta=float(b)) for b in betas]
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []

    def record(beta, name, result=None, error=None):
        row = {"beta": beta, "run": name, **(result or {})}
        if error is not None:
            row["status"] = f"failed: {type(error).__name__}: {error}"
        rows.append(row)
        print(f"β = {beta:.6g}: {row['status']}", flush=True)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if workers > 1:
            raise ValueError(
                "--workers trains several runs at once in processes of its own; under torchrun the K processes train "
                "each run together: leave out --workers"
            )
        _data_parallel_sweep(specs, betas, names, out, iw_samples, progress, validate, record)
        return _finish(rows, out) if rows else []
    if workers == 1:
        for beta, name, one in zip(betas, names, specs):
            try:
                record(
                    beta, name, run_one(one, out / name, progress=progress, iw_samples=iw_samples, validate=validate)
                )
            except Exception as error:  # one bad run must not stop the sweep; it is reported in the table
                record(beta, name, error=error)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [
                pool.submit(run_one, one, out / name, False, threads, iw_samples, validate)
                for one, name in zip(specs, names)
            ]
            for beta, name, future in zip(betas, names, futures):
                try:
                    record(beta, name, future.result())
                except Exception as error:
                    record(beta, name, error=error)
    return _finish(rows, out)


def _data_parallel_sweep(specs, betas, names, out, iw_samples, progress, validate, record) -> None:
    """Every run trained by all processes together; rank 0 alone evaluates them and records the rows."""
    from .distributed import join, leave
    from .run import resolve_device

    # joined once for the whole sweep, so every run's train() finds the group and leaves it standing; while rank 0
    # evaluates a run the others wait at the next run's first barrier, so the wait may be as long as an evaluation
    processes, _ = join(resolve_device(specs[0].device), timeout=SWEEP_WAIT)
    try:
        for beta, name, one in zip(betas, names, specs):
            try:
                main = processes.main
                result = run_one(one, out / name, progress, None, iw_samples, validate, evaluate=main)
            except Exception as error:
                raise RuntimeError(
                    f"the run for β = {beta:.6g} failed ({type(error).__name__}: {error}); finished runs are kept "
                    "and rerunning the same sweep resumes it"
                ) from error
            if processes.main:
                record(beta, name, result)
    finally:
        leave(processes)


def _finish(rows: list[dict], out: Path) -> list[dict]:
    rows.sort(key=lambda r: r["beta"])
    write_table(rows, out)
    plot_sweep(rows, out / "sweep.png")
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(rows)} runs failed (see {out / 'sweep.md'}): "
            + "; ".join(f"β = {r['beta']:.6g}: {r['status']}" for r in failed)
        )
    return rows


def _columns(rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in r}
    return ["beta", "status", "run", *[c for c in TABLE_COLUMNS if c in present]]


def write_table(rows: list[dict], out: Path) -> tuple[Path, Path]:
    """``sweep.csv`` (every column) and ``sweep.md`` (numbers to 4 significant digits)."""
    columns = _columns(rows)
    csv_path, md_path = out / "sweep.csv", out / "sweep.md"
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, table.getvalue())

    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    write_text_atomic(md_path, "Test split, nats per data point.\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path


def plot_sweep(rows: list[dict], path: Path, title: str | None = None) -> Path | None:
    """The rate–distortion curve, or the information plane and test error for supervised runs; None if no run
    finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "rate" in r]
    if not done:
        return None
    betas = [r["beta"] for r in done]
    supervised = all("i_zy_lower" in r for r in done)
    fig, axes = plt.subplots(1, 2 if supervised else 1, figsize=(10 if supervised else 5.5, 4), squeeze=False)
    ax = axes[0, 0]
    if supervised:
        xs, ys = [r["i_xz_upper"] for r in done], [r["i_zy_lower"] for r in done]
        ax.axhline(done[0]["h_y"], color="grey", ls="--", lw=1, label="H(Y), the ceiling of I(Z; Y)")
        ax.set_xlabel("I(X; Z) upper bound: rate (nats)")
        ax.set_ylabel("I(Z; Y) lower bound: H(Y) − cross-entropy (nats)")
        ax.set_title("information plane (test split)", fontsize=10)
    else:
        xs, ys = [r["rate"] for r in done], [r["distortion"] for r in done]
        ax.set_xlabel("rate R (nats)")
        ax.set_ylabel("distortion D (nats)")
        ax.set_title("rate–distortion (test split); ELBO = −(R + D)", fontsize=10)
    ax.plot(xs, ys, "o-")
    ax.margins(0.15)  # room for the β labels
    for x, y, b in zip(xs, ys, betas):
        ax.annotate(f"β={b:.3g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    if supervised:
        ax.legend(fontsize=8, loc="lower right")
        err = axes[0, 1]
        err.plot(betas, [100 * (1 - r["accuracy"]) for r in done], "o-")
        if min(betas) > 0:
            err.set_xscale("log")
        err.set_xlabel("β")
        err.set_ylabel("test error (%)")
        err.set_title("test error against β", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
