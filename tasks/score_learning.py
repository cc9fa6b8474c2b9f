"""Tasks of the score-learning flow: one task per cell (train its network, evaluate it, write it).

A numerical failure of a cell (diverged training, non-finite samples) marks that cell failed in
the store and does not raise, so every other cell completes; infrastructure errors raise.
"""
from __future__ import annotations

import traceback

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import storage
from dsclab import score_learning as sl
from dsclab.score_learning import ScoreLearningSpec, SLCell, cell_index


@task(name="score-learning-cell", cache_policy=NO_CACHE, tags=["cpu"])
def run_cell(store: str, spec: ScoreLearningSpec, cell: SLCell) -> int:
    """Train and evaluate one (d, n, seed, estimator, data_mode, model) cell, write its region,
    then mark it done. Returns its status."""
    try:
        values = sl.run_cell(spec, cell)
    except (ArithmeticError, RuntimeError, ValueError) as e:  # numerical failure: recorded as the cell's
        get_run_logger().warning("cell %s failed: %s\n%s", cell_index(cell), e, traceback.format_exc())
        storage.mark_cells(store, [cell_index(cell)], storage.FAILED)
        return storage.FAILED
    storage.write_cell(store, values, cell_index(cell))
    storage.mark_cells(store, [cell_index(cell)], storage.DONE)
    return storage.DONE
