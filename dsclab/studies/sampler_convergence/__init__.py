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

from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.studies.sampler_convergence import layout
from dsclab.studies.sampler_convergence import plot as _plot
from dsclab.studies.sampler_convergence import report as _report
from dsclab.studies.sampler_convergence.spec import (CELL_DIMS, SamplerConvergenceSpec, needs_training, sampled_route,
                                                     shared_1d)
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
errors = deferred("dsclab.errors", globals())
_exact = deferred("dsclab.studies.sampler_convergence.exact", globals(), "_exact")
_numerics = deferred("dsclab.studies.sampler_convergence.numerics", globals(), "_numerics")
_targets = deferred("dsclab.studies.sampler_convergence.targets", globals(), "_targets")
training = deferred("dsclab.train", globals(), "training")


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
    train_axes = ("seed",)  # a trained cell's networks are one per seed
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

    def trains(self, spec) -> bool:
        """Whether some cell uses trained networks (a trained score on the sampled route)."""
        return any(needs_training(spec, c) for c in spec.cells())

    def prepare(self, spec, key, cache):
        return _exact.product_kl_1d(spec, key)

    def train(self, spec, cells, cache, prepared, device):
        """The networks of each cell with a trained score, one per seed, trained on ``device`` as one
        batched ensemble: {cell key: {"members": [``TrainResult.payload()`` per seed]} (CPU
        tensors), or the numerical failure of its training}; a cell without networks gets {}."""
        out = {}
        for c in cells:
            try:
                out[c.key] = ({"members": [r.payload() for r in _targets.train_members(spec, c, device)]}
                              if needs_training(spec, c) else {})
            except errors.NUMERICAL as e:
                out[c.key] = e
        return out

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        members = None
        if trained and "members" in trained:
            members = [training.TrainResult.restore(p, device) for p in trained["members"]]
        return _numerics.run_cell(spec, cell, prepared.get(cell.score) if shared_1d(cell) else None, members)


KIND = SamplerConvergence()
