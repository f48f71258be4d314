"""Data-parallel scaling on this machine: one process against two torchrun processes, same global batch.

Fashion-MNIST, the default networks of ``--model vae`` and ``--model beta-tcvae``, a global batch of 128 points
(``--batch-size 128`` in one process, 64 in each of two), Adam 1e-3. Three set-ups per model, in interleaved rounds
(the order reversed every other round): one process on 1 thread, one process on 2 threads (the whole machine), and
two processes of 1 thread each (torchrun, gloo). For β-TCVAE the two processes run with ``--batch-terms local`` and
``--batch-terms global``. Figures per set-up, medians over rounds of the per-epoch medians from ``metrics.jsonl``:
training steps per second (``train_seconds``, the training pass), epoch seconds with validation, and the command's
wall time (process start, data loading, all epochs).

The communication per step is computed, not measured: one all-reduce of every gradient (float32), which a ring
all-reduce carries as 2 (K − 1) / K times the gradient's bytes sent and as many received by each process; with
``--batch-terms global`` each process also receives the other processes' codes (z and the encoder's loc and scale,
B × D floats each).

    python benchmarks/distributed_scaling.py [--rounds 2] [--epochs 3] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 128


def setups(model: str) -> dict[str, tuple[int, int, list[str]]]:
    """name -> (processes, threads per process, extra flags)."""
    one = {"1 process, 1 thread": (1, 1, []), "1 process, 2 threads": (1, 2, [])}
    if model == "beta-tcvae":
        return {
            **one,
            "2 processes, local batch terms": (2, 1, ["--batch-terms", "local"]),
            "2 processes, global batch terms": (2, 1, ["--batch-terms", "global"]),
        }
    return {**one, "2 processes": (2, 1, [])}


def train(model: str, processes: int, threads: int, extra: list[str], epochs: int, out: Path, log: Path) -> float:
    """Train one run; returns the command's wall seconds."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "pyroib", "train", "--model", model]
    command += ["--dataset", "fashion-mnist", "--epochs", str(epochs), "--batch-size", str(GLOBAL_BATCH // processes)]
    command += ["--device", "cpu", "--no-progress", "--seed", "0", "--out", str(out), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    with open(log, "a") as sink:
        done = subprocess.run(command, stdout=sink, stderr=sink, env=env, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed; see {log}")
    return time.perf_counter() - started


def communication(run: Path, processes: int) -> tuple[int, float]:
    """(gradient parameters of model and guide, KiB of codes each process receives per step with global batch
    terms: z, loc and scale of the other processes' B points)."""
    from pyroib.run import load_run

    loaded = load_run(run)
    parameters = sum(p.numel() for part in (loaded.model, loaded.guide) for p in part.parameters())
    latent = int(loaded.spec.model_config.get("latent_dim", 0))
    return parameters, 3 * (processes - 1) * (GLOBAL_BATCH // processes) * latent * 4 / 2**10


def probe_allreduce(numel: int) -> None:
    """Run by torchrun (``--probe-allreduce N``): print the median milliseconds of one gloo all-reduce of N float32."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tensor = torch.randn(numel)
    times = []
    for _ in range(60):
        started = time.perf_counter()
        dist.all_reduce(tensor)
        times.append((time.perf_counter() - started) * 1e3)
    if dist.get_rank() == 0:
        print(f"allreduce_ms {statistics.median(times[10:]):.3f}")
    dist.destroy_process_group()


def allreduce_ms(numel: int) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1")
    done = subprocess.run(
        [*launcher, __file__, "--probe-allreduce", str(numel)], capture_output=True, text=True, env=env, check=True
    )
    return float(next(line for line in done.stdout.splitlines() if line.startswith("allreduce_ms")).split()[1])


def main() -> None:
    p = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    p.add_argument("--probe-allreduce", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--models", default="vae,beta-tcvae")
    args = p.parse_args()
    if args.probe_allreduce is not None:
        return probe_allreduce(args.probe_allreduce)
    work = Path(tempfile.mkdtemp(prefix="pyroib-scaling-"))
    log = work / "log.txt"
    machine = harness.machine()
    lines = [
        "# Data-parallel scaling: one process against two torchrun processes",
        "",
        f"Command: `{harness.command()}`",
        "",
        f"Machine: {machine}.",
        "",
        f"Fashion-MNIST, default networks, global batch {GLOBAL_BATCH}, {args.epochs}-epoch runs, {args.rounds} "
        "interleaved rounds; medians over rounds of each run's median epoch. Steps per second count global steps "
        "(one step of K processes is one step).",
        "",
    ]
    started_all = time.perf_counter()
    for model in args.models.split(","):
        table = setups(model)
        figures = {name: {"steps/s": [], "epoch s": [], "wall s": []} for name in table}
        runs = {}
        for round_ in range(args.rounds):
            names = list(table) if round_ % 2 == 0 else list(table)[::-1]
            for name in names:
                processes, threads, extra = table[name]
                out = work / f"{model}-{round_}-{list(table).index(name)}"
                wall = train(model, processes, threads, extra, args.epochs, out, log)
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                steps = rows[0]["step"]
                figures[name]["steps/s"].append(statistics.median(steps / r["train_seconds"] for r in rows))
                figures[name]["epoch s"].append(statistics.median(r["seconds"] for r in rows))
                figures[name]["wall s"].append(wall)
                runs[name] = out
        base = statistics.median(figures["1 process, 2 threads"]["steps/s"])
        lines += [
            f"## {model}",
            "",
            "| set-up | steps / s | epoch s (with validation) | command wall s | steps / s vs 1 process on 2 threads |",
            "|---|---|---|---|---|",
        ]
        for name, values in figures.items():
            rate = statistics.median(values["steps/s"])
            lines.append(
                f"| {name} | {rate:.1f} | {statistics.median(values['epoch s']):.2f} | "
                f"{statistics.median(values['wall s']):.1f} | {rate / base:.2f} |"
            )
        two = next(name for name in table if table[name][0] == 2)
        parameters, codes = communication(runs[two], 2)
        lines += [
            "",
            f"Gradients all-reduced per step: {parameters:,} float32 ({parameters * 4 / 2**20:.2f} MiB); one gloo "
            f"all-reduce of them between two processes alone, measured: {allreduce_ms(parameters):.2f} ms.",
        ]
        for k in (2, 8, 64):
            per_process = 2 * (k - 1) / k * parameters * 4 / 2**20
            lines.append(f"- K = {k}: a ring all-reduce sends and receives {per_process:.2f} MiB per process per step")
        if model == "beta-tcvae":
            lines.append(f"- `--batch-terms global`, K = 2: {codes:.1f} KiB of codes gathered per process per step")
        lines.append("")
    lines.append(f"Total wall time: {(time.perf_counter() - started_all) / 60:.1f} min.")
    harness.write_results(args, "distributed_scaling.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
