"""The n* search against a dense grid of the same final resolution (issue 19): cells computed,
wall time, and whether the two n*(eps, d) agree within the bracket.

Both go through the Prefect flows in this process, with a running server (its start and a
warm-up flow outside the timings), each on a new store in a temporary folder:

- **search**: ``flows.search.search`` on the spec (its n values give the range; coarse grid of
  ratio ``factor``, then geometric bisection until each bracket's ratio is at most ``--ratio``);
- **dense grid**: the kind's study flow on the spec with n = the geometric grid of ratio at most
  ``--ratio`` over the same range (``dsclab.search.geometric_grid``), every d and seed; its n* and
  bracket are read from that store the same way (``dsclab.search.summarize``).

Agreement, per curve: the two brackets overlap (each holds a crossing of the seed mean of the
same cells' error: a cell's numbers depend only on its coordinates and settings), and whether
each n* lies inside the other's bracket. Prints the ratios measured in this one run (cells and
wall time, dense / search) and the machine's load average, and writes a JSON record under
``results/benchmarks/``.

    .venv/bin/python benchmarks/search_vs_grid.py [--spec studies/search_quick.yaml] [--metric score_l2]
        [--eps 0.5] [--ratio 1.25] [--steps N]

With ``DSCLAB_BENCH_TINY=1`` the spec is cut by ``common.tiny_study`` to its first d and seed, n
from 30 to 480 and a small evaluation, with 200 float32 training steps of a width-32, depth-2
network (so that the error still crosses eps inside the range and the search bisects) and ``--ratio`` 2 by default; the record goes to
``$DSCLAB_BENCH_OUT`` when set.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
from common import on_server, record, start_prefect_server, tiny, tiny_study  # noqa: E402

from dsclab import search as sr  # noqa: E402
from dsclab.spec import load_yaml  # noqa: E402
from dsclab.study import kind_of  # noqa: E402


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def run(spec_file: str, metric: str, eps: float, ratio: float, steps: int | None, tmp: str) -> dict:
    from prefect import flow

    from flows.search import prepare, read_values, search
    from flows.study import kind_flow

    data = load_yaml(spec_file)
    if tiny():
        data = {**tiny_study(data), "n": [30, 480]}
        data["d"] = data["d"][:1]
        data["train"] = {**data["train"], "steps": 200, "width": 32, "depth": 2, "precision": "float32"}
    if steps:
        data = {**data, "train": {**data.get("train", {}), "steps": steps}}
    kind = kind_of(data)
    request = prepare(data, store=f"{tmp}/search.zarr", metric=metric, eps=eps, ratio=ratio)
    spec, settings = request.spec, request.settings()

    @flow(name="start-server")
    def start_server() -> None:  # the first flow call starts the temporary server
        return None

    start_server()
    load = {"start": _load()}
    t0 = time.perf_counter()
    out = search(request=request)
    t_search = time.perf_counter() - t0
    load["after_search"] = _load()
    print(f"search: {out['cells_computed']} cells in {out['rounds']} rounds ({out['computed']}), {t_search:.1f} s",
          flush=True)
    print(out["report"], flush=True)

    dense_n = sr.geometric_grid(min(spec.n), max(spec.n), settings.ratio)
    dense = spec.model_copy(update={"n": dense_n, "store": f"{tmp}/dense.zarr"})
    t0 = time.perf_counter()
    grid = kind_flow(kind.name)(spec=dense)
    t_dense = time.perf_counter() - t0
    load["after_dense"] = _load()
    print(f"dense grid: {grid['computed']} cells ({len(dense_n)} n from {dense_n[0]} to {dense_n[-1]}, "
          f"ratio <= {settings.ratio:g}), {t_dense:.1f} s", flush=True)

    results = sr.summarize(read_values(dense.store_path(), kind, spec, metric), eps)
    curves = []
    for s, d in zip(out["curves"], results):
        lo, hi = s["bracket"]
        lo, hi = (math.nan if lo is None else lo), (math.inf if hi is None else hi)
        overlap = max(lo, d.bracket.lo) < min(hi, d.bracket.hi)
        row = {**d.coords, "search_n_star": s["n_star"], "search_bracket": [lo, hi], "dense_n_star": d.n_star,
               "dense_bracket": [d.bracket.lo, d.bracket.hi], "brackets_overlap": bool(overlap),
               "dense_in_search_bracket": bool(lo < d.n_star <= hi),
               "search_in_dense_bracket": bool(s["n_star"] is not None and d.bracket.lo < s["n_star"] <= d.bracket.hi)}
        curves.append(row)
        where = ", ".join(f"{k}={v}" for k, v in d.coords.items())
        print(f"  {where}: search n* {s['n_star'] or math.nan:.0f} [{lo:.0f}, {hi:.0f}]  dense n* {d.n_star:.0f} "
              f"[{d.bracket.lo:.0f}, {d.bracket.hi:.0f}]  brackets overlap: {overlap}; dense n* in the search's "
              f"bracket: {row['dense_in_search_bracket']}; search n* in the dense bracket: "
              f"{row['search_in_dense_bracket']}", flush=True)
    exps = [(c, b) for c, b, _ in sr.exponents(results)]
    res = {"spec": spec_file, "metric": metric, "eps": eps, "ratio": settings.ratio, "steps": spec.train.steps,
           "search_cells": out["cells_computed"], "search_rounds": out["computed"], "search_seconds": t_search,
           "dense_cells": grid["computed"], "dense_n": dense_n, "dense_seconds": t_dense,
           "cells_ratio": grid["computed"] / out["cells_computed"], "time_ratio": t_dense / t_search,
           "search_exponents": out["exponents"], "dense_exponents": [{**c, "exponent": b} for c, b in exps],
           "curves": curves, "agree": all(c["brackets_overlap"] for c in curves), "load_average": load}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="studies/search_quick.yaml")
    ap.add_argument("--metric", default="score_l2")
    ap.add_argument("--eps", type=float, default=0.5)
    ap.add_argument("--ratio", type=float, default=2.0 if tiny() else 1.25)
    ap.add_argument("--steps", type=int, default=None, help="shorten every cell's training (both ways)")
    args = ap.parse_args()
    server = start_prefect_server()
    with tempfile.TemporaryDirectory() as tmp, on_server(server):
        res = run(args.spec, args.metric, args.eps, args.ratio, args.steps, tmp)
    print(f"dense / search: {res['cells_ratio']:.2f}x the cells ({res['dense_cells']} / {res['search_cells']}), "
          f"{res['time_ratio']:.2f}x the wall time ({res['dense_seconds']:.1f} s / {res['search_seconds']:.1f} s); "
          f"n* agree within the brackets at every curve: {res['agree']}; "
          f"load average (1/5/15 min) {res['load_average']}")
    print(f"record: {record('search_vs_grid', res)}")


if __name__ == "__main__":
    main()
