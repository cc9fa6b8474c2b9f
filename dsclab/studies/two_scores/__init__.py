"""The two-scores study kind (Gupta et al. 2023, Figure 1's lower-bound construction; science.md
§2, project issue 28): the ERM over two exact scores on n samples, and how often its L2 and its
quantile errors miss a level, against n. Modules: ``spec``, ``layout``, ``numerics`` (the
construction, its scores and the ERM), ``report`` (with the computed verdict), ``plot``. Nothing
is trained: both candidates are closed forms."""
from __future__ import annotations

from collections import defaultdict

from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.studies.two_scores import layout
from dsclab.studies.two_scores import plot as _plot
from dsclab.studies.two_scores import report as _report
from dsclab.studies.two_scores.spec import CELL_DIMS, TwoScoresSpec
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
_numerics = deferred("dsclab.studies.two_scores.numerics", globals(), "_numerics")


class TwoScores(StudyKind):
    name = "two_scores"
    spec_model = TwoScoresSpec
    cell_dims = CELL_DIMS
    description = ("ERM over two exact scores (N(0, I) and a mixture with a far component of weight eta): "
                   "P[L2 error > tau] against P[quantile error > tau] as n grows (Gupta et al. 2023, Figure 1).")
    small = small_preset(__file__)
    preset = "two_scores.yaml"
    torch_threads = 1  # small tensors: parallelism comes from the workers
    template = staticmethod(layout.template)
    report = staticmethod(_report.report)
    plot = staticmethod(_plot.plot)

    def plan(self, spec, cells):
        """One evaluate task per (truth, d, n): its seeds together (each cell takes milliseconds)."""
        by = defaultdict(list)
        for c in cells:
            by[(c.truth, c.d, c.n)].append(c)
        return [Group(cells=tuple(g), batches=(tuple(g),)) for _, g in sorted(by.items(), key=lambda kv: -kv[0][2])]

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return _numerics.evaluate(spec, cell)


KIND = TwoScores()
