"""Dask scale-out: the same study on a local Dask cluster of 1 worker against 2 workers (issue 9).

Each worker process runs one task at a time (``threads_per_worker=1``). Two ways of giving them
the machine's cores, both printed:

- ``--torch-threads 1`` (scale-out): every worker computes on one core, as when each added
  worker brings its own core (or machine); 1 worker then leaves the second core idle;
- default (shared machine): the workers split the cores (``flows.runners.local_torch_threads``:
  1 worker uses both cores through PyTorch's intra-op threads, 2 use one each).

Every run goes through the Prefect flow and writes a complete store (temporary folder); the
Prefect server is started once before timing, so each time is the cluster's start plus the study.

    .venv/bin/python benchmarks/dask_scaling.py [--spec studies/quick.yaml] [--steps N] [--workers 1 2]
                                                [--torch-threads 1]

With ``DSCLAB_BENCH_TINY=1`` the spec is cut to 4 cells x 10 steps and a small evaluation
(``common.tiny_study``), each cluster size still through a real local Dask cluster and the flow.
The record goes to ``$DSCLAB_BENCH_OUT`` when set.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_study, on_server, record, start_prefect_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="studies/quick.yaml")
    ap.add_argument("--steps", type=int, default=None, help="shorten every cell's training budget")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="PyTorch threads per worker (default: the cores split between the workers)")
    args = ap.parse_args()
    server = start_prefect_server()
    spec = load_study(args.spec, args.steps)
    with on_server(server):
        res = run(spec, args)
    print(f"record: {record('dask_scaling', res)}")


def run(spec, args) -> dict:
    from prefect import flow

    from flows import runners
    from flows.runners import RunnerSpec
    from flows.study import sample_complexity

    @flow(name="warm-up")
    def warm_up() -> None:  # the first flow call (the server ready, the client up) outside the timings
        return None

    warm_up()
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            runner = RunnerSpec(kind="dask", n_workers=n, threads_per_worker=1, torch_threads=args.torch_threads)
            t0 = time.perf_counter()
            out = sample_complexity(spec=spec, store=f"{tmp}/w{n}.zarr", runner=runner)
            seconds[n] = time.perf_counter() - t0
            assert out["done"] == out["cells"], out
            threads = RunnerSpec(kind="dask", n_workers=n, torch_threads=args.torch_threads)
            print(f"{n} worker(s), {runners.local_torch_threads(threads)} PyTorch thread(s) each: "
                  f"{seconds[n]:.1f} s for {out['cells']} cells", flush=True)
    base = args.workers[0]
    res = {"cells": len(spec.cells()), "steps": spec.train.steps, "torch_threads": args.torch_threads,
           "seconds": seconds,
           "speedup": {n: seconds[base] / s for n, s in seconds.items()}}
    for n in args.workers[1:]:
        print(f"speedup {n} workers over {base}: {res['speedup'][n]:.2f}x")
    return res


if __name__ == "__main__":
    main()
