"""Tasks of the score-learning flow: one task per cell (train its network, evaluate it, write it).

A numerical failure of a cell (diverged training, non-finite samples) marks that cell failed in
the store and does not raise, so every other cell completes; infrastructure errors raise.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dsclab import score_learning as sl
from dsclab.score_learning import ScoreLearningSpec, SLCell, cell_index
from tasks.common import record_cell


@task(name="score-learning-cell", cache_policy=NO_CACHE)
def run_cell(store: str, spec: ScoreLearningSpec, cell: SLCell) -> int:
    """Train and evaluate one (d, n, seed, estimator, data_mode, model) cell, write its region,
    then mark it done. Returns its status."""
    return record_cell(store, cell_index(cell), lambda: sl.run_cell(spec, cell))
