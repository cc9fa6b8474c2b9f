"""The computational-gap study kind (Montanari-Vu 2025): Bayes, polynomial-time and trained drifts."""
from __future__ import annotations

from dsclab import computational_gap as cg
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind


class ComputationalGap(StudyKind):
    name = "computational_gap"
    spec_model = cg.ComputationalGapSpec
    cell_dims = cg.CELL_DIMS
    description = ("Denoising MSE(t) of the Bayes drift, spectral, power-iteration, thresholding, gated and "
                   "trained drifts; norms of generated samples; integrated losses (Montanari-Vu 2025).")
    small = small_preset(__file__)
    torch_threads = 1  # tiny tensors: one thread per task is faster than sharing cores

    def template(self, spec):
        return cg.template(spec)

    def plan(self, spec, cells):
        """One task per (n, k, seed) cell (train its network, evaluate every drift), largest n first."""
        return [Group(cells=(c,)) for c in sorted(cells, key=lambda c: (-c.n, -c.k, c.seed))]

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return cg.compute_cell(spec, cell, device)

    def report(self, ds):
        return cg.report(ds)

    def plot(self, ds, out):
        return cg.plot(ds, out)


KIND = ComputationalGap()
