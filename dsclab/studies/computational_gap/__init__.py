"""The computational-gap study kind (Montanari-Vu 2025): Bayes, polynomial-time and trained drifts.

Modules: ``spec`` (the spec and its cells), ``numerics`` (store layout, training of the network
drift, evaluation of one cell; the study's conventions are documented there), ``report`` (text)
and ``plot`` (figure)."""
from __future__ import annotations

from dsclab.studies import small_preset
from dsclab.studies.computational_gap import numerics
from dsclab.studies.computational_gap import plot as _plot
from dsclab.studies.computational_gap import report as _report
from dsclab.studies.computational_gap.spec import CELL_DIMS, ComputationalGapSpec
from dsclab.study import Group, StudyKind


class ComputationalGap(StudyKind):
    name = "computational_gap"
    spec_model = ComputationalGapSpec
    cell_dims = CELL_DIMS
    description = ("Denoising MSE(t) of the Bayes drift, spectral, power-iteration, thresholding, gated and "
                   "trained drifts; norms of generated samples; integrated losses (Montanari-Vu 2025).")
    small = small_preset(__file__)
    torch_threads = 1  # tiny tensors: one thread per task is faster than sharing cores
    template = staticmethod(numerics.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)

    def plan(self, spec, cells):
        """One task per (n, k, seed) cell (train its network, evaluate every drift), largest n first."""
        return [Group(cells=(c,)) for c in sorted(cells, key=lambda c: (-c.n, -c.k, c.seed))]

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return numerics.compute_cell(spec, cell, device)


KIND = ComputationalGap()
