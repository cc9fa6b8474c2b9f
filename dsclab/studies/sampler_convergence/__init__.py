"""The sampler-convergence study kind (Wu et al. 2024): KL and sample distances against NFE."""
from __future__ import annotations

from dsclab import sampler_convergence as scv
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind


def _cost(spec, cell) -> float:
    """Rough relative cost of a cell (for the queue order only)."""
    if scv.sampled_route(spec, cell):
        return len(spec.seed) * (1.0 + cell.d / 32) * (2.0 if cell.score == "trained" else 1.0)
    return (cell.d / 32) ** 1.5


class SamplerConvergence(StudyKind):
    name = "sampler_convergence"
    spec_model = scv.SamplerConvergenceSpec
    cell_dims = scv.CELL_DIMS
    description = ("KL (exact) and sliced W2 / MMD against NFE for Euler-Maruyama, the exponential integrator, "
                   "SRK, SRA1, ShARK and Heun; fitted slopes and NFE to reach a KL (Wu et al. 2024).")
    small = small_preset(__file__)
    torch_threads = 1  # streams of small tensor ops: parallelism comes from the workers

    def template(self, spec):
        return scv.template(spec)

    def plan(self, spec, cells):
        """One task per (target, d, score) cell, most expensive first; the product target's exact
        cells share their 1-D curves (one prepare unit per score kind) and are queued last, so that
        no worker waits on them."""
        shared = [c for c in cells if scv.shared_1d(c)]
        rest = sorted((c for c in cells if not scv.shared_1d(c)), key=lambda c: -_cost(spec, c))
        return [Group(cells=(c,)) for c in rest] + [Group(cells=(c,), data=(c.score,)) for c in shared]

    def prepare(self, spec, key, cache):
        return scv.product_kl_1d(spec, key)

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return scv.run_cell(spec, cell, prepared.get(cell.score) if scv.shared_1d(cell) else None)

    def report(self, ds):
        return scv.report(ds)

    def plot(self, ds, out):
        return scv.plot(ds, out)


KIND = SamplerConvergence()
