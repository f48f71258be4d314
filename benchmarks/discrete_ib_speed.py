"""Speed of the exact solvers at |X| = |Y| = 1,000: Blahut–Arimoto and one run of the iterative IB equations.

Run from the repository root:

    .venv/bin/python benchmarks/discrete_ib_speed.py

It prints a markdown table and writes it, with this command and the machine, to
benchmarks/results/discrete_ib_speed.md. The joint is a Dirichlet(1) draw with a fixed seed; the rate–distortion
problem takes that joint's p(x) as the source and squared error between letter positions i/n as distortion.
"""

from __future__ import annotations

import argparse
import time

import harness
import numpy as np

from pyroib.exact import blahut_arimoto, iterative_ib


def random_joint(n_x: int, n_y: int, seed: int) -> np.ndarray:
    joint = np.random.default_rng(seed).dirichlet(np.ones(n_x * n_y)).reshape(n_x, n_y)
    return joint / joint.sum()


def time_blahut_arimoto(p_xy: np.ndarray, slope: float, max_iter: int) -> dict:
    positions = np.arange(p_xy.shape[0]) / p_xy.shape[0]
    squared_error = (positions[:, None] - positions[None, :]) ** 2
    start = time.perf_counter()
    point = blahut_arimoto(p_xy.sum(axis=1), squared_error, slope, max_iter=max_iter)
    seconds = time.perf_counter() - start
    return {
        "solver": f"blahut_arimoto (slope {slope:g}, tol 1e-8)",
        "iterations": point.iterations,
        "seconds": seconds,
        "converged": point.converged,
        "result": f"R = {point.rate:.4f} nats, D = {point.distortion:.3g}, certified gap {point.bound_gap:.1g} nats",
    }


def time_iterative_ib(p_xy: np.ndarray, beta: float, n_clusters: int, max_iter: int) -> dict:
    start = time.perf_counter()
    solution = iterative_ib(p_xy, beta, n_clusters, restarts=1, seed=0, max_iter=max_iter)
    seconds = time.perf_counter() - start
    return {
        "solver": f"iterative_ib (β {beta:g}, abs(T) {n_clusters}, 1 start, tol 1e-9)",
        "iterations": solution.iterations,
        "seconds": seconds,
        "converged": solution.converged,
        "result": f"I(X;T) = {solution.i_xt:.4f}, I(T;Y) = {solution.i_ty:.4f} nats",
    }


def table(rows: list[dict]) -> str:
    lines = ["| solver | iterations | seconds | ms / iteration | converged | result |", "|---|---:|---:|---:|---|---|"]
    for row in rows:
        per_iteration = 1e3 * row["seconds"] / row["iterations"]
        lines.append(
            f"| {row['solver']} | {row['iterations']} | {row['seconds']:.2f} | {per_iteration:.2f} | "
            f"{row['converged']} | {row['result']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = harness.add_record_flag(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--size", type=int, default=1000, help="|X| = |Y|")
    parser.add_argument("--clusters", type=int, default=50, help="|T| for the iterative IB")
    # The trivial encoder of this joint is stable up to β = 1 / ρ_m² ≈ 251 (ρ_m its maximal correlation), so the
    # default β lies just inside the informative range, where the equations need tens of iterations.
    parser.add_argument("--beta", type=float, default=300.0)
    parser.add_argument("--slope", type=float, default=1000.0)
    parser.add_argument("--max-iter", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    where = harness.machine()
    p_xy = random_joint(args.size, args.size, args.seed)
    rows = [
        time_blahut_arimoto(p_xy, args.slope, args.max_iter),
        time_iterative_ib(p_xy, args.beta, args.clusters, args.max_iter),
    ]
    report = "\n".join(
        [
            "# Exact discrete solvers: speed",
            "",
            f"|X| = |Y| = {args.size}, Dirichlet(1) joint drawn with seed {args.seed}; at most {args.max_iter} "
            "iterations each.",
            "",
            table(rows),
            "",
            "Reproduce from the repository root with",
            "",
            f"    {harness.command()}",
            "",
            f"Machine: {where}. Wall-clock times on a machine shared with other jobs; indicative only.",
            "",
        ]
    )
    harness.write_results(args, "discrete_ib_speed.md", report)


if __name__ == "__main__":
    main()
