"""Tasks of the sample-complexity flow: generate data, train a group of cells, evaluate a cell.

Numerical failures of a cell (diverged training, non-finite samples) mark that cell failed in
the store and do not raise, so every other cell completes; infrastructure errors raise.
"""
from __future__ import annotations

import traceback

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage
from dsclab import sample_complexity as sc
from dsclab.spec import Cell, StudySpec
from flows.runners import task_device
from storage import files
from tasks.common import failure_reason, load_model, save_trained


def cell_index(cell: Cell) -> dict:
    return {"d": cell.d, "n": cell.n, "seed": cell.seed, "estimator": cell.estimator}


def data_url(store: str, spec: StudySpec, d: int, seed: int) -> str:
    key = sc.derive_seed("data", spec.distribution.model_dump(mode="json"), max(spec.n))
    return files.url(store, "data", f"{spec.distribution.name}-{key:016x}-d{d}-seed{seed}.npy")


@task(name="generate-data", cache_policy=NO_CACHE)
def generate_data(store: str, spec: StudySpec, d: int, seed: int) -> str:
    """Draw (once) and cache the largest-n dataset for (distribution, d, seed)."""
    u = data_url(store, spec, d, seed)
    if not files.exists(u):
        files.save_array(u, sc.generate_data(spec, d, seed))
    return u


@task(name="train-group", cache_policy=NO_CACHE, tags=["gpu"])
def train_group(store: str, spec: StudySpec, cells: list[Cell]) -> dict[str, str | None]:
    """Train cells sharing d as one batched ensemble; returns {cell key: checkpoint URL, or None
    if it failed}.

    Tagged ``gpu``: the Prefect concurrency limit ``gpu`` and, under Dask, the resource GPU=1 keep
    one training task per GPU; the device comes from the worker (``flows.runners.task_device``)."""
    device = task_device(spec.train.device)  # the worker's GPU when it has one (flows.runners)
    data = {c.seed: files.load_array(data_url(store, spec, c.d, c.seed)) for c in cells}
    results = sc.train_cells(spec, cells, data, device)  # one batched ensemble per estimator
    return save_trained(store, cells, results, cell_index, width=spec.train.width, depth=spec.train.depth)


@task(name="evaluate-cell", cache_policy=NO_CACHE)
def evaluate_cell(store: str, spec: StudySpec, cell: Cell, checkpoints: dict[str, str | None]) -> int:
    """Evaluate a trained cell, write its region, then mark it done. Returns its status."""
    u = checkpoints.get(cell.key)
    if u is None:
        return storage.FAILED
    try:
        model, ck = load_model(u)
        res = sc.TrainResult(model, ck["loss"], ck["seconds"])
        values = sc.evaluate(spec, cell, model.score, res)
    except Exception as e:  # noqa: BLE001
        get_run_logger().warning("cell %s failed in evaluation: %s\n%s", cell_index(cell), e, traceback.format_exc())
        storage.mark_cells(store, [cell_index(cell)], storage.FAILED, reason=failure_reason("evaluation", e))
        return storage.FAILED
    storage.write_cell(store, values, cell_index(cell))
    storage.mark_cells(store, [cell_index(cell)], storage.DONE)
    return storage.DONE
