"""Orchestration overhead: a study through the Prefect flow against the same cells through plain
function calls with the same number of threads (issue 9). The temporary Prefect server's start
(what ``make demo`` pays once) is timed apart, so the overhead is printed both with a running
server and with that start included.

Both write a complete store (in a temporary folder) with the same numerics and end with the same
summary table, report and plot (the flow publishes them as artifacts; the plain path writes the
PNG); the plain path calls the dsclab functions the tasks wrap, grouped the same way, on a
ThreadPoolExecutor. First a one-cell version of the study goes both ways (imports and first calls
outside the timings; the first flow call starts the server), then ``--repeat`` pairs alternate
plain and flow, and the median of the pairs' overheads is printed with each pair (back-to-back
runs of the same path differ by up to ~20% on a shared 2-core machine).

    .venv/bin/python benchmarks/orchestration.py [--spec studies/quick.yaml] [--steps N] [--repeat 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_study, record  # noqa: E402

import storage  # noqa: E402
from dsclab import sample_complexity as sc  # noqa: E402
from dsclab.report import PLOTS, REPORTS  # noqa: E402
from flows import artifacts, runners  # noqa: E402


def plain(spec, path: str) -> None:
    """The study through plain calls: cells, then the flow's summary table, report and plot."""
    storage.create_or_open(path, sc.template(spec), sc.CELL_DIMS)
    runners.share_cores(spec.workers)
    groups = defaultdict(list)
    for c in spec.cells():
        groups[c.d].append(c)

    def run_group(d):
        data = {s: sc.generate_data(spec, d, s) for s in spec.seed}
        return sc.train_cells(spec, groups[d], data, "cpu")

    def run_cell(cell, res):
        idx = {"d": cell.d, "n": cell.n, "seed": cell.seed, "estimator": cell.estimator}
        storage.write_cell(path, sc.evaluate(spec, cell, res.model.score, res), idx)
        storage.mark_cells(path, [idx], storage.DONE)

    with ThreadPoolExecutor(spec.workers) as pool:
        trained = {d: pool.submit(run_group, d) for d in sorted(groups, reverse=True)}
        evals = [pool.submit(run_cell, c, r) for d in trained for c, r in zip(groups[d], trained[d].result())]
        for f in evals:
            f.result()
    storage.consolidate(path)
    ds = storage.open_results(path)
    artifacts.TABLES[ds.attrs["study"]](ds)
    REPORTS[ds.attrs["study"]](ds)
    PLOTS[ds.attrs["study"]](ds, str(Path(path).with_suffix(".png")))


def tiny(spec):
    """A one-cell version of ``spec`` (its first d, n and seed; 10 steps; one NFE)."""
    return spec.model_copy(update={"d": spec.d[:1], "n": spec.n[:1], "seed": spec.seed[:1], "nfe": spec.nfe[:1],
                                   "train": spec.train.model_copy(update={"steps": 10})})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="studies/quick.yaml")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3, help="plain/flow pairs")
    args = ap.parse_args()
    spec = load_study(args.spec, args.steps)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow

    from flows.sample_complexity import sample_complexity

    @flow(name="start-server")
    def start_server() -> None:  # the first flow call starts the temporary server
        return None

    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        start_server()
        t_server = time.perf_counter() - t0
        plain(tiny(spec), f"{tmp}/warm-plain.zarr")
        sample_complexity(spec=tiny(spec), store=f"{tmp}/warm-flow.zarr")
        for r in range(args.repeat):
            t0 = time.perf_counter()
            plain(spec, f"{tmp}/plain{r}.zarr")
            t_plain = time.perf_counter() - t0
            t0 = time.perf_counter()
            sample_complexity(spec=spec, store=f"{tmp}/flow{r}.zarr")
            pairs.append((t_plain, time.perf_counter() - t0))
            print(f"pair {r + 1}: plain calls {pairs[-1][0]:.1f} s, Prefect flow {pairs[-1][1]:.1f} s "
                  f"({100 * (pairs[-1][1] / pairs[-1][0] - 1):+.1f}%)", flush=True)
    res = {"cells": len(spec.cells()), "steps": spec.train.steps, "server_start_seconds": t_server,
           "pairs_seconds": pairs, "overhead_running_server": median(f / p - 1 for p, f in pairs),
           "overhead_with_server_start": median((f + t_server) / p - 1 for p, f in pairs)}
    print(f"{res['cells']} cells, {len(pairs)} pairs; the temporary server took {t_server:.1f} s to start")
    print(f"overhead (median of pairs): {100 * res['overhead_running_server']:+.1f}% with a running server, "
          f"{100 * res['overhead_with_server_start']:+.1f}% with the temporary server's start (make demo)")
    print(f"record: {record('orchestration', res)}")


if __name__ == "__main__":
    main()
