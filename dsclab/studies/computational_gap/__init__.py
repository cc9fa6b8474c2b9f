"""The computational-gap study kind (Montanari-Vu 2025): Bayes, polynomial-time and trained drifts.

Modules: ``spec`` (the spec and its cells), ``layout`` (the store), ``numerics`` (training of the
trained drifts, in the train stage, and evaluation of one cell; the study's conventions are
documented there), ``spike``
(the science: the law, its drifts, the networks and the paper's numbers), ``report`` (text)
and ``plot`` (figure)."""
from __future__ import annotations

from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.studies.computational_gap import layout
from dsclab.studies.computational_gap import plot as _plot
from dsclab.studies.computational_gap import report as _report
from dsclab.studies.computational_gap.spec import CELL_DIMS, ComputationalGapSpec
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
errors = deferred("dsclab.errors", globals())
_numerics = deferred("dsclab.studies.computational_gap.numerics", globals(), "_numerics")


class ComputationalGap(StudyKind):
    name = "computational_gap"
    spec_model = ComputationalGapSpec
    cell_dims = CELL_DIMS
    train_axes = ("drift",)  # the trained networks are those of this axis
    description = ("Denoising MSE(t) of the Bayes drift, spectral, power-iteration, thresholding, gated and "
                   "trained drifts (the paper's message-passing network and baselines among them), sparse spike "
                   "or hidden clique; norms of generated samples; integrated losses (Montanari-Vu 2025).")
    small = small_preset(__file__)
    small_variants = {"budget": small_preset(__file__, "small_budget.yaml")}  # a budget axis (studies/spike_budget_cpu.yaml)
    preset = "spike_small.yaml"
    torch_threads = 1  # tiny tensors: one thread per task is faster than sharing cores
    template = staticmethod(layout.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)

    def dims(self, spec):
        """``CELL_DIMS``, and ``budget`` after them when ``mpnn.budget`` is a list (``spec.cell_dims``)."""
        return spec.cell_dims

    def index(self, cell):
        """The cell's (n, k, seed), and its budget on a budget axis."""
        out = {dim: getattr(cell, dim) for dim in self.cell_dims}
        if cell.budget is not None:
            out["budget"] = cell.budget
        return out

    def plan(self, spec, cells):
        """One group per cell (train its networks, evaluate every drift), largest n first, then (on a
        budget axis) smallest budget first: a run cut short during the long trainings leaves the
        short ones' checkpoints, which a rerun (or a store of fewer budgets given a copy of the
        files beside the store: the keys do not depend on the other budgets) evaluates at once. The
        cells of a budget axis are alike across seeds, so with as many workers as seeds the order
        leaves the total time as it is."""
        return [Group(cells=(c,)) for c in sorted(cells, key=lambda c: (-c.n, -c.k, c.budget or 0.0, c.seed))]

    def trains(self, spec) -> bool:
        """The train stage runs when a trained drift (``network``, ``mpnn``) is a drift."""
        return spec.trains or spec.trains_mpnn

    def train(self, spec, cells, cache, prepared, device):
        """Each cell's trained drifts (one cell after another) on ``device``: the equivariant network
        and the paper's training of the mpnn, which resumes from its stage checkpoints beside the
        store; {cell key: ``numerics.train_cell`` payload, or the numerical failure of its
        training}."""
        out = {}
        for c in cells:
            try:
                out[c.key] = _numerics.train_cell(spec, c, cache, device)
            except errors.NUMERICAL as e:
                out[c.key] = e
        return out

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return _numerics.compute_cell(spec, cell, device, trained)


KIND = ComputationalGap()
