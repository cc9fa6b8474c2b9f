"""The I-MMSE study kind: likelihoods of exact, mismatched, trained and ensembled denoisers read
off their MSE curves (Kong, Brekelmans & Ver Steeg 2023; science.md §6; project issue 4).

The package: ``spec`` (the spec, its data laws and cells), ``denoisers`` (the denoiser axis),
``numerics`` (data, training range and evaluation of one cell), ``layout`` (the store), ``report``
and ``plot``. This module is the contract adapter (``dsclab.study``); the generic flow
(``flows.study``) runs it.
"""
from __future__ import annotations

from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.studies.immse import layout, plot, report
from dsclab.studies.immse.spec import CELL_DIMS, ImmseSpec
from dsclab.study import Group, StudyKind

# the stages' numerics (torch), imported when a stage first runs, not when a spec is read (dsclab.lazy)
_numerics = deferred("dsclab.studies.immse.numerics", globals(), "_numerics")
errors = deferred("dsclab.errors", globals())
training = deferred("dsclab.train", globals(), "training")


class Immse(StudyKind):
    name = "immse"
    spec_model = ImmseSpec
    cell_dims = CELL_DIMS
    description = ("Log-likelihood from the MMSE curve for exact, mismatched, trained and ensembled "
                   "denoisers (Kong et al. 2023).")
    small = small_preset(__file__)
    preset = "immse.yaml"
    template = staticmethod(layout.template)
    report = staticmethod(report.report)
    plot = staticmethod(plot.plot)

    def plan(self, spec, cells):
        """One group per cell (train its network, evaluate every denoiser), largest d and n first."""
        return [Group(cells=(c,)) for c in sorted(cells, key=lambda c: (-c.d, -c.n, c.data, c.seed))]

    def train(self, spec, cells, cache, prepared, device):
        """Each cell's network, trained on ``device``: {cell key: ``TrainResult.payload()`` (CPU
        tensors), or the numerical failure of its training}."""
        out = {}
        for c in cells:
            try:
                out[c.key] = _numerics.train_cell(spec, c, device).payload()
            except errors.NUMERICAL as e:
                out[c.key] = e
        return out

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return _numerics.evaluate_cell(spec, cell, training.TrainResult.restore(trained, device))


KIND = Immse()
