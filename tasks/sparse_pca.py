"""Tasks of the sparse-PCA flow: generate the data of a (d, k) group, train its networks as one
batched ensemble, evaluate a group of cells sharing (d, k, beta, seed) (one data set; every
estimator of each cell).

A numerical failure of a cell (a diverged network, non-finite samples) marks that cell failed in
the store and does not raise, so every other cell completes; infrastructure errors raise.
"""
from __future__ import annotations


from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage
from dsclab import sparse_pca_study as sps
from dsclab.sample_complexity import derive_seed
from dsclab.sparse_pca_study import SparsePCACell, SparsePCASpec, cell_index
from dsclab.train import TrainResult
from flows.runners import task_device
from storage import files
from tasks.common import failure_reason, load_model, record_cell, save_trained


def data_url(store: str, spec: SparsePCASpec, d: int, k: int, beta: float, seed: int) -> str:
    tag = derive_seed("sparse-pca-data-file", max(spec.n))
    return files.url(store, "data", f"sparse_pca-{tag:016x}-d{d}-k{k}-beta{beta:g}-seed{seed}.npy")


@task(name="sparse-pca-data", cache_policy=NO_CACHE)
def generate_data(store: str, spec: SparsePCASpec, d: int, k: int) -> None:
    """Draw (once) and cache the largest-n dataset of every (beta, seed) of this (d, k)."""
    for beta in spec.beta:
        for seed in spec.seed:
            u = data_url(store, spec, d, k, beta, seed)
            if not files.exists(u):
                files.save_array(u, sps.generate_data(spec, d, k, beta, seed))


def _load(store: str, spec: SparsePCASpec, cells: list[SparsePCACell]) -> dict:
    keys = dict.fromkeys((c.d, c.k, c.beta, c.seed) for c in cells)
    return {(k, b, s): files.load_array(data_url(store, spec, d, k, b, s)) for d, k, b, s in keys}


@task(name="sparse-pca-train", cache_policy=NO_CACHE, tags=["gpu"])
def train_networks(store: str, spec: SparsePCASpec, cells: list[SparsePCACell]) -> dict[str, str | None]:
    """Train the networks of cells sharing d as one batched ensemble; returns {cell key: checkpoint
    URL, or None for a member that diverged (its cell is marked failed)}."""
    log = get_run_logger()
    device = task_device(spec.train.device)
    try:
        results = sps.train_cells(spec, cells, _load(store, spec, cells), device)
    except (ArithmeticError, RuntimeError) as e:  # the whole ensemble failed numerically
        log.warning("training of %d cells (d=%d) failed: %s", len(cells), cells[0].d, e)
        storage.mark_cells(store, [cell_index(c) for c in cells], storage.FAILED,
                           reason=failure_reason("training", e))
        return {c.key: None for c in cells}
    return save_trained(store, cells, results, cell_index, width=spec.train.width, depth=spec.train.depth)


def evaluate_one(store: str, spec: SparsePCASpec, cell: SparsePCACell, x, checkpoints: dict | None) -> int:
    """Evaluate every estimator of one cell on its data ``x`` (the full dataset), write its region,
    then mark it done; a numerical failure marks it failed. Returns its status."""
    model = res = None
    if spec.trains:
        u = (checkpoints or {}).get(cell.key)
        if u is None:
            return storage.FAILED  # marked failed by the training task

    def compute():
        m, r = model, res
        if spec.trains:
            m, ck = load_model(u)
            r = TrainResult(m, ck["loss"], ck["seconds"])
        return sps.evaluate(spec, cell, x, m, r)

    return record_cell(store, cell_index(cell), compute)


@task(name="sparse-pca-cells", cache_policy=NO_CACHE)
def evaluate_cells(store: str, spec: SparsePCASpec, cells: list[SparsePCACell],
                   checkpoints: dict[str, str | None] | None = None) -> list[int]:
    """Evaluate the cells of one (d, k, beta, seed) (one data set; one task for the group keeps the
    orchestration overhead per cell small). Returns their statuses, in order."""
    data = _load(store, spec, cells)
    return [evaluate_one(store, spec, c, data[(c.k, c.beta, c.seed)], checkpoints) for c in cells]
