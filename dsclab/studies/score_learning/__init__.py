"""The score-learning study kind (Kumar et al. 2025): n*(eps, d), BSM against DSM, dependent data."""
from __future__ import annotations

from dsclab import score_learning as sl
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind


class ScoreLearning(StudyKind):
    name = "score_learning"
    spec_model = sl.ScoreLearningSpec
    cell_dims = sl.CELL_DIMS
    description = ("n*(eps, d) for a structured class against an MLP; BSM against DSM; trajectory against "
                   "independent noisings; quantile against L2 error (Kumar et al. 2025).")
    small = small_preset(__file__)

    def template(self, spec):
        return sl.template(spec)

    def plan(self, spec, cells):
        """One task per cell, cells sharing a training set (d, seed, data_mode) next to each other
        (``sl.training_data`` keeps a few in memory), largest d first."""
        order = sorted(cells, key=lambda c: (-c.d, c.seed, c.data_mode, -c.n, c.model, c.estimator))
        return [Group(cells=(c,)) for c in order]

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return sl.run_cell(spec, cell)

    def report(self, ds):
        return sl.report(ds)

    def plot(self, ds, out):
        return sl.plot(ds, out)


KIND = ScoreLearning()
