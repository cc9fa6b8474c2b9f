"""Prefect flow of the I-MMSE study (orchestration only; numerics in ``dsclab.immse_study``).

The flow's parameter is the ``ImmseSpec``. It creates or reopens the store, skips cells whose
``status`` is done, runs one task per (data, d, n, seed) cell, largest d and n first so that
the two workers finish together, and logs progress as cells finish.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from dsclab import immse_study as ist
from dsclab.immse_study import ImmseSpec
from flows import runners
from flows.common import follow, pending_cells
from tasks.immse import run_cell


@flow(name="immse", task_runner=ThreadPoolTaskRunner(max_workers=2))
def immse(spec: ImmseSpec, store: str | None = None) -> dict:
    """Run (or resume) an I-MMSE study; returns {store, cells, done, failed, computed}."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, ist.template(spec), ist.CELL_DIMS)
    cells = spec.cells()
    todo = pending_cells(path, cells, ist.cell_index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    # Threads share the process: split the cores between them instead of oversubscribing.
    runners.share_cores(spec.workers)
    order = sorted(todo, key=lambda c: (-c.d, -c.n, c.data, c.seed))
    futures = [run_cell.submit(path, spec, c) for c in order]
    done, failed = follow(log, futures, len(cells), len(cells) - len(todo))
    storage.consolidate(path)
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo)}
