"""Prefect flow of the computational-gap study (orchestration only; numerics in
``dsclab.computational_gap``). Creates or reopens the store, skips done cells, submits one task
per pending (n, k, seed) cell (largest n first, so that the workers finish together), follows
progress, then consolidates the store and publishes the report and plot."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from dsclab import computational_gap as cg
from dsclab.computational_gap import ComputationalGapSpec, cell_index
from flows.common import finish, follow, pending_cells
from tasks.computational_gap import compute_cell


@flow(name="computational-gap", task_runner=ThreadPoolTaskRunner(max_workers=2))
def computational_gap(spec: ComputationalGapSpec, store: str | None = None) -> dict:
    """Run (or resume) a computational-gap study; returns {store, cells, done, failed, computed, plot}."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, cg.template(spec), cg.CELL_DIMS)
    cells = spec.cells()
    todo = pending_cells(path, cells, cell_index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    todo = sorted(todo, key=lambda c: (-c.n, -c.k, c.seed))
    futures = [compute_cell.submit(path, spec, c) for c in todo]
    done, failed = follow(log, futures, len(cells), len(cells) - len(todo))
    plot = finish(log, path)
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo),
            "plot": plot}
