"""Task of the computational-gap flow: one (n, k, seed) cell = train its network, evaluate every
drift, write the cell's region, mark it done. A numerical failure marks the cell failed and
returns (it does not raise); infrastructure errors raise."""
from __future__ import annotations

import torch
from prefect import task
from prefect.cache_policies import NO_CACHE

from dsclab import computational_gap as cg
from dsclab.computational_gap import ComputationalGapSpec, GapCell, cell_index
from flows.runners import task_device
from tasks.common import record_cell


@task(name="computational-gap-cell", cache_policy=NO_CACHE)
def compute_cell(store: str, spec: ComputationalGapSpec, cell: GapCell) -> int:
    """Compute one cell; returns its status."""
    torch.set_num_threads(1)  # tiny tensors: one thread per task is faster than sharing cores
    device = task_device(spec.train.device)
    return record_cell(store, cell_index(cell), lambda: cg.compute_cell(spec, cell, device))
