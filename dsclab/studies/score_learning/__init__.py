"""The score-learning study kind (Kumar–Nagaraj–Sarkar 2025, science.md §4; Gupta et al. 2023,
science.md §2): time bootstrapping (BSM) against DSM, Markov-trajectory against independent
training pairs, a d-free hypothesis class against the generic MLP, and the L2 versus quantile
score error.

Modules: :mod:`.spec` (the spec and its cells), :mod:`.layout` (the store), :mod:`.numerics` (data,
training and evaluation of one cell), :mod:`.readout` (what the report and figure read),
:mod:`.report` (the text report, by section) and :mod:`.plot` (the figure). Each cell trains its
own small network in the train stage, on that stage's device; ``evaluate`` restores it.
"""
from __future__ import annotations

from dsclab.analysis import WEIGHTED_L2
from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind

from .layout import template as _template
from .plot import plot as _plot
from .report import report as _report
from .spec import CELL_DIMS, ScoreLearningSpec

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
errors = deferred("dsclab.errors", globals())
_numerics = deferred("dsclab.studies.score_learning.numerics", globals(), "_numerics")


class ScoreLearning(StudyKind):
    name = "score_learning"
    spec_model = ScoreLearningSpec
    cell_dims = CELL_DIMS
    description = ("n*(eps, d) for a structured class against an MLP; BSM against DSM; trajectory against "
                   "independent noisings; quantile against L2 error (Kumar et al. 2025).")
    small = small_preset(__file__)
    small_variants = {"regimes": small_preset(__file__, "small_regimes.yaml")}  # the regime map (studies/bsm_regimes.yaml)
    preset = "dimension_free.yaml"
    derived = WEIGHTED_L2
    template = staticmethod(_template)
    report = staticmethod(_report)
    plot = staticmethod(_plot)

    def plan(self, spec, cells):
        """One task per cell, cells sharing a training set (d, seed, data_mode) next to each other
        (``numerics.training_data`` keeps a few in memory), largest d first."""
        order = sorted(cells, key=lambda c: (-c.d, c.seed, c.data_mode, -c.n, c.model, c.estimator))
        return [Group(cells=(c,)) for c in order]

    def train(self, spec, cells, cache, prepared, device):
        """Each cell's network, trained on ``device``: {cell key: ``numerics.payload`` (CPU
        tensors), or the numerical failure of its training}."""
        out = {}
        for c in cells:
            try:
                out[c.key] = _numerics.payload(_numerics.train_cell(spec, c, device))
            except errors.NUMERICAL as e:
                out[c.key] = e
        return out

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        res = _numerics.restore(spec, cell, trained, device)
        return _numerics.evaluate(spec, cell, res.model, res)


KIND = ScoreLearning()
