"""Task of the computational-gap flow: one (n, k, seed) cell = train its network, evaluate every
drift, write the cell's region, mark it done. A numerical failure marks the cell failed and
returns (it does not raise); infrastructure errors raise."""
from __future__ import annotations

import traceback

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage
from dsclab import computational_gap as cg
from dsclab.computational_gap import ComputationalGapSpec, GapCell, cell_index
from flows.runners import task_device


@task(name="computational-gap-cell", cache_policy=NO_CACHE, tags=["cpu"])
def compute_cell(store: str, spec: ComputationalGapSpec, cell: GapCell) -> int:
    """Compute one cell; returns its status."""
    torch.set_num_threads(1)  # tiny tensors: one thread per task is faster than sharing cores
    device = task_device(spec.train.device)
    try:
        values = cg.compute_cell(spec, cell, device)
    except (ArithmeticError, RuntimeError, ValueError) as e:
        get_run_logger().warning("cell %s failed: %s\n%s", cell_index(cell), e, traceback.format_exc())
        storage.mark_cells(store, [cell_index(cell)], storage.FAILED)
        return storage.FAILED
    storage.write_cell(store, values, cell_index(cell))
    storage.mark_cells(store, [cell_index(cell)], storage.DONE)
    return storage.DONE
