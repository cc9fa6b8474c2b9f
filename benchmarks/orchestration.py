"""Orchestration overhead: a study through the Prefect flow against the same cells through plain
function calls with the same number of threads (issue 9). The temporary Prefect server's start
(what ``make demo`` pays once) is timed apart, so the overhead is printed both with a running
server and with that start included.

Both write a complete store (in a temporary folder) with the same numerics; the plain path calls
the dsclab functions the tasks wrap, grouped the same way, on a ThreadPoolExecutor.

    .venv/bin/python benchmarks/orchestration.py [--spec studies/quick.yaml] [--steps N]
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


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_study, record  # noqa: E402

import storage  # noqa: E402
from dsclab import sample_complexity as sc  # noqa: E402
from flows import runners  # noqa: E402


def plain(spec, path: str) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="studies/quick.yaml")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    spec = load_study(args.spec, args.steps)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        plain(spec, f"{tmp}/plain.zarr")
        t_plain = time.perf_counter() - t0

        from prefect import flow

        from flows.sample_complexity import sample_complexity

        @flow(name="start-server")
        def start_server() -> None:  # the first flow call starts the temporary server
            return None

        t0 = time.perf_counter()
        start_server()
        t_server = time.perf_counter() - t0
        t0 = time.perf_counter()
        sample_complexity(spec=spec, store=f"{tmp}/flow.zarr")
        t_flow = time.perf_counter() - t0
    res = {"cells": len(spec.cells()), "steps": spec.train.steps, "plain_seconds": t_plain,
           "server_start_seconds": t_server, "flow_seconds": t_flow,
           "overhead_running_server": t_flow / t_plain - 1,
           "overhead_with_server_start": (t_flow + t_server) / t_plain - 1}
    print(f"{res['cells']} cells: plain calls {t_plain:.1f} s; Prefect flow {t_flow:.1f} s "
          f"(+{t_server:.1f} s to start the temporary server)")
    print(f"overhead: {100 * res['overhead_running_server']:+.1f}% with a running server, "
          f"{100 * res['overhead_with_server_start']:+.1f}% with the temporary server's start (make demo)")
    print(f"record: {record('orchestration', res)}")


if __name__ == "__main__":
    main()
