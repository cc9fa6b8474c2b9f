"""Tasks of the I-MMSE flow: one task per cell (train its network, evaluate every denoiser).

A numerical failure of a cell (diverged training, non-finite estimates) marks that cell failed
in the store and does not raise, so every other cell completes; infrastructure errors raise.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dsclab import immse_study as ist
from dsclab.immse_study import ImmseCell, ImmseSpec, cell_index
from tasks.common import record_cell


@task(name="immse-cell", cache_policy=NO_CACHE)
def run_cell(store: str, spec: ImmseSpec, cell: ImmseCell) -> int:
    """Train and evaluate one (data, d, n, seed) cell, write its region, then mark it done."""
    return record_cell(store, cell_index(cell), lambda: ist.run_cell(spec, cell))
