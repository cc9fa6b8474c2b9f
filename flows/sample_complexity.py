"""Prefect flow of the sample-complexity study (orchestration only).

The flow's parameter is the ``StudySpec`` (the Prefect UI renders it as a form). It creates or
reopens the store, skips cells whose ``status`` is done, generates each (d, seed) dataset once,
trains each (d, seed) group of cells in one task and evaluates each cell in one task, logging
progress (cells done / total, elapsed, ETA) as cells finish.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict

import torch
from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from dsclab import sample_complexity as sc
from dsclab.spec import StudySpec
from tasks.sample_complexity import evaluate_cell, generate_data, train_group


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def pending_cells(store: str, spec: StudySpec):
    status = storage.read_status(store)
    return [c for c in spec.cells()
            if int(status.sel(d=c.d, n=c.n, seed=c.seed, estimator=c.estimator)) != storage.DONE]


@flow(name="sample-complexity", task_runner=ThreadPoolTaskRunner(max_workers=2))
def sample_complexity(spec: StudySpec, store: str | None = None) -> dict:
    """Run (or resume) a sample-complexity study; returns {store, cells, done, failed, computed}."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, sc.template(spec), sc.CELL_DIMS)
    todo = pending_cells(path, spec)
    total = len(spec.cells())
    log.info("store %s: %d cells, %d to compute", path, total, len(todo))
    # Threads share the process: split the cores between them instead of oversubscribing.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.workers))

    groups: dict[tuple[int, int], list] = defaultdict(list)
    for c in todo:
        groups[(c.d, c.seed)].append(c)
    # Small groups first is arbitrary; large d first balances the threads better.
    order = sorted(groups, key=lambda k: (-k[0], k[1]))
    evals = []
    for d, seed in order:
        data = generate_data.submit(path, spec, d, seed)
        trained = train_group.submit(path, spec, groups[(d, seed)], wait_for=[data])
        evals += [evaluate_cell.submit(path, spec, c, trained) for c in groups[(d, seed)]]

    t0, done, failed = time.perf_counter(), total - len(todo), 0
    for i, fut in enumerate(as_completed(evals), 1):
        status = fut.result(raise_on_failure=False)
        if isinstance(status, BaseException):  # an infrastructure error: the cell stays pending
            log.error("a task failed: %s", status)
        done += status == storage.DONE
        failed += status != storage.DONE
        el = time.perf_counter() - t0
        eta = el / i * (len(evals) - i)
        log.info("cells %d/%d done (%d failed) | elapsed %s | ETA %s", done, total, failed, _fmt(el), _fmt(eta))
    storage.consolidate(path)
    return {"store": path, "cells": total, "done": done, "failed": failed, "computed": len(todo)}
