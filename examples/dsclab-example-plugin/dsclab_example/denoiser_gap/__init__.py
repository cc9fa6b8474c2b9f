"""The ``denoiser_gap`` study kind (entry point, group ``dsclab.studies``): per (data law, d, seed)
and OU time t, the MSE of the exact (Tweedie) denoiser against the best linear one, and their gap
(:mod:`dsclab_example.denoiser_gap.numerics`, (G1)-(G3)). It implements the whole contract of
``dsclab.study``; ``dsclab run`` and the generic flow run it like a built-in kind."""
from __future__ import annotations

from dsclab.lazy import deferred
from dsclab.studies import small_preset
from dsclab.study import Group, StudyKind
from dsclab_example.denoiser_gap import layout, plot, report
from dsclab_example.denoiser_gap.spec import CELL_DIMS, DenoiserGapSpec, GapCell

# the numerics (torch), imported when a cell is first evaluated, not when a spec is read (dsclab.lazy)
_numerics = deferred("dsclab_example.denoiser_gap.numerics", globals(), "_numerics")


class DenoiserGap(StudyKind):
    name = "denoiser_gap"
    spec_model = DenoiserGapSpec
    cell_dims = CELL_DIMS
    description = ("MSE of the exact (Tweedie) denoiser against the best linear (moment-matched Gaussian) "
                   "denoiser over OU time; their gap is zero for Gaussian data (dsclab-example-plugin).")
    small = small_preset(__file__)
    torch_threads = 1  # small tensors: parallelism comes from the workers

    def template(self, spec):
        return layout.template(spec)

    def plan(self, spec, cells):
        """One task per cell, largest d first."""
        return [Group(cells=(c,)) for c in sorted(cells, key=lambda c: (-c.d, c.data, c.seed))]

    def evaluate(self, spec, cell, cache, prepared, trained, device):
        return _numerics.evaluate(spec, cell)

    def report(self, ds):
        return report.report(ds)

    def plot(self, ds, out):
        return plot.plot(ds, out)


KIND = DenoiserGap()

__all__ = ["KIND", "DenoiserGap", "DenoiserGapSpec", "GapCell"]
