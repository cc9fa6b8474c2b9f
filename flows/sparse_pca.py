"""Prefect flow of the sparse-PCA study (orchestration only; numerics in ``dsclab.sparse_pca_study``).

The flow's parameter is the ``SparsePCASpec``. It creates or reopens the store, skips cells whose
``status`` is done, and per (d, k) group of pending cells draws and caches the data (one task) and
trains the group's networks as one batched ensemble (one task; skipped when ``network`` is not an
estimator); then it evaluates the pending cells of each (d, k, beta, seed) in one task (they share
a data set). Largest d first, so that the workers finish together; progress (cells done / total,
elapsed, ETA, a progress artifact) is logged as groups finish, and the run ends by consolidating
the store and publishing the report and plot as artifacts.
"""
from __future__ import annotations

import time
from collections import defaultdict

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

import storage
from dsclab import sparse_pca_study as sps
from dsclab.sparse_pca_study import SparsePCASpec, cell_index
from flows import artifacts, runners
from flows.common import finish, fmt_seconds, pending_cells
from tasks.sparse_pca import evaluate_cells, generate_data, train_networks


def follow_groups(log, futures, sizes: list[int], total: int, done_before: int) -> tuple[int, int]:
    """Like ``flows.common.follow`` for tasks that return a list of cell statuses (``sizes[i]``
    cells for future i): logs cells done / total, elapsed and ETA as each group finishes. A group
    whose task raised leaves its cells pending (a rerun retries them). Returns (done in all, failed
    in this run)."""
    t0, done, failed, finished = time.perf_counter(), done_before, 0, 0
    progress = artifacts.Progress(total, done_before)
    size = {id(f): s for f, s in zip(futures, sizes)}
    todo = sum(sizes)
    for fut in as_completed(futures):
        out = fut.result(raise_on_failure=False)
        n = size[id(fut)]
        if isinstance(out, BaseException) or not isinstance(out, list):
            log.error("a task failed: %s", out)
            failed += n
        else:
            done += sum(s == storage.DONE for s in out)
            failed += sum(s != storage.DONE for s in out)
        finished += n
        el = time.perf_counter() - t0
        log.info("cells %d/%d done (%d failed) | elapsed %s | ETA %s", done, total, failed,
                 fmt_seconds(el), fmt_seconds(el / finished * (todo - finished)))
        progress.update(done + failed)
    return done, failed


@flow(name="sparse-pca", task_runner=ThreadPoolTaskRunner(max_workers=2))
def sparse_pca(spec: SparsePCASpec, store: str | None = None) -> dict:
    """Run (or resume) a sparse-PCA study; returns {store, cells, done, failed, computed, plot}."""
    log = get_run_logger()
    path = spec.store_path(store)
    storage.create_or_open(path, sps.template(spec), sps.CELL_DIMS)
    cells = spec.cells()
    todo = pending_cells(path, cells, cell_index)
    log.info("store %s: %d cells, %d to compute", path, len(cells), len(todo))
    # Threads share the process: split the cores between them instead of oversubscribing.
    runners.share_cores(spec.workers)
    by_dk: dict[tuple[int, int], list] = defaultdict(list)
    for c in todo:
        by_dk[(c.d, c.k)].append(c)
    order = sorted(by_dk, key=lambda g: (-g[0], -g[1]))
    data = {g: generate_data.submit(path, spec, *g) for g in order}
    trained = {g: train_networks.submit(path, spec, by_dk[g], wait_for=[data[g]]) for g in order} if spec.trains else {}
    evals, sizes = [], []
    for g in order:
        by_seed: dict[tuple[float, int], list] = defaultdict(list)
        for c in by_dk[g]:
            by_seed[(c.beta, c.seed)].append(c)
        for key in sorted(by_seed):
            group = by_seed[key]
            if spec.trains:
                evals.append(evaluate_cells.submit(path, spec, group, trained[g]))
            else:
                evals.append(evaluate_cells.submit(path, spec, group, None, wait_for=[data[g]]))
            sizes.append(len(group))
    done, failed = follow_groups(log, evals, sizes, len(cells), len(cells) - len(todo))
    plot = finish(log, path)
    return {"store": path, "cells": len(cells), "done": done, "failed": failed, "computed": len(todo),
            "plot": plot}
