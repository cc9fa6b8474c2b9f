"""Tasks of the sampler-convergence flow: the shared 1-D curves of the product target, and one
task per (target, d, score) cell computing every sampler x NFE (x seed).

A numerical failure of a cell (diverged training, non-finite values where they cannot be
recorded) marks that cell failed in the store and does not raise, so every other cell
completes; infrastructure errors raise.
"""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dsclab import sampler_convergence as scv
from dsclab.sampler_convergence import SamplerConvergenceSpec, SrkCell, cell_index
from tasks.common import record_cell


@task(name="srk-product-1d", cache_policy=NO_CACHE)
def product_kl_1d(spec: SamplerConvergenceSpec, score: str) -> dict:
    """The 1-D KL curves (sampler x NFE) of one factor of the product target for a score kind;
    every d of the product target multiplies them (``scv.product_kl_1d``)."""
    return scv.product_kl_1d(spec, score)


@task(name="srk-cell", cache_policy=NO_CACHE)
def run_cell(store: str, spec: SamplerConvergenceSpec, cell: SrkCell, kl1d: dict | None = None) -> int:
    """Compute one (target, d, score) cell, write its region, then mark it done. Returns its status."""
    return record_cell(store, cell_index(cell), lambda: scv.run_cell(spec, cell, kl1d))
