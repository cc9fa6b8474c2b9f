"""Prefect flow of the sampler-convergence study (orchestration only; numerics in
``dsclab.sampler_convergence``).

The flow's parameter is the ``SamplerConvergenceSpec``. It creates or reopens the store, skips
cells whose ``status`` is done, and runs one task per (target, d, score) cell. The product
target's exact cells share their 1-D curves: one ``srk-product-1d`` task per score kind computes
them first, and its cells (cheap: d x the curve) are queued last so that no worker waits on it.
The other cells are queued most expensive first so that the workers finish together.
"""
from __future__ import annotations

import torch
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from dsclab import sampler_convergence as scv
from dsclab.sampler_convergence import SamplerConvergenceSpec
from flows.common import finish, follow, pending_cells
from tasks.sampler_convergence import product_kl_1d, run_cell


def _cost(spec: SamplerConvergenceSpec, cell: scv.SrkCell) -> float:
    """Rough relative cost of a cell (for the queue order only)."""
    if scv.sampled_route(spec, cell):
        return len(spec.seed) * (1.0 + cell.d / 32) * (2.0 if cell.score == "trained" else 1.0)
    return (cell.d / 32) ** 1.5


@flow(name="sampler-convergence", task_runner=ThreadPoolTaskRunner(max_workers=2))
def sampler_convergence(spec: SamplerConvergenceSpec, store: str | None = None) -> dict:
    """Run (or resume) a sampler-convergence study; returns {store, cells, done, failed, computed, plot}."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, scv.template(spec), scv.CELL_DIMS)
    cells = spec.cells()
    todo = pending_cells(path, cells, scv.cell_index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    # Every task here is a stream of small tensor ops (d x d matmuls, 1-D grids, a small MLP), where
    # intra-op threads only add overhead and contend: parallelism comes from the workers.
    torch.set_num_threads(1)
    shared = [c for c in todo if scv.shared_1d(c)]
    curves = {s: product_kl_1d.submit(spec, s) for s in dict.fromkeys(c.score for c in shared)}
    rest = sorted((c for c in todo if not scv.shared_1d(c)), key=lambda c: -_cost(spec, c))
    futures = [run_cell.submit(path, spec, c) for c in rest]
    futures += [run_cell.submit(path, spec, c, curves[c.score]) for c in shared]
    done, failed = follow(log, futures, len(cells), len(cells) - len(todo))
    plot = finish(log, path)
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo),
            "plot": plot}
