"""Orchestration overhead: a study through the Prefect flow against the same cells through plain
function calls with the same number of threads (issue 9), two ways:

- in one process, with a running server: imports and the server's start outside the timings;
- end to end, as a user runs it: ``dsclab run SPEC`` (its own temporary Prefect server, as
  ``make demo``) against ``python benchmarks/orchestration.py --plain-only`` in a new process,
  each timed from its start to its exit (imports, server, study, report and plot).

Both write a complete store (in a temporary folder) with the same numerics and end with the same
summary table, report and plot (the flow publishes them as artifacts; the plain path writes the
PNG); the plain path calls the dsclab functions the tasks wrap, grouped the same way, on a
ThreadPoolExecutor. In one process, a one-cell version of the study first goes both ways (first
calls outside the timings; the first flow call starts the server). Each way, ``--repeat`` pairs
alternate plain and flow, and the median of the pairs' overheads is printed with each pair
(back-to-back runs of the same path differ by up to ~20% on a shared 2-core machine).

    .venv/bin/python benchmarks/orchestration.py [--spec studies/quick.yaml] [--steps N] [--repeat 3]

With ``DSCLAB_BENCH_TINY=1`` the spec is cut to 4 cells x 10 steps and a small evaluation
(``common.tiny_study``), ``--repeat`` defaults to 1 and the one-cell warm-up is left out (the
same calls as the timed pair); both ways still run. The record goes to
``$DSCLAB_BENCH_OUT`` when set.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import yaml


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_study, on_server, record, start_prefect_server, tiny  # noqa: E402

import storage  # noqa: E402
from dsclab.studies.sample_complexity import layout as sc_layout  # noqa: E402
from dsclab.studies.sample_complexity import numerics as sc  # noqa: E402
from dsclab.study import kind_of  # noqa: E402
from flows import artifacts, runners  # noqa: E402


def plain(spec, path: str) -> None:
    """The study through plain calls: cells, then the flow's summary table, report and plot."""
    storage.create_or_open(path, sc_layout.template(spec), sc_layout.CELL_DIMS)
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
    kind = kind_of(ds)
    kind.table(ds)
    kind.report(ds)
    kind.plot(ds, str(Path(path).with_suffix(".png")))


def one_cell(spec):
    """A one-cell version of ``spec`` (its first d, n and seed; 10 steps; one NFE)."""
    return spec.model_copy(update={"d": spec.d[:1], "n": spec.n[:1], "seed": spec.seed[:1], "nfe": spec.nfe[:1],
                                   "train": spec.train.model_copy(update={"steps": 10})})


def in_process(spec, repeat: int, tmp: str) -> list[tuple[float, float]]:
    """(plain, flow) seconds of ``repeat`` pairs in this process, with a running server."""
    with on_server(start_prefect_server()):
        return _in_process(spec, repeat, tmp)


def _in_process(spec, repeat: int, tmp: str) -> list[tuple[float, float]]:
    from prefect import flow

    from flows.study import sample_complexity

    @flow(name="start-server")
    def start_server() -> None:  # the first flow call starts the temporary server
        return None

    start_server()
    if not tiny():
        plain(one_cell(spec), f"{tmp}/warm-plain.zarr")
        sample_complexity(spec=one_cell(spec), store=f"{tmp}/warm-flow.zarr")
    pairs = []
    for r in range(repeat):
        t0 = time.perf_counter()
        plain(spec, f"{tmp}/plain{r}.zarr")
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        sample_complexity(spec=spec, store=f"{tmp}/flow{r}.zarr")
        pairs.append((t_plain, time.perf_counter() - t0))
        _print_pair("in one process, running server", r, pairs[-1])
    return pairs


def end_to_end(spec, repeat: int, tmp: str) -> list[tuple[float, float]]:
    """(plain, flow) seconds of ``repeat`` pairs of new processes, each from start to exit."""
    spec_file = Path(tmp) / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    env = dict(os.environ, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)  # dsclab run starts its temporary server, as make demo does
    root = Path(__file__).resolve().parents[1]
    cmds = {"plain": [sys.executable, str(Path(__file__).resolve()), "--plain-only", "--spec", str(spec_file)],
            "flow": [sys.executable, "-m", "dsclab.cli", "run", str(spec_file)]}
    pairs = []
    for r in range(repeat):
        t = {}
        for way in ("plain", "flow"):
            t0 = time.perf_counter()
            out = subprocess.run([*cmds[way], "--store", f"{tmp}/e2e-{way}{r}.zarr"], cwd=root, env=env,
                                 capture_output=True, text=True)
            t[way] = time.perf_counter() - t0
            if out.returncode != 0:
                raise SystemExit(f"{way} run failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        pairs.append((t["plain"], t["flow"]))
        _print_pair("end to end, new processes", r, pairs[-1])
    return pairs


def _print_pair(way: str, r: int, pair: tuple[float, float]) -> None:
    print(f"{way}, pair {r + 1}: plain calls {pair[0]:.1f} s, Prefect flow {pair[1]:.1f} s "
          f"({100 * (pair[1] / pair[0] - 1):+.1f}%)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="studies/quick.yaml")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1 if tiny() else 3, help="plain/flow pairs, each way")
    ap.add_argument("--plain-only", action="store_true", help="(internal) run the plain calls once and exit")
    ap.add_argument("--store", help="(with --plain-only) the store to write")
    args = ap.parse_args()
    spec = load_study(args.spec, args.steps)
    if args.plain_only:
        plain(spec, args.store)
        return
    with tempfile.TemporaryDirectory() as tmp:
        inproc = in_process(spec, args.repeat, tmp)
        e2e = end_to_end(spec, args.repeat, tmp)
    over_inproc, over_e2e = [f / p - 1 for p, f in inproc], [f / p - 1 for p, f in e2e]
    res = {"cells": len(spec.cells()), "steps": spec.train.steps, "pairs_in_process_seconds": inproc,
           "pairs_end_to_end_seconds": e2e, "overheads_in_process": over_inproc, "overheads_end_to_end": over_e2e,
           "overhead_running_server": median(over_inproc), "overhead_end_to_end": median(over_e2e)}
    print(f"{res['cells']} cells, {args.repeat} pairs each way")
    print(f"overhead (median of pairs): {100 * res['overhead_running_server']:+.1f}% in one process with a running "
          f"server, {100 * res['overhead_end_to_end']:+.1f}% end to end (dsclab run with its temporary server "
          "against a plain process)")
    print(f"record: {record('orchestration', res)}")


if __name__ == "__main__":
    main()
