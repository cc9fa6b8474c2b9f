"""Exact W2 between equal-size samples: POT's network simplex (``ot.emd2``, dsclab's solver before
issue 30) against the assignment solver (SciPy's ``linear_sum_assignment`` on the row- and
column-reduced cost) and against ``dsclab.metrics.w2_exact`` as it dispatches, one thread.

    .venv/bin/python benchmarks/w2_solvers.py [--d 2 4 8 32] [--n 200 1000 2000] [--seeds 3] [--reps 2]

Each instance is the quick study's: m points of its target law (a two-component Gaussian mixture
at t_min) against m points of a slightly wrong sampler's law (scaled by 1.05, shifted by 0.02).
Every call builds its float64 cost matrix as ``w2_exact`` does; the solvers run interleaved on the
same instance, each ``--reps`` times (the fastest kept), the median taken over the seeds. Every
value is checked against the network simplex's (the largest relative difference is printed).
With ``DSCLAB_BENCH_TINY=1`` the defaults are d = 2, 8, m = 60, one seed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import record, tiny  # noqa: E402

from dsclab import distributions  # noqa: E402
from dsclab.metrics import _sqdist, w2_exact  # noqa: E402


def network_simplex(x: torch.Tensor, y: torch.Tensor) -> float:
    import ot

    cost = _sqdist(x.to(torch.float64), y.to(torch.float64)).numpy()
    a = np.full(x.shape[0], 1.0 / x.shape[0])
    return float(np.sqrt(max(ot.emd2(a, a, cost, numItermax=10_000_000), 0.0)))


def assignment(x: torch.Tensor, y: torch.Tensor) -> float:
    from scipy.optimize import linear_sum_assignment

    cost = _sqdist(x.to(torch.float64), y.to(torch.float64)).numpy()
    reduced = cost - cost.min(axis=1, keepdims=True)
    reduced -= reduced.min(axis=0, keepdims=True)
    r, c = linear_sum_assignment(reduced)
    return float(np.sqrt(max(cost[r, c].sum() / x.shape[0], 0.0)))


SOLVERS = {"network_simplex": network_simplex, "assignment": assignment, "w2_exact": w2_exact}


def instance(d: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    dist = distributions.make("gaussian_mixture", d, k=2, separation=4.0, std=1.0)
    g = torch.Generator().manual_seed(seed)
    y = dist.sample(m, g, t=0.001).double()
    return 1.05 * dist.sample(m, g, t=0.001).double() + 0.02, y


def main() -> None:
    small = tiny()
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, nargs="+", default=[2, 8] if small else [2, 4, 8, 32])
    ap.add_argument("--n", type=int, nargs="+", default=[60] if small else [200, 1000, 2000])
    ap.add_argument("--seeds", type=int, default=1 if small else 3)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for f in SOLVERS.values():  # imports outside the timings
        f(*instance(2, 4, 0))
    rows, worst = {}, 0.0
    for d in args.d:
        for m in args.n:
            best = {k: [] for k in SOLVERS}
            for seed in range(args.seeds):
                x, y = instance(d, m, seed)
                times, vals = {k: [] for k in SOLVERS}, {}
                for _ in range(args.reps):
                    for k, f in SOLVERS.items():
                        t0 = time.perf_counter()
                        vals[k] = f(x, y)
                        times[k].append(time.perf_counter() - t0)
                for k in SOLVERS:
                    best[k].append(min(times[k]))
                    worst = max(worst, abs(vals[k] - vals["network_simplex"]) / vals["network_simplex"])
            sec = {k: statistics.median(v) for k, v in best.items()}
            row = {"seconds": sec,
                   "assignment_speedup": sec["network_simplex"] / sec["assignment"],
                   "w2_exact_speedup": sec["network_simplex"] / sec["w2_exact"]}
            rows[f"d={d} n={m}"] = row
            print(f"d={d:3d} n={m:5d}  network simplex {sec['network_simplex']:.4f} s  assignment "
                  f"{sec['assignment']:.4f} s ({row['assignment_speedup']:.2f}x)  w2_exact {sec['w2_exact']:.4f} s "
                  f"({row['w2_exact_speedup']:.2f}x)", flush=True)
    print(f"largest relative difference from the network simplex's W2: {worst:.1e}")
    load = [round(v, 2) for v in os.getloadavg()]
    print(f"load average {load}")
    print(f"record: {record('w2_solvers', {'d': args.d, 'n': args.n, 'seeds': args.seeds, 'reps': args.reps, 'rows': rows, 'largest_relative_difference': worst})}")


if __name__ == "__main__":
    main()
