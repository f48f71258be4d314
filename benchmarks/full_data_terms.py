"""Time and peak memory of ``pyroib.estimators.full_data_terms`` over Fashion-MNIST encodings.

The encoder is a trained run's (``--run DIR``, whose MI and TC then mean something) or a randomly initialised
784-400-D MLP Gaussian encoder: its (loc, scale) for the first M training images go into ``full_data_terms`` (one
code per point, chunks of 512).
Each size runs in a fresh subprocess; the peak resident size is reset just before the call (Linux
``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere) and the figure given is the peak during the call minus the
resident size just before it. The cost is O(M² D), so sizes that
would take too long on a shared CPU are extrapolated from the measured ones by the M² law (and said to be).

    python benchmarks/full_data_terms.py [--sizes 5000,10000,20000] [--target 60000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import harness


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def _resident_kib() -> int:
    return _status_kib("VmRSS")


def _peak_kib() -> int:
    return _status_kib("VmHWM")


def _reset_peak() -> bool:
    """Reset the peak resident size (Linux >= 4.0), so the peak seen after the call is the call's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(points: int, latent_dim: int, threads: int, run_dir: str | None = None) -> dict:
    import torch

    from pyroib.data import load_dataset
    from pyroib.estimators import full_data_terms
    from pyroib.networks import GaussianEncoder

    torch.set_num_threads(threads)
    # a trained run saw binary images (dynamic binarisation); the random encoder takes the grey levels
    splits = load_dataset("fashion-mnist", binarize="static" if run_dir else "none", val_size=0)
    torch.manual_seed(0)
    if run_dir:
        from pyroib.run import load_run

        encoder = load_run(run_dir, "cpu").guide.encode
    else:
        encoder = GaussianEncoder((1, 28, 28), (400,), latent_dim)
    with torch.no_grad():
        loc, scale = encoder(splits.train[:points])
    del splits
    before = _resident_kib()
    reset = _reset_peak()
    started = time.perf_counter()
    terms = full_data_terms(loc, scale, chunk_size=512, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    peak = _peak_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "points": points,
        "seconds": seconds,
        "peak_extra_mib": (peak - before) / 1024,
        "peak_rss_mib": peak / 1024,
        "mi": float(terms["index_code_mi"]),
        "tc": float(terms["total_correlation"]),
    }


def main():
    p = harness.add_record_flag(argparse.ArgumentParser())
    p.add_argument("--sizes", default="5000,10000,20000")
    p.add_argument("--target", type=int, default=60_000)
    p.add_argument("--latent-dim", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", default=None, help="a trained run whose encoder to use (default: a random one)")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.latent_dim, args.threads, args.run)))
        return
    rows = []
    for points in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(points),
                "--latent-dim",
                str(args.latent_dim),
                "--threads",
                str(args.threads),
                *(["--run", args.run] if args.run else []),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    largest = rows[-1]
    measured = any(r["points"] == args.target for r in rows)
    estimate = largest["seconds"] * (args.target / largest["points"]) ** 2
    lines = [
        "# Full-data information terms: time and memory",
        "",
        f"Command: `python benchmarks/full_data_terms.py --sizes {args.sizes} --target {args.target} "
        f"--threads {args.threads}{f' --run {args.run}' if args.run else ''}` (CPU, {args.threads} threads, a "
        "machine shared with other jobs).",
        "",
        (
            f"The encoder of the trained run `{args.run}`"
            if args.run
            else f"{args.latent_dim} latents, random 784-400 MLP encoder"
        )
        + " over the first M Fashion-MNIST training "
        "images, one code per point, exact mixture over all M encodings in chunks of 512. Peak extra: "
        "peak resident size during the call (VmHWM, reset before it) minus the resident size before it.",
        "",
        "| M | seconds | s / M² (ns) | peak extra MiB | MI (nats) | TC (nats) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['points']:,} | {r['seconds']:.1f} | {r['seconds'] / r['points'] ** 2 * 1e9:.3f} | "
            f"{r['peak_extra_mib']:.0f} | {r['mi']:.3f} | {r['tc']:.3f} |"
        )
    if not measured:
        lines += [
            "",
            f"M = {args.target:,} was **not run**; by the M² law from M = {largest['points']:,} it would "
            f"take about {estimate / 60:.0f} min here, with the same bounded memory (the chunk blocks do not "
            "grow with M; only the O(M D) inputs and outputs do). That is why `pyroib evaluate` subsamples a "
            "split to 10,000 points (and says so in its JSON).",
            "",
        ]
    harness.write_results(args, "full_data_terms.md", "\n".join(lines))


if __name__ == "__main__":
    main()
