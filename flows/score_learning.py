"""Prefect flow of the score-learning study (orchestration only; numerics in
``dsclab.score_learning``, time bootstrapping and dependent data in ``dsclab.bootstrap``).

The flow's parameter is the ``ScoreLearningSpec``. It creates or reopens the store, skips cells
whose ``status`` is done, runs one task per (d, n, seed, estimator, data_mode, model) cell —
grouped by (d, seed, data_mode) so that cells sharing a training set run close together and
reuse it (``dsclab.score_learning.training_data`` keeps a few in memory), largest d first —
logs progress as cells finish, and ends by consolidating the store and publishing the report
and plot as artifacts of the flow run.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from dsclab import score_learning as sl
from dsclab.score_learning import ScoreLearningSpec
from flows import runners
from flows.common import finish, follow, pending_cells
from tasks.score_learning import run_cell


@flow(name="score-learning", task_runner=ThreadPoolTaskRunner(max_workers=2))
def score_learning(spec: ScoreLearningSpec, store: str | None = None) -> dict:
    """Run (or resume) a score-learning study; returns {store, cells, done, failed, computed, plot}."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, sl.template(spec), sl.CELL_DIMS)
    cells = spec.cells()
    todo = pending_cells(path, cells, sl.cell_index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    # Threads share the process: split the cores between them instead of oversubscribing.
    runners.share_cores(spec.workers)
    order = sorted(todo, key=lambda c: (-c.d, c.seed, c.data_mode, -c.n, c.model, c.estimator))
    futures = [run_cell.submit(path, spec, c) for c in order]
    done, failed = follow(log, futures, len(cells), len(cells) - len(todo))
    plot = finish(log, path)
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo),
            "plot": plot}
