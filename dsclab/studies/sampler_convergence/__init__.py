"""The sampler-convergence study kind (Wu et al. 2024): KL and sample distances against NFE.

How fast each reverse-SDE sampler converges as NFE grows, on targets where the error is known
exactly (Wu–Chen–Wei 2024; science.md §3; project issue 3). Modules: ``spec`` (the spec, its
cells and which values each cell computes), ``targets`` (target laws and their scores: exact,
perturbed, trained), ``schemes`` (time grids and increments of the samplers), ``exact`` (exact
KL routes), ``sampled`` (sample metrics with their Monte Carlo floors), ``numerics`` (one cell),
``layout`` (the store), ``fits`` (slopes and crossings read off a store), ``report`` (text) and
``plot`` (figure).
"""
from __future__ import annotations

from dsclab.studies import small_preset
from dsclab.studies.sampler_convergence import exact, layout
from dsclab.studies.sampler_convergence import plot as _plot
from dsclab.studies.sampler_convergence import report as _report
from dsclab.studies.sampler_convergence.numerics import run_cell
from dsclab.studies.sampler_convergence.spec import CELL_DIMS, SamplerConvergenceSpec, sampled_route, shared_1d
from dsclab.study import Group, StudyKind


def _cost(spec, cell) -> float:
    """Rough relative cost of a cell (for the queue order only)."""
    if sampled_route(spec, cell):
        return len(spec.seed) * (1.0 + cell.d / 32) * (2.0 if cell.score == "trained" else 1.0)
    return (cell.d / 32) ** 1.5


class SamplerConvergence(StudyKind):
    name = "sampler_convergence"
    spec_model = SamplerConvergenceSpec
    cell_dims = CELL_DIMS
    description = ("KL (exact) and sliced W2 / MMD against NFE for Euler-Maruyama, the exponential integrator, "
                   "SRK, SRA1, ShARK and Heun; fitted slopes and NFE to reach a KL (Wu et al. 2024).")
    small = small_preset(__file__)
    preset = "srk.yaml"
    torch_threads = 1  # streams of small tensor ops: parallelism comes from the workers
    template = staticmethod(layout.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)

    def plan(self, spec, cells):
        """One task per (target, d, score) cell, most expensive first; the product target's exact
        cells share their 1-D curves (one prepare unit per score kind) and are queued last, so that
        no worker waits on them."""
        shared = [c for c in cells if shared_1d(c)]
        rest = sorted((c for c in cells if not shared_1d(c)), key=lambda c: -_cost(spec, c))
        return [Group(cells=(c,)) for c in rest] + [Group(cells=(c,), data=(c.score,)) for c in shared]

    def prepare(self, spec, key, cache):
        return exact.product_kl_1d(spec, key)

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return run_cell(spec, cell, prepared.get(cell.score) if shared_1d(cell) else None)


KIND = SamplerConvergence()
