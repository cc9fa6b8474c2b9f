"""Prefect flow of the sample-complexity study (orchestration only).

The flow's parameter is the ``StudySpec`` (the Prefect UI renders it as a form). It creates or
reopens the store, skips cells whose ``status`` is done, generates each (d, seed) dataset once,
trains the cells sharing d as batched ensembles (one task per group, groups sized to the memory
bound ``spec.group_memory_mb``) and evaluates each cell in one task, logging
progress (cells done / total, elapsed, ETA; a progress artifact) as cells finish, and ends by
publishing the summary table, report and plot as artifacts of the flow run.

``runner`` picks where tasks run (``flows.runners``): threads in this process (default), a local
Dask cluster or an existing Dask scheduler. Training tasks are tagged ``gpu``.
"""
from __future__ import annotations

from collections import defaultdict

from prefect import flow, get_run_logger

import storage
from dsclab import sample_complexity as sc
from dsclab.spec import StudySpec
from flows import runners
from flows.common import finish, follow, pending_cells
from flows.runners import RunnerSpec
from tasks.sample_complexity import cell_index, evaluate_cell, generate_data, train_group


@flow(name="sample-complexity")
def sample_complexity(spec: StudySpec, store: str | None = None, runner: RunnerSpec = RunnerSpec()) -> dict:
    """Run (or resume) a sample-complexity study; returns {store, cells, done, failed, computed, plot}.

    Tasks are submitted through ``runners.start(runner, spec.workers)``, not the flow's own task
    runner, so that a deployment's run form can choose threads or Dask per run."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, sc.template(spec), sc.CELL_DIMS)
    cells = spec.cells()
    todo = pending_cells(path, cells, cell_index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    if runner.kind == "threads":  # threads share the process: split the cores between them
        runners.share_cores(spec.workers)

    by_d: dict[int, list] = defaultdict(list)
    for c in todo:
        by_d[c.d].append(c)
    with runners.start(runner, spec.workers, log) as run:
        # Every data and training task is submitted before any evaluation: a thread-pool worker
        # that picks a task waits in it for the task's inputs, so an evaluation queued ahead of
        # another group's training would hold a thread idle while one group trains alone.
        groups = []
        for d in sorted(by_d, reverse=True):  # largest d first balances the workers
            data = [run.submit(generate_data, path, spec, d, s) for s in sorted({c.seed for c in by_d[d]})]
            for group in sc.split_groups(spec, by_d[d]):  # batched ensembles within the memory bound
                groups.append((group, run.submit(train_group, path, spec, group, wait_for=data)))
        evals = [run.submit(evaluate_cell, path, spec, c, trained) for group, trained in groups for c in group]
        done, failed = follow(log, evals, len(cells), len(cells) - len(todo))
    plot = finish(log, path)
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo),
            "plot": plot}
