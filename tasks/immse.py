"""Tasks of the I-MMSE flow: one task per cell (train its network, evaluate every denoiser).

A numerical failure of a cell (diverged training, non-finite estimates) marks that cell failed
in the store and does not raise, so every other cell completes; infrastructure errors raise.
"""
from __future__ import annotations

import traceback

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage
from dsclab import immse_study as ist
from dsclab.immse_study import ImmseCell, ImmseSpec, cell_index


@task(name="immse-cell", cache_policy=NO_CACHE, tags=["cpu"])
def run_cell(store: str, spec: ImmseSpec, cell: ImmseCell) -> int:
    """Train and evaluate one (data, d, n, seed) cell, write its region, then mark it done."""
    try:
        values = ist.run_cell(spec, cell)
    except (ArithmeticError, RuntimeError, ValueError) as e:  # numerical failure: recorded as the cell's
        get_run_logger().warning("cell %s failed: %s\n%s", cell_index(cell), e, traceback.format_exc())
        storage.mark_cells(store, [cell_index(cell)], storage.FAILED)
        return storage.FAILED
    storage.write_cell(store, values, cell_index(cell))
    storage.mark_cells(store, [cell_index(cell)], storage.DONE)
    return storage.DONE
